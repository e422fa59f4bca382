"""The integration tier: every test here runs DVC, a stage or the pipeline in a subprocess, or trains."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/integration `integration` (`pytest -m "not integration"` leaves them out)."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
