"""Training on ``transformers.Trainer`` (docs/architecture.md, floor 6: imports models, tasks and data);
docs/training.md.

=========================  ======================================================================
:mod:`.config`             :class:`TrainConfig`, :class:`ModelSpec`; ``from_dict``, ``with_overrides``
:mod:`.data`               :class:`MQARData`, :class:`RecallData` (splits generated from seeds)
:mod:`.metrics`            the loss on pre-shifted labels; accuracy, per-example accuracy
:mod:`.trainer`            :func:`train` (``config -> metrics``), :class:`PreShiftedTrainer`
=========================  ======================================================================

Usage::

    from probseq.train import TrainConfig, ModelSpec, MQARData, MQARSplit, train
    config = TrainConfig(model=ModelSpec(mixer="gated_deltanet", d_model=64),
                         data=MQARData(vocab_size=8192, train=(MQARSplit(64, 4, 10_000),),
                                       test=(MQARSplit(256, 64, 1_000),)),
                         learning_rate=1e-3, max_steps=2_000, output_dir="runs/gdn", save_steps=200)
    metrics = train(config)          # rerun the same call after an interruption: it resumes
    metrics["eval"]["test_T256_k64"]["accuracy"]

The trainer module (transformers) is imported on first use of :func:`train` and friends, so importing the
configs stays cheap.
"""

from probseq.train.config import MIXER_NAMES, ModelSpec, TrainConfig, from_dict, with_overrides
from probseq.train.data import MQARData, MQARSplit, RecallData, RecallSplit

_LAZY = {"train", "build_trainer", "build_model", "training_arguments", "PreShiftedTrainer"}


def __getattr__(name: str):
    if name in _LAZY:
        from probseq.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'probseq.train' has no attribute {name!r}")


__all__ = [
    "MIXER_NAMES",
    "MQARData",
    "MQARSplit",
    "ModelSpec",
    "PreShiftedTrainer",
    "RecallData",
    "RecallSplit",
    "TrainConfig",
    "build_model",
    "build_trainer",
    "from_dict",
    "train",
    "training_arguments",
    "with_overrides",
]
