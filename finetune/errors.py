"""One way for every stage to fail: a known problem ends as `<stage>: error: <message>`, exit 1.

Params, data and model problems are StageErrors (ParamsError, DataError, ModelError); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


class StageError(Exception):
    """A problem the user can act on: the message names the file, key or row, and what to do."""


class ParamsError(StageError, ValueError):
    """All problems found in params.yaml, one per line."""


class DataError(StageError, ValueError):
    """Bad input data: the message names the file, the row or key, and the reason."""


class ModelError(StageError, RuntimeError):
    """A model or adapter that cannot be used: says what was expected and what to do."""


def stage_name() -> str:
    """`train` for `python -m stages.train` (known before the module itself is imported)."""
    argv = sys.orig_argv
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else Path(sys.argv[0]).stem
    return module.rsplit(".", 1)[-1]


def run(main: Callable[[], None]) -> None:
    """The `__main__` of every stage (torchtune's recipe_main, for a DVC stage)."""
    try:
        main()
    except StageError as e:
        sys.exit(f"{stage_name()}: error: {e}")
