"""Fetching SVHN: real archives served over HTTP on 127.0.0.1 (with Range support and a connection
that can be cut mid-file), verification, safe extraction, --from, and the CLI."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.data.digitstruct import Annotation, write_digitstruct
from harness.data.fetch import PUBLISHED_MD5, fetch_svhn, svhn_split_folder
from harness.data.records import read_records
from harness.errors import DataError

NUMBERS = ["19", "7", "305"]


# ----------------------------------------------------------------------------------- archives


def write_split(folder: Path, numbers=NUMBERS, noise: int = 0) -> None:
    """1.png, 2.png, ... + digitStruct.mat; ``noise`` bytes of random data in noise.bin (makes the
    archive long enough that damage in the middle is followed by more data)."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for i, number in enumerate(numbers, 1):
        Image.new("RGB", (10 * len(number) + 8, 24), (i, 2 * i, 3 * i)).save(folder / f"{i}.png")
        boxes = np.array([[4 + 10 * j, 4, 10, 16] for j in range(len(number))], dtype=np.float64)
        annotations.append(Annotation(f"{i}.png", np.array([int(d) for d in number]), boxes))
    write_digitstruct(folder / "digitStruct.mat", annotations)
    if noise:
        (folder / "noise.bin").write_bytes(np.random.default_rng(0).bytes(noise))


def make_archive(tmp_path: Path, top: str = "train", noise: int = 0) -> bytes:
    """A tar.gz laid out like the official ones: a top folder ``top/`` holding the split."""
    write_split(tmp_path / "build" / top, noise=noise)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "build" / top, arcname=top)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------------- HTTP server


@dataclass
class Served:
    files: dict = field(default_factory=dict)  # URL path -> bytes
    cut: set = field(default_factory=set)  # paths whose next response stops halfway
    ranges: bool = True  # honour Range requests
    requests: list = field(default_factory=list)  # (path, Range header)
    url: str = ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and state.ranges:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in state.cut:  # announce the whole body, send half, hang up
            state.cut.discard(self.path)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = Served(url=f"http://127.0.0.1:{httpd.server_address[1]}/svhn")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def serve(server: Served, split: str, data: bytes) -> None:
    server.files[f"/svhn/{split}.tar.gz"] = data


def assert_nothing_extracted(root: Path, split: str) -> None:
    """No folder that looks complete, no temporary folder left behind."""
    assert not (root / "svhn" / split).exists()
    assert not list((root / "svhn").glob(f".{split}.extract-*"))
    with pytest.raises(DataError):
        svhn_split_folder(root, split)


# ----------------------------------------------------------------------------------- download


def test_download_verify_extract(tmp_path, server):
    data = make_archive(tmp_path, "test")
    serve(server, "test", data)
    root = tmp_path / "data"
    folders = fetch_svhn(root, ["test"], mirror=server.url, md5={"test": md5(data)})
    folder = root / "svhn" / "test"
    assert folders == {"test": folder} and svhn_split_folder(root, "test") == folder
    assert sorted(p.name for p in folder.iterdir()) == ["1.png", "2.png", "3.png", "digitStruct.mat"]
    assert list(read_records(folder)["digits"]) == NUMBERS
    archive = root / "svhn" / "downloads" / "test.tar.gz"
    assert archive.read_bytes() == data and not archive.with_name("test.tar.gz.part").exists()
    entry = json.loads((archive.parent / "manifest.json").read_text())["test.tar.gz"]
    assert entry == {"bytes": len(data), "md5": md5(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "checked": "MD5"}
    assert server.requests == [("/svhn/test.tar.gz", None)]
    fetch_svhn(root, ["test"], mirror=server.url, md5={"test": md5(data)})  # present: no request
    assert len(server.requests) == 1


def test_resume_after_connection_dropped_mid_file(tmp_path, server):
    data = make_archive(tmp_path, noise=50_000)
    serve(server, "train", data)
    server.cut.add("/svhn/train.tar.gz")
    root = tmp_path / "data"
    fetch_svhn(root, "train", mirror=server.url, md5={"train": md5(data)})
    half = (len(data)) // 2
    assert server.requests == [("/svhn/train.tar.gz", None), ("/svhn/train.tar.gz", f"bytes={half}-")]
    assert (root / "svhn" / "downloads" / "train.tar.gz").read_bytes() == data
    assert list(read_records(root / "svhn" / "train")["digits"]) == NUMBERS


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "server-without-range"])
def test_resume_from_part_file_of_an_earlier_run(tmp_path, server, ranges):
    data = make_archive(tmp_path)
    serve(server, "train", data)
    server.ranges = ranges
    part = tmp_path / "data" / "svhn" / "downloads" / "train.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    fetch_svhn(tmp_path / "data", ["train"], mirror=server.url, md5={"train": md5(data)})
    assert server.requests == [("/svhn/train.tar.gz", "bytes=1000-")]
    assert part.with_name("train.tar.gz").read_bytes() == data and not part.exists()


