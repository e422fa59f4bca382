"""finetune.data.identity: variants of one prompt (case, spacing, width, surrounding punctuation) are one prompt."""

from __future__ import annotations

import sys
import unicodedata

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data import identity
from frames import _norm, frame_of, rows_of


@pytest.mark.parametrize(
    "a, b",
    [
        ("Define APR.", "define apr"),
        ("Define  APR", " define\tAPR?! "),
        ("Define\u00a0APR", "DEFINE\u3000apr"),  # no-break and ideographic spaces
        ("ＤＥＦＩＮＥ ＡＰＲ．", "define APR"),  # fullwidth forms (NFKC)
        ("«Define APR»", "“define apr”"),  # quotes are punctuation
        ("Straße", "STRASSE"),  # casefold, not lower
        ("\ufb01nance", "finance"),  # the fi ligature (NFKC)
    ],
)
def test_normalise_makes_variants_one_prompt(a, b):
    assert identity.normalise(a) == identity.normalise(b) == _norm(a)


@pytest.mark.parametrize(
    "a, b",
    [
        ("U.S. GDP", "US GDP"),  # punctuation inside stays
        ("Define APR", "Define ARP"),
        ("$5", "5"),  # symbols are not punctuation
    ],
)
def test_normalise_keeps_what_makes_another_prompt(a, b):
    assert identity.normalise(a) != identity.normalise(b)


def test_edge_characters_cover_the_whole_unicode_range():
    full = {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace() or unicodedata.category(c)[0] == "P"}
    assert identity.EDGE == full


def test_identity_is_the_user_turn_of_the_normalised_parts():
    assert identity.prompt_identity("Define APR.", "") == identity.prompt_identity(" define apr", "  ")
    assert identity.prompt_identity("Sum.", "1, 2.") == identity.prompt_identity("sum", " 1, 2")
    assert identity.prompt_identity("Sum", "1, 2") == identity.prompt_identity("Sum\n Context:1, 2", "")
    assert identity.prompt_identity("Sum", "1, 2") != identity.prompt_identity("Sum", "1, 3")
    frame = frame_of(("Define APR.", None, "x"), ("Sum.", "1, 2.", "y"), ("Ｓｕｍ", "1, 2", "z"))
    assert identity.prompt_identities(frame).to_pylist() == [
        identity.prompt_identity(i, x or "") for i, x, _ in rows_of(frame)
    ]


_PIECES = st.sampled_from(["?", "!", " ", "  ", ".", "…", "A", "a", "bond", "Bond", "\u00a0", "\n", "¿", "ﬁ", "Ä", ""])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(_PIECES, max_size=4).map("".join), st.lists(_PIECES, max_size=4).map("".join)),
        min_size=1,
        max_size=8,
    )
)
def test_scalar_and_column_identities_agree(rows):
    """Instructions of punctuation only ("?") normalise to "": where the two versions used to disagree."""
    frame = pd.DataFrame({"instruction": [i for i, _ in rows], "input": [x for _, x in rows]}, dtype=object)
    assert identity.prompt_identities(frame).to_pylist() == [identity.prompt_identity(i, x) for i, x in rows]


def test_an_instruction_of_punctuation_only_is_blank():
    from finetune.data import cleaning

    assert cleaning.row_problem("?", "what is a bond", "An IOU.") == "blank_instruction"
    assert cleaning.row_problem("Why?", "", "Because.") is None  # control: words remain


def test_the_old_scalar_formula_disagreed():
    """Negative control: the scalar as it was (normalised user turn of normalised parts) differs from the column
    for an instruction that normalises to "", which the hypothesis test above finds."""
    from finetune.chat_format import user_text

    old = identity.normalise(user_text(identity.normalise("?"), identity.normalise("what is a bond")))
    frame = pd.DataFrame({"instruction": ["?"], "input": ["what is a bond"]}, dtype=object)
    assert old != identity.prompt_identities(frame)[0].as_py() == identity.prompt_identity("?", "what is a bond")
