"""Sampling and splitting by prompt identity: a seeded draw, train / val / test, no prompt in two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune.data import identity
from finetune.errors import DataError

MIN_PROMPTS = 3  # one each for train, val and test


def draw_keys(identities: np.ndarray, seed: int) -> np.ndarray:
    """Each prompt identity's place in the seeded draw: a keyed hash (SipHash), so the draw does not
    depend on file order, and the first n prompts of any set that holds them are the same n."""
    return pd.util.hash_array(np.asarray(identities, dtype=object), hash_key=f"{seed:016x}"[-16:], categorize=False)


def split_sizes(prompts_sampled: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) prompt counts: test and val are shares of all sampled, each at least 1."""
    n_test = min(max(1, round(prompts_sampled * test_fraction)), prompts_sampled - 2)
    n_val = min(max(1, round(prompts_sampled * val_fraction)), prompts_sampled - 1 - n_test)
    return prompts_sampled - n_val - n_test, n_val, n_test


def sample_and_split(
    frame: pd.DataFrame, n: int, test_fraction: float, val_fraction: float, seed: int, identities=None
):
    """The first n prompts in draw order, split (train, val, test): no prompt in two splits.

    Rows with the same prompt identity (identity.prompt_identity, or `identities` given per row: a
    conversation's) go to the same split.
    """
    group, keys = identity.factorize(identity.prompt_identities(frame) if identities is None else identities)
    draw = np.argsort(draw_keys(keys, seed), kind="stable")[:n]
    if len(draw) < MIN_PROMPTS:
        raise DataError(
            f"{len(draw)} prompt(s) to split (prepare.n {n}, {len(keys)} distinct); need at least "
            f"{MIN_PROMPTS}, one each for train, val and test"
        )
    _, n_val, n_test = split_sizes(len(draw), test_fraction, val_fraction)
    place = np.full(len(keys), -1)
    place[draw] = np.arange(len(draw))
    rank = place[group]  # -1: not sampled
    parts = {
        "test": (rank >= 0) & (rank < n_test),
        "val": (rank >= n_test) & (rank < n_test + n_val),
        "train": rank >= n_test + n_val,
    }
    # Draw order, not file order, so a seed change reshuffles training batches too.
    return tuple(
        frame[parts[name]].iloc[np.argsort(rank[parts[name]], kind="stable")].reset_index(drop=True)
        for name in ("train", "val", "test")
    )
