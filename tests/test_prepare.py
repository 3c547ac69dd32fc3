"""Prepared split files: crop geometry, colour modes, layout, atomic writes, rejection of bad files."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from test_records import index_colour, write_split

from harness.data.prepare import (
    crop_box,
    prepare_split,
    preprocess,
    unpreparable,
    work_folder,
)
from harness.data.records import encode_labels, read_records
from harness.data.splitfile import FORMAT_VERSION, open_prepared
from harness.errors import DataError

RED, WHITE = (255, 0, 0), (255, 255, 255)


# ------------------------------------------------------------------------------ geometry

def test_crop_box_expands_the_union_past_the_image_edges():
    boxes = np.array([[30, 20, 20, 20], [50, 25, 20, 15]])  # union: x 30..70, y 20..40
    assert crop_box(boxes, 100, 60, 0.0) == (30, 20, 70, 40)
    assert crop_box(boxes, 100, 60, 0.5) == (20, 15, 80, 45)  # 25% of 40 and 20 on each side
    assert crop_box(boxes, 100, 60, 3.0) == (-30, -10, 130, 70)  # not clamped: preprocess pads
    assert crop_box(np.array([[-10, 50, 30, 20]]), 100, 60, 0.5) == (-5, 47, 25, 63)  # union clamped first
    assert crop_box(np.array([[1.2, 2.7, 3.0, 3.0]]), 100, 60, 0.0) == (1, 2, 5, 6)  # outwards
    assert crop_box(np.zeros((0, 4)), 100, 60, 0.3) == (0, 0, 100, 60)  # no boxes: whole image
    with pytest.raises(ValueError, match="outside"):
        crop_box(np.array([[120, 10, 5, 5]]), 100, 60, 0.3)


def test_boxes_without_area_are_left_out_of_the_union():
    boxes = np.array([[30, 20, 20, 20], [0, 0, 0, 15], [90, 50, 5, -3]])  # a real box, two without area
    assert crop_box(boxes, 100, 60, 0.0) == (30, 20, 50, 40)
    assert crop_box(np.array([[0, 0, 0, 0]]), 100, 60, 0.3) == (0, 0, 100, 60)  # none left: whole image


def _target_image() -> Image.Image:
    image = Image.new("RGB", (100, 60), WHITE)
    image.paste(RED, (30, 20, 70, 40))  # a red 40x20 rectangle where the digit box is
    return image


def test_crop_without_expansion_is_the_box():
    crop = preprocess(_target_image(), np.array([[30, 20, 40, 20]]), 32, 0.0)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert (crop == RED).all()


def test_expanded_crop_keeps_a_centred_margin():
    # crop (20, 15, 80, 45) is 60x30, resized to 60x60: the rectangle lands on x 10..50, y 10..50
    crop = preprocess(_target_image(), np.array([[30, 20, 40, 20]]), 60, 0.5)
    assert (crop[12:48, 12:48] == RED).all()
    for margin in (crop[:8], crop[52:], crop[:, :8], crop[:, 52:]):
        assert (margin == WHITE).all()


def test_a_box_at_the_edge_is_padded_not_stretched():
    """The grown box reaching past the image is black there, and the box keeps its centred share of
    the crop, as far from the image's edge (a clamped crop stretched it over the whole width)."""
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 5, 40, 15))  # the digits span the whole width
    crop = preprocess(image, np.array([[0, 5, 40, 10]]), 60, 0.5)  # crop box (-10, 2.5..) 60x15
    assert (crop[:, :8] == 0).all() and (crop[:, 52:] == 0).all()  # 10 of 60 source pixels each side
    assert (crop[15:45, 12:48] == RED).all()
    assert (crop[:8, 12:48] == WHITE).all() and (crop[52:, 12:48] == WHITE).all()


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 200, (200, 200, 200)),
    ("LA", (90, 128), (90, 90, 90)),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
    ("I;16", 65535, (255, 255, 255)),
    ("P", 1, (0, 128, 255)),
])
def test_colour_modes_become_rgb(tmp_path, mode, value, expected):
    image = Image.new(mode, (30, 20), value)
    if mode == "P":
        image.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    image.save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as reread:
        assert reread.mode == mode
        crop = preprocess(reread, np.array([[5, 5, 10, 10]]), 8, 0.3)
    assert crop.shape == (8, 8, 3) and (crop == expected).all()


