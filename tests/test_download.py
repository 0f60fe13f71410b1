"""plumbing.datasets.download_file against a local HTTP server on 127.0.0.1 (started here, stopped after each
test), and the MNIST download into the default folder."""
import gzip
import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from plumbing import datasets
from plumbing.datasets import download_file
from plumbing.errors import DataError

PAYLOAD = np.random.RandomState(0).randint(0, 256, size=200000).astype(np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Routes: /ok/NAME, /error/NAME (HTTP 500), /cut/NAME (first response broken off halfway),
    /norange/NAME (ignores Range headers). Every request is logged as (path, Range header)."""

    def do_GET(self):
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        route, _, name = self.path.strip("/").partition("/")
        body = server.files.get(name)
        if body is None or route == "error":
            self.send_error(404 if body is None else 500)
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and route != "norange":
            start = int(ranged.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if route == "cut" and server.cuts_left > 0:
            server.cuts_left -= 1
            self.wfile.write(payload[: len(payload) // 2])  # then close: the client sees a short body
            return
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"data.bin": PAYLOAD}
    httpd.log = []
    httpd.cuts_left = 1
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _closed_port_url():
    """URL of a port on 127.0.0.1 that nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/data.bin"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_good_file_verified_and_no_part_left(server, tmp_path):
    target = str(tmp_path / "sub" / "data.bin")
    result = download_file(server.base + "/ok/data.bin", target, md5=MD5, sha256=SHA256, size=len(PAYLOAD),
                           progress=False, timeout=5)
    assert result == target
    assert _read(target) == PAYLOAD
    assert not os.path.exists(target + ".part")


def test_existing_file_is_not_downloaded_again(server, tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"already here")
    download_file(server.base + "/ok/data.bin", str(target), md5=MD5, progress=False, timeout=5)
    assert server.log == []
    assert target.read_bytes() == b"already here"


@pytest.mark.parametrize("check", [{"md5": "0" * 32}, {"sha256": "0" * 64}, {"size": len(PAYLOAD) + 1}])
def test_checksum_or_size_mismatch_keeps_nothing(server, tmp_path, check):
    target = str(tmp_path / "data.bin")
    with pytest.raises(DataError, match="rejected"):
        download_file(server.base + "/ok/data.bin", target, progress=False, timeout=5, **check)
    assert not os.path.exists(target)
    assert not os.path.exists(target + ".part")


def test_broken_transfer_is_resumed_with_range(server, tmp_path):
    target = str(tmp_path / "data.bin")
    download_file(server.base + "/cut/data.bin", target, md5=MD5, progress=False, timeout=5)
    assert _read(target) == PAYLOAD
    assert server.log == [("/cut/data.bin", None), ("/cut/data.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_leftover_part_file_is_resumed(server, tmp_path):
    target = str(tmp_path / "data.bin")
    with open(target + ".part", "wb") as f:
        f.write(PAYLOAD[:1234])
    download_file(server.base + "/ok/data.bin", target, md5=MD5, progress=False, timeout=5)
    assert _read(target) == PAYLOAD
    assert server.log == [("/ok/data.bin", "bytes=1234-")]


def test_complete_leftover_part_is_verified_and_kept(server, tmp_path):
    target = str(tmp_path / "data.bin")
    with open(target + ".part", "wb") as f:
        f.write(PAYLOAD)
    download_file(server.base + "/ok/data.bin", target, md5=MD5, progress=False, timeout=5)
    assert _read(target) == PAYLOAD
    assert server.log == [("/ok/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    target = str(tmp_path / "data.bin")
    with open(target + ".part", "wb") as f:
        f.write(b"x" * 500)  # wrong bytes: appending to them would fail the MD5
    download_file(server.base + "/norange/data.bin", target, md5=MD5, progress=False, timeout=5)
    assert _read(target) == PAYLOAD


def test_error_500_falls_back_to_next_mirror(server, tmp_path):
    target = str(tmp_path / "data.bin")
    urls = [server.base + "/error/data.bin", server.base + "/ok/data.bin"]
    download_file(urls, target, md5=MD5, progress=False, timeout=5)
    assert _read(target) == PAYLOAD
    assert [path for path, _ in server.log] == ["/error/data.bin", "/ok/data.bin"]


def test_all_mirrors_failing_lists_them_and_mentions_data_dir(server, tmp_path):
    target = str(tmp_path / "data.bin")
    dead = _closed_port_url()
    urls = [server.base + "/error/data.bin", dead]
    with pytest.raises(DataError) as info:
        download_file(urls, target, md5=MD5, progress=False, timeout=5)
    message = str(info.value)
    assert "HTTP 500" in message and dead in message and "--data-dir" in message
    assert "\n" not in message
    assert not os.path.exists(target)


def test_unreachable_server(tmp_path):
    with pytest.raises(DataError, match="could not download data.bin"):
        download_file(_closed_port_url(), str(tmp_path / "data.bin"), progress=False, timeout=5)


def test_progress_goes_to_stderr(server, tmp_path, capsys):
    download_file(server.base + "/ok/data.bin", str(tmp_path / "data.bin"), md5=MD5, timeout=5)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Downloading " + server.base + "/ok/data.bin" in captured.err
    assert "0.2 / 0.2 MB (100%)" in captured.err and captured.err.endswith("\n")


def test_mnist_download_into_default_dir(server, tmp_path, monkeypatch, write_mnist):
    """data_dir=None: missing files are fetched from the mirrors (first one failing) with MD5 checks."""
    arrays = write_mnist(str(tmp_path / "served"), n_train=12, n_test=6)
    blobs = {name: (tmp_path / "served" / name).read_bytes() for name in os.listdir(tmp_path / "served")}
    assert gzip.decompress(blobs["t10k-images-idx3-ubyte.gz"])[:8] == bytes([0, 0, 8, 3, 0, 0, 0, 6])
    server.files.update(blobs)
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", [server.base + "/error/", server.base + "/ok/"])
    monkeypatch.setattr(datasets, "MNIST_FILES", {
        key: (name, len(blobs[name + ".gz"]), hashlib.md5(blobs[name + ".gz"]).hexdigest())
        for key, (name, _, _) in datasets.MNIST_FILES.items()})

    with pytest.raises(DataError, match="downloading is off"):
        datasets.mnist_files(download=False)
    data = datasets.load_mnist("pm1")
    assert (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes() == blobs[
        "t10k-labels-idx1-ubyte.gz"]
    np.testing.assert_allclose(data["X_test"][:, 0], arrays["test_images"] / 255.0 * 2 - 1, rtol=0, atol=1e-6)
    assert data["X_val"].shape == (2, 1, 28, 28)
    n_requests = len(server.log)
    datasets.load_mnist("center")  # now cached: no more requests
    assert len(server.log) == n_requests == 8
