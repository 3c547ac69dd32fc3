"""PreparedSplit, the one reader of a prepared split file: every part of the file read back as the
preparation wrote it (checked against the raw HDF5 datasets), images in any row order, a mapping of
the file's own bytes, and a bad file refused in one line that names it."""

import json
import pickle

import h5py
import numpy as np
import pytest
from test_records import write_split

from harness.data.prepare import prepare_split
from harness.data.records import encode_labels, read_records
from harness.data.splitfile import FORMAT_VERSION, PreparedSplit, length_histogram
from harness.errors import DataError

N = 37


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    write_split(folder, [str(i) for i in range(N - 3)] + ["1234567", "7", "42"])
    return folder


@pytest.fixture(scope="module")
def path(raw):
    return prepare_split(read_records(raw), raw / "split.h5", image_size=12, box_expand=0.25, workers=1)


def test_attributes_and_labels_are_the_files(path, raw):
    split = PreparedSplit(path)
    with h5py.File(path, "r") as f:
        images, length, digits = f["images"][:], f["length"][:], f["digits"][:]
        names, fingerprint = list(f["names"].asstr()[:]), f.attrs["fingerprint"]
    assert len(split) == split.count == N and split.image_size == 12 and split.box_expand == 0.25
    assert split.fingerprint == fingerprint and split.attrs["format_version"] == FORMAT_VERSION
    json.dumps(split.attrs)  # plain values: logged as they are
    assert split.image_shape == (N, 12, 12, 3)
    records = read_records(raw)
    expected_length, expected_digits = encode_labels(list(records["digits"]))
    np.testing.assert_array_equal(split.targets(), np.concatenate([expected_length[:, None], expected_digits], 1))
    assert split.targets().dtype == np.int32
    np.testing.assert_array_equal(split.lengths(), length)
    np.testing.assert_array_equal(split.targets()[:, 1:], digits)
    assert split.names() == names == list(records["name"])
    np.testing.assert_array_equal(split.images(), images)


def test_card_entry(path):
    split = PreparedSplit(path)
    card = split.card()
    assert card == {"file": "split.h5", "images": N, "image_size": 12, "length_histogram": card["length_histogram"],
                    "fingerprint": split.fingerprint}
    assert card["length_histogram"] == length_histogram(split.lengths())
    assert card["length_histogram"][">5"] == 1 and card["length_histogram"]["0"] == 0
    assert sum(card["length_histogram"].values()) == N


@pytest.mark.parametrize("rows", [
    [5, 1, 30, 1],  # any order, repeats too
    [3, 4, 5, 6],  # a contiguous run
    np.array([36, 0]),
    slice(10, 20),
    [],
])
def test_images_by_rows(path, rows):
    with h5py.File(path, "r") as f:
        everything = f["images"][:]
    got = PreparedSplit(path).images(rows)
    np.testing.assert_array_equal(got, everything[rows])
    assert got.dtype == np.uint8 and got.shape[1:] == (12, 12, 3)


def test_an_open_reader_and_the_mapping_read_the_same_images(path):
    split = PreparedSplit(path)
    everything = split.images()
    with split.open() as reader:
        assert len(reader) == N
        np.testing.assert_array_equal(reader.read([7, 2]), everything[[7, 2]])
    mapped = split.map_images()
    assert split.image_offset is not None and type(mapped) is np.ndarray
    np.testing.assert_array_equal(mapped, everything)


def test_it_pickles_without_a_handle(path):
    again = pickle.loads(pickle.dumps(PreparedSplit(path)))
    assert again.count == N and again.names()[:2] == PreparedSplit(path).names()[:2]


def test_a_chunked_file_reads_the_same_but_is_not_mapped(path, tmp_path):
    chunked = tmp_path / "chunked.h5"
    with h5py.File(path, "r") as src, h5py.File(chunked, "w") as dst:
        for name in ("length", "digits", "names"):
            src.copy(name, dst)
        dst.create_dataset("images", data=src["images"][:], chunks=(4, 12, 12, 3), compression="gzip")
        dst.attrs.update(src.attrs)
    split = PreparedSplit(chunked)
    assert split.image_offset is None and split.map_images() is None
    np.testing.assert_array_equal(split.images([9, 3]), PreparedSplit(path).images([9, 3]))


def bad_files(tmp_path, good):
    missing = tmp_path / "missing.h5"
    text = tmp_path / "text.h5"
    text.write_text("not HDF5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:2000])
    return {missing: "no such prepared split file", text: "not a readable HDF5 file",
            other: "not a prepared split file", truncated: "truncated or corrupt"}


def test_a_bad_file_is_one_line_naming_it(path, tmp_path):
    for bad, problem in bad_files(tmp_path, path).items():
        with pytest.raises(DataError) as error:
            PreparedSplit(bad)
        message = str(error.value)
        assert str(bad) in message and problem in message and "\n" not in message, message


def test_a_file_cut_short_after_it_was_opened_is_named_when_mapped(path, tmp_path):
    copy = tmp_path / "cut.h5"
    copy.write_bytes(path.read_bytes())
    split = PreparedSplit(copy)
    with open(copy, "r+b") as f:
        f.truncate(split.image_offset + 100)
    with pytest.raises(DataError, match=r"cut.h5: truncated: its images end at byte \d+"):
        split.map_images()
