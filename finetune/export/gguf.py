"""GGUF files read back with gguf-py's GGUFReader and checked against the merged HF model they came from.

- metadata: architecture, hyperparameters (layers, widths, head counts, rope theta, norm eps), tokenizer
  (tokens, merges, token types, pre-tokenizer, special ids, add-bos), chat template and stop tokens;
- tensors: every one mapped back to its HF name (llama's Q/K row permutation undone; phi3's fused qkv and
  gate_up kept), dequantized and compared element-wise with its rounding bound (ERROR_BOUNDS);
- the dequantized weights loaded into the HF architecture, to score them as the merged model is scored.
A mismatch raises ModelError naming the file, the key or tensor and what was expected.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from finetune.errors import ModelError
from finetune.export import modelfile

ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "Phi3ForCausalLM": "phi3",
}
CONTROL = 3  # gguf TokenType.CONTROL: llama.cpp renders these only when asked, and ends on them (EOG)
REL_RMS_LIMIT = 0.25  # types with no derived bound (llama.cpp's K-quants): RMS error / RMS weight
ERROR_BOUNDS = """per element, x the merged weight: F32 exact; F16 |x - x'| <= 2^-11 |x| (2^-25 below 2^-14);
BF16 <= 2^-8 |x|; Q8_0 per block of 32 along a row, d = max|x|/127 stored as fp16 d16: <= d/2 + 127 |d - d16|
(<= 0.562 d); other types (K-quants): RMS error <= 0.25 RMS weight per tensor."""


def read(path: str | Path):
    import gguf

    return gguf.GGUFReader(path)


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _rope_theta(config) -> float | None:
    theta = getattr(config, "rope_theta", None)
    return theta if theta is not None else (getattr(config, "rope_parameters", None) or {}).get("rope_theta")


def expected_metadata(config) -> tuple[str, dict]:
    arch = ARCHITECTURES.get(config.architectures[0] if config.architectures else "")
    if arch is None:
        raise ModelError(f"GGUF export supports {', '.join(ARCHITECTURES)}, not {config.architectures}")
    hp = {
        "block_count": config.num_hidden_layers,
        "embedding_length": config.hidden_size,
        "feed_forward_length": config.intermediate_size,
        "attention.head_count": config.num_attention_heads,
        "attention.head_count_kv": config.num_key_value_heads or config.num_attention_heads,
        "rope.freq_base": _rope_theta(config),
        "attention.layer_norm_rms_epsilon": config.rms_norm_eps,
    }
    return arch, {f"{arch}.{k}": v for k, v in hp.items() if v is not None}


def _merges(model_dir: Path) -> list[str]:
    merges = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"].get("merges", [])
    return [" ".join(m) if isinstance(m, list) else m for m in merges]


def check_metadata(reader, path, config, tokenizer, model_dir: Path, stop_ids: list[int]) -> dict:
    """Every key llama.cpp needs to run the model and tokenize/stop as HF does; returns what it checked."""
    problems = []

    def expect(key, want, got):
        ok = np.isclose(got, want, rtol=1e-6) if isinstance(want, float) and got is not None else got == want
        if not ok:
            problems.append(f"{key} is {got!r}, expected {want!r}")

    arch, hparams = expected_metadata(config)
    expect("general.architecture", arch, field(reader, "general.architecture"))
    for key, want in hparams.items():
        expect(key, want, field(reader, key))
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    types = field(reader, "tokenizer.ggml.token_type") or []
    expect("len(tokenizer.ggml.tokens)", config.vocab_size, len(tokens))
    hf_tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    wrong = [i for i, t in enumerate(hf_tokens) if i >= len(tokens) or tokens[i] != t]
    if wrong:
        problems.append(f"tokenizer.ggml.tokens differ from the tokenizer's at {len(wrong)} ids, e.g. {wrong[:3]}")
    expect("tokenizer.ggml.model", "gpt2", field(reader, "tokenizer.ggml.model"))
    expect(
        "tokenizer.ggml.merges",
        _merges(model_dir),
        list(field(reader, "tokenizer.ggml.merges") or []),
    )
    pre = field(reader, "tokenizer.ggml.pre")
    from finetune.export import converter

    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if converter.is_qwen2_pretokenizer(tokenizer_json):
        expect("tokenizer.ggml.pre", "qwen2", pre)
    elif not pre or pre == "default":
        problems.append(f"tokenizer.ggml.pre is {pre!r}: llama.cpp would split text unlike the tokenizer")
    for name in ("eos", "bos", "padding"):
        attr = {"padding": "pad_token_id"}.get(name, f"{name}_token_id")
        if getattr(tokenizer, attr) is not None:
            expect(
                f"tokenizer.ggml.{name}_token_id",
                getattr(tokenizer, attr),
                field(reader, f"tokenizer.ggml.{name}_token_id"),
            )
    hf_adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    expect(
        "tokenizer.ggml.add_bos_token",
        hf_adds_bos,
        bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
    )
    expect(
        "tokenizer.chat_template",
        tokenizer.chat_template,
        field(reader, "tokenizer.chat_template"),
    )
    ends = {field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")}
    for i in stop_ids:
        if i >= len(tokens) or not (i in ends or tokens[i] in modelfile.EOG_TEXTS):
            problems.append(
                f"stop token {i} ({hf_tokens[i] if i < len(hf_tokens) else '?'}) does not end generation "
                "in llama.cpp (not eos/eot/eom, nor a text it ends on)"
            )
        elif types[i] != CONTROL:
            problems.append(f"stop token {i} ({tokens[i]}) has token type {types[i]}, expected CONTROL ({CONTROL})")
    if problems:
        raise ModelError(f"{path}: metadata does not match the merged model: " + "; ".join(problems))
    return {
        "architecture": arch,
        "pre_tokenizer": pre,
        "stop_ids": stop_ids,
        "vocab": len(tokens),
    }


def hf_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118 (safe_open has no __iter__)
    return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the converter's LlamaModel.permute (HF's rotate-half rows -> llama.cpp's interleaved pairs)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized(reader, path, config, names: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    """HF name -> (GGUF type, dequantized array in the HF layout), for every GGUF tensor; unmapped ones fail."""
    import gguf

    arch = field(reader, "general.architecture")
    arch_enum = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), None)
    if arch_enum is None:
        raise ModelError(f"{path}: unknown general.architecture {arch!r}")
    name_map = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    to_hf = {g: h for h in names if (g := name_map.get_name(h, try_suffixes=(".weight", ".bias")))}
    out, unmapped = {}, []
    heads = {
        "q_proj": config.num_attention_heads,
        "k_proj": config.num_key_value_heads or config.num_attention_heads,
    }
    for t in reader.tensors:
        hf_name = to_hf.get(t.name)
        if hf_name is None:
            unmapped.append(t.name)
            continue
        array = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        module = hf_name.rsplit(".", 2)[-2]
        if arch == "llama" and module in heads:
            array = unpermute(array, heads[module])
        out[hf_name] = (t.tensor_type.name, array)
    if unmapped:
        raise ModelError(f"{path}: tensors with no HF counterpart: {', '.join(unmapped[:5])}")
    return out


def _ratio(kind: str, ref: np.ndarray, err: np.ndarray, from_f16: bool = False) -> float:
    """Worst error / bound over the tensor (<= 1: within bound). from_f16: quantized by llama.cpp from an f16
    file, so the f16 rounding (<= 2^-11 |x|, and of d) adds to a Q8_0 block's bound (about 0.625 d)."""
    if kind == "F32":
        return 0.0 if not err.any() else float("inf")
    if kind == "F16":
        bound = np.maximum(np.abs(ref) * 2.0**-11, 2.0**-25)
    elif kind == "BF16":
        bound = np.maximum(np.abs(ref) * 2.0**-8, 2.0**-133)
    elif kind == "Q8_0":
        blocks = ref.reshape(-1, 32)
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
        d16 = d.astype(np.float16).astype(np.float32)
        if from_f16:
            bound = np.abs(blocks) * 2.0**-11 + d * (1 + 2.0**-11) * (0.5 + 127 * 2.0**-11) + 2.0**-24
        else:
            # + fp32 rounding of x / d, of q * fp16(d) and of d itself: a few ulps of |x| and d
            bound = d / 2 + 127 * np.abs(d - d16) + (np.abs(blocks) + d) * 2.0**-20
        bound = np.broadcast_to(bound, blocks.shape).reshape(ref.shape)
    else:
        rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) or 1e-30
        return float(np.sqrt(np.mean(err.astype(np.float64) ** 2))) / rms / REL_RMS_LIMIT
    return float((err / (bound * (1 + 1e-6) + 1e-30)).max())


