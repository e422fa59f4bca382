"""Several training processes, without training: the batch split, the process count, the launch, and the main
process's result handed to every process (2 CPU processes, gloo). tests/integration/test_distributed.py trains."""

from __future__ import annotations

import sys

import pytest
import torch

import helpers
from finetune import config
from finetune.errors import ParamsError
from finetune.training import distributed, sft


def train_params(**changes) -> config.TrainParams:
    return config.parse({"train": changes}, ["train"]).train


# ---------------------------------------------------------------- the batch split, without a model


@pytest.mark.parametrize(
    "batch, accum, processes, expected",
    [
        (2, 4, 1, (2, 4)),
        (2, 4, 2, (2, 2)),  # the reference settings on 2 GPUs
        (2, 4, 4, (2, 1)),
        (2, 4, 8, (1, 1)),  # ... on 8: the per-device batch shrinks
        (2, 1, 2, (1, 1)),
        (4, 3, 2, (3, 2)),  # share 6: the largest batch <= 4 that divides it
        (1, 4, 2, (1, 2)),
    ],
)
def test_every_optimizer_step_keeps_the_effective_batch(batch, accum, processes, expected):
    t = train_params(batch_size=batch, grad_accum=accum, num_processes=processes)
    per_batch, per_accum = distributed.per_process_batch(t)
    assert (per_batch, per_accum) == expected
    assert per_batch * per_accum * processes == batch * accum and per_batch <= batch


def test_sft_config_gets_the_per_process_split():
    p = config.parse({"train": {"num_processes": 2}}, ["lr", "prepare", "train"])  # batch 2 x accum 4
    settings = sft.sft_config(p, torch.float32)
    assert (settings.per_device_train_batch_size, settings.gradient_accumulation_steps) == (2, 2)
    assert settings.per_device_eval_batch_size == 2


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"num_processes": 3}, "train.num_processes (3) must divide the effective batch"),  # 2 x 4 = 8
        ({"num_processes": 3, "batch_size": 3, "grad_accum": 3}, None),  # 9 = 3 x 3
        ({"num_processes": 8}, None),
        ({"num_processes": 0}, "train.num_processes must be >= 1"),
    ],
)
def test_process_count_must_divide_the_effective_batch(changes, problem):
    if problem is None:
        train_params(**changes)
        return
    with pytest.raises(ParamsError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        train_params(**changes)


@pytest.mark.parametrize(
    "processes, cores, requested, expected",
    [
        (2, 2, None, 1),  # this machine: no oversubscription
        (1, 2, None, 2),
        (2, 16, None, 8),
        (2, 16, 4, 4),  # OMP_NUM_THREADS lower than the share is kept
        (2, 2, 8, 1),  # ... but never raises it above the share
        (4, 2, None, 1),
    ],
)
def test_cpu_threads_share_the_cores(processes, cores, requested, expected):
    assert distributed.cpu_threads(processes, cores, requested) == expected


def test_launch_command_is_a_valid_accelerate_launch():
    from accelerate.commands.launch import launch_command_parser

    command = distributed.launch_command(4)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(command[3:])
    assert args.multi_gpu and args.num_processes == 4 and args.num_machines == 1
    assert args.module and args.training_script == "stages.train"


@pytest.mark.parametrize(
    "world_size, num_processes, ok", [(None, 1, True), ("2", 2, True), ("4", 2, False), ("1", 2, False)]
)
def test_a_launch_by_hand_must_match_params(monkeypatch, world_size, num_processes, ok):
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    t = train_params(num_processes=num_processes)
    if ok:
        distributed.check_process_count(t)
    else:
        with pytest.raises(
            ParamsError,
            match=rf"train.num_processes is {num_processes}, but the launcher "
            rf"started {world_size} processes",
        ):
            distributed.check_process_count(t)


FROM_MAIN = """\
import sys
from pathlib import Path
from transformers import TrainingArguments
from finetune.training import distributed

out = Path(sys.argv[1])
args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[])  # joins the gloo group


def fail():
    raise ValueError(f"seen on process {args.process_index} only")


try:
    distributed.from_main(args, fail)
    outcome = "returned"
except ValueError as e:
    outcome = f"raised: {e}"
(out / f"outcome{args.process_index}").write_text(outcome)
(out / f"value{args.process_index}").write_text(str(distributed.from_main(args, lambda: args.process_index)))
"""


def test_from_main_hands_the_main_process_result_and_exception_to_every_process(tmp_path):
    """Control, measured with the previous from_main (which broadcast only a result): process 1 went on as if
    fn had returned, its next broadcast met the main process's exit, and the launch failed; with nothing
    after it, it would wait in the broadcast until gloo's 30-minute timeout."""
    script = tmp_path / "from_main.py"
    script.write_text(FROM_MAIN)
    command = distributed.launch_command(2)
    command[command.index("-m", 3) :] = [str(script), str(tmp_path)]
    helpers.run(
        command, cwd=helpers.REPO, timeout=180, extra_env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(helpers.REPO)}
    )
    assert [(tmp_path / f"outcome{rank}").read_text() for rank in (0, 1)] == ["raised: seen on process 0 only"] * 2
    assert [(tmp_path / f"value{rank}").read_text() for rank in (0, 1)] == ["0", "0"]
