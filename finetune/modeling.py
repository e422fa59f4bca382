"""Model and tokenizer loading, in one place for base, prepare, train, evaluate and merge."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import torch

from finetune import chat_format, config, paths
from finetune.errors import ModelError


# ---------------------------------------------------------------- hardware


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(precision: str) -> torch.dtype:
    """auto: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU (bf16 there is ~10x slower)."""
    if precision == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


# ---------------------------------------------------------------- tokenizers


def load_tokenizer(base_dir: str | os.PathLike, require_template: bool = True):
    """The tokenizer of a model directory; without a pad token, eos pads (as TRL does), masked everywhere.

    The base stage writes the chat template chosen by model.chat_template into models/base, so every later
    stage finds one; a directory without one is an error there (require_template False: the base stage's check).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if require_template and not tokenizer.chat_template:
        raise ModelError(
            f"{base_dir}: the tokenizer has no chat template; rerun `dvc repro base` "
            "(model.chat_template chooses one for a model that has none)"
        )
    return tokenizer


def choose_template(tokenizer, setting: str, base: str):
    """Apply model.chat_template: auto (the model's own), chatml, or a .jinja file. A template whose end of turn
    is not one token of the vocabulary is refused: its markers would be trained as plain text."""
    if setting == "auto":
        if not tokenizer.chat_template:
            raise config.error(
                f"model.chat_template: auto, but {base} has no chat template (a base, not an instruct, checkpoint); "
                "set model.chat_template to chatml (if its vocabulary has <|im_start|> and <|im_end|> as tokens) "
                "or to a .jinja file written with the model's own special tokens"
            )
        return tokenizer
    if setting == "chatml":
        split = {m: tokenizer(m, add_special_tokens=False)["input_ids"] for m in chat_format.CHATML_MARKERS}
        if any(len(ids) != 1 for ids in split.values()):
            pieces = ", ".join(f"{m} -> {len(ids)} tokens" for m, ids in split.items() if len(ids) != 1)
            raise config.error(
                f"model.chat_template: chatml needs <|im_start|> and <|im_end|> as single tokens, but {base}'s "
                f"vocabulary splits them ({pieces}); its markers would be trained as plain text. Use the model's "
                "own template (auto) or a .jinja file written with its own special tokens"
            )
        tokenizer.chat_template = chat_format.CHATML_TEMPLATE
    else:
        path = Path(setting).expanduser()
        if not path.is_file():
            raise config.error(f"model.chat_template must be auto, chatml or a .jinja file; {setting!r} is no file")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    end, after = chat_format.end_of_turn(tokenizer)
    if end is None:
        raise config.error(
            f"model.chat_template: {setting}: an assistant turn ends with {after[:40]!r}, which does not start with a "
            f"special token of {base}'s vocabulary: answers could not be told to stop. End each turn with one of its "
            "special tokens (or use auto, the model's own template)"
        )
    return tokenizer


def generation_config(base_dir: str | os.PathLike):
    """The base model's generation_config (its end tokens), from where its weights live; from config.json when
    it ships none."""
    from transformers import AutoConfig, GenerationConfig

    directory = weights_dir(base_dir)
    try:
        return GenerationConfig.from_pretrained(directory)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(directory))


def stop_token_ids(base_dir: str | os.PathLike, tokenizer) -> list[int]:
    """chat_format.stop_token_ids of the tokenizer and the base model's generation_config."""
    return chat_format.stop_token_ids(tokenizer, generation_config(base_dir))


def linear_layer_names(model) -> list[str]:
    """Leaf names of the linear layers LoRA can adapt (nn.Linear and bitsandbytes' Linear8bitLt / Linear4bit,
    its subclasses), not the output head: what peft's all-linear adapts."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
    )


def lora_targets(model, setting: str | list[str]) -> list[str]:
    """train.lora.target_modules resolved against the model: every linear layer name (all-linear) or the listed
    ones; a listed name that matches no linear layer is a params error naming the model's."""
    names = linear_layer_names(model)
    if setting == "all-linear":
        return names
    missing = [name for name in setting if name not in names]
    if missing:
        kind = type(model).__name__
        raise config.error(
            f"train.lora.target_modules: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a linear "
            f"layer of {kind}, whose linear layers are {', '.join(names)} (or use all-linear)"
        )
    return list(dict.fromkeys(setting))


