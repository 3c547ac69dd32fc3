"""benchmarks/synthetic_realism.py as a user runs it: genuine and synthetic crops side by side."""

import subprocess
import sys

import numpy as np
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import synthetic_realism  # noqa: E402


def test_statistics_of_known_crops():
    flat = np.full((1, 8, 8, 3), 128, np.uint8)  # no contrast, grey
    stripes = np.zeros((1, 8, 8, 3), np.uint8)
    stripes[:, :, ::2] = (0, 0, 255)  # blue columns on black: every horizontal step is a full edge
    stats = synthetic_realism.crop_statistics(np.concatenate([flat, stripes]), np.array([0.5, 0.7]))
    assert stats["contrast"][0] == 0 and stats["saturation"][0] == 0 and stats["blue cast"][0] == 0
    assert np.isclose(stats["brightness"][0], 128 / 255, atol=1e-3)
    assert np.isclose(stats["blue cast"][1], 0.5) and np.isclose(stats["saturation"][1], 0.5)
    blue = 0.114  # luminance of pure blue
    assert np.isclose(stats["contrast"][1], blue / 2, atol=1e-4)
    assert np.isclose(stats["sharpness"][1], blue / (blue / 2), atol=1e-3)  # steps only along rows
    assert list(stats["digit height / crop height"]) == [0.5, 0.7]


def test_prints_both_sides_for_the_genuine_sample(shared_data, tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "synthetic_realism.py"), "--count", "12",
               "--images", str(shared_data / "svhn-sample" / "train")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:28].strip(): line for line in result.stdout.splitlines()}
    assert "12 genuine images" in result.stdout and "12 synthetic" in result.stdout
    assert "blue cast" in rows  # its median lies near zero: a ratio says little
    for name in ("contrast", "sharpness", "saturation", "brightness", "digit height / crop height"):
        ratio = float(rows[name].split()[-1])
        assert 0.2 < ratio < 5, rows[name]  # same order of magnitude on both sides


def test_a_missing_image_folder_is_one_line(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "synthetic_realism.py"), "--images", str(tmp_path / "no")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no image folder" in result.stderr and "Traceback" not in result.stderr
