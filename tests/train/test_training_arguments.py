"""Both kinds of Trainer run (the experiments' ``TrainConfig``, pretraining's ``PretrainConfig``) configure the
Trainer alike where they should: one definition of the shared settings (``probseq.train.trainer.shared_arguments``)."""

import dataclasses

from probseq.experiments.mqar import PRESETS
from probseq.train.pretrain import PretrainConfig
from probseq.train.trainer import shared_arguments, training_arguments


def test_experiment_and_pretraining_runs_share_optimizer_logging_and_device_settings(tmp_path):
    run = dataclasses.replace(PRESETS["quick"].train_config("gated_deltanet", 64, 1e-3, 0), progress=False)
    pretrain = dataclasses.replace(PretrainConfig(), progress=False, weight_decay=run.weight_decay, warmup=run.warmup)
    experiment_args = training_arguments(run, tmp_path / "a")
    pretrain_args = pretrain.training_arguments(tmp_path / "b", max_steps=5, learning_rate=1e-3, seed=0)
    fixed = ("optim", "eval_strategy", "report_to", "logging_nan_inf_filter", "remove_unused_columns", "use_cpu")
    for name in fixed:
        assert getattr(experiment_args, name) == getattr(pretrain_args, name), name
    assert experiment_args.optim == "adamw_torch" and experiment_args.logging_nan_inf_filter is False
    assert experiment_args.disable_tqdm and pretrain_args.disable_tqdm  # progress=False: no bars
    # each run's own values come from its config
    assert experiment_args.weight_decay == run.weight_decay and experiment_args.max_grad_norm == run.max_grad_norm
    assert pretrain_args.max_grad_norm == pretrain.max_grad_norm and pretrain_args.data_seed == 0
    assert set(shared_arguments(run)) <= set(experiment_args.to_dict())
