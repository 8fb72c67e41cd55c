"""The held-out checks (benchmarks/verify_ch*.py) and the chapters agree on what the book claims.

Each check script lists the claims it re-runs (``CLAIMS``) and the chapter's outcome of each
(``SAID``); the chapter loads the claims from the check's shipped run. These tests fail when the
three drift apart: a claim without an outcome, an outcome without a claim, or a shipped run whose
claims are not the script's (re-run the script with ``--out``).
"""

from __future__ import annotations

import pytest

from gi_tutorial import claims, storage

SHIPPED = ["ch1", "ch2", "ch3"]  # the checks whose runs the chapters print (claims.save / claims.load)


@pytest.mark.parametrize("chapter", SHIPPED)
def test_every_claim_has_the_chapters_outcome(chapter, benchmark_script):
    check = benchmark_script(f"verify_{chapter}")
    assert {c.key for c in check.CLAIMS} == set(check.SAID)
    assert len({c.key for c in check.CLAIMS}) == len(check.CLAIMS), "two claims share a label and a score"
    for outcome, leaning in check.SAID.values():
        assert outcome in ("ahead", "behind", "no clear winner")
        assert outcome == "no clear winner" or (leaning > 0) == (outcome == "ahead")


@pytest.mark.parametrize("chapter", SHIPPED)
def test_the_shipped_run_holds_the_scripts_claims(chapter, benchmark_script):
    check = benchmark_script(f"verify_{chapter}")
    shipped, tallies, record = claims.load(storage.RESULTS / f"{chapter}_verify.json")  # hash-checked
    assert shipped == check.CLAIMS
    assert record["seeds"] == list(check.SEEDS)
    for claim in shipped:  # every claim can be computed on the shipped runs: both sides, paired
        assert claim.paired(tallies[claim.experiment]).n >= 3
