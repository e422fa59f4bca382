"""train: LoRA on a quantized base with TRL's SFTTrainer -> models/adapter, metrics/train.json.

The recipe (finetune/training/sft.py): build the trainer (resuming a killed run with the same inputs),
fit, save. With train.num_processes > 1 it first starts itself again under `accelerate launch`; only the
main process clears checkpoints, logs and writes outputs.
"""

from finetune import config, errors
from finetune.training import distributed, sft


def main() -> None:
    p = config.load("lr", "prepare", "model", "train")
    if distributed.launched():
        distributed.die_with_launcher()
    elif p.train.num_processes > 1:
        distributed.relaunch(p.train.num_processes)  # does not return
    distributed.check_process_count(p.train)
    run = sft.build(p)
    learned, speed = sft.fit(run, p)
    sft.save(run, p, learned, speed)


if __name__ == "__main__":
    errors.run(main)