# ------------------------------------------------------------------------------ prepared files

NUMBERS = [str(i * 37) for i in range(150)] + ["1234567"]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    write_split(folder, NUMBERS)
    return read_records(folder)


def test_layout_and_labels(split, tmp_path):
    out = prepare_split(split, tmp_path / "sub" / "train.h5", image_size=16, workers=1)
    assert out == tmp_path / "sub" / "train.h5"
    length, digits = encode_labels(NUMBERS)
    with open_prepared(out) as f:
        n = len(NUMBERS)
        assert f["images"].shape == (n, 16, 16, 3) and f["images"].dtype == np.uint8
        assert f["images"].chunks is None  # contiguous: fastest random-access reads
        assert f["length"].dtype == np.uint8 and f["digits"].dtype == np.uint8
        np.testing.assert_array_equal(f["length"][:], length)
        np.testing.assert_array_equal(f["digits"][:], digits)
        assert list(f["names"].asstr()[:]) == list(split["name"])
        attrs = dict(f.attrs)
        for i in (0, 77, n - 1):  # uniform images: the crop is the index colour, the 7-digit one's
            assert (f["images"][i][:, 3:-3] == index_colour(i)).all()  # ends black past its edges
        assert (f["images"][n - 1][:, 0].sum(-1) < sum(index_colour(n - 1))).all()
    assert attrs["format_version"] == FORMAT_VERSION and attrs["count"] == n
    assert attrs["image_size"] == 16 and attrs["box_expand"] == pytest.approx(0.3)
    assert len(attrs["fingerprint"]) == 64
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.h5"]  # no temp file left


def test_empty_split(split, tmp_path):
    out = prepare_split(split.iloc[:0], tmp_path / "empty.h5", image_size=16)
    with open_prepared(out) as f:
        assert f.attrs["count"] == 0 and f["images"].shape == (0, 16, 16, 3)


def test_worker_pool_writes_the_same_file(split, tmp_path):
    one = prepare_split(split, tmp_path / "one.h5", image_size=16, workers=1)
    pool = prepare_split(split, tmp_path / "pool.h5", image_size=16, workers=2)
    with open_prepared(one) as a, open_prepared(pool) as b:
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
        np.testing.assert_array_equal(a["images"][:], b["images"][:])


def test_fingerprint_follows_content(split, tmp_path):
    a = prepare_split(split, tmp_path / "a.h5", image_size=16, workers=1)
    b = prepare_split(split.iloc[::-1].reset_index(drop=True), tmp_path / "b.h5", image_size=16,
                      workers=1)
    with open_prepared(a) as fa, open_prepared(b) as fb:
        assert fa.attrs["fingerprint"] != fb.attrs["fingerprint"]


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_mid_write_leaves_destination_alone(split, tmp_path, workers):
    bad = tmp_path / "truncated.png"  # a PNG cut short, as an interrupted copy leaves it
    bad.write_bytes(Path(split["path"].iloc[140]).read_bytes()[:60])
    broken = split.copy()
    broken.loc[140, "path"] = str(bad)  # in the third chunk: two are written before it fails
    out = tmp_path / "out" / "train.h5"
    with open_prepared(prepare_split(split.iloc[:10], out, image_size=16, workers=1)) as f:
        before = f.attrs["fingerprint"]
    with pytest.raises(DataError) as err:
        prepare_split(broken, out, image_size=16, workers=workers)
    assert err.value.path == str(bad)
    with open_prepared(out) as f:  # the previous version, intact
        assert f.attrs["fingerprint"] == before
    assert [p.name for p in out.parent.iterdir()] == ["train.h5"]
    out.unlink()
    with pytest.raises(DataError):
        prepare_split(broken, out, image_size=16, workers=workers)
    assert list(out.parent.iterdir()) == []  # nothing under the final name, no temp


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_leaves_bad_images_out_and_says_why(split, tmp_path, workers):
    bad = tmp_path / "truncated.png"
    bad.write_bytes(Path(split["path"].iloc[70]).read_bytes()[:60])
    broken = split.copy()
    broken.loc[70, "path"] = str(bad)
    broken.at[100, "boxes"] = np.array([[500.0, 500.0, 10.0, 10.0]])  # outside its image
    out = prepare_split(broken, tmp_path / "train.h5", image_size=16, workers=workers, bad_files="skip")
    kept = split.drop(index=[70, 100])
    with open_prepared(out) as f:
        assert list(f["names"].asstr()[:]) == list(kept["name"])
        assert (f["images"][70][:, 3:-3] == index_colour(71)).all()  # the images after a gap move up
        np.testing.assert_array_equal(f["length"][:], encode_labels(list(kept["digits"]))[0])
    assert unpreparable(str(bad), split["boxes"].iloc[70])[0] == "unreadable"
    assert unpreparable(split["path"].iloc[100], broken["boxes"].iloc[100])[0] == "no_crop"
    assert unpreparable(split["path"].iloc[0], split["boxes"].iloc[0]) is None


