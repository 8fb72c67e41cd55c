"""gi_tutorial.data: offline sources, their order, errors, and the IDX reader; tools/debian_data.py installs
Debian's Fashion-MNIST package (the library itself never runs a command)."""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import debian_data
from gi_tutorial import data, storage

CIFAR10_FIRST_TEST_LABELS = [3, 8, 8, 0, 6]  # cat, ship, ship, airplane, frog


def _offline() -> bool:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return True
    return False


def test_cifar10_first_20_test_images_offline(empty_root):
    images, labels = data.load_dataset("cifar10", "test", 20, root=empty_root, allow_download=False)
    assert images.shape == (20, 3, 32, 32)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (20,)
    assert labels[:5].tolist() == CIFAR10_FIRST_TEST_LABELS
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert images.max() > 0.9 and images.min() < 0.1  # really 8-bit images scaled by 1/255, not all one value
    assert torch.allclose(images * 255, (images * 255).round(), atol=1e-4)
    assert images.is_contiguous()
    # fewer images: the first n of the same order
    few, few_labels = data.cifar10_targets(3, root=empty_root, allow_download=False)
    assert torch.equal(few, images[:3]) and torch.equal(few_labels, labels[:3])


@pytest.mark.parametrize("alias", ["CIFAR-10", "cifar_10", "Cifar10"])
def test_dataset_name_aliases(alias, empty_root):
    images, labels = data.load_dataset(alias, "test", 2, root=empty_root, allow_download=False)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == CIFAR10_FIRST_TEST_LABELS[:2]


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_28x28_datasets_are_zero_padded_to_32(name, empty_root):
    images, labels = data.load_dataset(name, "test", 20, root=empty_root, allow_download=False)
    assert images.shape == (20, 1, 32, 32)
    assert labels.shape == (20,) and labels.dtype == torch.int64
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert images[:, :, border].abs().max() == 0  # the 2-pixel padding is exactly zero
    assert images[:, :, 2:30, 2:30].max() > 0.9  # and the 28x28 centre holds the image


def test_fashion_mnist_helper(empty_root):
    images, labels = data.fashion_mnist("test", 20, root=empty_root, allow_download=False)
    assert images.shape == (20, 1, 32, 32)
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, trouser, shirt
    assert "ankle boot" == data.CLASS_NAMES["fashion_mnist"][9]


def test_unknown_dataset_names_the_valid_ones(empty_root):
    with pytest.raises(ValueError) as err:
        data.load_dataset("imagenet", root=empty_root)
    for valid in data.DATASETS:
        assert valid in str(err.value)
    assert "imagenet" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="validation"), "split"),
        (dict(n=0), "n must be"),
        (dict(n=-3), "n must be"),
    ],
)
def test_bad_split_or_n(kwargs, match, empty_root):
    with pytest.raises(ValueError, match=match):
        data.load_dataset("cifar10", root=empty_root, allow_download=False, **kwargs)


def test_missing_data_names_every_source(empty_root):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_dataset("cifar10", "train", 5, root=empty_root, allow_download=False)
    message = str(err.value)
    assert f"torchvision files under {empty_root}" in message
    assert "foolbox" in message and "ships test images only" in message
    assert "download: not attempted" in message
    assert "Debian" not in message.split("To provide the data")[0]  # only Fashion-MNIST has a Debian source
    assert "GI_TUTORIAL_DATA" in message  # and it says how to provide the data


def test_missing_fashion_mnist_lists_the_debian_source(empty_root, tmp_path, monkeypatch):
    monkeypatch.delenv(data.DEBIAN_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path)  # an empty Debian folder
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_dataset("fashion_mnist", "train", 5, root=empty_root, allow_download=False)
    message = str(err.value)
    lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(lines) == 4, message  # torchvision files, Debian, foolbox, download
    assert "torchvision files" in lines[0]
    assert "Debian" in lines[1] and "train-images-idx3-ubyte.gz" in lines[1]
    assert "foolbox" in lines[2]
    assert "not attempted" in lines[3]


def test_more_than_the_shipped_images_is_not_found(empty_root):
    with pytest.raises(data.DataNotFoundError, match="ships only the first 20"):
        data.load_dataset("mnist", "test", 21, root=empty_root, allow_download=False)
    with pytest.raises(data.DataNotFoundError):  # n=None means all 10,000
        data.load_dataset("cifar10", "test", None, root=empty_root, allow_download=False)


