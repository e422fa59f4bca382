"""dvc.yaml kept in step with the code: each stage's deps, outs and params, checked against the code's AST.

For every stage run as `python -m stages.NAME`, stages/NAME.py and the `finetune` modules it imports, directly or
through one another (its import closure), are read (never imported) and:
- the closure's finetune/*.py files (but errors.py, environment.py and __init__.py files, which cannot change
  what a stage writes) are exactly the `finetune/...` deps listed, and stages/NAME.py is a dep;
- every `paths.NAME` (finetune/paths.py) the stage module or its closure uses whose value is under data/,
  models/ or metrics/ is a dep or an out of the stage; one passed to a files writer must be an out, one
  passed to a reader a dep (but the few kept outside DVC on purpose, OUTSIDE_DVC); the curve files of
  dvc.yaml's plots are read where runs.curve_files is called;
- every params key the code reads is covered by the stage's params: `config.load(...)` sections, attribute
  chains such as `p.train.lora.r`, through aliases (`cfg = p.model`), through parameters annotated with a
  params class (`t: config.TrainParams`) and through a section handed to a function of the closure
  (`suite.evaluate_model(..., p.evaluate, ...)` reads `cfg.batch_size` as evaluate.batch_size).
The reverse holds too: removing any entry of dvc.yaml (but the few listed in NOT_IN_CODE) must be
noticed, so a dep or params key the code does not use fails the negative cases.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
import shutil
import sys
import typing
from functools import cache
from pathlib import Path

import pytest
import yaml

from helpers import REPO

ROOT = REPO  # where stages/ and finetune/ are read from (a probe test points it elsewhere)
DATA_ROOTS = ("data", "models", "metrics")
OUT_KINDS = ("outs", "metrics", "plots")
PATHS_MODULE = "finetune/paths.py"
CONFIG_MODULE = "finetune/config.py"
# Imported by every stage, but they cannot change what a stage writes: listing them would rerun the
# whole pipeline for a reworded error message. (__init__.py files, which only document, neither.)
NO_OUTPUT_EFFECT = {"stages/__init__.py", "finetune/errors.py", "finetune/environment.py"}
# Reads every section to validate it: a key named there is not a key the stage uses.
NOT_PARAMS_USE = {CONFIG_MODULE}
# State a stage keeps outside DVC on purpose.
OUTSIDE_DVC = {
    "models/checkpoints": "train's resumable checkpoints: cleared by train's own fingerprint, never pulled",
}
# The training settings the model card shows: model_card.hyperparameters shows the merge stage's params keys
# under model_card.HYPERPARAMETER_KEYS, as dvc.yaml lists them (pipeline.stage_inputs), so dvc.yaml itself is
# the list and no code names them. test_card_keys_are_settings_that_shaped_the_weights checks them instead.
CARD_ONLY = (
    "lr",
    "train.epochs",
    "train.max_steps",
    "train.batch_size",
    "train.grad_accum",
    "train.optim",
    "train.lr_scheduler",
    "train.warmup_ratio",
    "train.weight_decay",
    "train.precision",
    "train.completion_only_loss",
    "train.seed",
    "train.lora",
)
# dvc.yaml entries that no code names (so removing them cannot be noticed from the code).
NOT_IN_CODE = {
    ("ingest", "deps", "${data.path}"): "the input file is named by a param",
    ("base", "deps", "${model.local_dir}"): "the local model directory is named by a param",
    **{("merge", "params", key): "shown in the model card, which lists what dvc.yaml lists" for key in CARD_ONLY},
}
# Every stage but check_params depends on its output, which no stage reads: it orders check_params first, so a
# refused param stops `dvc repro` before DVC removes any output (test_every_stage_waits_for_check_params).
PARAMS_OK = "models/params_ok.json"
_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
NOT_IN_CODE |= {
    (name, "deps", PARAMS_OK): "orders check_params before it" for name in _STAGES if name != "check_params"
}
WRITER = re.compile(r"^(write|atomic_path$)")  # files.write_json, files.atomic_path, ...
READER = re.compile(r"^(read|load)_?|^check_adapter$")  # pd.read_parquet, files.read_json, modeling.load_model...


# ---------------------------------------------------------------- reading the code


def parse(module: str) -> ast.Module:
    return _parse(ROOT / module)


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_path(name: str) -> str | None:
    """finetune.data.readers -> finetune/data/readers.py; a package -> its __init__.py; None if neither."""
    base = name.replace(".", "/")
    for path in (f"{base}.py", f"{base}/__init__.py"):
        if (ROOT / path).is_file():
            return path
    return None


def packages_of(name: str) -> set[str]:
    """The __init__.py files importing `name` runs first (finetune.data.readers: finetune's, finetune.data's)."""
    parts = name.split(".")
    return {path for i in range(1, len(parts)) if (path := module_path(".".join(parts[:i])))}


@cache
def bindings(module: str) -> tuple[dict[str, str], dict[str, tuple[str, str]], frozenset[str]]:
    """What a module's imports of stages/finetune bind, anywhere in it (top level or inside functions):
    (name -> module path: `from finetune import config`, `import finetune.x as y`;
     name -> (module path, attribute): `from finetune.report.runs import fmt`;
     every module file the imports run)."""
    modules, attributes, imported = {}, {}, set()
    for node in ast.walk(parse(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("stages", "finetune") and (path := module_path(alias.name)):
                    imported |= {path, *packages_of(alias.name)}
                    if alias.asname:
                        modules[alias.asname] = path
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] in ("stages", "finetune")
        ):
            imported |= {p for p in (module_path(node.module),) if p} | packages_of(node.module)
            for alias in node.names:
                name = alias.asname or alias.name
                if path := module_path(f"{node.module}.{alias.name}"):  # a module of the package
                    modules[name] = path
                    imported |= {path}
                elif path := module_path(node.module):  # an attribute of the module
                    attributes[name] = (path, alias.name)
    return modules, attributes, frozenset(imported)


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for dep in bindings(todo.pop())[2] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def listed_code(module: str) -> set[str]:
    """What dvc.yaml must list of a stage's code: its module and its closure's files, but NO_OUTPUT_EFFECT's."""
    return {
        path
        for path in {module} | import_closure(module)
        if path not in NO_OUTPUT_EFFECT and not path.endswith("__init__.py")
    }


