"""dvc.yaml kept in step with the code: each stage's deps, outs and params, checked against its module's AST.

For every stage run as `python -m stages.NAME`, the module is read (never imported) and:
- every `stages.*` module it imports, directly or through another stages module, must be a dep;
- every module-level path constant (a string under data/, models/ or metrics/) must be a dep or an
  out of the stage; one passed to an io writer must be an out, one passed to a reader a dep;
- every params key it reads must be covered by the stage's params: `params.load(...)` sections,
  attribute chains such as `p.train.lora.r`, through aliases (`cfg = p.model`) and through
  parameters annotated with a params class (`t: params.TrainParams`).
The reverse holds too: removing any entry of dvc.yaml (but the few listed in NOT_IN_CODE) must be
noticed, so a dep or params key the code does not use fails the negative cases.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
import shutil
import sys
import typing
from functools import cache
from pathlib import Path

import pytest
import yaml

from helpers import REPO

ROOT = REPO  # where stages/ is read from (a probe test points it elsewhere)
DATA_ROOTS = ("data", "models", "metrics")
OUT_KINDS = ("outs", "metrics", "plots")
# Imported by every stage, but they cannot change what a stage writes: listing them would rerun the
# whole pipeline for a reworded error message.
NO_OUTPUT_EFFECT = {"stages/__init__.py", "stages/errors.py", "stages/environment.py"}
# State a stage keeps outside DVC on purpose.
OUTSIDE_DVC = {
    "models/checkpoints": "train's resumable checkpoints: cleared by train's own fingerprint, never pulled",
    "models/.base_source_cache.json": "base_source's digest cache: only spares rereading unchanged files",
}
# dvc.yaml entries that no module constant names (so removing them cannot be noticed from the code).
NOT_IN_CODE = {
    ("ingest", "deps", "${data.path}"): "the input file is named by a param",
    ("base", "deps", "models/base_source.json"): "orders base after base_source, which notices edits in a local model",
}
WRITER = re.compile(r"^(write|atomic_path$)")  # io.write_json, io.atomic_path, ...
READER = re.compile(r"^(read|load)_?|^check_adapter$")  # pd.read_parquet, io.read_json, modeling.load_model...


# ---------------------------------------------------------------- reading the code

def parse(module: str) -> ast.Module:
    return _parse(ROOT / module)


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_path(name: str) -> str | None:
    path = f"{name.replace('.', '/')}.py"
    return path if (ROOT / path).is_file() else None


def direct_imports(module: str) -> set[str]:
    """stages/*.py files a module imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(parse(module)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("stages.")]
        elif isinstance(node, ast.ImportFrom) and node.module == "stages":
            names = [f"stages.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            names = [node.module]
        else:
            continue
        found |= {path for name in names if (path := module_path(name))}
    return found


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for dep in direct_imports(todo.pop()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def path_constants(module: str) -> dict[str, str]:
    """Module-level NAME = "data/..." / "models/..." / "metrics/..." assignments."""
    found = {}
    for node in parse(module).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                and node.value.value.split("/")[0] in DATA_ROOTS and "/" in node.value.value):
            found[node.targets[0].id] = node.value.value
    return found


def call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def constant_uses(module: str, constants: dict[str, str]) -> tuple[set[str], set[str]]:
    """(paths passed to an io writer, paths passed to a reader) among the module's path constants."""
    written, read = set(), set()
    for node in ast.walk(parse(module)):
        if isinstance(node, ast.Call):
            args = [*node.args, *(k.value for k in node.keywords)]
            names = {a.id for a in args if isinstance(a, ast.Name) and a.id in constants}
            if WRITER.search(call_name(node)):
                written |= {constants[n] for n in names}
            elif READER.search(call_name(node)):
                read |= {constants[n] for n in names}
    return written, read


@cache
def params_classes() -> dict[str, str]:
    """'TrainParams' -> 'train', 'LoraParams' -> 'train.lora', ... from stages/params.py's dataclasses."""
    from stages import params

    found = {"Params": ""}

    def walk(cls, prefix):
        found[cls.__name__] = prefix
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}.{f.name}")

    for name, cls in params.SECTIONS.items():
        walk(cls, name)
    return found


def chain(node: ast.AST) -> list[str] | None:
    """`p.train.lora.r` -> ['p', 'train', 'lora', 'r']; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def join(prefix: str, attrs: list[str]) -> str:
    return ".".join(([prefix] if prefix else []) + attrs)


def params_read(module: str) -> tuple[set[str], set[str]]:
    """(sections passed to params.load, params keys read through attribute chains) in every function."""
    loaded, keys = set(), set()
    classes = params_classes()
    functions = [fn for fn in ast.walk(parse(module)) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))]

    def typed(arg: ast.arg) -> str | None:
        annotation = arg.annotation
        return classes.get(annotation.attr) if isinstance(annotation, ast.Attribute) else None

    # A section passed to a function of this module that declares its params type is read there, key by key.
    signatures = {fn.name: fn.args.posonlyargs + fn.args.args for fn in functions}
    for fn in functions:
        roots: dict[str, str] = {}  # local name -> params prefix ('' for the whole Params)
        for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
            if typed(arg) is not None:
                roots[arg.arg] = typed(arg)
        body = [n for n in ast.walk(fn) if n is not fn]
        passed_typed = set()
        for call in (n for n in body if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
            args = signatures.get(call.func.id, [])
            passed_typed |= {id(a) for a, param in zip(call.args, args) if typed(param) is not None}
        for node in sorted((n for n in body if isinstance(n, ast.Assign)), key=lambda n: n.lineno):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                continue
            value = node.value
            if isinstance(value, ast.Call) and chain(value.func) == ["params", "load"]:
                roots[node.targets[0].id] = ""
            elif (parts := chain(value)) and parts[0] in roots:
                roots[node.targets[0].id] = join(roots[parts[0]], parts[1:])
                passed_typed.add(id(value))  # an alias: what is read through it counts, not the alias itself
        for call in (n for n in body if isinstance(n, ast.Call) and chain(n.func) == ["params", "load"]):
            loaded |= {a.value for a in call.args if isinstance(a, ast.Constant)}
        inner = {id(n.value) for n in body if isinstance(n, ast.Attribute)}
        for node in body:
            if isinstance(node, ast.Attribute) and id(node) not in inner | passed_typed:  # whole chains only
                parts = chain(node)
                if parts and parts[0] in roots:
                    keys.add(join(roots[parts[0]], parts[1:]))
    return loaded, keys


# ---------------------------------------------------------------- the check

def entries(spec: dict, kind: str) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in spec.get(kind) or []]


def covers(declared: str, path: str) -> bool:
    return path == declared or path.startswith(declared.rstrip("/") + "/")


def key_covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(declared + ".")


def stage_module(spec: dict) -> str | None:
    m = re.fullmatch(r"python -m (stages\.\w+)", str(spec.get("cmd", "")).strip())
    return module_path(m.group(1)) if m else None


@cache
def analysis(root: Path, module: str) -> dict:
    """What the code of a stage module (and the stages modules it imports) needs, read once per module."""
    code = {module} | import_closure(module) - NO_OUTPUT_EFFECT
    constants = {k: v for k, v in path_constants(module).items()
                 if not any(covers(outside, v) for outside in OUTSIDE_DVC)}
    written, read = constant_uses(module, constants)
    loaded, keys = params_read(module)
    return {"code": code, "paths": set(constants.values()), "written": written, "read": read,
            "loaded": loaded, "keys": keys}


def problems(pipeline: dict) -> list[str]:
    """What a stage's code reads or writes that its dvc.yaml entry lacks, and entries the code does not need."""
    found = []
    for name, spec in pipeline["stages"].items():
        module = stage_module(spec)
        if module is None:
            continue
        deps, outs = entries(spec, "deps"), [p for kind in OUT_KINDS for p in entries(spec, kind)]
        params = entries(spec, "params")
        a = analysis(ROOT, module)
        code, written, read, loaded, keys = a["code"], a["written"], a["read"], a["loaded"], a["keys"]
        for path in sorted(code - set(deps)):
            found.append(f"{name}: imports {path}, missing from deps")
        for path in sorted(a["paths"]):
            in_deps, in_outs = any(covers(d, path) for d in deps), any(covers(o, path) for o in outs)
            if path in written and not in_outs:
                found.append(f"{name}: writes {path}, missing from outs/metrics/plots")
            elif path in read - written and not in_deps:
                found.append(f"{name}: reads {path}, missing from deps")
            elif not (in_deps or in_outs):
                found.append(f"{name}: uses {path}, missing from deps and outs")
        for key in sorted(keys):
            if not any(key_covers(d, key) for d in params):
                found.append(f"{name}: reads params key {key}, missing from params")
        for section in sorted(loaded):
            if not any(key_covers(section, d) or key_covers(d, section) for d in params):
                found.append(f"{name}: loads params section {section}, missing from params")
        # nothing more: each entry must be needed by the code (or be one of NOT_IN_CODE)
        needed_paths = a["paths"]
        for kind in ("deps", *OUT_KINDS):
            for entry in entries(spec, kind):
                if (name, kind, entry) in NOT_IN_CODE:
                    continue
                if entry.startswith("stages/"):
                    if entry not in code:
                        found.append(f"{name}: {kind} lists {entry}, which the stage does not import")
                elif not any(covers(entry, path) for path in needed_paths):
                    found.append(f"{name}: {kind} lists {entry}, which no path constant of {module} names")
        for entry in params:
            if not any(key_covers(entry, k) or key_covers(k, entry) for k in keys):
                found.append(f"{name}: params lists {entry}, which the stage never reads")
    return found


def pipeline() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_yaml_lists_what_each_stage_reads_and_writes():
    assert problems(pipeline()) == []


def every_entry() -> list[tuple[str, str, str]]:
    out = []
    for name, spec in pipeline()["stages"].items():
        if stage_module(spec) is None:
            continue
        for kind in ("deps", *OUT_KINDS, "params"):
            out += [(name, kind, e) for e in entries(spec, kind) if (name, kind, e) not in NOT_IN_CODE]
    return out


@pytest.mark.parametrize("stage,kind,entry", every_entry(), ids=lambda v: str(v))
def test_a_removed_entry_is_noticed(stage, kind, entry):
    """Negative control: dvc.yaml without one entry fails the check, naming what is missing."""
    broken = copy.deepcopy(pipeline())
    listed = broken["stages"][stage][kind]
    listed[:] = [e for e in listed if (e if isinstance(e, str) else next(iter(e))) != entry]
    found = [p.removeprefix(f"{stage}: ") for p in problems(broken) if p.startswith(f"{stage}: ")]
    assert found, f"removing {entry} from {stage}.{kind} went unnoticed"
    named = [p for p in found
             if entry in re.split(r"[\s,]+", p) or any(key_covers(entry, k) for k in re.findall(r"key (\S+)", p))]
    assert named, found


def probe(root: Path, monkeypatch, snippet: str, **spec) -> list[str]:
    """problems() of a one-stage pipeline whose module is `snippet` (a copy of stages/ under root)."""
    shutil.copytree(REPO / "stages", root / "stages")
    (root / "stages/probe.py").write_text(snippet)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    return problems({"stages": {"probe": {"cmd": "python -m stages.probe", "deps": ["stages/probe.py"], **spec}}})


@pytest.mark.parametrize("snippet,expected", [
    ("from stages import io\nOUT = 'metrics/x.json'\ndef main():\n    io.write_json(OUT, {})\n",
     "writes metrics/x.json, missing from outs"),
    ("import pandas as pd\nIN = 'data/x.parquet'\ndef main():\n    pd.read_parquet(IN)\n",
     "reads data/x.parquet, missing from deps"),
    ("from stages import params\ndef main():\n    p = params.load('train')\n    cfg = p.train\n    cfg.lora.r\n",
     "reads params key train.lora.r, missing from params"),
    ("from stages import params\ndef f(t: params.TrainParams):\n    return t.lora.alpha\n",
     "reads params key train.lora.alpha, missing from params"),
    ("from stages import params\ndef main():\n    params.load('merge')\n", "loads params section merge"),
    ("from stages import evaluation\n", "imports stages/prompts.py, missing from deps"),  # through evaluation
])
def test_the_reader_sees(tmp_path, monkeypatch, snippet, expected):
    """Each kind of use the AST reader must notice, in a probe stage that declares nothing."""
    found = probe(tmp_path, monkeypatch, snippet)
    assert any(expected in p for p in found), found


def test_a_probe_that_declares_everything_passes(tmp_path, monkeypatch):
    snippet = ("from stages import io, params\nIN = 'data/in.parquet'\nOUT = 'metrics/x.json'\n"
               "def main():\n    p = params.load('train')\n    t = p.train\n    io.read_any(IN)\n"
               "    io.write_json(OUT, {'r': t.lora.r, 'lr': p.lr})\n")
    spec = {"deps": ["stages/probe.py", "stages/io.py", "stages/params.py", "data/in.parquet"],
            "metrics": [{"metrics/x.json": {"cache": False}}], "params": ["train.lora.r", "lr"]}
    assert probe(tmp_path, monkeypatch, snippet, **spec) == []
