import textwrap

import pytest

from harness.errors import SpecError
from harness.spec import Spec, load_spec


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_frozen_and_typed():
    spec = load_spec()
    assert spec == Spec()
    with pytest.raises(Exception):
        spec.train.epochs = 3  # frozen
    with pytest.raises(TypeError):
        spec.model.options["x"] = 1  # options are read-only too


def test_base_inheritance_overrides_only_what_differs(tmp_path):
    write(tmp_path / "base.yaml", """
        name: base
        train: {epochs: 7, learning_rate: 0.01}
        model: {name: cnn_tiny, options: {dropout: 0.3}}
    """)
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", """
        base: ../base.yaml
        name: child
        train: {epochs: 2}
    """)
    spec = load_spec(child)
    assert spec.name == "child"
    assert spec.train.epochs == 2
    assert spec.train.learning_rate == 0.01  # from the base
    assert spec.model.name == "cnn_tiny" and dict(spec.model.options) == {"dropout": 0.3}


def test_overrides_are_type_checked(tmp_path):
    spec = load_spec(None, ["train.epochs=3", "train.learning_rate=1e-4", "model.options.dropout=0.5",
                            "model.name=cnn_tiny", "tracking.log_model=false"])
    assert spec.train.epochs == 3 and spec.train.learning_rate == 1e-4
    assert spec.model.options["dropout"] == 0.5 and spec.tracking.log_model is False
    assert isinstance(load_spec(None, ["train.learning_rate=1"]).train.learning_rate, float)
    with pytest.raises(SpecError, match="--set train.epochs=three: 'train.epochs' must be int"):
        load_spec(None, ["train.epochs=three"])
    with pytest.raises(SpecError, match="unknown key 'train.epoch'"):
        load_spec(None, ["train.epoch=3"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(None, ["train.epochs"])
    with pytest.raises(SpecError, match="'train' is a section"):
        load_spec(None, ["train=3"])


def test_unknown_key_names_key_and_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train: {epochs: 2, lerning_rate: 0.1}\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert str(bad) in str(err.value) and "train.lerning_rate" in str(err.value)
    # the error names the file that holds the key, even when it is a base
    child = write(tmp_path / "child.yaml", "base: bad.yaml\nname: x\n")
    with pytest.raises(SpecError, match="bad.yaml: unknown key 'train.lerning_rate'"):
        load_spec(child)


@pytest.mark.parametrize("text, message", [
    ("train: {epochs: '3'}", "'train.epochs' must be int"),
    ("train: {epochs: true}", "'train.epochs' must be int"),
    ("train: 3", "'train' must be a mapping"),
    ("train: {optimizer: rmsprop}", "'train.optimizer' must be one of adam, sgd"),
    ("train: {epochs: 0}", "'train.epochs' must be positive"),
    ("train: {learning_rate: .nan}", "'train.learning_rate' must be a finite number, got nan"),
    ("train: {weight_decay: .inf}", "'train.weight_decay' must be a finite number, got inf"),
    ("train: {label_smoothing: 1.0}", "'train.label_smoothing' must be in \\[0, 1\\) \\(0 = off\\), got 1.0"),
    ("data: {recombined: -5}", "'data.recombined' must be 0 \\(off\\) or positive, got -5"),
    ("data: {recombined_length_balance: 1.5}", "'data.recombined_length_balance' must be in \\[0, 1\\]"),
    ("augment: {crop_size: 80}", "'augment.crop_size' \\(80\\) is larger than 'data.image_size' \\(64\\)"),
    ("model: {name: cnn_smal}", "unknown model 'cnn_smal'; did you mean 'cnn_small'"),
    ("augment: {policy: papr}", "unknown augmentation policy 'papr'; did you mean 'paper'"),
    ("data: {name: synthetc}", "unknown dataset 'synthetc'"),
    ("model: {options: {width: 3}}", "model 'cnn_small' has no option 'width'"),
    ("model: {options: {dropout: high}}", "option 'dropout' must be float"),
    ("- just\n- a list", "a spec must be a mapping"),
    ("train: {epochs: [", "not valid YAML"),
])
def test_bad_specs_fail_clearly(tmp_path, text, message):
    path = write(tmp_path / "spec.yaml", text)
    with pytest.raises(SpecError, match=message) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_base_loop_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(SpecError, match="loops back"):
        load_spec(tmp_path / "a.yaml")
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_flat_and_yaml_round_trip(tmp_path):
    spec = load_spec(None, ["model.options.dropout=0.4", "name=rt"])
    flat = spec.flat()
    assert flat["train.epochs"] == spec.train.epochs and flat["model.options.dropout"] == 0.4
    again = load_spec(write(tmp_path / "rt.yaml", spec.to_yaml()))
    assert again == spec


def test_every_experiment_file_loads_and_opens_with_its_command():
    from harness.cli import experiments_dir

    files = sorted(experiments_dir().glob("*.yaml"))
    assert files
    from harness.sweeps.spec import load_sweep

    for path in files:
        (load_sweep if "\nsweep:" in path.read_text() else load_spec)(path)  # sweeps: tests/test_sweep_spec.py
        head = path.read_text().splitlines()[:2]
        assert head[0].startswith("# Run:") and "harness" in head[0], path
        assert head[1].startswith("# Expect:"), path
