"""Settings for every test run from the repository root (unit tests, nbval notebooks, book build).

Quick mode (``GI_TUTORIAL_QUICK=1``) is set here, before anything imports gi_tutorial or
starts a kernel: nbval's kernels and the book build inherit it, so every notebook runs with
its small budgets, and every code path still runs.
"""

import os

os.environ["GI_TUTORIAL_QUICK"] = "1"
os.environ["GI_TUTORIAL_THREADS"] = "1"