def test_part_file_longer_than_the_archive_starts_again(tmp_path, server):
    data = make_archive(tmp_path)
    serve(server, "train", data)
    part = tmp_path / "data" / "svhn" / "downloads" / "train.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data + b"junk")
    fetch_svhn(tmp_path / "data", ["train"], mirror=server.url, md5={"train": md5(data)})
    assert [r for _, r in server.requests] == [f"bytes={len(data) + 4}-", None]
    assert part.with_name("train.tar.gz").read_bytes() == data


def test_checksum_mismatch_is_refused_and_not_kept(tmp_path, server):
    data = make_archive(tmp_path)
    serve(server, "train", data)
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:  # the published MD5 of the real train.tar.gz
        fetch_svhn(root, ["train"], mirror=server.url)
    archive = root / "svhn" / "downloads" / "train.tar.gz"
    assert err.value.path == str(archive)
    assert f"MD5 {md5(data)} is not the expected {PUBLISHED_MD5['train']}" in err.value.problem
    assert "removed it" in err.value.problem
    assert not archive.exists() and not archive.with_name("train.tar.gz.part").exists()
    assert_nothing_extracted(root, "train")


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    if how == "flipped-byte":
        return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
    if how == "not-gzip":
        return gzip.decompress(data)  # a plain tar named .tar.gz
    # "bad-header": a member's header overwritten inside an intact gzip stream; tarfile takes such
    # a header past the first as the end of the archive, silently
    tar = bytearray(gzip.decompress(data))
    offset = tarfile.open(fileobj=io.BytesIO(tar)).getmember("train/2.png").offset
    tar[offset:offset + 512] = b"X" * 512
    return gzip.compress(bytes(tar))


@pytest.mark.parametrize("how, message", [
    ("truncated", "Compressed file ended before the end-of-stream marker"),
    ("flipped-byte", "CRC check failed"),
    ("not-gzip", "Not a gzipped file"),
    ("bad-header", "data follows the end of the tar archive"),
])
def test_damaged_download_is_refused_and_removed(tmp_path, server, how, message):
    bad = damaged(make_archive(tmp_path, noise=50_000), how)
    serve(server, "train", bad)  # served whole: size and (unknown) checksum cannot catch it
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        fetch_svhn(root, ["train"], mirror=server.url, md5={"train": None})
    archive = root / "svhn" / "downloads" / "train.tar.gz"
    assert err.value.path == str(archive)
    assert message in err.value.problem and "removed it" in err.value.problem
    assert not archive.exists()
    assert_nothing_extracted(root, "train")
    assert not archive.with_name("manifest.json").exists()  # never recorded as verified


def test_unknown_checksum_records_sha256_and_reuse_is_checked(tmp_path, server):
    data = make_archive(tmp_path)
    serve(server, "train", data)
    root = tmp_path / "data"
    fetch_svhn(root, ["train"], mirror=server.url, md5={"train": None})
    archive = root / "svhn" / "downloads" / "train.tar.gz"
    entry = json.loads(archive.with_name("manifest.json").read_text())["train.tar.gz"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["checked"] == "size and full gzip/tar read"
    # Extracted folder gone, archive kept: reused (no request) after its SHA-256 is checked again.
    for p in (root / "svhn" / "train").iterdir():
        p.unlink()
    (root / "svhn" / "train").rmdir()
    fetch_svhn(root, ["train"], mirror=server.url, md5={"train": None})
    assert len(server.requests) == 1 and (root / "svhn" / "train" / "digitStruct.mat").is_file()
    # The archive changed on disk since: refused and removed, not reused.
    for p in (root / "svhn" / "train").iterdir():
        p.unlink()
    (root / "svhn" / "train").rmdir()
    archive.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DataError, match="differs from .* recorded when it was verified") as err:
        fetch_svhn(root, ["train"], mirror=server.url, md5={"train": None})
    assert err.value.path == str(archive) and not archive.exists()


