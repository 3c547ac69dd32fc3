"""digitStruct.mat I/O: genuine SVHN files, round trips, MATLAB's layout, bad input, atomic
writes."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from h5py import h5s, h5t

from harness.data.digitstruct import (
    Annotation,
    _read,
    read_digitstruct,
    write_digitstruct,
)
from harness.errors import DataError

FIELDS = ("height", "label", "left", "top", "width")


def same(a: list[Annotation], b: list[Annotation]) -> bool:
    return len(a) == len(b) and all(
        x.name == y.name and np.array_equal(x.digits, y.digits) and np.array_equal(x.boxes, y.boxes)
        and x.digits.dtype == np.int64 and x.boxes.dtype == np.float64 for x, y in zip(a, b))


def random_annotations(count: int, seed: int = 0) -> list[Annotation]:
    """Lengths 1..6 in turn, digit 0 included, fractional and negative box values."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        k = i % 6 + 1
        boxes = np.round(rng.uniform(-2, 500, (k, 4)), 2)
        out.append(Annotation(f"{i + 1}.png", rng.integers(0, 10, k), boxes))
    out[0] = out[0]._replace(digits=np.array([0]))
    return out


def common_snippet(f: h5py.File, i: int) -> tuple[str, dict[str, list[float]]]:
    """The h5py code people use on SVHN's digitStruct.mat, written for the genuine files."""
    name = "".join(chr(v[0]) for v in f[f["digitStruct/name"][i][0]][()])
    bbox = f[f["digitStruct/bbox"][i].item()]
    attrs = {}
    for key in FIELDS:
        attr = bbox[key]
        attrs[key] = ([f[attr[()][j].item()][()][0][0] for j in range(len(attr))]
                      if len(attr) > 1 else [attr[()][0][0]])
    return name, attrs


# ------------------------------------------------------------------------------ genuine SVHN


def test_genuine_train_sample_matches_labels_csv(shared_data):
    folder = shared_data / "svhn-sample" / "train"
    entries, slow = _read(str(folder / "digitStruct_first39.mat"))
    table = pd.read_csv(folder / "labels.csv")
    assert len(entries) == 39 and slow == []  # the fast path reads every genuine entry
    assert [e.name for e in entries] == [f"{i}.png" for i in range(1, 40)]
    for e in entries:
        rows = table[table.filename == e.name]
        np.testing.assert_array_equal(e.digits, rows.label.to_numpy() % 10)
        np.testing.assert_array_equal(e.boxes, rows[["left", "top", "width", "height"]].to_numpy())
    assert {len(e.digits) for e in entries} >= {1, 2, 3}  # inline and referenced fields both seen
    assert same(entries, _read(str(folder / "digitStruct_first39.mat"), fast=False)[0])


def test_genuine_extra_sample_parses(shared_data):
    path = shared_data / "svhn-sample" / "extra" / "digitStruct_first40.mat"
    entries, slow = _read(str(path))
    assert len(entries) == 40 and slow == [] and entries[0].name == "1.png"
    assert all(len(e.digits) == len(e.boxes) >= 1 for e in entries)
    assert same(entries, _read(str(path), fast=False)[0])


# ------------------------------------------------------------------------------ round trips


def test_round_trip_exact(tmp_path):
    annotations = random_annotations(60)
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, annotations)
    entries, slow = _read(str(path))
    assert slow == [] and same(entries, annotations)
    assert same(_read(str(path), fast=False)[0], annotations)
    assert not [p for p in os.listdir(tmp_path) if p != "digitStruct.mat"]


def test_round_trip_large_refs_group(tmp_path):
    """Thousands of objects in #refs#: a multi-level B-tree that HDF5 itself must search."""
    annotations = random_annotations(1500, seed=1)
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, iter(annotations))  # any iterable, consumed once
    assert same(read_digitstruct(path), annotations)
    with h5py.File(path, "r") as f:
        refs = f["#refs#"]
        names = list(refs)
        assert len(names) > 32 * 8 * 4 and names == sorted(names)
        assert all(name in refs for name in names[::97])  # lookups by name walk the B-tree
        for i in (0, 777, 1499):
            name, attrs = common_snippet(f, i)
            assert name == annotations[i].name
            np.testing.assert_array_equal(attrs["left"], annotations[i].boxes[:, 0])


def test_empty_file_round_trips(tmp_path):
    write_digitstruct(tmp_path / "empty.mat", [])
    assert read_digitstruct(tmp_path / "empty.mat") == []


