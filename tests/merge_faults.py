"""A LoRA adapter whose effect no broken merge can hide, and the broken merges and exports the merge's checks must
catch: patched in by the tests (monkeypatch), or at a stage's start-up (sitecustomize, install())."""

from __future__ import annotations

import importlib
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_large_adapter(base_dir: Path, out: Path, seed: int = 0) -> None:
    """A LoRA adapter on every projection with random B (peft initialises B to 0): a large effect."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune import modeling

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # lora_A's initialisation: the same adapter in every project
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
            LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"),
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    model.peft_config["default"].base_model_name_or_path = "tiny"
    model.save_pretrained(out, save_embedding_layers=False)
    modeling.load_tokenizer(base_dir).save_pretrained(out)


def skip_adapter(original):
    """A merge that drops the adapter: the base comes back unchanged."""

    def merge_and_unload(self, *args, **kwargs):
        return self.unload()

    return merge_and_unload


def wrong_weights(original):
    """A merge that adds layer 0's q_proj delta to layer 1 and the reverse."""

    def merge_and_unload(self, *args, **kwargs):
        a, b = (layer.self_attn.q_proj.lora_B["default"] for layer in self.model.model.layers[:2])
        a.weight.data, b.weight.data = b.weight.data, a.weight.data
        return original(self, *args, **kwargs)

    return merge_and_unload


def lossy_save(original):
    """An export that loses a weight on the way to disk (the model in memory is intact)."""

    def save_pretrained(self, directory, *args, **kwargs):
        from safetensors.torch import load_file, save_file

        original(self, directory, *args, **kwargs)
        path = Path(directory, "model.safetensors")
        tensors = load_file(path)
        tensors["model.layers.1.mlp.down_proj.weight"].zero_()
        save_file(tensors, path, metadata={"format": "pt"})

    return save_pretrained


PARITY = (
    r"merged model differs from base\+adapter by \S+ in logits \(merge.tolerance 0.001\); "
    r".*models/merged was not written"
)
EXPORT = (
    r"models/merged reloaded with plain transformers does not hold the merged weights "
    r"\(changed: model.layers.1.mlp.down_proj.weight\); models/merged was not written"
)
# name -> (the fault, what it replaces, the error it must end in)
FAULTS = {
    "skip_adapter": (skip_adapter, "peft.tuners.tuners_utils.BaseTuner.merge_and_unload", PARITY),
    "wrong_weights": (wrong_weights, "peft.tuners.tuners_utils.BaseTuner.merge_and_unload", PARITY),
    "lossy_save": (lossy_save, "transformers.PreTrainedModel.save_pretrained", EXPORT),
}


def patch(setattr, fault: str) -> None:
    """Put `fault` in place with `setattr` (monkeypatch.setattr in a test, the builtin at start-up)."""
    make, target, _ = FAULTS[fault]
    module, owner, name = target.rsplit(".", 2)
    cls = getattr(importlib.import_module(module), owner)
    setattr(cls, name, make(getattr(cls, name)))


def sitecustomize(fault: str) -> str:
    """A sitecustomize.py that puts `fault` in place when a stage's interpreter starts."""
    return (
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"import merge_faults\nsys.path.pop(0)\nmerge_faults.patch(setattr, {fault!r})\n"
    )
