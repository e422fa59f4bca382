"""The exported GGUF files checked by llama.cpp itself (opt-in: `make check-gguf`), against the HF model.

    python -m benchmarks.check_gguf                 # models/gguf/*.gguf against models/merged (after `make run`)
    python -m benchmarks.check_gguf --model tiny    # the tiny default, built and exported here (f16, q8_0[, q4_k_m])
    python -m benchmarks.check_gguf --model real    # the Qwen2-0.5B architecture (check_real's, ~2.5 GB disk)

llama-cpp-python is built once from the pinned sdist (CPU, flags below; ~7 min on 2 cores), the wheel cached in
~/.cache/finetune/wheels and installed into the project venv with --no-deps (its deps are already there).
Per file, on N test rows (prompt through the GGUF's embedded chat template + the reference answer):
- the prompt text from the embedded template equals the HF template's, and llama.cpp tokenizes it as HF does;
- next-token logits at every position vs the HF model in fp32: top-1 agreement where HF's top-2 margin is not
  a near-tie (NEAR_TIE), and max |logit diff| as a share of HF's logit range;
- greedy answers (temperature 0): share identical to HF's; where they differ, the first difference must fall
  on a near-tie of HF's; share stopped by an end-of-generation token, llama.cpp vs HF.
THRESHOLDS (docs/export.md says why). Negative controls, which must fail: a file with layers 0 and 1 swapped,
and one whose tokenizer.ggml.pre names another pre-tokenizer. Prints a table; JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common

WHEELS = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune")) / "wheels"
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
NEAR_TIE = {"F16": 0.02, "BF16": 0.1, "Q8_0": 0.1, "Q4_K_M": 0.5}  # HF top-2 margins (logits) below: a tie
# min top-1 agreement off near-ties, max |logit diff| / HF logit range
THRESHOLDS = {"F16": (0.99, 0.005), "BF16": (0.97, 0.03), "Q8_0": (0.97, 0.05), "Q4_K_M": (0.85, 0.25)}
MAX_NEW = 16


def ensure_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401

        return
    except ImportError:
        pass
    from finetune.export import converter

    wheels = glob.glob(str(WHEELS / f"llama_cpp_python-{converter.LLAMA_CPP_PYTHON}-*.whl"))
    if not wheels:
        print(f"check_gguf: building llama-cpp-python {converter.LLAMA_CPP_PYTHON} (CPU; minutes, once)", flush=True)
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(WHEELS), str(converter.sdist())],
            check=True,
            env=env,
        )
        wheels = glob.glob(str(WHEELS / f"llama_cpp_python-{converter.LLAMA_CPP_PYTHON}-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", wheels[0]], check=True)


def rows(n: int) -> list[list[dict]]:
    """N test conversations (prompt + reference answer): the pipeline's test split, else the embedded sample."""
    import pandas as pd

    from finetune import chat_format, paths

    path = common.REPO / paths.TEST_DATA
    frame = pd.read_parquet(path if path.is_file() else common.REPO / paths.EMBEDDED_SAMPLE).head(n)
    return [c["prompt"] + c["completion"] for c in chat_format.conversations(frame)]


