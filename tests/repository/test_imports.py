"""The package's import structure: the library never imports the evidence code (checked statically over every
import statement, lazy ones included), and ``import probseq`` / ``probseq.ops`` / ``probseq.layers`` need torch and
einops only: no third-party package beyond what ``import torch`` loads itself (checked in fresh interpreters)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO

SRC = REPO / "src"

#: The library: what ``pip install probseq`` (with the ``hf`` extra for ``models`` and ``interop``) is for
#: (docs/architecture.md, floors 0–4).
LIBRARY = (
    "ops",
    "design",
    "presets",
    "theory",
    "types",
    "layers",
    "models",
    "interop",
    "cpu",
    "console",
    "files",
    "oracles",
    "zoology",
)
#: The evidence code: experiments, training, their tasks and data, the benchmark (floors 5–7). It may import the
#: library; never the other way round.
EVIDENCE = ("train", "tasks", "experiments", "ruler", "data", "bench", "stats")
#: Neither: the command line's glue (it imports a command's module by the name its parser gives).
GLUE = ("cli",)

#: Imports the light core must not load (each costs seconds or is an optional extra).
HEAVY = (
    "transformers",
    "accelerate",
    "matplotlib",
    "triton",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "wonderwords",
    "fla",
)

_MODULE_NAME = re.compile(r"probseq(\.\w+)+(:\w+)?")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name ``source`` may import: ``import`` and ``from … import`` statements anywhere (inside
    functions, ``try`` and ``if TYPE_CHECKING`` blocks too; relative ones resolved against ``module``), each
    ``from a import b`` also as ``a.b`` (``b`` may be a submodule), and every string constant that is a dotted
    ``probseq`` name (``importlib.import_module("probseq.x")``, ``"probseq.x:main"``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            names.add(node.value.partition(":")[0])
    return names


def import_graph() -> dict[str, set[str]]:
    """``module → the probseq modules it imports`` for every module under ``src/probseq``."""
    files = {module_name(path): path for path in sorted((SRC / "probseq").rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        names = imported_names(path.read_text(), module, path.name == "__init__.py")
        targets = set()
        for name in names:  # a name is its longest prefix that is a module ("probseq.ops.bayes_filter" → ops)
            parts = name.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            if parts:
                targets.add(".".join(parts))
        graph[module] = targets - {module}
    return graph


def group(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_import_collector_sees_lazy_and_string_imports():
    source = textwrap.dedent("""
        import importlib
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import probseq.data
        def lazy():
            from probseq.train import trainer
            try:
                from ..tasks import mqar
            except ImportError:
                pass
            return importlib.import_module("probseq.experiments.recall"), "probseq.bench:main"
        DOC = "see probseq.ruler for the tasks"
    """)
    names = imported_names(source, "probseq.layers.x", is_package=False)
    assert {
        "probseq.data",
        "probseq.train",
        "probseq.train.trainer",
        "probseq.tasks.mqar",
        "probseq.experiments.recall",
        "probseq.bench",
    } <= names
    assert not any(name.startswith("probseq.ruler") for name in names)  # a sentence is not an import


def test_every_module_is_library_evidence_or_glue():
    unplaced = sorted(m for m in import_graph() if m != "probseq" and group(m) not in LIBRARY + EVIDENCE + GLUE)
    assert not unplaced, f"place these modules in LIBRARY, EVIDENCE or GLUE: {unplaced}"


def test_the_library_never_imports_the_evidence_code():
    """Transitively: no chain of imports from ``probseq`` or a library module reaches the evidence code."""
    graph = import_graph()
    violations = []
    for start in sorted(m for m in graph if m == "probseq" or group(m) in LIBRARY):
        path, seen, frontier = {start: [start]}, {start}, [start]
        while frontier:
            module = frontier.pop()
            for target in sorted(graph[module]):
                if target in seen:
                    continue
                seen.add(target)
                path[target] = path[module] + [target]
                if group(target) in EVIDENCE:
                    violations.append(" -> ".join(path[target]))
                else:
                    frontier.append(target)
    assert not violations, "the library imports the evidence code:\n" + "\n".join(violations)
    assert any(group(t) in LIBRARY for t in graph["probseq.bench"])  # the graph is not empty: evidence → library


def _run(script: str) -> subprocess.CompletedProcess:
    env_script = "import os\nos.environ.setdefault('OMP_NUM_THREADS', '1')\n" + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", env_script], capture_output=True, text=True, timeout=300, cwd=SRC.parent
    )


@pytest.mark.integration
def test_the_core_imports_torch_and_einops_only():
    """After ``import torch``, ``import probseq``, ``probseq.ops`` and ``probseq.layers`` add no third-party
    package but einops, and none of :data:`HEAVY` (transformers, accelerate, matplotlib, triton, …)."""
    result = _run(f"""
        import json, sys
        def top():
            return {{name.partition(".")[0] for name in sys.modules}}
        import torch
        base, report = top(), {{}}
        for module in ("probseq", "probseq.ops", "probseq.layers", "probseq.design", "probseq.presets",
                       "probseq.theory"):
            __import__(module)
            report[module] = dict(heavy=sorted(n for n in {HEAVY!r} if n in sys.modules),
                                  new=sorted(n for n in top() - base if n not in sys.stdlib_module_names))
        print(json.dumps(report))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for module, loaded in report.items():
        assert loaded["heavy"] == [], f"import {module} loads {loaded['heavy']}"
        assert set(loaded["new"]) <= {"probseq", "einops"}, f"import {module} loads {loaded['new']}"


