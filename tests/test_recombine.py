"""Recombined numbers: digits swapped between training images, from training images only (never a
validation or test glyph), made the same way twice, and never mistaken for another folder."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data import datasets, recombine
from harness.data.records import read_records
from harness.data.splitfile import open_prepared
from harness.errors import DataError
from harness.spec import load_spec

INK, GROUND = 30, 220


def write_folder(folder: Path, numbers: dict[str, str]) -> None:
    """Dark bars (the ink) on a light ground, one 10x16 box per digit, and a labels.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, number in numbers.items():
        image = np.full((24, 8 + 10 * len(number), 3), GROUND, np.uint8)
        for j, d in enumerate(number):
            image[7:17, 6 + 10 * j: 9 + 10 * j] = INK
            rows.append((name, int(d) or 10, 4 + 10 * j, 4, 10, 16))
        Image.fromarray(image).save(folder / name)
    pd.DataFrame(rows, columns=["filename", "label", "left", "top", "width", "height"]).to_csv(
        folder / "labels.csv", index=False)


def prepared_numbers(path: Path) -> dict[str, str]:
    with open_prepared(path) as f:
        return {name: "".join(str(d) for d in digits[:length])
                for name, length, digits in zip(f["names"].asstr()[:], f["length"][:], f["digits"][:])}


def test_recombined_images_join_training_with_glyphs_of_training_images_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [f"{i}.png" for i in range(1, 41)]
    in_val = datasets.validation_mask(pd.Series(names), 0.25, 0)
    assert 3 <= in_val.sum() <= 20
    # validation's numbers are made of 7s, 8s and 9s, training's of 1 to 6, the test's of 0s
    train = {n: ("789"[i % 3] * (1 + i % 2) if val else str(1 + i % 6) + str(1 + (i * 5) % 6) * (i % 3))
             for i, (n, val) in enumerate(zip(names, in_val))}
    write_folder(tmp_path / "mine" / "train", train)
    write_folder(tmp_path / "mine" / "test", {"1.png": "0", "2.png": "00"})
    options = ["data.name=folders", "data.root=data", "data.options.train=mine/train",
               "data.options.test=mine/test", "data.val_fraction=0.25"]
    plain = datasets.prepare(load_spec(None, options).data, workers=1)
    data = datasets.prepare(load_spec(None, [*options, "data.recombined=60"]).data, workers=1)

    assert prepared_numbers(data.val) == prepared_numbers(plain.val)  # validation untouched
    got = prepared_numbers(data.train)
    made = {k: v for k, v in got.items() if k.startswith("recombined/")}
    assert {k: v for k, v in got.items() if k not in made} == prepared_numbers(plain.train)
    assert len(made) == 60 and set("".join(made.values())) <= set("123456")
    assert {len(v) for v in made.values()} <= {len(v) for k, v in train.items() if k in prepared_numbers(plain.train)}
    originals = set(prepared_numbers(plain.train).values())
    assert sum(v not in originals for v in made.values()) >= 20  # mostly numbers no real image holds
    assert datasets.prepare(load_spec(None, [*options, "data.recombined=60"]).data, workers=1) == data  # reused
    card = (data.card.parent / "card.md").read_text()
    assert "recombined" in card


def test_a_swapped_digit_takes_the_donor_glyph_turned_and_coloured_like_its_place(tmp_path):
    write_folder(tmp_path / "base", {"1.png": "1234"})
    base = read_records(tmp_path / "base").iloc[0]
    # the only donor: light ink on a dark, reddish ground
    donor = np.full((16, 10, 3), (60, 10, 10), np.uint8)
    donor[3:13, 3:6] = (250, 240, 240)
    image, digits, boxes = recombine._recombined(base, [(5, donor)], np.random.default_rng(3), 0.3)
    assert len(digits) == 4 and 5 in digits and set(digits) <= {1, 2, 3, 4, 5}
    assert boxes[0][2:] == (10.0, 16.0)
    pixels = np.asarray(image).astype(float)
    left, top = 4 - round(boxes[0][0]), 4 - round(boxes[0][1])  # where the cut starts in the base image
    base_pixels = np.asarray(Image.open(tmp_path / "base" / "1.png")).astype(float)
    before = base_pixels[top: top + pixels.shape[0], left: left + pixels.shape[1]]
    assert before.shape == pixels.shape
    outside = np.ones(pixels.shape[:2], bool)
    for digit, (x, y, w, h) in zip(digits, boxes):
        x, y, w, h = round(x), round(y), round(w), round(h)
        outside[y: y + h, x: x + w] = False
        patch, covered = pixels[y: y + h, x: x + w], before[y: y + h, x: x + w]
        if digit == 5:  # swapped: dark ink on light again, about as bright as the ground it covers
            assert recombine._polarity(patch) < -40 and abs(patch.mean() - covered.mean()) < 20
            assert np.abs(patch[..., 0] - patch[..., 1]).mean() < 10  # the red cast is gone
        else:
            assert np.array_equal(patch, covered)
    assert np.array_equal(pixels[outside], before[outside])  # the base is unchanged between its digits


