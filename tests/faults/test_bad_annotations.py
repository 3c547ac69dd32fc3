"""Bad annotation files (digitStruct.mat, its JSON conversion, labels.csv) and bad split folders:
`harness data prepare` stops before any image is prepared, with one line naming the file and the
problem; names never lead outside the split folder; missing images are an error or a counted skip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from h5py import h5s, h5t

from harness.data.splitfile import open_prepared

from .builders import (
    BOX,
    PREPARE_ARGS,
    annotation,
    finished_outputs,
    one_line_error,
    plain_png,
    prepare,
    svhn_root,
    write_split,
)

GOOD = {"1.png": plain_png(), "2.png": plain_png((1, 2, 3))}


def prepare_fails(capsys, root: Path, path: Path, *words: str) -> None:
    one_line_error(capsys, ["data", "prepare", "svhn", "--root", str(root), *PREPARE_ARGS],
                   f"harness: error: {path}: ", *words)
    assert finished_outputs(root) == []


# ---------------------------------------------------------------------------------- digitStruct.mat

def _not_hdf5(mat: Path) -> None:
    mat.write_text("filename,label\n1.png,3\n")


def _matlab_v5(mat: Path) -> None:
    mat.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024".ljust(116)
                    + bytes(8) + b"\x00\x01IM" + bytes(64))  # the 128-byte v5 header, then data


def _no_digitstruct(mat: Path) -> None:
    mat.unlink()
    with h5py.File(mat, "w") as f:
        f.create_group("#refs#")
        f["digitStructure"] = np.zeros((2, 1))


def _truncated(mat: Path) -> None:
    mat.write_bytes(mat.read_bytes()[:3000])


def _reference(key: str, address: int):
    def edit(mat: Path) -> None:
        with h5py.File(mat, "r+") as f:
            ds = f["digitStruct"][key]
            raw = np.empty(ds.shape, np.uint64)
            ds.id.read(h5s.ALL, h5s.ALL, raw, mtype=h5t.STD_REF_OBJ)
            raw[1, 0] = address
            ds.id.write(h5s.ALL, h5s.ALL, raw, mtype=h5t.STD_REF_OBJ)
    return edit


def _field(field: str, value):
    def edit(mat: Path) -> None:
        with h5py.File(mat, "r+") as f:
            group = f[f["digitStruct/bbox"][1, 0]]
            del group[field]
            group[field] = value
    return edit


DIGITSTRUCT = {  # id -> (damage, words of the error)
    "not HDF5": (_not_hdf5, ("not an HDF5 file",)),
    "MATLAB v5": (_matlab_v5, ("MATLAB v5 MAT-file", "-v7.3")),
    "no digitStruct": (_no_digitstruct, ("no group 'digitStruct'",)),
    "truncated": (_truncated, ("cannot open as HDF5", "truncated")),
    "dangling name": (_reference("name", 10**9), ("entry 1", "dangling or invalid reference")),
    "dangling bbox": (_reference("bbox", 2**64 - 1), ("entry 1 (2.png)", "reference")),
    "strings as boxes": (_field("left", np.array([[b"ab"]])), ("entry 1 (2.png)", "'left'")),
    "integer label 11": (_field("label", np.array([[11]], np.int32)), ("entry 1 (2.png)", "1..10")),
    "NaN box": (_field("top", np.array([[np.nan]])), ("entry 1 (2.png)", "not all finite")),
}


@pytest.mark.parametrize("case", DIGITSTRUCT)
def test_bad_digitstruct_is_named(tmp_path, capsys, case):
    damage, words = DIGITSTRUCT[case]
    root = svhn_root(tmp_path, GOOD)
    mat = root / "svhn" / "train" / "digitStruct.mat"
    damage(mat)
    prepare_fails(capsys, root, mat, *words)


def test_no_name_leads_outside_the_split_folder(tmp_path, capsys):
    """``..`` and absolute names are refused before any image is opened: the file they name, which
    exists, is not even read (its access time stays where it was set)."""
    root = svhn_root(tmp_path, GOOD)
    secret = root / "svhn" / "secret.png"
    secret.write_bytes(plain_png((6, 6, 6)))
    control = root / "control.png"
    control.write_bytes(plain_png())
    train = root / "svhn" / "train"
    for name in ("../secret.png", str(secret), "sub/../../secret.png"):
        for kind in ("mat", "json", "csv"):
            for stale in ("digitStruct.mat", "digitStruct.json", "labels.csv"):
                (train / stale).unlink(missing_ok=True)
            for path in (secret, control):
                os.utime(path, (0, path.stat().st_mtime))  # atime before mtime: a read moves it
            write_split(train, GOOD, [annotation("1.png"), annotation(name)], kind=kind)
            source = train / {"mat": "digitStruct.mat", "json": "digitStruct.json", "csv": "labels.csv"}[kind]
            words = ("outside its folder",) if kind == "csv" else ("entry 1", "not a plain file name")
            prepare_fails(capsys, root, source, *words)
            assert secret.stat().st_atime == 0, (name, kind)
    control.read_bytes()
    if control.stat().st_atime == 0:
        pytest.skip("this filesystem does not record reads (noatime): the name checks above still ran")


def test_huge_box_values_are_refused_not_an_overflow(tmp_path, capsys):
    entries = [annotation("1.png"), annotation("2.png", boxes=[(1e308, 4.0, 1e308, 16.0)])]
    root = svhn_root(tmp_path, GOOD, entries)
    prepare_fails(capsys, root, root / "svhn" / "train" / "2.png", "nothing to crop", "not finite")


def test_negative_boxes_are_used_as_documented_and_listed(tmp_path):
    """A box reaching left of the image is clamped to it (the crop grown around it is black past the
    edge); one of negative width marks no pixels and is left out of the crop; both are listed in the
    data card."""
    entries = [annotation("1.png", "12", boxes=[BOX, (20.0, 4.0, -10.0, 16.0)]),
               annotation("2.png", boxes=[(-4.0, 4.0, 14.0, 16.0)])]
    root = svhn_root(tmp_path, GOOD, entries)
    data = prepare(root)
    with open_prepared(data.train) as f:
        assert list(f["names"].asstr()[:]) == ["1.png", "2.png"] and f["length"][:].tolist() == [2, 1]
        image = f["images"][1]  # box (0, 4, 10, 16) grown to (-2, 1, 12, 23), 14x22 -> 16x16
        assert (image[:, 4:] == (1, 2, 3)).all() and (image[:, :2] == 0).all()
    anomalies = json.loads(data.card.read_text())["sources"]["train"]["anomalies"]
    assert anomalies["box_empty"]["files"] == ["1.png"] and anomalies["box_outside_image"]["files"] == ["2.png"]


def test_missing_images_are_an_error_or_a_counted_skip(tmp_path, capsys):
    root = svhn_root(tmp_path, {**GOOD, "3.png": None, "4.png": None})
    train = root / "svhn" / "train"
    prepare_fails(capsys, root, train, "2 of 4 image files named in digitStruct.mat are missing: 3.png, 4.png")
    data = prepare(root, "data.bad_files=skip")
    card = json.loads(data.card.read_text())["sources"]["train"]
    assert card["anomalies"]["missing"]["files"] == ["3.png", "4.png"] and card["prepared"] == 2


def test_an_empty_annotation_file_is_not_an_empty_dataset(tmp_path, capsys):
    root = svhn_root(tmp_path, {}, entries=[])
    prepare_fails(capsys, root, root / "svhn" / "train" / "digitStruct.mat", "names no images")


# ---------------------------------------------------------------------------------- JSON and CSV

BOX_JSON = '{"label": 3, "left": 4, "top": 4, "width": 10, "height": 16}'

JSON = {  # id -> (file contents, words of the error)
    "syntax": ('[{"filename": "1.png", "boxes": [' + BOX_JSON + ']', ("not valid JSON",)),
    "nesting": ("[" * 100_000 + "]" * 100_000, ("not valid JSON", "recursion")),
    "NaN literal": ('[{"filename": "1.png", "boxes": [{"label": 3, "left": NaN, "top": 4, "width": 10, '
                    '"height": 16}]}]', ("entry 0 (1.png)", "left is nan, not a finite number")),
    "object": ('{"filename": "1.png", "boxes": [' + BOX_JSON + ']}', ("top level is a JSON object",)),
    "label as text": ('[{"filename": "1.png", "boxes": [{"label": "3", "left": 4, "top": 4, "width": 10, '
                      '"height": 16}]}]', ("entry 0 (1.png)", "label is 3, not a finite number")),
    "no boxes": ('[{"filename": "1.png", "boxes": []}]', ("entry 0 (1.png)", "non-empty list")),
    "not UTF": (b"\xff\xfe\xfd not text", ("not valid JSON",)),
}


@pytest.mark.parametrize("case", JSON)
def test_bad_json_annotations_are_named(tmp_path, capsys, case):
    text, words = JSON[case]
    root = svhn_root(tmp_path, GOOD, kind="json")
    source = root / "svhn" / "train" / "digitStruct.json"
    source.write_bytes(text if isinstance(text, bytes) else text.encode())
    prepare_fails(capsys, root, source, *words)


HEADER = "filename,label,left,top,width,height\n"
CSV = {  # id -> (file contents, words of the error)
    "infinite box": (HEADER + "1.png,3,4,4,inf,16\n", ("1 bad rows, first at data row 1",)),
    "label 11": (HEADER + "1.png,3,4,4,10,16\n2.png,11,4,4,10,16\n", ("1 bad rows, first at data row 2",)),
    "missing column": ("filename,label,left,top,width\n1.png,3,4,4,10\n", ("missing columns ['height']",)),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00", ("not a readable CSV file",)),
    "empty": ("", ("not a readable CSV file",)),
    "open quote": (HEADER + '"1.png,3,4,4,10,16\n', ("not a readable CSV file",)),
}


@pytest.mark.parametrize("case", CSV)
def test_bad_csv_labels_are_named(tmp_path, capsys, case):
    text, words = CSV[case]
    root = svhn_root(tmp_path, GOOD, kind="csv")
    source = root / "svhn" / "train" / "labels.csv"
    source.write_bytes(text if isinstance(text, bytes) else text.encode())
    prepare_fails(capsys, root, source, *words)


# ---------------------------------------------------------------------------------- split folders

def test_a_folder_without_annotations_is_named(tmp_path, capsys):
    root = svhn_root(tmp_path, GOOD)
    train = root / "svhn" / "train"
    (train / "digitStruct.mat").unlink()
    prepare_fails(capsys, root, train, "no such annotation file")
    for name in ("a.json", "b.json"):
        (train / name).write_text("[]")
    prepare_fails(capsys, root, train, "several JSON files (a.json, b.json)")


def test_an_image_named_twice_is_an_error_or_a_counted_skip(tmp_path, capsys):
    root = svhn_root(tmp_path, GOOD, [annotation("1.png"), annotation("2.png"), annotation("2.png", "45")])
    prepare_fails(capsys, root, root / "svhn" / "train" / "digitStruct.mat",
                  "names these images more than once: 2.png")
    data = prepare(root, "data.bad_files=skip")
    anomalies = json.loads(data.card.read_text())["sources"]["train"]["anomalies"]
    assert anomalies["duplicate_name"]["files"] == ["2.png"]