@cache
def path_constants() -> dict[str, str]:
    """finetune/paths.py's NAME = "data/..." / "models/..." / "metrics/..." assignments."""
    found = {}
    for node in parse(PATHS_MODULE).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and node.value.value.split("/")[0] in DATA_ROOTS
            and "/" in node.value.value
        ):
            found[node.targets[0].id] = node.value.value
    return found


def call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def path_uses(module: str) -> tuple[set[str], set[str], set[str], bool]:
    """(data paths a module names, those passed to a files writer, those passed to a reader, whether it calls
    curve_files), through `paths.NAME` or a name imported from finetune.paths."""
    modules, attributes, _ = bindings(module)
    aliases = {name for name, path in modules.items() if path == PATHS_MODULE}
    imported = {name: attr for name, (path, attr) in attributes.items() if path == PATHS_MODULE}
    constants = path_constants()

    def named(node) -> str | None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            return constants.get(node.attr)
        if isinstance(node, ast.Name) and node.id in imported:
            return constants.get(imported[node.id])
        return None

    used, written, read, curves = set(), set(), set(), False
    for node in ast.walk(parse(module)):
        if (path := named(node)) is not None:
            used.add(path)
        if isinstance(node, ast.Call):
            curves |= call_name(node) == "curve_files"
            passed = {path for a in [*node.args, *(k.value for k in node.keywords)] if (path := named(a))}
            if WRITER.search(call_name(node)):
                written |= passed
            elif READER.search(call_name(node)):
                read |= passed
    return used, written, read, curves


@cache
def params_classes() -> dict[str, str]:
    """'TrainParams' -> 'train', 'LoraParams' -> 'train.lora', ... from finetune.config's section classes."""
    from finetune import config

    def fields(cls) -> dict[str, typing.Any]:
        if dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        return {name: info.annotation for name, info in getattr(cls, "model_fields", {}).items()}

    def section(hint):
        return next((h for h in (hint, *typing.get_args(hint)) if isinstance(h, type) and fields(h)), None)

    found = {"Params": ""}

    def walk(cls, prefix):
        found[cls.__name__] = prefix
        for name, hint in fields(cls).items():
            if (inner := section(hint)) is not None:
                walk(inner, f"{prefix}.{name}")

    for name, cls in config.SECTIONS.items():
        walk(cls, name)
    return found


