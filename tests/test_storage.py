"""gi_tutorial.storage: hashes, shipped results with provenance."""

from __future__ import annotations

import json

import pytest

from gi_tutorial import storage


def test_sha256_of(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert storage.sha256_of(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_results_round_trip_with_their_provenance(tmp_path):
    path = tmp_path / "sweep.json"
    results = {"rows": [{"seed": 0, "psnr": 14.25, "lpips": None}], "keys": ["seed"]}
    record = storage.save_results(path, results, command="python benchmarks/x.py --seeds 0", seconds=12.5)
    loaded, provenance = storage.load_results(path)
    assert loaded == results and provenance == record
    assert provenance["command"] == "python benchmarks/x.py --seeds 0" and len(provenance["sha256"]) == 64


def test_edited_results_are_refused(tmp_path):
    path = tmp_path / "sweep.json"
    storage.save_results(path, {"psnr": [14.25, 15.0]}, command="make sweep")
    content = json.loads(path.read_text())
    content["results"]["psnr"][0] = 24.25  # a better number typed in by hand
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="edited or is corrupt; re-run 'make sweep'"):
        storage.load_results(path)
    path.write_text(json.dumps({"psnr": [1.0]}))
    with pytest.raises(ValueError, match="not a results file"):
        storage.load_results(path)
    with pytest.raises(FileNotFoundError):
        storage.load_results(tmp_path / "missing.json")


def test_socket_timeout_restores_the_previous_default():
    import socket

    before = socket.getdefaulttimeout()
    with storage.socket_timeout(3.0):
        assert socket.getdefaulttimeout() == 3.0
    assert socket.getdefaulttimeout() == before


@pytest.fixture
def server():
    """A local HTTP server: ``/fast`` sends 3 MB at once, ``/slow`` trickles 1 kB every 20 ms of a stated 10 MB."""
    import hashlib
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = bytes(range(256)) * (3 * 4096)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) if self.path == "/fast" else 10_000_000))
            self.end_headers()
            try:
                if self.path == "/fast":
                    self.wfile.write(body)
                else:
                    for _ in range(2000):  # at most 40 s; the client hangs up long before
                        self.wfile.write(b"x" * 1024)
                        self.wfile.flush()
                        time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256(body).hexdigest()
    httpd.shutdown()


def test_download_checks_the_hash_and_leaves_no_partial_file(server, tmp_path):
    url, digest = server
    path = storage.download(f"{url}/fast", tmp_path / "sub" / "w.pth", sha256_prefix=digest[:8])
    assert storage.sha256_of(path) == digest and [p.name for p in path.parent.iterdir()] == ["w.pth"]
    with pytest.raises(ValueError, match=f"expected a digest starting with 0000.*{digest[:16]}|{digest[:16]}.*0000"):
        storage.download(f"{url}/fast", tmp_path / "bad.pth", sha256_prefix="0000")
    assert not (tmp_path / "bad.pth").exists() and not list(tmp_path.glob("*.part"))


def test_a_trickling_download_ends_at_its_deadline(server, tmp_path):
    """Every read arrives within the socket timeout, so only the overall deadline can end it."""
    import time

    url, _ = server
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"gave up on .*/slow after 0.5 s with 0\.\d MB of 10\.0 MB received"):
        storage.download(f"{url}/slow", tmp_path / "w.pth", deadline=0.5)
    assert time.monotonic() - start < 5.0
    assert list(tmp_path.iterdir()) == []
