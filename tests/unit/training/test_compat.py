"""finetune.training.compat: the workarounds of pinned libraries' behaviour that need no trainer."""

from __future__ import annotations

import json

from finetune.training import compat


def test_adapter_config_is_written_in_a_stable_order(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"target_modules": ["v_proj", "q_proj", "down_proj"], "r": 8}))
    compat.sort_target_modules(path)
    first = path.read_bytes()
    assert json.loads(first)["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    path.write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "down_proj", "v_proj"]}))
    compat.sort_target_modules(path)
    assert path.read_bytes() == first
