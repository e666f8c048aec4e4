"""The console script: the fast overview answers without torch and lists exactly the full CLI's commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

import probseq_cli
from probseq.cli import build_parser


def test_overview_lists_the_full_clis_commands():
    commands = build_parser()._subparsers._group_actions[0]
    assert {action.dest: action.help for action in commands._choices_actions} == probseq_cli.COMMANDS


@pytest.mark.parametrize("argv, code", [(["--help"], 0), ([], 2), (["no-such-command"], 2)])
def test_overview_answers_without_importing_torch(argv, code):
    script = ("import sys, probseq_cli\n"
              "try:\n    probseq_cli.main(sys.argv[1:])\n"
              "except SystemExit as exit:\n"
              "    assert 'torch' not in sys.modules and 'probseq' not in sys.modules, 'imported torch'\n"
              "    raise\n")
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert "mqar" in result.stdout + result.stderr


def test_commands_go_to_the_full_cli(capsys):
    with pytest.raises(SystemExit) as exit:
        probseq_cli.main(["mqar", "--help"])
    assert exit.value.code == 0 and "--preset" in capsys.readouterr().out


REQUIRED = {"pretrain": ["--out", "o"], "distill": ["--teacher", "t", "--out", "o", "--tokens", "1k"],
            "mqar": ["--out", "o"], "recall": ["--out", "o"], "collision": ["--out", "o"], "reproduce": [],
            "demo": [], "bench": []}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_set_option_accumulates(command):
    """``--set a=1 --set b=2 c=3`` keeps all three overrides in every command (a repeated ``--set`` once
    silently replaced the earlier ones in pretrain and distill)."""
    args = build_parser().parse_args([command, *REQUIRED[command], "--set", "a=1", "--set", "b=2", "c=3"])
    overrides = getattr(args, "overrides", None) or getattr(args, "set")
    assert overrides == ["a=1", "b=2", "c=3"]
