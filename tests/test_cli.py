"""The `harness` command: help everywhere, listing, clear errors, quiet start-up."""

import subprocess
import sys

import pytest

from harness.cli import build_parser, main

SUBCOMMANDS = ["quickstart", "train", "sweep", "evaluate", "predict", "report", "register", "list", "ui", "server",
               "data"]


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


def test_version(capsys):
    from harness import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"harness {__version__}"


@pytest.mark.parametrize("text, problem", [("", "the spec is empty"), ("# only a comment\n", "the spec is empty"),
                                           ("- a\n- list\n", "a spec must be a mapping of sections")])
def test_an_empty_or_non_mapping_spec_is_an_error_naming_the_file(tmp_path, capsys, text, problem):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main(["train", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"harness: error: {spec}: {problem}") and len(err.splitlines()) == 1


@pytest.mark.parametrize("what, known", [("models", "cnn_tiny"), ("policies", "paper"), ("experiments", "smoke")])
def test_list_with_a_pattern_that_matches_nothing_says_so(capsys, what, known):
    assert main(["list", what, "zzz*"]) == 1  # as grep: nothing found is a non-zero exit
    captured = capsys.readouterr()
    assert captured.out == "" and f"no {what} match 'zzz*'" in captured.err and known in captured.err


@pytest.mark.parametrize("command, setting", [("train", "model.name=cnn_smal"), ("train", "augment.policy=papr"),
                                              ("train", "data.name=svhm"), ("sweep", "model.name=cnn_smal")])
def test_a_registry_error_comes_before_any_heavy_import(tmp_path, command, setting):
    spec = "cpu_small_sweep" if command == "sweep" else "smoke"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", command, spec, "--set", setting],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("import time:")]
    assert result.returncode == 2 and len(lines) == 1 and "did you mean" in lines[0], result.stderr[-2000:]
    imported = {ln.rsplit("|", 1)[1].strip() for ln in result.stderr.splitlines() if ln.startswith("import time:")}
    assert not imported & {"tensorflow", "keras", "jax", "mlflow", "pandas", "matplotlib"}
