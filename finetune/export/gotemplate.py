"""A small renderer of the subset of Go text/template that Ollama chat TEMPLATEs use: enough to check, in
Python and without Ollama, that a Modelfile TEMPLATE renders a conversation exactly as the HF chat template.
(No pinned Python package renders Go templates on Python 3.11; semantics from Ollama's template/template.go.)

Supported: text; {{ pipeline }} actions with trim markers {{- / -}}; {{/* comments */}};
fields .A.B / $.A / $var / $var.A / . ; string, int, true/false literals; functions eq ne and or not len
(eq with several args = equal to any, as in Go); parenthesised sub-pipelines;
{{ if }} / {{ else if }} / {{ else }} / {{ end }}; {{ range PIPE }}, {{ range $x := PIPE }},
{{ range $i, $x := PIPE }} (with {{ else }}); {{ with PIPE }}; {{ $x := PIPE }}.
Truthiness as in Go templates: false, 0, "", nil and empty list/map are false.
Ollama's Values (template/template.go): .System (all system messages joined by "\\n\\n"), .Messages (roles
merged when consecutive; system messages are also in it), .Prompt/.Response (legacy templates), .Tools.
Missing keys render as "" (Ollama parses with missingkey=zero).
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\$?[A-Za-z_]\w*(?:\.\w+)*|\$|\.(?:\w+(?:\.\w+)*)?)|(-?\d+)|(:=|,))'
)


class GoTemplateError(ValueError):
    pass


def _lex(src: str) -> list[tuple[str, Any]]:
    """Text and action tokens, with Go's trim markers applied to neighbouring text."""
    out: list[tuple[str, Any]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            out.append(("text", text))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            out.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if text:
        out.append(("text", text))
    return out


def _tokens(expr: str) -> list[str]:
    toks, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot parse {expr[pos:]!r}")
        toks.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return toks


def truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        for k in (name, name[:1].lower() + name[1:], name.lower()):
            if k in obj:
                return obj[k]
        return None
    return getattr(obj, name, None)


FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not truthy(a),
    "and": lambda *xs: next((x for x in xs if not truthy(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if truthy(x)), xs[-1]),
    "len": lambda a: len(a),
}


class _Ctx:
    def __init__(self, root: Any):
        self.root = root
        self.vars: list[dict[str, Any]] = [{"$": root}]

    def var(self, name: str) -> Any:
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise GoTemplateError(f"undefined variable {name}")


def _eval(toks: list[str], dot: Any, ctx: _Ctx) -> Any:
    """Evaluate one command: a function call or a single operand."""

    def operand(i: int) -> tuple[Any, int]:
        t = toks[i]
        if t == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[j], 0)
                j += 1
            return _eval(toks[i + 1 : j - 1], dot, ctx), j
        if t.startswith('"'):
            return bytes(t[1:-1], "utf-8").decode("unicode_escape"), i + 1
        if t.startswith("`"):
            return t[1:-1], i + 1
        if re.fullmatch(r"-?\d+", t):
            return int(t), i + 1
        if t in ("true", "false"):
            return t == "true", i + 1
        if t == "nil":
            return None, i + 1
        if t == ".":
            return dot, i + 1
        if t.startswith("."):
            v = dot
            for part in t[1:].split("."):
                v = _field(v, part)
            return v, i + 1
        if t.startswith("$"):
            head, *rest = t.split(".")
            v = ctx.var(head)
            for part in rest:
                v = _field(v, part)
            return v, i + 1
        raise GoTemplateError(f"unexpected {t!r}")

    if not toks:
        raise GoTemplateError("empty pipeline")
    if toks[0] in FUNCS:
        args, i = [], 1
        while i < len(toks):
            v, i = operand(i)
            args.append(v)
        return FUNCS[toks[0]](*args)
    v, i = operand(0)
    if i != len(toks):
        raise GoTemplateError(f"extra tokens in {' '.join(toks)}")
    return v


def _parse_block(tokens, i):
    """Like _parse, with `else if` chains turned into nested if nodes."""
    nodes: list = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "text":
            nodes.append(("text", val))
            i += 1
            continue
        word = val.split(None, 1)[0] if val else ""
        if word in ("else", "end"):
            return nodes, i
        if word in ("if", "range", "with"):
            node, i = _parse_branch(tokens, i + 1, word, val[len(word) :].strip())
            nodes.append(node)
            continue
        nodes.append(("action", val))
        i += 1
    return nodes, i


def _parse_branch(tokens, i, word, pipe):
    body, i = _parse_block(tokens, i)
    if i >= len(tokens):
        raise GoTemplateError(f"missing end for {word} {pipe}")
    val = tokens[i][1]
    if val == "end":
        return (word, pipe, body, []), i + 1
    rest = val[4:].strip()  # after "else"
    if rest:
        w2 = rest.split(None, 1)[0]
        node, i = _parse_branch(tokens, i + 1, w2, rest[len(w2) :].strip())
        return (word, pipe, body, [node]), i
    else_body, i = _parse_block(tokens, i + 1)
    if i >= len(tokens) or tokens[i][1] != "end":
        raise GoTemplateError(f"missing end for {word} {pipe}")
    return (word, pipe, body, else_body), i + 1


def _run(nodes: list, dot: Any, ctx: _Ctx, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "action":
            toks = _tokens(node[1])
            if len(toks) >= 3 and toks[0].startswith("$") and toks[1] in (":=", "="):
                ctx.vars[-1][toks[0]] = _eval(toks[2:], dot, ctx)
                continue
            v = _eval(toks, dot, ctx)
            out.append("" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)))
        else:
            word, pipe, body, else_body = node
            toks = _tokens(pipe)
            names: list[str] = []
            if ":=" in toks:
                k = toks.index(":=")
                names = [t for t in toks[:k] if t != ","]
                toks = toks[k + 1 :]
            v = _eval(toks, dot, ctx)
            if word == "if":
                _run(body if truthy(v) else else_body, dot, ctx, out)
            elif word == "with":
                _run(body if truthy(v) else else_body, v if truthy(v) else dot, ctx, out)
            else:  # range
                items = list(v.items()) if isinstance(v, dict) else list(enumerate(v or []))
                if not items:
                    _run(else_body, dot, ctx, out)
                for idx, item in items:
                    scope = {}
                    if len(names) == 1:
                        scope[names[0]] = item
                    elif len(names) == 2:
                        scope[names[0]], scope[names[1]] = idx, item
                    ctx.vars.append(scope)
                    _run(body, item, ctx, out)
                    ctx.vars.pop()


def render(template: str, values: dict) -> str:
    tokens = _lex(template)
    nodes, i = _parse_block(tokens, 0)
    if i != len(tokens):
        raise GoTemplateError("unexpected else/end at top level")
    out: list[str] = []
    _run(nodes, values, _Ctx(values), out)
    return "".join(out)


def ollama_values(messages: list[dict], default_system: str | None = None) -> dict:
    """What Ollama's chat endpoint passes a Messages template: the Modelfile SYSTEM is used when the request has
    no system message; .System = all system contents joined; .Messages = consecutive same-role merged."""
    msgs = [dict(m) for m in messages]
    if default_system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": default_system})
    system = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
    collated: list[dict] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append(
                {
                    "Role": m["role"],
                    "Content": m["content"],
                    "role": m["role"],
                    "content": m["content"],
                }
            )
        collated[-1]["Content"] = collated[-1]["content"]
    return {"System": system, "Messages": collated, "Response": "", "Prompt": ""}
