#!/usr/bin/env python
"""Mutation testing of the fast paths (``make mutate``): does the test suite notice a plausible bug?

Each mutation replaces one exact snippet of ``src/probseq/ops/`` by a wrong variant. For every
mutation the script extracts a fresh copy of the repository's tracked files at ``HEAD``
(``git archive HEAD``; the working tree is never touched), applies the replacement (it fails loudly
unless the snippet occurs exactly once), and runs the relevant tests there with this virtual
environment::

    PYTHONPATH=<copy>/src:<copy> python -m pytest -x -q -p no:cacheprovider <test files>   (cwd = <copy>)

A mutation is *killed* when the tests fail (``-x`` stops at the first failure, which keeps it fast)
and *survives* when they pass. The unmutated copy must pass the same tests first.

A mutation marked ``equivalent`` computes the same function as the original on every input the
public boundary lets through; it is run and reported, but its survival is expected (and its death
would mean the equivalence argument is wrong).

Output: a markdown table on stdout and ``reports/mutation.json``. Exit status 1 when a mutation that
is not marked equivalent survives (or one marked equivalent is killed), 2 on a usage or setup error.

Usage::

    python scripts/mutate.py                 # every mutation
    python scripts/mutate.py --list          # the mutations (and whether each snippet still matches HEAD)
    python scripts/mutate.py --only NAME     # one (repeatable)
    python scripts/mutate.py --overlay tests/ops/test_new.py   # try an uncommitted file on top of HEAD
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from probseq_cli.parsers import plain_text

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "mutation.json"
DEFAULT_TESTS = [
    "tests/ops/test_equivalence.py",
    "tests/ops/test_varlen.py",
    "tests/ops/test_decoding.py",
    "tests/ops/test_reliability.py",
    "tests/test_presets.py",
    "tests/ops/test_oracle.py",
    "tests/ops/test_robustness.py",
    "tests/ops/test_validation.py",
]

BAYES_CHUNKED = "src/probseq/ops/bayes/chunked.py"
BAYES_RECURRENT = "src/probseq/ops/bayes/recurrent.py"
SUP_CHUNKED = "src/probseq/ops/superposition/chunked.py"
RUN = "src/probseq/ops/run.py"
VARLEN = "src/probseq/ops/varlen.py"
SEGSUM = "src/probseq/ops/segsum.py"
VALIDATION = "src/probseq/ops/validation.py"


class Mutation(NamedTuple):
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in ``file`` at HEAD
    new: str
    why: str
    equivalent: str | None = None  # why the mutant computes the same function (None: it must be killed)


MUTATIONS: list[Mutation] = [
    # 1. detached pivot in the covariance-reset path
    Mutation(
        "reset-pivot-detached",
        BAYES_CHUNKED,
        "w = k / s[..., None]",
        "w = k / s.detach()[..., None]",
        "Reset path (gamma=None, Gated DeltaNet): the write key w = k/s with the pivot s = |k|^2 + r detached. "
        "Forward values are identical; the backward loses ds/dk and ds/dbeta, so every gradient is wrong.",
    ),
    # 2. wrong index of the last token
    Mutation(
        "reset-last-token-off-by-one",
        BAYES_CHUNKED,
        "last = (length - 1) % size",
        "last = length % size",
        "Reset path: the final covariance P_T = I - u u^T/s is built from the token after the last one "
        "(a padding token or a wrong in-chunk position).",
    ),
    Mutation(
        "varlen-last-index-off-by-one",
        VARLEN,
        "self.last_index = (cu[1:] - 1).clamp_min(0)",
        "self.last_index = (cu[1:] - 2).clamp_min(0)",
        "Packed reset path: each sequence's final covariance is rebuilt from its second-to-last token.",
    ),
    # 3. dropped decays
    Mutation(
        "bayes-chunked-carry-decay-dropped",
        BAYES_CHUNKED,
        "mean = torch.baddbmm(decay_n * mean, innovation.transpose(-1, -2), w_n)",
        "mean = torch.baddbmm(mean, innovation.transpose(-1, -2), w_n)",
        "Chunked regression design: the inter-chunk carry M_C = A_C M_0 + E^T diag(A_C/A_j) W forgets A_C; "
        "only sequences longer than one chunk with alpha < 1 see it.",
    ),
    Mutation(
        "bayes-recurrent-alpha-dropped",
        BAYES_RECURRENT,
        'mean = decay * mean + torch.einsum("bhv,bhk->bhvk", innovation, u / s)',
        'mean = mean + torch.einsum("bhv,bhk->bhvk", innovation, u / s)',
        "Decoding step: M_t = alpha M_{t-1} + e w^T loses the decay of the old memory (the innovation still "
        "uses alpha, so the error is small when alpha ~ 1).",
    ),
    Mutation(
        "superposition-chunked-carry-decay-dropped",
        SUP_CHUNKED,
        "mean = carry_n * mean + v_n.transpose(-1, -2) @ k_n",
        "mean = mean + v_n.transpose(-1, -2) @ k_n",
        "Chunked superposition design (linear attention / GLA / Mamba-2): the state carried into the next "
        "chunk is not decayed by exp(b_C).",
    ),
    # 4. transposition (the covariance itself is symmetric: its transpose is an equivalent mutant)
    Mutation(
        "cov-transposed-in-pk",
        BAYES_CHUNKED,
        "pk = k_hat_n @ cov  #",
        "pk = k_hat_n @ cov.transpose(-1, -2)  #",
        "Covariance path: K-hat P_0 replaced by K-hat P_0^T.",
        equivalent="P_0 reaches the loop symmetrised (validation.check_state, the previous segment's "
        "symmetrised P_C, or I) and each chunk's update keeps it symmetric (an elementwise "
        "combination with I plus xz^T xz), so P^T = P up to rounding. Gradients agree too: the "
        "mutant equals the original on symmetric matrices, and P_0 only ever enters through "
        "0.5 (P + P^T), whose composition with either is the same function.",
    ),
    Mutation(
        "cholesky-factor-transposed",
        BAYES_CHUNKED,
        "x_n = torch.linalg.solve_triangular(ratio_sqrt_n * factor, torch.addcmul(rhs_n, cum_sqrt_n, pk), upper=False)",
        "x_n = torch.linalg.solve_triangular((ratio_sqrt_n * factor).transpose(-1, -2), "
        "torch.addcmul(rhs_n, cum_sqrt_n, pk), upper=True)",
        "Covariance path step 4: solve with the transposed Cholesky factor F^T instead of F (B = F F^T is "
        "symmetric, F is not): wrong write directions x_t, wrong pivots' meaning.",
    ),
    Mutation(
        "delta-rule-T-transposed",
        BAYES_CHUNKED,
        "t_low = decay_ratio * (k @ w.transpose(-1, -2))",
        "t_low = decay_ratio * (w @ k.transpose(-1, -2))",
        "Mean path step 6: T_ij = (A_i/A_j) k_i^T w_j becomes (A_i/A_j) w_i^T k_j; K W^T is not symmetric "
        "(W != K), so each erase key is paired with the wrong write key.",
    ),
    # 5. dropped symmetrisation
    Mutation(
        "chunked-symmetrisation-dropped",
        BAYES_CHUNKED,
        "cov = 0.5 * (cov + cov.transpose(-1, -2))",
        "cov = cov  # mutant: not symmetrised",
        "Covariance path: the final P_C is returned without 0.5 (P + P^T); rounding makes it slightly "
        "asymmetric, breaking the documented contract that P is exactly symmetric (docs/numerics.md).",
    ),
    Mutation(
        "check-state-symmetrisation-dropped",
        VALIDATION,
        "cov = 0.5 * (cov + cov.transpose(-1, -2))",
        "cov = cov  # mutant: not symmetrised",
        "Boundary: a given initial covariance is used as is; an asymmetric P_0 then changes the result "
        "(the chunked form uses P_0^T k_t where the reference and the recurrent form use P_0 k_t).",
    ),
    # more a careful reviewer would try
    Mutation(
        "chunked-innovation-sign",
        BAYES_CHUNKED,
        "torch.baddbmm(v_n, k_n, mean.transpose(-1, -2), alpha=-1)",
        "torch.baddbmm(v_n, k_n, mean.transpose(-1, -2), alpha=1)",
        "Chunked mean path: the innovation e_t = v~_t - k~_t M_0^T with the wrong sign (visible only from a "
        "nonzero start state, i.e. from the second chunk on or with an initial state).",
    ),
    Mutation(
        "recurrent-gamma-swapped",
        BAYES_RECURRENT,
        "cov_pred = retention[..., None] * cov + (1 - retention[..., None]) * eye",
        "cov_pred = (1 - retention[..., None]) * cov + retention[..., None] * eye",
        "Decoding step: the predicted covariance uses 1 - gamma for gamma (P^- = (1-gamma) I + gamma P); the "
        "write direction u still uses the right gamma, so only the covariance and variance drift.",
    ),
    Mutation(
        "missing-unitriangular",
        BAYES_CHUNKED,
        "upper=False, unitriangular=True\n",
        "upper=False, unitriangular=False\n",
        "Mean path step 6: (I + T) E = V solved with T's own diagonal k_t^T w_t = |k_t|^2/s_t instead of the "
        "implied unit diagonal.",
    ),
    Mutation(
        "segsum-includes-diagonal",
        SEGSUM,
        "strictly_lower = torch.ones(size, size, dtype=torch.bool, device=x.device).tril(-1)",
        "strictly_lower = torch.ones(size, size, dtype=torch.bool, device=x.device).tril(0)",
        "segsum off by one: out[t, j] = sum_{l=j}^{t} x_l instead of sum_{l=j+1}^{t}; every in-chunk ratio "
        "includes the earlier token's own gate.",
    ),
    Mutation(
        "log-retention-floor-no-gradient",
        SEGSUM,
        "floored = torch.where(retention < floor, floor + (retention - retention.detach()), retention)",
        "floored = torch.where(retention < floor, floor + 0 * retention, retention)",
        "log_retention: same value, but below the floor the gradient is 0 instead of 1/floor; a layer "
        "started at gamma = 0 could never learn gamma.",
    ),
    Mutation(
        "varlen-gamma-padding-zero",
        RUN,
        "packing.pad(dyn.retention, 1.0)",
        "packing.pad(dyn.retention, 0.0)",
        "run._pad_sequences: padding tokens after a shorter packed sequence get gamma = 0, resetting its "
        "covariance to I; the padding must be state-preserving (gamma = 1).",
    ),
    Mutation(
        "recurrent-noise-dropped",
        BAYES_RECURRENT,
        "s = ((k * u).sum(-1) + noise).clamp_min(",
        "s = ((k * u).sum(-1)).clamp_min(",
        "Decoding step: the innovation variance s = k^T u + r without r (every write a full, beta = 1 write).",
    ),
    Mutation(
        "superposition-per-channel-decay-axis",
        SUP_CHUNKED,
        "q_decayed = q * log_decay.cumsum(-2).exp()",
        "q_decayed = q * log_decay.cumsum(-1).exp()",
        "Chunked superposition, per-channel decay (GLA): the decay applied to the carried state is "
        "accumulated over key channels instead of over time.",
    ),
    Mutation(
        "chunked-variance-ratio-not-squared",
        BAYES_CHUNKED,
        "return xs, pivots, retention_ratio_sqrt.square(), prior_var, cov, failed",
        "return xs, pivots, retention_ratio_sqrt, prior_var, cov, failed",
        "Covariance path step 8: the predictive variance weights (x_j^T q_t)^2 by sqrt(G_t/G_j) instead of "
        "G_t/G_j (correct only where gamma is 0 or 1).",
    ),
    Mutation(
        "varlen-empty-sequence-loses-prior",
        RUN,
        "return torch.where(packing.nonempty[:, None, None, None], cov, prior)",
        "return cov",
        "Packed reset path: an empty sequence must keep its P_0; the mutant gives it I - u u^T/s of an "
        "unrelated token.",
    ),
]


class SetupError(RuntimeError):
    """The mutation run cannot start (bad snippet, failing baseline, ...): exit status 2."""


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True).stdout


def head_archive() -> tuple[str, bytes]:
    """The commit at HEAD and a tar of its tracked files (one snapshot for the whole run)."""
    sha = git("rev-parse", "HEAD").decode().strip()
    return sha, git("archive", "--format=tar", sha)


def archive_text(archive: bytes, path: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            member = tar.extractfile(path)
        except KeyError:
            member = None
        if member is None:
            raise SetupError(f"{path} is not a tracked file at HEAD")
        return member.read().decode()


def snippet_count(text: str, mutation: Mutation) -> int:
    return text.count(mutation.old)


def check_snippets(archive: bytes, mutations: list[Mutation]) -> None:
    problems = []
    for m in mutations:
        count = snippet_count(archive_text(archive, m.file), m)
        if count != 1:
            problems.append(
                f"  {m.name}: the snippet {m.old!r} occurs {count} times in {m.file} at HEAD (must be exactly once)"
            )
    if problems:
        raise SetupError("mutation snippets do not match HEAD:\n" + "\n".join(problems))


def extract(archive: bytes, dest: Path, overlays: list[str]) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters (< 3.11.4): our own git archive, trusted
            tar.extractall(dest)
    for rel in overlays:  # uncommitted files to try on top of HEAD (e.g. a new test)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / rel).read_bytes())


def apply_mutation(copy: Path, mutation: Mutation) -> None:
    path = copy / mutation.file
    text = path.read_text()
    count = snippet_count(text, mutation)
    if count != 1:
        raise SetupError(f"{mutation.name}: snippet occurs {count} times in {mutation.file} (must be exactly once)")
    path.write_text(text.replace(mutation.old, mutation.new, 1))


def python_exe() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def pytest_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{copy / 'src'}{os.pathsep}{copy}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_import_path(copy: Path) -> None:
    """The copy's package must shadow the editable install of the working tree."""
    out = subprocess.run(
        [python_exe(), "-c", "import probseq, tests.conftest; print(probseq.__file__); print(tests.conftest.__file__)"],
        cwd=copy,
        env=pytest_env(copy),
        capture_output=True,
        text=True,
    )
    paths = out.stdout.split()
    if (
        out.returncode != 0
        or len(paths) != 2
        or not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in paths)
    ):
        raise SetupError(f"the copy's probseq is not the one imported (got {out.stdout!r} {out.stderr[-2000:]!r})")


FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")


def run_tests(copy: Path, tests: list[str], timeout: float) -> dict:
    """Run the tests in ``copy``; return passed, first failing test, its message, seconds, return code."""
    cmd = [python_exe(), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *tests]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=pytest_env(copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pytest process we started and its children
        output, _ = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - start
    first, message = None, None
    for line in output.splitlines():
        match = FAILED_LINE.match(line.strip())
        if match:
            first, message = match.group(2), (match.group(3) or match.group(1)).strip()
            break
    if timed_out:
        first, message = first or "(timeout)", f"timed out after {timeout:g} s"
    elif proc.returncode != 0 and first is None:
        first = f"(pytest exit {proc.returncode}, no failing test reported)"
        message = " | ".join(output.strip().splitlines()[-3:])
    summary = next((line.strip("= ") for line in reversed(output.splitlines()) if line.strip()), "")
    return dict(
        passed=proc.returncode == 0 and not timed_out,
        first_failing_test=first,
        summary=summary,
        message=message[:300] if message else None,
        seconds=round(seconds, 1),
        returncode=proc.returncode,
        timed_out=timed_out,
        tail=output[-3000:],
    )


def status_of(mutation: Mutation, result: dict) -> str:
    if result["passed"]:
        return "equivalent" if mutation.equivalent else "SURVIVED"
    return "killed (marked equivalent!)" if mutation.equivalent else "killed"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| mutation | file | killed? | first failing test | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['file'].removeprefix('src/probseq/ops/')} | {r['status']} | "
            f"{r['first_failing_test'] or '—'} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=plain_text(__doc__.split("\n\n")[0]), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument(
        "--tests",
        nargs="+",
        metavar="FILE",
        default=None,
        help="test files to run (default: the fast-path suite, see DEFAULT_TESTS)",
    )
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="PATH",
        help="copy this working-tree file on top of HEAD in every copy (e.g. an uncommitted test)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per test run (a timeout counts as killed)"
    )
    parser.add_argument("--json", type=Path, default=REPORT, help=f"report path (default {REPORT.relative_to(REPO)})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SetupError("duplicate mutation names")
    try:
        sha, archive = head_archive()
    except subprocess.CalledProcessError as exc:
        raise SetupError(f"git archive of HEAD failed: {exc.stderr.decode(errors='replace')}") from exc

    if args.list:
        for m in MUTATIONS:
            count = snippet_count(archive_text(archive, m.file), m)
            flag = "ok" if count == 1 else f"SNIPPET x{count}"
            mark = " [equivalent]" if m.equivalent else ""
            print(f"{m.name:44s} {m.file.removeprefix('src/probseq/ops/'):26s} {flag}{mark}\n    {m.why}")
        return 0

    selected = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SetupError(f"unknown mutation(s) {unknown}; --list shows the names")
        selected = [m for m in MUTATIONS if m.name in args.only]
    check_snippets(archive, selected)
    for rel in args.overlay:
        if not (REPO / rel).is_file():
            raise SetupError(f"--overlay {rel}: no such file in the working tree")

    tests = args.tests or DEFAULT_TESTS
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probseq-mutate-base-") as tmp:
        copy = Path(tmp)
        extract(archive, copy, args.overlay)
        missing = [t for t in tests if not (copy / t.split("::")[0]).exists()]
        if missing:
            raise SetupError(f"test files not in HEAD (commit them or pass --overlay): {missing}")
        check_import_path(copy)
        print(f"HEAD {sha[:12]}: baseline (unmutated copy) ...", file=sys.stderr, flush=True)
        baseline = run_tests(copy, tests, args.timeout)
    if not baseline["passed"]:
        raise SetupError(
            f"the unmutated copy of HEAD fails the tests ({baseline['first_failing_test']}: "
            f"{baseline['message']}); fix that first\n{baseline['tail']}"
        )
    print(f"baseline passed in {baseline['seconds']:.1f} s ({baseline['summary']})", file=sys.stderr, flush=True)

    rows = []
    bar = tqdm(selected, unit="mutant", file=sys.stderr, dynamic_ncols=True, disable=None)  # a terminal only
    for m in bar:
        bar.set_postfix_str(m.name)
        with tempfile.TemporaryDirectory(prefix="probseq-mutate-") as tmp:
            copy = Path(tmp)
            extract(archive, copy, args.overlay)
            apply_mutation(copy, m)
            result = run_tests(copy, tests, args.timeout)
        row = dict(
            name=m.name,
            file=m.file,
            why=m.why,
            equivalent=m.equivalent,
            old=m.old,
            new=m.new,
            status=status_of(m, result),
            killed=not result["passed"],
            **result,
        )
        unexpected = (m.equivalent and row["killed"]) or (row["first_failing_test"] or "").startswith("(")
        if not unexpected:
            row.pop("tail")  # keep pytest's output only where it explains something unexpected
        rows.append(row)
        tqdm.write(
            f"{row['status']:>10s}  {m.name}  {row['first_failing_test'] or ''}  ({row['seconds']:.1f} s)",
            file=sys.stderr,
        )
    wall = time.perf_counter() - wall

    survived = [r["name"] for r in rows if r["status"] == "SURVIVED"]
    wrongly_equivalent = [r["name"] for r in rows if r["equivalent"] and r["killed"]]
    report = dict(
        head=sha,
        tests=tests,
        overlay=args.overlay,
        baseline_seconds=baseline["seconds"],
        baseline_summary=baseline["summary"],
        wall_seconds=round(wall, 1),
        killed=sum(r["killed"] for r in rows),
        total=len(rows),
        survived=survived,
        equivalent=[r["name"] for r in rows if r["equivalent"] and not r["killed"]],
        marked_equivalent_but_killed=wrongly_equivalent,
        mutations=rows,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")

    print(markdown_table(rows))
    print(
        f"\n{report['killed']}/{len(rows)} killed, {len(report['equivalent'])} equivalent, "
        f"{len(survived)} survived; wall {wall:.0f} s (baseline {baseline['seconds']:.0f} s); HEAD {sha[:12]}; "
        f"report {args.json}"
    )
    for r in rows:
        if r["equivalent"]:
            print(f"equivalent: {r['name']}: {r['equivalent']}")
    if survived:
        print(f"SURVIVED (a hole in the tests): {', '.join(survived)}")
    if wrongly_equivalent:
        print(f"marked equivalent but killed (the equivalence argument is wrong): {', '.join(wrongly_equivalent)}")
    return 1 if survived or wrongly_equivalent else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as exc:
        print(f"mutate: error: {exc}", file=sys.stderr)
        sys.exit(2)
