"""The one place the prompt format lives: Alpaca row -> chat conversation -> the model's chat template, and its length."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

# Qwen2-Instruct's ChatML template, byte for byte, so the tiny default and the real model
# render prompts identically.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"  # ChatML's end of turn: only the tiny default's tokenizer and the chatml choice use it
CHATML_MARKERS = ("<|im_start|>", END_OF_TURN)  # must each be one token of a vocabulary that uses CHATML_TEMPLATE
CONTEXT = "\n Context:"  # joins instruction and input in the user turn (the reference format)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


_MARK = "\x00answer\x00"  # an assistant turn's content, found again in the rendered template


def end_of_turn(tokenizer) -> tuple[int | None, str]:
    """The token that closes an assistant turn in the tokenizer's chat template, and the text that follows the
    turn's content: (its id, text) when that text starts with a special or added token (ChatML <|im_end|>,
    Llama-3 <|eot_id|>, Phi-3 <|end|>, Gemma <end_of_turn>), else (None, text)."""
    from jinja2 import TemplateError

    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARK}], tokenize=False
        )
    except (TemplateError, ValueError):  # a template that refuses this conversation: no end of turn known
        return None, ""
    if not isinstance(rendered, str) or rendered.count(_MARK) != 1:
        return None, ""
    after = rendered.split(_MARK)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return (ids[0] if ids and ids[0] in special else None), after


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token that ends an answer: the chat template's end of turn, the tokenizer's eos, then each id of the
    model's generation_config.eos_token_id (int or list); deduplicated, end of turn first."""
    ids = [end_of_turn(tokenizer)[0], tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def user_text(instruction: str, input_text: str) -> str:
    """Instruction, plus '\\n Context:' + input when there is one (the reference format)."""
    return instruction + (CONTEXT + input_text if input_text else "")


def user_texts(instructions: pd.Series, inputs: pd.Series) -> pd.Series:
    """user_text for whole columns (inputs filled with "")."""
    return instructions + (CONTEXT + inputs).where(inputs != "", "")


def to_conversation(instruction: str, input_text: str, output: str) -> dict:
    """TRL's conversational prompt-completion format: the loss can cover the completion only."""
    return {
        "prompt": [{"role": "user", "content": user_text(instruction, input_text)}],
        "completion": [{"role": "assistant", "content": output}],
    }


def conversations(frame) -> list[dict]:
    """Every row of an Alpaca frame (instruction/input/output, missing input as "") as a conversation; of a
    conversation frame (a `messages` column) as its history before the last assistant turn, that turn, and the
    whole (last_turn_split)."""
    if "messages" in frame.columns:
        return [last_turn_split(json.loads(text)) for text in frame["messages"]]
    rows = frame.astype(object).where(frame.notna(), "")
    return [to_conversation(r["instruction"], r["input"], r["output"]) for r in rows.to_dict("records")]


def token_length(tokenizer, conversation: dict) -> int:
    """Tokens of prompt + completion after the chat template, as SFTTrainer will see them."""
    ids = tokenizer.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


# Token lengths of many rows: the chat template is rendered once around placeholders and filled in
# as plain strings, then the texts are tokenized in batches (in parallel) without Python per token.
_PLACEHOLDERS = (" \n\x00user\x00 \n", " \n\x00output\x00 \n")  # spaces and newlines: a trimming template shows


def template_parts(tokenizer) -> tuple[str, str, str] | None:
    """(before, between, after) with user text and output inserted verbatim; None if the template alters them."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PLACEHOLDERS[0]}, {"role": "assistant", "content": _PLACEHOLDERS[1]}],
        tokenize=False,
    )
    if any(rendered.count(p) != 1 for p in _PLACEHOLDERS):
        return None
    before, rest = rendered.split(_PLACEHOLDERS[0])
    between, after = rest.split(_PLACEHOLDERS[1])
    return before, between, after


def chat_texts(tokenizer, frame: pd.DataFrame, parts: tuple[str, str, str] | None) -> list[str]:
    """Each row's conversation as the chat template renders it (input filled with "")."""
    if parts is None:  # a template that changes the content: render every row with it
        return [
            tokenizer.apply_chat_template(c["prompt"] + c["completion"], tokenize=False) for c in conversations(frame)
        ]
    before, between, after = parts
    inputs = frame["input"].astype(object).where(frame["input"].notna(), "")
    texts = before + user_texts(frame["instruction"].astype(object), inputs) + between + frame["output"] + after
    return texts.tolist()


def _one_byte_per_token(tokenizer) -> bool:
    """Whether every token covers at least one byte of ASCII text: byte-level BPE whose normaliser
    leaves ASCII unchanged (Qwen2's, GPT-2's and the tiny default's)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return (
        type(backend.model).__name__ == "BPE"
        and "ByteLevel" in _step_types(backend.pre_tokenizer)
        and type(backend.normalizer).__name__ in ("NoneType", "NFC", "NFKC", "NFD", "NFKD")
    )


def _step_types(pre_tokenizer) -> list[str]:
    if type(pre_tokenizer).__name__ != "Sequence":
        return [type(pre_tokenizer).__name__]
    steps = []
    while True:  # a tokenizers Sequence can be indexed but has no len()
        try:
            steps.append(type(pre_tokenizer[len(steps)]).__name__)
        except IndexError:
            return steps


def token_lengths(tokenizer, frame: pd.DataFrame, fits: int | None = None, batch_size: int = 4096) -> np.ndarray:
    """token_length of every row of an Alpaca frame, tokenized in batches.

    With `fits`, a row that provably has at most that many tokens is not tokenized and gets an upper
    bound (<= fits) instead: with a byte-level BPE, an ASCII text of b bytes has at most b tokens.
    """
    if "messages" in frame.columns:  # conversations: every turn, as training tokenizes them
        return np.array(
            [len(encode_conversation(tokenizer, json.loads(t))[0]) for t in frame["messages"]], dtype=np.int64
        )
    parts = template_parts(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    bounded = fits is not None and _one_byte_per_token(tokenizer)
    lengths = np.zeros(len(frame), dtype=np.int64)
    for start in tqdm(range(0, len(frame), batch_size), desc="token lengths", unit="batch", disable=None, leave=False):
        texts = chat_texts(tokenizer, frame.iloc[start : start + batch_size], parts)
        todo = np.arange(len(texts))
        if bounded:
            array = pa.array(texts, type=pa.large_string())
            bound = np.where(
                pc.string_is_ascii(array).to_numpy(zero_copy_only=False), pc.binary_length(array).to_numpy(), fits + 1
            )
            lengths[start + todo] = bound
            todo = todo[bound > fits]
        if not len(todo):
            continue
        batch = [texts[i] for i in todo]
        if backend is not None:
            # the backend keeps the padding and truncation of the tokenizer's last padded call; as transformers does
            backend.no_padding()
            backend.no_truncation()
            counts = [len(e) for e in backend.encode_batch_fast(batch, add_special_tokens=False)]
        else:
            counts = [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
        lengths[start + todo] = counts
    return lengths


# ---------------------------------------------------------------- conversations: every assistant turn labelled


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(the conversation as the chat template renders it, each assistant turn's (start, end) in that text).

    Derived from the template itself, not from markers: a turn starts where the conversation before it, rendered
    with the generation prompt, ends, and ends where the conversation up to it ends; so it covers the turn's text
    and whatever the template closes a turn with (<|im_end|> and its newline for ChatML), as TRL's completion
    mask covers an Alpaca answer. A template that renders earlier turns differently once more follow (one that
    drops past reasoning, say) has no such spans: ValueError."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"the chat template renders turns before assistant turn {i + 1} differently once later "
                "turns follow: no span of the text is that turn's alone"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, assistant mask: 1 on every assistant turn's tokens, each turn's end as a token count).

    The text is tokenized once, as TRL does (no special tokens added); a token is an assistant token when it
    starts inside an assistant span. ends[k]: tokens up to the end of the k-th assistant turn, so a prefix of
    the conversation cut after that turn is input_ids[:ends[k]]."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.array([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
    mask = np.zeros(len(starts), dtype=np.int64)
    ends = []
    for begin, end in spans:
        mask[(starts >= begin) & (starts < end)] = 1
        ends.append(int((starts < end).sum()))
    return list(encoded["input_ids"]), mask.tolist(), ends


def last_turn_split(messages: list[dict]) -> dict:
    """TRL's prompt-completion shape for evaluation: the history before the last assistant turn, and that turn."""
    last = max(i for i, turn in enumerate(messages) if turn["role"] == "assistant")
    return {"prompt": messages[:last], "completion": [messages[last]], "messages": messages[: last + 1]}
