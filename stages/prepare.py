"""prepare: clean, count every dropped row by reason, sample, split train/val/test without prompt leakage."""

import pandas as pd

from finetune import chat_format, config, errors, files, modeling, paths
from finetune.data import cleaning, splitting


def main() -> None:
    p = config.load("prepare")
    cfg = p.prepare
    frame = pd.read_parquet(paths.INGESTED)
    tokenizer = modeling.load_tokenizer(paths.BASE_DIR)  # lengths after the chat template, as the trainer sees them
    lengths = lambda rows: chat_format.token_lengths(tokenizer, rows, fits=cfg.max_length)  # noqa: E731
    kept, counts = cleaning.clean(frame, lengths, cfg.max_length, cfg.too_long, cfg.n, cfg.seed)
    cleaning.check_drop_share(counts, cfg.max_drop_fraction, paths.INGESTED)
    train, val, test = splitting.sample_and_split(kept, cfg.n, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    counts.update({"sampled": len(train) + len(val) + len(test), "train": len(train), "val": len(val),
                   "test": len(test)})
    files.write_parquet(paths.TRAIN_DATA, train.astype("string"))
    files.write_parquet(paths.VAL_DATA, val.astype("string"))
    files.write_parquet(paths.TEST_DATA, test.astype("string"))
    files.write_json(paths.DATA_METRICS, counts)
    unchecked = f"{counts['rows_unchecked']} not needed for the sample, " if counts["rows_unchecked"] else ""
    print(f"prepare: {counts['rows_read']} read, {counts['dropped_total']} dropped ({cleaning.drop_summary(counts)}), "
          f"{unchecked}{len(train)} train / {len(val)} val / {len(test)} test")


if __name__ == "__main__":
    errors.run(main)
