"""finetune.training.checkpoints without a model: run fingerprints, picking the checkpoint to resume, clearing stale ones."""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest

from finetune.training import checkpoints

SETTINGS = {"lr": 1e-5, "train": {"max_steps": 12, "lora": {"r": 8}}}


def make_checkpoint(
    root: Path, step: int, skip: tuple[str, ...] = (), name: str | None = None, max_steps: int = 100, processes: int = 1
) -> Path:
    """A fake checkpoint-N with every file Trainer writes for `processes` processes (non-empty), minus `skip`."""
    path = root / (name or f"checkpoint-{step}")
    path.mkdir(parents=True)
    for file in checkpoints.required_files(processes):
        if file in skip:
            continue
        if file.startswith("rng_state"):
            with zipfile.ZipFile(path / file, "w") as z:  # torch.save's format
                z.writestr("data.pkl", b"x" * 64)
        elif file == checkpoints.TRAINER_STATE:
            state = {
                "global_step": step,
                "max_steps": max_steps,
                "log_history": [{"step": s, "loss": 6.0 - s / 100, "num_tokens": 100 * s} for s in range(1, step + 1)],
            }
            (path / file).write_text(json.dumps(state))
        else:
            (path / file).write_bytes(b"x" * 16)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows" * 100)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"hidden_size": 32}')
    (base / "sub").mkdir()
    (base / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    return [data, base]


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable(inputs):
    first = checkpoints.fingerprint(SETTINGS, inputs)
    assert first == checkpoints.fingerprint(json.loads(json.dumps(SETTINGS)), list(inputs))
    reordered = {"train": {"lora": {"r": 8}, "max_steps": 12}, "lr": 1e-5}  # key order is not identity
    assert checkpoints.fingerprint(reordered, inputs) == first
    inputs[0].touch()  # mtime alone is not a change
    assert checkpoints.fingerprint(SETTINGS, inputs) == first


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 2e-5},
        {"train": {"max_steps": 13, "lora": {"r": 8}}},
        {"train": {"max_steps": 12, "lora": {"r": 16}}},
        {"extra": None},
    ],
)
def test_fingerprint_changes_with_settings(inputs, change):
    assert checkpoints.fingerprint({**SETTINGS, **change}, inputs) != checkpoints.fingerprint(SETTINGS, inputs)


@pytest.mark.parametrize("edit", ["file_byte", "dir_file_byte", "dir_new_file", "dir_rename", "file_append"])
def test_fingerprint_changes_with_any_input_byte(inputs, edit):
    data, base = inputs
    before = checkpoints.fingerprint(SETTINGS, inputs)
    if edit == "file_byte":
        raw = bytearray(data.read_bytes())
        raw[200] ^= 1  # one bit, same length
        data.write_bytes(bytes(raw))
    elif edit == "dir_file_byte":
        raw = bytearray((base / "sub" / "weights.bin").read_bytes())
        raw[-1] ^= 1
        (base / "sub" / "weights.bin").write_bytes(bytes(raw))
    elif edit == "dir_new_file":
        (base / "tokenizer.json").write_text("{}")
    elif edit == "dir_rename":
        (base / "config.json").rename(base / "config2.json")
    else:
        with data.open("ab") as f:
            f.write(b"\0")
    assert checkpoints.fingerprint(SETTINGS, inputs) != before


def test_fingerprint_depends_on_which_inputs(inputs):
    assert checkpoints.fingerprint(SETTINGS, inputs[:1]) != checkpoints.fingerprint(SETTINGS, inputs)


# ---------------------------------------------------------------- latest_complete


def test_latest_complete_picks_highest_step_numerically(tmp_path):
    for step in (2, 9, 10):
        make_checkpoint(tmp_path, step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip, nothing to warn about
        assert checkpoints.latest_complete(tmp_path) == tmp_path / "checkpoint-10"  # not "checkpoint-9" (string order)


@pytest.mark.parametrize("missing", checkpoints.REQUIRED_FILES)
def test_latest_complete_skips_newer_incomplete_with_warning(tmp_path, missing):
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 8, skip=(missing,))
    with pytest.warns(UserWarning, match=rf"checkpoint-8.*{missing}"):
        assert checkpoints.latest_complete(tmp_path) == tmp_path / "checkpoint-4"


