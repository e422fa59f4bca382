"""base: materialise the base model + tokenizer in models/base (tiny default, hub id or local dir)."""

from __future__ import annotations

import pandas as pd

from stages import base_source, errors, io, modeling, params

OUT = "models/base"
TINY_CORPUS = "data/raw/finance_alpaca.parquet"  # the embedded sample; the tiny tokenizer is trained on it


def corpus_texts(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in ("instruction", "input", "output") if c in frame.columns]
    return [str(v) for c in columns for v in frame[c].dropna().tolist()]


def build_tiny(cfg, corpus_path: str = TINY_CORPUS):
    if cfg.tokenizer == "bpe":
        tokenizer = modeling.train_bpe_tokenizer(corpus_texts(pd.read_parquet(corpus_path)), cfg.vocab_size)
    else:
        tokenizer = modeling.qwen2_tokenizer_from_files(cfg.tokenizer)
    return modeling.build_tiny_model(cfg, tokenizer), tokenizer


def main() -> None:
    p = params.load("model")
    cfg = p.model
    with io.atomic_path(OUT) as tmp:
        if cfg.base == "tiny":
            model, tokenizer = build_tiny(cfg.tiny)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            source = {"kind": "tiny", "parameters": sum(t.numel() for t in model.parameters())}
        else:
            source = modeling.resolve_pretrained(cfg.base, cfg.revision)
            if source["kind"] == "local":  # new weights in the same directory change models/base: downstream reruns
                source["sha256"] = io.digest(source["path"], base_source.read_cache())  # base_source's, cached
            tokenizer = modeling.load_tokenizer(source["path"])
            tokenizer.save_pretrained(tmp)  # small; downstream stages read the tokenizer from here
            io.write_json(tmp / modeling.SOURCE_FILE, source)
    print(f"base: {cfg.base} -> {OUT} ({source})")


if __name__ == "__main__":
    errors.run(main)