def test_the_same_settings_make_the_same_files_and_another_folder_is_refused(tmp_path):
    write_folder(tmp_path / "src", {f"{i}.png": str(10 + 7 * i) for i in range(1, 13)})
    records = read_records(tmp_path / "src")
    a = recombine.generate(records, tmp_path / "a", 15, seed=4, box_expand=0.3)
    b = recombine.generate(records, tmp_path / "b", 15, seed=4, box_expand=0.3)
    c = recombine.generate(records, tmp_path / "c", 15, seed=5, box_expand=0.3)
    files = lambda folder: {p.name: p.read_bytes() for p in folder.iterdir()}  # noqa: E731
    assert files(a) == files(b) and files(a) != files(c)
    assert len(read_records(a)) == 15 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(DataError) as err:
        recombine.generate(records, a, 16, seed=4, box_expand=0.3)
    assert str(a) in str(err.value) and "other settings" in str(err.value)
    assert files(a) == files(b)  # refused, untouched


def test_length_balance_draws_rare_lengths_more_often_and_keys_its_folder(tmp_path, monkeypatch):
    # 24 two-digit numbers and 3 four-digit ones: about 11% of the bases drawn alike are four-digit
    numbers = {f"{i}.png": str(10 + i) for i in range(1, 25)} | {f"{i}.png": str(1000 + i) for i in range(25, 28)}
    write_folder(tmp_path / "src", numbers)
    records = read_records(tmp_path / "src")
    lengths = lambda folder: read_records(folder)["length"].value_counts().to_dict()  # noqa: E731
    alike = lengths(recombine.generate(records, tmp_path / "alike", 400, seed=1, box_expand=0.3))
    even = lengths(recombine.generate(records, tmp_path / "even", 400, seed=1, box_expand=0.3, length_balance=1))
    half = lengths(recombine.generate(records, tmp_path / "half", 400, seed=1, box_expand=0.3, length_balance=0.5))
    assert set(alike) == set(even) == set(half) == {2, 4}  # bases keep their length
    assert alike[4] < 80 and 160 < even[4] < 240  # 1/9 of 400 alike; half of them balanced
    assert alike[4] < half[4] < even[4]  # sqrt(3) : sqrt(24), about 26%
    with pytest.raises(DataError) as err:  # a folder of other settings is never taken for this one
        recombine.generate(records, tmp_path / "alike", 400, seed=1, box_expand=0.3, length_balance=1)
    assert "other settings" in str(err.value)

    monkeypatch.chdir(tmp_path)  # prepared files of another balance are another folder, named in the card
    write_folder(tmp_path / "mine" / "test", {"1.png": "5"})
    options = ["data.name=folders", "data.root=data", "data.options.train=src", "data.options.test=mine/test",
               "data.val_fraction=0", "data.recombined=30"]
    plain = datasets.prepare(load_spec(None, options).data, workers=1)
    balanced = datasets.prepare(load_spec(None, [*options, "data.recombined_length_balance=1"]).data, workers=1)
    assert plain.train.parent != balanced.train.parent
    assert "recombined_length_balance" in (balanced.card.parent / "card.md").read_text()
    assert "recombined_length_balance" not in (plain.card.parent / "card.md").read_text()


@pytest.mark.parametrize("bad_files", ["skip", "error"])
def test_a_truncated_training_image_is_left_out_or_named_as_preparation_does(tmp_path, monkeypatch, bad_files):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "mine" / "train", {f"{i}.png": str(20 + 3 * i) for i in range(1, 21)})
    write_folder(tmp_path / "mine" / "test", {"1.png": "5"})
    broken = tmp_path / "mine" / "train" / "7.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header reads, the pixels do not
    spec = load_spec(None, ["data.name=folders", "data.root=data", "data.options.train=mine/train",
                            "data.options.test=mine/test", "data.val_fraction=0", "data.recombined=30",
                            f"data.bad_files={bad_files}"])
    if bad_files == "error":
        with pytest.raises(DataError) as err:
            datasets.prepare(spec.data, workers=1)
        assert str(broken) in str(err.value)
        return
    data = datasets.prepare(spec.data, workers=1)
    got = prepared_numbers(data.train)
    assert "7.png" not in got and sum(k.startswith("recombined/") for k in got) == 30
    assert "7.png" in (data.card.parent / "card.md").read_text()
