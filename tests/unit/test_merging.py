"""finetune.merging: the checks that make a wrong merge fail (logit parity, an export that reloads as merged),
and the rows the export is scored on.

The adapter here is made, not trained: LoRA B set to random values moves the tiny model's logits
by far more than merge.tolerance, so a merge that drops or misplaces it cannot pass (a few steps
at lr 1e-5 move them by ~3e-4, below the tolerance). tests/integration/test_merge_stage.py runs the
same faults through the stage.
"""

from __future__ import annotations

import pytest
import torch

from finetune import config, merging, modeling
from finetune.evaluation import generation
from merge_faults import FAULTS, patch, write_large_adapter

TOLERANCE = 1e-3  # params.yaml's merge.tolerance


@pytest.fixture(scope="module")
def large_adapter(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("large_adapter") / "adapter"
    write_large_adapter(tiny_base, out)
    return out


@pytest.mark.parametrize("fault", [None, *FAULTS])
def test_a_broken_merge_fails_its_check(tiny_base, large_adapter, tmp_path, monkeypatch, fault):
    """The stage's steps (merge.py): base+adapter in fp32, merge_and_unload, check, export. Each fault fails the
    check it must fail, with the stage's message; without one (the control) every check passes."""
    tokenizer = modeling.load_tokenizer(large_adapter)
    tuned = modeling.load_tuned(tiny_base, large_adapter, "none", torch.float32, expected_base="tiny")
    conversations = [
        {"prompt": [{"role": "user", "content": q}]}
        for q in ("What is a bond?", "Classify this bank transaction: DEBIT CARD DENTAL $152.77")
    ]
    batch = generation.prompt_batch(tokenizer, conversations, tuned.device)
    reference = merging.logits(tuned, batch)
    with tuned.disable_adapter():
        base = merging.logits(tuned, batch)
    assert merging.max_difference(reference, base) > 100 * TOLERANCE  # the adapter matters
    if fault is not None:
        patch(monkeypatch.setattr, fault)
    merged = tuned.merge_and_unload()
    if fault in ("skip_adapter", "wrong_weights"):
        with pytest.raises(modeling.ModelError, match=FAULTS[fault][2]):
            merging.check(merged, batch, reference, base, TOLERANCE)
        return
    result = merging.check(merged, batch, reference, base, TOLERANCE)
    assert result["max_abs_logit_diff"] <= TOLERANCE < result["adapter_max_abs_logit_diff"]
    if fault == "lossy_save":
        with pytest.raises(modeling.ModelError, match=FAULTS[fault][2]):
            merging.export(merged, tokenizer, tmp_path / "merged", torch.float32)
        return
    exported = merging.export(merged, tokenizer, tmp_path / "merged", torch.float32)
    assert merging.max_difference(merging.logits(exported, batch), reference) <= TOLERANCE


def test_check_export_names_what_differs():
    saved = {"a": torch.ones(2), "b": torch.zeros(2), "c": torch.ones(1)}
    merging.check_export(saved, {k: v.clone() for k, v in saved.items()}, "out")
    cases = [
        ({"a": torch.ones(2), "b": torch.zeros(2)}, "missing: c"),
        ({**saved, "d": torch.ones(1)}, "unexpected: d"),
        ({**saved, "b": torch.full((2,), 1e-3)}, "changed: b"),
        ({**saved, "a": torch.ones(2, dtype=torch.bfloat16)}, "changed: a"),
    ]
    for reloaded, message in cases:
        with pytest.raises(modeling.ModelError, match=message):
            merging.check_export(saved, reloaded, "out")


def test_score_rows():
    assert merging.score_rows(10, 0) == list(range(10))
    assert merging.score_rows(10, 20) == list(range(10))
    subset = merging.score_rows(100, 7)
    assert len(subset) == 7 == len(set(subset)) and subset == sorted(subset) and subset == merging.score_rows(100, 7)
    assert subset != list(range(7))  # a seeded sample, not the head of the split


def test_eval_rows_param():
    assert config.parse({"merge": {"eval_rows": 200}}, ["merge"]).merge.eval_rows == 200
    with pytest.raises(config.ParamsError, match=r"merge.eval_rows must be >= 0 \(0: all test rows\), got -1"):
        config.parse({"merge": {"eval_rows": -1}}, ["merge"])
