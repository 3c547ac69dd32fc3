"""benchmarks/layer_speed.py: a small run prints a row with positive figures for every layer it compares."""

import re
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import layer_speed  # noqa: E402


def test_a_small_run_prints_every_layer(capsys):
    assert layer_speed.main(["--batch", "2", "--steps", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| [a-z]", line) and "ms/step" not in line]
    assert len(rows) == len(layer_speed.cases())
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(v.replace(",", "")) > 0 for v in cells[2:]), row
    assert "backend:" in out and "batch 2" in out