def test_reads_files_written_by_the_hdf5_library(tmp_path):
    """h5py's encodings: contiguous datasets (fast path), version-2 headers and integer fields
    (read through HDF5 itself) come out exactly too."""
    annotations = random_annotations(12)
    entries = [(a.name, columns(a)) for a in annotations]
    integers = [(name, {**fields, "label": [int(v) for v in fields["label"]]})
                for name, fields in entries]
    for libver, fields, fast in (("earliest", entries, True), ("latest", entries, False),
                                 ("earliest", integers, False)):
        path = tmp_path / f"{libver}-{fast}.mat"
        build(path, fields, libver=libver)
        got, slow = _read(str(path))
        assert same(got, annotations) and slow == ([] if fast else list(range(12)))


# ------------------------------------------------------------------------ MATLAB's layout


def plain(value):
    """An attribute value as plain Python, MATLAB_fields' arrays of characters as bytes."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [v.tobytes() for v in value]
    return value.tolist() if isinstance(value, np.ndarray) else value


def attrs(obj) -> dict:
    return {k: plain(v) for k, v in obj.attrs.items() if k != "H5PATH"}  # MATLAB's own path note


def describe(f: h5py.File, i: int) -> dict:
    """What a MATLAB-layout reader relies on for entry i, apart from names and values."""
    name = f[f["digitStruct/name"][i, 0]]
    group = f[f["digitStruct/bbox"][i, 0]]
    fields = {}
    for key in sorted(group):
        ds = group[key]
        if ds.dtype == object:
            targets = [f[r] for r in ds[:, 0]]
            fields[key] = ("refs", ds.shape[1], [(t.dtype.str, t.shape, attrs(t)) for t in targets])
        else:
            fields[key] = ("inline", ds.dtype.str, ds.shape, attrs(ds))
    return {"name": (name.dtype.str, name.shape[1], attrs(name)), "bbox": attrs(group),
            "fields": fields}


def test_written_layout_mirrors_genuine_file(shared_data, tmp_path):
    genuine_path = shared_data / "svhn-sample" / "train" / "digitStruct_first39.mat"
    path = tmp_path / "digitStruct.mat"
    annotations = read_digitstruct(genuine_path)
    write_digitstruct(path, annotations)
    with h5py.File(genuine_path, "r") as genuine, h5py.File(path, "r") as written:
        assert sorted(written) == sorted(genuine) == ["#refs#", "digitStruct"]
        for key in ("name", "bbox"):
            g, w = genuine["digitStruct"][key], written["digitStruct"][key]
            assert (w.dtype, w.shape) == (g.dtype, g.shape)
        assert attrs(written["digitStruct"]) == attrs(genuine["digitStruct"]) == {
            "MATLAB_class": b"struct", "MATLAB_fields": [b"name", b"bbox"]}
        for i in range(39):
            assert describe(written, i) == describe(genuine, i)
            assert common_snippet(written, i) == common_snippet(genuine, i)
    head = path.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file, Platform: ") and b"HDF5 schema 1.00 ." in head
    assert head[124:128] == b"\x00\x02IM" == genuine_path.read_bytes()[124:128]


def test_single_digit_fields_inline_and_longer_ones_referenced(tmp_path):
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, [Annotation("1.png", np.array([0]), np.array([[1, 2, 3, 4]])),
                             Annotation("2.png", np.array([4, 0]), np.ones((2, 4)))])
    with h5py.File(path, "r") as f:
        one, two = (f[f["digitStruct/bbox"][i, 0]] for i in range(2))
        assert one["label"].dtype == np.float64 and one["label"][()].tolist() == [[10.0]]
        assert h5py.check_ref_dtype(two["label"].dtype) is h5py.Reference
        assert [f[r][()].tolist() for r in two["label"][:, 0]] == [[[4.0]], [[10.0]]]
        assert f[two["label"][0, 0]].attrs["MATLAB_class"] == b"double"
        assert one.attrs["MATLAB_class"] == b"struct"


# -------------------------------------------------------------------------------- bad input


def columns(a: Annotation) -> dict[str, list[float]]:
    cols = {f: a.boxes[:, j].tolist() for j, f in enumerate(("left", "top", "width", "height"))}
    cols["label"] = [float(d or 10) for d in a.digits.tolist()]
    return cols


def build(path: Path, entries, *, libver: str = "earliest", name_dtype=np.uint16) -> None:
    """A digitStruct.mat made with h5py's high-level API, field values as given (any dtype)."""
    with h5py.File(path, "w", libver=libver) as f:
        refs, names, bboxes = f.create_group("#refs#"), [], []
        for i, (name, fields) in enumerate(entries):
            codes = np.array([ord(c) for c in name], dtype=name_dtype).reshape(-1, 1)
            names.append(refs.create_dataset(f"n{i}", data=codes).ref)
            group = refs.create_group(f"b{i}")
            for key, values in fields.items():
                if len(values) == 1:
                    group.create_dataset(key, data=np.reshape(values, (1, 1)))
                else:
                    targets = [refs.create_dataset(f"s{i}{key}{j}", data=[[v]]).ref
                               for j, v in enumerate(values)]
                    group.create_dataset(key, data=np.array(targets, h5py.ref_dtype).reshape(-1, 1))
            bboxes.append(group.ref)
        top = f.create_group("digitStruct")
        top.create_dataset("name", data=np.array(names, h5py.ref_dtype).reshape(-1, 1))
        top.create_dataset("bbox", data=np.array(bboxes, h5py.ref_dtype).reshape(-1, 1))


