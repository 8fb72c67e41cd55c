"""gi_tutorial.stats: mean ± sd with ddof = 1, paired comparisons, the Tally accumulator."""

from __future__ import annotations

import math
import statistics

import pytest

from gi_tutorial import stats


def test_mean_sd_uses_the_sample_standard_deviation():
    values = [12.0, 15.5, 9.25, 20.0]
    summary = stats.mean_sd(values)
    assert summary.n == 4
    assert summary.mean == pytest.approx(statistics.mean(values))
    assert summary.sd == pytest.approx(statistics.stdev(values))  # ddof = 1, not pstdev
    assert summary.sd > statistics.pstdev(values)
    assert math.isnan(stats.mean_sd([3.0]).sd)
    assert str(stats.mean_sd([3.0])) == "3.0 (n = 1)"


@pytest.mark.parametrize("values, match", [([], "at least one"), ([1.0, float("nan")], "NaN")])
def test_mean_sd_rejects_what_cannot_be_averaged(values, match):
    with pytest.raises(ValueError, match=match):
        stats.mean_sd(values)


def test_paired_counts_each_side_beyond_the_margin():
    result = stats.paired([10.0, 12.0, 9.0, 15.0], [8.0, 12.5, 9.5, 10.0], margin=1.0)
    assert result.ahead == 2 and result.behind == 0 and result.n == 4
    assert result.gap.mean == pytest.approx((2 - 0.5 - 0.5 + 5) / 4)
    assert not result.holds  # ahead in 2 of 4 pairs only
    assert stats.paired([5.0, 6.0], [1.0, 1.5], margin=1.0).holds
    assert stats.paired([1.0, 1.5], [5.0, 6.0], margin=1.0).reversed
    with pytest.raises(ValueError, match="one score of each method per pair"):
        stats.paired([1.0], [1.0, 2.0])


def test_compare_states_the_verdict_the_numbers_give():
    assert stats.compare("A", "B", stats.paired([5.0, 6.0, 7.0], [1.0, 2.0, 3.0], 1.0)).endswith("A wins")
    assert stats.compare("A", "B", stats.paired([1.0, 2.0, 3.0], [5.0, 6.0, 7.0], 1.0)).endswith("B wins")
    assert stats.compare("A", "B", stats.paired([1.0, 6.0, 3.0], [5.0, 2.0, 3.0], 1.0)).endswith("no clear winner")
    text = stats.compare("A", "B", stats.paired([0.5, 0.7], [0.2, 0.3], 0.1), fmt="{:.0%}")
    assert "+35% ± 7%" in text and "more than 10%" in text


def _tally():
    tally = stats.Tally(keys=("batch", "seed", "method"))
    for seed in range(3):
        for batch in (4, 16):
            tally.add(batch=batch, seed=seed, method="GI-x", psnr=20.0 - batch / 2 + seed, identified=0.5)
            tally.add(batch=batch, seed=seed, method="GIAS", psnr=21.0 - batch / 8 + seed, identified=0.75)
    return tally


def test_tally_summaries_and_pairs_follow_the_keys():
    tally = _tally()
    assert tally.summary("psnr", method="GIAS", batch=16).mean == pytest.approx(21.0 - 2 + 1)
    assert tally.values("psnr", method="GI-x", batch=[4, 16], seed=0) == [18.0, 12.0]
    result = tally.paired("GIAS", "GI-x", "psnr", batch=16, margin=3.0)
    assert result.n == 3 and result.ahead == 3 and result.gap.mean == pytest.approx(7.0)
    assert tally.levels("method") == ["GI-x", "GIAS"]
    with pytest.raises(ValueError, match="not run on the same settings"):
        incomplete = tally.select(batch=16)
        incomplete.add(batch=16, seed=9, method="GIAS", psnr=1.0)
        incomplete.paired("GIAS", "GI-x", "psnr")
    with pytest.raises(ValueError, match="missing"):
        tally.add(batch=4, method="GI-x", psnr=1.0)


def test_tally_table_and_json_round_trip():
    tally = _tally()
    lines = tally.table(rows=("batch", "method"), metrics={"psnr": "{:.1f}", "identified": "{:.0%}", "lpips": "{:.2f}"})
    assert [(line["batch"], line["method"]) for line in lines] == [(4, "GI-x"), (4, "GIAS"), (16, "GI-x"), (16, "GIAS")]
    assert lines[0]["psnr"] == "19.0 ± 1.0" and lines[1]["identified"] == "75% ± 0%" and lines[0]["n"] == 3
    assert lines[0]["lpips"] is None  # no run computed it
    again = stats.Tally.from_json(tally.to_json())
    assert again.rows == tally.rows and again.keys == tally.keys
