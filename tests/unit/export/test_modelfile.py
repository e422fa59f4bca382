"""The Modelfile's TEMPLATE, rendered by the Go-template renderer as Ollama would, gives the HF chat template's
prompt text for a 3-turn conversation in each family; the renderer itself reproduces Ollama's own ChatML
testdata; a TEMPLATE of the wrong family is refused."""

from __future__ import annotations

import pytest

from finetune import chat_format
from finetune.errors import ModelError
from finetune.export import gotemplate, modelfile

THREE_TURNS = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What is APR?"},
    {"role": "assistant", "content": "The yearly rate, without compounding."},
    {"role": "user", "content": "And APY?\n Context: savings"},
]


@pytest.mark.parametrize("family", ["qwen2", "llama3", "phi3"])
@pytest.mark.parametrize("system", [True, False])
def test_template_renders_three_turns_as_the_hf_template(family, system, family_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_dir(family))
    conversation = THREE_TURNS if system else THREE_TURNS[1:]
    template, default_system = modelfile.choose_template(tokenizer)
    text = modelfile.render("model-q8_0.gguf", template, default_system, ["<|x|>"], 64)
    parsed = modelfile.parse(text)  # what Ollama reads back from the Modelfile
    assert parsed["FROM"] == "./model-q8_0.gguf"
    rendered = gotemplate.render(parsed["TEMPLATE"], gotemplate.ollama_values(conversation, parsed.get("SYSTEM")))
    assert rendered == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ("temperature", "0") in parsed["parameters"] and ("top_k", "1") in parsed["parameters"]


@pytest.mark.parametrize(("family", "other"), [("qwen2", "llama3"), ("llama3", "phi3"), ("phi3", "chatml")])
def test_a_template_of_another_family_renders_differently(family, other, family_dir):
    """The negative control of the render test: the comparison tells the families apart."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_dir(family))
    rendered = modelfile.ollama_prompt(modelfile.TEMPLATES[other], THREE_TURNS, None)
    assert rendered != tokenizer.apply_chat_template(THREE_TURNS, tokenize=False, add_generation_prompt=True)


def test_a_chat_template_no_family_renders_is_refused(family_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_dir("qwen2"))
    tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ModelError, match="no Ollama TEMPLATE"):
        modelfile.choose_template(tokenizer)


def test_stop_tokens_are_the_end_of_turn_then_eos(family_dir):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(family_dir("llama3"))
    stops = chat_format.stop_token_ids(tokenizer, GenerationConfig.from_pretrained(family_dir("llama3")))
    assert tokenizer.convert_ids_to_tokens(stops) == ["<|eot_id|>", "<|end_of_text|>"]  # Llama-3.2-Instruct's


# Ollama's template/chatml.gotmpl and its testdata (system-user-assistant-user), copied verbatim.
OLLAMA_CHATML = (
    "{{- if .Messages }}\n{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ else }}\n{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n{{- end }}"
)
OLLAMA_EXPECTED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n"
    "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n<|im_start|>user\n"
    "I'd like to show off how chat templating works!<|im_end|>\n<|im_start|>assistant\n"
)


def test_renderer_reproduces_ollamas_testdata():
    messages = [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ]
    values = {
        "System": "You are a helpful assistant.",
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
    }
    assert gotemplate.render(OLLAMA_CHATML, values) == OLLAMA_EXPECTED
    # the legacy branch keeps Go's newline after {{ else }}; else-if chains, variables, and/or/not
    legacy = gotemplate.render(OLLAMA_CHATML, {"System": "", "Messages": [], "Prompt": "Hi", "Response": ""})
    assert legacy == "\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<|im_end|>"
    t = (
        '{{/* c */}}{{ range $i, $m := .Messages }}{{ if eq $i 0 }}[first]{{ else if eq $m.Role "user" }}U'
        "{{ else }}A{{ end }}{{ end }}{{ if and .System (not .X) }}S{{ end }}"
    )
    assert gotemplate.render(t, values) == "[first]AUS"
