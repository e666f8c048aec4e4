"""The console script: every command's arguments parse without importing torch, each command's function
exists, and the parsers' choices mirror the constants of the modules that run them."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

import probseq_cli
from probseq.cli import RESUMABLE, build_parser, command_function
from probseq_cli import parsers
from tests.helpers import OUTSIDE_DOCUMENTS, REPO

COMMANDS = build_parser()._subparsers._group_actions[0].choices  # name → its ArgumentParser

# The arguments each command needs to parse (its required ones).
REQUIRED = {
    "pretrain": ["--out", "o"],
    "distill": ["--teacher", "t", "--out", "o", "--tokens", "1k"],
    "mqar": ["--out", "o"],
    "recall": ["--out", "o"],
    "collision": ["--out", "o"],
    "reproduce": [],
    "demo": [],
    "bench": [],
    "uncertainty": ["--text", "t", "--out", "o"],
    "convert-fla": ["a", "b"],
    "export-fla": ["a", "b"],
    "ruler": ["--model", "m", "--out", "o"],
}


def test_every_command_is_covered_here():
    assert set(COMMANDS) == set(REQUIRED)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_command_names_a_function_that_exists(command):
    args = build_parser().parse_args([command, *REQUIRED[command]])
    assert callable(command_function(args.run)), args.run


HELP_WITHOUT_TORCH = (
    "import sys, probseq_cli\n"
    "try:\n    probseq_cli.main(sys.argv[1:])\n"
    "except SystemExit as exit:\n"
    "    assert 'torch' not in sys.modules and 'probseq' not in sys.modules, 'imported torch'\n"
    "    raise\n"
)


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv, code, shown",
    [
        (["--help"], 0, "mqar"),
        ([], 2, "mqar"),
        (["no-such-command"], 2, "mqar"),
        (["mqar", "--help"], 0, "--preset"),
        (["ruler", "--help"], 0, "summary.csv"),
        (["bench", "-h"], 0, "--mqar"),
        (["mqar", "--out", "o", "--preset", "huge"], 2, "invalid choice"),
        (["distill", "--teacher", "t", "--out", "o", "--tokens", "5X"], 2, "must be a number like"),
    ],
)
def test_help_and_bad_arguments_answer_without_importing_torch(argv, code, shown):
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == code, result.stderr
    assert shown in result.stdout + result.stderr


def test_help_shows_the_modules_docstrings(capsys):
    with pytest.raises(SystemExit) as exit:
        probseq_cli.main(["mqar", "--help"])
    from probseq.experiments import mqar

    assert exit.value.code == 0 and mqar.__doc__.split("\n\n")[0].split("\n")[0] in capsys.readouterr().out


def test_choices_mirror_the_modules_constants():
    from probseq import bench
    from probseq.experiments import collision, mqar, recall, reproduce, ruler_eval
    from probseq.interop import fla
    from probseq.layers import RETENTIONS

    assert parsers.EXPERIMENT_PRESETS == tuple(mqar.PRESETS) == tuple(recall.PRESETS)
    assert parsers.REPRODUCE_PRESETS == reproduce.PRESETS
    assert parsers.COLLISION_PRESETS == tuple(sorted(collision.PRESETS))
    assert parsers.BENCH_PRESETS == tuple(sorted(bench.PRESETS))
    assert parsers.RETENTIONS == tuple(RETENTIONS)
    assert parsers.CONVERT_DTYPES == tuple(fla.DTYPES) and parsers.RULER_DTYPES == tuple(ruler_eval.DTYPES)
    assert parsers.RULER_TASKS == tuple(ruler_eval.DEFAULT_TASKS)
    from probseq.train import distill, pretrain

    assert parsers.LM_PRESETS == tuple(pretrain.PRESETS) == tuple(distill.PRESETS)


@pytest.mark.parametrize(
    "text, tokens", [("5000000", 5_000_000), ("5M", 5_000_000), ("2.5m", 2_500_000), ("500k", 500_000), ("1G", 10**9)]
)
def test_token_counts(text, tokens):
    assert parsers.token_count(text) == tokens


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "lots", "5X"])
def test_bad_token_counts(text):
    with pytest.raises(Exception, match="--tokens"):
        parsers.token_count(text)


@pytest.mark.parametrize(
    "command", ["pretrain", "distill", "mqar", "recall", "collision", "reproduce", "demo", "bench"]
)
def test_every_set_option_accumulates(command):
    """``--set a=1 --set b=2 c=3`` keeps all three overrides in every command (a repeated ``--set`` once
    silently replaced the earlier ones in pretrain and distill)."""
    args = build_parser().parse_args([command, *REQUIRED[command], "--set", "a=1", "--set", "b=2", "c=3"])
    overrides = getattr(args, "overrides", None) or getattr(args, "set")
    assert overrides == ["a=1", "b=2", "c=3"]


def test_a_missing_source_file_gives_an_empty_description(monkeypatch, tmp_path):
    monkeypatch.setattr(parsers, "PACKAGE", tmp_path)
    assert parsers.module_doc("experiments.mqar") == ""
    assert build_parser().parse_args(["mqar", "--out", "o"]).run == "probseq.experiments.mqar:main"


@pytest.mark.parametrize("command, resumable", [("mqar", True), ("bench", False)])
def test_ctrl_c_is_one_line_that_says_whether_to_rerun(monkeypatch, capsys, command, resumable):
    import probseq.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(probseq.cli, "command_function", lambda target: interrupted)
    assert probseq.cli.main([command, *REQUIRED[command]]) == 130
    err = capsys.readouterr().err
    assert f"probseq {command}: interrupted" in err and ("rerun the same command" in err) == resumable


@pytest.mark.parametrize("missing, extra", [("matplotlib", True), ("transformers.trainer", True), ("zoology", False)])
def test_a_missing_extra_is_one_line_that_names_it(monkeypatch, capsys, missing, extra):
    import probseq.cli

    def needs(args):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(probseq.cli, "command_function", lambda target: needs)
    if not extra:  # not a package of probseq's extras: the error is not ours to explain
        with pytest.raises(ModuleNotFoundError):
            probseq.cli.main(["bench"])
        return
    assert probseq.cli.main(["bench"]) == 2
    assert capsys.readouterr().err == (
        f"probseq bench: error: No module named {missing!r}: the probseq commands "
        "need the experiments extra, pip install 'probseq[experiments]'\n"
    )


def test_the_extra_packages_are_those_of_pyproject():
    """``EXTRA_PACKAGES``: the import names of the packages the ``hf``, ``train`` and ``experiments`` extras add."""
    import re

    import probseq.cli

    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    packages = {re.match(r"[\w.-]+", r)[0] for name in ("hf", "train", "experiments") for r in extras[name]}
    assert {p.replace("-", "_") for p in packages if not p.startswith("probseq")} == probseq.cli.EXTRA_PACKAGES


def test_resumable_commands_exist():
    assert RESUMABLE <= set(COMMANDS)


@pytest.mark.integration
def test_the_console_script_dies_by_sigint_after_ctrl_c():
    """After its one-line message the console script re-raises SIGINT, as Python does for an uncaught Ctrl-C, so
    that a shell loop around it stops as well (an exit status of 130 would let bash carry on)."""
    import signal

    script = (
        "import sys, probseq.cli, probseq_cli\n"
        "def interrupted(target):\n    def run(args):\n        raise KeyboardInterrupt\n    return run\n"
        "probseq.cli.command_function = interrupted\n"
        "probseq_cli.main(['collision', '--out', sys.argv[1]])\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "unused"], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGINT, (result.returncode, result.stderr)
    assert "probseq collision: interrupted: rerun the same command to resume" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv, shown",
    [
        (["mqar", "eval", "--run", "r", "--points", "64x4", "--out", "e.csv"], "an MQAR point is T,k"),
        (["mqar", "eval", "--run", "r", "--points", "64,0", "--out", "e.csv"], "an MQAR point is T,k"),
        (["mqar", "eval", "--run", "r", "--points", "64,4", "64,4", "--out", "e.csv"], "repeated: (64, 4)"),
        (["mqar", "eval", "--points", "64,4", "--out", "e.csv"], "--run"),
        (["recall", "eval", "--run", "r", "--points", "gaps=3", "--out", "e.csv"], "KNOB one of num_pairs"),
        (["recall", "eval", "--run", "r", "--points", "key_noise=1.5", "--out", "e.csv"], "must be in [0, 1)"),
        (["recall", "eval", "--run", "r", "--points", "gap=2.5", "--out", "e.csv"], "must be a whole number"),
        (["mqar"], "required: --out"),
    ],
)
def test_eval_arguments_are_checked_without_importing_torch(argv, shown):
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert shown in result.stderr


def test_eval_sub_actions_parse_and_name_their_functions():
    from probseq.experiments import recall

    args = build_parser().parse_args(["mqar", "eval", "--run", "r", "--points", "512,128", "64,4", "--out", "e.csv"])
    assert (args.action, args.points, callable(command_function(args.run))) == ("eval", [(512, 128), (64, 4)], True)
    args = build_parser().parse_args(
        [
            "recall",
            "eval",
            "--run",
            "r",
            "--points",
            "inside",
            "gap=256,num_pairs=16",
            "key_noise=0.50",
            "--out",
            "e.csv",
        ]
    )
    assert args.points == ["inside", "num_pairs=16,gap=256", "key_noise=0.5"]  # the experiment's names
    assert callable(command_function(args.run))
    assert parsers.RECALL_KNOBS == tuple(field for _, field in recall.KNOBS)
    assert build_parser().parse_args(["mqar", "--out", "o"]).action is None  # training, as before


def test_version_answers_without_a_command(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        probseq_cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"probseq {version('probseq')}"


def every_help(parser: argparse.ArgumentParser, name: str = "probseq"):
    """``(command line, --help text)`` of ``parser`` and of every sub-command under it (``probseq mqar eval``)."""
    yield name, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from every_help(sub, f"{name} {command}")


#: reST markup, and names of documents that are not in the repository.
MARKUP = re.compile(r"``|:[a-z]+:`|" + OUTSIDE_DOCUMENTS.pattern)
SCRIPTS = REPO / "scripts"


def test_no_help_shows_markup_or_documents_outside_the_repository():
    helps = dict(every_help(build_parser()))
    assert {"probseq mqar eval", "probseq recall eval", "probseq ruler"} <= set(helps)
    marked = {name: MARKUP.search(text).group(0) for name, text in helps.items() if MARKUP.search(text)}
    assert not marked
    assert "Runs a ProbSeqForCausalLM once over a text with output_variance=True" in " ".join(
        helps["probseq uncertainty"].split()
    )


@pytest.mark.integration
@pytest.mark.parametrize("script", ["mutate.py", "ruler_answer_likelihood.py", "training_step_speed.py"])
def test_the_scripts_help_shows_no_markup(script):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and not MARKUP.search(result.stdout), result.stdout


@pytest.mark.parametrize(
    "doc, plain",
    [
        ("Runs a :class:`~probseq.models.ProbSeqForCausalLM` once", "Runs a ProbSeqForCausalLM once"),
        (
            ":func:`probseq.ruler.generate` and :mod:`the theory <probseq.theory>`",
            "probseq.ruler.generate and the theory",
        ),
        ("``output_variance=True`` and ``a\nb``; *emphasis* stays", "output_variance=True and a\nb; *emphasis* stays"),
    ],
)
def test_plain_text_strips_rest_markup(doc, plain):
    assert parsers.plain_text(doc) == plain


@pytest.mark.parametrize("command", ["pretrain", "distill"])
def test_presets_are_chosen_with_preset_and_config_is_a_hidden_deprecated_alias(command, capsys):
    assert build_parser().parse_args([command, *REQUIRED[command]]).preset == "small"
    assert build_parser().parse_args([command, *REQUIRED[command], "--preset", "tiny"]).preset == "tiny"
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args([command, *REQUIRED[command], "--config", "340m"]).preset == "340m"
    assert capsys.readouterr().err == f"probseq {command}: --config is deprecated, use --preset\n"
    text = COMMANDS[command].format_help()
    assert "--preset {tiny,small,340m}" in text and "--config" not in text
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *REQUIRED[command], "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
