"""`dvc exp run -S data.path=... -S data.format=...` on a messages file and on a ShareGPT file: the whole pipeline
completes, every refused conversation is counted under its reason, and each split trains labelled tokens;
a malformed conversation stops ingest with the file, row and reason, and nothing is written."""

from __future__ import annotations

import json

import chats
import pandas as pd
from helpers import dvc, make_project, run, stage

from finetune import files, paths


def test_messages_and_sharegpt_files_run_end_to_end(tmp_path):
    project = make_project(tmp_path)
    chats.write_messages(project / "data/raw/chat.jsonl", 80)
    chats.write_sharegpt(project / "data/raw/sharegpt.parquet", 80)
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "chats"], cwd=project)

    first = dvc("exp", "run", "-S", "data.path=data/raw/chat.jsonl", "-S", "data.format=messages", cwd=project)
    assert "format messages" in first.stdout
    counts = files.read_json(project / paths.DATA_METRICS)
    assert {reason: counts[f"dropped.{reason}"] for reason in chats.REFUSED} == dict.fromkeys(chats.REFUSED, 1)
    assert counts["rows_read"] == 80 + len(chats.REFUSED)
    for split in ("train", "val", "test"):
        assert counts[f"tokens.{split}.rows_without_labels"] == 0
        assert 0 < counts[f"tokens.{split}.labelled_share"] < 1
    assert counts["tokens.train.assistant_turns_per_row"] > 1.5  # multi-turn rows kept whole
    train = pd.read_parquet(project / paths.TRAIN_DATA)
    assert list(train.columns) == ["messages"]
    assert files.read_json(project / paths.TRAIN_METRICS)["global_step"] > 0
    samples = [json.loads(line) for line in (project / paths.SAMPLES).read_text().splitlines()]
    test_turns = [json.loads(t) for t in pd.read_parquet(project / paths.TEST_DATA)["messages"]]
    last_answers = {[t for t in turns if t["role"] == "assistant"][-1]["content"] for turns in test_turns}
    assert samples and all(s["reference"] in last_answers for s in samples)

    second = dvc("exp", "run", "-S", "data.path=data/raw/sharegpt.parquet", "-S", "data.format=sharegpt", cwd=project)
    assert "format sharegpt" in second.stdout
    # the same conversations under other names: the same canonical rows, so the same metrics
    assert files.read_json(project / paths.DATA_METRICS) == counts


def test_malformed_conversation_stops_ingest_and_writes_nothing(tmp_path):
    project = make_project(tmp_path, git=False)
    path = chats.write_messages(project / "data/raw/chat.jsonl", 5)
    path.write_text(path.read_text() + json.dumps({"messages": [{"role": "user", "text": "Hi"}]}) + "\n")
    (project / "params.yaml").write_text(
        (project / "params.yaml")
        .read_text()
        .replace("path: data/raw/finance_alpaca.parquet", "path: data/raw/chat.jsonl")
    )
    result = stage("ingest", project, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "data/raw/chat.jsonl: row 11, column 'messages', turn 1: expected keys 'role' and 'content' "
        "(format messages), found ['role', 'text']"
    ) in result.stderr
    assert not (project / paths.INGESTED).exists()
