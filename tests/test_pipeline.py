"""SplitBatches: coverage, per-epoch order, sharding, labels that travel with their images, the three
readers (memmap, h5py, memory), model.fit on this backend and, in a subprocess, on the others."""

import importlib.util
import math
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_records import write_split

from harness.backend import load_keras
from harness.data.batches import SplitBatches
from harness.data.prepare import prepare_split
from harness.data.records import encode_labels, read_records
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError

keras = load_keras()
N = 103  # not a multiple of any batch size used: the last batch is partial


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """Image i is uniformly coloured (i % 256, i // 256, 7) and shows the number i."""
    folder = tmp_path_factory.mktemp("raw")
    write_split(folder, [str(i) for i in range(N)])
    return prepare_split(read_records(folder), folder / "split.h5", image_size=8, workers=1)


def indices(images: np.ndarray) -> np.ndarray:
    """Which examples a batch holds, from the colour each image was written with."""
    centre = images[:, 4, 4]  # the corners of the long numbers' crops are black past the image
    return centre[:, 0].astype(int) + 256 * centre[:, 1].astype(int)


def epoch(batches: SplitBatches) -> np.ndarray:
    return np.concatenate([indices(batches[i][0]) for i in range(len(batches))])


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_example_once_per_epoch(path, shuffle):
    batches = SplitBatches(path, 10, shuffle=shuffle)
    assert len(batches) == math.ceil(N / 10) and batches.num_examples == N
    assert [len(batches[i][0]) for i in (0, len(batches) - 1)] == [10, N % 10]
    seen = epoch(batches)
    assert sorted(seen) == list(range(N))
    assert (seen == np.arange(N)).all() != shuffle  # unshuffled: the file's order
    with pytest.raises(IndexError):
        batches[len(batches)]


def test_targets_match_images(path):
    batches = SplitBatches(path, 16, shuffle=True, seed=3)
    length, digits = encode_labels([str(i) for i in range(N)])
    for b in range(len(batches)):
        images, targets = batches[b]
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 3)
        assert targets.dtype == np.int32 and targets.shape == (len(images), 6)
        rows = indices(images)
        np.testing.assert_array_equal(targets[:, 0], length[rows])
        np.testing.assert_array_equal(targets[:, 1:], digits[rows])


def test_order_changes_every_epoch_and_follows_the_seed(path):
    a, b, c = (SplitBatches(path, 10, shuffle=True, seed=s) for s in (1, 1, 2))
    first = epoch(a)
    np.testing.assert_array_equal(first, epoch(b))
    assert not (first == epoch(c)).all()
    a.on_epoch_end()
    second = epoch(a)
    assert sorted(second) == list(range(N)) and not (second == first).all()
    b.on_epoch_end()
    np.testing.assert_array_equal(second, epoch(b))  # epoch 2 is reproducible too
    resumed = SplitBatches(path, 10, shuffle=True, seed=1)
    resumed.epoch = 1  # as a resumed run sets it
    np.testing.assert_array_equal(second, epoch(resumed))


