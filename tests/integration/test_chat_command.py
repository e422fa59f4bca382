"""`python -m finetune.chat --prompt`: the package's command prints the greedy answer."""

from __future__ import annotations

import sys

from finetune import modeling
from finetune.evaluation import generation
from helpers import REPO, run

QUESTION = "What is a bond?"


def greedy(model_dir, messages: list[dict], max_new_tokens: int) -> str:
    model, tokenizer = modeling.load_model(model_dir, "none"), modeling.load_tokenizer(model_dir)
    return generation.generate(model, tokenizer, [{"prompt": messages}], 1, max_new_tokens)[0]["text"]


def test_prompt_prints_the_greedy_answer(merged_dir, params_file):
    result = run(
        [
            sys.executable,
            "-m",
            "finetune.chat",
            "--model",
            str(merged_dir),
            "--prompt",
            QUESTION,
            "--max-new-tokens",
            "12",
        ],
        cwd=REPO,
        extra_env={"PARAMS_FILE": str(params_file)},
    )
    expected = greedy(merged_dir, [{"role": "user", "content": QUESTION}], 12)
    assert len(expected.strip()) > 5
    assert result.stdout.strip() == expected.strip()
