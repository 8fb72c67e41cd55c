"""Run-time settings shared by the book and the library: quick mode, seeding, device, threads.

Quick mode (``GI_TUTORIAL_QUICK=1``, set by the tests) shrinks iteration budgets and
sweeps so that every chapter runs in seconds, while still running every code path.
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

QUICK_ENV = "GI_TUTORIAL_QUICK"


def is_quick() -> bool:
    """True when ``GI_TUTORIAL_QUICK`` is set to anything but "", "0", "false" or "no"."""
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def budget(full: T, quick: T) -> T:
    """Pick the full-size setting, or the quick one in quick mode.

    >>> budget(full=300, quick=5) in (300, 5)
    True
    """
    return quick if is_quick() else full


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given, else CUDA when present, else the CPU."""
    if prefer is not None:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default: ``GI_TUTORIAL_THREADS`` or 1).

    The models in this book are small: one thread is as fast as two on a 2-core CPU and
    does not collapse (10-20x slower) when another process is busy on the other core.
    """
    if num_threads is None:
        num_threads = int(os.environ.get("GI_TUTORIAL_THREADS", "1"))
    torch.set_num_threads(num_threads)
    return num_threads