@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_are_disjoint_and_cover(path, shuffle):
    for _ in range(2):  # in two successive epochs
        shards = [SplitBatches(path, 7, shuffle=shuffle, seed=5, shard_index=k, shard_count=3)
                  for k in range(3)]
        parts = [epoch(s) for s in shards]
        assert sorted(np.concatenate(parts)) == list(range(N))
        assert {len(p) for p in parts} <= {N // 3, N // 3 + 1}
        for s in shards:
            s.on_epoch_end()


def test_bad_arguments(path):
    with pytest.raises(ValueError, match="shard_index"):
        SplitBatches(path, 8, shuffle=False, shard_index=3, shard_count=3)
    with pytest.raises(ValueError, match="batch_size"):
        SplitBatches(path, 0, shuffle=False)


_SHARED: list = []  # reaches forked children through the copied memory, as Keras' workers do


def _batch_in_child(index: int):
    return _SHARED[0][index]


@pytest.mark.parametrize("kwargs", [{}, {"memmap": False}, {"cache": True}])
def test_forked_and_pickled_copies_open_their_own_file(path, kwargs):
    batches = SplitBatches(path, 10, shuffle=True, seed=9, **kwargs)
    expected = [batches[i] for i in range(3)]  # the parent has its handle open now
    _SHARED[:] = [batches]
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(_batch_in_child, range(3))
    finally:
        _SHARED.clear()
    copy = pickle.loads(pickle.dumps(batches))
    for (x, y), (gx, gy), (cx, cy) in zip(expected, got, [copy[i] for i in range(3)]):
        np.testing.assert_array_equal(x, gx)
        np.testing.assert_array_equal(x, cx)
        np.testing.assert_array_equal(y, gy)
        np.testing.assert_array_equal(y, cy)


def test_read_targets_and_names(path):
    length, digits = encode_labels([str(i) for i in range(N)])
    targets = PreparedSplit(path).targets()
    assert targets.dtype == np.int32 and targets.shape == (N, 6)
    np.testing.assert_array_equal(targets, np.concatenate([length[:, None], digits], axis=1))
    assert PreparedSplit(path).names() == [f"{i + 1}.png" for i in range(N)]


@pytest.mark.parametrize("workers", [{}, {"workers": 2, "use_multiprocessing": True}])
def test_model_fit_one_epoch(path, workers):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Flatten(),
        keras.layers.Dense(6),
    ])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(SplitBatches(path, 16, shuffle=True, **workers), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    predictions = model.predict(SplitBatches(path, 32, shuffle=False), verbose=0)
    assert predictions.shape == (N, 6)


# --------------------------------------------------------------------------------------- readers


@pytest.fixture(scope="module")
def chunked(path, tmp_path_factory):
    """The same split with its images chunked and compressed: no plain bytes to map."""
    out = tmp_path_factory.mktemp("chunked") / "split.h5"
    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        for name, ds in src.items():
            layout = {"chunks": (4, 8, 8, 3), "compression": "gzip"} if name == "images" else {}
            dst.create_dataset(name, data=ds[()], dtype=ds.dtype, **layout)
        dst.attrs.update(src.attrs)
    return out


def test_every_reader_gives_the_same_batches(path, chunked):
    variants = {
        "memmap": SplitBatches(path, 10, shuffle=True, seed=4),
        "h5py": SplitBatches(path, 10, shuffle=True, seed=4, memmap=False),
        "memory": SplitBatches(path, 10, shuffle=True, seed=4, cache=True),
        "h5py fallback": SplitBatches(chunked, 10, shuffle=True, seed=4),
        "memory from chunks": SplitBatches(chunked, 10, shuffle=True, seed=4, cache=True),
    }
    assert [v.reader for v in variants.values()] == ["memmap", "h5py", "memory", "h5py", "memory"]
    for _ in range(2):  # two epochs, two orders
        for i in range(len(variants["memmap"])):
            images, targets = variants["memmap"][i]
            assert images.dtype == np.uint8 and images.flags.writeable and images.flags.c_contiguous
            for name, other in variants.items():
                got_images, got_targets = other[i]
                np.testing.assert_array_equal(got_images, images, err_msg=name)
                np.testing.assert_array_equal(got_targets, targets, err_msg=name)
        for v in variants.values():
            v.on_epoch_end()


def test_batches_are_copies_not_views_of_the_file(path):
    batches = SplitBatches(path, 10, shuffle=False)
    first, _ = batches[0]
    first[:] = 0  # a batch the model (or a user) modifies leaves the data alone
    assert indices(batches[0][0]).tolist() == list(range(10))
    assert not np.shares_memory(first, batches._dataset())


def test_cache_loads_the_split_once_streaming_reads_on_demand(path, tmp_path):
    copy = tmp_path / "split.h5"
    shutil.copy(path, copy)
    cached = SplitBatches(copy, 10, shuffle=True, cache=True)
    streamed = SplitBatches(copy, 10, shuffle=True)
    copy.unlink()  # the cache was filled when it was made; streaming opens the file on first use
    assert sorted(epoch(cached)) == list(range(N))
    with pytest.raises(DataError, match="no such prepared split file"):
        streamed[0]


def test_truncated_file_is_an_error_naming_it(path, tmp_path):
    copy = tmp_path / "split.h5"
    data = path.read_bytes()
    copy.write_bytes(data[:len(data) - 500])
    with pytest.raises(DataError, match="truncated") as err:  # HDF5 sees it when the file is opened
        SplitBatches(copy, 10, shuffle=True)
    assert err.value.path == str(copy)
    copy.write_bytes(data)
    batches = SplitBatches(copy, 10, shuffle=True)
    with open(copy, "r+b") as f:  # cut short after it was checked, before it is mapped
        f.truncate(len(data) - 500)
    with pytest.raises(DataError, match="truncated: its images end at byte") as err:
        batches[0]
    assert err.value.path == str(copy)


_OTHER_BACKEND = """
    import sys
    import numpy as np
    from harness.models.layers import Crop
    from harness.backend import load_keras
    from harness.data.batches import SplitBatches

    keras = load_keras()
    assert keras.backend.backend() == sys.argv[2], keras.backend.backend()
    path = sys.argv[1]
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), Crop(6),
                              keras.layers.Flatten(), keras.layers.Dense(6)])
    model.compile(optimizer="adam", loss="mse")
    # worker threads feed fit; the cached reader feeds predict
    history = model.fit(SplitBatches(path, 16, shuffle=True, workers=2), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    predictions = model.predict(SplitBatches(path, 32, shuffle=False, cache=True), verbose=0)
    assert predictions.shape == (103, 6), predictions.shape
    print("ok", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fit_on_another_keras_backend(path, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    if load_keras().backend.backend() == backend:
        pytest.skip(f"{backend} is this process's backend: test_model_fit_one_epoch covers it")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(repo)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_OTHER_BACKEND), str(path), backend],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ok {backend}" in result.stdout
