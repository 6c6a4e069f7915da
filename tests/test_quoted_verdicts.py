"""The docs quote the committed study reports' computed verdicts, word for word."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("quote_verdicts", ROOT / "scripts/quote_verdicts.py")
quote_verdicts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quote_verdicts)

REPORT = """# ptjf report

## Verdicts

Computed from this report's numbers.

- **Holds** — a claim: the numbers.

## Notes
"""


def test_every_quoted_block_matches_its_committed_report():
    quoted = []
    for doc in quote_verdicts.DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        refreshed, stale = quote_verdicts.quote(text)
        assert stale == [], f"{doc}: run python scripts/quote_verdicts.py"
        assert refreshed == text
        quoted += re.findall(r"<!-- verdicts: ([^ ]+) -->", text)
    studies = {Path(q).parent.name for q in quoted}
    assert {"bible_en_fr_tl", "bible_en_fr_es", "bible_en_es_tl"} <= studies
    for report in quoted:
        assert "## Verdicts" in (ROOT / report).read_text(encoding="utf-8")


def test_a_stale_block_is_named_and_rewritten(tmp_path):
    (tmp_path / "r.md").write_text(REPORT)
    doc = "intro\n<!-- verdicts: r.md -->\nhand-written conclusion\n<!-- /verdicts -->\nend\n"
    new, stale = quote_verdicts.quote(doc, tmp_path)
    assert stale == ["r.md"]
    assert new == (
        "intro\n<!-- verdicts: r.md -->\nComputed from this report's numbers.\n\n"
        "- **Holds** — a claim: the numbers.\n<!-- /verdicts -->\nend\n"
    )
    assert quote_verdicts.quote(new, tmp_path) == (new, [])


def test_a_report_without_verdicts_is_refused(tmp_path):
    (tmp_path / "r.md").write_text("# ptjf report\n\n## Notes\n")
    doc = "<!-- verdicts: r.md -->\nx\n<!-- /verdicts -->\n"
    with pytest.raises(SystemExit, match="no '## Verdicts' section"):
        quote_verdicts.quote(doc, tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):
        quote_verdicts.quote(doc.replace("r.md", "gone.md"), tmp_path)
