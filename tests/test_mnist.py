"""MNIST-composite: IDX reading (genuine files and broken ones), composites, the split folder, prepare."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import mnist
from harness.data.datasets import prepare
from harness.data.digitstruct import read_digitstruct
from harness.data.mnist import read_idx, render_composite
from harness.data.sources import DATASETS
from harness.errors import DataError
from harness.spec import DataSpec

# Name in SHA256SUMS.uncompressed -> file name in ../shared/data/mnist
GENUINE = {"train-images.idx3-ubyte": "train-images-idx3-ubyte.gz",
           "train-labels.idx1-ubyte": "train-labels-idx1-ubyte.gz",
           "t10k-images.idx3-ubyte": "t10k-images-idx3-ubyte.gz",
           "t10k-labels.idx1-ubyte": "t10k-labels-idx1-ubyte.gz"}


def idx_bytes(array: np.ndarray) -> bytes:
    """An array in IDX layout (the inverse of read_idx), big-endian."""
    code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = False) -> dict:
    """A tiny MNIST-like folder: digit d is a bar of brightness 100 + 15 d, so it can be recognised."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        labels = (np.arange(n) * 7 + (split == "test")) % 10
        images = np.zeros((n, 28, 28), np.uint8)
        for i, d in enumerate(labels):
            images[i, 4:24, 10:18] = 100 + 15 * d
        for kind, array in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte" + (".gz" if gz else "")
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
        out[split] = (images, labels)
    return out


@pytest.fixture(scope="module")
def genuine(shared_data):
    return mnist.read_mnist_folder(shared_data / "mnist")


# ------------------------------------------------------------------------------------------ IDX


def test_genuine_idx_files_read_to_their_published_content(shared_data):
    folder = shared_data / "mnist"
    lines = (folder / "SHA256SUMS.uncompressed").read_text().splitlines()
    sums = dict(line.split()[::-1] for line in lines)
    assert set(sums) == set(GENUINE)
    shapes = {"train-images": (60000, 28, 28), "train-labels": (60000,),
              "t10k-images": (10000, 28, 28), "t10k-labels": (10000,)}
    for listed, file in GENUINE.items():
        array = read_idx(folder / file)
        assert array.dtype == np.uint8 and array.shape == shapes[listed.split(".")[0]]
        # header and every byte of data, written back, are the published file exactly
        assert hashlib.sha256(idx_bytes(array)).hexdigest() == sums[listed], file


def test_genuine_folder_pairs_images_with_labels(genuine):
    (train_x, train_y), (test_x, test_y) = genuine["train"], genuine["test"]
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # MNIST's well-known first labels
    assert test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(train_y).min() > 5000


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_every_type_compressed_or_not(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    data = idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    got = read_idx(path)
    np.testing.assert_array_equal(got, array)
    assert got.dtype.isnative and got.flags.writeable


_LABELS = idx_bytes(np.arange(10, dtype=np.uint8))


@pytest.mark.parametrize("data, problem", [
    (b"\x00\x00\x08\x04" + _LABELS[4:], "truncated"),  # says 4 dimensions: header runs into the data
    (b"\x00\x01\x08\x01" + _LABELS[4:], "magic number 0x00010801"),
    (b"\x00\x00\x07\x01" + _LABELS[4:], "magic number 0x00000701"),  # unknown type code
    (b"\x00\x00\x08\x00" + _LABELS[4:], "magic number 0x00000800"),  # zero dimensions
    (b"PK\x03\x04" + _LABELS[4:], "not an IDX file"),
    (b"\x00\x00", "too short"),
    (_LABELS[:6], "truncated: the header needs 8 bytes"),
    (_LABELS[:-1], r"truncated: .* a 10 array of uint8 \(10 bytes of data\), the file holds 9"),
    (_LABELS + b"\x00", "extra bytes"),
    (gzip.compress(_LABELS, mtime=0)[:-12], "damaged or truncated gzip"),
    (gzip.compress(_LABELS[:-3], mtime=0), "truncated"),  # a valid gzip stream of a short IDX file
])
def test_bad_idx_files_are_errors_naming_the_file(tmp_path, data, problem):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match=problem) as err:
        read_idx(path)
    assert err.value.path == str(path)


