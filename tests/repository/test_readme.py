"""Every ```python block of README.md runs as written (each in a fresh namespace, in a temporary working
directory, single-threaded). A block that needs a directory which does not exist may opt out with the
comment ``# readme-test: skip``."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers import REPO

README = REPO / "README.md"
SKIP = "# readme-test: skip"


def python_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced ```python block, ``line`` being the block's first code line."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    ]


BLOCKS = python_blocks()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_has_the_snippets():
    assert len(BLOCKS) >= 6
    code = "\n".join(block for _, block in BLOCKS)
    for name in (
        "BayesianLayer",
        "ProbSeqConfig",
        "save_pretrained",
        "AutoModelForCausalLM.from_pretrained",
        "generate(",
        "probseq.zoology.BayesianMixer",
        "run_uncertainty",
    ):
        assert name in code, name


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path, monkeypatch):
    if SKIP in code:
        pytest.skip("marked '# readme-test: skip'")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