def test_empty_file_counts_as_missing(tmp_path):
    make_checkpoint(tmp_path, 4)
    newer = make_checkpoint(tmp_path, 8)
    (newer / "optimizer.pt").write_bytes(b"")  # killed while torch.save was writing it
    with pytest.warns(UserWarning, match=r"checkpoint-8.*optimizer\.pt"):
        assert checkpoints.latest_complete(tmp_path) == tmp_path / "checkpoint-4"


@pytest.mark.parametrize("state", ['{"global_step": 8, "log_hist', '{"global_step": 4}'])
def test_truncated_or_foreign_trainer_state_is_incomplete(tmp_path, state):
    make_checkpoint(tmp_path, 4)
    newer = make_checkpoint(tmp_path, 8)
    (newer / checkpoints.TRAINER_STATE).write_text(state)
    assert not checkpoints.is_complete(newer)
    with pytest.warns(UserWarning, match=r"checkpoint-8.*trainer_state\.json"):
        assert checkpoints.latest_complete(tmp_path) == tmp_path / "checkpoint-4"


def test_no_complete_checkpoint(tmp_path):
    assert checkpoints.latest_complete(tmp_path / "absent") is None
    assert checkpoints.latest_complete(tmp_path) is None
    make_checkpoint(tmp_path, 4, skip=("adapter_model.safetensors",))
    make_checkpoint(tmp_path, 8, skip=("scheduler.pt",))
    with pytest.warns(UserWarning) as record:
        assert checkpoints.latest_complete(tmp_path) is None
    messages = " | ".join(str(w.message) for w in record)
    assert "checkpoint-8" in messages and "scheduler.pt" in messages
    assert "checkpoint-4" in messages and "adapter_model.safetensors" in messages


@pytest.mark.parametrize(
    "name",
    [
        "checkpoint-final",
        "checkpoint-12.tmp",
        "checkpoint-",
        "checkpoint-1e3",
        "checkpoint--5",
        "xcheckpoint-12",
        "checkpoint-12-old",
    ],
)
def test_non_numeric_suffix_is_ignored(tmp_path, name):
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 12, name=name)  # complete, newer-looking, but not Trainer's checkpoint-N
    (tmp_path / "checkpoint-20").write_text("a file, not a checkpoint directory")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoints.latest_complete(tmp_path) == tmp_path / "checkpoint-4"


# ---------------------------------------------------------------- several processes: one RNG state per rank


def test_required_files_per_process_count():
    assert "rng_state.pth" in checkpoints.required_files(1)
    three = checkpoints.required_files(3)
    assert [n for n in three if n.startswith("rng_state")] == ["rng_state_0.pth", "rng_state_1.pth", "rng_state_2.pth"]
    assert set(three) - {"rng_state_0.pth", "rng_state_1.pth", "rng_state_2.pth"} == set(checkpoints.REQUIRED_FILES) - {
        "rng_state.pth"
    }


@pytest.mark.parametrize("missing", ["rng_state_0.pth", "rng_state_1.pth"])
def test_multi_process_checkpoint_needs_every_ranks_rng_state(tmp_path, missing):
    make_checkpoint(tmp_path, 4, processes=2)
    make_checkpoint(tmp_path, 8, processes=2, skip=(missing,))
    with pytest.warns(UserWarning, match=rf"checkpoint-8.*{missing}"):
        assert checkpoints.latest_complete(tmp_path, processes=2) == tmp_path / "checkpoint-4"


@pytest.mark.parametrize("written_by, read_as", [(1, 2), (2, 1), (2, 3)])
def test_checkpoint_of_another_process_count_is_incomplete(tmp_path, written_by, read_as):
    checkpoint = make_checkpoint(tmp_path, 4, processes=written_by)
    assert checkpoints.is_complete(checkpoint, processes=written_by)
    assert not checkpoints.is_complete(checkpoint, processes=read_as)