def test_missing_idx_file(tmp_path):
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx(tmp_path / "nope")


def test_folder_problems_name_the_file(tmp_path):
    write_mnist(tmp_path / "a")
    (tmp_path / "a" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing MNIST file.*t10k-labels-idx1-ubyte") as err:
        mnist.read_mnist_folder(tmp_path / "a")
    assert err.value.path == str(tmp_path / "a")

    write_mnist(tmp_path / "b")  # one label too few for the images
    labels = tmp_path / "b" / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(read_idx(labels)[:-1]))
    with pytest.raises(DataError, match="29 labels but .*train-images-idx3-ubyte holds 30 images") as err:
        mnist.read_mnist_folder(tmp_path / "b")
    assert err.value.path == str(labels)

    write_mnist(tmp_path / "c")
    labels = tmp_path / "c" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.full(12, 11, np.uint8)))
    with pytest.raises(DataError, match="digits 0..9"):
        mnist.read_mnist_folder(tmp_path / "c")

    write_mnist(tmp_path / "d")
    images = tmp_path / "d" / "train-images-idx3-ubyte"
    images.write_bytes(idx_bytes(np.zeros((30, 784), np.uint8)))  # flattened: not images
    with pytest.raises(DataError, match=r"shape \(30, 784\)"):
        mnist.read_mnist_folder(tmp_path / "d")
    with pytest.raises(DataError, match="no such folder"):
        mnist.read_mnist_folder(tmp_path / "none")


def test_sources_in_order_option_then_root_mnist(tmp_path):
    mine = write_mnist(tmp_path / "mine", n_train=20, gz=True)
    under_root = write_mnist(tmp_path / "root" / "mnist", n_train=25)
    got = mnist.load_mnist(str(tmp_path / "mine"), tmp_path / "root")
    np.testing.assert_array_equal(got["train"][1], mine["train"][1])
    got = mnist.load_mnist(None, tmp_path / "root")  # no option: <root>/mnist/, never the network
    np.testing.assert_array_equal(got["train"][1], under_root["train"][1])
    np.testing.assert_array_equal(got["test"][0], under_root["test"][0])
    with pytest.raises(DataError, match="folder path"):
        mnist.load_mnist(3, tmp_path)


# ------------------------------------------------------------------------------------ composites


def test_lengths_follow_svhn(shared_data):
    stats = json.loads((shared_data / "svhn-train-stats.json").read_text())["length_histogram"]
    counts = np.array([stats[str(k)] for k in range(1, 6)], np.float64)
    np.testing.assert_allclose(mnist.LENGTH_P, counts / counts.sum())
    lengths = np.array([len(mnist.choose_digits(3, i, 100)) for i in range(20000)])
    observed = np.bincount(lengths, minlength=6)[1:] / len(lengths)
    np.testing.assert_allclose(observed, mnist.LENGTH_P, atol=0.01)
    assert lengths.min() == 1 and lengths.max() <= 5


def test_labels_are_those_of_the_mnist_digits_drawn(genuine):
    images, labels = genuine["test"]
    correlations = []
    for index in range(200):
        image, digits, boxes, sources = render_composite(images, labels, 11, index)
        assert digits == labels[sources].tolist()
        canvas = np.asarray(image, np.float64)
        for (l, t, w, h), j in zip(boxes.astype(int), sources):  # the box shows that very digit
            ink = mnist._ink_crop(images[j])
            expected = np.asarray(Image.fromarray(ink).resize((w, h), Image.Resampling.BILINEAR), np.float64)
            correlations.append(np.corrcoef(expected.ravel(), canvas[t:t + h, l:l + w].ravel())[0, 1])
    correlations = np.array(correlations)
    assert correlations.min() > 0.6 and np.mean(correlations > 0.95) > 0.95  # neighbours may touch


