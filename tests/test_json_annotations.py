"""The JSON conversion of digitStruct.mat: same records as the CSV, and every malformed file is named."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data.digitstruct import (
    Annotation,
    annotation_file,
    read_json_annotations,
    write_digitstruct,
)
from harness.data.records import read_records
from harness.errors import DataError


def json_from_csv(csv: Path) -> list[dict]:
    """The widely used JSON layout, built from a labels.csv (floats, as the conversion writes them)."""
    table = pd.read_csv(csv, dtype={"filename": str})
    return [{"filename": name,
             "boxes": [{k: float(row[k]) for k in ("height", "label", "left", "top", "width")}
                       for _, row in rows.iterrows()]}
            for name, rows in table.groupby("filename", sort=False)]


def test_genuine_sample_json_gives_the_csv_records(shared_data, tmp_path):
    folder = shared_data / "svhn-sample" / "train"
    path = tmp_path / "digitStruct.json"
    path.write_text(json.dumps(json_from_csv(folder / "labels.csv")))
    from_json = read_records(folder, str(path))
    from_csv = read_records(folder, "labels.csv")
    assert len(from_json) == 2000
    pd.testing.assert_frame_equal(from_json.drop(columns="boxes"), from_csv.drop(columns="boxes"))
    for a, b in zip(from_json["boxes"], from_csv["boxes"]):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a, b)
    assert from_json["digits"].iloc[0] == "19"  # 1.png: labels 1, 9


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (40, 20)).save(folder / name)


def entry(name: str, *labels: float) -> dict:
    return {"filename": name, "boxes": [{"label": lab, "left": 1.0 + 8 * j, "top": 2.0, "width": 7.0,
                                         "height": 12.0} for j, lab in enumerate(labels)]}


def test_read_json_values(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([entry("1.png", 1.0, 10.0), {**entry("2.png", 5), "extra": "ignored"}]))
    a, b = read_json_annotations(path)
    assert a.name == "1.png" and a.digits.tolist() == [1, 0] and a.digits.dtype == np.int64
    np.testing.assert_array_equal(a.boxes, [[1, 2, 7, 12], [9, 2, 7, 12]])
    assert b.digits.tolist() == [5] and b.boxes.shape == (1, 4)


def test_read_records_finds_the_annotation_file(tmp_path):
    write_images(tmp_path, ["1.png", "2.png"])
    with pytest.raises(DataError, match="no such annotation file"):
        annotation_file(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,label,left,top,width,height\n1.png,3,1,1,5,5\n")
    assert list(read_records(tmp_path)["digits"]) == ["3"]
    (tmp_path / "train.json").write_text(json.dumps([entry("1.png", 4), entry("2.png", 10, 1)]))
    assert list(read_records(tmp_path)["digits"]) == ["4", "01"]  # a JSON beats labels.csv
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(DataError, match="several JSON files") as err:
        read_records(tmp_path)
    assert err.value.path == str(tmp_path)
    write_digitstruct(tmp_path / "digitStruct.mat", [Annotation("2.png", np.array([7]),
                                                                np.array([[1.0, 1, 5, 5]]))])
    assert list(read_records(tmp_path)["digits"]) == ["7"]  # digitStruct.mat beats everything
    assert list(read_records(tmp_path, "labels.csv")["digits"]) == ["3"]  # explicit still wins


@pytest.mark.parametrize("content, message", [
    ("[{\"filename\": \"1.png\", ", "not valid JSON"),
    (b"\xff\xfe\x00[", "not valid JSON"),
    ('{"1.png": []}', "top level is a JSON object, expected a list"),
    ('[["1.png"]]', "entry 0: is a JSON array, expected an object"),
    ('[{"filename": "1.png"}]', "entry 0 (1.png): has keys ['filename'], expected filename and boxes"),
    ('[{"filename": "1.png", "boxes": []}]', "entry 0 (1.png): boxes is a JSON array (empty)"),
    ('[{"filename": "1.png", "boxes": {}}]', "entry 0 (1.png): boxes is a JSON object"),
    ('[{"filename": "../1.png", "boxes": [{}]}]', "entry 0 (../1.png): image name '../1.png' is not a plain"),
    ('[{"filename": 7, "boxes": [{}]}]', "entry 0: image name 7 is not a non-empty string"),
    ('[{"filename": "1.png", "boxes": [7]}]', "entry 0 (1.png): box 0 is a JSON number"),
    ('[{"filename": "1.png", "boxes": [{"label": 1}]}]', "box 0 lacks ['left', 'top', 'width', 'height']"),
])
def test_malformed_json_is_named(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as err:
        read_json_annotations(path)
    assert err.value.path == str(path)
    assert message in err.value.problem


@pytest.mark.parametrize("field, value, message", [
    ("label", 11, "box 1 label 11 is not a whole number in 1..10"),
    ("label", 0, "box 1 label 0 is not a whole number in 1..10"),
    ("label", 2.5, "box 1 label 2.5 is not a whole number in 1..10"),
    ("left", float("nan"), "box 1 left is nan, not a finite number"),
    ("top", float("inf"), "box 1 top is inf, not a finite number"),
    ("width", "7", "box 1 width is 7, not a finite number"),
    ("height", None, "box 1 height is None, not a finite number"),
    ("height", True, "box 1 height is True, not a finite number"),
    ("left", 10**400, "box 1 left is 1000000000"),
])
def test_bad_values_name_entry_and_file(tmp_path, field, value, message):
    bad = entry("2.png", 3.0, 4.0)
    bad["boxes"][1][field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([entry("1.png", 1.0), bad]))  # json writes NaN and Infinity literally
    with pytest.raises(DataError) as err:
        read_json_annotations(path)
    assert err.value.problem.startswith("entry 1 (2.png): ")
    assert message in err.value.problem


def test_missing_file_and_records_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_json_annotations(tmp_path / "none.json")
    write_images(tmp_path, ["1.png"])
    (tmp_path / "a.json").write_text(json.dumps([entry("1.png", 1), entry("2.png", 2), entry("1.png", 3)]))
    with pytest.raises(DataError, match="more than once: 1.png"):
        read_records(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps([entry("1.png", 1), entry("2.png", 2)]))
    with pytest.raises(DataError, match="1 of 2 image files named in a.json are missing: 2.png"):
        read_records(tmp_path)
