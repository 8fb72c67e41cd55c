"""Datasets and attack targets, with an offline resolution order.

Every loader returns ``(images, labels)``: a float tensor ``(N, C, 32, 32)`` in [0, 1]
and an int64 tensor ``(N,)``. The 28x28 datasets (Fashion-MNIST, MNIST) are zero-padded
to 32x32 so that every model in the book sees one input size.

Sources are tried in a fixed order, and the first that has the data wins:

1. a torchvision-format copy already on disk under ``root`` (argument, else the
   ``GI_TUTORIAL_DATA`` environment variable, else ``~/.cache/gi_tutorial/data``);
2. for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` package (all 70,000 images in
   ``/usr/share/datasets/fashion-mnist``, or the folder named by the
   ``GI_TUTORIAL_DEBIAN_DIR`` environment variable: point it at an empty folder to hide
   the package, as the fresh-machine test does);
3. the first 20 test images shipped inside the ``foolbox==3.3.4`` wheel (CIFAR-10,
   Fashion-MNIST, MNIST; read as files, foolbox itself is never imported), when at most
   20 test images are asked for;
4. torchvision's download (online only), under a socket timeout so a dead network fails
   in seconds instead of hanging.

When no source has the data, :class:`DataNotFoundError` names every source tried, why
it failed, and how to provide the data.

From the command line, ``python -m gi_tutorial.data --ensure fashion_mnist:train
cifar10:test:20`` makes sure that each ``name:split[:n]`` can be loaded (``make data`` runs
it before ``make book`` executes anything): it tries the sources above without
downloading, then torchvision's download into the data root; it exits 1 with the error
that names every source tried when none has the data. The library never installs system
packages: ``make data`` first runs ``tools/debian_data.py``, which installs Debian's
``dataset-fashion-mnist`` with ``apt-get`` where it can (as root) and the data is missing.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .storage import DOWNLOAD_TIMEOUT_S, socket_timeout  # noqa: F401 (socket_timeout is part of this module's API)

DATASETS = ("cifar10", "fashion_mnist", "mnist")
NUM_SHIPPED = 20  # test images per dataset inside the foolbox wheel
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_DIR_ENV = "GI_TUTORIAL_DEBIAN_DIR"  # overrides DEBIAN_FASHION_MNIST (e.g. an empty folder hides it)
DEBIAN_PACKAGE = "dataset-fashion-mnist"

CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "fashion_mnist": (
        "T-shirt/top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
}
_FOOLBOX_PREFIX = {"cifar10": "cifar10", "fashion_mnist": "fashionMNIST", "mnist": "mnist"}
_TORCHVISION_CLASS = {"cifar10": "CIFAR10", "fashion_mnist": "FashionMNIST", "mnist": "MNIST"}

Split = Literal["train", "test"]


class DataNotFoundError(RuntimeError):
    """No source could provide the requested data; the message lists every source tried."""


class _Unavailable(Exception):
    """One source cannot provide the data (the message says why)."""


def default_root() -> Path:
    """Where datasets live: ``GI_TUTORIAL_DATA`` if set, else ``~/.cache/gi_tutorial/data``."""
    env = os.environ.get("GI_TUTORIAL_DATA")
    return Path(env) if env else Path.home() / ".cache" / "gi_tutorial" / "data"


def debian_fashion_mnist_dir() -> Path:
    """Where Debian's Fashion-MNIST files are looked for: ``GI_TUTORIAL_DEBIAN_DIR`` if set, else ``DEBIAN_FASHION_MNIST``."""
    env = os.environ.get(DEBIAN_DIR_ENV)
    return Path(env) if env else DEBIAN_FASHION_MNIST