def test_boxes_are_tight_inside_the_canvas_and_left_to_right(genuine):
    images, labels = genuine["train"]
    heights = []
    for index in range(300):
        image, digits, boxes, _ = render_composite(images, labels, 5, index)
        assert image.size == (mnist.CANVAS, mnist.CANVAS) and image.mode == "L"
        assert boxes.shape == (len(digits), 4) and 1 <= len(digits) <= 5
        canvas = np.asarray(image)
        assert (canvas[:, :mnist.MARGIN] == 0).all() and (canvas[:mnist.MARGIN] == 0).all()
        for l, t, w, h in boxes:
            assert all(float(v).is_integer() for v in (l, t, w, h))
            assert l >= 0 and t >= 0 and w >= 1 and h >= 1
            assert l + w <= mnist.CANVAS and t + h <= mnist.CANVAS
            ink = canvas[int(t):int(t + h), int(l):int(l + w)] >= mnist.INK
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()  # tight
        union = np.zeros_like(canvas, bool)
        for l, t, w, h in boxes.astype(int):
            union[t:t + h, l:l + w] = True
        assert not (canvas[~union] >= mnist.INK).any()  # no ink outside the boxes
        assert np.all(np.diff(boxes[:, 0] + boxes[:, 2] / 2) > 0)
        heights.extend(boxes[:, 3])
    assert np.percentile(heights, 5) >= 10 and np.median(heights) >= 18


def test_the_centre_crop_keeps_every_digit_whole(genuine):
    """Prepared as the paper says (union of the boxes grown 30%, resized to 64x64), a composite's ink
    lies inside the centre 54x54 crop the model reads at inference, even for the long numbers that
    span the canvas (a crop clamped to the canvas stretched them, and the centre crop cut their ends)."""
    from harness.data.prepare import preprocess

    images, labels = genuine["train"]
    for index in range(200):
        image, digits, boxes, _ = render_composite(images, labels, 5, index)
        crop = preprocess(image, boxes, 64, 0.3)[..., 0]
        ink = crop >= mnist.INK
        assert not (ink[:5].any() or ink[59:].any() or ink[:, :5].any() or ink[:, 59:].any()), (index, digits)


def test_composites_are_deterministic(genuine):
    images, labels = genuine["train"]
    a, b = render_composite(images, labels, 9, 42), render_composite(images, labels, 9, 42)
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
    for other in (render_composite(images, labels, 10, 42), render_composite(images, labels, 9, 43)):
        assert other[0].tobytes() != a[0].tobytes()


@pytest.mark.parametrize("seed, index", [(-1, 0), (0, -2), (1.0, 0), (True, 0)])
def test_render_composite_rejects_bad_arguments(seed, index):
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError):
        render_composite(images, np.zeros(3, np.int64), seed, index)


# ------------------------------------------------------------------------------------------ split


