"""What the commands print when stderr is not a terminal (a log file): no progress bars — probseq's own,
the Trainer's, transformers' "Loading weights" / "Writing model shards" — and no transformers message that says
nothing to act on (checkpoint mtimes); on a terminal the bars stay."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from probseq.console import MTIME_LOGGER, MTIME_MESSAGE, command_output, interactive, progress_enabled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interactive_means_a_terminal(monkeypatch):
    assert interactive(Terminal()) and not interactive(io.StringIO()) and not interactive(object())
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_enabled() and progress_enabled(True) and not progress_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled(True)


def test_library_bars_are_off_in_a_log_and_restored_after():
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()
    with command_output(io.StringIO()):
        assert not hf_logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
    assert hf_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()
    with command_output(Terminal()):  # on a terminal they stay
        assert hf_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # off before: off after
    try:
        with command_output(io.StringIO()):
            pass
        assert not hf_logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
    finally:
        hf_logging.enable_progress_bar()


def test_the_mtime_message_is_dropped_and_other_messages_kept():
    logger = logging.getLogger(MTIME_LOGGER)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with command_output(Terminal()):
            logger.warning(f"{MTIME_MESSAGE}, falling back to numerical ordering")
            logger.warning("a checkpoint is missing")
        logger.warning(f"{MTIME_MESSAGE}, outside a command")
    finally:
        logger.removeHandler(handler)
    assert seen == ["a checkpoint is missing", f"{MTIME_MESSAGE}, outside a command"]


COMMANDS = """
import sys, probseq_cli
model, out = sys.argv[1], sys.argv[2]
mqar = ['mixers=["attention"]', "d_models=[16]", "learning_rates=[0.01]", "seeds=[0]", "vocab_size=64",
        "train_segments=[[16,2]]", "train_examples=[16]", "test_segments=[[16,2]]", "test_examples=16",
        "valid_examples=8", "max_steps=3", "batch_size=8", "eval_batch_size=16", "save_steps=1", "num_threads=1"]
collision = ["key_dim=4", "value_dim=2", "trials=16", "batch_trials=16", "max_repeats=4", "rhos=[0.0,0.5]",
             "capacity_points=2", "confident_writes=2", "colliding_writes=2", "gammas=[1.0]"]
codes = [probseq_cli.main(["uncertainty", "--model", model, "--text", "abc", "--out", out + "/u"]),
         probseq_cli.main(["mqar", "--out", out + "/m", *(a for o in mqar for a in ("--set", o))]),
         probseq_cli.main(["collision", "--out", out + "/c", *(a for o in collision for a in ("--set", o))])]
sys.exit(max(codes))
"""


@pytest.mark.integration
def test_commands_write_no_progress_frames_or_library_noise_into_a_log(tmp_path):
    """Three commands in one fresh process, stderr a pipe: a model loaded (uncertainty --model), a sweep trained
    with checkpoints a moment apart (mqar), probseq's own bar (collision)."""
    from probseq.models import ProbSeqConfig, ProbSeqForCausalLM

    ProbSeqForCausalLM(
        ProbSeqConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=16, expand_v=1)
    ).save_pretrained(tmp_path / "model")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", COMMANDS, str(tmp_path / "model"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for noise in ("\r", "Loading weights", "Writing model shards", "mtime", "it/s]"):
        assert noise not in result.stderr, (noise, result.stderr)
    assert "attention-d16-lr0.01-s0: done" in result.stderr  # the sweep's own log lines stay
    for command in ("u", "m", "c"):
        assert json.loads((tmp_path / "out" / command / "results.json").read_text())["config"]


@pytest.mark.parametrize("requested", [True, False])
def test_the_trainer_draws_no_bar_into_a_log(requested):
    from probseq.train import ModelSpec, TrainConfig
    from probseq.train.trainer import training_arguments

    config = TrainConfig(model=ModelSpec(mixer="attention", d_model=16), progress=requested)
    assert training_arguments(config, "unused").disable_tqdm  # stderr is pytest's capture, not a terminal
