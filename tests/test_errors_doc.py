"""docs/errors.md stays true: every row names a test that exists and a message ptjf prints.

A row is `| what went wrong | `excerpt` | what to do | `tests/test_x.py::test_name` |`. The
excerpt must appear verbatim in the named test file (which asserts it) or in ptjf's own
sources (the test then asserts the message that text builds).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from ptjf.commands import cli

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"
SECTIONS = (
    "Gin and the command line",
    "Tasks, mixtures and rates",
    "Data and vocabularies",
    "Model and sequence lengths",
    "Checkpoints and the stage switch",
    "Training",
    "Multi-host and meshes",
    "Storage (local disk and gs://)",
    "Metrics and reports",
)
HEADER = ("What went wrong", "What ptjf says", "What to do", "Test")
EXCERPT = re.compile(r"`([^`]+)`")
TEST_REF = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")


class Row(NamedTuple):
    line: int
    section: str
    problem: str
    excerpt: str
    fix: str
    test_file: str
    test_name: str


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_rows(text: str) -> list[Row]:
    """The catalogue's rows, in order; a malformed row fails here with its line number."""
    rows, section = [], ""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = _cells(line)
        if tuple(cells) == HEADER:
            continue
        assert len(cells) == 4, f"errors.md:{number}: expected 4 cells, got {len(cells)}"
        excerpt, test = EXCERPT.fullmatch(cells[1]), TEST_REF.fullmatch(cells[3])
        assert excerpt, f"errors.md:{number}: the message cell must be one `excerpt`"
        assert test, f"errors.md:{number}: the test cell must be `tests/test_x.py::test_name`"
        rows.append(Row(number, section, cells[0], excerpt[1], cells[2], test[1], test[2]))
    return rows


ROWS = parse_rows(DOC.read_text(encoding="utf-8"))


@functools.cache
def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(_source(path), filename=str(path))
    return frozenset(
        n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    )


@functools.cache
def _ptjf_sources() -> tuple[str, ...]:
    return tuple(_source(p) for d in ("ptjf", "tasks") for p in sorted((ROOT / d).rglob("*.py")))


def test_the_catalogue_has_every_section_and_at_least_30_rows():
    headings = re.findall(r"^## (.+)$", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert [h for h in headings if h in SECTIONS] == list(SECTIONS)
    assert {row.section for row in ROWS} == set(SECTIONS)
    assert len(ROWS) >= 30


def test_no_row_is_listed_twice():
    problems = [row.problem for row in ROWS]
    assert sorted({p for p in problems if problems.count(p) > 1}) == []
    pairs = [(row.excerpt, row.test_file, row.test_name) for row in ROWS]
    assert sorted({p for p in pairs if pairs.count(p) > 1}) == []


def test_every_row_says_what_to_do():
    assert [row.line for row in ROWS if len(row.fix) < 8] == []


@pytest.mark.parametrize("row", ROWS, ids=[f"line{r.line}-{r.test_name}" for r in ROWS])
def test_row_names_an_existing_test_and_a_message_ptjf_prints(row):
    path = ROOT / row.test_file
    assert path.is_file(), f"errors.md:{row.line}: {row.test_file} does not exist"
    assert row.test_name in _test_names(path), (
        f"errors.md:{row.line}: {row.test_file} defines no {row.test_name}"
    )
    where = [_source(path), *_ptjf_sources()]
    assert any(row.excerpt in text for text in where), (
        f"errors.md:{row.line}: {row.excerpt!r} is neither in {row.test_file} nor in ptjf/ "
        "or tasks/"
    )


def test_the_cli_behaves_as_the_introduction_says(capsys):
    text = DOC.read_text(encoding="utf-8")
    assert "ptjf <command>: error: <message>" in text and "**status 2**" in text
    assert cli.main(["rates"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "ptjf rates: error: Give --mixture NAME or --sizes task=size,… (see `ptjf rates --help`).\n"
    )


def test_the_parser_rejects_a_row_without_an_excerpt_or_a_test():
    good = "| x | `msg` | do y | `tests/test_a.py::test_b` |"
    assert parse_rows(f"## S\n{good}\n") == [
        Row(2, "S", "x", "msg", "do y", "tests/test_a.py", "test_b")
    ]
    with pytest.raises(AssertionError, match="one `excerpt`"):
        parse_rows("| x | msg | do y | `tests/test_a.py::test_b` |")
    with pytest.raises(AssertionError, match=r"tests/test_x\.py::test_name"):
        parse_rows("| x | `msg` | do y | tests/test_a.py |")
