"""Padding-free training computes what the reference computes: per example logits, per step loss and gradients.

Batches come from the trainer the train stage builds (sft.sft_config, sft.dataset, sft.lora_config, TRL's
collator), on the tiny random Qwen2 in fp32 with LoRA weights made non-zero, so the adapter path counts too.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from finetune import config, modeling, paths
from finetune.training import compat, sft
from helpers import REPO

TOL = 1e-5
EXAMPLES = 24


def make_trainer(tiny_base, out_dir, **train_params):
    from trl import SFTTrainer

    raw = {"train": {"eval_steps": 0, "speed": train_params}, "model": {"quantization": "none"}}
    p = config.parse(raw, ["lr", "prepare", "model", "train"])
    args = sft.sft_config(p, torch.float32)
    args.output_dir, args.eval_strategy = str(out_dir), "no"
    frame = pd.read_parquet(REPO / paths.EMBEDDED_SAMPLE).head(EXAMPLES)
    model = modeling.load_model(tiny_base, "none", torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft.dataset(frame),
        processing_class=modeling.load_tokenizer(tiny_base),
        peft_config=sft.lora_config(p.train, modeling.lora_targets(model, p.train.lora.target_modules)),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in trainer.model.named_parameters():
            if "lora_B" in name:  # zero at init: the adapter would change nothing
                weight.normal_(std=0.05)
    trainer.model.eval()  # no dropout: the two runs must see the same function
    return trainer


@pytest.fixture(scope="module")
def trainers(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("packing")
    made = {
        "default": make_trainer(tiny_base, out / "default"),
        "reference": make_trainer(tiny_base, out / "reference", padding_free=False, labelled_logits_only=False),
    }
    compat.labelled_logits_only(True)
    return made


def first_step(trainer) -> list[dict]:
    """The micro-batches of the first optimizer step, as the trainer's loop collects them."""
    batches = iter(trainer.get_train_dataloader())
    return [next(batches) for _ in range(trainer.args.gradient_accumulation_steps)]


def examples_of(batches: list[dict]) -> list[list[int]]:
    """Each example's token ids, from padded or padding-free micro-batches."""
    out = []
    for b in batches:
        if "position_ids" in b:  # padding-free: one row, positions restart at 0 for each example
            row, starts = b["input_ids"][0], (b["position_ids"][0] == 0).nonzero().flatten().tolist()
            out += [row[s:e].tolist() for s, e in zip(starts, starts[1:] + [len(row)])]
        else:
            out += [ids[mask.bool()].tolist() for ids, mask in zip(b["input_ids"], b["attention_mask"])]
    return out


def segments(batch: dict) -> list[tuple[int, int]]:
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [batch["input_ids"].shape[1]]))


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def test_the_default_is_padding_free_and_the_reference_is_one_switch_away(trainers):
    assert trainers["default"].args.padding_free and trainers["default"].args.max_length is None
    assert not trainers["reference"].args.padding_free and trainers["reference"].args.max_length == 512
    default, reference = first_step(trainers["default"]), first_step(trainers["reference"])
    assert all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in default)
    assert all("attention_mask" in b for b in reference)
    assert sum((b["attention_mask"] == 0).sum() for b in reference) > 0  # the reference does pad


def test_each_optimizer_step_sees_the_same_examples_in_the_same_order(trainers):
    default, reference = first_step(trainers["default"]), first_step(trainers["reference"])
    assert len(examples_of(default)) == len(examples_of(reference)) == 8  # batch 2 x grad_accum 4
    assert examples_of(default) == examples_of(reference)


@pytest.fixture(params=["sdpa", "eager"])
def attention(request, trainers):
    """The attention implementations that run on a CPU: transformers masks a padding-free row for both."""
    model = trainers["default"].model.get_base_model()
    model.set_attn_implementation(request.param)
    yield request.param
    model.set_attn_implementation("sdpa")


@torch.no_grad()
def test_padding_free_logits_equal_each_example_run_alone(trainers, attention):
    trainer = trainers["default"]
    assert trainer.model.config._attn_implementation == attention
    for batch in first_step(trainer):
        logits = trainer.model(**model_inputs(batch)).logits[0]
        assert len(segments(batch)) == 2
        for start, end in segments(batch):
            alone = trainer.model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            assert (logits[start:end] - alone).abs().max() < TOL


