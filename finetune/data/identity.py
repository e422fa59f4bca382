"""A prompt's identity, for dedup and splitting: two rows whose prompts differ only in case, spacing or
surrounding punctuation are the same prompt, so they never land in two splits."""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from finetune.chat_format import user_text

# Characters stripped from both ends of a normalised text: Unicode punctuation (P*) and whitespace.
# All of them lie below U+20000 (tests/unit/data/test_identity.py checks the whole range).
EDGE = frozenset(c for c in map(chr, range(0x20000)) if c.isspace() or unicodedata.category(c).startswith("P"))


def normalise(text: str) -> str:
    """Text as prompts are compared: NFKC, case-folded, whitespace collapsed, surrounding whitespace
    and punctuation stripped ("Define  APR." and "define apr" are the same)."""
    if text.isascii():  # NFKC leaves ASCII as it is, and casefold is lower there
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    if not text.isprintable() or "  " in text:  # whitespace other than single spaces (all of it is unprintable)
        text = " ".join(text.split())
    start, end = 0, len(text)
    while start < end and text[start] in EDGE:
        start += 1
    while end > start and text[end - 1] in EDGE:
        end -= 1
    return text[start:end]


def prompt_identity(instruction: str, input_text: str) -> str:
    """The identity of a prompt, for dedup and splitting: prompt_identities of the one row (one definition, so
    the scalar and the column cannot disagree, e.g. for an instruction that normalises to "")."""
    frame = pd.DataFrame({"instruction": [instruction], "input": [input_text]}, dtype=object)
    return prompt_identities(frame)[0].as_py()


# normalise(user_text(a, b)) for normalised a and non-empty normalised b is a + _JOIN + b: the column
# version below builds that without normalising the joined text again.
_JOIN = normalise(user_text("a", "b"))[1:-1]


def prompt_identities(frame: pd.DataFrame) -> pa.Array:
    """prompt_identity of every row (missing input as ""), each distinct text normalised once."""
    instructions, inputs = _normalised(frame["instruction"]), _normalised(frame["input"])
    joined = pc.binary_join_element_wise(instructions, inputs, pa.scalar(_JOIN, pa.large_string()))
    return pc.if_else(pc.equal(inputs, ""), instructions, joined)


def _normalised(column: pd.Series) -> pa.Array:
    texts = pc.fill_null(pa.array(column, type=pa.large_string(), from_pandas=True), "")
    uniques = pc.unique(texts)
    done = [
        normalise(t)
        for t in tqdm(uniques.to_pylist(), desc="normalising prompts", unit="texts", disable=None, leave=False)
    ]
    return pa.array(done, type=pa.large_string()).take(pc.index_in(texts, value_set=uniques))


def factorize(identities: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(per row, the index of its identity in the distinct ones; the distinct ones, in first-row order)."""
    encoded = (
        pc.dictionary_encode(identities).combine_chunks()
        if isinstance(identities, pa.ChunkedArray)
        else pc.dictionary_encode(identities)
    )
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_numpy(
        zero_copy_only=False
    )
