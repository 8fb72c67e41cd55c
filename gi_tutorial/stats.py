"""Summaries of repeated runs: a mean with its spread and its n, and paired comparisons.

Every number the book reports over seeds or image groups is a :class:`MeanSD`: the mean,
the sample standard deviation (``ddof=1``, the unbiased variance) and ``n``, printed as
``12.3 ± 1.4 (n = 5)``. With n = 3, the population formula (``ddof=0``) understates the
spread by a factor of about 1.22; one run has no spread at all (shown as ``n = 1``).

A claim such as "A beats B" is checked pair by pair (:func:`paired`): the same seed, victim
and images under both methods, the mean gap with its spread, and in how many pairs A is
ahead by more than a margin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MeanSD:
    """Mean, sample standard deviation (ddof=1; NaN for n = 1) and the number of values."""

    mean: float
    sd: float
    n: int

    def format(self, fmt: str = "{:.1f}", unit: str = "", with_n: bool = True) -> str:
        """``"12.3 ± 1.4 dB (n = 5)"``; a single value prints without a spread.

        >>> MeanSD(12.34, 1.26, 5).format(unit=" dB")
        '12.3 ± 1.3 dB (n = 5)'
        >>> MeanSD(0.5, float("nan"), 1).format("{:.0%}")
        '50% (n = 1)'

        A sign in ``fmt`` (a gap) applies to the mean only: a spread has none.

        >>> MeanSD(0.24, 0.19, 5).format("{:+.0%}")
        '+24% ± 19% (n = 5)'
        """
        if self.n == 0:
            return "no runs"
        spread = fmt.replace("{:+", "{:")
        body = (
            fmt.format(self.mean) + unit
            if math.isnan(self.sd)
            else f"{fmt.format(self.mean)} ± {spread.format(self.sd)}{unit}"
        )
        return f"{body} (n = {self.n})" if with_n else body

    def __str__(self) -> str:
        return self.format()


def mean_sd(values: Iterable[float]) -> MeanSD:
    """The mean and sample standard deviation (ddof=1) of some values, with their count.

    >>> mean_sd([1.0, 2.0, 3.0])
    MeanSD(mean=2.0, sd=1.0, n=3)
    >>> mean_sd([4.0]).sd
    nan

    Raises:
        ValueError: no values, or a value that is NaN.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sd needs at least one value")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"mean_sd got a NaN among {len(values)} values: a run failed; report it, do not average it")
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return MeanSD(mean, sd, n)


@dataclass(frozen=True)
class Paired:
    """A paired comparison of A against B: the gaps ``a_i - b_i``, and how many exceed a margin."""

    gap: MeanSD
    ahead: int  # pairs in which A leads by more than the margin
    behind: int  # pairs in which B leads by more than the margin
    margin: float

    @property
    def n(self) -> int:
        return self.gap.n

    @property
    def holds(self) -> bool:
        """A is ahead by more than the margin on average and in every pair (the book's bar for "A beats B")."""
        return self.n > 0 and self.gap.mean > self.margin and self.ahead == self.n

    @property
    def reversed(self) -> bool:
        """B is ahead by more than the margin on average and in every pair."""
        return self.n > 0 and -self.gap.mean > self.margin and self.behind == self.n


def paired(a: Sequence[float], b: Sequence[float], margin: float = 0.0) -> Paired:
    """Compare two equally long lists of scores, pair by pair.

    >>> p = paired([20.0, 22.0, 25.0], [15.0, 21.5, 18.0], margin=1.0)
    >>> (round(p.gap.mean, 2), p.ahead, p.behind, p.holds)
    (4.17, 2, 0, False)

    Raises:
        ValueError: lists of different lengths, or empty ones.
    """
    if len(a) != len(b):
        raise ValueError(f"paired needs one score of each method per pair, got {len(a)} and {len(b)}")
    gaps = [x - y for x, y in zip(a, b)]
    return Paired(mean_sd(gaps), sum(g > margin for g in gaps), sum(-g > margin for g in gaps), margin)


def compare(a_name: str, b_name: str, result: Paired, *, unit: str = "", fmt: str = "{:.1f}") -> str:
    """A paired comparison in words, with its verdict computed from the numbers.

    >>> compare("GIAS", "GI-x", paired([20.0, 22.0, 25.0], [15.0, 19.5, 18.0], margin=1.0), unit=" dB")
    'GIAS is +4.8 ± 2.3 dB (n = 3) from GI-x, ahead by more than 1 dB in 3 of 3 pairs: GIAS wins'
    """
    gap = result.gap
    signed = fmt.replace("{:", "{:+", 1)
    spread = "" if math.isnan(gap.sd) else f" ± {fmt.format(gap.sd)}"
    text = (
        f"{a_name} is {signed.format(gap.mean)}{spread}{unit} (n = {gap.n}) from {b_name}, ahead by more than "
        f"{fmt.format(result.margin) if '%' in fmt else f'{result.margin:g}'}{unit} in {result.ahead} of {gap.n} pairs"
    )
    if result.holds:
        return f"{text}: {a_name} wins"
    if result.reversed:
        return f"{text}: {b_name} wins"
    return f"{text}: no clear winner"


