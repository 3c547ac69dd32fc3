"""Faults while data is written or read: a disk that fills up (a real file-size limit in a child
process: writes past it fail with EFBIG, as writes to a full disk fail with ENOSPC), processes killed
in the middle of atomic writes, a prepared file removed while in use. The previous good file is
always kept, the error names the file, and nothing that looks whole is ever half written."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.data.digitstruct import read_digitstruct, write_digitstruct
from harness.data.prepare import prepare_split, work_folder
from harness.data.records import read_records
from harness.data.splitfile import open_prepared

from .builders import (
    FILE_SIZE_LIMIT,
    REPO,
    annotation,
    child,
    data_error,
    plain_png,
    write_split,
)

_PREPARE = FILE_SIZE_LIMIT + """
from harness.errors import HarnessError
from harness.data.prepare import prepare_split
from harness.data.records import read_records
records = read_records(sys.argv[1])
limit_file_size(int(sys.argv[3]))
try:
    prepare_split(records, sys.argv[2], image_size=16, workers=1)
except HarnessError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("raw"), {f"{i}.png": plain_png((i, 3 * i, 7)) for i in range(40)})


def contents(path) -> dict:
    with open_prepared(path) as f:
        return {"images": f["images"][:], "names": list(f["names"].asstr()[:]), "fingerprint": f.attrs["fingerprint"]}


@pytest.mark.parametrize("limit, words, segment_kept", [
    (60_000, "cannot write it: it needs about", True),  # the segment fits, the HDF5 file would not
    (8_000, "cannot write it (File too large)", False),  # the first segment does not fit either
], ids=["while assembling", "while saving a segment"])
def test_disk_full_while_preparing_keeps_the_previous_file(raw, tmp_path, limit, words, segment_kept):
    records = read_records(raw)
    reference = contents(prepare_split(records, tmp_path / "whole" / "train.h5", image_size=16, workers=1))
    out = tmp_path / "train.h5"
    prepare_split(records.iloc[:5], out, image_size=16, workers=1)  # the previous good version
    before = out.read_bytes()

    result = child(_PREPARE, str(raw), str(out), str(limit))
    assert result.returncode == 3, result.stderr[-3000:]
    message = result.stdout.strip()
    assert message.startswith(f"{out}: ") and words in message, message
    assert out.read_bytes() == before  # untouched, and still a whole prepared file
    assert contents(out)["names"] == [f"{i}.png" for i in range(5)]
    work = work_folder(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train.h5", "whole"] + [work.name] * segment_kept)
    if segment_kept:
        assert [p.suffix for p in work.iterdir()] == [".npz"]  # a finished segment, no temporary file

    prepare_split(records, out, image_size=16, workers=1)  # the same command, with room again
    again = contents(out)
    assert again["fingerprint"] == reference["fingerprint"] and again["names"] == reference["names"]
    np.testing.assert_array_equal(again["images"], reference["images"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5", "whole"]


_WRITE_DIGITSTRUCT = FILE_SIZE_LIMIT + """
from harness.data.digitstruct import Annotation, write_digitstruct
from harness.errors import HarnessError
import numpy as np
entries = [Annotation(f"{i}.png", np.array([i % 10, 4]), np.ones((2, 4))) for i in range(500)]
limit_file_size(20_000)
try:
    write_digitstruct(sys.argv[1], entries)
except HarnessError as exc:
    print(exc)
    sys.exit(3)
"""


def test_disk_full_while_writing_annotations_keeps_the_previous_file(tmp_path):
    path = tmp_path / "digitStruct.mat"
    write_digitstruct(path, [annotation("1.png"), annotation("2.png", "45")])
    before = path.read_bytes()
    result = child(_WRITE_DIGITSTRUCT, str(path))
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stdout.strip() == f"{path}: cannot write it (File too large)"
    assert path.read_bytes() == before and [a.name for a in read_digitstruct(path)] == ["1.png", "2.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["digitStruct.mat"]  # no temporary file left


_REWRITE_FOREVER = """
import hashlib, sys
import numpy as np
from pathlib import Path
from harness import atomic
from harness.data.digitstruct import Annotation, write_digitstruct
folder, rng = Path(sys.argv[1]), np.random.default_rng(0)
for i in range(1_000_000):
    body = rng.bytes(int(rng.integers(1, 4_000_000)))
    atomic.write_bytes(folder / "blob.bin", hashlib.sha256(body).digest() + body)
    n = int(rng.integers(1, 400))
    write_digitstruct(folder / "digitStruct.mat", [Annotation(f"{j}.png", np.array([j % 10]), np.ones((1, 4)))
                                                   for j in range(n)])
"""


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_killed_while_rewriting_files_leaves_each_whole(tmp_path, delay):
    """kill -9 at a random moment of a loop rewriting files atomically: each file is a whole earlier
    version (its checksum holds; the annotations read back), never a torn one."""
    proc = subprocess.Popen([sys.executable, "-c", _REWRITE_FOREVER, str(tmp_path)], cwd=REPO,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "digitStruct.mat").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    blob = (tmp_path / "blob.bin").read_bytes()
    assert hashlib.sha256(blob[32:]).digest() == blob[:32]
    entries = read_digitstruct(tmp_path / "digitStruct.mat")
    assert entries and [a.name for a in entries] == [f"{j}.png" for j in range(len(entries))]
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"blob.bin", "digitStruct.mat"}


def test_prepared_file_removed_while_in_use_is_named(raw, tmp_path):
    from harness.data.batches import SplitBatches

    path = prepare_split(read_records(raw), tmp_path / "train.h5", image_size=16, workers=1)
    batches = SplitBatches(path, 8, shuffle=True)
    path.unlink()  # e.g. the data folder cleaned up under a running job
    data_error(lambda: batches[0], path, "no such prepared split file (removed while in use?)")