def chain(node: ast.AST) -> list[str] | None:
    """`p.train.lora.r` -> ['p', 'train', 'lora', 'r']; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def join(prefix: str, attrs: list[str]) -> str:
    return ".".join(([prefix] if prefix else []) + attrs)


@cache
def functions(module: str) -> dict[str, ast.FunctionDef]:
    return {fn.name: fn for fn in parse(module).body if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))}


def typed_roots(module: str, fn: ast.FunctionDef) -> dict[str, str]:
    """Parameters annotated with a params class (`t: config.TrainParams`) -> their prefix ('train')."""
    config_names = {name for name, path in bindings(module)[0].items() if path == CONFIG_MODULE}
    roots = {}
    for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
        annotation = arg.annotation
        if (
            isinstance(annotation, ast.Attribute)
            and isinstance(annotation.value, ast.Name)
            and annotation.value.id in config_names
            and annotation.attr in params_classes()
        ):
            roots[arg.arg] = params_classes()[annotation.attr]
    return roots


def callee(module: str, call: ast.Call) -> tuple[str, ast.FunctionDef] | None:
    """The function of the closure a call runs: `suite.evaluate_model(...)`, `run_id(p)`, `fmt(x)` imported."""
    modules, attributes, _ = bindings(module)
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in modules:
        target, name = modules[func.value.id], func.attr
    elif isinstance(func, ast.Name) and func.id in functions(module):
        target, name = module, func.id
    elif isinstance(func, ast.Name) and func.id in attributes:
        target, name = attributes[func.id]
    else:
        return None
    fn = functions(target).get(name)
    return (target, fn) if fn is not None else None


def read_function(module: str, fn: ast.FunctionDef, given: dict[str, str]):
    """(params keys read, sections config.load-ed, calls handing a section on: (module, function, roots))."""
    config_names = {name for name, path in bindings(module)[0].items() if path == CONFIG_MODULE}
    roots = {**given, **typed_roots(module, fn)}  # local name -> params prefix ('' for the whole Params)
    sections = set(params_classes().values())
    body = [n for n in ast.walk(fn) if n is not fn]
    consumed = set()  # chains handed whole to another function (read there key by key) or aliased

    def is_load(node) -> bool:
        return (
            isinstance(node, ast.Call)
            and (c := chain(node.func)) is not None
            and len(c) == 2
            and c[0] in config_names
            and c[1] == "load"
        )

    for node in sorted((n for n in body if isinstance(n, ast.Assign)), key=lambda n: n.lineno):
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        if is_load(node.value):
            roots[node.targets[0].id] = ""
        elif (parts := chain(node.value)) and parts[0] in roots:
            roots[node.targets[0].id] = join(roots[parts[0]], parts[1:])
            consumed.add(id(node.value))  # an alias: what is read through it counts, not the alias itself
    loaded = {a.value for n in body if is_load(n) for a in n.args if isinstance(a, ast.Constant)}
    # `config.load("train")` as a statement, its result unused: it validates, i.e. reads, every key of the section
    validated = {
        a.value
        for n in body
        if isinstance(n, ast.Expr) and is_load(n.value)
        for a in n.value.args
        if isinstance(a, ast.Constant)
    }
    calls = []
    for call in (n for n in body if isinstance(n, ast.Call)):
        if (target := callee(module, call)) is None:
            continue
        target_module, target_fn = target
        params = [a.arg for a in [*target_fn.args.posonlyargs, *target_fn.args.args]]
        handed = {}
        for param, arg in [*zip(params, call.args), *((k.arg, k.value) for k in call.keywords if k.arg)]:
            if (parts := chain(arg)) and parts[0] in roots and (prefix := join(roots[parts[0]], parts[1:])) in sections:
                handed[param] = prefix
                consumed.add(id(arg))
        if handed:
            calls.append((target_module, target_fn.name, frozenset(handed.items())))
    inner = {id(n.value) for n in body if isinstance(n, ast.Attribute)}
    methods = {id(n.func) for n in body if isinstance(n, ast.Call)}  # value.model_dump(): reads value
    keys = set(validated)
    for node in body:
        if isinstance(node, ast.Attribute) and id(node) not in inner | consumed:  # whole chains only
            parts = chain(node)
            if parts and id(node) in methods:
                parts = parts[:-1]
            if parts and parts[0] in roots and (key := join(roots[parts[0]], parts[1:])):
                keys.add(key)
    return keys, loaded, calls


def params_read(modules: set[str]) -> tuple[set[str], set[str]]:
    """(sections passed to config.load, params keys read) in every function of `modules`, following sections
    handed to functions of the closure."""
    keys, loaded = set(), set()
    todo = [(m, name, frozenset()) for m in modules - NOT_PARAMS_USE for name in functions(m)]
    seen = set()
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        module, name, given = item
        found, sections, calls = read_function(module, functions(module)[name], dict(given))
        keys |= found
        loaded |= sections
        todo += [c for c in calls if c[0] not in NOT_PARAMS_USE]
    return loaded, keys


# ---------------------------------------------------------------- the check


def entries(spec: dict, kind: str) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in spec.get(kind) or []]


def covers(declared: str, path: str) -> bool:
    return path == declared or path.startswith(declared.rstrip("/") + "/")


def key_covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(declared + ".")


def stage_module(spec: dict) -> str | None:
    m = re.fullmatch(r"python -m (stages\.\w+)", str(spec.get("cmd", "")).strip())
    return module_path(m.group(1)) if m else None


def plot_files(pipeline: dict) -> set[str]:
    """The TSVs of dvc.yaml's top-level plots: what runs.curve_files hands the report to read."""
    return {path for plot in pipeline.get("plots") or [] for spec in plot.values() for path in spec.get("y", {})}


