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