# ---------------------------------------------------------------- base models


class _FirstTimeOnly(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        new = record.msg not in self.seen
        self.seen.add(record.msg)
        return new


@functools.cache
def quiet_bitsandbytes() -> None:
    """bitsandbytes logs a warning on every 8-bit matmul of an fp32 input (the CPU path): once is enough.
    On CPU it also asks to `pip install kernels`, which would fetch 4-bit kernels from a hub: not here."""
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_FirstTimeOnly())
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.msg)


def local_model(directory: str | os.PathLike) -> dict:
    """model.base 'local': the model in model.local_dir, used where it is (not copied)."""
    local = Path(directory).expanduser()
    if not local.is_dir():
        raise ModelError(f"model.local_dir: {local} is not a directory (model.base is 'local')")
    if not (local / "config.json").is_file():
        raise ModelError(
            f"model.local_dir: {local} has no config.json (not a model directory; model.base is "
            "'local'): put a model there or point at one, `-S model.local_dir=/path/to/model`"
        )
    return {"kind": "local", "path": str(local.resolve())}


def resolve_pretrained(base: str, revision: str) -> dict:
    """Where a hub base lives: downloaded once into the local HF cache and reused by every later run and
    experiment; offline, a cached copy is used, and a missing one is a clear error."""
    if base.startswith((".", "/", "~")) or base.count("/") != 1:
        raise ModelError(f"model.base: {base!r} is none of 'tiny', 'local' or a hub id like 'Qwen/Qwen2-0.5B-Instruct'")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    try:
        path = snapshot_download(base, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        try:
            path = snapshot_download(base, revision=revision, allow_patterns=patterns)
        except Exception as e:
            raise ModelError(
                f"model.base: could not download {base!r} (revision {revision!r}) from the Hugging Face Hub "
                f"and it is not in the local cache ({type(e).__name__}: {e}). Without network, download it "
                f"elsewhere (`hf download {base} --local-dir DIR`), copy DIR here and use it as a local model: "
                f"`dvc exp run -S model.base=local -S model.local_dir=/path/to/DIR`."
            ) from e
    return {"kind": "hub", "id": base, "revision": revision, "path": str(Path(path).resolve())}


def weights_dir(base_dir: str | os.PathLike) -> str:
    """The directory holding the base weights: models/base itself, or where source.json points."""
    base_dir = Path(base_dir)
    source = base_dir / paths.SOURCE_FILE
    if not source.is_file():
        return str(base_dir)
    path = json.loads(source.read_text())["path"]
    if not Path(path, "config.json").is_file():
        raise ModelError(f"{source} points to {path}, which holds no model now; rerun `dvc repro -f base`")
    return path


def load_model(base_dir: str | os.PathLike, quantization: str = "none", dtype: torch.dtype = torch.float32):
    """The base model, quantized with bitsandbytes (8bit / 4bit) or not ('none')."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quiet_bitsandbytes()
    kwargs = {}
    if quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    model = AutoModelForCausalLM.from_pretrained(weights_dir(base_dir), dtype=dtype, device_map=device(), **kwargs)
    return model


def load_tuned(base_dir, adapter_dir, quantization: str, dtype: torch.dtype, expected_base: str | None = None):
    """Base + LoRA adapter, after checking the adapter is complete and made for this base."""
    quiet_bitsandbytes()  # peft imports bitsandbytes
    from peft import PeftModel

    check_adapter(adapter_dir, expected_base)
    model = load_model(base_dir, quantization, dtype)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def check_adapter(adapter_dir, expected_base: str | None) -> None:
    adapter_dir = Path(adapter_dir)
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json; not a complete LoRA adapter (rerun train)")
    if not any((adapter_dir / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors; not a complete LoRA adapter (rerun train)")
    if expected_base is not None:
        found = json.loads(config.read_text()).get("base_model_name_or_path")
        if found != expected_base:
            raise ModelError(
                f"{config}: adapter was trained on base {found!r}, but model.base is {expected_base!r}; "
                "retrain (dvc repro train) or set model.base back"
            )
