"""scripts/sample_data.py: the committed data/raw files are exactly what the generator writes."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from finetune.data import identity
from helpers import REPO
from scripts import sample_data

RAW = REPO / "data" / "raw"
FILES = ("finance_alpaca.parquet", "finance_alpaca.csv")


def written(tmp_path, **changes) -> dict[str, bytes]:
    sample_data.write_sample(tmp_path, **changes)
    return {name: (tmp_path / name).read_bytes() for name in FILES}


def committed() -> dict[str, bytes]:
    return {name: (RAW / name).read_bytes() for name in FILES}


def test_regenerating_gives_the_committed_files_byte_for_byte(tmp_path):
    assert written(tmp_path) == committed()


def test_another_seed_or_template_gives_other_bytes(tmp_path, monkeypatch):
    """Negative controls: the comparison above would notice a changed generator."""
    other_seed = written(tmp_path / "seed", seed=1)
    monkeypatch.setitem(sample_data.GLOSSARY, "bond", "A bond is an IOU.")
    other_template = written(tmp_path / "template")
    for name in FILES:
        assert other_seed[name] != committed()[name]
        assert other_template[name] != committed()[name]


def prompts_per_fact(records: list[dict]) -> dict:
    """(input, output) -> the distinct prompts (casefolded, trimmed) that teach it, usable rows only."""
    found = defaultdict(set)
    for rec in records:
        if rec["output"] and rec["output"].strip() and rec["output"] not in sample_data.PLACEHOLDERS:
            found[(rec["input"] or "", rec["output"])].add(
                (rec["instruction"].casefold().strip(" ."), (rec["input"] or "").casefold().strip())
            )
    return found


def test_each_fact_is_asked_under_one_prompt():
    frame = pd.read_parquet(RAW / FILES[0])
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert not {fact: p for fact, p in prompts_per_fact(records).items() if len(p) > 1}
    # The generator's prompts are distinct as prepare compares them: only the planted repeats repeat.
    keys = [identity.prompt_identity(r["instruction"], r["input"] or "") for r in records]
    assert len(keys) - len(set(keys)) == round(len(records) * 0.01)


def test_without_the_fact_rule_definitions_come_back_reworded(monkeypatch):
    """Negative control: with every row its own fact, the same answer shows up under several prompts."""
    counter = iter(range(10**9))
    monkeypatch.setattr(sample_data, "fact_of", lambda rec: ("row", next(counter)))
    reworded = {fact: p for fact, p in prompts_per_fact(sample_data.generate_records()).items() if len(p) > 1}
    assert any(output in sample_data.GLOSSARY.values() for _, output in reworded)