class Tally:
    """Scores of many runs: one row per run (its keys, e.g. victim, batch, seed, method, and its scores).

    The accumulator behind every table and verdict of the book: chapters and check scripts
    :meth:`add` rows, then read :meth:`summary` (mean ± sd over the runs that match),
    :meth:`paired` (method A against method B, pair by pair over the other keys) and
    :meth:`table`. Rows are plain dicts, so a tally is saved and shipped as JSON.

    >>> t = Tally(keys=("seed", "method"))
    >>> for seed, (x, g) in enumerate([(12.0, 15.5), (10.0, 14.0), (11.0, 16.5)]):
    ...     t.add(seed=seed, method="GI-x", psnr=x)
    ...     t.add(seed=seed, method="GIAS", psnr=g)
    >>> str(t.summary("psnr", method="GIAS"))
    '15.3 ± 1.3 (n = 3)'
    >>> t.paired("GIAS", "GI-x", "psnr", margin=1.0).ahead
    3
    """

    def __init__(self, keys: Sequence[str], rows: Iterable[dict] = ()):
        self.keys = tuple(keys)
        self.rows: list[dict] = []
        for row in rows:
            self.add(**row)

    def add(self, **row) -> None:
        """Record one run: every key of the tally, and any scores.

        Raises:
            ValueError: a key of the tally is missing.
        """
        missing = [k for k in self.keys if k not in row]
        if missing:
            raise ValueError(f"a row of this tally needs the keys {self.keys}; missing {missing}")
        self.rows.append(dict(row))

    def select(self, **where) -> Tally:
        """The rows whose values equal ``where`` (a list or tuple value matches any of its items)."""

        def matches(row: dict) -> bool:
            return all(
                row.get(k) in v if isinstance(v, (list, tuple, set)) else row.get(k) == v for k, v in where.items()
            )

        return Tally(self.keys, [r for r in self.rows if matches(r)])

    def levels(self, key: str) -> list:
        """The distinct values of ``key``, in the order they first appear."""
        seen: list = []
        for row in self.rows:
            if row.get(key) not in seen:
                seen.append(row.get(key))
        return seen

    def values(self, metric: str, **where) -> list[float]:
        """The scores ``metric`` of the rows that match ``where`` (rows without it are skipped)."""
        return [r[metric] for r in self.select(**where).rows if r.get(metric) is not None]

    def summary(self, metric: str, **where) -> MeanSD:
        """Mean ± sd (ddof=1) of ``metric`` over the matching rows.

        Raises:
            ValueError: no row matches.
        """
        values = self.values(metric, **where)
        if not values:
            raise ValueError(f"no run has {metric!r} where {where}")
        return mean_sd(values)

    def paired(self, a: str, b: str, metric: str, *, by: str = "method", margin: float = 0.0, **where) -> Paired:
        """``a`` against ``b`` (values of ``by``), paired on every other key of the tally.

        Raises:
            ValueError: a run of one side has no partner on the other.
        """
        others = [k for k in self.keys if k != by]
        pick = self.select(**where)

        def runs(value: str) -> dict:
            return {tuple(r[k] for k in others): r[metric] for r in pick.select(**{by: value}).rows}

        left, right = runs(a), runs(b)
        if set(left) != set(right):
            raise ValueError(
                f"{a} and {b} were not run on the same settings: "
                f"{sorted(set(left) ^ set(right), key=str)[:3]}... have only one of them"
            )
        order = list(left)
        return paired([left[k] for k in order], [right[k] for k in order], margin)

    def table(self, rows: Sequence[str], metrics: dict[str, str], with_n: bool = False) -> list[dict]:
        """One line per distinct value of ``rows``: each metric as "mean ± sd" with its format.

        ``metrics`` maps a metric to its format (``"{:.1f}"``, ``"{:.0%}"``); a metric that no run
        of a line has is left out of that line (None).
        """
        lines = []
        combos: list[tuple] = []
        for row in self.rows:
            combo = tuple(row[k] for k in rows)
            if combo not in combos:
                combos.append(combo)
        for combo in combos:
            where = dict(zip(rows, combo))
            line = dict(where)
            for metric, fmt in metrics.items():
                values = self.values(metric, **where)
                line[metric] = mean_sd(values).format(fmt, with_n=with_n) if values else None
            line["n"] = len(self.select(**where).rows)
            lines.append(line)
        return lines

    def to_json(self) -> dict:
        return {"keys": list(self.keys), "rows": self.rows}

    @classmethod
    def from_json(cls, payload: dict) -> Tally:
        return cls(payload["keys"], payload["rows"])