_PREPARE_FOREVER = """
import sys, pandas as pd
from harness.data.prepare import prepare_split
from harness.data.records import read_records
records = pd.concat([read_records(sys.argv[1])] * 2000, ignore_index=True)
prepare_split(records, sys.argv[2], image_size=16, workers=1)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_process_leaves_no_file_under_the_final_name(split, tmp_path, sig):
    out = tmp_path / "train.h5"
    work = work_folder(out)
    folder = Path(split["path"].iloc[0]).parent
    child = subprocess.Popen([sys.executable, "-c", _PREPARE_FOREVER, str(folder), str(out)],
                             cwd=Path(__file__).parents[1], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(work.glob("*.npz")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # well into preparing 302,000 images: far from done, even on a loaded machine
    finally:
        child.send_signal(sig)
        child.wait(timeout=30)
    assert child.returncode != 0 and not out.exists()
    with pytest.raises(DataError, match="no such prepared split file"):
        open_prepared(out)
    # Only the hidden work folder is left, with whole segments for a resumed run.
    assert [p.name for p in tmp_path.iterdir()] == [work.name]
    assert list(work.glob("*.npz"))
    if sig == signal.SIGINT:  # Python cleans up after KeyboardInterrupt; SIGKILL may leave a temp
        assert [p.name for p in work.iterdir() if p.suffix != ".npz"] == []


# ------------------------------------------------------------------------------ rejecting bad files

@pytest.fixture
def prepared(split, tmp_path):
    return prepare_split(split.iloc[:20], tmp_path / "p.h5", image_size=16, workers=1)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such prepared split file"):
        open_prepared(tmp_path / "absent.h5")


def test_truncated_file(prepared):
    size = prepared.stat().st_size
    with open(prepared, "r+b") as raw:
        raw.truncate(size // 2)
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        open_prepared(prepared)
    assert err.value.path == str(prepared)


def test_corrupt_file(prepared):
    with open(prepared, "r+b") as raw:
        raw.write(b"\xde\xad\xbe\xef" * 4)  # the HDF5 signature and superblock start
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_prepared(prepared)


def test_other_hdf5_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="no format_version"):
        open_prepared(tmp_path / "other.h5")


def test_wrong_version(prepared):
    with h5py.File(prepared, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(DataError, match="prepare the split again"):
        open_prepared(prepared)


def test_wrong_layout(prepared):
    with h5py.File(prepared, "r+") as f:
        del f["digits"]
    with pytest.raises(DataError, match="no dataset 'digits'"):
        open_prepared(prepared)
    with h5py.File(prepared, "r+") as f:
        f["digits"] = np.zeros((20, 4), np.uint8)
    with pytest.raises(DataError, match=r"'digits' is \(20, 4\)"):
        open_prepared(prepared)
