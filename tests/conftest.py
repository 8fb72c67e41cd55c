"""Shared set-up for the tests: one thread, small fixtures, and the book executed once per test session.

Quick mode is set by the root conftest.py.

The book (every chapter, quick mode, as a fresh machine: Debian's data package and the data
folder hidden) is executed **once per session**, into a jupyter-cache, and the whole book is
then built from that cache with ``-W``: ``tools/execute_book.py --quick --fresh-machine --build``.
It runs in the background, started as soon as a session has collected a test that needs it
(the fixtures ``executed_book`` and ``built_book``), so that the unit tests run beside it; with
pytest-xdist the first worker to get there starts it and every worker reads the same results.
The chapters' tests (tests/test_fresh_machine.py), the build's (tests/test_book.py), the pages'
(tests/test_html.py) and the Colab copies' (tests/test_colab.py) read what it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import execute_book

torch.set_num_threads(1)

from gi_tutorial import data, fl, models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOOK_FIXTURES = {"executed_book", "built_book"}
BOOK_TIMEOUT_S = 1800  # the whole background run; quick mode takes a few minutes


@pytest.fixture(scope="session")
def benchmark_script():
    """A function ``name -> module``: ``benchmarks/<name>.py`` imported (the benchmarks are scripts, not part
    of the package), once per session, registered under its own name as running it would."""
    import importlib.util

    def load(name: str):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # a dataclass in the script looks its module up
            spec.loader.exec_module(module)
        return sys.modules[name]

    return load


@pytest.fixture(scope="session")
def empty_root(tmp_path_factory):
    """A data root with nothing in it, so no torchvision-format copy can be found there."""
    return tmp_path_factory.mktemp("empty_data_root")


@pytest.fixture(scope="session")
def cifar_batch(empty_root):
    """The first 4 CIFAR-10 test images and labels (from the foolbox wheel, offline)."""
    images, labels = data.load_dataset("cifar10", "test", 4, root=empty_root, allow_download=False)
    return images, labels


@pytest.fixture(scope="session")
def cifar_image(cifar_batch):
    """The first CIFAR-10 test image, ``(1, 3, 32, 32)``, and its label ``(1,)`` (a cat, 3)."""
    images, labels = cifar_batch
    return images[:1].clone(), labels[:1].clone()


@pytest.fixture
def lenet():
    """DLG's LeNet for 3-channel images, seed 0."""
    return models.build_model("lenet", in_channels=3, seed=0)


@pytest.fixture
def random_batch():
    """A function ``(b, c=3, seed=0) -> (images, labels)`` of random images in [0, 1]."""

    def make(b: int, c: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(b, c, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)

    return make


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of a model's full state (parameters and buffers, e.g. BatchNorm running stats)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


@pytest.fixture
def same_state():
    """``(state_copy, assert_same_state)`` helpers to check that a call leaves a model unchanged."""
    return state_copy, assert_same_state


@pytest.fixture
def lenet_update(lenet, cifar_image):
    """LeNet and the update of the first CIFAR-10 image on it (batch size shared, labels not)."""
    x, y = cifar_image
    return lenet, fl.client_update(lenet, x, y)


# --- the book, executed once per session --------------------------------------------------------


@dataclass
class BookRun:
    """Where the session's background run writes: ``executed.json``, ``built.json``, ``run.log``, ``_build/``."""

    folder: Path
    process: subprocess.Popen | None = None  # set in the process that started it

    @property
    def log(self) -> Path:
        return self.folder / "run.log"

    def start(self) -> None:
        """Start the run unless another worker of this session already has (an exclusive marker file decides)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            marker = os.open(self.folder / "started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tools" / "execute_book.py"),
                    "--quick",
                    "--fresh-machine",
                    "--build",
                    "--build-dir",
                    str(self.folder / "_build"),
                    "--summary",
                    str(self.folder),
                    "--stop-with",
                    str(os.getpid()),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        os.write(marker, str(self.process.pid).encode())
        os.close(marker)

    def _pid(self) -> int | None:
        text = (self.folder / "started").read_text() if (self.folder / "started").exists() else ""
        return int(text) if text.strip() else None

    def _running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        pid = self._pid()
        if pid is None:
            return True  # being started by another worker
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_for(self, name: str) -> dict:
        """The contents of ``name`` (``executed.json`` or ``built.json``) once the run has written it."""
        deadline = time.monotonic() + BOOK_TIMEOUT_S
        path = self.folder / name
        while not path.exists():
            if not self._running() and not path.exists():
                pytest.fail(f"the book run ended without writing {name}; its log ({self.log}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the book run wrote no {name} within {BOOK_TIMEOUT_S} s; its log:\n{self.log_tail()}")
            time.sleep(0.5)
        return json.loads(path.read_text())

    def log_tail(self, chars: int = 6000) -> str:
        return (
            execute_book.strip_ansi(self.log.read_text(errors="replace")[-chars:]) if self.log.exists() else "(no log)"
        )

    def stop(self, interrupted: bool) -> None:
        """In the process that started the run: wait for it to end (other workers may need it), or end it."""
        if self.process is None or self.process.poll() is not None:
            return
        if not interrupted:
            try:
                self.process.wait(timeout=BOOK_TIMEOUT_S)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def _book_folder(tmp_path_factory) -> Path:
    # pytest-xdist gives each worker its own base folder under one per-session folder, which they share
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "book-run"


def pytest_collection_modifyitems(session, config, items):
    """The files with a test that reads the book run go last, so that the unit tests run while the book executes.

    pytest-xdist (``--dist loadfile``) hands the files to its workers in this order: a worker
    that took a book file early would wait idle for the background run instead.
    """
    reads_book = {item.path for item in items if BOOK_FIXTURES & set(getattr(item, "fixturenames", ()))}
    items.sort(key=lambda item: item.path in reads_book)  # stable: the order within each group is kept


@pytest.fixture(scope="session", autouse=True)
def _book_run(request, tmp_path_factory):
    """Starts the background run at the session's first test, if any collected test needs the book."""
    run = BookRun(_book_folder(tmp_path_factory))
    if any(BOOK_FIXTURES & set(getattr(item, "fixturenames", ())) for item in request.session.items):
        run.start()
    yield run
    run.stop(interrupted=bool(request.session.shouldstop or request.session.shouldfail))


@pytest.fixture(scope="session")
def executed_book(_book_run) -> dict:
    """Each chapter's outcome in the session's execution (quick mode, fresh machine): ``executed.json``."""
    return _book_run.wait_for("executed.json")


@pytest.fixture(scope="session")
def built_book(_book_run, executed_book) -> dict:
    """The whole-book build from the session's execution (``-W --keep-going``): ``built.json``."""
    return _book_run.wait_for("built.json")
