"""The Ollama Modelfile of an exported GGUF: FROM, a TEMPLATE in Ollama's Go-template syntax that renders
prompts as the model's own chat template does (checked here with gotemplate), its stop tokens, and the
greedy decoding evaluation uses."""

from __future__ import annotations

from finetune.errors import ModelError
from finetune.export import gotemplate

# Ollama's Messages mode: .System, then .Messages (which also hold the system messages: skipped in the loop);
# each ends with the assistant header, after which Ollama appends the generation.
CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" "assistant" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""
PHI3 = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" "assistant" }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}
{{- end }}<|assistant|>
"""
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "phi3": PHI3}
DEFAULT_SYSTEMS = (
    None,
    "You are a helpful assistant.",
)  # a template that adds one when none is given (ChatML)
PROBES = [  # the conversations a TEMPLATE must render as the HF chat template does (the last: 3 turns)
    [{"role": "user", "content": "What is a bond?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Q1"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Explain APR vs APY.\n Context: savings"},
    ],
]
EOG_TEXTS = {
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
}
"""Tokens llama.cpp's vocabulary loader marks as end-of-generation by their text (llama-vocab.cpp)."""


def hf_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def ollama_prompt(template: str, messages: list[dict], system: str | None) -> str:
    return gotemplate.render(template, gotemplate.ollama_values(messages, system))


def choose_template(tokenizer) -> tuple[str, str | None]:
    """(TEMPLATE, default SYSTEM) rendering every probe as the HF chat template; a literal BOS first when the
    HF template writes one. A ModelError when no known family does (a Modelfile would answer garbage)."""
    wanted = [hf_prompt(tokenizer, m) for m in PROBES]
    bos = tokenizer.bos_token or ""
    for template in TEMPLATES.values():
        for prefix in dict.fromkeys(("", bos)):
            for system in DEFAULT_SYSTEMS:
                if all(ollama_prompt(prefix + template, m, system) == w for m, w in zip(PROBES, wanted)):
                    return prefix + template, system
    raise ModelError(
        f"no Ollama TEMPLATE ({', '.join(TEMPLATES)}) renders prompts as this model's chat template "
        f"does; e.g. the HF template gives {wanted[-1][:200]!r}"
    )


def render(
    gguf_file: str,
    template: str,
    system: str | None,
    stop_tokens: list[str],
    max_new_tokens: int,
) -> str:
    """The Modelfile text: greedy (temperature 0, top_k 1, no repeat penalty) as evaluation decodes."""
    if '"""' in template or any('"' in s for s in stop_tokens):
        raise ModelError("chat template or stop token contains a double quote, which a Modelfile cannot hold")
    lines = [f"FROM ./{gguf_file}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens]
    lines += [
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_predict {max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict:
    """FROM, TEMPLATE, SYSTEM and PARAMETERs of a Modelfile written by render (for checks and tests)."""
    out: dict = {"parameters": []}
    rest = text
    while rest:
        line, _, rest = rest.partition("\n")
        key, _, value = line.partition(" ")
        if value.startswith('"""'):
            value, _, tail = (value[3:] + "\n" + rest).partition('"""')
            rest = tail.lstrip("\n")
        if key == "PARAMETER":
            name, _, v = value.partition(" ")
            out["parameters"].append((name, v.strip('"')))
        elif key:
            out[key] = value
    return out
