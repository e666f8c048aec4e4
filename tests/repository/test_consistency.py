"""The repository explains itself: every citation points to a file in it, every relative link of its Markdown
resolves, results/README.md lists every result, and the version is the same wherever it is written."""

from __future__ import annotations

import re

import pytest

import probseq
from tests.helpers import OUTSIDE_DOCUMENTS, REPO

CODE = sorted(
    path
    for folder in ("src", "tests", "scripts")
    for path in (REPO / folder).rglob("*")
    if path.suffix in (".py", ".sh") and "__pycache__" not in path.parts
)
MARKDOWN = sorted(
    [
        REPO / "README.md",
        REPO / "CHANGELOG.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "results").glob("*/README.md"),
        REPO / "results" / "README.md",
    ]
)

#: A path into the repository's documents or results, as docstrings, help texts and comments cite them.
CITED_PATH = re.compile(r"(?<![\w/.])((?:docs|results)/[\w./-]*\w)")
#: A Markdown link's target: ``[text](target)``.
LINK = re.compile(r"\]\(([^)\s]+)\)")


#: An issue of a tracker outside the repository: the word, then its number.
TRACKER_ISSUE = re.compile(r"\bissues? ?-?#?\d+", re.IGNORECASE)


def test_no_citation_of_a_document_outside_the_repository():
    files = [*CODE, *MARKDOWN, REPO / "Makefile"]
    cited = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE_DOCUMENTS.search(line)
    ]
    assert not cited, "\n".join(cited)


def test_code_cites_no_issue_of_an_outside_tracker():
    files = [*CODE, REPO / "Makefile"]
    cited = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if TRACKER_ISSUE.search(line)
    ]
    assert not cited, "\n".join(cited)


def test_every_cited_document_or_result_exists():
    """In docstrings, help texts and comments (the shell scripts also name the folders they create: not checked)."""
    cited = [path for path in CODE if path.suffix == ".py"] + [REPO / "Makefile"]
    missing = [
        f"{path.relative_to(REPO)}: {match.group(1)}"
        for path in cited
        for match in CITED_PATH.finditer(path.read_text())
        if not (REPO / match.group(1)).exists()
    ]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("page", MARKDOWN, ids=[str(page.relative_to(REPO)) for page in MARKDOWN])
def test_every_relative_link_resolves(page):
    targets = [
        target.split("#")[0]
        for target in LINK.findall(page.read_text())
        if not target.startswith(("http://", "https://", "mailto:", "#"))
    ]
    missing = [target for target in targets if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to {missing}"


def test_results_readme_links_every_result_and_the_readme_links_it():
    index = (REPO / "results" / "README.md").read_text()
    linked = {target.rstrip("/") for target in LINK.findall(index)}
    entries = {path.name for path in (REPO / "results").iterdir() if path.name != "README.md"}
    assert entries <= linked, f"results/README.md does not link {sorted(entries - linked)}"
    readme = (REPO / "README.md").read_text()
    evidence = readme[readme.index("## Evidence") :]
    evidence = evidence[: evidence.index("\n## ")]
    assert "(results/README.md)" in evidence and evidence.count("](results/") >= 5


def pyproject() -> dict:
    """pyproject.toml, parsed (tomllib: Python 3.11+)."""
    return pytest.importorskip("tomllib").loads((REPO / "pyproject.toml").read_text())


def test_the_version_is_the_same_everywhere():
    version = pyproject()["project"]["version"]
    assert version == probseq.__version__
    assert re.search(r"^version: (\S+)$", (REPO / "CITATION.cff").read_text(), re.MULTILINE).group(1) == version
    released = re.findall(r"^## \[(\d[^\]]*)\]", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert released and released[0] == version


def test_the_package_declares_its_type_hints():
    assert (REPO / "src" / "probseq" / "py.typed").is_file()
    package_data = pyproject()["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["probseq"]


def test_tests_are_named_for_what_they_check_not_by_an_outside_trackers_numbers():
    numbered = [
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "tests").rglob("test_*.py")
        for name in re.findall(r"^\s*def (test_(?:row\d+|\d+|extra)_\w*)", path.read_text(), re.MULTILINE)
    ]
    assert not numbered, "\n".join(numbered)
