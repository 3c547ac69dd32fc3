"""benchmarks/whole_map_conv.py: a small run prints both formulations' figures and their ratio."""

import re
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import whole_map_conv  # noqa: E402


def test_a_small_run_prints_both_formulations_and_the_ratio(capsys):
    assert whole_map_conv.main(["--batch", "2", "--steps", "1", "--warmup", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    row, = [line for line in out.splitlines() if line.startswith("| `report2016`")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(float(v.rstrip("x").replace(",", "")) > 0 for v in cells[1:]), row
    assert "backend:" in out and "batch 2" in out
    assert re.search(r"fc_conv1 alone .*: Conv2D [0-9.,]+, matmul [0-9.,]+: Conv2D / matmul [0-9.]+x", out)


def test_a_model_without_whole_map_convolutions_is_refused(capsys):
    with pytest.raises(SystemExit):
        whole_map_conv.main(["--models", "cnn_small"])
    assert "no whole-map convolution" in capsys.readouterr().err
