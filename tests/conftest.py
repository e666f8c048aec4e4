"""Shared fixtures (the helpers that are not fixtures are in tests/helpers.py)."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine, where a second OpenMP thread waiting for a busy core only slows them
    down: one intra-op thread for a test module (its module-scoped fixtures included), restored afterwards. A file
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def runs_in_tmp(tmp_path, monkeypatch):
    """The experiments' caches under the test's ``tmp_path``: unfinished training runs (``$XDG_CACHE_HOME``) and the
    background runs' results that ``probseq reproduce --preset cpu`` reads (``$PROBSEQ_EXPERIMENTS``). A file opts in
    with ``pytestmark = pytest.mark.usefixtures("runs_in_tmp")``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PROBSEQ_EXPERIMENTS", str(tmp_path / "experiments"))


@pytest.fixture(autouse=True)
def _quiet_fla():
    warnings.filterwarnings("ignore", message=".*Triton is not supported.*")
    warnings.filterwarnings("ignore", message=".*roll back to CPU.*")
