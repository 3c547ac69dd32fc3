"""Sweep files: a spec plus a `sweep:` section, typed and frozen, checked in full when loaded."""

import dataclasses
import textwrap

import pytest

from harness.errors import SpecError
from harness.spec import load_spec
from harness.sweeps.spec import Param, load_sweep

GOOD = """
    base: {smoke}
    name: tiny_sweep
    sweep:
      tuner: random
      max_trials: 3
      seed: 1
      space:
        model.name: [cnn_tiny, cnn_small]
        augment.policy: [none, paper]
        train.learning_rate: {min: 1.0e-4, max: 1.0e-2, log: true}
        train.batch_size: [16, 32]
        model.options.dropout: {min: 0.0, max: 0.5, step: 0.1}
"""


def write(tmp_path, text, name="sweep.yaml"):
    from harness.cli import experiments_dir

    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("{smoke}", str(experiments_dir() / "smoke.yaml")))
    return path


def test_sweep_loads_typed_and_frozen(tmp_path):
    sweep = load_sweep(write(tmp_path, GOOD))
    assert sweep.name == "tiny_sweep" and sweep.spec.model.name == "cnn_tiny"  # the base spec
    s = sweep.sweep
    assert (s.tuner, s.max_trials, s.seed, s.objective, s.direction) == ("random", 3, 1, "val_sequence_accuracy", "max")
    space = {p.key: p for p in s.space}
    assert space["model.name"] == Param("model.name", "choice", values=("cnn_tiny", "cnn_small"))
    assert space["train.learning_rate"] == Param("train.learning_rate", "float", low=1e-4, high=1e-2, log=True)
    assert space["train.batch_size"].values == (16, 32)
    assert space["model.options.dropout"].kind == "float" and space["model.options.dropout"].step == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_trials = 5
    assert sweep.params()["sweep.space.train.learning_rate"] == '{"min": 0.0001, "max": 0.01, "log": true}'
    assert sweep.to_dict()["sweep"]["space"]["model.name"] == ["cnn_tiny", "cnn_small"]


def test_overrides_and_what_identifies_a_sweep(tmp_path):
    path = write(tmp_path, GOOD)
    sweep = load_sweep(path)
    more = load_sweep(path, ["sweep.max_trials=9", "train.epochs=2"])
    assert more.sweep.max_trials == 9 and more.spec.train.epochs == 2
    assert load_sweep(path, ["sweep.max_trials=9"]).key() == sweep.key()  # extending keeps the sweep
    assert more.key() != sweep.key()  # a different spec is a different sweep
    narrowed = load_sweep(path, ["sweep.space.model.name=[cnn_tiny]", "sweep.tuner=bayesian"])
    assert narrowed.sweep.tuner == "bayesian"
    assert {p.key: p for p in narrowed.sweep.space}["model.name"].values == ("cnn_tiny",)


def test_a_child_file_extends_and_drops_dimensions(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, """
        base: base.yaml
        name: child_sweep
        sweep:
          tuner: grid
          space:
            train.learning_rate: null
            train.batch_size: null
            model.options.dropout: [0.0, 0.25]
    """, "child.yaml")
    sweep = load_sweep(child)
    assert [p.key for p in sweep.sweep.space] == ["model.name", "augment.policy", "model.options.dropout"]
    assert sweep.sweep.tuner == "grid" and sweep.sweep.max_trials == 3  # inherited from the base


