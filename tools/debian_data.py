"""Install Debian's Fashion-MNIST package (``dataset-fashion-mnist``) when the book needs data that nothing on disk has.

The library only reads data (``gi_tutorial.data``); installing a system package is the
machine's business, so it lives here. ``make data`` runs this script, then
``python -m gi_tutorial.data --ensure ...`` (which downloads with torchvision where there is a
network, and otherwise stops with an error that names every source it tried).

For each ``name:split[:n]`` spec of Fashion-MNIST that cannot be loaded from disk, and only when
running as root where ``apt-get`` exists, it installs the package (running ``apt-get update``
first if the package is unknown). It never fails: it says what it did or why it did not, and
leaves the verdict to ``--ensure``.

    python tools/debian_data.py fashion_mnist:train fashion_mnist:test cifar10:test:20
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from gi_tutorial import data

PACKAGE = data.DEBIAN_PACKAGE


def missing_fashion_mnist(specs: list[str]) -> list[str]:
    """The Fashion-MNIST specs that no source on disk can provide (no download tried)."""
    missing = []
    for spec in specs:
        name, split, n = data._parse_spec(spec)
        if data._canonical(name) != "fashion_mnist":
            continue
        try:
            data.load_dataset(name, split, n, allow_download=False)
        except data.DataNotFoundError:
            missing.append(spec)
    return missing


def install() -> str:
    """Install the package with apt-get; say what happened."""
    if shutil.which("apt-get") is None:
        return "apt-get not found (not a Debian or Ubuntu machine)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"not root: as root, `apt-get install {PACKAGE}`"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = None
    for command in (
        ["apt-get", "install", "-y", "-qq", PACKAGE],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", PACKAGE],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if command[1] == "install" and done.returncode == 0:
            return "installed"
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] if done is not None else []
    return f"apt-get install {PACKAGE} failed: {' '.join(last)}"


def main(argv: list[str]) -> int:
    missing = missing_fashion_mnist(argv)
    if not missing:
        print(f"debian data: nothing to install ({' '.join(argv) or 'no specs'} on disk or not Fashion-MNIST)")
        return 0
    print(f"debian data: {' '.join(missing)} not on disk; installing Debian's {PACKAGE}: {install()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
