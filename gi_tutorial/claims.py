"""The book's claims, and whether each survives seeds and images that the chapter did not use.

A *claim* compares two methods (or two settings, e.g. two batch sizes) on one score, paired
over the chapter's groups (the same seed, victim and images under both): "GIAS beats GI-x on
identification" is ``Claim("GIAS", "GI-x", "identified", margin=0.0)``. Its *outcome* is one of
three words, computed from the numbers by :func:`gi_tutorial.stats.paired`:

- ``"ahead"``: A leads by more than the margin on average and in every pair;
- ``"behind"``: B does;
- ``"no clear winner"``: anything else.

Every chapter states the outcome on its own runs and beside it the outcome of the same
comparison on held-out victim seeds and images (``make verify`` re-runs those). A claim is
*borne out* (:func:`still_holds`) when the held-out outcome finds "ahead" or "behind" again; a
"no clear winner" is borne out unless the held-out groups show a clear winner against the
direction of the chapter's mean gap (a clear winner in its direction only sharpens it). Where a
claim is not borne out, the book says so and does not claim it (:meth:`Check.verdict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gi_tutorial import stats, storage

Outcome = Literal["ahead", "behind", "no clear winner"]

# metric -> (name in the text, unit, format); the margins live on each claim
SCORES: dict[str, tuple[str, str, str]] = {
    "psnr": ("PSNR", " dB", "{:.1f}"),
    "identified": ("identification", "", "{:.0%}"),
    "identified_psnr": ("identification (by PSNR)", "", "{:.0%}"),
    "identified_ssim": ("identification (by SSIM)", "", "{:.0%}"),
    "ssim": ("SSIM", "", "{:.2f}"),
}


def outcome(result: stats.Paired) -> Outcome:
    """A paired comparison's verdict in one word (what :func:`~gi_tutorial.stats.compare` says in a sentence).

    >>> outcome(stats.paired([20.0, 22.0, 25.0], [15.0, 19.5, 18.0], margin=1.0))
    'ahead'
    >>> outcome(stats.paired([20.0, 22.0, 25.0], [15.0, 21.5, 18.0], margin=1.0))
    'no clear winner'
    """
    return "ahead" if result.holds else "behind" if result.reversed else "no clear winner"


def still_holds(said: Outcome, leaning: float, found: Outcome) -> bool:
    """Whether a held-out outcome ``found`` bears out the chapter's outcome ``said``.

    "Ahead" and "behind" must be found again. "No clear winner" holds unless the held-out check
    finds a clear winner against ``leaning``, the sign of the chapter's mean gap (A minus B).

    >>> still_holds("ahead", 4.0, "no clear winner"), still_holds("no clear winner", 0.5, "ahead")
    (False, True)
    >>> still_holds("no clear winner", 0.5, "behind")
    False
    """
    for value, name in ((said, "said"), (found, "found")):
        if value not in ("ahead", "behind", "no clear winner"):
            raise ValueError(f"{name} must be 'ahead', 'behind' or 'no clear winner', got {value!r}")
    if said != "no clear winner":
        return found == said
    return found != ("behind" if leaning >= 0 else "ahead")


@dataclass(frozen=True)
class Claim:
    """One comparison a chapter states: ``a`` against ``b`` (values of the tally's key ``by``) on ``metric``.

    ``where`` selects the runs (e.g. ``{"victim": "S", "batch": 16}``); ``name`` is how the
    chapter's text refers to it. A tally's other keys (seeds, image groups) are the pairs.
    """

    a: Any
    b: Any
    metric: str
    margin: float
    by: str = "method"
    where: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    experiment: str = ""  # which of a chapter's experiments (tallies) the claim is about

    @property
    def key(self) -> tuple[str, str]:
        """How a chapter's list of outcomes refers to the claim: its label and its score."""
        return self.label, self.metric

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("a", "b", "metric", "margin", "by", "name", "experiment")} | {
            "where": dict(self.where)
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Claim:
        return cls(**payload)

    def __post_init__(self) -> None:
        if self.metric not in SCORES:
            raise ValueError(f"metric must be one of {sorted(SCORES)}, got {self.metric!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    @property
    def label(self) -> str:
        return self.name or f"{self.a} vs {self.b}"

    @property
    def score(self) -> str:
        return SCORES[self.metric][0]

    def paired(self, tally: stats.Tally) -> stats.Paired:
        return tally.paired(self.a, self.b, self.metric, by=self.by, margin=self.margin, **self.where)

    def sentence(self, tally: stats.Tally) -> str:
        """The comparison on ``tally``'s runs, in words, with its verdict computed (:func:`stats.compare`)."""
        return self.describe(self.paired(tally))

    def describe(self, result: stats.Paired) -> str:
        """A paired comparison of this claim's two sides, in words (:func:`stats.compare`)."""
        _, unit, fmt = SCORES[self.metric]
        return stats.compare(self.side(self.a), self.side(self.b), result, unit=unit, fmt=fmt)

    def side(self, value: Any) -> str:
        return f"{self.by} {value}" if self.by != "method" else str(value)

    def words(self, said: Outcome) -> str:
        """An outcome in the claim's own terms: "GIAS wins", "GI-x wins" or "no clear winner"."""
        return {"ahead": f"{self.side(self.a)} wins", "behind": f"{self.side(self.b)} wins"}.get(said, said)


@dataclass(frozen=True)
class Check:
    """A claim on the chapter's runs beside the same claim on held-out runs."""

    claim: Claim
    chapter: stats.Paired
    held_out: stats.Paired

    @property
    def said(self) -> Outcome:
        return outcome(self.chapter)

    @property
    def found(self) -> Outcome:
        return outcome(self.held_out)

    @property
    def borne_out(self) -> bool:
        return still_holds(self.said, self.chapter.gap.mean, self.found)

    def sentence(self, part: Literal["chapter", "held_out"] = "chapter") -> str:
        """The comparison on the chapter's runs or on the held-out ones, in words (:func:`stats.compare`)."""
        return self.claim.describe(getattr(self, part))

    def verdict(self) -> str:
        """What the book claims, in words: the chapter's outcome where held-out runs bear it out, else nothing."""
        said, found = self.claim.words(self.said), self.claim.words(self.found)
        if self.borne_out:
            tail = "found again" if said == found else f"held out: {found}"
            return f"{said} ({tail})"
        return f"not robust: {said} on the chapter's runs, {found} held out; the book does not claim it"


def check(claims: Iterable[Claim], chapter: stats.Tally, held_out: stats.Tally) -> list[Check]:
    """Each claim on the chapter's tally and on the held-out tally."""
    return [Check(c, c.paired(chapter), c.paired(held_out)) for c in claims]


def rows(checks: Iterable[Check]) -> list[dict[str, str]]:
    """One row per check for a table: the claim, its score, both sentences and the book's verdict."""
    return [
        {
            "claim": c.claim.label,
            "score": c.claim.score,
            "chapter": c.sentence("chapter"),
            "held_out": c.sentence("held_out"),
            "verdict": c.verdict(),
        }
        for c in checks
    ]


COLUMNS = {
    "claim": "comparison",
    "score": "score",
    "chapter": "this chapter's runs",
    "held_out": "held out",
    "verdict": "what the book claims",
}


def claimed(checks: Iterable[Check]) -> str:
    """What the book claims, claim by claim, in one sentence for a Summary (:meth:`Check.verdict`).

    >>> t = stats.Tally(keys=("seed", "method"))
    >>> for s, (x, g) in enumerate([(12.0, 15.5), (10.0, 14.0), (11.0, 16.5)]):
    ...     t.add(seed=s, method="GI-x", psnr=x); t.add(seed=s, method="GIAS", psnr=g)
    >>> claimed(check([Claim("GIAS", "GI-x", "psnr", margin=1.0)], t, t))
    'GIAS vs GI-x (PSNR): GIAS wins (found again)'
    """
    return "; ".join(f"{c.claim.label} ({c.claim.score}): {c.verdict()}" for c in checks)


def summary(checks: Iterable[Check]) -> str:
    """One sentence: how many of the chapter's claims held-out runs bear out, and which do not.

    >>> t = stats.Tally(keys=("seed", "method"))
    >>> for s, (x, g) in enumerate([(12.0, 15.5), (10.0, 14.0), (11.0, 16.5)]):
    ...     t.add(seed=s, method="GI-x", psnr=x); t.add(seed=s, method="GIAS", psnr=g)
    >>> summary(check([Claim("GIAS", "GI-x", "psnr", margin=1.0)], t, t))
    '1 of 1 verdicts are borne out on held-out seeds and images.'
    """
    checks = list(checks)
    failed = [f"{c.claim.label} ({c.claim.score})" for c in checks if not c.borne_out]
    text = f"{len(checks) - len(failed)} of {len(checks)} verdicts are borne out on held-out seeds and images"
    return text + (f"; not: {', '.join(failed)}." if failed else ".")


@dataclass(frozen=True)
class SliceCheck:
    """A live re-run of some shipped runs beside them, method by method (:func:`check_slice`).

    ``rows``: per method, ``metric`` -> ``(shipped, live)`` and ``same`` (every metric within
    tolerance). ``tolerance`` is in dB for PSNR (and in the units of any other non-identification
    score); identification rates may differ by ``images`` images of the batch.
    """

    rows: list[dict[str, Any]]
    metrics: tuple[str, ...]
    tolerance: float
    images: int

    @property
    def agree(self) -> int:
        return sum(r["same"] for r in self.rows)

    def largest(self, metric: str) -> float:
        """The largest difference between live and shipped on ``metric``, over the methods."""
        return max(abs(r[metric][1] - r[metric][0]) for r in self.rows)

    def sentence(self) -> str:
        """Whether the live re-run reproduces the shipped numbers, in words, with the largest differences.

        >>> t = stats.Tally(keys=("batch", "method"))
        >>> t.add(batch=4, method="GI-x", psnr=14.2, identified=0.5); t.add(batch=4, method="GIAS", psnr=15.0, identified=0.75)
        >>> live = stats.Tally(keys=("method",))
        >>> live.add(method="GI-x", psnr=14.5, identified=0.5); live.add(method="GIAS", psnr=15.9, identified=0.75)
        >>> check_slice(t, live, ("psnr", "identified")).sentence()
        'the live re-run reproduces the shipped numbers for 1 of 2 methods (within 0.5 dB of PSNR and one image of identification; largest differences 0.9 dB of PSNR and 0% of identification)'
        """
        limits = [f"{self.tolerance:g}{SCORES[m][1]} of {SCORES[m][0]}" for m in self.metrics if not _is_rate(m)]
        limits += [
            f"{'one image' if self.images == 1 else f'{self.images} images'} of {SCORES[m][0]}"
            for m in self.metrics
            if _is_rate(m)
        ]
        largest = [f"{SCORES[m][2].format(self.largest(m))}{SCORES[m][1]} of {SCORES[m][0]}" for m in self.metrics]
        return (
            f"the live re-run reproduces the shipped numbers for {self.agree} of {len(self.rows)} methods "
            f"(within {' and '.join(limits)}; largest differences {' and '.join(largest)})"
        )


def _is_rate(metric: str) -> bool:
    return metric.startswith("identified")


def check_slice(
    shipped: stats.Tally,
    live: stats.Tally,
    metrics: Iterable[str],
    *,
    tolerance: float = 0.5,
    images: int = 1,
    by: str = "method",
    **where: Any,
) -> SliceCheck:
    """A live re-run against the shipped runs it repeats: ``shipped`` selected by ``where`` has one row per method.

    Each method of the shipped slice must be in ``live``; identification rates are compared within
    ``images`` images of the shipped row's ``batch``, other scores within ``tolerance``.

    Raises:
        ValueError: the slice is empty, holds a method twice, or a method has no live run.
    """
    metrics = tuple(metrics)
    for metric in metrics:
        if metric not in SCORES:
            raise ValueError(f"metric must be one of {sorted(SCORES)}, got {metric!r}")
    picked = shipped.select(**where).rows
    methods = [r[by] for r in picked]
    if not picked or len(set(methods)) != len(methods):
        raise ValueError(f"the shipped slice {where} must hold one run per {by}; it holds {methods}")
    rows = []
    for row in picked:
        mine = live.select(**{by: row[by]}).rows
        if not mine:
            raise ValueError(f"no live run of {row[by]!r}; the live tally has {live.levels(by)}")
        if any(_is_rate(m) for m in metrics) and "batch" not in row:
            raise ValueError(f"identification is compared within {images} image(s) of the batch: a row needs 'batch'")
        line: dict[str, Any] = {"method": row[by]}
        same = True
        for metric in metrics:
            line[metric] = (row[metric], mine[0][metric])
            limit = images / row["batch"] if _is_rate(metric) else tolerance
            same &= abs(mine[0][metric] - row[metric]) <= limit + 1e-9
        rows.append({**line, "same": same})
    return SliceCheck(rows, metrics, tolerance, images)


Said = tuple[Outcome, float]  # a chapter's outcome for a claim, and the sign of its mean gap (A minus B)


def verify(
    claims: Iterable[Claim],
    said: Mapping[tuple[str, str], Said],
    fresh: stats.Tally | Mapping[str, stats.Tally],
    shipped: stats.Tally | Mapping[str, stats.Tally] | None = None,
) -> tuple[list[str], int]:
    """``make verify``'s test of one experiment: each claim on ``fresh`` held-out runs, against the chapter.

    ``fresh`` and ``shipped`` are one tally, or one per experiment (each claim reads its own). ``said`` holds
    the chapter's outcome of each claim (by :attr:`Claim.key`) from its last full
    run. A claim the book makes must be borne out by ``fresh`` (:func:`still_holds`); a claim
    that the shipped held-out runs (``shipped``, the ones the chapter prints) did not bear out is
    one the book says it does not make (:meth:`Check.verdict`), so it is reported, not counted.
    Returns the report's lines and how many claims the book makes that ``fresh`` does not bear out.

    Raises:
        ValueError: a claim has no outcome in ``said``.
    """
    lines, failed = [], 0
    for claim in claims:
        if claim.key not in said:
            raise ValueError(f"no chapter outcome for the claim {claim.key}; known: {sorted(said)}")
        outcome_said, leaning = said[claim.key]
        result = claim.paired(_of(fresh, claim))
        found = outcome(result)
        made = shipped is None or still_holds(outcome_said, leaning, outcome(claim.paired(_of(shipped, claim))))
        if still_holds(outcome_said, leaning, found):
            status = "holds"
        elif not made:
            status = "not borne out, as the shipped check found: the book does not claim it"
        else:
            status, failed = "DOES NOT HOLD", failed + 1
        lines.append(
            f"  {claim.label} ({claim.score}): chapter says {claim.words(outcome_said)}, held out "
            f"{claim.words(found)}: {status}\n"
            f"      held out: {claim.describe(result)}"
        )
    return lines, failed


def _of(tallies: stats.Tally | Mapping[str, stats.Tally], claim: Claim) -> stats.Tally:
    return tallies if isinstance(tallies, stats.Tally) else tallies[claim.experiment]


def shipped_runs(path, out=None) -> dict[str, stats.Tally] | None:
    """The held-out runs the chapter prints (``path``), to check fresh ones against: None when there are none
    yet, or when this run is about to replace them (``out`` is ``path``)."""
    from pathlib import Path

    path = Path(path)
    return load(path)[1] if path.exists() and (out is None or Path(out) != path) else None


def save(path, claims: Iterable[Claim], tallies: Mapping[str, stats.Tally], **provenance: Any) -> dict:
    """Ship a held-out check: its claims and its runs (one tally per experiment), with provenance."""
    payload = {"claims": [c.to_json() for c in claims], "tallies": {k: t.to_json() for k, t in tallies.items()}}
    return storage.save_results(path, payload, **provenance)


def load(path) -> tuple[list[Claim], dict[str, stats.Tally], dict]:
    """A shipped held-out check (hash-checked): its claims, its tallies by experiment, and its record."""
    payload, record = storage.load_results(path)
    tallies = {k: stats.Tally.from_json(t) for k, t in payload["tallies"].items()}
    return [Claim.from_json(c) for c in payload["claims"]], tallies, record
