"""base_source: fingerprints of a local model.base / model.tiny.tokenizer directory -> models/base_source.json."""

from finetune import config, errors, files, model_source, paths


def main() -> None:
    p = config.load("model")
    seen: dict = {}
    found = model_source.sources(p.model, model_source.read_cache(), seen)
    files.write_json(paths.BASE_SOURCE, found)
    files.write_json(paths.BASE_SOURCE_CACHE, seen)
    shown = {key: value if isinstance(value, str) else value["sha256"][:12] for key, value in found.items()}
    print(f"base_source: {shown} -> {paths.BASE_SOURCE}")


if __name__ == "__main__":
    errors.run(main)
