"""prepare: clean, count every dropped row by reason, sample, split train/val/test without prompt leakage, and
report the tokens each split trains (metrics/data.json). Alpaca rows or conversations (a `messages` column)."""

import pandas as pd

from finetune import chat_format, config, errors, files, modeling, paths
from finetune.data import cleaning, conversations, splitting


def main() -> None:
    p = config.load("prepare")
    cfg = p.prepare
    frame = pd.read_parquet(paths.INGESTED)
    tokenizer = modeling.load_tokenizer(paths.BASE_DIR)  # lengths after the chat template, as the trainer sees them
    encode = lambda messages: chat_format.encode_conversation(tokenizer, messages)  # noqa: E731
    if "messages" in frame.columns:
        kept, counts = conversations.clean(frame, encode, cfg.max_length, cfg.too_long, cfg.n, cfg.seed)
        identities = conversations.identities(kept["messages"])
    else:
        lengths = lambda rows: chat_format.token_lengths(tokenizer, rows, fits=cfg.max_length)  # noqa: E731
        kept, counts = cleaning.clean(frame, lengths, cfg.max_length, cfg.too_long, cfg.n, cfg.seed)
        # truncate keeps rows whose prompt alone fills max_length: the trainer would cut every answer token
        unlabelled = conversations.unlabelled_rows(kept, encode, cfg.max_length) if cfg.too_long == "truncate" else None
        dropped = int(unlabelled.sum()) if unlabelled is not None else 0
        if dropped:
            kept = kept[~unlabelled].reset_index(drop=True)
        counts.update(
            {
                "rows_kept": len(kept),
                "dropped_total": counts["dropped_total"] + dropped,
                "dropped.no_labelled_token": dropped,
            }
        )
        identities = None
    cleaning.check_drop_share(counts, cfg.max_drop_fraction, paths.INGESTED)
    train, val, test = splitting.sample_and_split(
        kept, cfg.n, cfg.test_fraction, cfg.val_fraction, cfg.seed, identities
    )
    counts.update(
        {"sampled": len(train) + len(val) + len(test), "train": len(train), "val": len(val), "test": len(test)}
    )
    counts.update(conversations.token_report({"train": train, "val": val, "test": test}, encode, cfg.max_length))
    files.write_parquet(paths.TRAIN_DATA, train.astype("string"))
    files.write_parquet(paths.VAL_DATA, val.astype("string"))
    files.write_parquet(paths.TEST_DATA, test.astype("string"))
    files.write_json(paths.DATA_METRICS, counts)
    unchecked = f"{counts['rows_unchecked']} not needed for the sample, " if counts["rows_unchecked"] else ""
    print(
        f"prepare: {counts['rows_read']} read, {counts['dropped_total']} dropped ({cleaning.drop_summary(counts)}), "
        f"{unchecked}{len(train)} train / {len(val)} val / {len(test)} test; labelled tokens "
        f"{counts['tokens.train.labelled_share']:.1%} of train's"
    )


if __name__ == "__main__":
    errors.run(main)