def load_dataset(
    name: str,
    split: Split = "test",
    n: int | None = None,
    root: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a split (all if ``n`` is None), from the first source that has them.

    Args:
        name: one of ``"cifar10"``, ``"fashion_mnist"``, ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        n: how many images, from the start of the split, in the dataset's own order.
        root: a folder holding torchvision-format data (see the module docstring).
        allow_download: try torchvision's download as the last source.

    Raises:
        ValueError: unknown dataset or split, or ``n`` < 1.
        DataNotFoundError: no source had the data (the message names each one tried).
    """
    name = _canonical(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of images or None, got {n}")
    root = Path(root) if root is not None else default_root()

    sources: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = [
        (f"torchvision files under {root}", lambda: _from_torchvision(name, split, root, download=False)),
    ]
    if name == "fashion_mnist":
        sources.append(
            (f"Debian dataset-fashion-mnist in {debian_fashion_mnist_dir()}", lambda: _from_debian_fashion_mnist(split))
        )
    sources.append(("the 20 test images in the foolbox==3.3.4 wheel", lambda: _from_foolbox(name, split, n)))
    if allow_download:
        sources.append(
            (f"torchvision download into {root}", lambda: _from_torchvision(name, split, root, download=True))
        )

    tried = []
    for description, load in sources:
        try:
            images, labels = load()
        except _Unavailable as err:
            tried.append(f"  - {description}: {err}")
            continue
        if n is not None:
            if len(images) < n:
                tried.append(f"  - {description}: has only {len(images)} images, {n} requested")
                continue
            images, labels = images[:n], labels[:n]
        return _to_tensor(images), torch.as_tensor(labels, dtype=torch.int64)

    if not allow_download:
        tried.append("  - torchvision download: not attempted (allow_download=False)")
    raise DataNotFoundError(
        f"Could not load {n if n is not None else 'all'} {split} images of {name!r}. Sources tried, in order:\n"
        + "\n".join(tried)
        + f"\nTo provide the data: run once with internet access (torchvision downloads into {root}),"
        " set GI_TUTORIAL_DATA to a folder holding torchvision-format data,"
        " `pip install foolbox==3.3.4` (first 20 test images of each dataset),"
        " or, for Fashion-MNIST on Debian/Ubuntu, `apt-get install dataset-fashion-mnist`."
    )


def cifar10_targets(n: int = 8, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` CIFAR-10 test images, ``(n, 3, 32, 32)`` in [0, 1], and their labels."""
    return load_dataset("cifar10", "test", n, **kwargs)


def fashion_mnist(split: Split = "test", n: int | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images padded to ``(N, 1, 32, 32)`` in [0, 1], and their labels."""
    return load_dataset("fashion_mnist", split, n, **kwargs)


def _canonical(name: str) -> str:
    key = name.lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, 32, 32) in [0, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)) / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    if x.shape[-1] == 28:
        x = F.pad(x, (2, 2, 2, 2))
    return x.contiguous()


def _from_torchvision(name: str, split: Split, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION_CLASS[name])
    try:
        if download:
            with socket_timeout():
                dataset = cls(str(root), train=split == "train", download=True)
        else:
            dataset = cls(str(root), train=split == "train", download=False)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _Unavailable(reason) from None
    data = dataset.data
    images = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    return images, np.asarray(dataset.targets)


def _read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST family's format)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _from_debian_fashion_mnist(split: Split, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    folder = folder or debian_fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        raise _Unavailable(f"{images_path.name} / {labels_path.name} not found")
    return _read_idx_gz(images_path), _read_idx_gz(labels_path)


def foolbox_data_dir() -> Path | None:
    """The ``foolbox/data`` folder of an installed foolbox wheel, found without importing foolbox."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def _from_foolbox(name: str, split: Split, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    if split != "test":
        raise _Unavailable("ships test images only")
    if n is None or n > NUM_SHIPPED:
        raise _Unavailable(f"ships only the first {NUM_SHIPPED} test images")
    folder = foolbox_data_dir()
    if folder is None:
        raise _Unavailable("foolbox is not installed")
    from PIL import Image

    pattern = re.compile(rf"^{_FOOLBOX_PREFIX[name]}_(\d\d)_(\d+)\.png$")
    found = sorted((int(m[1]), int(m[2]), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if len(found) != NUM_SHIPPED:
        raise _Unavailable(f"expected {NUM_SHIPPED} {name} images in {folder}, found {len(found)}")
    images = np.stack([np.asarray(Image.open(p)) for _, _, p in found])
    labels = np.array([label for _, label, _ in found])
    return images, labels


def _parse_spec(spec: str) -> tuple[str, Split, int | None]:
    """``"name:split[:n]"`` -> ``(name, split, n)``; ``n`` None means the whole split."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected name:split[:n], got {spec!r}")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None  # type: ignore[return-value]


def ensure(spec: str, root: str | os.PathLike | None = None) -> str:
    """Make sure ``name:split[:n]`` loads, downloading it if the machine allows; return the source that has it.

    Order: what is already on disk (torchvision files, Debian's package, the foolbox wheel),
    then torchvision's download into the data root (with a socket timeout). Nothing is
    installed: ``tools/debian_data.py`` (run by ``make data``) installs Debian's package first
    where it can.

    Raises:
        ValueError: a spec that is not ``name:split[:n]``, or an unknown dataset.
        DataNotFoundError: no source has the data; the message names every source tried.
    """
    name, split, n = _parse_spec(spec)
    name = _canonical(name)
    try:
        load_dataset(name, split, n, root=root, allow_download=False)
        return "already present"
    except DataNotFoundError as err:
        first_error = err
    try:
        load_dataset(name, split, n, root=root, allow_download=True)
    except DataNotFoundError as err:
        raise err from first_error
    return f"torchvision download into {Path(root) if root is not None else default_root()}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m gi_tutorial.data",
        description="Make sure datasets can be loaded, downloading them if the machine allows.",
    )
    parser.add_argument(
        "--ensure", nargs="+", required=True, metavar="NAME:SPLIT[:N]", help="e.g. fashion_mnist:train cifar10:test:20"
    )
    parser.add_argument(
        "--root", default=None, help="data root (default: $GI_TUTORIAL_DATA or ~/.cache/gi_tutorial/data)"
    )
    args = parser.parse_args(argv)
    failed = False
    for spec in args.ensure:
        try:
            source = ensure(spec, root=args.root)
        except DataNotFoundError as err:
            print(f"data: {spec}: NOT AVAILABLE\n{err}", file=sys.stderr)
            failed = True
        else:
            print(f"data: {spec}: {source}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
