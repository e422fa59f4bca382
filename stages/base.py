"""base: materialise the base model + tokenizer in models/base (tiny default, hub id or local dir)."""

from finetune import config, errors, files, model_source, modeling, paths, tiny


def main() -> None:
    p = config.load("model")
    cfg = p.model
    with files.atomic_path(paths.BASE_DIR) as tmp:
        if cfg.base == "tiny":
            model, tokenizer = tiny.build(cfg.tiny, paths.EMBEDDED_SAMPLE)
            modeling.choose_template(tokenizer, cfg.chat_template, cfg.base)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            source = {"kind": "tiny", "parameters": sum(t.numel() for t in model.parameters())}
        else:
            source = modeling.resolve_pretrained(cfg.base, cfg.revision)
            if source["kind"] == "local":  # new weights in the same directory change models/base: downstream reruns
                source["sha256"] = files.digest(source["path"], model_source.read_cache())  # base_source's, cached
            tokenizer = modeling.choose_template(modeling.load_tokenizer(source["path"], require_template=False),
                                                 cfg.chat_template, cfg.base)
            tokenizer.save_pretrained(tmp)  # small, with the chosen template; downstream stages read it from here
            files.write_json(tmp / paths.SOURCE_FILE, source)
    print(f"base: {cfg.base} -> {paths.BASE_DIR} ({source})")


if __name__ == "__main__":
    errors.run(main)