@cache
def analysis(root: Path, module: str) -> dict:
    """What the code of a stage module and its closure needs, read once per module."""
    code = {module} | import_closure(module)
    used, written, read, curves = set(), set(), set(), False
    for path in code:
        u, w, r, c = path_uses(path)
        used, written, read, curves = used | u, written | w, read | r, curves or c
    outside = lambda path: any(covers(o, path) for o in OUTSIDE_DVC)  # noqa: E731
    loaded, keys = params_read(code)
    return {
        "code": listed_code(module),
        "paths": {p for p in used if not outside(p)},
        "written": {p for p in written if not outside(p)},
        "read": {p for p in read if not outside(p)},
        "curves": curves,
        "loaded": loaded,
        "keys": keys,
    }


def problems(pipeline: dict) -> list[str]:
    """What a stage's code reads or writes that its dvc.yaml entry lacks, and entries the code does not need."""
    found = []
    for name, spec in pipeline["stages"].items():
        module = stage_module(spec)
        if module is None:
            continue
        deps, outs = entries(spec, "deps"), [p for kind in OUT_KINDS for p in entries(spec, kind)]
        params = entries(spec, "params")
        a = analysis(ROOT, module)
        code, keys, loaded = a["code"], a["keys"], a["loaded"]
        read = a["read"] | (plot_files(pipeline) if a["curves"] else set())
        needed_paths = a["paths"] | read
        for path in sorted(code - set(deps)):
            found.append(f"{name}: imports {path}, missing from deps")
        for path in sorted(needed_paths):
            in_deps, in_outs = any(covers(d, path) for d in deps), any(covers(o, path) for o in outs)
            if path in a["written"] and not in_outs:
                found.append(f"{name}: writes {path}, missing from outs/metrics/plots")
            elif path in read - a["written"] and not in_deps:
                found.append(f"{name}: reads {path}, missing from deps")
            elif not (in_deps or in_outs):
                found.append(f"{name}: uses {path}, missing from deps and outs")
        for key in sorted(keys):
            if not any(key_covers(d, key) for d in params):
                found.append(f"{name}: reads params key {key}, missing from params")
        for section in sorted(loaded):
            if not any(key_covers(section, d) or key_covers(d, section) for d in params):
                found.append(f"{name}: loads params section {section}, missing from params")
        # nothing more: each entry must be needed by the code (or be one of NOT_IN_CODE)
        for kind in ("deps", *OUT_KINDS):
            for entry in entries(spec, kind):
                if (name, kind, entry) in NOT_IN_CODE:
                    continue
                if entry.startswith(("stages/", "finetune/")):
                    if entry not in code:
                        found.append(f"{name}: {kind} lists {entry}, which the stage does not import")
                elif not any(covers(entry, path) for path in needed_paths):
                    found.append(f"{name}: {kind} lists {entry}, which no code of {module} names")
        for entry in params:
            if (name, "params", entry) in NOT_IN_CODE:
                continue
            if not any(key_covers(entry, k) or key_covers(k, entry) for k in keys):
                found.append(f"{name}: params lists {entry}, which the stage never reads")
    return found