def test_download_fails_fast_offline(tmp_path, monkeypatch):
    if not _offline():
        pytest.skip("download.pytorch.org resolves: this machine is online and would download CIFAR-10")
    monkeypatch.setattr(storage, "DOWNLOAD_TIMEOUT_S", 2.0)  # the setting lives in storage
    start = time.perf_counter()
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_dataset("cifar10", "train", 1, root=tmp_path, allow_download=True)
    assert time.perf_counter() - start < 10.0
    message = str(err.value)
    assert f"torchvision download into {tmp_path}" in message
    assert "not attempted" not in message


def test_download_runs_under_the_configured_timeout(tmp_path, monkeypatch):
    seen = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            if download:
                seen.append(socket.getdefaulttimeout())
            raise RuntimeError("no data here")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setattr(storage, "DOWNLOAD_TIMEOUT_S", 0.25)
    with pytest.raises(data.DataNotFoundError, match="no data here"):
        data.load_dataset("cifar10", "train", 1, root=tmp_path, allow_download=True)
    assert seen == [0.25]


def test_download_source_runs_under_a_socket_timeout(tmp_path, monkeypatch):
    """Whatever its value, the download is attempted last and with a finite socket timeout."""
    seen = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            seen.append((download, socket.getdefaulttimeout()))
            raise RuntimeError("Dataset not found")

    before = socket.getdefaulttimeout()
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(data.DataNotFoundError):
        data.load_dataset("cifar10", "train", 1, root=tmp_path, allow_download=True)
    assert [d for d, _ in seen] == [False, True]
    assert seen[0][1] == before and seen[1][1] is not None and seen[1][1] > 0
    assert socket.getdefaulttimeout() == before


def test_socket_timeout_restores_the_previous_default():
    original = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(7.0)
        with data.socket_timeout(3.0):
            assert socket.getdefaulttimeout() == 3.0
        assert socket.getdefaulttimeout() == 7.0
        with pytest.raises(KeyError):
            with data.socket_timeout(1.5):
                assert socket.getdefaulttimeout() == 1.5
                raise KeyError("boom")
        assert socket.getdefaulttimeout() == 7.0  # restored on error too
        socket.setdefaulttimeout(None)
        with data.socket_timeout(2.0):
            pass
        assert socket.getdefaulttimeout() is None
    finally:
        socket.setdefaulttimeout(original)


