"""Base next to tuned: flat metric keys for `dvc metrics diff`, answers side by side, and the check that
both models answered under the same generation settings."""

from __future__ import annotations

from finetune.errors import DataError

# Every model's headline metrics, in the order the report and the model card show them.
METRICS = (
    "eval_loss",
    "perplexity",
    "mean_token_accuracy",
    "entropy",
    "rougeL_f1",
    "chrf",
    "exact_match",
    "stopped_fraction",
    "generated_tokens_mean",
)


def compare(base: dict, tuned: dict) -> dict:
    """Flat base.* / tuned.* / delta.* keys (delta = tuned - base), as `dvc metrics diff` lists them."""
    out = {}
    for key in sorted(set(base) | set(tuned)):
        out[f"base.{key}"] = base.get(key)
        out[f"tuned.{key}"] = tuned.get(key)
        if isinstance(base.get(key), (int, float)) and isinstance(tuned.get(key), (int, float)):
            out[f"delta.{key}"] = tuned[key] - base[key]
    return out


def side_by_side(base_outputs: list[dict], tuned_outputs: list[dict], source: str) -> list[dict]:
    """Each sampled prompt's reference, base and tuned answers; `source` (the base results) names the file in errors."""
    rows = []
    for b, t in zip(base_outputs, tuned_outputs, strict=True):
        if b["row"] != t["row"]:
            raise DataError(f"{source} was made for other test rows; rerun `dvc repro evaluate_base`")
        row = {
            "row": t["row"],
            "prompt": t["prompt"],
            "reference": t["reference"],
            "base_output": b["greedy"],
            "tuned_output": t["greedy"],
        }
        if "sampled" in t:
            row.update(base_sampled=b.get("sampled"), tuned_sampled=t["sampled"])
        rows.append(row)
    return rows


def same_generation(base: dict, tuned: dict, source: str) -> dict:
    """The generation settings both models answered with (they must be the same to compare answers)."""
    if base != tuned:
        changed = sorted(k for k in set(base) | set(tuned) if base.get(k) != tuned.get(k))
        raise DataError(
            f"{source} was generated with other settings ({', '.join(changed)}); rerun `dvc repro evaluate_base`"
        )
    return tuned


def same_rows(base_rows: dict | None, tuned_rows: dict, source: str) -> dict:
    """The base's per-row results, after checking they are for the same test rows as the tuned model's."""
    if not base_rows:
        raise DataError(
            f"{source} has no per-row results (made by an older evaluate_base); rerun `dvc repro -f evaluate_base`"
        )
    for part in ("scored", "answered"):
        if base_rows[part]["row"] != tuned_rows[part]["row"]:
            raise DataError(f"{source} was made for other test rows; rerun `dvc repro evaluate_base`")
    return base_rows


# ---------------------------------------------------------------- flat metric keys, as `dvc metrics` shows them


def with_prefix(prefix: str, metrics: dict) -> dict:
    """{"eval_loss": 1} -> {"merged.eval_loss": 1}."""
    return {f"{prefix}.{key}": value for key, value in metrics.items()}


def under_prefix(metrics: dict, prefix: str) -> dict:
    """The keys under `prefix.`, without it: {"tuned.eval_loss": 1, "base.x": 2} -> {"eval_loss": 1}."""
    return {k[len(prefix) + 1 :]: v for k, v in metrics.items() if k.startswith(prefix + ".")}


def flatten(data: dict, prefix: str = "") -> dict:
    """{"merged": {"eval_loss": 1}} and {"merged.eval_loss": 1} both -> {"merged.eval_loss": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
