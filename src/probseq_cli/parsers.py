"""Every ``probseq`` command's arguments, defined without importing ``probseq`` (which loads torch and
transformers: seconds), so that ``probseq <command> --help`` and a mistyped argument answer at once.

Each command names the function that runs it as ``"module:function"`` (``args.run``); :func:`probseq.cli.run`
imports that module only then. The descriptions are the docstrings of those modules, read from their source
files and shown as plain text (:func:`plain_text`: no reST markup in ``--help``). Choices that mirror a module's
constants (presets, dtypes, retentions, RULER tasks) are checked against them by ``tests/cli/test_commands.py``.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "probseq"  # installed or editable, the two are siblings

EXPERIMENT_PRESETS = ("quick", "cpu", "paper")  # probseq.experiments.{mqar,recall}.PRESETS
REPRODUCE_PRESETS = ("quick", "cpu")  # probseq.experiments.reproduce.PRESETS
COLLISION_PRESETS = ("full", "quick")  # probseq.experiments.collision.PRESETS
BENCH_PRESETS = ("full", "quick")  # probseq.bench.PRESETS
RETENTIONS = ("reset", "stationary", "learned")  # probseq.layers.RETENTIONS
CONVERT_DTYPES = ("float32", "bfloat16", "float16", "float64")  # probseq.interop.fla.DTYPES
RULER_DTYPES = ("float32", "bfloat16", "float16")  # probseq.experiments.ruler_eval.DTYPES
RULER_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe")  # ruler_eval.DEFAULT_TASKS
RECALL_KNOBS = ("num_pairs", "gap", "collisions", "key_noise")  # the RecallConfig fields of recall.KNOBS
LM_PRESETS = ("tiny", "small", "340m")  # probseq.train.pretrain.PRESETS, probseq.train.distill.PRESETS

#: ``--out`` of the commands that write a results folder (probseq.files.check_same_config).
OUT_HELP = "output folder: the same command resumes there; results of another config there are refused"

#: A reST role (:class:`x`, :func:`~a.b`, :mod:`text <target>`): ``~`` (last name only), the text.
_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")
#: An inline literal (``x``).
_LITERAL = re.compile(r"``(.+?)``", flags=re.DOTALL)


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` shows it: reST roles reduced to their text (``:class:`~probseq.models.X``` → ``X``,
    ``:func:`a.b``` → ``a.b``, ``:mod:`text <target>``` → ``text``) and inline literals to their content; the rest
    as written."""
    doc = _ROLE.sub(lambda match: match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2), doc)
    return _LITERAL.sub(r"\1", doc)


class CommandParser(argparse.ArgumentParser):
    """A command's parser. ``required_without_action`` lists ``(option, dest)`` pairs that are required when no
    sub-action (``probseq mqar eval``) is given: ``probseq mqar --out o`` trains, ``probseq mqar eval --run r …``
    evaluates, and ``probseq mqar`` alone is an error naming ``--out``."""

    required_without_action: tuple[tuple[str, str], ...] = ()

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if getattr(namespace, "action", None) is None:
            missing = [
                option for option, dest in self.required_without_action if getattr(namespace, dest, None) is None
            ]
            if missing:
                self.error(f"the following arguments are required: {', '.join(missing)}")
        return namespace, extras


