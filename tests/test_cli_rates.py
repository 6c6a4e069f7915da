"""`ptjf rates`: sizes, rates and epochs, from a mixture or from sizes given by hand."""

from __future__ import annotations

import pytest

from ptjf import sampling
from ptjf.commands import cli

MC4 = "en=13396,hi=75,gu=3.6,gd=0.8,sw=4.1"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["rates", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _table(out: str) -> dict[str, list[str]]:
    rows = out.strip().splitlines()[3:]
    return {r.split()[0]: r.split()[1:] for r in rows}


def test_temperature_on_the_embedded_mixture(capsys):
    from ptjf import tasks

    code, out, _ = _run(
        capsys,
        "--mixture",
        "bible_en_fr_tl",
        "--method",
        "temperature",
        "--tau",
        "3.33",
        "--examples",
        "64000",
    )
    assert code == 0
    assert "method temperature (tau=3.33)" in out
    table = _table(out)
    sizes = {t: tasks.task_size(t) for t in table}
    expected = sampling.temperature_rates(sizes, 3.33)
    for t, (size, rate, epochs) in table.items():
        assert int(size) == sizes[t]
        assert float(rate) == pytest.approx(expected[t], abs=5e-5)
        assert float(epochs) == pytest.approx(expected[t] * 64000 / sizes[t], rel=2e-3)
    assert float(table["bible_translate_en_tl_low"][2]) > 15 * float(
        table["bible_translate_en_fr"][2]
    )


def test_unimax_with_sizes_by_hand(capsys):
    code, out, _ = _run(
        capsys,
        "--sizes",
        MC4,
        "--unit",
        "characters",
        "--method",
        "unimax",
        "--budget",
        "100",
        "--max-epochs",
        "4",
    )
    assert code == 0
    table = _table(out)
    alloc = sampling.unimax_rates(sampling.parse_sizes(MC4), 100, 4)
    for t, (_, rate, epochs) in table.items():
        assert float(rate) == pytest.approx(alloc.rates[t], abs=5e-5)
        assert float(epochs) == pytest.approx(alloc.epochs[t], rel=2e-3)
    assert table["gd"][2] == "4"  # the smallest language is capped at max_epochs


def test_default_method_is_the_mixtures_own(capsys):
    code, out, _ = _run(capsys, "--mixture", "bible_en_fr_es")
    assert code == 0 and "method static" in out
    assert [row[1] for row in _table(out).values()] == ["0.5000", "0.5000"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--mixture", "bible_en_fr_tx"], "Closest registered: bible_en_fr_tl"),
        (["--sizes", MC4, "--method", "temperature", "--tau", "0"], "tau"),
        (["--sizes", "en=1,hi=abc", "--method", "proportional"], "hi=abc"),
        (
            ["--sizes", MC4, "--method", "unimax", "--budget", "1e9", "--max-epochs", "1"],
            "Lower the budget",
        ),
        (["--sizes", "a=1,b=2", "--method", "static", "--weights", "a=0,b=0"], "sum to zero"),
        ([], "Give --mixture"),
    ],
)
def test_bad_input_is_one_clear_message(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("ptjf rates: error: ")


def test_a_mixture_sized_in_characters_is_labelled_so(capsys):
    code, out, _ = _run(capsys, "--mixture", "mc4", "--method", "temperature", "--tau", "3.33")
    assert code == 0
    assert "size (characters)" in out and "size (examples)" not in out
    table = _table(out)
    assert float(table["mc4.en"][0]) == 13396 and float(table["mc4.gd"][0]) == 0.8
    expected = sampling.temperature_rates(
        {"mc4.en": 13396, "mc4.hi": 75, "mc4.gu": 3.6, "mc4.gd": 0.8, "mc4.sw": 4.1}, 3.33
    )
    for task, (_, rate) in table.items():
        assert float(rate) == pytest.approx(expected[task], abs=5e-5)