def test_http_errors(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404") as err:
        fetch_svhn(tmp_path, ["extra"], mirror=server.url)
    assert err.value.path == f"{server.url}/extra.tar.gz"
    with pytest.raises(Exception, match="not an http"):
        fetch_svhn(tmp_path, ["extra"], mirror="ftp://example.org")


# ----------------------------------------------------------------------------------- safety


def evil_archive(path: Path, kind: str, outside: Path) -> Path:
    """A genuine-looking split, plus one member that tries to leave the target folder."""
    write_split(path.parent / "build" / "train")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(path.parent / "build" / "train", arcname="train")  # written first, then cleaned up
        payload = b"owned"
        if kind == "symlink":  # the classic: a link out, then a file written through it
            link = tarfile.TarInfo("train/link")
            link.type, link.linkname = tarfile.SYMTYPE, str(outside.parent)
            tar.addfile(link)
            info = tarfile.TarInfo(f"train/link/{outside.name}")
        elif kind == "hardlink":
            info = tarfile.TarInfo("train/hard")
            info.type, info.linkname = tarfile.LNKTYPE, str(outside)
            payload = None
        elif kind == "device":
            info = tarfile.TarInfo("train/dev")
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            payload = None
        else:
            info = tarfile.TarInfo({"dotdot": f"train/../../../{outside.name}",
                                    "absolute": str(outside)}[kind])
        if payload is None:
            tar.addfile(info)
        else:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_members_that_escape_are_refused(tmp_path, kind):
    outside = tmp_path / "outside.txt"
    archive = evil_archive(tmp_path / "train.tar.gz", kind, outside)
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        fetch_svhn(root, None, source=archive, md5={"train": None})
    assert err.value.path == str(archive) and "refused" in err.value.problem
    assert not outside.exists() and not (root / "outside.txt").exists()
    assert not (root / "svhn" / "outside.txt").exists()
    assert_nothing_extracted(root, "train")
    assert archive.exists()  # the user's own file is refused, never deleted


class Zeros:
    def read(self, n: int) -> bytes:
        return bytes(n)


KILL_SCRIPT = """
import sys
from harness.data.fetch import fetch_svhn
fetch_svhn(sys.argv[1], None, source=sys.argv[2], md5={"train": None})
"""


def test_killed_extraction_leaves_no_folder_that_looks_complete(tmp_path):
    big = tmp_path / "train.tar.gz"  # a split, then 64 MB of zeros: slow to write, quick to build
    write_split(tmp_path / "build" / "train")
    with tarfile.open(big, "w:gz", compresslevel=1) as tar:
        tar.add(tmp_path / "build" / "train", arcname="train")
        info = tarfile.TarInfo("train/zz-big.bin")
        info.size = 64 << 20
        tar.addfile(info, Zeros())
    root = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root), str(big)],
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((root / "svhn").glob(".train.extract-*/train/zz-big.bin")):  # mid-extraction
        assert process.poll() is None and time.monotonic() < deadline, "extraction was not caught"
        time.sleep(0.002)
    process.kill()
    process.wait()
    assert not (root / "svhn" / "train").exists()
    with pytest.raises(DataError, match="split is not here"):
        svhn_split_folder(root, "train")
    # The next extraction removes the dead process's temporary folder and completes.
    small = tmp_path / "small" / "train.tar.gz"
    small.parent.mkdir()
    small.write_bytes(make_archive(tmp_path / "small"))
    fetch_svhn(root, None, source=small, md5={"train": md5(small.read_bytes())})
    assert not list((root / "svhn").glob(".train.extract-*"))
    assert list(read_records(svhn_split_folder(root, "train"))["digits"]) == NUMBERS


def test_archive_of_another_split_or_without_annotations_is_refused(tmp_path):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(make_archive(tmp_path, "test"))
    with pytest.raises(DataError, match="holds the test split, not train"):
        fetch_svhn(tmp_path / "data", ["train"], source=archive, md5={"train": None})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train/1.png")
        tar.addfile(info, io.BytesIO(b""))
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="holds no digitStruct.mat"):
        fetch_svhn(tmp_path / "data", ["train"], source=archive, md5={"train": None})
    assert_nothing_extracted(tmp_path / "data", "train")


