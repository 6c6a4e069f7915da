"""The docs' Python examples run as written."""

from __future__ import annotations

import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_registering_mixtures_examples_run(capsys):
    blocks = _python_blocks(DOCS / "registering-mixtures.md")
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "registering-mixtures.md", "exec"), namespace)
    out = capsys.readouterr().out
    rates = namespace["tasks"].mixture_rates("my_mixture")
    assert abs(sum(rates.values()) - 1) < 1e-9 and len(rates) == 3
    assert "m_static@my_en_de=0.7,my_en_yo=0.3" in out
    assert namespace["tasks"].mixture_rates("m_chars")["my_en_yo"] > 0.1
