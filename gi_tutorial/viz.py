"""Figures, tables and widgets for the book. Plotting lives here and nowhere else.

Every interactive widget has a static twin (a figure) so the printed book shows the same
content; :func:`glue` publishes numbers to the prose through myst-nb when it is present.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib.pyplot as plt
import torch

from .invert import Snapshot


def _as_image(x: torch.Tensor):
    """(C, H, W) in [0, 1] -> an array imshow understands."""
    x = x.detach().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _draw(ax, image: torch.Tensor, title: str | None = None) -> None:
    ax.imshow(_as_image(image), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def show_images(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    size: float = 1.4,
    suptitle: str | None = None,
) -> plt.Figure:
    """A grid of images ``(N, C, H, W)`` in [0, 1], with optional per-image titles."""
    n = len(images)
    ncols = ncols or min(n, 10)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _draw(ax, images[i], titles[i] if titles else None)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def compare_rows(
    rows: Sequence[torch.Tensor],
    row_labels: Sequence[str],
    titles: Sequence[Sequence[str]] | None = None,
    size: float = 1.4,
    title: str | None = None,
) -> plt.Figure:
    """Batches side by side, one per row (e.g. truth, then each method's reconstruction)."""
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols + 1.0, size * len(rows)), squeeze=False)
    for r, (batch, label) in enumerate(zip(rows, row_labels)):
        for c in range(ncols):
            ax = axes[r, c]
            if c < len(batch):
                _draw(ax, batch[c], titles[r][c] if titles else None)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Snapshot], image_index: int = 0, max_columns: int = 8,
                 truth: torch.Tensor | None = None, size: float = 1.4) -> plt.Figure:
    """How one image of the batch evolved over a run: snapshots with their gradient distance."""
    step = max(1, math.ceil(len(history) / max_columns))
    shown = list(history[::step])
    if shown[-1] is not history[-1]:
        shown.append(history[-1])
    panels = [(s.images[image_index], f"it {s.iteration}\nd={s.grad_loss:.2g}") for s in shown]
    if truth is not None:
        panels.append((truth, "truth"))
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.4), squeeze=False)
    for ax, (image, title) in zip(axes[0], panels):
        _draw(ax, image, title)
    fig.tight_layout()
    return fig


def plot_curves(curves: dict[str, Sequence[float]], xlabel: str = "iteration", ylabel: str = "loss",
                log: bool = True, size: tuple[float, float] = (5.0, 3.0)) -> plt.Figure:
    """Line plot of several named curves (e.g. the loss of each restart)."""
    fig, ax = plt.subplots(figsize=size)
    for name, values in curves.items():
        ax.plot(list(values), label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def history_slider(history: Sequence[Snapshot]):
    """An ipywidgets slider over a run's snapshots (all images of the batch at that iteration)."""
    import ipywidgets as widgets
    from IPython.display import display

    output = widgets.Output()
    slider = widgets.IntSlider(value=len(history) - 1, min=0, max=len(history) - 1, description="snapshot",
                               continuous_update=False)

    def draw(change: Any = None) -> None:
        snapshot = history[slider.value]
        with output:
            output.clear_output(wait=True)
            fig = show_images(snapshot.images, suptitle=f"iteration {snapshot.iteration}, "
                                                        f"gradient distance {snapshot.grad_loss:.3g}")
            display(fig)
            plt.close(fig)  # shown once, in the widget's output

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, output])


def format_value(value: Any, fmt: str = "{:.2f}") -> str:
    """A table cell: numbers formatted, None as "not computed", inf as "inf"."""
    if value is None:
        return "not computed"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int) and not isinstance(value, bool) and fmt == "{:.2f}":
        return str(value)  # integers print as integers unless a format is given
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: dict[str, str],
                   formats: dict[str, str] | None = None):
    """A Markdown table (an IPython ``Markdown`` object) of ``rows``; ``columns`` maps keys to headers."""
    from IPython.display import Markdown

    formats = formats or {}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(k), formats.get(k, "{:.2f}")) for k in columns) + " |")
    return Markdown("\n".join(lines))


def tally_table(tally, rows: Sequence[str], metrics: dict[str, tuple[str, str]], headers: dict[str, str] | None = None,
                with_n: bool = True):
    """A Markdown table of a :class:`~gi_tutorial.stats.Tally`: one line per value of ``rows``, each metric as
    mean ± sd (ddof = 1) over the runs, and their number n.

    ``metrics`` maps a metric to ``(header, format)``, e.g. ``{"psnr": ("PSNR (dB)", "{:.1f}")}``. A metric
    that no run has (LPIPS where the AlexNet weights cannot be had) is left out, not shown as a
    column of "not computed"; say so once in the chapter's text.
    """
    present = {m: spec for m, spec in metrics.items() if tally.values(m)}
    lines = tally.table(rows, {m: fmt for m, (_, fmt) in present.items()})
    headers = {**{k: k for k in rows}, **(headers or {})}
    columns = {k: headers[k] for k in rows}
    columns.update({m: header for m, (header, _) in present.items()})
    if with_n:
        columns["n"] = "n"
    return markdown_table(lines, columns, formats={"n": "{:d}"})


class Clock:
    """Wall and CPU time since a chapter started, for its "time to run" line (glued, never typed)."""

    def __init__(self):
        import time

        self._time = time
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def text(self) -> str:
        """E.g. "4.2 minutes (4.1 minutes of CPU time, 1 thread)"; seconds below two minutes."""
        import torch

        wall, cpu = self._time.perf_counter() - self.wall0, self._time.process_time() - self.cpu0

        def span(seconds: float) -> str:
            return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"

        return f"{span(wall)} ({span(cpu)} of CPU time, {torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)})"

    def glue(self, name: str) -> str:
        """Publish :meth:`text` under ``name`` and return it."""
        text = self.text()
        glue(name, text)
        return text


def show_code(obj: Any):
    """The source of a library function or class, as a Markdown code block (the book shows code, not copies)."""
    import inspect

    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```")


def glue(name: str, value: Any, display: bool = False) -> None:
    """Publish a value to the book's prose with myst-nb's glue (a no-op where myst-nb is absent, e.g. Colab)."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a NumPy or torch scalar: a plain number
        value = value.item()  # (its repr, "np.float64(...)", would not take a number format in the prose)
    myst_glue(name, value, display=display)


def flow_diagram(steps: Sequence[str], loop_back: tuple[int, int] | None = None, loop_label: str = "",
                 title: str | None = None, size: tuple[float, float] = (10.0, 2.2)) -> plt.Figure:
    """Boxes in a row joined by arrows, with an optional arrow back from box ``loop_back[0]`` to ``loop_back[1]``."""
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, len(steps))
    ax.set_ylim(-0.9, 1)
    ax.axis("off")
    for i, text in enumerate(steps):
        ax.text(i + 0.5, 0.3, text, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc="#eef3fb", ec="#4a6fa5"))
        if i + 1 < len(steps):
            ax.annotate("", xy=(i + 1.12, 0.3), xytext=(i + 0.88, 0.3), arrowprops=dict(arrowstyle="->", lw=1.5))
    if loop_back is not None:
        a, b = loop_back
        ax.annotate("", xy=(b + 0.5, -0.15), xytext=(a + 0.5, -0.15),
                    arrowprops=dict(arrowstyle="->", lw=1.2, connectionstyle="arc3,rad=0.35", color="#a54a4a"))
        ax.text((a + b) / 2 + 0.5, -0.75, loop_label, ha="center", fontsize=8, color="#a54a4a")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