def _write_idx_gz(path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (magic 0,0,0x08,ndim; big-endian uint32 dims), gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def synthetic_idx(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    _write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    return tmp_path, images, labels


def test_idx_reader_on_a_synthetic_file(synthetic_idx):
    folder, images, labels = synthetic_idx
    got_images, got_labels = data._from_debian_fashion_mnist("test", folder=folder)
    assert got_images.shape == (3, 28, 28) and got_labels.shape == (3,)
    assert np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)
    with pytest.raises(data._Unavailable, match="train-images-idx3-ubyte.gz"):
        data._from_debian_fashion_mnist("train", folder=folder)


def test_debian_source_comes_before_foolbox(synthetic_idx, empty_root, monkeypatch):
    folder, images, labels = synthetic_idx
    monkeypatch.delenv(data.DEBIAN_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", folder)
    got, got_labels = data.load_dataset("fashion_mnist", "test", 2, root=empty_root, allow_download=False)
    assert got_labels.tolist() == labels[:2].tolist()
    assert got.shape == (2, 1, 32, 32)
    assert torch.equal(got[:, 0, 2:30, 2:30], torch.from_numpy(images[:2].astype(np.float32)) / 255)
    # 3 images in the folder: asking for 5 falls through to the next source (foolbox's real images)
    _, foolbox_labels = data.load_dataset("fashion_mnist", "test", 5, root=empty_root, allow_download=False)
    assert foolbox_labels.tolist() == [9, 2, 1, 1, 6]
    # and asking for more than any source has says what each one had
    with pytest.raises(data.DataNotFoundError, match="has only 3 images, 21 requested"):
        data.load_dataset("fashion_mnist", "test", 21, root=empty_root, allow_download=False)


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.skipif(
    not (data.debian_fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
@pytest.mark.skipif(data.foolbox_data_dir() is None, reason="foolbox is not installed")
def test_debian_and_foolbox_fashion_mnist_agree():
    debian_images, debian_labels = data._from_debian_fashion_mnist("test")
    foolbox_images, foolbox_labels = data._from_foolbox("fashion_mnist", "test", 20)
    a, b = data._to_tensor(debian_images[:20]), data._to_tensor(foolbox_images)
    assert a.shape == b.shape == (20, 1, 32, 32)
    assert _sha256(a) == _sha256(b)
    assert np.array_equal(np.asarray(debian_labels[:20]), foolbox_labels)


# --- no system packages from the library; tools/debian_data.py installs Debian's where it can ----


@pytest.fixture
def fake_fashion_mnist_download(monkeypatch):
    """torchvision's Fashion-MNIST download fails at once, as offline (no network wait in a unit test)."""

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("offline" if download else "Dataset not found")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)


def test_ensure_installs_nothing_and_names_every_source(tmp_path, monkeypatch, fake_fashion_mnist_download):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the library ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setenv(data.DEBIAN_DIR_ENV, str(tmp_path / "no-debian"))
    with pytest.raises(data.DataNotFoundError) as err:
        data.ensure("fashion_mnist:train", root=tmp_path / "data")
    lines = [line for line in str(err.value).splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in lines] == [
        f"  - torchvision files under {tmp_path / 'data'}",
        f"  - Debian dataset-fashion-mnist in {tmp_path / 'no-debian'}",
        "  - the 20 test images in the foolbox==3.3.4 wheel",
        f"  - torchvision download into {tmp_path / 'data'}",
    ]
    assert "apt-get install dataset-fashion-mnist" in str(err.value)  # it says how, and does not do it
    assert data.ensure("fashion_mnist:test:20", root=tmp_path / "data") == "already present"


ALLOWED_SUBPROCESS: set[str] = set()  # none: the library computes; the tools and the Makefile run commands


def test_no_library_module_runs_commands():
    for module in Path(data.__file__).parent.glob("*.py"):
        text = module.read_text()
        assert 'apt-get"' not in text and '"apt-get' not in text, f"{module.name} builds an apt-get command"
        assert (
            not re.search(r"^\s*(import subprocess|from subprocess import)", text, re.MULTILINE)
            or module.name in ALLOWED_SUBPROCESS
        ), f"{module.name} imports subprocess"


@pytest.fixture
def hidden_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DEBIAN_DIR_ENV, str(tmp_path / "no-debian"))
    monkeypatch.setenv("GI_TUTORIAL_DATA", str(tmp_path / "data"))


def test_debian_script_asks_only_for_missing_fashion_mnist(hidden_fashion_mnist):
    assert debian_data.missing_fashion_mnist(
        ["cifar10:test:20", "fashion_mnist:test:20", "fashion_mnist:train", "mnist:test:5"]
    ) == ["fashion_mnist:train"]


@pytest.mark.parametrize(
    "which, euid, expected",
    [
        (None, 0, "apt-get not found"),
        ("/usr/bin/apt-get", 1000, "not root"),
    ],
)
def test_debian_script_does_not_install_where_it_cannot(which, euid, expected, monkeypatch):
    monkeypatch.setattr(debian_data.shutil, "which", lambda name: which)
    monkeypatch.setattr(debian_data.os, "geteuid", lambda: euid)
    monkeypatch.setattr(debian_data.subprocess, "run", lambda *a, **k: pytest.fail("apt-get ran"))
    assert expected in debian_data.install()


@pytest.mark.parametrize(
    "codes, commands, expected",
    [
        ([0], [["install"]], "installed"),
        ([100, 0, 0], [["install"], ["update"], ["install"]], "installed"),  # an unknown package: update, then again
        ([100, 0, 100], [["install"], ["update"], ["install"]], "failed: E: Unable to locate package"),
    ],
)
def test_debian_script_installs_as_root(codes, commands, expected, monkeypatch, capsys, hidden_fashion_mnist):
    ran = []

    def fake_run(command, env, capture_output, text):
        ran.append(command)
        return subprocess.CompletedProcess(command, codes[len(ran) - 1], "", "E: Unable to locate package")

    monkeypatch.setattr(debian_data.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(debian_data.os, "geteuid", lambda: 0)
    monkeypatch.setattr(debian_data.subprocess, "run", fake_run)
    assert debian_data.main(["fashion_mnist:train"]) == 0  # never fails: `--ensure` gives the verdict
    assert [c[1:2] for c in ran] == commands
    assert all(c[0] == "apt-get" and (c[1] == "update" or c[-1] == "dataset-fashion-mnist") for c in ran)
    assert expected in capsys.readouterr().out
