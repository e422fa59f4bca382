"""finetune.training.sft without training: the reference hyperparameters mapped onto TRL's SFTConfig, its
validation as a params error, the speed switches, the final evaluation reused."""

from __future__ import annotations

import pytest
import torch

from finetune import config
from finetune.errors import ParamsError
from finetune.training import sft


def test_sft_config_maps_the_reference_hyperparameters():
    p = config.parse(
        {"train": {"speed": {"padding_free": False}}}, ["lr", "prepare", "train"]
    )  # default: test_packing.py
    settings = sft.sft_config(p, torch.float32)
    assert (settings.learning_rate, settings.num_train_epochs) == (1e-5, 2)
    assert (settings.per_device_train_batch_size, settings.gradient_accumulation_steps) == (2, 4)
    assert (settings.max_length, settings.optim, settings.save_steps) == (512, "paged_adamw_8bit", 200)
    assert settings.completion_only_loss is True
    assert not settings.bf16 and not settings.fp16  # fp32 on a CPU


def test_optimizer_names_are_checked_by_transformers_with_a_params_message():
    p = config.parse({"train": {"optim": "adamw_8bitt"}}, ["lr", "prepare", "train"])
    with pytest.raises(ParamsError) as error:
        sft.checked_sft_config(p, torch.float32)
    assert str(error.value).splitlines()[1].strip() == (
        "train.optim must be one of transformers' optimizer names, got 'adamw_8bitt' (did you mean adamw_8bit?)"
    )
    sft.checked_sft_config(config.parse({}, ["lr", "prepare", "train"]), torch.float32)  # the default is valid


def test_final_evaluation_reuses_the_one_at_the_last_step():
    class Trainer:
        def __init__(self, history, step):
            self.state = type("State", (), {"log_history": history, "global_step": step})()
            self.evaluated = 0

        def evaluate(self):
            self.evaluated += 1
            return {"eval_loss": 9.0}

    at_end = Trainer([{"loss": 2.0, "step": 6}, {"eval_loss": 1.5, "step": 6}], step=6)
    assert sft.final_evaluation(at_end, None)["eval_loss"] == 1.5 and at_end.evaluated == 0
    earlier = Trainer([{"eval_loss": 1.5, "step": 3}, {"loss": 2.0, "step": 6}], step=6)  # max_steps mid-epoch
    assert sft.final_evaluation(earlier, None)["eval_loss"] == 9.0 and earlier.evaluated == 1


def sft_settings(prepare: dict | None = None, **train_params):
    raw = {"train": {"speed": train_params}, "prepare": prepare or {}}
    return sft.sft_config(config.parse(raw, ["lr", "prepare", "train"]), torch.float32)


@pytest.mark.parametrize("too_long, padded", [("drop", False), ("truncate", True)])
def test_rows_left_for_the_trainer_to_cut_keep_batches_padded(too_long, padded):
    settings = sft_settings(prepare={"too_long": too_long})  # padding-free asked for (the default)
    assert (settings.padding_free, settings.max_length) == ((False, 512) if padded else (True, None))


def test_liger_kernel_auto_is_off_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert sft_settings().use_liger_kernel is False
    assert sft_settings(use_liger_kernel=False).use_liger_kernel is False
    with pytest.raises(ParamsError, match="needs a CUDA GPU and the liger-kernel package"):
        sft_settings(use_liger_kernel=True)


@pytest.mark.parametrize("value", ["auto", True, False])
def test_use_liger_kernel_takes_auto_true_or_false(value):
    assert (
        config.parse({"train": {"speed": {"use_liger_kernel": value}}}, ["train"]).train.speed.use_liger_kernel == value
    )


@pytest.mark.parametrize("value", ["maybe", "True", 1, None])
def test_use_liger_kernel_rejects_anything_else(value):
    with pytest.raises(ParamsError, match="train.speed.use_liger_kernel must be one of auto, true, false, got"):
        config.parse({"train": {"speed": {"use_liger_kernel": value}}}, ["train"])


def tokenized_completions(directory, template: str | None = None) -> tuple[object, list[list[int]]]:
    """The training examples as TRL's SFTTrainer tokenizes them for the train stage: each one's labelled ids."""
    import pandas as pd
    from trl import SFTTrainer

    from finetune import modeling

    p = config.parse(
        {"train": {"eval_steps": 0}, "model": {"quantization": "none"}}, ["lr", "prepare", "model", "train"]
    )
    args = sft.sft_config(p, torch.float32)
    args.output_dir, args.eval_strategy, args.report_to = str(directory / "out"), "no", "none"
    tokenizer = modeling.load_tokenizer(directory)
    if template is not None:
        tokenizer.chat_template = template
    model = modeling.load_model(directory, "none")
    frame = pd.DataFrame(
        {
            "instruction": ["What is a bond?", "Define APR."],
            "input": ["", "Loans."],
            "output": ["A loan.", "The yearly cost."],
        }
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft.dataset(frame),
        processing_class=tokenizer,
        peft_config=sft.lora_config(p.train, modeling.lora_targets(model, "all-linear")),
    )
    labelled = [[label for label in row["labels"] if label != -100] for row in trainer.train_dataset]
    return tokenizer, labelled


@pytest.mark.parametrize("name", ["qwen2", "llama3", "phi3"])
def test_training_labels_end_with_the_familys_end_of_turn(family_dir, name):
    import families

    tokenizer, labelled = tokenized_completions(family_dir(name))
    end = tokenizer.convert_tokens_to_ids(families.FAMILIES[name].end_of_turn)
    for ids, answer in zip(labelled, ["A loan.", "The yearly cost."]):
        assert tokenizer.decode(ids).startswith(answer)
        assert end in ids[-2:]  # the answer's last labelled tokens: end of turn (then "\n" in ChatML and Phi-3)


def test_a_template_without_end_of_turn_leaves_none_to_learn(family_dir):
    """Negative control: the same check fails where the template ends a turn with plain text."""
    plain = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tokenizer, labelled = tokenized_completions(family_dir("llama3"), plain)
    assert all(tokenizer.convert_tokens_to_ids("<|eot_id|>") not in ids for ids in labelled)