def check_tensors(
    reader, path, config, model_dir: Path, from_f16: bool = False
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Per GGUF type: tensors, max |diff|, max error/bound; and the dequantized HF state dict."""
    hf = hf_tensors(model_dir)
    got = dequantized(reader, path, config, list(hf))
    missing = sorted(set(hf) - set(got))
    if missing:
        raise ModelError(f"{path}: merged tensors missing from the file: {', '.join(missing[:5])}")
    stats, problems, state = {}, [], {}
    for name, ref_t in hf.items():
        kind, array = got[name]
        ref = ref_t.float().numpy()
        if array.size != ref.size or (array.ndim == ref.ndim and array.shape != ref.shape):
            problems.append(f"{name} has shape {array.shape}, expected {tuple(ref.shape)}")
            continue
        array = array.reshape(ref.shape)
        err = np.abs(array - ref)
        ratio = _ratio(kind, ref, err, from_f16)
        if ratio > 1:
            problems.append(
                f"{name} ({kind}) differs from the merged weight by up to {err.max():.3g} ({ratio:.3g}x its bound)"
            )
        s = stats.setdefault(kind, {"tensors": 0, "max_abs_diff": 0.0, "max_error_over_bound": 0.0})
        s["tensors"] += 1
        s["max_abs_diff"] = max(s["max_abs_diff"], float(err.max()))
        s["max_error_over_bound"] = max(s["max_error_over_bound"], ratio)
        state[name] = torch.from_numpy(array)
    if problems:
        raise ModelError(
            f"{path}: tensors do not match the merged model: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    return stats, state


def hf_model(config, state: dict[str, torch.Tensor]):
    """The HF architecture holding the dequantized weights (fp32), to score as the merged model is scored."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(
            f"dequantized weights do not fit {config.architectures[0]}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.tie_weights()
    return model.eval()


def quantize(source: Path, target: Path, kind: str) -> None:
    """llama.cpp's own quantizer (llama-cpp-python) for the K-quants: `kind` such as q4_k_m, from an f16/bf16 file."""
    try:
        import ctypes

        import llama_cpp
    except ImportError:
        raise ModelError(
            f"export.gguf {kind} needs llama-cpp-python (`make check-gguf` builds and installs it)"
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise ModelError(f"llama.cpp's quantizer returned {rc} for {source} -> {kind}")


def write(kind: str, model_dir: Path, path: Path, name: str) -> None:
    """`path` as GGUF type `kind`: the converter's own types directly (q8_0 from the fp32/bf16 weights, not
    re-quantized from f16), K-quants through llama.cpp's quantizer from an f16 file."""
    from finetune.export import converter

    if kind in converter.OUTTYPES:
        converter.convert(model_dir, path, kind, name)
        return
    with tempfile.TemporaryDirectory() as scratch:
        converter.convert(model_dir, Path(scratch) / "f16.gguf", "f16", name)
        quantize(Path(scratch) / "f16.gguf", path, kind)


def check_file(path: Path, config, tokenizer, model_dir: Path, stop_ids: list[int]) -> tuple[dict, object]:
    """Metadata and every tensor checked; (its figures, the HF model holding its dequantized weights)."""
    reader = read(path)
    meta = check_metadata(reader, path.name, config, tokenizer, model_dir, stop_ids)
    from finetune.export import converter

    kind = path.stem.rsplit("-", 1)[-1]  # model-<type>.gguf: K-quants are quantized from an f16 file
    stats, state = check_tensors(reader, path.name, config, model_dir, from_f16=kind not in converter.OUTTYPES)
    del reader
    figures = {
        "size_mb": round(path.stat().st_size / 2**20, 3),
        "tensor_types": {t: s["tensors"] for t, s in stats.items()},
        "max_error_over_bound": max(s["max_error_over_bound"] for s in stats.values()),
        "max_abs_weight_diff": max(s["max_abs_diff"] for s in stats.values()),
    }
    return {**meta, **figures}, hf_model(config, state)
