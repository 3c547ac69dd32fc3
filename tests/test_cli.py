"""The `harness` command: help everywhere, listing, clear errors, quiet start-up."""

import subprocess
import sys

import pytest

from harness.cli import build_parser, main

SUBCOMMANDS = ["quickstart", "train", "sweep", "evaluate", "predict", "report", "list", "ui", "server", "data"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: harness {command}" in out and len(out.splitlines()) > 3


def test_python_dash_m_and_top_level_help():
    result = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in SUBCOMMANDS:
        assert command in result.stdout


def test_list_is_quiet_and_lists_registries():
    result = subprocess.run([sys.executable, "-m", "harness", "list", "models"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cnn_small" in result.stdout and "cnn_tiny" in result.stdout
    assert result.stderr == "", f"start-up noise reached the user: {result.stderr[:500]}"


@pytest.mark.parametrize("what, expected", [
    ("policies", ["none", "paper", "jitter"]),
    ("datasets", ["synthetic"]),
    ("experiments", ["quickstart", "smoke"]),
])
def test_list_other_registries(what, expected, capsys):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert name in out


def test_bad_spec_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 2, lerning_rate: 0.1}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and str(bad) in err and "lerning_rate" in err
    assert "Traceback" not in err
    assert main(["train", "no-such-spec"]) == 2
    assert "no-such-spec: no such spec file" in capsys.readouterr().err
    assert main(["train", "smoke", "--set", "model.name=cnn_smal"]) == 2
    assert "did you mean 'cnn_small'" in capsys.readouterr().err
