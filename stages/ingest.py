"""ingest: the user's file (parquet/csv/json/jsonl) -> one canonical parquet of text columns."""

from finetune import config, errors, files, paths
from finetune.data import readers, schema


def main() -> None:
    p = config.load("data")
    frame = readers.read_any(p.data.path)
    canonical = schema.canonicalize(frame, p.data.path, p.data.extra_columns)
    files.write_parquet(paths.INGESTED, canonical)
    print(f"ingest: {len(canonical)} rows from {p.data.path} -> {paths.INGESTED}")


if __name__ == "__main__":
    errors.run(main)