@pytest.mark.integration
def test_the_core_works_with_the_optional_dependencies_absent():
    """With every optional package unimportable, the layers build, run forward and backward, and so do the
    filters and presets; ``probseq.models`` then fails on transformers, by name."""
    result = _run(f"""
        import importlib.abc, sys, warnings
        BLOCKED = {set(HEAVY) | {"tqdm", "numpy"}!r}

        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Absent())
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch's, without numpy
        import torch
        import probseq
        from probseq import presets
        from probseq.layers import MIXERS
        from probseq.ops import bayes_filter

        torch.manual_seed(0)
        sizes = dict(bayesian=dict(num_heads=2, head_dim=16), gated_deltanet=dict(num_heads=2, head_dim=16),
                     deltanet=dict(num_heads=2), linear_attention=dict(num_heads=2), mamba2=dict(head_dim=16),
                     attention=dict(num_heads=2))
        for name, cls in MIXERS.items():
            layer = cls(hidden_size=32, **sizes[name])
            y = layer(torch.randn(2, 9, 32))[0]
            y.sum().backward()
            assert y.shape == (2, 9, 32) and bool(y.isfinite().all()), name
        q, k, v = torch.randn(3, 1, 8, 2, 4).unbind(0)
        out = bayes_filter(q, k, v, None, torch.rand(1, 8, 2), torch.rand(1, 8, 2))
        assert out.output.shape == (1, 8, 2, 4)
        assert sorted(n for n in BLOCKED if n in sys.modules) == []
        try:
            probseq.models
        except ModuleNotFoundError as error:
            print(error.name)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["transformers"]


@pytest.mark.integration
def test_probseq_models_registers_the_auto_classes_on_first_access():
    result = _run("""
        import sys
        import probseq
        assert "probseq.models" not in sys.modules and "transformers" not in sys.modules
        assert "models" in dir(probseq) and probseq.layers.BayesianLayer
        from transformers import AutoConfig, AutoModelForCausalLM
        try:
            AutoConfig.for_model("probseq")
        except ValueError:
            print("not registered before")
        probseq.models  # the attribute imports the package, which registers the Auto classes
        config = AutoConfig.for_model("probseq", vocab_size=16, hidden_size=16, num_hidden_layers=1, num_heads=2,
                                      head_dim=8)
        print(type(config).__name__, type(AutoModelForCausalLM.from_config(config)).__name__)
        try:
            probseq.no_such_thing
        except AttributeError as error:
            print("AttributeError", error)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["not registered before", "ProbSeqConfig ProbSeqForCausalLM"]
    assert lines[2] == "AttributeError module 'probseq' has no attribute 'no_such_thing'"


@pytest.mark.parametrize("module", ["probseq.layers", "probseq.ops"])
def test_the_lazy_attribute_is_the_module(module):
    import importlib

    import probseq

    assert getattr(probseq, module.partition(".")[2]) is importlib.import_module(module)
