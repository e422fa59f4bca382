"""The one place the prompt format lives: Alpaca row -> chat conversation."""

from __future__ import annotations

# Qwen2-Instruct's ChatML template, byte for byte, so the tiny default and the real model
# render prompts identically.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def user_text(instruction: str, input_text: str) -> str:
    """Instruction, plus '\\n Context:' + input when there is one (the reference format)."""
    return instruction + ("\n Context:" + input_text if input_text else "")


def to_conversation(instruction: str, input_text: str, output: str) -> dict:
    """TRL's conversational prompt-completion format: the loss can cover the completion only."""
    return {
        "prompt": [{"role": "user", "content": user_text(instruction, input_text)}],
        "completion": [{"role": "assistant", "content": output}],
    }


def conversations(frame) -> list[dict]:
    """Every row of an Alpaca frame (instruction/input/output, missing input as "") as a conversation."""
    rows = frame.astype(object).where(frame.notna(), "")
    return [to_conversation(r["instruction"], r["input"], r["output"]) for r in rows.to_dict("records")]


def prompt_key(instruction: str, input_text: str) -> str:
    """Identity of a prompt for dedup and leakage checks."""
    return user_text(instruction.strip(), input_text.strip())


def token_length(tokenizer, conversation: dict) -> int:
    """Tokens of prompt + completion after the chat template, as SFTTrainer will see them."""
    ids = tokenizer.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)