@pytest.mark.parametrize("processes, name", [(1, "rng_state.pth"), (2, "rng_state_1.pth")])
def test_rng_state_cut_short_is_incomplete(tmp_path, processes, name):
    """Other ranks write their RNG state in no order with the main one's trainer_state.json: a kill can cut it."""
    make_checkpoint(tmp_path, 4, processes=processes)
    newer = make_checkpoint(tmp_path, 8, processes=processes)
    assert checkpoints.is_complete(newer, processes)  # the whole archive passes
    whole = (newer / name).read_bytes()
    (newer / name).write_bytes(whole[: len(whole) - 10])  # non-empty, but without its closing record
    assert checkpoints.missing_files(newer, processes) == [f"{name} (truncated)"]
    with pytest.warns(UserWarning, match=rf"checkpoint-8.*{name} \(truncated\)"):
        assert checkpoints.latest_complete(tmp_path, processes=processes) == tmp_path / "checkpoint-4"


def test_resume_point_checks_the_run_process_count(tmp_path):
    out = tmp_path / "checkpoints"
    checkpoints.resume_point(out, "run-a", processes=2)
    make_checkpoint(out, 4, processes=2)
    make_checkpoint(out, 8, processes=2, skip=("rng_state_1.pth",))
    with pytest.warns(UserWarning, match=r"checkpoint-8.*rng_state_1\.pth"):
        assert checkpoints.resume_point(out, "run-a", processes=2) == out / "checkpoint-4"


def test_step_of(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 6)
    assert checkpoints.step_of(checkpoint) == 6
    with pytest.raises(ValueError):
        checkpoints.step_of(tmp_path / "checkpoint-final")


# ---------------------------------------------------------------- resume_point


def test_resume_point_first_run_stamps_directory(tmp_path):
    out = tmp_path / "checkpoints"
    assert checkpoints.resume_point(out, "run-a") is None
    assert json.loads((out / checkpoints.FINGERPRINT_FILE).read_text()) == {"fingerprint": "run-a"}
    assert checkpoints.resume_point(out, "run-a") is None  # same run, nothing saved yet: start fresh, keep stamp
    assert (out / checkpoints.FINGERPRINT_FILE).is_file()


def test_resume_point_same_run_resumes_and_keeps_checkpoints(tmp_path, capsys):
    out = tmp_path / "checkpoints"
    checkpoints.resume_point(out, "run-a")
    make_checkpoint(out, 4)
    make_checkpoint(out, 8)
    assert checkpoints.resume_point(out, "run-a") == out / "checkpoint-8"
    assert (out / "checkpoint-4").is_dir() and (out / "checkpoint-8").is_dir()
    assert "clearing" not in capsys.readouterr().out


def test_resume_point_same_run_skips_incomplete_latest(tmp_path):
    out = tmp_path / "checkpoints"
    checkpoints.resume_point(out, "run-a")
    make_checkpoint(out, 4)
    make_checkpoint(out, 8, skip=("optimizer.pt",))
    with pytest.warns(UserWarning, match=r"checkpoint-8.*optimizer\.pt"):
        assert checkpoints.resume_point(out, "run-a") == out / "checkpoint-4"


def test_resume_point_other_run_clears(tmp_path, capsys):
    out = tmp_path / "checkpoints"
    checkpoints.resume_point(out, "run-a")
    make_checkpoint(out, 4)
    (out / "stray.txt").write_text("left by run-a")
    assert checkpoints.resume_point(out, "run-b") is None
    assert "clearing checkpoints" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [checkpoints.FINGERPRINT_FILE]
    assert json.loads((out / checkpoints.FINGERPRINT_FILE).read_text()) == {"fingerprint": "run-b"}
    make_checkpoint(out, 2)
    assert checkpoints.resume_point(out, "run-b") == out / "checkpoint-2"


