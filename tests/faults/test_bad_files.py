"""Bad specs, prepared split files, model files, MNIST IDX files and pickles: one line naming the file
(or spec key) and the problem, before any work starts; nothing in them is ever executed."""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from .builders import data_error, one_line_error, plain_png, prepare, svhn_root

# ---------------------------------------------------------------------------------- experiment specs

SPECS = {  # id -> (spec file, words of the error)
    "unknown key": ("train: {lerning_rate: 0.1}", "unknown key 'train.lerning_rate'"),
    "wrong type": ("train: {epochs: three}", "'train.epochs' must be int, got 'three'"),
    "section not a mapping": ("model: cnn_tiny", "'model' must be a mapping"),
    "unknown model": ("model: {name: cnn_smal}", "unknown model 'cnn_smal'; did you mean 'cnn_small'"),
    "unknown dataset": ("data: {name: svnh}", "unknown dataset 'svnh'; did you mean 'svhn'"),
    "unknown option": ("model: {name: cnn_tiny, options: {width: 3}}", "model 'cnn_tiny' has no option 'width'"),
    "crop larger than image": ("data: {image_size: 32}\naugment: {crop_size: 54}",
                               "'augment.crop_size' (54) is larger than 'data.image_size' (32)"),
    "zero batch": ("train: {batch_size: 0}", "'train.batch_size' must be positive"),
    "not YAML": ("train: {epochs: [", "not valid YAML"),
    "a list": ("- train\n- model", "a spec must be a mapping of sections"),
    "python object tag": ("name: !!python/object/apply:os.system ['touch pwned']", "not valid YAML"),
    "missing base": ("base: nowhere.yaml", "nowhere.yaml: cannot read spec (No such file or directory)"),
}


@pytest.mark.parametrize("case", SPECS)
def test_bad_spec_fails_before_any_work(workdir, capsys, case):
    text, words = SPECS[case]
    (workdir / "bad.yaml").write_text(text + "\n")
    one_line_error(capsys, ["train", "bad.yaml"], "yaml: ", words)
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml", "tmp"]  # no data, store or runs


@pytest.mark.parametrize("override, words", [
    ("train.epochs=-1", "'train.epochs' must be positive"),
    ("data.image_size=big", "'data.image_size' must be int"),
    ("train.lerning_rate=0.1", "unknown key 'train.lerning_rate'"),
    ("augment.crop_size=99", "'augment.crop_size' (99) is larger than 'data.image_size' (64)"),
])
def test_bad_override_fails_before_any_work(workdir, capsys, override, words):
    one_line_error(capsys, ["train", "smoke", "--set", override], words)
    assert sorted(p.name for p in workdir.iterdir()) == ["tmp"]


# ---------------------------------------------------------------------------------- prepared files

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _drop(name: str):
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            del f[name]
    return edit


PREPARED = {  # id -> (damage, words of the error)
    "truncated": (_truncate, "truncated or corrupt"),
    "no digits": (_drop("digits"), "no dataset 'digits'"),
    "no images": (_drop("images"), "no dataset 'images'"),
    "text": (lambda path: path.write_text("images,length\n"), "not a readable HDF5 file"),
    "other HDF5": (lambda path: h5py.File(path, "w").close(), "no format_version"),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(svhn_root(tmp_path_factory.mktemp("prepared"), {f"{i}.png": plain_png((i, 0, 0)) for i in range(4)}))


@pytest.mark.parametrize("case", PREPARED)
def test_damaged_prepared_file_is_never_reused_for_training(prepared, tmp_path, case):
    """Training starts with datasets.prepare: it checks the files an earlier preparation left."""
    import shutil

    damage, words = PREPARED[case]
    root = tmp_path / "data"
    shutil.copytree(prepared.train.parents[2], root)
    train = root / prepared.train.relative_to(prepared.train.parents[2])
    damage(train)
    data_error(lambda: prepare(root), train, words)


@pytest.mark.parametrize("case", PREPARED)
def test_damaged_prepared_file_given_to_evaluate_is_named(prepared, model_file, tmp_path, capsys, case):
    damage, words = PREPARED[case]
    bad = tmp_path / "test.h5"
    bad.write_bytes(prepared.test.read_bytes())
    damage(bad)
    one_line_error(capsys, ["evaluate", str(model_file), "--data", str(bad)], str(bad), words)


def test_prepared_images_smaller_than_the_model_crop_are_named(model_file, tmp_path, capsys):
    small = prepare(svhn_root(tmp_path, {"1.png": plain_png()}), "data.image_size=8", "augment.crop_size=8")
    one_line_error(capsys, ["evaluate", str(model_file), "--data", str(small.test)], str(small.test),
                   "images are 8x8, smaller than the model's 16x16 crop")


# ---------------------------------------------------------------------------------- model files

def _evil_model(path: Path, marker: Path) -> None:
    """A model whose Lambda layer creates ``marker`` whenever it runs."""
    import keras

    payload = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), "  # no closure to save
                   "__import__('keras').ops.cast(t, 'float32'))[1]")
    inputs = keras.Input((16, 16, 3), dtype="uint8")
    x = keras.layers.Lambda(payload, output_shape=(16, 16, 3))(inputs)
    keras.Model(inputs, keras.layers.Dense(57)(keras.layers.Flatten()(x))).save(path)