# Negative controls: the same row of examples end to end, without what keeps them apart.
BROKEN = {
    "plain concatenation": lambda b: {"input_ids": b["input_ids"]},
    "positions restart, attention mask all ones": lambda b: {
        "input_ids": b["input_ids"],
        "position_ids": b["position_ids"],
        "attention_mask": torch.ones_like(b["input_ids"]),
    },
}


@pytest.mark.parametrize("broken", BROKEN)
@torch.no_grad()
def test_without_per_example_positions_and_mask_the_second_example_differs(trainers, attention, broken):
    trainer = trainers["default"]
    batch = first_step(trainer)[0]
    logits = trainer.model(**BROKEN[broken](batch)).logits[0]
    (s0, e0), (s1, e1) = segments(batch)
    first_alone = trainer.model(input_ids=batch["input_ids"][:, s0:e0]).logits[0]
    second_alone = trainer.model(input_ids=batch["input_ids"][:, s1:e1]).logits[0]
    assert (logits[s0:e0] - first_alone).abs().max() < TOL  # causal: the first example cannot see the second
    assert (logits[s1:e1] - second_alone).abs().max() > 1e-2


def step_loss_and_grads(trainer, batches: list[dict]) -> tuple[float, dict]:
    """One optimizer step's loss and LoRA gradients, as Trainer.training_step computes them: each micro-batch's
    summed token loss divided by the token count of the whole step (num_items_in_batch), then accumulated."""
    model = trainer.model
    model.zero_grad()
    num_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        total += loss.item()
    grads = {n: w.grad.clone() for n, w in model.named_parameters() if w.requires_grad}
    model.zero_grad()
    return total, grads


def loss_alone(model, batches: list[dict]) -> float:
    """Mean next-token loss over the labelled tokens of every example, each run alone through the plain forward."""
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            labels = batch["labels"][0]
            for start, end in segments(batch):
                logits = model(input_ids=batch["input_ids"][:, start:end]).logits[0, :-1]
                target = labels[start + 1 : end]
                nll += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
                tokens += int((target != -100).sum())
    return nll / tokens


def test_padding_free_step_loss_and_gradients_equal_the_reference(trainers):
    default_batches, reference_batches = first_step(trainers["default"]), first_step(trainers["reference"])
    default_loss, default_grads = step_loss_and_grads(trainers["default"], default_batches)
    compat.labelled_logits_only(False)  # the reference's TRL: every position scored on CPU
    try:
        reference_loss, reference_grads = step_loss_and_grads(trainers["reference"], reference_batches)
    finally:
        compat.labelled_logits_only(True)
    assert abs(default_loss - reference_loss) < TOL
    assert abs(default_loss - loss_alone(trainers["default"].model, default_batches)) < TOL
    assert default_grads.keys() == reference_grads.keys() and len(default_grads) > 0
    for name, grad in default_grads.items():
        assert grad.abs().max() > 0, name
        assert (grad - reference_grads[name]).abs().max() < TOL * max(1.0, grad.abs().max().item()), name


def test_plain_concatenation_changes_the_loss(trainers):
    trainer = trainers["default"]
    batches = first_step(trainer)
    plain = [{"input_ids": b["input_ids"], "labels": b["labels"]} for b in batches]
    num_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    with torch.no_grad():
        concatenated = sum(
            trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=num_items).item() for b in plain
        )
    assert abs(concatenated - loss_alone(trainer.model, batches)) > 1e-3


def scored_rows(trainer, batch: dict, monkeypatch) -> int:
    """How many positions TRL's fused output layer projects onto the vocabulary for `batch`."""
    from trl.trainer import utils

    rows = []
    apply = utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        utils._ChunkedLogProbFunction,
        "apply",
        lambda hidden, *args: rows.append(hidden.shape[0]) or apply(hidden, *args),
    )
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    monkeypatch.undo()
    return rows[0]


@pytest.mark.parametrize("enabled", [True, False])
def test_labelled_logits_only_scores_the_response_tokens_alone(trainers, monkeypatch, enabled):
    trainer = trainers["default"]
    batch = first_step(trainer)[0]
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    compat.labelled_logits_only(enabled)
    try:
        rows = scored_rows(trainer, batch, monkeypatch)
    finally:
        compat.labelled_logits_only(True)
    assert rows == (labelled if enabled else batch["input_ids"].numel() - 1)
    assert labelled < batch["input_ids"].numel() / 1.5  # completion-only: the prompt is a large share
