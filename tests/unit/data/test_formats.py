"""finetune.data.formats and readers.read_data: alpaca rows under other names, messages and ShareGPT
conversations, folders of shards with splits, save_to_disk datasets."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from finetune.data import formats, readers
from finetune.errors import DataError

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "APR?"},
    {"role": "assistant", "content": "Annual rate."},
]
SHAREGPT = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello."},
    {"from": "human", "value": "APR?"},
    {"from": "gpt", "value": "Annual rate."},
]


def ingest(path, fmt="auto", columns=None, split="", extra="drop"):
    frame, source = readers.read_data(path, split)
    return formats.canonical(frame, source, fmt, columns or {}, extra)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
@pytest.mark.parametrize("fmt,column,turns", [("messages", "messages", CHAT), ("sharegpt", "conversations", SHAREGPT)])
def test_conversations_in_every_file_type_become_role_content_json(tmp_path, suffix, fmt, column, turns):
    rows = [{column: turns, "id": 1}, {column: turns[1:3], "id": 2}]
    path = tmp_path / f"chat{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)  # lists of structs: numpy arrays of dicts when read back
    else:
        pd.DataFrame([{column: json.dumps(r[column]), "id": r["id"]} for r in rows]).to_csv(path, index=False)
    frame, chosen = ingest(path)
    assert chosen == fmt
    assert list(frame.columns) == ["messages"] and frame["messages"].dtype == "string"
    assert [json.loads(t) for t in frame["messages"]] == [CHAT, CHAT[1:3]]  # sharegpt roles mapped
    assert ingest(path, fmt=fmt)[1] == fmt


def test_sharegpt_keeps_unknown_roles_for_prepare_to_count(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"conversations": [{"from": "bing", "value": "x"}, {"from": "gpt", "value": None}]}]
    )
    assert json.loads(ingest(path)[0]["messages"][0]) == [
        {"role": "bing", "content": "x"},
        {"role": "assistant", "content": ""},
    ]


def test_alpaca_under_other_names_is_mapped(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "What is APR?", "context": "loans", "answer": "A rate."}])
    columns = {"instruction": "question", "input": "context", "output": "answer"}
    frame, chosen = ingest(path, columns=columns)
    assert chosen == "alpaca"
    assert frame.to_dict("records") == [{"instruction": "What is APR?", "input": "loans", "output": "A rate."}]
    # control: without the mapping nothing says what the columns are
    with pytest.raises(
        DataError,
        match=r"qa.jsonl: required column\(s\) instruction, output missing; found: question, "
        r"context, answer \(format alpaca, chosen by data.format auto",
    ):
        ingest(path)
    with pytest.raises(DataError, match=r"required column\(s\) instruction, output missing.*\(format alpaca\)"):
        ingest(path, fmt="alpaca")


def test_mapped_conversation_column(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"dialog": CHAT}])
    assert ingest(path, columns={"messages": "dialog"})[1] == "messages"
    with pytest.raises(DataError, match=r"c.jsonl: required column\(s\) instruction, output missing; found: dialog"):
        ingest(path)


def test_errors_name_the_file_format_and_columns(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    with pytest.raises(
        DataError,
        match=r"a.jsonl: format messages expects a column 'messages' .*found: instruction, "
        r"output",
    ):
        ingest(alpaca, fmt="messages")
    chat = write_jsonl(tmp_path / "m.jsonl", [{"messages": CHAT}])
    with pytest.raises(DataError, match=r"m.jsonl: format sharegpt expects a column 'conversations'.*found: messages"):
        ingest(chat, fmt="sharegpt")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"messages": CHAT}, {"messages": [{"role": "user"}]}])
    with pytest.raises(
        DataError,
        match=r"b.jsonl: row 2, column 'messages', turn 1: expected keys 'role' and "
        r"'content' \(format messages\), found \['role'\]",
    ):
        ingest(bad)
    text = write_jsonl(tmp_path / "t.jsonl", [{"messages": "hello"}])
    with pytest.raises(DataError, match=r"t.jsonl: row 1, column 'messages': expected a list of turns"):
        ingest(text)


def test_folder_of_shards_reads_the_chosen_split_in_order(tmp_path):
    folder = tmp_path / "hub"
    pd.DataFrame({"messages": [CHAT[1:3]] * 2}).to_parquet(write_dir(folder / "data") / "train-00000-of-00002.parquet")
    pd.DataFrame({"messages": [CHAT[:3]]}).to_parquet(folder / "data" / "train-00001-of-00002.parquet")
    pd.DataFrame({"messages": [CHAT]}).to_parquet(folder / "data" / "test-00000-of-00001.parquet")
    (folder / "README.md").write_text("card")
    frame, chosen = ingest(folder, split="train")
    assert chosen == "messages" and [len(json.loads(t)) for t in frame["messages"]] == [2, 2, 3]
    assert len(ingest(folder, split="test")[0]) == 1
    with pytest.raises(DataError, match=r"hub: several splits \(test, train\); set data.split"):
        ingest(folder)
    with pytest.raises(DataError, match=r"hub: no split 'validation' \(data.split\); splits found: test, train"):
        ingest(folder, split="validation")


def test_folder_with_one_split_needs_no_choice(tmp_path):
    write_jsonl(tmp_path / "d" / "part.jsonl", [{"instruction": "q", "output": "a"}])
    assert ingest(tmp_path / "d")[1] == "alpaca"
    with pytest.raises(DataError, match="no data files"):
        ingest(write_dir(tmp_path / "empty"))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    rows = {"conversations": [SHAREGPT, SHAREGPT[1:3]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    frame, chosen = ingest(tmp_path / "one")
    assert chosen == "sharegpt" and [json.loads(t) for t in frame["messages"]] == [CHAT, CHAT[1:3]]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict({"conversations": [SHAREGPT]})}
    ).save_to_disk(str(tmp_path / "dict"))
    assert len(ingest(tmp_path / "dict", split="test")[0]) == 1
    with pytest.raises(DataError, match=r"dict: several splits \(test, train\)"):
        ingest(tmp_path / "dict")


def write_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