# ----------------------------------------------------------------------------------- --from


def test_from_archive(tmp_path):
    data = make_archive(tmp_path)
    archive = tmp_path / "mine" / "train.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(data)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="is not the expected") as err:  # not the published bytes
        fetch_svhn(root, None, source=archive)
    assert err.value.path == str(archive) and archive.exists()
    assert fetch_svhn(root, None, source=archive, md5={"train": md5(data)}) == {"train": root / "svhn" / "train"}
    assert list(read_records(svhn_split_folder(root, "train"))["digits"]) == NUMBERS
    assert archive.read_bytes() == data and not (root / "svhn" / "downloads").exists()


def test_from_folder_is_registered_not_copied(tmp_path, server):
    folder = tmp_path / "elsewhere" / "my-test-copy"
    write_split(folder)
    root = tmp_path / "data"
    with pytest.raises(Exception, match="cannot tell which split"):
        fetch_svhn(root, None, source=folder)
    assert fetch_svhn(root, ["test"], source=folder) == {"test": folder}
    assert json.loads((root / "svhn" / "sources.json").read_text()) == {"test": str(folder)}
    assert svhn_split_folder(root, "test") == folder and not (root / "svhn" / "test").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no such annotation file") as err:
        fetch_svhn(root, ["train"], source=empty)
    assert err.value.path == str(empty)
    # A later download of the split replaces the registration.
    data = make_archive(tmp_path, "test")
    serve(server, "test", data)
    fetch_svhn(root, ["test"], mirror=server.url, md5={"test": md5(data)})
    assert svhn_split_folder(root, "test") == root / "svhn" / "test"
    assert json.loads((root / "svhn" / "sources.json").read_text()) == {}


def test_registered_folder_that_is_gone(tmp_path):
    folder = tmp_path / "train"
    write_split(folder)
    fetch_svhn(tmp_path / "data", None, source=folder)
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    with pytest.raises(DataError, match="registered in .*sources.json is gone") as err:
        svhn_split_folder(tmp_path / "data", "train")
    assert err.value.path == str(folder)


def test_split_folder_error_tells_how_to_fetch(tmp_path):
    with pytest.raises(DataError) as err:
        svhn_split_folder(tmp_path / "d", "extra")
    assert err.value.path == str(tmp_path / "d" / "svhn" / "extra")
    assert f"harness data fetch svhn --splits extra --root {tmp_path / 'd'}" in err.value.problem
    assert "--from" in err.value.problem
    with pytest.raises(DataError) as err:
        svhn_split_folder("data", "train")
    assert "`harness data fetch svhn --splits train`" in err.value.problem  # default root: no --root


# ----------------------------------------------------------------------------------- CLI


def test_cli_end_to_end(tmp_path, server, capsys):
    data = make_archive(tmp_path, "test")
    serve(server, "test", data)
    root = tmp_path / "data"
    args = ["data", "fetch", "svhn", "--splits", "test", "--root", str(root), "--mirror", server.url]
    assert main(args + ["--md5", f"test={md5(data).upper()}"]) == 0
    assert capsys.readouterr().out == f"svhn/test: {root / 'svhn' / 'test'}\n"
    assert list(read_records(root / "svhn" / "test")["digits"]) == NUMBERS

    serve(server, "train", data)
    assert main(args[:4] + ["train"] + args[5:]) == 2  # the published MD5 does not match
    err = capsys.readouterr().err
    assert err.endswith("\n") and f"harness: error: {root / 'svhn' / 'downloads' / 'train.tar.gz'}: MD5" in err
    assert err.splitlines()[-1].startswith("harness: error:")

    folder = tmp_path / "extra"
    write_split(folder)
    assert main(["data", "fetch", "svhn", "--from", str(folder), "--root", str(root)]) == 0
    assert capsys.readouterr().out == f"svhn/extra: {folder}\n"

    for bad in (["--splits", "train,bogus"], ["--md5", "train=123"], ["--md5", "trian=" + "0" * 32]):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "fetch", "svhn", *bad])
        assert exit_.value.code == 2