def test_split_folder_is_svhn_layout_and_independent_of_workers(tmp_path, genuine):
    images, labels = genuine["test"]
    one = mnist.generate_split(tmp_path / "w1", images, labels, 40, seed=3, workers=1, progress=False)
    two = mnist.generate_split(tmp_path / "w2", images, labels, 40, seed=3, workers=2, progress=False)
    assert set(os.listdir(one)) == {f"{i}.png" for i in range(1, 41)} | {"digitStruct.mat", "manifest.json"}
    for i in range(1, 41):
        assert (one / f"{i}.png").read_bytes() == (two / f"{i}.png").read_bytes()
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["pool"] == mnist.pool_fingerprint(images, labels) and manifest["count"] == 40
    for folder in (one, two):
        entries = read_digitstruct(folder / "digitStruct.mat")
        assert [e.name for e in entries] == [f"{i}.png" for i in range(1, 41)]
        for i, entry in enumerate(entries):
            image, digits, boxes, _ = render_composite(images, labels, 3, i)
            assert entry.digits.tolist() == digits
            np.testing.assert_array_equal(entry.boxes, boxes)
            with Image.open(folder / entry.name) as png:
                assert png.tobytes() == image.tobytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_split_folder_is_reused_or_refused_never_overwritten(tmp_path):
    pool = write_mnist(tmp_path / "digits")
    images, labels = pool["train"]
    out = mnist.generate_split(tmp_path / "s", images, labels, 6, seed=1, workers=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert mnist.generate_split(out, images, labels, 6, seed=1, workers=1, progress=False) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    other_pool = (images[::-1].copy(), labels[::-1].copy())
    cases = (((images, labels, 7), "count"), ((images, labels, 6), "seed"), ((*other_pool, 6), "pool"))
    for args, differs in cases:
        with pytest.raises(DataError, match=f"differs in {differs}") as err:
            mnist.generate_split(out, *args, seed=2 if differs == "seed" else 1, workers=1, progress=False)
        assert err.value.path == str(out)
    (out / "4.png").unlink()
    with pytest.raises(DataError, match="incomplete.*4.png"):
        mnist.generate_split(out, images, labels, 6, seed=1, workers=1, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="no manifest.json"):
        mnist.generate_split(foreign, images, labels, 6, seed=1, workers=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError):
        mnist.generate_split(tmp_path / "z", images, labels, 0, seed=1)
    assert not (tmp_path / "z").exists()


def test_interrupted_split_leaves_nothing(tmp_path, monkeypatch):
    import harness.data.digitstruct

    def interrupted(path, annotations):
        next(iter(annotations))  # some images are written by then
        raise KeyboardInterrupt

    pool = write_mnist(tmp_path / "digits")
    monkeypatch.setattr(harness.data.digitstruct, "write_digitstruct", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist.generate_split(tmp_path / "out" / "s", *pool["train"], 50, seed=1, workers=2, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_dataset_uses_train_digits_for_train_and_test_digits_for_test(tmp_path):
    pool = write_mnist(tmp_path / "digits", n_train=30, n_test=12)
    raw = DATASETS.create("mnist_composite", tmp_path / "data", source=str(tmp_path / "digits"),
                          train=25, test=10, seed=4)
    for split, seed in (("train", 4), ("test", 4 + 1_000_003)):
        images, labels = pool[split]
        manifest = json.loads((raw[split] / "manifest.json").read_text())
        assert manifest["pool"] == mnist.pool_fingerprint(images, labels) and manifest["seed"] == seed
        for i, entry in enumerate(read_digitstruct(raw[split] / "digitStruct.mat")):
            sources = mnist.choose_digits(seed, i, len(images))
            assert entry.digits.tolist() == labels[sources].tolist()
            with Image.open(raw[split] / entry.name) as png:  # the bars' brightness tells the digit
                canvas = np.asarray(png)
            for (l, t, w, h), d in zip(entry.boxes.astype(int), entry.digits):
                assert abs(np.median(canvas[t:t + h, l:l + w][canvas[t:t + h, l:l + w] >= mnist.INK])
                           - (100 + 15 * d)) <= 8
    again = DATASETS.create("mnist_composite", tmp_path / "data", source=str(tmp_path / "digits"),
                            train=25, test=10, seed=4)
    assert again == raw


def test_prepare_end_to_end(tmp_path, shared_data):
    from harness.data.batches import SplitBatches
    from harness.data.splitfile import PreparedSplit

    spec = DataSpec(name="mnist_composite", root=str(tmp_path),
                    options={"source": str(shared_data / "mnist"), "train": 120, "test": 40})
    data = prepare(spec)
    counts = {split: len(PreparedSplit(path).targets()) for split, path in data.splits().items()}
    assert counts["train"] + counts["val"] == 120 and counts["test"] == 40 and counts["val"] > 0
    images, targets = SplitBatches(data.train, 16, shuffle=True)[0]
    assert images.shape == (16, 64, 64, 3) and images.max() > 200  # white ink on black
    assert set(targets[:, 0]) <= {1, 2, 3, 4, 5}
    test_labels = mnist.read_mnist_folder(shared_data / "mnist")["test"][1]
    for i, row in enumerate(PreparedSplit(data.test).targets()):
        expected = test_labels[mnist.choose_digits(1234 + 1_000_003, i, 10000)]
        assert row[0] == len(expected) and row[1:1 + len(expected)].tolist() == expected.tolist()