GOOD = {"height": [30, 31], "label": [1, 10], "left": [5, 20], "top": [2, 3], "width": [9, 10]}


def edited(fields: dict, key: str, values) -> dict:
    out = dict(fields)
    if values is None:
        del out[key]
    else:
        out[key] = values
    return out


def raises(path: Path, *words: str) -> None:
    with pytest.raises(DataError) as info:
        read_digitstruct(path)
    message = str(info.value)
    assert message.startswith(str(path)) and info.value.path == str(path)
    for word in words:
        assert word in message, message


def test_missing_unreadable_and_non_hdf5_files(tmp_path):
    raises(tmp_path / "nope.mat", "not found")
    raises(tmp_path, "folder")
    (tmp_path / "text.mat").write_text("filename,label\n1.png,3\n")
    raises(tmp_path / "text.mat", "not an HDF5 file")
    (tmp_path / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(192))
    raises(tmp_path / "v5.mat", "MATLAB v5", "-v7.3")
    write_digitstruct(tmp_path / "whole.mat", random_annotations(20))
    (tmp_path / "cut.mat").write_bytes((tmp_path / "whole.mat").read_bytes()[:20000])
    raises(tmp_path / "cut.mat", "cannot open as HDF5", "truncated")


def test_missing_or_mismatched_top_level(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    raises(tmp_path / "other.h5", "no group 'digitStruct'")
    for key in ("name", "bbox"):
        build(tmp_path / f"no_{key}.mat", [("1.png", GOOD)])
        with h5py.File(tmp_path / f"no_{key}.mat", "r+") as f:
            del f["digitStruct"][key]
        raises(tmp_path / f"no_{key}.mat", f"'digitStruct/{key}'")
    build(tmp_path / "short.mat", [("1.png", GOOD), ("2.png", GOOD)])
    with h5py.File(tmp_path / "short.mat", "r+") as f:
        bbox = f["digitStruct/bbox"][:1]
        del f["digitStruct/bbox"]
        f["digitStruct"].create_dataset("bbox", data=bbox)
    raises(tmp_path / "short.mat", "2 names but 1 bboxes")
    build(tmp_path / "floats.mat", [("1.png", GOOD)])
    with h5py.File(tmp_path / "floats.mat", "r+") as f:
        del f["digitStruct/name"]
        f["digitStruct/name"] = np.zeros((1, 1))
    raises(tmp_path / "floats.mat", "not object references")


def set_reference(path: Path, key: str, value: int | h5py.Reference) -> None:
    """Overwrite entry 0's top-level reference: a raw address, or a reference to another object."""
    with h5py.File(path, "r+") as f:
        ds = f["digitStruct"][key]
        if isinstance(value, h5py.Reference):
            ds[0, 0] = value
            return
        raw = np.empty(ds.shape, np.uint64)
        ds.id.read(h5s.ALL, h5s.ALL, raw, mtype=h5t.STD_REF_OBJ)
        raw[0, 0] = value
        ds.id.write(h5s.ALL, h5s.ALL, raw, mtype=h5t.STD_REF_OBJ)


@pytest.mark.parametrize("key,value,words", [
    ("name", 10**9, ("entry 0", "reference")),  # past the end of the file
    ("name", 8, ("entry 0", "reference")),  # inside the superblock
    ("bbox", 2**64 - 1, ("entry 0", "reference")),  # undefined address
    ("name", h5py.Reference(), ("entry 0", "null reference")),
])
def test_dangling_and_invalid_references(tmp_path, key, value, words):
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, random_annotations(3))
    set_reference(path, key, value)
    raises(path, *words)


def test_references_to_the_wrong_kind_of_object(tmp_path):
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, random_annotations(3))
    with h5py.File(path, "r") as f:
        bbox0, name0 = f["digitStruct/bbox"][0, 0], f["digitStruct/name"][0, 0]
    set_reference(path, "name", bbox0)
    raises(path, "entry 0", "name reference", "GroupID")
    write_digitstruct(path, random_annotations(3))
    set_reference(path, "bbox", name0)
    raises(path, "entry 0 (1.png)", "bbox reference")


