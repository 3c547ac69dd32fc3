"""Records table: genuine SVHN samples, written splits, and every bad-input error names its file."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import NO_DIGIT
from harness.data.digitstruct import Annotation, write_digitstruct
from harness.data.records import COLUMNS, encode_labels, read_records
from harness.errors import DataError


def index_colour(i: int) -> tuple[int, int, int]:
    """A colour that encodes the image index, so a crop of any part of the image tells which it is."""
    return i % 256, i // 256, 7


def write_split(folder: Path, numbers: list[str]) -> list[Annotation]:
    """A Format 1 split of uniform images coloured by index: 1.png, 2.png, ... + digitStruct.mat.

    Digit j of a number has the box (4 + 10 j, 4, 10, 16); the image is 8 + 10 k by 24 pixels.
    """
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for i, number in enumerate(numbers):
        name = f"{i + 1}.png"
        Image.new("RGB", (8 + 10 * len(number), 24), index_colour(i)).save(folder / name)
        boxes = np.array([[4 + 10 * j, 4, 10, 16] for j in range(len(number))], dtype=np.float64)
        annotations.append(Annotation(name, np.array([int(d) for d in number]), boxes))
    write_digitstruct(folder / "digitStruct.mat", annotations)
    return annotations


# ------------------------------------------------------------------------------ genuine SVHN

def test_genuine_sample_from_labels_csv(shared_data):
    records = read_records(shared_data / "svhn-sample" / "train", "labels.csv")
    assert list(records.columns) == COLUMNS and len(records) == 2000
    first = records.iloc[:3]
    assert list(first["name"]) == ["1.png", "2.png", "3.png"]
    assert list(first["digits"]) == ["19", "23", "25"] and list(first["length"]) == [2, 2, 2]
    assert list(zip(first["width"], first["height"])) == [(741, 350), (199, 83), (52, 23)]
    np.testing.assert_array_equal(first["boxes"].iloc[0], [[246, 77, 81, 219], [323, 81, 96, 219]])
    assert Path(first["path"].iloc[0]).is_absolute() and Path(first["path"].iloc[0]).is_file()


def test_genuine_digitstruct_agrees_with_labels_csv(shared_data):
    folder = shared_data / "svhn-sample" / "train"
    mat = read_records(folder, "digitStruct_first39.mat")
    csv = read_records(folder, "labels.csv").iloc[:39]
    assert len(mat) == 39
    assert list(mat["digits"]) == list(csv["digits"])
    assert list(mat["width"]) == list(csv["width"]) and list(mat["height"]) == list(csv["height"])
    for a, b in zip(mat["boxes"], csv["boxes"]):
        np.testing.assert_array_equal(a, b)


def test_genuine_extra_split_names_missing_files(shared_data):
    folder = shared_data / "svhn-sample" / "extra"
    with pytest.raises(DataError) as err:
        read_records(folder, "digitStruct_first40.mat")
    assert err.value.path == str(folder)
    assert "37 of 40" in err.value.problem and "4.png" in err.value.problem
    assert "(and 32 more)" in err.value.problem


# ------------------------------------------------------------------------------ written splits

def test_written_split_round_trips(tmp_path):
    numbers = ["7", "42", "1234567", "305"]
    annotations = write_split(tmp_path / "train", numbers)
    records = read_records(tmp_path / "train")
    assert list(records["digits"]) == numbers and list(records["length"]) == [1, 2, 7, 3]
    assert list(records["width"]) == [8 + 10 * len(n) for n in numbers]
    assert set(records["height"]) == {24}
    for row, a in zip(records.itertuples(), annotations):
        assert row.path == str(tmp_path / "train" / a.name)
        assert row.boxes.dtype == np.float64
        np.testing.assert_array_equal(row.boxes, a.boxes)


def test_missing_images_are_listed(tmp_path):
    write_split(tmp_path, [str(i) for i in range(10)])
    for i in (2, 3, 4, 5, 6, 8, 9):
        (tmp_path / f"{i}.png").unlink()
    with pytest.raises(DataError) as err:
        read_records(tmp_path)
    assert err.value.path == str(tmp_path)
    assert "7 of 10" in err.value.problem and "2.png, 3.png" in err.value.problem
    assert "(and 2 more)" in err.value.problem


def test_unreadable_image_is_named(tmp_path):
    write_split(tmp_path, ["1", "2"])
    (tmp_path / "2.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        read_records(tmp_path)
    assert err.value.path == str(tmp_path / "2.png")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="no such annotation file"):
        read_records(tmp_path)


def _csv(folder: Path, rows: list[str]) -> str:
    (folder / "labels.csv").write_text("filename,label,left,top,width,height\n" + "\n".join(rows) + "\n")
    return "labels.csv"


def test_csv_names_outside_the_folder_are_refused(tmp_path):
    (tmp_path / "split").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "outside.png")
    name = _csv(tmp_path / "split", ["../outside.png,1,1,1,5,5", "/etc/passwd,1,1,1,5,5"])
    with pytest.raises(DataError, match="outside its folder: ../outside.png, /etc/passwd"):
        read_records(tmp_path / "split", name)


def test_csv_bad_rows_and_columns(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "1.png")
    with pytest.raises(DataError, match="labels must be 0..10"):
        read_records(tmp_path, _csv(tmp_path, ["1.png,11,1,1,5,5"]))
    with pytest.raises(DataError, match="first at data row 2"):
        read_records(tmp_path, _csv(tmp_path, ["1.png,1,1,1,5,5", "1.png,1,x,1,5,5"]))
    (tmp_path / "labels.csv").write_text("filename,label\n1.png,1\n")
    with pytest.raises(DataError, match="missing columns"):
        read_records(tmp_path, "labels.csv")


def test_csv_label_10_is_zero_and_repeated_names_group(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    records = read_records(tmp_path, _csv(tmp_path, ["a.png,1,1,1,5,5", "a.png,10,6,1,5,5"]))
    assert list(records["digits"]) == ["10"]
    np.testing.assert_array_equal(records["boxes"].iloc[0], [[1, 1, 5, 5], [6, 1, 5, 5]])


# ------------------------------------------------------------------------------ label encoding

def test_encode_labels_lengths_0_to_7():
    numbers = ["", "1", "12", "123", "1234", "12345", "123456", "9876543"]
    length, digits = encode_labels(numbers)
    assert length.dtype == np.uint8 and digits.dtype == np.uint8 and digits.shape == (8, 5)
    assert length.tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
    assert digits[0].tolist() == [NO_DIGIT] * 5
    assert digits[3].tolist() == [1, 2, 3, NO_DIGIT, NO_DIGIT]
    assert digits[5].tolist() == [1, 2, 3, 4, 5]
    assert digits[7].tolist() == [9, 8, 7, 6, 5]  # more than five digits: the first five


@pytest.mark.parametrize("bad", ["1a", "-1", "١٢", " 1"])
def test_encode_labels_rejects_non_digits(bad):
    with pytest.raises(ValueError, match="not a string of digits"):
        encode_labels([bad])
