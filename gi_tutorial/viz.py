"""Figures, tables and widgets for the book. Plotting lives here and nowhere else.

Every interactive widget has a static twin (a figure) so the printed book shows the same
content; :func:`glue` publishes numbers to the prose through myst-nb when it is present.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch

from .invert import Snapshot


def _as_image(x: torch.Tensor):
    """(C, H, W) in [0, 1] -> an array imshow understands."""
    x = x.detach().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _draw(ax, image: torch.Tensor, title: str | None = None) -> None:
    ax.imshow(_as_image(image), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
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
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)), squeeze=False
    )
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


def plot_history(
    history: Sequence[Snapshot],
    image_index: int = 0,
    max_columns: int = 8,
    truth: torch.Tensor | None = None,
    size: float = 1.4,
) -> plt.Figure:
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


def plot_curves(
    curves: dict[str, Sequence[float]],
    xlabel: str = "iteration",
    ylabel: str = "loss",
    log: bool = True,
    size: tuple[float, float] = (5.0, 3.0),
) -> plt.Figure:
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
    slider = widgets.IntSlider(
        value=len(history) - 1, min=0, max=len(history) - 1, description="snapshot", continuous_update=False
    )

    def draw(change: Any = None) -> None:
        snapshot = history[slider.value]
        with output:
            output.clear_output(wait=True)
            fig = show_images(
                snapshot.images, suptitle=f"iteration {snapshot.iteration}, gradient distance {snapshot.grad_loss:.3g}"
            )
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


def _cell(text: str) -> str:
    """A table cell's text with its ``|`` escaped: a bare ``|`` (e.g. a norm, ``||Ax - y||``) ends the cell."""
    return text.replace("|", r"\|")