def mqar_point(text: str) -> tuple[int, int]:
    """``"512,128"`` → ``(512, 128)``: an MQAR test point, ``T,k`` (sequence length, key-value pairs)."""
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"an MQAR point is T,k (sequence length and key-value pairs, positive whole "
            f"numbers), like 512,128; got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def recall_point_knobs(text: str) -> dict[str, int | float]:
    """A recall test point by its name (probseq.experiments.recall's names): ``"inside"`` → ``{}`` (the training
    regime's largest point), ``"gap=256"`` → ``{"gap": 256}``; several knobs joined by commas
    (``"num_pairs=16,gap=64"``). Knobs: :data:`RECALL_KNOBS`; ``num_pairs`` ≥ 1, ``gap`` and ``collisions`` ≥ 0
    whole numbers, ``key_noise`` in [0, 1). A ``ValueError`` says what is wrong."""
    if text == "inside":
        return {}
    knobs: dict[str, int | float] = {}
    for item in text.split(","):
        name, equals, value = item.partition("=")
        if not equals or name not in RECALL_KNOBS:
            raise ValueError(
                f"a recall point is 'inside' or KNOB=VALUE[,KNOB=VALUE] with KNOB one of "
                f"{', '.join(RECALL_KNOBS)} (e.g. gap=256, num_pairs=32); got {text!r}"
            )
        if name in knobs:
            raise ValueError(f"recall point {text!r} sets {name} twice")
        try:
            number = float(value) if name == "key_noise" else int(value)
        except ValueError:
            kind = "a number in [0, 1)" if name == "key_noise" else "a whole number"
            raise ValueError(f"{name} of recall point {text!r} must be {kind}, got {value!r}") from None
        low = 1 if name == "num_pairs" else 0
        if (name == "key_noise" and not 0 <= number < 1) or (name != "key_noise" and number < low):
            bound = "in [0, 1)" if name == "key_noise" else f">= {low}"
            raise ValueError(f"{name} of recall point {text!r} must be {bound}, got {value}")
        knobs[name] = number
    return {name: knobs[name] for name in RECALL_KNOBS if name in knobs}


def recall_point_name(knobs: dict[str, int | float]) -> str:
    """The point's name as the recall experiment writes it: ``inside``, ``gap=256``, ``num_pairs=16,gap=64``."""
    return ",".join(f"{name}={value:g}" for name, value in knobs.items()) or "inside"


def recall_point(text: str) -> str:
    """argparse type: a recall point (:func:`recall_point_knobs`) → its name."""
    try:
        return recall_point_name(recall_point_knobs(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


class DistinctPoints(argparse.Action):
    """``--points``: the points, each once."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = sorted({str(value) for value in values if values.count(value) > 1})
        if repeated:
            parser.error(f"argument --points: each point once; repeated: {', '.join(repeated)}")
        setattr(namespace, self.dest, values)


def add_eval(parser: argparse.ArgumentParser, experiment: str, point_type, point_help: str) -> None:
    """``probseq <experiment> eval --run DIR --points …``: score trained runs at new test points."""
    parser.required_without_action = (("--out", "out"),)
    actions = parser.add_subparsers(dest="action", metavar="eval", title="evaluate trained runs (no training)")
    sub = actions.add_parser(
        "eval",
        help=f"score saved {experiment} runs at test points, without retraining",
        description=f"Score the final weights of trained {experiment} runs (a run folder, or every run under a "
        f"folder, e.g. ~/.cache/probseq/runs/{experiment}) at the given test points, with the test data "
        "generation and seeds of the experiment: a point the run was tested at gets its own test data "
        "(the recorded accuracy is reproduced), another one a seed of the test range fixed by the run's "
        "data seed and the point. Writes a CSV with the sweep's point columns, the run's identity "
        "(mixer, lr, seed, retention, …) and the recorded accuracy where there is one.",
    )
    sub.add_argument(
        "--run",
        dest="run_dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="a run folder (with final/model.safetensors) or a folder of runs",
    )
    sub.add_argument(
        "--points", required=True, nargs="+", type=point_type, metavar="POINT", help=point_help, action=DistinctPoints
    )
    sub.add_argument("--out", required=True, type=Path, help="the CSV file to write")
    sub.add_argument(
        "--examples", type=positive_int, default=None, help="examples per point (default: the run's test examples)"
    )
    sub.add_argument(
        "--batch-size", type=positive_int, default=None, help="evaluation batch (default: the run's eval_batch_size)"
    )
    sub.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    sub.set_defaults(run=f"probseq.experiments.{experiment}:eval_main")


def module_doc(module: str, first_paragraph: bool = False) -> str:
    """The docstring of ``probseq.<module>`` (e.g. ``"experiments.mqar"``), read from its source, not imported, as
    plain text (:func:`plain_text`; ``""`` where the installation has no source files)."""
    try:
        source = (PACKAGE / (module.replace(".", "/") + ".py")).read_text("utf-8")
    except OSError:
        return ""
    doc = ast.get_docstring(ast.parse(source)) or ""
    return plain_text(doc.split("\n\n")[0] if first_paragraph else doc)


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option (``probseq pretrain --config`` for ``--preset``): it still works, stores
    into the new option's ``dest`` and says on stderr which option to use instead."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_lm_preset(parser: argparse.ArgumentParser) -> None:
    """``--preset tiny|small|340m`` of pretrain and distill (``--config``: its deprecated old name)."""
    parser.add_argument(
        "--preset",
        choices=LM_PRESETS,
        default="small",
        help="tiny: a smoke test (seconds); small: the CPU teacher (hours); 340m: fla's Gated DeltaNet "
        "340M layout, a GPU run (default small)",
    )
    parser.add_argument("--config", dest="preset", choices=LM_PRESETS, action=DeprecatedAlias, new="--preset")


def add_overrides(
    parser: argparse.ArgumentParser, help: str, dest: str = "overrides", metavar: str = "KEY=VALUE"
) -> None:
    """``--set KEY=VALUE …``, repeatable: every occurrence adds to the list."""
    parser.add_argument("--set", dest=dest, action="extend", nargs="+", default=[], metavar=metavar, help=help)


def token_count(text: str) -> int:
    """``5000000``, ``5M``, ``2.5M``, ``500k``, ``1G`` → a positive whole number of tokens."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens must be a number like 5000000 or 5M, got {text!r}") from None
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"--tokens must be a positive whole number of tokens, got {text!r}")
    return int(value)


