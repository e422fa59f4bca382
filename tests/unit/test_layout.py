"""The package layout: nothing imports a stage module, each stage module is a short recipe with a main(), and
importing the finetune package does nothing (no output, no logging filters, no files)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, env

SOURCES = ("finetune", "tests", "benchmarks", "scripts", "stages")
STAGE_LINES = 100
# The bitsandbytes loggers modeling.quiet_bitsandbytes() filters: at import time, nothing may touch them.
BNB_LOGGERS = "bitsandbytes"


def stage_imports(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` imports a stage module: `import stages.x`, `from stages import x`, `from stages.x import y`,
    importlib.import_module("stages.x")."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("stages.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "stages":
            found += [f"{filename}:{node.lineno}: from stages import {a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("stages."):
            found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("stages.")
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) in ("import_module", "__import__")
        ):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def python_files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts)


def test_nothing_imports_a_stage_module():
    found = [
        hit
        for path in python_files()
        for hit in stage_imports(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert found == []
    assert len(python_files()) > 50  # the walk found the tree


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("import stages.train\n", True),
        ("import stages.train as t\n", True),
        ("from stages import merge\n", True),
        ("from stages.report import main\n", True),
        ("def f():\n    from stages import prepare\n", True),  # inside a function too
        ("import importlib\nimportlib.import_module('stages.ingest')\n", True),
        ("from finetune import stages_list\nimport stagesx\nx = 'python -m stages.train'\n", False),
        ("from finetune.training import sft\n", False),
    ],
)
def test_the_import_check_flags_a_stage_import(source, flagged):
    """Negative control: the checker above sees each way of importing a stage module, and nothing else."""
    assert bool(stage_imports(source)) is flagged


def stage_modules() -> list[Path]:
    return sorted(p for p in (REPO / "stages").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", stage_modules(), ids=lambda p: p.stem)
def test_a_stage_module_is_a_short_recipe_with_main(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= STAGE_LINES, f"{path.name}: more than {STAGE_LINES} lines; move code to finetune"
    functions = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    assert "main" in functions, f"{path.name} defines no main()"


def test_every_dvc_stage_has_its_module():
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {f"stages.{p.stem}" for p in stage_modules()} == {
        s["cmd"].split("#")[0].split()[-1] for s in stages.values()
    }


# ---------------------------------------------------------------- importing the package does nothing

IMPORT_ALL = """\
import importlib, logging, os, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
if os.environ.get("LAYOUT_CONTROL"):  # the negative control: each thing the check must see
    from finetune import modeling
    modeling.quiet_bitsandbytes()
    print("control")
    open("control.txt", "w").close()
filtered = sorted(name for name, logger in logging.root.manager.loggerDict.items()
                  if name.startswith("{bnb}") and isinstance(logger, logging.Logger) and logger.filters)
if filtered:
    sys.exit("logging filters on " + ", ".join(filtered))
""".replace("{bnb}", BNB_LOGGERS)


def finetune_modules() -> list[str]:
    names = []
    for path in sorted((REPO / "finetune").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_all(cwd: Path, control: bool = False) -> subprocess.CompletedProcess:
    extra = {"PYTHONPATH": str(REPO), **({"LAYOUT_CONTROL": "1"} if control else {})}
    return subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *finetune_modules()],
        cwd=cwd,
        env={**env(), **extra},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("control", [False, True], ids=["import", "control"])
def test_importing_the_package_prints_filters_and_writes_nothing(tmp_path, control):
    """A fresh interpreter imports every finetune module in an empty directory: no output, no logging filters
    on bitsandbytes' loggers (modeling.quiet_bitsandbytes() installs them when a model is loaded), no file.
    The control does each of the three after the imports, and the same checks see every one."""
    assert {"finetune.modeling", "finetune.training.sft", "finetune.chat", "finetune"} <= set(finetune_modules())
    result = import_all(tmp_path, control)
    seen = {
        "printed": result.stdout != "",
        "filters": "logging filters on bitsandbytes" in result.stderr,
        "files": any(tmp_path.iterdir()),
    }
    if control:
        assert seen == {"printed": True, "filters": True, "files": True}, result.stderr
        assert result.returncode == 1
    else:
        assert seen == {"printed": False, "filters": False, "files": False}, result.stdout + result.stderr
        assert (result.returncode, result.stderr) == (0, "")
