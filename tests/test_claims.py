"""The claims module: outcomes, the held-out rule and the book's verdict sentence."""

from __future__ import annotations

import pytest

from gi_tutorial import claims, stats


def tally(rows):
    t = stats.Tally(keys=("seed", "method"))
    for seed, (a, b) in enumerate(rows):
        t.add(seed=seed, method="A", psnr=a, identified=a / 40)
        t.add(seed=seed, method="B", psnr=b, identified=b / 40)
    return t


CLEAR = tally([(20.0, 15.0), (22.0, 19.5), (25.0, 18.0)])  # A ahead by > 1 dB in every pair
MIXED = tally([(20.0, 15.0), (22.0, 21.5), (25.0, 18.0)])  # A ahead on average, not in every pair
REVERSED = tally([(15.0, 20.0), (19.5, 22.0), (18.0, 25.0)])


def test_outcome_follows_the_pairs():
    psnr = claims.Claim("A", "B", "psnr", margin=1.0)
    assert [claims.outcome(psnr.paired(t)) for t in (CLEAR, MIXED, REVERSED)] == [
        "ahead",
        "no clear winner",
        "behind",
    ]


@pytest.mark.parametrize(
    "chapter, held_out, borne",
    [
        (CLEAR, CLEAR, True),
        (CLEAR, MIXED, False),
        (MIXED, CLEAR, True),
        (MIXED, REVERSED, False),
        (REVERSED, MIXED, False),
    ],
)
def test_the_held_out_rule(chapter, held_out, borne):
    (c,) = claims.check([claims.Claim("A", "B", "psnr", margin=1.0)], chapter, held_out)
    assert c.borne_out is borne


def test_the_verdict_claims_nothing_that_is_not_borne_out():
    (kept,) = claims.check([claims.Claim("A", "B", "psnr", margin=1.0)], CLEAR, CLEAR)
    (dropped,) = claims.check([claims.Claim("A", "B", "psnr", margin=1.0)], CLEAR, MIXED)
    assert kept.verdict() == "A wins (found again)"
    assert dropped.verdict().startswith("not robust: A wins on the chapter's runs, no clear winner held out")
    row = claims.rows([dropped])[0]
    assert row["verdict"] == dropped.verdict() and "in 2 of 3 pairs" in row["held_out"]
    assert "not: A vs B (PSNR)" in claims.summary([kept, dropped])


def test_a_claim_over_another_key():
    t = stats.Tally(keys=("seed", "batch"))
    for seed in range(3):
        t.add(seed=seed, batch=1, psnr=30.0 + seed)
        t.add(seed=seed, batch=8, psnr=12.0)
    claim = claims.Claim(1, 8, "psnr", margin=1.0, by="batch")
    assert claim.words(claims.outcome(claim.paired(t))) == "batch 1 wins"


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(metric="accuracy", margin=0.0), "metric must be one of"), (dict(metric="psnr", margin=-1.0), "margin")],
)
def test_bad_claims_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        claims.Claim("A", "B", **kwargs)


def test_still_holds_refuses_unknown_outcomes():
    with pytest.raises(ValueError, match="'ahead', 'behind' or 'no clear winner'"):
        claims.still_holds("A wins", 1.0, "ahead")


def test_claims_travel_as_json():
    claim = claims.Claim(1, 8, "identified", margin=0.0, by="batch", where={"method": "DLG"}, experiment="sweep")
    assert claims.Claim.from_json(claim.to_json()) == claim


def test_verify_counts_only_the_claims_the_book_makes():
    wins, level = claims.Claim("A", "B", "psnr", margin=1.0), claims.Claim("A", "B", "identified", margin=0.0)
    said = {wins.key: ("ahead", 4.8), level.key: ("no clear winner", 0.1)}
    lines, failed = claims.verify([wins, level], said, fresh=MIXED, shipped=CLEAR)
    assert failed == 1 and "DOES NOT HOLD" in lines[0]  # the book claims "A wins"; these runs do not bear it out
    lines, failed = claims.verify([wins], said, fresh=MIXED, shipped=MIXED)
    assert failed == 0 and "the book does not claim it" in lines[0]  # the chapter already says it is not robust
    assert claims.verify([wins], said, fresh=CLEAR, shipped=MIXED)[1] == 0
    with pytest.raises(ValueError, match="no chapter outcome"):
        claims.verify([wins], {}, fresh=CLEAR)


def test_a_held_out_check_is_shipped_and_loaded(tmp_path):
    claim = claims.Claim("A", "B", "psnr", margin=1.0, experiment="main")
    claims.save(tmp_path / "check.json", [claim], {"main": CLEAR}, command="test", seeds=[0, 1, 2])
    loaded, tallies, record = claims.load(tmp_path / "check.json")
    assert loaded == [claim] and tallies["main"].rows == CLEAR.rows and record["seeds"] == [0, 1, 2]