def add_collision(commands) -> None:
    parser = commands.add_parser(
        "collision",
        help="collision study: simulation vs closed-form theory (the paper's collision study)",
        description="Collision study (the paper's collision study): linear attention, DeltaNet, Gated DeltaNet and "
        "the Bayesian Layer on colliding writes, against the closed forms of docs/theory.md.",
    )
    parser.add_argument("--out", required=True, type=Path, help=OUT_HELP)
    parser.add_argument("--preset", choices=COLLISION_PRESETS, default="quick")
    parser.add_argument("--seed", type=int, default=0)
    add_overrides(parser, "override a CollisionConfig field (repeatable), e.g. --set trials=512")
    parser.set_defaults(run="probseq.experiments.collision:main")


def add_bench(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="time the filters, layers and training steps against their peers",
        description=module_doc("bench"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=BENCH_PRESETS, default="quick")
    parser.add_argument(
        "--out",
        default=None,
        help="write the results JSON here (a file holding the results of another config is refused)",
    )
    parser.add_argument(
        "--layer",
        action="store_true",
        help="only the layer and generation cases (Bayesian Layer vs Gated DeltaNet layer, filter "
        "share, time per generated token)",
    )
    parser.add_argument(
        "--mqar",
        action="store_true",
        help="only the MQAR training-throughput cases (tokens/s of one training step per mixer)",
    )
    add_overrides(parser, "override a BenchConfig field, e.g. --set lengths=[1024,4096]")
    parser.set_defaults(run="probseq.bench:main")


def add_uncertainty(commands) -> None:
    parser = commands.add_parser(
        "uncertainty",
        help="heat map of the Bayesian layers' predictive variance per token",
        description=module_doc("experiments.uncertainty"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="save_pretrained folder (omit: a randomly initialised model)")
    parser.add_argument("--text", required=True, help="the text to read")
    parser.add_argument("--out", required=True, help=OUT_HELP)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's, else UTF-8 bytes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random initialisation")
    parser.set_defaults(run="probseq.experiments.uncertainty:main")


def add_mqar(commands) -> None:
    parser = commands.add_parser(
        "mqar",
        help="Zoology MQAR: accuracy vs key-value pairs and state size, per mixer",
        description=module_doc("experiments.mqar", first_paragraph=True) + " Resumable: rerun the same command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, help=OUT_HELP + "; required")
    parser.add_argument(
        "--preset",
        choices=EXPERIMENT_PRESETS,
        default="quick",
        help="quick: CPU demo (minutes); cpu: hours on 2 cores; paper: Zoology's grid for a GPU",
    )
    add_overrides(parser, "override an MQARConfig field (repeatable), e.g. --set 'mixers=[\"bayesian\"]'")
    parser.set_defaults(run="probseq.experiments.mqar:main")
    add_eval(parser, "mqar", mqar_point, "test points T,k (sequence length, key-value pairs), e.g. 512,128 1024,256")


def add_recall(commands) -> None:
    parser = commands.add_parser(
        "recall",
        help="learned associative recall inside and beyond the training regime",
        description=module_doc("experiments.recall", first_paragraph=True) + " Resumable: rerun the same command.",
    )
    parser.add_argument("--out", type=Path, help=OUT_HELP + "; required")
    parser.add_argument(
        "--preset",
        choices=EXPERIMENT_PRESETS,
        default="quick",
        help="quick: CPU demo (minutes); cpu: hours on 2 cores; paper: a GPU",
    )
    add_overrides(parser, "override a RecallExperiment field (repeatable), e.g. --set max_steps=500")
    parser.set_defaults(run="probseq.experiments.recall:main")
    add_eval(
        parser,
        "recall",
        recall_point,
        "test points by name: inside (the training regime's largest point) or KNOB=VALUE moving knobs from it "
        f"({', '.join(RECALL_KNOBS)}), e.g. inside gap=512 num_pairs=64,gap=32",
    )


def add_reproduce(
    commands, name: str = "reproduce", help: str = "reproduce the paper's claims → OUT/REPORT.md"
) -> None:
    parser = commands.add_parser(
        name,
        help=help,
        description=module_doc("experiments.reproduce"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="reports/demo", help=OUT_HELP)
    parser.add_argument(
        "--preset",
        choices=REPRODUCE_PRESETS,
        default="quick",
        help="quick: minutes on CPU (make demo); cpu: reads the background cpu runs",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_overrides(
        parser,
        "override a study's config (collision, recall, mqar), e.g. --set recall.max_steps=50",
        metavar="STUDY.KEY=VALUE",
    )
    parser.set_defaults(run="probseq.experiments.reproduce:main")


def add_convert_fla(commands) -> None:
    parser = commands.add_parser(
        "convert-fla",
        help="convert an fla Gated DeltaNet checkpoint into a probseq model (docs/interop.md)",
        description="Convert a flash-linear-attention GatedDeltaNetForCausalLM directory (config.json + "
        "safetensors) into a ProbSeqForCausalLM of Bayesian Layers, saved to DST_DIR.",
    )
    parser.add_argument("src", metavar="SRC_DIR", type=Path, help="the fla model directory")
    parser.add_argument("dst", metavar="DST_DIR", type=Path, help="where to save the probseq model")
    parser.add_argument(
        "--retention",
        choices=RETENTIONS,
        default="reset",
        help="reset: the same model; learned: + retention parameters at their function-preserving "
        "start; stationary: γ = α²",
    )
    parser.add_argument("--dtype", choices=CONVERT_DTYPES, default=None, help="default: the checkpoint's dtype")
    parser.set_defaults(run="probseq.interop.fla:convert_main")


def add_export_fla(commands) -> None:
    parser = commands.add_parser(
        "export-fla",
        help="export a probseq model that is a Gated DeltaNet to fla's format (docs/interop.md)",
        description="Write a probseq model whose recurrent layers are Gated DeltaNets (gated_deltanet, or bayesian "
        "with reset retention or learned retention at ρ = 0) as an fla GatedDeltaNetForCausalLM "
        "directory.",
    )
    parser.add_argument("src", metavar="SRC", type=Path, help="the probseq model directory")
    parser.add_argument("dst", metavar="DST", type=Path, help="the fla directory to write")
    parser.set_defaults(run="probseq.interop.fla:export_main")


PRETRAIN_HELP = """Pretrain a Gated DeltaNet language model on the offline corpus (KJV Bible and Python docs from Debian
packages, plus retrieval-format text), then export it as an fla GatedDeltaNetForCausalLM directory in OUT
(config.json, model.safetensors, tokenizer files, train_log.json). Checkpoints in OUT/checkpoints; rerunning
the same command resumes. --set key=value overrides a field of the preset (see probseq.train.pretrain.PretrainConfig),
e.g. --set tokens=2000000 batch_size=8 num_threads=2."""

DISTILL_HELP = """Distil an fla Gated DeltaNet teacher into Bayesian Layers (convert_fla with learned retention;
stage 1: layer-wise mixer-output matching, stage 2: logit KL + LM loss), or with --baseline fine-tune the GDN itself
with the same tokens, steps, batch and optimiser (LM + KL). OUT gets the save_pretrained model, the tokenizer and
train_log.json (tokens per stage, validation losses). --set key=value overrides a field of
probseq.train.distill.DistillConfig, e.g. --set stage1_fraction=0.5 retention_init=0.25."""


def add_pretrain(commands) -> None:
    parser = commands.add_parser(
        "pretrain", help="pretrain a Gated DeltaNet LM on the offline corpus, export as fla", description=PRETRAIN_HELP
    )
    add_lm_preset(parser)
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder (the fla checkpoint): the same command resumes there, another config is refused",
    )
    add_overrides(parser, "override config fields", dest="set")
    parser.set_defaults(run="probseq.experiments.distillation:pretrain_main")


def add_distill(commands) -> None:
    parser = commands.add_parser(
        "distill", help="distil an fla GDN teacher into Bayesian Layers (or the GDN baseline)", description=DISTILL_HELP
    )
    parser.add_argument("--teacher", required=True, type=Path, help="the fla Gated DeltaNet directory")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder: the same command resumes there, another config is refused",
    )
    parser.add_argument(
        "--tokens", required=True, type=token_count, help="token budget of both stages (e.g. 5000000 or 5M)"
    )
    parser.add_argument("--baseline", action="store_true", help="fine-tune the GDN teacher instead (matched compute)")
    add_lm_preset(parser)
    add_overrides(parser, "override config fields", dest="set")
    parser.set_defaults(run="probseq.experiments.distillation:distill_main")


def add_ruler(commands) -> None:
    parser = commands.add_parser(
        "ruler",
        help="RULER retrieval scores of a model at several context lengths",
        description=module_doc("experiments.ruler_eval"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder (save_pretrained or fla), with its tokenizer")
    parser.add_argument("--tasks", nargs="+", default=[",".join(RULER_TASKS)], help="tasks (space or comma separated)")
    parser.add_argument("--lengths", nargs="+", default=["512,1024,2048,4096"], help="context lengths in tokens")
    parser.add_argument("--samples", type=int, default=20, help="samples per task and length")
    parser.add_argument(
        "--samples-per-task",
        nargs="+",
        default=None,
        metavar="TASK=N",
        help="another count for the tasks named, e.g. niah_single_1=300, or for one unit, niah_single_1@2048=800 "
        "(space or comma separated)",
    )
    parser.add_argument("--out", required=True, help=OUT_HELP)
    parser.add_argument("--seed", type=int, default=42, help="the generators' seed")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's tokens to generate")
    parser.add_argument("--dtype", choices=RULER_DTYPES, default="float32")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run="probseq.experiments.ruler_eval:main")


def _version() -> str:
    """The installed distribution's version (no import of the package: it would load torch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("probseq")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, in the order ``probseq --help`` lists it."""
    parser = argparse.ArgumentParser(
        prog="probseq", description="The probseq command line: probseq <command> --help for each command."
    )
    parser.add_argument("--version", action="version", version=f"probseq {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for add in (add_collision, add_bench, add_uncertainty, add_mqar, add_recall, add_reproduce):
        add(commands)
    add_reproduce(commands, "demo", help="alias of reproduce (--preset quick by default)")
    for add in (add_convert_fla, add_export_fla, add_pretrain, add_distill, add_ruler):
        add(commands)
    return parser