@pytest.mark.parametrize("entry,field,value,words", [
    (0, "label", 11.0, "1..10"), (2, "label", 3.5, "1..10"),  # entry 0: inline, 2: referenced
    (0, "top", np.nan, "finite"), (2, "width", -np.inf, "finite")])
def test_bad_values_in_a_matlab_layout_file(tmp_path, entry, field, value, words):
    """Values read by the fast path are checked like all others."""
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, random_annotations(4))
    with h5py.File(path, "r+") as f:
        group = f[f["digitStruct/bbox"][entry, 0]]
        target = group[field] if entry == 0 else f[group[field][1, 0]]
        target[...] = value
    raises(path, f"entry {entry} ({entry + 1}.png)", words)


@pytest.mark.parametrize("fields,words", [
    (edited(GOOD, "label", None), ("'label' is missing",)),
    (edited(GOOD, "width", [9, 10, 11]), ("different or zero lengths",)),
    (edited(GOOD, "label", [11, 2]), ("labels", "1..10")),
    (edited(GOOD, "label", [0, 2]), ("labels", "1..10")),
    (edited(GOOD, "label", [2.5, 2]), ("labels", "1..10")),
    (edited(GOOD, "label", [np.array(b"3")]), ("'label'",)),
    (edited(GOOD, "left", [np.nan, 3]), ("not all finite",)),
    (edited(GOOD, "height", [np.inf]), ("different or zero lengths",)),
    ({**{k: v[:1] for k, v in GOOD.items()}, "top": [-np.inf]}, ("not all finite",)),
])
def test_bad_box_fields(tmp_path, fields, words):
    path = tmp_path / "digitStruct.mat"
    build(path, [("1.png", GOOD), ("2.png", fields)])
    raises(path, "entry 1 (2.png)", *words)


def test_bad_field_dtypes(tmp_path):
    path = tmp_path / "digitStruct.mat"
    build(path, [("1.png", GOOD)])
    with h5py.File(path, "r+") as f:
        group = f[f["digitStruct/bbox"][0, 0]]
        del group["left"]
        group["left"] = np.array([[b"ab"], [b"cd"]])
    raises(path, "entry 0", "'left'")
    build(path, [("1.png", GOOD)], name_dtype=np.float64)
    raises(path, "entry 0", "character codes")


@pytest.mark.parametrize("name", ["/etc/passwd", "../1.png", "a/1.png", "..", "a\\1.png",
                                  "C:1.png", "", "1\n.png"])
def test_names_that_point_outside_the_folder(tmp_path, name):
    path = tmp_path / "digitStruct.mat"
    build(path, [(name, GOOD)])
    raises(path, "entry 0", "name")


# ------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("bad,words", [
    (Annotation("1.png", np.array([10]), np.ones((1, 4))), "0..9"),
    (Annotation("1.png", np.array([-1]), np.ones((1, 4))), "0..9"),
    (Annotation("1.png", np.array([1.0]), np.ones((1, 4))), "0..9"),
    (Annotation("1.png", np.array([], dtype=int), np.ones((0, 4))), "k >= 1"),
    (Annotation("1.png", np.array([1, 2]), np.ones((1, 4))), "(k, 4)"),
    (Annotation("1.png", np.array([1]), np.array([[1, 2, np.nan, 4]])), "finite"),
    (Annotation("../1.png", np.array([1]), np.ones((1, 4))), "outside the dataset folder"),
    (("1.png", [1]), "Annotation"),
])
def test_write_rejects_bad_annotations_and_leaves_no_file(tmp_path, bad, words):
    path = tmp_path / "digitStruct.mat"
    with pytest.raises(DataError) as info:
        write_digitstruct(path, [random_annotations(1)[0], bad])
    assert str(info.value).startswith(str(path)) and "annotation 1" in str(info.value)
    assert words in str(info.value)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, random_annotations(5))
    before = path.read_bytes()

    def interrupted():
        yield from random_annotations(3, seed=9)
        raise KeyboardInterrupt  # e.g. Ctrl-C while a generator renders the next image

    with pytest.raises(KeyboardInterrupt):
        write_digitstruct(path, interrupted())
    infinite = Annotation("x.png", np.array([1]), np.array([[1, 1, 1, np.inf]]))
    with pytest.raises(DataError, match="annotation 3"):  # found while writing, after 3 entries
        write_digitstruct(path, random_annotations(3) + [infinite])
    assert os.listdir(tmp_path) == ["digitStruct.mat"] and path.read_bytes() == before
    assert same(read_digitstruct(path), random_annotations(5))


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_digitstruct(tmp_path / "no" / "digitStruct.mat", random_annotations(1))
