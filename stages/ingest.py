"""ingest: the user's data (a parquet/csv/json/jsonl file or a folder of them; alpaca rows or conversations)
-> one canonical parquet of text columns."""

from finetune import config, errors, files, paths
from finetune.data import formats, readers


def main() -> None:
    p = config.load("data")
    d = p.data
    frame, source = readers.read_data(d.path, d.split)
    canonical, fmt = formats.canonical(frame, source, d.format, d.columns, d.extra_columns)
    files.write_parquet(paths.INGESTED, canonical)
    print(f"ingest: format {fmt}" + (" (data.format auto: from the columns)" if d.format == "auto" else ""))
    print(f"ingest: {len(canonical)} rows from {source} -> {paths.INGESTED}")


if __name__ == "__main__":
    errors.run(main)