@pytest.mark.parametrize("section, message", [
    ("max_trial: 3", "unknown key 'sweep.max_trial'"),
    ("tuner: grdi", "'sweep.tuner' must be one of random, bayesian, hyperband, grid"),
    ("objective: val_accuracy", "'sweep.objective' must be a validation metric"),
    ("max_trials: 0", "'sweep.max_trials' must be at least 1"),
    ("max_trials: three", "'sweep.max_trials' must be int"),
    ("tuner: hyperband\n  max_trials: 3", "'sweep.max_trials' does not apply to the hyperband tuner"),
    ("factor: 2", "'sweep.factor' does not apply to the random tuner"),
    ("space: {}", "'sweep.space' must map spec keys"),
    ("space: {train.lerning_rate: {min: 0.1, max: 0.2}}", "'sweep.space.train.lerning_rate': unknown key"),
    ("space: {model.name: [cnn_tiny, cnn_smal]}", "did you mean 'cnn_small'"),
    ("space: {augment.policy: [paper, papr]}", "unknown augmentation policy 'papr'"),
    ("space: {model.name: [cnn_tiny, goodfellow2014], model.options.norm: [batch, subtractive]}",
     "'sweep.space.model.options.norm': model 'cnn_tiny' has no option 'norm'"),
    ("space: {model.options.widht: [1, 2]}", "model 'cnn_tiny' has no option 'widht'"),
    ("space: {data.image_size: [64, 74]}", "'sweep.space.data.image_size': data settings cannot be swept"),
    ("space: {tracking.log_model: [true, false]}", "not a hyperparameter"),
    ("space: {train.learning_rate: {min: 0.01, max: 0.001}}", "min (0.01) must be below max (0.001)"),
    ("space: {train.learning_rate: {min: 0.0, max: 0.01, log: true}}", "a log range needs min > 0"),
    ("space: {train.learning_rate: {min: 0.001}}", "a range needs both min and max"),
    ("space: {train.learning_rate: {min: 0.001, max: 0.1, scale: log}}", "unknown range key 'scale'"),
    ("space: {train.learning_rate: {min: -0.1, max: 0.1}}", "'train.learning_rate' must be positive"),
    ("space: {train.batch_size: [32, 0]}", "'train.batch_size' must be positive"),
    ("space: {train.batch_size: [32, 6.5]}", "values must be int, got 6.5"),
    ("space: {train.batch_size: [32, 32]}", "a choice lists a value twice"),
    ("space: {train.optimizer: [adam, lion]}", "'train.optimizer' must be one of adam, sgd"),
    ("space: {train.optimizer: {min: 1, max: 2}}", "a range needs a numeric key"),
    ("space: {augment.crop_size: [54, 70]}", "'augment.crop_size' (70) is larger than 'data.image_size' (64)"),
    ("space: {train.epochs: 3}", "must be a list of choices or a {min, max} range"),
    ("tuner: grid\n  space: {train.learning_rate: {min: 0.001, max: 0.01}}", "a grid needs a step"),
    ("tuner: hyperband\n  space: {train.epochs: [1, 2]}", "cannot be swept by hyperband"),
])
def test_errors_name_the_file_and_the_key(tmp_path, section, message):
    path = write(tmp_path, "base: {smoke}\nsweep:\n  " + section + "\n")
    with pytest.raises(SpecError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_train_and_sweep_refuse_each_others_files(tmp_path, capsys):
    from harness.cli import experiments_dir, main

    sweep = write(tmp_path, GOOD)
    with pytest.raises(SpecError, match="has a 'sweep' section; run it with `harness sweep"):
        load_spec(sweep)
    with pytest.raises(SpecError, match="no 'sweep' section"):
        load_sweep(experiments_dir() / "smoke.yaml")
    assert main(["train", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and "harness sweep" in err and "Traceback" not in err
    assert main(["sweep", "smoke"]) == 2
    assert "no 'sweep' section" in capsys.readouterr().err
    assert main(["sweep", str(sweep), "--set", "sweep.space.model.name=[cnn_tiny, cnn_smal]"]) == 2
    assert "did you mean 'cnn_small'" in capsys.readouterr().err
    assert main(["sweep", str(sweep), "--role", "worker"]) == 2
    assert "--role and --oracle HOST:PORT go together" in capsys.readouterr().err
    assert main(["sweep", str(sweep), "--workers", "2", "--role", "chief", "--oracle", "127.0.0.1:1"]) == 2
    assert "leave out --role" in capsys.readouterr().err


def test_ready_sweeps_load():
    from harness.cli import experiments_dir

    sweeps = [p for p in sorted(experiments_dir().glob("*.yaml")) if "\nsweep:" in p.read_text()]
    assert {p.stem for p in sweeps} >= {"paper_vs_report", "augmentation_ablation", "lr_dropout_search",
                                        "cpu_small_sweep"}
    for path in sweeps:
        sweep = load_sweep(path)
        assert path.read_text().startswith("# Run:    harness sweep"), path
        assert sweep.name == path.stem, path
    grid = load_sweep(experiments_dir() / "paper_vs_report.yaml")
    assert grid.sweep.tuner == "grid" and grid.sweep.max_trials == 4
