"""llama.cpp's reference HF -> GGUF converter, from the pinned llama-cpp-python sdist: set up, then called.

    python -m finetune.export.converter install    # `make setup`: fetch + check the sdist, extract, install gguf-py
    python -m finetune.export.converter convert MODEL_DIR OUT.gguf OUTTYPE MODEL_NAME   # what the stage runs

The sdist (PyPI has no wheel) carries llama.cpp's convert_hf_to_gguf.py, its conversion/ package and its own
gguf-py, newer than PyPI's gguf of the same version (which fails with AttributeError: DFLASH). `install` fetches
it once into SDIST_CACHE, checks SDIST_SHA256 and extracts those three into CONVERTER_DIR (.venv/share/llama.cpp);
a new pin here reruns it (the Makefile stamp depends on this file) and reruns the export stage (a dependency).

`convert` runs the converter in this process (the stage starts it as a subprocess, so the vendored gguf is the
one imported) with two narrow fixes, for tokenizers it cannot place on its own:
- pre-tokenizer: llama.cpp names a BPE pre-tokenizer by hashing the ids of a test string, so a newly trained
  vocabulary (the tiny default's) is unknown. Only then, and only when tokenizer.json pre-tokenizes exactly as
  Qwen2 (same regex, NFC or no normaliser, ByteLevel without prefix space), the answer is "qwen2";
- Phi-3 with a BPE tokenizer.json and no SentencePiece tokenizer.model takes the BPE path (as Phi-4 does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the pin: llama-cpp-python's sdist, converter and (make check-gguf) runtime
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_CACHE = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune")) / "sdist"
CONVERTER_DIR = Path(sys.prefix) / "share" / "llama.cpp"  # in the venv: `make clean-venv` removes it too
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
OUTTYPES = (
    "f16",
    "bf16",
    "q8_0",
)  # what the converter writes itself; q4_k_m comes from llama.cpp's quantizer

# Qwen2's pre-tokenizer regex: transformers' qwen2 PRETOKENIZE_REGEX, llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class SetupError(RuntimeError):
    pass


def sdist() -> Path:
    """The pinned sdist in the cache, downloaded once (pip, from PyPI) and checked against SDIST_SHA256."""
    path = SDIST_CACHE / SDIST
    if not path.is_file():
        SDIST_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "-d",
                str(SDIST_CACHE),
            ],
            check=True,
        )
    with path.open("rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != SDIST_SHA256:
        raise SetupError(f"{path}: sha256 {got}, expected {SDIST_SHA256} (pinned in {__file__}); delete it to refetch")
    return path


def installed_version(directory: Path = CONVERTER_DIR) -> str | None:
    stamp = directory / "VERSION"
    return stamp.read_text().strip() if stamp.is_file() else None


def install(directory: Path = CONVERTER_DIR) -> Path:
    """Extract the converter tree (2 MB) into `directory` and pip-install its gguf-py into this venv."""
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    tmp = Path(
        tempfile.mkdtemp(
            prefix=".llama.cpp.",
            dir=directory.parent if directory.parent.exists() else None,
        )
    )
    try:
        with tarfile.open(sdist()) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and m.name[len(prefix) :].startswith(_MEMBERS)
                and (m.isfile() or m.isdir())
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(tmp, members=members, filter="data")
        (tmp / "VERSION").write_text(LLAMA_CPP_PYTHON + "\n")
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--force-reinstall",
            str(directory / "gguf-py"),
        ],
        check=True,
    )
    return directory


def script() -> Path:
    """The installed converter; a clear error when `make setup` has not installed this pin."""
    version = installed_version()
    if version != LLAMA_CPP_PYTHON:
        found = f"version {version}" if version else "nothing"
        raise SetupError(
            f"{CONVERTER_DIR}: llama.cpp's converter {LLAMA_CPP_PYTHON} is not installed (found "
            f"{found}); run `make setup` (or `python -m finetune.export.converter install`)"
        )
    return CONVERTER_DIR / "convert_hf_to_gguf.py"


def is_qwen2_pretokenizer(tokenizer_json: dict) -> bool:
    """tokenizer.json splits text exactly as Qwen2's (the fields that change the split; not trim_offsets)."""
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        return False
    if (tokenizer_json.get("normalizer") or {"type": "NFC"}).get("type") != "NFC":
        return False
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and split.get("pattern") == {"Regex": QWEN2_REGEX}
        and split.get("behavior") == "Isolated"
        and not split.get("invert", False)
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("add_prefix_space", False)
        and byte_level.get("use_regex", True) is False
    )


def _patch(conversion) -> None:
    from conversion import base, phi

    known_pre = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known_pre(self, tokenizer)
        except NotImplementedError:
            path = Path(self.dir_model) / "tokenizer.json"
            if path.is_file() and is_qwen2_pretokenizer(json.loads(path.read_text(encoding="utf-8"))):
                base.logger.warning("unknown BPE hash, but tokenizer.json pre-tokenizes as Qwen2: using 'qwen2'")
                return "qwen2"
            raise

    phi3_vocab = phi.Phi3MiniModel.set_vocab

    def phi3_set_vocab(self):
        d = Path(self.dir_model)
        if not (d / "tokenizer.model").is_file() and (d / "tokenizer.json").is_file():
            return self._set_vocab_gpt2()
        return phi3_vocab(self)

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    phi.Phi3MiniModel.set_vocab = phi3_set_vocab


def _convert_here(model_dir: str, outfile: str, outtype: str, model_name: str) -> None:
    path = script()
    sys.path[:0] = [str(path.parent / "gguf-py"), str(path.parent)]
    import conversion

    _patch(conversion)
    sys.argv = [
        str(path),
        model_dir,
        "--outfile",
        outfile,
        "--outtype",
        outtype,
        "--model-name",
        model_name,
    ]
    namespace = {"__name__": "convert_hf_to_gguf", "__file__": str(path)}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # noqa: S102 (the pinned converter)
    namespace["main"]()


def convert(
    model_dir: str | os.PathLike,
    outfile: str | os.PathLike,
    outtype: str,
    model_name: str,
) -> str:
    """The converter in a subprocess (its own gguf, its log); its output on failure. Returns its log."""
    script()  # the setup error before starting a process
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.export.converter",
            "convert",
            str(model_dir),
            str(outfile),
            outtype,
            model_name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SetupError(f"llama.cpp's converter failed on {model_dir} ({outtype}):\n{tail}")
    return result.stdout + result.stderr


if __name__ == "__main__":
    if sys.argv[1:2] == ["install"]:
        print(f"llama.cpp converter {LLAMA_CPP_PYTHON} -> {install()}")
    elif sys.argv[1:2] == ["convert"] and len(sys.argv) == 6:
        _convert_here(*sys.argv[2:])
    else:
        sys.exit(__doc__)