def compare(path: Path, hf, tokenizer, conversations, stop_ids) -> dict:
    import jinja2
    import llama_cpp
    import torch

    from finetune.evaluation import generation

    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=1024, n_threads=os.cpu_count() or 2, verbose=False)
    try:
        embedded = llm.metadata.get("tokenizer.chat_template", "")
        env = jinja2.Environment(loader=jinja2.BaseLoader())
        template = env.from_string(embedded)
        n_vocab = llm.n_vocab()
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        margin = NEAR_TIE[file_type(path)]
        agree = counted = same_text = same_ids = 0
        worst_diff = worst_ratio = 0.0
        greedy_same = greedy_tie = stopped_ll = stopped_hf = 0
        for conv in conversations:
            prompt_msgs = conv[:-1]
            text = template.render(
                messages=prompt_msgs,
                add_generation_prompt=True,
                bos_token=tokenizer.bos_token or "",
                eos_token=tokenizer.eos_token or "",
            )
            want = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
            same_text += text == want
            full = want + conv[-1]["content"]
            hf_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:512]
            ll_ids = llm.tokenize(full.encode(), add_bos=False, special=True)[:512]
            same_ids += ll_ids == hf_ids
            with torch.no_grad():
                ref = hf(torch.tensor([hf_ids])).logits[0, :, :n_vocab].float().numpy()
            llm.reset()
            llm.eval(hf_ids)
            got = np.asarray(llm.scores[: len(hf_ids)], dtype=np.float32)
            top2 = np.sort(ref, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > margin
            agree += int((got.argmax(-1) == ref.argmax(-1))[clear].sum())
            counted += int(clear.sum())
            diff = float(np.abs(got - ref).max())
            worst_diff = max(worst_diff, diff)
            worst_ratio = max(worst_ratio, diff / float(ref.max() - ref.min()))
            # greedy answers
            p_ids = tokenizer(want, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = hf.generate(  # greedy with every knob neutral, as evaluation (not the model's repetition_penalty)
                    torch.tensor([p_ids]),
                    generation_config=generation.generation_config(
                        max_new_tokens=MAX_NEW, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
                    ),
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            hf_new = out.sequences[0, len(p_ids) :].tolist()
            ll_new = []
            for t in llm.generate(p_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                ll_new.append(t)
                if llama_cpp.llama_vocab_is_eog(vocab, t) or len(ll_new) == MAX_NEW:
                    break
            stopped_hf += hf_new[-1] in stop_ids
            stopped_ll += bool(llama_cpp.llama_vocab_is_eog(vocab, ll_new[-1]))
            if hf_new == ll_new:
                greedy_same += 1
            else:
                at = next((i for i, (a, b) in enumerate(zip(hf_new, ll_new)) if a != b), min(len(hf_new), len(ll_new)))
                if at < len(out.scores):
                    s = np.sort(out.scores[at][0].float().numpy())
                    greedy_tie += (s[-1] - s[-2]) <= margin
    finally:
        llm.close()
    n = len(conversations)
    return {
        "file": path.name,
        "type": file_type(path),
        "rows": n,
        "prompt_text_equal": same_text / n,
        "tokens_equal": same_ids / n,
        "positions": counted,
        "top1_agreement": agree / max(counted, 1),
        "max_abs_logit_diff": worst_diff,
        "max_diff_over_range": worst_ratio,
        "greedy_identical": greedy_same / n,
        "greedy_diverged_off_tie": (n - greedy_same - greedy_tie) / n,
        "stopped_llama": stopped_ll / n,
        "stopped_hf": stopped_hf / n,
    }


def file_type(path: Path) -> str:
    return path.stem.rsplit("-", 1)[-1].upper().replace("-", "_")


def verdict(r: dict) -> list[str]:
    top1, ratio = THRESHOLDS[r["type"]]
    fails = []
    if r["prompt_text_equal"] < 1 or r["tokens_equal"] < 1:
        fails.append("prompt text or tokens differ from HF's")
    if r["top1_agreement"] < top1:
        fails.append(f"top-1 {r['top1_agreement']:.3f} < {top1}")
    if r["max_diff_over_range"] > ratio:
        fails.append(f"|logit diff|/range {r['max_diff_over_range']:.4f} > {ratio}")
    if r["greedy_diverged_off_tie"] > 0:
        fails.append("greedy answer diverged where HF had no near-tie")
    if r["stopped_llama"] != r["stopped_hf"] and r["greedy_identical"] == 1:
        fails.append("stops differently")
    return fails


def swap_layers(path: Path, tensor: str = "") -> None:
    """Swap layer 0's and layer 1's tensors in a GGUF file, in place: all of them, or blk.0/1.<tensor> only."""
    import gguf

    reader = gguf.GGUFReader(path, "r+")
    by_name = {t.name: t for t in reader.tensors}
    for name, t in by_name.items():
        other = by_name.get(name.replace("blk.0.", "blk.1.", 1)) if name.startswith(f"blk.0.{tensor}") else None
        if other is not None:
            saved = t.data.copy()
            t.data[...] = other.data
            other.data[...] = saved
    reader.data.flush()


def broken_copies(path: Path, scratch: Path) -> list[tuple[str, Path]]:
    """The negative controls: layers 0 and 1 swapped; tokenizer.ggml.pre renamed (qwen2 -> gpt-2)."""
    import gguf

    swapped = scratch / f"swapped-{path.name}"
    shutil.copy(path, swapped)
    swap_layers(swapped)
    pre = scratch / f"pre-{path.name}"
    shutil.copy(path, pre)
    reader = gguf.GGUFReader(pre, "r+")
    part = reader.fields["tokenizer.ggml.pre"].parts[-1]
    name = bytes(part).decode()
    wrong = {"qwen2": "gpt-2"}.get(name, "gpt-2"[: len(name)].ljust(len(name), "2"))
    part[:] = np.frombuffer(wrong.encode(), dtype=np.uint8)
    reader.data.flush()
    return [("layers 0/1 swapped", swapped), (f"pre {name} -> {wrong}", pre)]


def build(which: str, scratch: Path, kinds: list[str]) -> tuple[Path, list[Path], dict]:
    """A model directory (tiny default or the 0.5B architecture) and its GGUFs, through the export's own checks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from finetune import config, paths, tiny
    from finetune.evaluation import scoring
    from finetune import chat_format
    from finetune.export import gguf

    model_dir = scratch / which
    if which == "tiny":
        cfg = config.load("model").model.tiny
        model, tokenizer = tiny.build(cfg, str(common.REPO / paths.EMBEDDED_SAMPLE))
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    else:
        from benchmarks import check_real

        check_real.build_model_dir(model_dir)
    tokenizer, cfg = AutoTokenizer.from_pretrained(model_dir), AutoConfig.from_pretrained(model_dir)
    stops = chat_format.stop_token_ids(tokenizer, None)
    conv = [{"prompt": c[:-1], "completion": c[-1:]} for c in rows(8)]
    merged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    losses = {"merged": scoring.response_metrics(merged, tokenizer, conv, 4, 256)["eval_loss"]}
    del merged
    files, sizes = [], {}
    for kind in kinds:
        path = scratch / f"model-{kind}.gguf"
        gguf.write(kind, model_dir, path, "finetuned")
        info, model = gguf.check_file(path, cfg, tokenizer, model_dir, stops)
        losses[kind] = scoring.response_metrics(model, tokenizer, conv, 4, 256)["eval_loss"]
        sizes[kind] = info["size_mb"]
        del model
        files.append(path)
    return model_dir, files, {"eval_loss": losses, "size_mb": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/merged", help="models/merged (with --gguf), tiny, or real")
    parser.add_argument("--gguf", default="models/gguf")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--types", default="f16,q8_0,q4_k_m", help="for tiny/real")
    args = parser.parse_args()
    ensure_llama_cpp()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import chat_format

    torch.set_num_threads(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(dir=common.REPO / "benchmarks") as tmp:
        scratch, extra = Path(tmp), {}
        if args.model in ("tiny", "real"):
            model_dir, files, extra = build(args.model, scratch, args.types.split(","))
        else:
            model_dir, files = Path(args.model), sorted(Path(args.gguf).glob("*.gguf"))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        stops = chat_format.stop_token_ids(tokenizer, None)
        conversations = rows(args.rows)
        results, controls = [], []
        for path in files:
            r = compare(path, hf, tokenizer, conversations, stops)
            r["fails"] = verdict(r)
            results.append(r)
        for label, path in broken_copies(files[0], scratch):
            try:
                r = compare(path, hf, tokenizer, conversations, stops)
                r["fails"] = verdict(r)
            except Exception as e:  # noqa: BLE001 (llama.cpp refusing the file fails the check too)
                r = {"file": path.name, "type": file_type(files[0]), "fails": [f"{type(e).__name__}: {e}"]}
            r["control"] = label
            controls.append(r)
    cols = [
        "file",
        "positions",
        "top1_agreement",
        "max_abs_logit_diff",
        "max_diff_over_range",
        "greedy_identical",
        "greedy_diverged_off_tie",
        "stopped_llama",
        "stopped_hf",
        "tokens_equal",
    ]
    print("| " + " | ".join(cols) + " | verdict |\n|" + "---|" * (len(cols) + 1))
    for r in results + controls:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols]
        ok = "PASS" if not r["fails"] else "FAIL: " + "; ".join(r["fails"])
        print("| " + " | ".join(cells) + f" | {('control ' + r['control'] + ' -> ') if 'control' in r else ''}{ok} |")
    if extra:
        print(json.dumps(extra))
    passed = all(not r["fails"] for r in results) and all(r["fails"] for r in controls)
    out = common.REPO / "benchmarks" / "results" / f"check_gguf_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"passed": passed, "files": results, "controls": controls, **extra}, indent=1))
    print(f"check_gguf: {'PASSED' if passed else 'FAILED'} -> {out}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
