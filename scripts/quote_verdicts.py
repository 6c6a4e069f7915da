"""Copies the verdicts of committed study reports into the docs that quote them.

A doc quotes a report between two markers:

    <!-- verdicts: docs/reproducing/bible_en_fr_tl/report.md -->
    ...the report's "## Verdicts" section, without its heading...
    <!-- /verdicts -->

`python scripts/quote_verdicts.py` rewrites every such block in README.md and
docs/reproducing.md from the report it names (paths relative to the checkout); `--check`
changes nothing and exits 1 naming each stale block. The docs never state a study's conclusion
by hand: `ptjf report` computes it, this script copies it, and tests/test_quoted_verdicts.py
fails when a copy no longer matches its report.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/reproducing.md")
BLOCK = re.compile(
    r"(?P<open><!-- verdicts: (?P<report>[^ ]+) -->\n)(?P<body>.*?)(?P<close><!-- /verdicts -->)",
    re.S,
)


def verdicts_of(report_text: str, report: str) -> str:
    """The body of a report's "## Verdicts" section (up to the next "## " heading)."""
    lines = report_text.splitlines()
    try:
        start = lines.index("## Verdicts") + 1
    except ValueError:
        raise SystemExit(
            f"{report} has no '## Verdicts' section: regenerate it with `ptjf report` "
            "(ptjf computes the verdicts since it aggregates seeds)."
        ) from None
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip() + "\n"


def quote(doc_text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """(the doc with every block refreshed, the reports whose blocks were stale)."""
    stale: list[str] = []

    def refresh(m: re.Match) -> str:
        report = m["report"]
        path = root / report
        if not path.is_file():
            raise SystemExit(f"A verdicts block names {report}, which does not exist.")
        body = verdicts_of(path.read_text(encoding="utf-8"), report)
        if body != m["body"]:
            stale.append(report)
        return m["open"] + body + m["close"]

    return BLOCK.sub(refresh, doc_text), stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    status = 0
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        new, stale = quote(text)
        for report in stale:
            print(f"{doc}: the verdicts quoted from {report} are stale")
        if stale and args.check:
            status = 1
        elif stale:
            path.write_text(new, encoding="utf-8")
    if status:
        print("Run `python scripts/quote_verdicts.py` to copy the reports' verdicts.")
    return status


if __name__ == "__main__":
    sys.exit(main())