def pipeline() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_yaml_lists_what_each_stage_reads_and_writes():
    assert problems(pipeline()) == []


def every_entry() -> list[tuple[str, str, str]]:
    out = []
    for name, spec in pipeline()["stages"].items():
        if stage_module(spec) is None:
            continue
        for kind in ("deps", *OUT_KINDS, "params"):
            out += [(name, kind, e) for e in entries(spec, kind) if (name, kind, e) not in NOT_IN_CODE]
    return out


@pytest.mark.parametrize("stage,kind,entry", every_entry(), ids=lambda v: str(v))
def test_a_removed_entry_is_noticed(stage, kind, entry):
    """Negative control: dvc.yaml without one entry fails the check, naming what is missing."""
    broken = copy.deepcopy(pipeline())
    listed = broken["stages"][stage][kind]
    listed[:] = [e for e in listed if (e if isinstance(e, str) else next(iter(e))) != entry]
    found = [p.removeprefix(f"{stage}: ") for p in problems(broken) if p.startswith(f"{stage}: ")]
    assert found, f"removing {entry} from {stage}.{kind} went unnoticed"
    named = [
        p
        for p in found
        if any(covers(entry, word) for word in re.split(r"[\s,]+", p))
        or any(key_covers(entry, k) for k in re.findall(r"key (\S+)", p))
    ]
    assert named, found


def test_every_stage_waits_for_check_params():
    """check_params validates all of params.yaml and every other stage depends on its output directly, so DVC
    runs it first; its params are every section of params.yaml, so it reruns whenever any param changes."""
    from finetune import config, paths

    stages = pipeline()["stages"]
    assert paths.PARAMS_OK == PARAMS_OK and PARAMS_OK in entries(stages["check_params"], "outs")
    late = [name for name, spec in stages.items() if name != "check_params" and PARAMS_OK not in entries(spec, "deps")]
    assert late == []
    sections = set(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert set(entries(stages["check_params"], "params")) == sections == set(config.Params.model_fields)
    broken = copy.deepcopy(stages)  # negative control: a stage without the dep is found
    broken["train"]["deps"].remove(PARAMS_OK)
    assert [n for n, s in broken.items() if n != "check_params" and PARAMS_OK not in entries(s, "deps")] == ["train"]


def test_not_in_code_entries_are_listed():
    """NOT_IN_CODE names entries dvc.yaml has: a stale exception would hide nothing and mislead."""
    for stage, kind, entry in NOT_IN_CODE:
        assert entry in entries(pipeline()["stages"][stage], kind), (stage, kind, entry)


def test_card_keys_are_settings_that_shaped_the_weights():
    """CARD_ONLY (merge's params no code names) are what the card shows beyond what merge's code reads: each is
    an input of train (the adapter merge reads changes with it) and a key params.yaml has."""
    from finetune import config, model_card
    from finetune import pipeline as finetune_pipeline

    merge, train = (entries(pipeline()["stages"][s], "params") for s in ("merge", "train"))
    shown = [key for key in merge if key == "lr" or key.startswith(model_card.HYPERPARAMETER_KEYS[1:])]
    assert set(CARD_ONLY) <= set(shown)
    read = analysis(ROOT, "stages/merge.py")["keys"]
    for key in set(shown) - set(CARD_ONLY):  # the others merge's code reads itself: the main check covers them
        assert any(key_covers(key, k) for k in read), key
    p = config.parse({}, ["lr", "data", "prepare", "model", "train", "evaluate", "merge"])
    for key in CARD_ONLY:
        assert any(key_covers(t, key) for t in train), f"{key}: not an input of train"
        finetune_pipeline.param_value(p, key)  # a key params.yaml has (StageError otherwise)
    assert not any(key_covers(t, "evaluate.batch_size") for t in train)  # control: one of merge's own keys


CACHED = (_parse, bindings, path_constants, functions, analysis)


@pytest.fixture
def fresh_caches():
    """The reader's caches hold the files of one ROOT: a probe reads another, and leaves none of it behind."""
    for fn in CACHED:
        fn.cache_clear()
    yield
    for fn in CACHED:
        fn.cache_clear()


def probe(root: Path, monkeypatch, snippet: str, **spec) -> list[str]:
    """problems() of a one-stage pipeline whose module is `snippet` (copies of stages/ and finetune/ under root)."""
    for code in ("stages", "finetune"):
        shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "stages/probe.py").write_text(snippet)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    return problems(
        {
            "stages": {"probe": {"cmd": "python -m stages.probe", "deps": ["stages/probe.py"], **spec}},
            "plots": pipeline()["plots"],
        }
    )


