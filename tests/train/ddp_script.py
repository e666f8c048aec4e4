"""Train a tiny MQAR model for a few steps and save its parameters: run once as a single process and once
under ``torchrun --nproc_per_node 2`` (gloo on CPU) with the same global batch (``tests/train/test_training.py``).

Usage: ``[torchrun --standalone --nproc_per_node N] python tests/train/ddp_script.py OUT.safetensors``
"""

import json
import os
import sys

from safetensors.torch import save_file
from transformers import TrainerCallback

from probseq.train import ModelSpec, MQARData, MQARSplit, TrainConfig, train

GLOBAL_BATCH = 16
STEPS = 4


class KeepParameters(TrainerCallback):
    """Copy the trained parameters at the end of training (``train`` returns metrics only)."""

    def __init__(self):
        self.state = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = TrainConfig(
        model=ModelSpec(mixer="bayesian", d_model=16),
        data=MQARData(vocab_size=64, train=(MQARSplit(32, 4, 64),), test=(MQARSplit(32, 4, 16),)),
        learning_rate=1e-2,
        warmup=0.0,
        max_steps=STEPS,
        batch_size=GLOBAL_BATCH // world,
        eval_batch_size=8,
        seed=3,
        num_threads=1,
        progress=False,
        logging_steps=1,
    )
    keep = KeepParameters()
    metrics = train(config, callbacks=(keep,))
    if int(os.environ.get("RANK", "0")) == 0:
        keep.state.pop("lm_head.weight", None)  # tied to the embeddings
        save_file(keep.state, out, metadata={"world_size": str(world), "eval": json.dumps(metrics["eval"])})


if __name__ == "__main__":
    main(sys.argv[1])