def test_models_load_in_safe_mode_so_a_lambda_never_runs(prepared, tmp_path, capsys):
    import keras

    from harness.evaluation.reader import NumberReader

    evil, marker = tmp_path / "evil.keras", tmp_path / "pwned"
    _evil_model(evil, marker)
    image = tmp_path / "a.png"
    image.write_bytes(plain_png())
    for argv in (["predict", str(evil), str(image)], ["evaluate", str(evil), "--data", str(prepared.test)]):
        one_line_error(capsys, argv, str(evil), "not a loadable Keras model", "Lambda", "safe_mode")
    data_error(lambda: NumberReader.load(evil), evil, "not a loadable Keras model")
    assert not marker.exists()
    keras.saving.load_model(evil, safe_mode=False).predict(np.zeros((1, 16, 16, 3), np.uint8), verbose=0)
    assert marker.exists()  # the payload was live: only safe mode kept it from running


@pytest.mark.parametrize("data, words", [
    (b"PK\x03\x04 not really a zip", "not a loadable Keras model"),
    (b"", "not a loadable Keras model"),
])
def test_broken_model_files_are_named(tmp_path, capsys, data, words):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(data)
    (tmp_path / "a.png").write_bytes(plain_png())
    one_line_error(capsys, ["predict", str(bad), str(tmp_path / "a.png")], str(bad), words)


# ---------------------------------------------------------------------------------- pickles

class Payload:
    """Unpickling this creates the file ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickled_work_file_is_refused_and_removed(tmp_path):
    from harness.data.prepare import _plan, prepare_split, work_folder
    from harness.data.records import read_records

    root = svhn_root(tmp_path, {f"{i}.png": plain_png((i, 0, 0)) for i in range(3)})
    records = read_records(root / "svhn" / "train")
    out, marker = tmp_path / "train.h5", tmp_path / "pwned"
    (segment,) = _plan(records, work_folder(out), 16, 0.3)
    segment.path.parent.mkdir()
    with open(segment.path, "wb") as f:  # where a finished segment would be, holding object arrays
        np.savez(f, images=np.zeros((3, 16, 16, 3), np.uint8), kinds=np.array([Payload(marker)] * 3, object),
                 details=np.array([""] * 3))
    data_error(lambda: prepare_split(records, out, image_size=16, workers=1), segment.path,
               "work file damaged", "allow_pickle=False", "run the same command again")
    assert not marker.exists() and not segment.path.exists() and not out.exists()
    prepare_split(records, out, image_size=16, workers=1)  # the same command again: redone, whole
    assert not marker.exists()


def test_a_pickled_checkpoint_is_refused(tmp_path):
    from harness.spec import load_spec
    from harness.training.checkpoint import EpochCheckpoint
    from harness.training.setup import build_for, compile_for

    spec = load_spec(None, ["model.name=cnn_tiny", "data.image_size=16", "augment.crop_size=16"])
    model = build_for(spec)
    compile_for(spec, model, steps_per_epoch=4)
    model.optimizer.build(model.trainable_variables)
    checkpoint = EpochCheckpoint(tmp_path / "run", "sequence_accuracy")
    checkpoint.set_model(model)
    checkpoint._save(1, 0)
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "run" / "state-1.npz", seeds=np.array([Payload(marker)], object), metrics=0)
    data_error(lambda: EpochCheckpoint(tmp_path / "run", "sequence_accuracy").restore(model),
               tmp_path / "run" / "state-1.npz", "damaged training state", "allow_pickle=False")
    assert not marker.exists()
    with np.load(tmp_path / "run" / "state-1.npz", allow_pickle=True) as npz:
        npz["seeds"]
    assert marker.exists()  # the payload was live: only allow_pickle=False kept it from running


# ---------------------------------------------------------------------------------- MNIST IDX files

def idx(array: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_folder(folder: Path) -> Path:
    folder.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx(np.full((n, 28, 28), 200, np.uint8)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx((np.arange(n) % 10).astype(np.uint8)))
    return folder


@pytest.mark.parametrize("file, damage, words", [
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x07\x03" + raw[4:], "magic number 0x00000703"),
    ("train-labels-idx1-ubyte", lambda raw: b"PK\x03\x04" + raw[4:], "not an IDX file"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:-100], "truncated: its header describes a 10x28x28 array"),
    ("t10k-labels-idx1-ubyte", lambda raw: raw[:6], "truncated: the header needs 8 bytes"),
], ids=["wrong magic", "zip magic", "truncated data", "truncated header"])
def test_bad_mnist_idx_file_is_named(tmp_path, capsys, file, damage, words):
    source = mnist_folder(tmp_path / "mnist-files")
    path = source / file
    path.write_bytes(damage(path.read_bytes()))
    one_line_error(capsys, ["data", "prepare", "mnist_composite", "--root", str(tmp_path / "data"),
                            "--set", f"data.options.source={source}", "--set", "data.options.train=10",
                            "--set", "data.options.test=5", "--workers", "1"], str(path), words)
    assert not (tmp_path / "data" / "prepared").exists() and not (tmp_path / "data" / "mnist_composite").exists()
