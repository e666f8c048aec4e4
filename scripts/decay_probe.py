"""How long the recurrent mixers of trained MQAR runs remember: the per-token decay of every Gated-DeltaNet-family
mixer (Gated DeltaNet, the Bayesian Layer), per head, on MQAR data — trained and at step 0.

    python scripts/decay_probe.py --run RUN_OR_FOLDER [--run …] [--segment 256 64] [--examples 64] --out DIR

The decay is the layer's own: ``g = −exp(A_log) · softplus(a_proj x + dt_bias)`` (log decay per token and head,
``α = exp(g)``), taken from the mixer's ``filter_inputs`` on the input it receives, on ``--examples`` MQAR examples of
the segment ``(T, k)`` in the run's vocabulary (:func:`probseq.tasks.multiquery_ar`, ``--seed``). Per run, mixer
layer and head (``decay.csv``):

- ``median_decay``: the median of ``α`` over examples and tokens;
- ``half_life``: ``ln ½ / median(g)``, in tokens (``inf`` for a head that does not decay);
- ``kept_over_segment``: ``exp(Σ_t g_t)`` over the segment, median over examples — what is left at the end of the
  segment of what was written at its start;
- ``short_share``: the share of tokens with ``α < ½`` (the head forgets within one token there).

Every run also appears at step 0 (``weights = init``): its config's model rebuilt from its seed
(:func:`probseq.train.trainer.build_model`), i.e. the weights it started from. Runs are found as ``probseq mqar
eval`` finds them (:func:`probseq.train.saved.find_runs`: a run folder, or every run under a folder).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from probseq.experiments.common import write_csv
from probseq.train.saved import find_runs
from probseq.train.trainer import FINAL_DIR


def decaying_mixers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The Gated-DeltaNet-family mixers of ``model``: those that hand their filter a log decay ``g``
    (``filter_inputs``: :class:`probseq.layers.BayesianLayer` and its subclasses)."""
    return [(name, module) for name, module in model.named_modules() if hasattr(module, "filter_inputs")]


def log_decays(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{mixer name: g [B, T, H]}`` of every decaying mixer of ``model`` on ``input_ids`` ``[B, T]``: the ``g`` the
    mixer's own ``filter_inputs`` computes from the input it receives in ``model``'s forward."""
    mixers = decaying_mixers(model)
    inputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, kwargs):
            inputs[name] = args[0] if args else kwargs["hidden_states"]

        return hook

    handles = [module.register_forward_pre_hook(keep(name), with_kwargs=True) for name, module in mixers]
    try:
        with torch.no_grad():
            model(input_ids)
            return {name: module.filter_inputs(inputs[name])["g"].double() for name, module in mixers}
    finally:
        for handle in handles:
            handle.remove()


def decay_rows(g: torch.Tensor) -> list[dict[str, float]]:
    """Per head of ``g`` ``[B, T, H]``: the summary columns of the module docstring."""
    rows = []
    for head in range(g.shape[-1]):
        values = g[..., head]
        median = values.median().item()
        rows.append(
            {
                "head": head,
                "median_decay": math.exp(median),
                "half_life": math.log(0.5) / median if median < 0 else math.inf,
                "kept_over_segment": values.sum(1).exp().median().item(),
                "short_share": (values < math.log(0.5)).double().mean().item(),
            }
        )
    return rows


def probe(paths: list[str], seq_len: int, num_kv_pairs: int, examples: int, seed: int) -> list[dict]:
    """The rows of ``decay.csv`` for every MQAR run under ``paths``."""
    from probseq.models.mqar_model import ZoologyModel
    from probseq.tasks import multiquery_ar
    from probseq.train.trainer import build_model

    runs = [run for path in paths for run in find_runs(path, "mqar", log=lambda line: print(line, file=sys.stderr))]
    rows = []
    for run in runs:
        spec = run.config.model
        data = multiquery_ar(run.config.data.vocab, examples, seq_len, seed, num_kv_pairs=num_kv_pairs)
        models = {"init": build_model(run.config), "trained": ZoologyModel.from_pretrained(run.folder / FINAL_DIR)}
        identity = {
            "run": run.name,
            "mixer": spec.mixer,
            "learning_rate": run.config.learning_rate,
            "seed": run.config.seed,
            "expand_v": spec.expand_v,
            "steps": run.config.max_steps,
        }
        for weights, model in models.items():
            decays = log_decays(model.double().eval(), data.inputs)  # float64: the decay as exact as it gets
            if not decays:
                print(f"skipped: run {run.name} has no Gated-DeltaNet-family mixer", file=sys.stderr)
                break
            for layer, g in decays.items():
                rows += [{**identity, "weights": weights, "layer": layer, **row} for row in decay_rows(g)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a run folder, or a folder of runs (repeat)")
    parser.add_argument("--segment", nargs=2, type=int, default=(256, 64), metavar=("T", "K"))
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=12345, help="the MQAR data's seed")
    parser.add_argument("--out", required=True, help="folder for decay.csv")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")
    torch.set_num_threads(1)
    try:
        rows = probe(args.run, *args.segment, args.examples, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "decay.csv", rows)
    for row in rows:
        print(
            f"{row['run']:<48} {row['weights']:<7} {row['layer']:<10} head {row['head']}: "
            f"α {row['median_decay']:.3f}, half-life {row['half_life']:.3g} tokens, "
            f"kept over {args.segment[0]} {row['kept_over_segment']:.3g}, α<½ {row['short_share']:.2f}"
        )
    print(f"wrote {out / 'decay.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