def markdown_table(rows: Sequence[dict[str, Any]], columns: dict[str, str], formats: dict[str, str] | None = None):
    r"""A Markdown table (an IPython ``Markdown`` object) of ``rows``; ``columns`` maps keys to headers.

    A ``|`` in a header or a cell is escaped, so it shows as itself instead of breaking the table:

    >>> print(markdown_table([{"rule": "l1", "residual": "||Ax - y|| = 0.5"}], {"rule": "rule", "residual": "|r|"}).data)
    | rule | \|r\| |
    |---|---|
    | l1 | \|\|Ax - y\|\| = 0.5 |
    """
    from IPython.display import Markdown

    formats = formats or {}
    lines = ["| " + " | ".join(map(_cell, columns.values())) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (_cell(format_value(row.get(k), formats.get(k, "{:.2f}"))) for k in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return Markdown("\n".join(lines))


def tally_table(
    tally,
    rows: Sequence[str],
    metrics: dict[str, tuple[str, str]],
    headers: dict[str, str] | None = None,
    with_n: bool = True,
):
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


def glue(name: str, value: Any, display: bool = False, *, markdown: bool = False) -> None:
    """Publish a value to the book's prose with myst-nb's glue (a no-op where myst-nb is absent, e.g. Colab).

    ``markdown=True`` glues a string as Markdown, for ``{glue:md}`` in the prose: a command in backticks
    then shows in code font (glued as text, its backticks would show).
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    if markdown:
        from IPython.display import Markdown

        value = Markdown(value)
    elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a NumPy or torch scalar: a plain number
        value = value.item()  # (its repr, "np.float64(...)", would not take a number format in the prose)
    myst_glue(name, value, display=display)


def flow_diagram(
    steps: Sequence[str],
    loop_back: tuple[int, int] | None = None,
    loop_label: str = "",
    title: str | None = None,
    size: tuple[float, float] = (10.0, 2.2),
) -> plt.Figure:
    """Boxes in a row joined by arrows, with an optional arrow back from box ``loop_back[0]`` to ``loop_back[1]``."""
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, len(steps))
    ax.set_ylim(-0.9, 1)
    ax.axis("off")
    for i, text in enumerate(steps):
        ax.text(
            i + 0.5,
            0.3,
            text,
            ha="center",
            va="center",
            fontsize=9,
            bbox=dict(boxstyle="round,pad=0.4", fc="#eef3fb", ec="#4a6fa5"),
        )
        if i + 1 < len(steps):
            ax.annotate("", xy=(i + 1.12, 0.3), xytext=(i + 0.88, 0.3), arrowprops=dict(arrowstyle="->", lw=1.5))
    if loop_back is not None:
        a, b = loop_back
        ax.annotate(
            "",
            xy=(b + 0.5, -0.15),
            xytext=(a + 0.5, -0.15),
            arrowprops=dict(arrowstyle="->", lw=1.2, connectionstyle="arc3,rad=0.35", color="#a54a4a"),
        )
        ax.text((a + b) / 2 + 0.5, -0.75, loop_label, ha="center", fontsize=8, color="#a54a4a")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def giml_diagram(size: tuple[float, float] = (10.0, 2.6)) -> plt.Figure:
    """GIML's loop (chapter 5): each received update is inverted with the current generator ``G_w``, one shared
    copy of its weights is adapted (``w -> w'``), and Reptile moves ``w`` towards ``w'``; then the next update."""
    steps = [
        "client updates\n(FedSGD rounds)",
        "latent search:\n$z^\\star$ for $G_w$",
        "adapt one shared\ncopy: $w \\to w'$",
        "Reptile step:\n$w \\leftarrow w + \\beta\\,(w' - w)$",
        "GIAS with $G_w$\non new updates",
    ]
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, len(steps))
    ax.set_ylim(-1.0, 1.0)
    ax.axis("off")
    for i, text in enumerate(steps):
        ax.text(
            i + 0.5,
            0.3,
            text,
            ha="center",
            va="center",
            fontsize=9,
            bbox=dict(boxstyle="round,pad=0.4", fc="#eef3fb", ec="#4a6fa5"),
        )
        if i + 1 < len(steps):
            ax.annotate("", xy=(i + 1.1, 0.3), xytext=(i + 0.9, 0.3), arrowprops=dict(arrowstyle="->", lw=1.5))
    # the loop: down from the Reptile step, left under the boxes, up into the latent search; its label sits on it
    red = "#a54a4a"
    ax.plot([3.5, 3.5, 1.5], [-0.12, -0.6, -0.6], color=red, lw=1.2)
    ax.annotate("", xy=(1.5, -0.12), xytext=(1.5, -0.6), arrowprops=dict(arrowstyle="->", lw=1.2, color=red))
    ax.text(
        2.5, -0.68, "next received update (the victim may have trained)", ha="center", va="top", fontsize=8, color=red
    )
    ax.set_title("GIML: the server meta-learns the generator's weights $w$ from gradients only", fontsize=10)
    fig.tight_layout()
    return fig


def _mean_sd_lines(
    ax,
    xs: Sequence[float],
    series: dict[str, Sequence[Any]],
    floors: dict[str, Any] | None = None,
    fmt_percent: bool = False,
) -> None:
    """Lines with error bars (one :class:`~gi_tutorial.stats.MeanSD` per x) and floors as dashed lines."""
    for name, values in series.items():
        ax.errorbar(
            list(xs),
            [v.mean for v in values],
            yerr=[0 if math.isnan(v.sd) else v.sd for v in values],
            marker="o",
            ms=4,
            capsize=3,
            label=name,
        )
    for k, (name, floor) in enumerate((floors or {}).items()):
        ax.axhline(floor.mean, ls=(0, (4, 2 + k)), lw=1, color=f"C{7 + k % 3}", label=f"{name} (no gradient)")
    if fmt_percent:
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))


def mean_sd_panels(
    xs: Sequence[float],
    panels: dict[str, dict[str, Sequence[Any]]],
    xlabel: str,
    floors: dict[str, dict[str, Any]] | None = None,
    title: str | None = None,
    size: tuple[float, float] = (10.0, 3.4),
) -> plt.Figure:
    """Side-by-side panels of curves over ``xs``, each point a mean ± sd (``stats.MeanSD``), with floors drawn.

    ``panels`` maps a panel's y label to its series; a label containing "identified" is drawn in percent.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels.items()):
        _mean_sd_lines(ax, xs, series, (floors or {}).get(ylabel), fmt_percent="identified" in ylabel)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reptile_toy_figure(
    optima: torch.Tensor,
    kinds: torch.Tensor,
    paths: dict[str, torch.Tensor],
    steps: Sequence[int],
    losses: dict[str, Sequence[Any]],
    size: tuple[float, float] = (10.0, 3.8),
) -> plt.Figure:
    """Chapter 5's Reptile toy: the task optima (by kind) with each method's path of the initialisation (left), and
    the mean loss on new tasks after k adaptation steps from each initialisation, mean ± sd over seeds (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=size, gridspec_kw=dict(width_ratios=(1, 1.3)))
    for kind, marker in ((0, "o"), (1, "s")):
        chosen = optima[kinds == kind]
        left.scatter(chosen[:, 0], chosen[:, 1], s=10, marker=marker, c="0.6", label=f"task optima, kind {'AB'[kind]}")
    for k, (name, path) in enumerate(paths.items()):
        left.plot(path[:, 0], path[:, 1], "-", lw=1.2, color=f"C{k}", label=name)
        left.plot(path[-1, 0], path[-1, 1], "*", ms=12, color=f"C{k}")
    left.set_aspect("equal")
    left.set_xlabel("$w_1$")
    left.set_ylabel("$w_2$")
    left.legend(fontsize=7, loc="lower left")
    left.set_title("where each method puts the initialisation", fontsize=9)
    _mean_sd_lines(right, steps, losses)
    right.set_yscale("log")
    right.set_xlabel("adaptation steps on a new task")
    right.set_ylabel("task loss (mean over new tasks)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    right.set_title("how fast each initialisation adapts", fontsize=9)
    fig.tight_layout()
    return fig


def prior_dotplot(
    tally,
    cases: Sequence[tuple[str, int]],
    priors: Sequence[str],
    reference: str = "GI-x",
    floor: str = "label only",
    size: tuple[float, float] | None = None,
) -> plt.Figure:
    """Chapter 5's comparison of priors: per case (columns) and score (rows), GI-z, GIAS and a random sample of
    each prior (rows of the panel), mean ± sd over seeds, with ``reference`` and the ``floor`` as vertical lines."""
    scores = {"identified": "identified", "psnr": "PSNR (dB)"}
    size = size or (3.3 * len(cases) + 1.5, 1.0 + 0.45 * len(priors) * len(scores))
    fig, axes = plt.subplots(len(scores), len(cases), figsize=size, squeeze=False, sharey=True)
    kinds = (
        ("sample ({})", "x", "0.5", "random sample (no gradient)"),
        ("GI-z ({})", "o", "C0", "GI-z"),
        ("GIAS ({})", "D", "C3", "GIAS"),
    )
    for c, (victim, batch) in enumerate(cases):
        for r, (metric, label) in enumerate(scores.items()):
            ax = axes[r][c]
            for k, (pattern, marker, color, name) in enumerate(kinds):
                for i, prior in enumerate(priors):
                    s = tally.summary(metric, victim=victim, batch=batch, method=pattern.format(prior))
                    ax.errorbar(
                        s.mean,
                        i + 0.22 * (k - 1),
                        xerr=0 if math.isnan(s.sd) else s.sd,
                        fmt=marker,
                        color=color,
                        ms=5,
                        capsize=2,
                        label=name if i == 0 else None,
                    )
            for method, style, color in ((reference, "-", "C2"), (floor, "--", "0.3")):
                s = tally.summary(metric, victim=victim, batch=batch, method=method)
                ax.axvline(
                    s.mean, ls=style, lw=1, color=color, label=f"{method}{' (no gradient)' if method == floor else ''}"
                )
            ax.set_yticks(range(len(priors)), priors)
            ax.set_xlabel(label)
            ax.grid(axis="x", alpha=0.3)
            if metric == "identified":
                ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
            if r == 0:
                n = len(tally.values(metric, victim=victim, batch=batch, method=reference))
                ax.set_title(f"victim {victim}, batch {batch} (n = {n})", fontsize=9)
    axes[0][0].invert_yaxis()  # the axes share y: invert once, so the first prior is on top
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def latent_distance_curves(
    traces: dict[str, Sequence[float | None]],
    tasks_per_step: int = 1,
    window: int = 20,
    size: tuple[float, float] = (6.5, 3.2),
) -> plt.Figure:
    """Each task's latent-search gradient distance against the meta-step it was met at (faint), and a running
    mean over ``window`` tasks, one colour per run (e.g. the victim frozen or training)."""
    fig, ax = plt.subplots(figsize=size)
    for k, (name, values) in enumerate(traces.items()):
        steps = [i / tasks_per_step for i, v in enumerate(values) if v is not None]
        finite = [v for v in values if v is not None]
        ax.plot(steps, finite, ".", ms=2, alpha=0.25, color=f"C{k}")
        running = [
            sum(finite[max(0, i - window + 1) : i + 1]) / len(finite[max(0, i - window + 1) : i + 1])
            for i in range(len(finite))
        ]
        ax.plot(steps, running, "-", lw=1.8, color=f"C{k}", label=f"{name} (running mean of {window} tasks)")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("latent-search distance (1 - cosine)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tally_pivot(
    tally,
    methods: Sequence[str],
    columns: Sequence[dict[str, Any]],
    metrics: dict[str, str],
    row_header: str = "method",
):
    """A Markdown table with one row per method and one column per setting (``columns``: dicts of tally keys, e.g.
    ``{"victim": "S", "batch": 8}``); each cell lists the metrics as mean ± sd (ddof = 1) over the matching runs,
    joined by " · " (``metrics`` maps a metric to its format, ``"{:.1f} dB"`` or ``"{:.0%}"``). The n of each
    column is given in its header."""
    from .stats import mean_sd

    def cell(method: str, where: dict[str, Any]) -> str:
        parts = []
        for metric, fmt in metrics.items():
            values = tally.values(metric, method=method, **where)
            if values:
                s = mean_sd(values)
                spread = "" if math.isnan(s.sd) else " ± " + fmt.format(s.sd).split(" ")[0]
                parts.append(
                    fmt.format(s.mean).split(" ")[0] + spread + (" " + fmt.split(" ", 1)[1] if " " in fmt else "")
                )
        return " · ".join(parts) if parts else "–"

    headers = {"method": row_header}
    rows = []
    for k, where in enumerate(columns):
        n = len(tally.values(next(iter(metrics)), method=methods[0], **where))
        headers[f"c{k}"] = ", ".join(f"{key} {value}" for key, value in where.items()) + f" (n = {n})"
    for method in methods:
        rows.append({"method": method, **{f"c{k}": cell(method, where) for k, where in enumerate(columns)}})
    return markdown_table(rows, headers)


def label_scores_figure(
    scores: torch.Tensor,
    class_names: Sequence[str],
    linthresh: float | None = None,
    size: tuple[float, float] = (7.5, 3.0),
) -> plt.Figure:
    """Chapter 1: a last layer's bias gradient, one bar per class, each with its value.

    The label's entry is close to -1 and the others are small and positive, some below 1e-3, so the
    y axis is symmetric-logarithmic, linear only below ``linthresh`` (by default half the smallest
    nonzero entry): every bar lies in the logarithmic part and stays visible. Each value is written
    above the zero line or its bar, so no label sits on the class names.

    >>> fig = label_scores_figure(torch.tensor([-0.9, 0.89, 1e-5, 0.01 - 1e-5]), ["cat", "dog", "frog", "ship"])
    >>> fig.axes[0].yaxis.get_transform().linthresh <= 1e-5 / 2  # the smallest bar is drawn on the log part
    True
    >>> [t.get_text() for t in fig.axes[0].texts], all(t.xyann[1] > 0 for t in fig.axes[0].texts)
    (['-0.900', '+0.890', '+1.0e-05', '+1.0e-02'], True)
    >>> plt.close(fig)
    """
    values = [float(v) for v in scores.detach().cpu()]
    linthresh = linthresh or min((abs(v) for v in values if v != 0), default=1e-3) / 2
    fig, ax = plt.subplots(figsize=size)
    bars = ax.bar(list(class_names), values, color=["tab:red" if v < 0 else "tab:blue" for v in values])
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhline(0, color="black", linewidth=0.8)
    for bar, v in zip(bars, values):
        ax.annotate(
            f"{v:+.1e}" if abs(v) < 1e-2 else f"{v:+.3f}",  # "+0.000" would hide a small entry
            (bar.get_x() + bar.get_width() / 2, max(v, 0.0)),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    decades = range(0, math.floor(math.log10(linthresh)), -2)  # every other decade: ticks that do not collide
    ax.set_yticks(sorted([0.0] + [sign * 10.0**k for sign in (-1, 1) for k in decades]))
    top = max(values)
    ax.set_ylim(min(min(values) * 3, -linthresh), top * 4 if top > 0 else 1)
    ax.set_ylabel("bias gradient dL/db\n(symmetric log scale)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def restarts_strip(
    images: torch.Tensor, grad_losses: Sequence[float], kept: int, truth: torch.Tensor | None = None, size: float = 1.9
) -> plt.Figure:
    """The restarts of one search side by side (``images``: one image per restart), each titled with its final
    gradient distance; the restart the attacker keeps (the lowest distance) is framed and labelled "kept"."""
    panels = [
        (images[k], f"restart {k + 1}\nd = {d:.3g}" + ("\n(kept)" if k == kept else ""))
        for k, d in enumerate(grad_losses)
    ]
    if truth is not None:
        panels.append((truth, "truth\n(unseen by\nthe attacker)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.9), squeeze=False)
    for k, (ax, (image, title)) in enumerate(zip(axes[0], panels)):
        _draw(ax, image)
        ax.set_title(title, fontsize=10, fontweight="bold" if k == kept else "normal")
        if k == kept:
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green")
                spine.set_linewidth(4)
    fig.tight_layout()
    return fig


def signals_figure(signals: dict[str, Any], size: tuple[float, float] = (10.0, 2.6)) -> plt.Figure:
    """1-D signals side by side as stem plots on one y scale (chapter 2's compressed-sensing toy)."""
    fig, axes = plt.subplots(1, len(signals), figsize=size, sharey=True, squeeze=False)
    for ax, (title, signal) in zip(axes[0], signals.items()):
        ax.stem(list(signal), markerfmt=".", basefmt=" ")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("entry")
    fig.tight_layout()
    return fig


def leakage_figure(
    tally,
    ratio: dict[tuple[str, int], float],
    methods: Sequence[str],
    floors: Sequence[str] = (),
    metrics: dict[str, str] | None = None,
    size: tuple[float, float] = (3.1, 2.7),
    xlabel: str = "unknown pixels / independent gradient entries",
) -> plt.Figure:
    """Chapter 4's central figure: scores against unknowns per independent equation, one victim per colour.

    One column per method, one row per metric (``metrics`` maps a tally metric to its axis label;
    ``"identified"`` and names starting with it are drawn as percentages). In every panel, each victim
    (the tally's ``victim`` key, at ``ratio[(victim, batch)]``) has its per-seed runs as faint points
    and their mean ± sd (ddof = 1) as a line with error bars, each mean labelled with its batch size.
    The ``floors`` (methods that use no gradient) are grey lines at their mean over every case, and a
    dashed line marks a ratio of 1, above which the problem is under-determined by count.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator, PercentFormatter

    from .stats import mean_sd

    metrics = metrics or {"psnr": "PSNR (dB, capped at 40)", "identified": "identified"}
    victims = tally.levels("victim")
    styles = {v: (f"C{k}", "osD^v"[k % 5]) for k, v in enumerate(victims)}
    floor_styles = ["-", ":", "-."]
    xs_all = [ratio[key] for key in ratio]
    lo, hi = min(xs_all) / 1.6, max(max(xs_all) * 1.6, 1.3)  # the line at ratio 1 always shows
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10) if lo <= t <= hi]
    fig, axes = plt.subplots(
        len(metrics),
        len(methods),
        figsize=(size[0] * len(methods), size[1] * len(metrics) + 0.6),
        sharex=True,
        sharey="row",
        squeeze=False,
    )
    for r, (metric, label) in enumerate(metrics.items()):
        percent = metric.startswith("identified")
        for c, method in enumerate(methods):
            ax = axes[r, c]
            for k, floor in enumerate(floors):
                values = tally.values(metric, method=floor)
                if values:
                    ax.axhline(mean_sd(values).mean, color="0.45", ls=floor_styles[k % 3], lw=1.2)
            ax.axvline(1.0, color="0.3", ls=(0, (4, 3)), lw=0.8)
            for victim in victims:
                color, marker = styles[victim]
                batches = sorted(
                    b
                    for b in tally.select(victim=victim, method=method).levels("batch")
                    if tally.values(metric, victim=victim, method=method, batch=b)
                )
                xs, means, sds = [], [], []
                for b in batches:
                    values = tally.values(metric, victim=victim, method=method, batch=b)
                    x = ratio[(victim, b)]
                    ax.scatter([x] * len(values), values, s=9, color=color, alpha=0.3, linewidths=0)
                    s = mean_sd(values)
                    xs.append(x)
                    means.append(s.mean)
                    sds.append(0.0 if math.isnan(s.sd) else s.sd)
                    ax.annotate(
                        str(b),
                        (x, s.mean),
                        xytext=(4, 3),
                        textcoords="offset points",
                        fontsize=8,
                        color=color,
                        fontweight="bold",
                    )
                if xs:
                    ax.errorbar(xs, means, yerr=sds, color=color, marker=marker, ms=4.5, lw=1.3, capsize=2.5)
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.25)
            if percent:
                ax.set_ylim(-0.04, 1.04)
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            if r == 0:
                ax.set_title(method, fontsize=11)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    handles = [Line2D([], [], color=styles[v][0], marker=styles[v][1], lw=1.3, label=f"victim {v}") for v in victims]
    handles += [
        Line2D([], [], color="0.45", ls=floor_styles[k % 3], lw=1.2, label=f"{f} (no gradient)")
        for k, f in enumerate(floors)
    ]
    handles.append(Line2D([], [], color="0.3", ls=(0, (4, 3)), lw=0.8, label="ratio 1: under-determined by count"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 6),
        fontsize=9,
        frameon=False,
        title="numbers at the points: batch size; faint points: one seed each",
        title_fontsize=9,
    )
    bottom = 0.15 if len(metrics) > 1 else 0.25
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.text(0.5, bottom - 0.01, xlabel, ha="center", va="top", fontsize=10)
    return fig


def settings_table(
    tally,
    settings: Sequence[dict[str, Any]],
    methods: Sequence[str],
    metrics: dict[str, str],
    extra: dict[str, Sequence[Any]] | None = None,
    setting_header: str = "setting",
):
    """A Markdown table with one row per setting (a dict of tally keys, e.g. ``{"victim": "S", "batch": 16}``) and
    one column per method; each cell holds the metrics as mean ± sd (ddof = 1), joined by " · " (``metrics`` maps a
    metric to a format such as ``"{:.1f} dB"`` or ``"{:.0%}"``), and each row its number of runs n. ``extra`` adds
    columns before the methods (header -> one value per setting, e.g. the ratio of unknowns to equations)."""
    from .stats import mean_sd

    def cell(method: str, where: dict[str, Any]) -> str:
        parts = []
        for metric, fmt in metrics.items():
            values = tally.values(metric, method=method, **where)
            if values:
                s = mean_sd(values)
                number, _, unit = fmt.partition("} ")
                number = number + "}" if unit else fmt
                spread = "" if math.isnan(s.sd) else " ± " + number.format(s.sd).rstrip("%")
                parts.append(
                    number.format(s.mean).rstrip("%")
                    + spread
                    + ("%" if "%" in number else "")
                    + (" " + unit if unit else "")
                )
        return " · ".join(parts) if parts else "–"

    extra = extra or {}
    columns = {
        "setting": setting_header,
        **{f"x{k}": h for k, h in enumerate(extra)},
        **{f"m{k}": m for k, m in enumerate(methods)},
        "n": "n",
    }
    rows = []
    for i, where in enumerate(settings):
        row = {"setting": ", ".join(f"{k} {v}" for k, v in where.items())}
        row.update({f"x{k}": values[i] for k, values in enumerate(extra.values())})
        row.update({f"m{k}": cell(m, where) for k, m in enumerate(methods)})
        row["n"] = len(tally.values(next(iter(metrics)), method=methods[0], **where))
        rows.append(row)
    return markdown_table(rows, columns, formats={"n": "{:d}", **{f"x{k}": "{:.2f}" for k in range(len(extra))}})


def option_table(
    tally,
    options: dict[Any, str],
    methods: Sequence[str],
    metrics: dict[str, tuple[str, str]],
    extra: dict[str, Sequence[Any]] | None = None,
    key: str = "option",
    header: str = "option",
):
    """A Markdown table with one row per value of ``key`` (``options`` maps each value to its label) and one column
    per method; each cell holds the metrics as mean ± sd (ddof = 1) over the matching rows, joined by " · "
    (``metrics`` maps a metric to ``(format, unit)``, e.g. ``("{:.1f}", " dB")``). ``extra`` adds columns after the
    label (header -> one text per option); the last column is each row's n."""
    from .stats import mean_sd

    def cell(method: str, value: Any) -> str:
        parts = [
            mean_sd(v).format(fmt, unit, with_n=False)
            for metric, (fmt, unit) in metrics.items()
            if (v := tally.values(metric, method=method, **{key: value}))
        ]
        return " · ".join(parts) if parts else "–"

    extra = extra or {}
    columns = {
        "label": header,
        **{f"x{k}": h for k, h in enumerate(extra)},
        **{f"m{k}": m for k, m in enumerate(methods)},
        "n": "n",
    }
    rows = []
    for i, (value, label) in enumerate(options.items()):
        row = {"label": label, **{f"x{k}": texts[i] for k, texts in enumerate(extra.values())}}
        row.update({f"m{k}": cell(m, value) for k, m in enumerate(methods)})
        row["n"] = len(tally.values(next(iter(metrics)), method=methods[0], **{key: value}))
        rows.append(row)
    return markdown_table(rows, columns, formats={"n": "{:d}"})


def option_grid(rows: dict[str, dict[str, torch.Tensor]], size: float = 1.0, title: str | None = None) -> plt.Figure:
    """Batches in a grid: one row per label of ``rows`` (e.g. the truth, then each attack), one column per option
    (the inner dicts' keys, the same in every row); each cell shows its batch ``(B, C, H, W)`` side by side."""
    options = list(next(iter(rows.values())))
    batch = max(len(images) for by_option in rows.values() for images in by_option.values())
    fig, axes = plt.subplots(
        len(rows), len(options), squeeze=False, figsize=(size * batch * len(options) + 1.2, size * len(rows) + 0.5)
    )
    for r, (label, by_option) in enumerate(rows.items()):
        for c, option in enumerate(options):
            images = by_option[option].detach().cpu().clamp(0, 1)
            gap = torch.ones(*images.shape[1:-1], 2)  # a white line between the images of a batch
            strip = torch.cat([part for image in images for part in (image, gap)][:-1], dim=-1)
            _draw(axes[r, c], strip, option if r == 0 else None)
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def attack_panels(
    truth: torch.Tensor, panels: dict[str, dict[str, torch.Tensor]], size: float = 0.85, title: str | None = None
) -> plt.Figure:
    """One small panel per attack, after one panel with the true images, shown once.

    ``panels`` maps an attack to its images per setting (``setting -> (n, C, H, W)``, the same settings in
    every panel, in order); each panel has one row per setting and one column per image, and the settings
    label the rows at the left. With ``n`` = 2 and three attacks, a row holds 8 thumbnails of about 75 px
    on an 870 px page (chapter 6's noise grid, issue 20).
    """
    settings, n = list(next(iter(panels.values()))), len(truth)
    fig = plt.figure(figsize=(size * n * (len(panels) + 1) + 1.9, size * len(settings) + 0.8), layout="constrained")
    labels, truth_fig, *attack_figs = fig.subfigures(
        1, len(panels) + 2, width_ratios=[1.9 / (size * n)] + [1] * (len(panels) + 1), wspace=0.02
    )
    top = truth_fig.subplots(len(settings), n, squeeze=False)
    for c in range(n):
        _draw(top[0, c], truth[c])
    for ax in top[1:].ravel():
        ax.axis("off")
    truth_fig.suptitle("truth", fontsize=10)
    for sub, (name, by_setting) in zip(attack_figs, panels.items()):
        axes = sub.subplots(len(settings), n, squeeze=False)
        for r, setting in enumerate(settings):
            for c in range(n):
                _draw(axes[r, c], by_setting[setting][c])
        sub.suptitle(name, fontsize=10)
    for ax, setting in zip(labels.subplots(len(settings), 1, squeeze=False)[:, 0], settings):
        ax.axis("off")
        ax.text(1.0, 0.5, setting, ha="right", va="center", fontsize=9, transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def option_scores(
    tally,
    options: dict[Any, str],
    methods: Sequence[str],
    floors: Sequence[str] = (),
    key: str = "option",
    size: tuple[float, float] = (10.0, 3.4),
) -> plt.Figure:
    """Two panels (identification, PSNR): per option (x, categorical; ``options`` maps values of ``key`` to labels),
    each method's mean ± sd over the matching rows, and the ``floors`` (no-gradient guesses) as grey crosses."""
    from .stats import mean_sd

    fig, axes = plt.subplots(1, 2, figsize=size)
    series = [(m, "o", f"C{k}") for k, m in enumerate(methods)] + [
        (f, "x", f"{0.25 + 0.3 * k:.2f}") for k, f in enumerate(floors)
    ]
    width = 0.6 / max(1, len(series) - 1)
    for ax, (metric, label) in zip(axes, (("identified", "identified"), ("psnr", "PSNR (dB)"))):
        for k, (method, marker, color) in enumerate(series):
            xs, ys, errs = [], [], []
            for i, value in enumerate(options):
                values = tally.values(metric, method=method, **{key: value})
                if values:
                    s = mean_sd(values)
                    xs.append(i - 0.3 + k * width)
                    ys.append(s.mean)
                    errs.append(0 if math.isnan(s.sd) else s.sd)
            name = f"{method} (no gradient)" if method in floors else method
            ax.errorbar(xs, ys, yerr=errs, fmt=marker, color=color, ms=6, capsize=3, label=name)
        ax.set_xticks(range(len(options)), [textwrap.fill(label, 12) for label in options.values()], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if metric == "identified":
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
            ax.set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    n = len(tally.values("psnr", method=methods[0], **{key: next(iter(options))}))
    fig.suptitle(
        f"What the curious server's attacks recover under each option (mean ± sd, n = {n} updates each)", fontsize=10
    )
    fig.tight_layout()
    return fig


def privacy_utility_figure(
    utility: Sequence[dict],
    attack_points: Sequence[dict],
    floors: dict[str, Any],
    anchors: Sequence[dict] = (),
    cap: float = 1e3,
    size: tuple[float, float] = (11.5, 6.4),
) -> plt.Figure:
    """Chapter 6's privacy-utility figure, four panels.

    Top: test accuracy (mean ± sd) of DP-SGD against its example-level epsilon (``utility`` rows of
    :func:`gi_tutorial.private_training.summarize` with ``experiment == "dp_sgd"``; no privacy drawn at
    the right edge), published ``anchors`` (``epsilon``, ``accuracy``, ``source``) as stars; and of
    DP-FedAvg against the clients per round (``experiment == "dp_fedavg"``), private and not.
    Bottom: the best attack's identification and PSNR (``attack_points``: ``label``, ``epsilon`` (the one
    that binds the server; ``inf`` for none), ``identified`` and ``psnr`` as MeanSD) against that
    epsilon, log scale, capped at ``cap`` and drawn there as "∞ or > cap"; ``floors`` maps a floor's name
    to its (identified, psnr) MeanSD pair, drawn as grey lines. Legends and axis labels are 8 pt
    (about the size of the page's small print); an anchor's source is wrapped, never cut.
    """
    fig, axes = plt.subplots(2, 2, figsize=size)
    (acc_eps, acc_m), (ident_ax, psnr_ax) = axes

    def x_of(eps: float) -> float:
        return cap if (math.isinf(eps) or eps > cap) else eps

    sgd = [r for r in utility if r["experiment"] == "dp_sgd"]
    private = sorted((r for r in sgd if math.isfinite(r["target_epsilon"])), key=lambda r: r["target_epsilon"])
    if private:
        acc_eps.errorbar(
            [r["epsilon"] for r in private],
            [100 * r["accuracy"].mean for r in private],
            yerr=[0 if math.isnan(r["accuracy"].sd) else 100 * r["accuracy"].sd for r in private],
            marker="o",
            capsize=3,
            label="DP-SGD (this book, shipped)",
        )
    for r in sgd:
        if not math.isfinite(r["target_epsilon"]):
            acc_eps.axhline(100 * r["accuracy"].mean, color="grey", ls="--", lw=1, label="same network, no privacy")
    for a in anchors:
        acc_eps.scatter(
            [a["epsilon"]],
            [100 * a["accuracy"]],
            marker="*",
            s=120,
            color="C3",
            zorder=3,
            label=textwrap.fill(a["source"], 34),
        )
    acc_eps.set_xscale("log")
    if private:
        acc_eps.set_xticks([r["epsilon"] for r in private], [f"{r['target_epsilon']:g}" for r in private])
        acc_eps.minorticks_off()
    acc_eps.set_xlabel("example-level ε (δ = 1e-5, add/remove, Poisson sampling)", fontsize=8)
    acc_eps.set_ylabel("test accuracy (%)")
    acc_eps.legend(fontsize=8)
    fed = [r for r in utility if r["experiment"] == "dp_fedavg"]
    for private_run, style in ((True, "o-"), (False, "s--")):
        rows = sorted(
            (r for r in fed if math.isfinite(r["target_epsilon"]) == private_run), key=lambda r: r["clients_per_round"]
        )
        if rows:
            eps = rows[0]["target_epsilon"]
            acc_m.errorbar(
                [r["clients_per_round"] for r in rows],
                [100 * r["accuracy"].mean for r in rows],
                yerr=[0 if math.isnan(r["accuracy"].sd) else 100 * r["accuracy"].sd for r in rows],
                fmt=style,
                capsize=3,
                label=f"central DP-FedAvg, client-level ε = {eps:g}" if private_run else "FedSGD, no privacy",
            )
    acc_m.set_xscale("log")
    if fed:
        ms = sorted({r["clients_per_round"] for r in fed})
        acc_m.set_xticks(ms, [f"{m:g}" for m in ms])
        acc_m.minorticks_off()
    acc_m.set_xlabel("expected clients per round (Poisson sampling)", fontsize=8)
    acc_m.set_ylabel("test accuracy (%)")
    acc_m.legend(fontsize=8)
    for ax, metric, label in (
        (ident_ax, "identified", "best attack: identified"),
        (psnr_ax, "psnr", "best attack: PSNR (dB)"),
    ):
        for k, point in enumerate(attack_points):
            s = point[metric]
            ax.errorbar(
                [x_of(point["epsilon"])],
                [s.mean],
                yerr=[0 if math.isnan(s.sd) else s.sd],
                fmt="o",
                color=f"C{k % 10}",
                capsize=3,
                label=point["label"],
            )
        for j, (name, pair) in enumerate(floors.items()):
            value = pair[0] if metric == "identified" else pair[1]
            ax.axhline(value.mean, color=f"{0.3 + 0.25 * j:.2f}", ls=":", lw=1.2, label=f"floor: {name}")
        ax.set_xscale("log")
        ax.set_xlabel(f"ε that binds the server (∞ or > {cap:g} drawn at {cap:g})", fontsize=8)
        ax.set_ylabel(label)
        if metric == "identified":
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
            ax.set_ylim(-0.05, 1.05)
    handles, labels = psnr_ax.get_legend_handles_labels()
    psnr_ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def claims_table(checks, *, brief: bool = False, columns: dict[str, str] | None = None):
    """A Markdown table of :func:`gi_tutorial.claims.check`'s checks: each claim, its score, the comparison on the
    chapter's runs and held out, and what the book claims (:meth:`~gi_tutorial.claims.Check.verdict`).

    ``brief``: the two comparisons as their outcomes only ("GIAS wins", "no clear winner"), for a summary;
    ``columns`` renames or drops columns of :data:`gi_tutorial.claims.COLUMNS`.
    """
    from . import claims

    rows = claims.rows(checks)
    if brief:
        for row, c in zip(rows, checks):
            row.update(chapter=c.claim.words(c.said), held_out=c.claim.words(c.found))
    return markdown_table(rows, columns or claims.COLUMNS)


def claim_text(check) -> str:
    """A claim for the prose, as the book claims it: the comparison on the chapter's runs
    (:func:`~gi_tutorial.stats.compare`), then what the held-out runs found, and where they do not bear it
    out (:attr:`~gi_tutorial.claims.Check.borne_out`), that the book does not claim it. Glue this, not the
    chapter's sentence alone, wherever a verdict has a held-out twin: the text follows the numbers.

    >>> from gi_tutorial import claims, stats
    >>> t, h = stats.Tally(keys=("seed", "method")), stats.Tally(keys=("seed", "method"))
    >>> for s, (x, g, g2) in enumerate([(12.0, 15.5, 12.5), (10.0, 14.0, 13.0), (11.0, 16.5, 11.5)]):
    ...     t.add(seed=s, method="GI-x", psnr=x); t.add(seed=s, method="GIAS", psnr=g)
    ...     h.add(seed=s, method="GI-x", psnr=x); h.add(seed=s, method="GIAS", psnr=g2)
    >>> claim = claims.Claim("GIAS", "GI-x", "psnr", margin=1.0)
    >>> claim_text(claims.check([claim], t, t)[0])
    'GIAS is +4.3 ± 1.0 dB (n = 3) from GI-x, ahead by more than 1 dB in 3 of 3 pairs: GIAS wins; held out, GIAS wins too'
    >>> print(claim_text(claims.check([claim], t, h)[0]).split("pairs: ")[1])
    GIAS wins on this chapter's runs, but held out no clear winner, so the book does not claim it
    """
    said, found = check.sentence("chapter"), check.claim.words(check.found)
    if not check.borne_out:
        return f"{said} on this chapter's runs, but held out {found}, so the book does not claim it"
    return f"{said}; held out, {found}" + (" too" if check.found == check.said else "")


def slice_table(check):
    """A Markdown table of a live re-run against the shipped runs it repeats (:func:`gi_tutorial.claims.check_slice`)."""
    from .claims import SCORES

    columns, formats, rows = {"method": "method"}, {}, []
    for metric in check.metrics:
        name, unit, fmt = SCORES[metric]
        for side in ("shipped", "live"):
            columns[f"{metric}_{side}"] = f"{side} {name}" + (f" ({unit.strip()})" if unit else "")
            formats[f"{metric}_{side}"] = fmt
    columns["same"] = "within tolerance"
    for r in check.rows:
        row = {"method": r["method"], "same": "yes" if r["same"] else "NO"}
        for metric in check.metrics:
            row[f"{metric}_shipped"], row[f"{metric}_live"] = r[metric]
        rows.append(row)
    return markdown_table(rows, columns, formats)


def count_table(counts: dict[tuple[str, int], Any]):
    """Chapter 4's counts: per (victim, batch size), unknown pixels, gradient entries and independent ones
    (:func:`gi_tutorial.analytic.count`), and their ratio."""
    rows = [
        {
            "victim": v,
            "batch": b,
            "unknowns": c.unknowns,
            "entries": c.entries,
            "equations": c.equations,
            "ratio": c.ratio,
        }
        for (v, b), c in counts.items()
    ]
    columns = {
        "victim": "victim",
        "batch": "batch size",
        "unknowns": "unknown pixels",
        "entries": "gradient entries",
        "equations": "independent entries",
        "ratio": "unknowns / independent entries",
    }
    return markdown_table(rows, columns, formats={"ratio": "{:.2f}"})


def tv_tuning_table(tuning, tuned: dict[str, dict[str, float]], grid: Sequence[float], score: str):
    """The total-variation weights tried per victim and batch size (a tally keyed by victim, batch, tv), each
    with its ``score``, and the weight kept (``tuned[victim][batch]``)."""
    rows = [
        {
            "victim": v,
            "batch": int(b),
            **{str(tv): tuning.values(score, victim=v, batch=int(b), tv=tv)[0] for tv in grid},
            "kept": tuned[v][b],
        }
        for v in tuned
        for b in tuned[v]
    ]
    columns = {"victim": "victim", "batch": "batch size", **{str(tv): f"TV {tv:g}" for tv in grid}, "kept": "kept"}
    return markdown_table(rows, columns, formats={**{str(tv): "{:.2f}" for tv in grid}, "kept": "{:g}"})


def step_cost_table(rows: Sequence[dict[str, Any]]):
    """Milliseconds per step of GI-x, GI-z and GIAS's stage 2 (keys ``batch``, ``x``, ``z``, ``w``, ``mib``: the
    stage-2 state in MiB) per batch size, with the two searches' cost relative to GI-x."""
    lines = [{**r, "z_ratio": r["z"] / r["x"], "ratio": r["w"] / r["x"]} for r in rows]
    columns = {
        "batch": "batch size",
        "x": "GI-x ms/step",
        "z": "GI-z ms/step",
        "w": "stage 2 ms/step",
        "z_ratio": "GI-z / GI-x",
        "ratio": "stage 2 / GI-x",
        "mib": "stage-2 state (MiB)",
    }
    return markdown_table(lines, columns, formats={k: "{:.1f}" for k in columns if k != "batch"})


def setting_comparisons(
    tally,
    settings: dict[str, dict[str, Any]],
    pairs: Sequence[tuple[str, str]],
    methods: Sequence[str],
    margins: dict[str, float],
    notes: Sequence[str] | None = None,
    note_header: str = "pair",
    by: str = "victim",
):
    """Pairs of settings compared seed by seed under each method and score (:class:`gi_tutorial.claims.Claim`).

    ``settings`` names each setting's tally keys (``{"S at batch 16": {"victim": "S", "batch": 16}}``); the
    runs of one setting are paired with the other's over the tally's keys that neither names (the seeds),
    as a claim over the key ``by``. Returns the table (one row per pair, method and score, with ``notes``
    per pair) and, per method, whether each comparison found a clear winner.
    """
    from . import claims
    from .stats import Tally

    rows, differ = [], {m: [] for m in methods}
    for k, (p, q) in enumerate(pairs):
        named = {key for name in (p, q) for key in settings[name]}
        pool = Tally((by, *[key for key in tally.keys if key not in named | {by}]))
        for name in (p, q):
            for row in tally.select(**settings[name]).rows:
                pool.add(**{**{key: v for key, v in row.items() if key not in named}, by: name})
        for method in methods:
            for metric, margin in margins.items():
                claim = claims.Claim(p, q, metric, margin, by=by, where={"method": method})
                differ[method].append(claims.outcome(claim.paired(pool)) != "no clear winner")
                note = notes[k] if notes else f"{p} / {q}"
                rows.append({"note": note, "method": method, "score": claim.score, "comparison": claim.sentence(pool)})
    columns = {"note": note_header, "method": "method", "score": "score", "comparison": "comparison"}
    return markdown_table(rows, columns), differ


def model_count_table(counts: dict[tuple[str, tuple[int, int, int], int], Any]):
    """Chapter 1's counts: per (model, image shape, batch size), unknown pixels, gradient entries, independent
    equations (:func:`gi_tutorial.analytic.count`), their ratio and whether the batch is under-determined by count.

    >>> from gi_tutorial import analytic, models
    >>> lenet = models.build_model("lenet")
    >>> table = model_count_table({("lenet", (3, 32, 32), b): analytic.count(lenet, (3, 32, 32), b) for b in (1, 64)})
    >>> print(table.data.splitlines()[0])
    | model | image | batch size | unknowns (pixels) | gradient entries | independent equations | unknowns / equations | under-determined by count |
    >>> [line.split(" | ")[-1] for line in table.data.splitlines()[2:]]
    ['no |', 'yes |']
    """
    rows = [
        {
            "model": name,
            "images": "×".join(map(str, shape)),
            "batch": b,
            "unknowns": c.unknowns,
            "entries": c.entries,
            "equations": c.equations,
            "ratio": c.ratio,
            "under": "yes" if c.under_determined else "no",
        }
        for (name, shape, b), c in counts.items()
    ]
    columns = {
        "model": "model",
        "images": "image",
        "batch": "batch size",
        "unknowns": "unknowns (pixels)",
        "entries": "gradient entries",
        "equations": "independent equations",
        "ratio": "unknowns / equations",
        "under": "under-determined by count",
    }
    return markdown_table(
        rows, columns, formats={"unknowns": "{:,}", "entries": "{:,}", "equations": "{:,}", "ratio": "{:.2f}"}
    )


def twin_batches_table(rows: Sequence[dict[str, Any]]):
    """Chapter 1's batches with exactly the same gradient: per seed, the largest relative gradient difference
    (``gap``), the PSNR between the two batches (``psnr``), the images changed (``changed``) and the share of
    pixels outside [0, 1] (``outside``, in %).

    >>> print(twin_batches_table([{"seed": 0, "gap": 3e-7, "psnr": 12.34, "changed": 6, "outside": 1.25}]).data)
    | seed | largest relative gradient difference | PSNR between the two batches (dB) | images changed (PSNR < 40 dB) | pixels outside [0, 1] (%) |
    |---|---|---|---|---|
    | 0 | 3.0e-07 | 12.3 | 6 | 1.2 |
    """
    columns = {
        "seed": "seed",
        "gap": "largest relative gradient difference",
        "psnr": "PSNR between the two batches (dB)",
        "changed": "images changed (PSNR < 40 dB)",
        "outside": "pixels outside [0, 1] (%)",
    }
    return markdown_table(rows, columns, formats={"gap": "{:.1e}", "psnr": "{:.1f}", "outside": "{:.1f}"})


def failure_modes(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Which failure mode a sweep's failed runs show, from battery rows with ``identified`` (the batch's share),
    ``relative`` (the final gradient distance over the shared gradient's squared norm) and ``batch``.

    A run *recovered* its batch when every image is identified. A failed run whose relative distance is at most
    the loosest recovered run's *fitted* the gradient: its failure is the problem's (not identifiable or
    ill-conditioned), not the optimiser's. Returns the counts (``runs``, ``recovered``, ``failed``, ``fitted``),
    the ranges of relative distance as text (``fit_range``, ``failed_range``), the failed batch sizes
    (``failed_batches``) and the verdict sentence (``verdict``).

    >>> rows = [{"identified": 1.0, "relative": 1e-6, "batch": 1}, {"identified": 0.5, "relative": 1e-2, "batch": 8}]
    >>> modes = failure_modes(rows)
    >>> modes["fit_range"], modes["failed_range"], modes["failed_batches"]
    ('1e-06 to 1e-06', '1e-02 to 1e-02', '8')
    >>> print(modes["verdict"])
    Every failed run stopped farther from the gradient than any recovered run: at this budget the optimiser did not finish, so these runs cannot say whether the problem is also at fault.
    """
    recovered = [r for r in runs if r["identified"] == 1.0]  # every image of the batch identified
    failed = [r for r in runs if r["identified"] < 1.0]
    fit = max((r["relative"] for r in recovered), default=None)  # the loosest fit that still recovered a batch
    fitted = [r for r in failed if fit is not None and r["relative"] <= fit]
    if not failed:
        verdict = "No run failed, so neither failure mode shows at this budget."
    elif fit is None:
        verdict = "No run recovered its batch, so this budget gives no reference fit."
    elif len(fitted) == len(failed):
        verdict = (
            "Every failed run matched the gradient as closely as a recovered one, at images that are not the private "
            "batch: at these batch sizes the failure is the problem's, not the optimiser's."
        )
    elif fitted:
        verdict = (
            "Some failed runs matched the gradient as closely as a recovered one (the problem's failure) and others "
            "stopped farther away (the optimiser's, at this budget)."
        )
    else:
        verdict = (
            "Every failed run stopped farther from the gradient than any recovered run: at this budget the optimiser "
            "did not finish, so these runs cannot say whether the problem is also at fault."
        )
    return {
        "runs": len(runs),
        "recovered": len(recovered),
        "failed": len(failed),
        "fitted": len(fitted),
        "fit_range": "no run recovered its batch"
        if fit is None
        else f"{min(r['relative'] for r in recovered):.0e} to {fit:.0e}",
        "failed_range": "none"
        if not failed
        else f"{min(r['relative'] for r in failed):.0e} to {max(r['relative'] for r in failed):.0e}",
        "failed_batches": ", ".join(str(b) for b in sorted({r["batch"] for r in failed})) or "none",
        "verdict": verdict,
    }
