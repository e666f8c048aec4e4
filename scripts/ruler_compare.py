"""RULER of the distillation study's arms side by side: ``python scripts/ruler_compare.py [RESULTS] [--context N]``.

The entry point of :mod:`probseq.experiments.ruler_compare` (its docstring says what it reads and writes): from
``RESULTS/ruler/<arm>/`` (``probseq ruler``'s folders; arms ``teacher``, ``gdn``, ``bayes``, ``bayes_<variant>``,
discovered from the folders present) it writes ``RESULTS/ruler/summary.csv`` (arm × task × length, long format),
``paired.csv`` (each Bayesian arm − ``gdn`` and each arm − ``teacher`` over shared prompts, per task and length and
for the niah mean, with verdicts, flags and the samples a half-width of 5 points needs), ``comparison.md`` and
``comparison.png``. An arm in a pair without its predictions is an error (exit status 2).
"""

from __future__ import annotations

import sys

from probseq.experiments.ruler_compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
