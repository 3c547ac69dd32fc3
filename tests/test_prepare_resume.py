"""Resumable preparation: a preparing process killed with SIGKILL, started again, redoes only the
segments it had not finished and writes the same file as an uninterrupted preparation."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_records import write_split

from harness.data.prepare import SEGMENT, prepare_split, work_folder
from harness.data.records import read_records
from harness.data.splitfile import open_prepared
from harness.errors import DataError

N = 2 * SEGMENT + 300  # three segments, the last one partial

_PREPARE = """
import sys
from harness.data.prepare import prepare_split
from harness.data.records import read_records
prepare_split(read_records(sys.argv[1]), sys.argv[2], image_size=16, workers=2, desc="prepare")
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    write_split(folder, [str(i) for i in range(N)])  # image i is uniformly coloured by i
    return folder


@pytest.fixture(scope="module")
def uninterrupted(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "train.h5"
    return _contents(prepare_split(read_records(raw), out, image_size=16, workers=1))


def _contents(path: Path) -> dict:
    with open_prepared(path) as f:
        return {"images": f["images"][:], "length": f["length"][:], "digits": f["digits"][:],
                "names": list(f["names"].asstr()[:]), "fingerprint": f.attrs["fingerprint"]}


def _kill_after_first_segment(raw: Path, out: Path) -> list[Path]:
    """Start a real preparation (two worker processes), SIGKILL it once a segment is finished."""
    work = work_folder(out)
    child = subprocess.Popen([sys.executable, "-c", _PREPARE, str(raw), str(out)],
                             cwd=Path(__file__).parents[1], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob("*.npz")) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert not out.exists()
    return sorted(work.glob("*.npz"))


def _resume(raw: Path, out: Path, capsys) -> tuple[int, int]:
    """Prepare again in this process; returns (images reused, images decoded) as it reports them."""
    capsys.readouterr()
    prepare_split(read_records(raw), out, image_size=16, workers=1, desc="prepare")
    err = capsys.readouterr().err
    resumed = re.search(r"resuming; (\d+) of 3 segments \((\d+) of (\d+) images\)", err)
    decoded = re.findall(r"^prepare: (\d+)/(\d+) ", err, flags=re.MULTILINE)[-1]
    assert decoded[0] == decoded[1]  # the progress line of the end: everything it meant to decode
    return (int(resumed.group(2)) if resumed else 0), int(decoded[1])


def _same(a: dict, b: dict) -> None:
    assert a["fingerprint"] == b["fingerprint"]
    for key in ("images", "length", "digits"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["names"] == b["names"]


def test_killed_preparation_resumes_without_redoing_finished_segments(raw, uninterrupted, tmp_path, capsys):
    out = tmp_path / "train.h5"
    finished = _kill_after_first_segment(raw, out)
    assert 1 <= len(finished) < 3
    reused, decoded = _resume(raw, out, capsys)
    assert reused == len(finished) * SEGMENT  # segments are written in order: a prefix is done
    assert decoded == N - reused  # only the unfinished images were decoded again
    _same(_contents(out), uninterrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["train.h5"]  # the work folder is gone


def test_changed_image_is_not_taken_from_a_stale_segment(raw, uninterrupted, tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    for path in raw.iterdir():
        (folder / path.name).symlink_to(path)
    out = tmp_path / "out" / "train.h5"
    assert _kill_after_first_segment(folder, out)
    # Replace image 7 (in the finished first segment) by one of another colour, same name and size.
    (folder / "8.png").unlink()
    Image.new("RGB", Image.open(raw / "8.png").size, (1, 2, 3)).save(folder / "8.png")
    reused, decoded = _resume(folder, out, capsys)
    assert reused % SEGMENT == 0 and decoded == N - reused  # the first segment was made again
    got = _contents(out)
    assert (got["images"][7] == (1, 2, 3)).all()
    np.testing.assert_array_equal(np.delete(got["images"], 7, 0), np.delete(uninterrupted["images"], 7, 0))


def test_leftovers_of_a_killed_run_are_ignored_and_removed(raw, uninterrupted, tmp_path, capsys):
    out = tmp_path / "train.h5"
    work = work_folder(out)
    finished = _kill_after_first_segment(raw, out)
    (work / "assembling-99999-0000.h5").write_bytes(b"\x89HDF half a file")  # killed mid-assembly
    (work / ".000001-0000.99999-0000.tmp").write_bytes(b"half a segment")  # killed mid-save
    (work / "000009-0123456789abcdef0123.npz").write_bytes(b"a segment of other inputs")
    reused, _ = _resume(raw, out, capsys)
    assert reused == len(finished) * SEGMENT
    _same(_contents(out), uninterrupted)
    assert not work.exists()


def test_damaged_segment_is_removed_and_redone(raw, uninterrupted, tmp_path, capsys):
    out = tmp_path / "train.h5"
    first = _kill_after_first_segment(raw, out)[0]
    first.write_bytes(first.read_bytes()[:1000])  # as a disk that lost the end of the file leaves it
    with pytest.raises(DataError, match="work file damaged") as err:
        prepare_split(read_records(raw), out, image_size=16, workers=1)
    assert err.value.path == str(first) and not first.exists() and not out.exists()
    reused, decoded = _resume(raw, out, capsys)
    assert decoded == N - reused and reused < N
    _same(_contents(out), uninterrupted)
