"""The folders dataset: the user's own Format 1 folders (real PNGs + labels.csv) prepared like any
other dataset, prepared again when a folder changes, and every bad option named."""

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from harness import cli
from harness.data import datasets
from harness.data.splitfile import open_prepared
from harness.errors import DataError, SpecError
from harness.spec import load_spec


def write_folder(folder: Path, numbers: list[str], colour: int = 0) -> dict[str, str]:
    """PNG files 1.png, 2.png, ... and a labels.csv (one row per digit, label 10 = digit 0);
    returns {file name: number}."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, number in enumerate(numbers):
        name = f"{i + 1}.png"
        Image.new("RGB", (8 + 10 * len(number), 24), (colour, i % 256, 90)).save(folder / name)
        rows += [(name, int(d) or 10, 4 + 10 * j, 4, 10, 16) for j, d in enumerate(number)]
    pd.DataFrame(rows, columns=["filename", "label", "left", "top", "width", "height"]).to_csv(
        folder / "labels.csv", index=False)
    return {f"{i + 1}.png": n for i, n in enumerate(numbers)}


def folders_spec(root: Path, **options: str):
    return load_spec(None, ["data.name=folders", f"data.root={root}",
                            *(f"data.options.{k}={v}" for k, v in options.items())])


def numbers(path: Path) -> dict[str, str]:
    with open_prepared(path) as f:
        return {name: "".join(str(d) for d in digits[:length])
                for name, length, digits in zip(f["names"].asstr()[:], f["length"][:], f["digits"][:])}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """train (30 images), test (6) and extra (4) folders, and the current directory set beside them."""
    monkeypatch.chdir(tmp_path)
    train = write_folder(tmp_path / "mine" / "train", [str(n) for n in range(100, 130)])
    test = write_folder(tmp_path / "mine" / "test", ["7", "40", "512", "9060", "11", "3"], colour=200)
    extra = write_folder(tmp_path / "mine" / "extra", ["88", "909", "1", "2020"], colour=100)
    return tmp_path, train, test, extra


def test_folders_prepare_train_val_test_with_their_labels(folders):
    base, train, test, extra = folders
    spec = folders_spec(Path("data"), train="mine/train", test="mine/test", extra="mine/extra")
    data = datasets.prepare(spec.data, workers=1)
    assert data.train.resolve().parent.parent == (base / "data" / "prepared").resolve()
    got_train, got_val, got_test = numbers(data.train), numbers(data.val), numbers(data.test)
    expected = {**train, **{f"extra/{k}": v for k, v in extra.items()}}
    assert len(got_train) + len(got_val) == 34 and not set(got_train) & set(got_val)
    assert {**got_train, **got_val} == expected
    assert got_test == test
    with open_prepared(data.test) as f:
        assert f["images"].shape == (6, 64, 64, 3)
    again = datasets.prepare(spec.data, workers=1)
    assert again == data  # nothing changed: the same files, reused


def test_a_folder_changed_in_place_is_prepared_again(folders):
    base, _, _, _ = folders
    spec = folders_spec(Path("data"), train="mine/train", test="mine/test")
    first = datasets.prepare(spec.data, workers=1)
    labels = base / "mine" / "test" / "labels.csv"
    labels.write_bytes(labels.read_bytes())  # written again, the same: the same prepared files
    assert datasets.prepare(spec.data, workers=1) == first
    labels.write_text(labels.read_text().replace("1.png,7,", "1.png,8,"))
    second = datasets.prepare(spec.data, workers=1)
    assert second.test.parent != first.test.parent
    assert numbers(second.test)["1.png"] == "8" and numbers(first.test)["1.png"] == "7"
    Image.new("RGB", (18, 24), (1, 2, 3)).save(base / "mine" / "train" / "1.png")
    assert datasets.prepare(spec.data, workers=1).train.parent != second.train.parent


def test_data_prepare_command_takes_folders(folders, capsys):
    assert cli.main(["data", "prepare", "folders", "--root", "data", "--workers", "1",
                     "--set", "data.options.train=mine/train", "--set", "data.options.test=mine/test"]) == 0
    out = capsys.readouterr().out
    assert "test" in out and "6 images 64x64" in out


@pytest.mark.parametrize("options, error, words", [
    ({}, SpecError, ["data.options.train"]),
    ({"train": "mine/nowhere", "test": "mine/test"}, DataError, ["mine/nowhere", "no such folder",
                                                                 "data.options.train"]),
    ({"train": "mine/train", "test": "mine/test/1.png"}, DataError, ["1.png", "not a folder",
                                                                     "data.options.test"]),
    ({"train": "mine/train", "test": "mine/test", "extra": "mine/empty"}, DataError,
     ["mine/empty", "no such annotation file", "data.options.extra"]),
    ({"train": "mine/test", "test": "mine/test"}, DataError, ["mine/test", "also the train folder"]),
])
def test_bad_options_are_named(folders, options, error, words):
    base, _, _, _ = folders
    (base / "mine" / "empty").mkdir()
    with pytest.raises(error) as caught:
        datasets.prepare(folders_spec(Path("data"), **options).data, workers=1)
    for word in words:
        assert word in str(caught.value)
    assert not (base / "data" / "prepared").exists()  # nothing half-made


def test_without_a_test_folder_a_fixed_quarter_of_train_is_held_out(folders):
    """No data.options.test: test is the same quarter of train's images whatever the seed, never in
    train or validation, and the prepared data says how it was held out."""
    _, train, _, _ = folders
    held = None
    for seed in (0, 1):
        spec = load_spec(None, ["data.name=folders", "data.root=data", "data.options.train=mine/train",
                                f"data.seed={seed}"])
        data = datasets.prepare(spec.data, workers=1)
        got_train, got_val, got_test = numbers(data.train), numbers(data.val), numbers(data.test)
        assert {**got_train, **got_val, **got_test} == train
        assert not set(got_test) & (set(got_train) | set(got_val))
        assert 3 <= len(got_test) <= 13  # about a quarter of 30
        held = held or got_test
        assert got_test == held  # the same images for every seed
        assert data.heldout and "25%" in data.heldout
        assert set(data.splits()) == {"train", "val", "test"}


def test_the_heldout_folds_hold_out_each_image_once(folders):
    """data.heldout_fold k holds out the k-th quarter of the hash: the four test splits are disjoint and
    together are the whole train folder; fold 0 is the default's, prepared files included."""
    _, train, _, _ = folders
    held, prepared = {}, {}
    for fold in range(4):
        spec = load_spec(None, ["data.name=folders", "data.root=data", "data.options.train=mine/train",
                                f"data.heldout_fold={fold}", "data.val_fraction=0"])
        data = datasets.prepare(spec.data, workers=1)
        held[fold], got_train = numbers(data.test), numbers(data.train)
        assert {**got_train, **held[fold]} == train and not set(held[fold]) & set(got_train)
        assert f"fold {fold} of 4" in data.heldout
        prepared[fold] = data.test
    assert sum(len(h) for h in held.values()) == len(train)
    assert {name for h in held.values() for name in h} == set(train)
    assert len(set(prepared.values())) == 4  # each fold its own prepared files
    default = load_spec(None, ["data.name=folders", "data.root=data", "data.options.train=mine/train",
                               "data.val_fraction=0"])
    assert datasets.prepare(default.data, workers=1).test == prepared[0]
    with pytest.raises(SpecError, match="'data.heldout_fold' must be 0 to 3, got 4"):
        load_spec(None, ["data.name=folders", "data.options.train=mine/train", "data.heldout_fold=4"])


def test_list_datasets_shows_folders(capsys):
    assert cli.main(["list", "datasets", "fold*"]) == 0
    assert "SVHN Format 1" in capsys.readouterr().out


def test_an_empty_training_split_is_named_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "mine" / "train", ["12", "345"])
    write_folder(tmp_path / "mine" / "test", ["7"])
    args = ["train", "smoke", "--set", "data.name=folders", "--set", "data.options.train=mine/train",
            "--set", "data.options.test=mine/test", "--set", "data.val_fraction=0.99"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "train.h5" in err and "the training split is empty" in err and "Traceback" not in err
