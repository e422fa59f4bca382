"""finetune.chat in this process: a clear error without a merged model, a conversation on stdin that keeps its
history, and --adapter (tests/integration/test_chat_command.py runs `python -m finetune.chat --prompt`)."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from finetune import chat, modeling
from finetune.evaluation import generation

QUESTION = "What is a bond?"
FOLLOW_UP = "And a stock?"


def greedy(model_dir, messages: list[dict], max_new_tokens: int) -> str:
    model, tokenizer = modeling.load_model(model_dir, "none"), modeling.load_tokenizer(model_dir)
    return generation.generate(model, tokenizer, [{"prompt": messages}], 1, max_new_tokens)[0]["text"]


def test_missing_merged_model_says_what_to_do(tmp_path, params_file, monkeypatch):
    monkeypatch.setenv("PARAMS_FILE", str(params_file))
    with pytest.raises(modeling.ModelError, match="dvc repro merge.*--adapter"):
        chat.main(["--model", str(tmp_path / "nothing"), "--prompt", "hi"])


def test_conversation_on_stdin_keeps_the_history(merged_dir, params_file, monkeypatch, capsys):
    monkeypatch.setenv("PARAMS_FILE", str(params_file))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n{FOLLOW_UP}\n\nnever read\n"))
    chat.main(["--model", str(merged_dir)])
    printed = capsys.readouterr().out.strip().split("\n")

    first = greedy(merged_dir, [{"role": "user", "content": QUESTION}], 8)
    second = greedy(
        merged_dir,
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first},
            {"role": "user", "content": FOLLOW_UP},
        ],
        8,
    )
    alone = greedy(merged_dir, [{"role": "user", "content": FOLLOW_UP}], 8)
    assert second != alone  # the history changes the answer: the check below can tell
    assert "\n".join(printed) == f"{first.strip()}\n{second.strip()}"


def test_adapter_mode_answers_with_base_plus_adapter(merged_dir, params_file, tmp_path, monkeypatch, capsys):
    """--adapter: the quantized base + LoRA adapter, as evaluate loads them; a large adapter changes answers."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        modeling.load_model(merged_dir, "none"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=gen))
    model.peft_config["default"].base_model_name_or_path = "tiny"  # as train records params' model.base
    model.save_pretrained(tmp_path / "adapter")

    monkeypatch.setenv("PARAMS_FILE", str(params_file))
    chat.main(["--adapter", str(tmp_path / "adapter"), "--base", str(merged_dir), "--prompt", QUESTION])
    printed = capsys.readouterr().out.strip()

    tuned = modeling.load_tuned(merged_dir, tmp_path / "adapter", "8bit", torch.float32, expected_base="tiny")
    messages = [{"prompt": [{"role": "user", "content": QUESTION}]}]
    tokenizer = modeling.load_tokenizer(merged_dir)
    expected = generation.generate(tuned, tokenizer, messages, 1, 8)[0]["text"]
    assert printed == expected.strip()
    assert expected != greedy(merged_dir, messages[0]["prompt"], 8)