@pytest.mark.parametrize(
    "snippet,expected",
    [
        (
            "from finetune import files, paths\ndef main():\n    files.write_json(paths.TRAIN_METRICS, {})\n",
            "writes metrics/train.json, missing from outs",
        ),
        (
            "import pandas as pd\nfrom finetune import paths\ndef main():\n    pd.read_parquet(paths.TRAIN_DATA)\n",
            "reads data/processed/train.parquet, missing from deps",
        ),
        (
            "from finetune.paths import TEST_DATA\ndef main():\n    print(TEST_DATA)\n",
            "uses data/processed/test.parquet, missing from deps and outs",
        ),
        (
            "from finetune import config\ndef main():\n    p = config.load('train')\n    cfg = p.train\n    cfg.lora.r\n",
            "reads params key train.lora.r, missing from params",
        ),
        (
            "from finetune import config\ndef f(t: config.TrainParams):\n    return t.lora.alpha\n",
            "reads params key train.lora.alpha, missing from params",
        ),
        ("from finetune import config\ndef main():\n    config.load('merge')\n", "loads params section merge"),
        (
            "from finetune.evaluation import suite\n",
            "imports finetune/chat_format.py, missing from deps",
        ),  # through suite
        ("from finetune.report import page\n", "reads metrics/samples.jsonl, missing from deps"),  # runs, through page
        (
            "from finetune.report import runs\ndef main():\n    runs.curve_files()\n",
            "reads metrics/train_live/plots/metrics/loss.tsv, missing from deps",
        ),  # dvc.yaml's plots
        (
            "from finetune import config\nfrom finetune.evaluation import generation\ndef main():\n"
            "    p = config.load('evaluate')\n    generation.settings_report(None, p.evaluate)\n",
            "reads params key evaluate.max_new_tokens, missing from params",
        ),  # a section handed on, read there
    ],
)
def test_the_reader_sees(tmp_path, monkeypatch, fresh_caches, snippet, expected):
    """Each kind of use the AST reader must notice, in a probe stage that declares nothing."""
    found = probe(tmp_path, monkeypatch, snippet)
    assert any(expected in p for p in found), found


def test_a_probe_that_declares_everything_passes(tmp_path, monkeypatch, fresh_caches):
    snippet = (
        "from finetune import config, files, paths\nfrom finetune.data import readers\n"
        "def main():\n    p = config.load('train')\n    t = p.train\n    readers.read_any(paths.INGESTED)\n"
        "    files.write_json(paths.TRAIN_METRICS, {'r': t.lora.r, 'lr': p.lr})\n"
    )
    spec = {
        "deps": [
            "stages/probe.py",
            "finetune/config.py",
            "finetune/files.py",
            "finetune/paths.py",
            "finetune/data/readers.py",
            "data/interim/ingested.parquet",
        ],
        "metrics": [{"metrics/train.json": {"cache": False}}],
        "params": ["train.lora.r", "lr"],
    }
    assert probe(tmp_path, monkeypatch, snippet, **spec) == []