def test_resume_point_never_resumes_a_finished_runs_last_checkpoint(tmp_path, capsys):
    """Trainer resumed at max_steps mid-epoch takes one step too many: redo the last stretch instead."""
    out = tmp_path / "checkpoints"
    checkpoints.resume_point(out, "run-a")
    make_checkpoint(out, 6, max_steps=8)
    final = make_checkpoint(out, 8, max_steps=8)
    assert checkpoints.is_final(final) and not checkpoints.is_final(out / "checkpoint-6")
    assert checkpoints.resume_point(out, "run-a") == out / "checkpoint-6"
    assert "ends a finished run" in capsys.readouterr().out
    shutil.rmtree(out / "checkpoint-6")
    assert checkpoints.resume_point(out, "run-a") is None  # nothing before it: start over
    assert final.is_dir()


def test_latest_complete_below(tmp_path):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    assert checkpoints.latest_complete(tmp_path, below=6) == tmp_path / "checkpoint-4"
    assert checkpoints.latest_complete(tmp_path, below=2) is None


@pytest.mark.parametrize("stamp", ["", "{", '{"other": 1}', "[]"])
def test_resume_point_unreadable_stamp_clears(tmp_path, stamp, capsys):
    out = tmp_path / "checkpoints"
    make_checkpoint(out, 4)
    (out / checkpoints.FINGERPRINT_FILE).write_text(stamp)
    assert checkpoints.resume_point(out, "run-a") is None
    assert not (out / "checkpoint-4").exists()
    assert json.loads((out / checkpoints.FINGERPRINT_FILE).read_text()) == {"fingerprint": "run-a"}


def test_resume_point_unstamped_checkpoints_are_cleared(tmp_path, capsys):
    """Checkpoints with no fingerprint cannot be shown to belong to this run: never resumed."""
    out = tmp_path / "checkpoints"
    make_checkpoint(out, 4)
    assert checkpoints.resume_point(out, "run-a") is None
    assert not (out / "checkpoint-4").exists()
    assert "clearing" in capsys.readouterr().out


# ---------------------------------------------------------------- dvclive rows of a killed run


@pytest.mark.parametrize("summary", ["", '{"loss": 6.1, "st'])
def test_rewind_live_removes_summary_cut_off_by_kill(tmp_path, summary):
    live = tmp_path / "live"
    live.mkdir()
    (live / "metrics.json").write_text(summary)
    (live / "params.yaml").write_text("learning_rate: [1e-5")
    checkpoints.rewind_live(live, 2)
    assert not (live / "metrics.json").exists() and not (live / "params.yaml").exists()


def test_rewind_live_keeps_whole_summary(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    (live / "metrics.json").write_text('{"loss": 6.1, "step": 3}')
    (live / "params.yaml").write_text("learning_rate: 1.0e-05\n")
    checkpoints.rewind_live(live, 2)
    assert (live / "metrics.json").is_file() and (live / "params.yaml").is_file()


def test_rewind_live_drops_rows_after_step(tmp_path):
    plots = tmp_path / "live" / "plots" / "metrics"
    (plots / "eval").mkdir(parents=True)
    (plots / "loss.tsv").write_text("step\tloss\n1\t6.1\n2\t6.0\n3\t5.9\n4\t5.8\n")
    (plots / "eval" / "loss.tsv").write_text("step\tloss\n2\t6.2\n4\t6.1\n")
    (tmp_path / "live" / "other.tsv").write_text("name\tvalue\na\t1\n")
    checkpoints.rewind_live(tmp_path / "live", 2)
    assert (plots / "loss.tsv").read_text() == "step\tloss\n1\t6.1\n2\t6.0\n"
    assert (plots / "eval" / "loss.tsv").read_text() == "step\tloss\n2\t6.2\n"
    assert (tmp_path / "live" / "other.tsv").read_text() == "name\tvalue\na\t1\n"
    checkpoints.rewind_live(tmp_path / "absent", 2)  # nothing logged yet: fine
