"""Files on disk and over the network: hashes, downloads under a timeout, shipped results.

Everything the book ships or fetches goes through here, so that loading a checkpoint or a
results file imports nothing heavier than ``hashlib`` and ``json``:

- :func:`sha256_of` hashes a file (checkpoints and results are checked against the hash
  recorded beside them);
- :func:`socket_timeout` bounds every download, so a dead network fails in seconds instead
  of hanging a notebook (urllib sets no timeout of its own);
- :func:`download` fetches one file under that timeout and an overall deadline, so a network
  that trickles (every read in time, the whole far too slow) also ends, with the file's
  hash checked and nothing left half-written;
- :func:`save_results` / :func:`load_results` write and read the per-run results of a long
  experiment (a sweep too slow for a chapter's budget) together with their provenance: the
  command that produced them, seeds, data, budgets, seconds, and the sha256 of the results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DOWNLOAD_TIMEOUT_S = 20.0  # each socket operation
DOWNLOAD_DEADLINE_S = 300.0  # a whole download (:func:`download`): 233 MB at 0.8 MB/s; seconds on Colab
RESULTS = Path(__file__).resolve().parent / "results"


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def socket_timeout(seconds: float | None = None) -> Iterator[None]:
    """Give every socket opened inside the block a timeout (default ``DOWNLOAD_TIMEOUT_S``; urllib sets none)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S if seconds is None else seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def download(url: str, path: str | os.PathLike, *, sha256_prefix: str = "", deadline: float | None = None) -> Path:
    """Fetch ``url`` to ``path``: each read under :data:`DOWNLOAD_TIMEOUT_S`, the whole under ``deadline``.

    The bytes go to a temporary file beside ``path``, which is renamed into place only once the
    download is complete and its sha256 starts with ``sha256_prefix``; on any failure it is
    removed, so a later call never finds half a file.

    Args:
        deadline: seconds for the whole download (default :data:`DOWNLOAD_DEADLINE_S`).

    Raises:
        TimeoutError: the deadline passed (the message says how much had arrived), or a read timed out.
        ValueError: the file's sha256 does not start with ``sha256_prefix``.
        OSError: the network or the disk failed (``urllib.error.URLError`` is one).
    """
    from urllib.request import urlopen

    path = Path(path)
    limit = DOWNLOAD_DEADLINE_S if deadline is None else deadline
    start = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".part", delete=False)
    try:
        digest, received = hashlib.sha256(), 0
        with partial, urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = response.headers.get("Content-Length")
            for block in iter(lambda: response.read1(1 << 20), b""):  # what has arrived, up to 1 MB
                partial.write(block)
                digest.update(block)
                received += len(block)
                if time.monotonic() - start > limit:
                    of = f" of {int(size) / 1e6:.1f} MB" if size else ""
                    raise TimeoutError(
                        f"gave up on {url} after {limit:g} s with {received / 1e6:.1f} MB{of} received "
                        f"(storage.DOWNLOAD_DEADLINE_S)"
                    )
        if not digest.hexdigest().startswith(sha256_prefix):
            raise ValueError(
                f"{url} has sha256 {digest.hexdigest()[:16]}..., expected a digest starting with {sha256_prefix}"
            )
        os.replace(partial.name, path)
    except BaseException:
        Path(partial.name).unlink(missing_ok=True)
        raise
    return path


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def payload_sha256(payload: Any) -> str:
    """The sha256 of a JSON-serialisable payload, written canonically (sorted keys, no spaces).

    >>> payload_sha256({"b": 1, "a": [1.5, None]}) == payload_sha256({"a": [1.5, None], "b": 1})
    True
    """
    return hashlib.sha256(_canonical(payload)).hexdigest()


def command(script: str | os.PathLike, argv: Sequence[str] | None = None) -> str:
    """The command line that re-runs ``script`` with ``argv`` (None: this process's arguments), as a results
    file records it: relative to the repository, so that it can be copied.

    >>> command("/repo/benchmarks/verify_ch2.py", ["--out", "a.json"])
    'python benchmarks/verify_ch2.py --out a.json'
    """
    script = Path(script)
    return " ".join([f"python {script.parent.name}/{script.name}", *(sys.argv[1:] if argv is None else argv)])


def save_results(path: str | os.PathLike, results: Any, **provenance: Any) -> dict:
    """Write ``results`` with its provenance (command, seeds, data, budgets, seconds, ...) and its sha256.

    The file holds ``{"provenance": {..., "sha256": ...}, "results": ...}``; the hash covers the
    results only, written canonically, so :func:`load_results` can tell when they were edited.

    Returns:
        the provenance record, hash included.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**provenance, "sha256": payload_sha256(results)}
    path.write_text(json.dumps({"provenance": record, "results": results}, indent=1, sort_keys=False) + "\n")
    return record


def load_results(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a results file written by :func:`save_results`; return ``(results, provenance)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a results file, or its results do not hash to the recorded sha256
            (edited or corrupt: re-run the command in its provenance).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    content = json.loads(path.read_text())
    if not isinstance(content, dict) or set(content) != {"provenance", "results"}:
        raise ValueError(f"{path} is not a results file: expected the keys 'provenance' and 'results'")
    provenance, results = content["provenance"], content["results"]
    actual = payload_sha256(results)
    if actual != provenance.get("sha256"):
        raise ValueError(
            f"{path}: the results hash to {actual[:16]}..., but the record says "
            f"{str(provenance.get('sha256'))[:16]}...: the file was edited or is corrupt; re-run "
            f"{provenance.get('command', 'the command that produced it')!r}"
        )
    return results, provenance
