"""base: materialise the base model + tokenizer in models/base (tiny default, hub id, or model.local_dir)."""

from finetune import config, errors, files, modeling, paths, tiny


def main() -> None:
    p = config.load("model")
    cfg = p.model
    with files.atomic_path(paths.BASE_DIR) as tmp:
        if cfg.base == "tiny":
            model, tokenizer = tiny.build(cfg.tiny, paths.EMBEDDED_SAMPLE, cfg.local_dir)
            modeling.choose_template(tokenizer, cfg.chat_template, cfg.base)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            source = {"kind": "tiny", "parameters": sum(t.numel() for t in model.parameters())}
        else:
            if cfg.base == "local":
                source = modeling.local_model(cfg.local_dir)
                # DVC reruns base when a file in the directory changes; the digest in source.json makes
                # models/base change with it, so everything after base reruns too.
                source["sha256"] = files.digest(source["path"])
            else:
                source = modeling.resolve_pretrained(cfg.base, cfg.revision)
            tokenizer = modeling.choose_template(
                modeling.load_tokenizer(source["path"], require_template=False), cfg.chat_template, cfg.base
            )
            tokenizer.save_pretrained(tmp)  # small, with the chosen template; downstream stages read it from here
            files.write_json(tmp / paths.SOURCE_FILE, source)
    print(f"base: {cfg.base} -> {paths.BASE_DIR} ({source})")


if __name__ == "__main__":
    errors.run(main)
