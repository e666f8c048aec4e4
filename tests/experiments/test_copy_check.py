"""scripts/copy_check.py: the first-copy and second-copy losses of a random sequence repeated once, checked on
models whose answers are known: a perfect copier and a model that ignores its context."""

from __future__ import annotations

import math
import runpy
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import REPO

copy_losses = runpy.run_path(str(REPO / "scripts" / "copy_check.py"))["copy_losses"]
VOCAB, LENGTH = 50, 12


class _Copier(torch.nn.Module):
    """Uniform over the vocabulary in the first copy; in the second, certain of the token ``LENGTH`` back — and,
    by a cheat no model has, certain of the second copy's first token too (so a first-copy slice that reached it
    would fall below log V)."""

    def forward(self, input_ids):
        batch, steps = input_ids.shape
        logits = torch.zeros(batch, steps, VOCAB)
        nxt = input_ids[:, : steps - LENGTH]  # at position t ≥ LENGTH − 1: the token after position t − LENGTH
        logits[:, LENGTH - 1 : steps - 1].scatter_(-1, nxt[..., None], 50.0)
        return SimpleNamespace(logits=logits)


class _Blind(torch.nn.Module):
    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB))


def test_a_copier_predicts_the_second_copy_and_a_blind_model_does_not():
    first, second = copy_losses(_Copier(), VOCAB, LENGTH, sequences=4, low=0, seed=0)
    assert first == pytest.approx(math.log(VOCAB), abs=1e-5) and second < 1e-6
    first, second = copy_losses(_Blind(), VOCAB, LENGTH, sequences=4, low=0, seed=0)
    assert first == pytest.approx(math.log(VOCAB), abs=1e-5) and second == pytest.approx(first, abs=1e-5)
