"""LotteryHistory: the summary across seeds, its table, files and plot."""

import csv
import json

import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.experiments.history import METRICS


def row(arm, round_index, seed, test, remaining=1.0, epoch=3, barrier=None):
    return tl.RoundResult(
        arm=arm,
        round=round_index,
        remaining=remaining,
        best_val_accuracy=test + 0.01,
        early_stop_epoch=epoch,
        test_accuracy=test,
        final_test_accuracy=None if test is None else test - 0.01,
        seconds=1.0 + seed,
        seed=seed,
        error_barrier=barrier,
    )


ROWS = [
    row("ticket", 0, 0, 0.90, epoch=5),
    row("ticket", 0, 1, 0.92, epoch=6),
    row("ticket", 0, 2, 0.97, epoch=10),
    row("ticket", 1, 0, 0.91, 0.5, 4, 0.02),
    row("ticket", 1, 1, 0.93, 0.5, 2, 0.00),
    row("ticket", 1, 2, 0.95, 0.5, 3, 0.04),
    row("reinit", 1, 0, 0.80, 0.5, 7),
    row("reinit", 1, 1, 0.86, 0.5, 9),
    # Seed 2's reinit round is not finished: the count says so.
]


def test_summary_equals_a_hand_computation():
    summary = {(s.arm, s.round): s for s in tl.LotteryHistory(ROWS).summary()}
    assert list(summary) == [("ticket", 0), ("ticket", 1), ("reinit", 1)]
    ticket = summary[("ticket", 1)]
    assert ticket.count == 3
    test = ticket.stats["test_accuracy"]
    # Mean, sample standard deviation (n - 1), minimum and maximum, by hand.
    assert test.mean == pytest.approx((0.91 + 0.93 + 0.95) / 3)
    assert test.std == pytest.approx(0.02)  # deviations -0.02, 0, 0.02: sqrt(0.0008 / 2)
    assert (test.min, test.max, test.count) == (pytest.approx(0.91), pytest.approx(0.95), 3)
    epoch = ticket.stats["early_stop_epoch"]
    assert (epoch.mean, epoch.std) == (3.0, 1.0)
    barrier = ticket.stats["error_barrier"]
    assert barrier.mean == pytest.approx(0.02) and barrier.std == pytest.approx(0.02)
    reinit = summary[("reinit", 1)]
    assert reinit.count == 2
    assert reinit.stats["test_accuracy"].mean == pytest.approx(0.83)
    assert reinit.stats["test_accuracy"].std == pytest.approx(np.std([0.80, 0.86], ddof=1))
    assert reinit.stats["error_barrier"] is None  # no seed measured it
    dense = summary[("ticket", 0)].stats["early_stop_epoch"]
    assert dense.std == pytest.approx(np.std([5, 6, 10], ddof=1))


def test_one_seed_has_no_standard_deviation():
    (summary,) = tl.LotteryHistory([row("ticket", 0, 4, 0.9)]).summary()
    stat = summary.stats["test_accuracy"]
    assert (stat.mean, stat.std, stat.count) == (0.9, None, 1)


def test_table_shows_mean_std_and_count_with_several_seeds():
    table = str(tl.LotteryHistory(ROWS))
    lines = table.splitlines()
    assert "seeds" in lines[0] and "err barrier" in lines[0]
    ticket_1 = next(line for line in lines if line.startswith("ticket") and " 1 " in line[:20])
    assert "93.00 ± 2.00%" in ticket_1 and "2.00 ± 2.00%" in ticket_1  # test acc, barrier
    assert "3.0 ± 1.0" in ticket_1  # ES epoch
    reinit = next(line for line in lines if line.startswith("reinit"))
    assert reinit.split()[2] == "2"  # two seeds
    one_seed = str(tl.LotteryHistory(ROWS[:1]))
    assert "±" not in one_seed and "90.00%" in one_seed


def test_json_and_csv_hold_rows_and_summary(tmp_path):
    history = tl.LotteryHistory(ROWS)
    history.to_json(tmp_path / "h.json")
    content = json.loads((tmp_path / "h.json").read_text())
    assert len(content["rows"]) == len(ROWS) and len(content["summary"]) == 3
    ticket = content["summary"][1]
    assert (ticket["arm"], ticket["round"], ticket["count"]) == ("ticket", 1, 3)
    assert ticket["test_accuracy"]["std"] == pytest.approx(0.02)
    assert tl.LotteryHistory.from_json(tmp_path / "h.json").rows == ROWS
    history.to_csv(tmp_path / "rows.csv")
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert [int(r["seed"]) for r in rows] == [r.seed for r in ROWS]
    history.to_csv(tmp_path / "summary.csv", summary=True)
    summary = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert list(summary[0])[:3] == ["arm", "round", "count"]
    assert {f"{m}_{p}" for m in METRICS for p in ("mean", "std", "min", "max")} <= set(summary[0])
    assert float(summary[1]["test_accuracy_mean"]) == pytest.approx(0.93)
    assert float(summary[1]["test_accuracy_std"]) == pytest.approx(0.02)
    assert summary[2]["error_barrier_mean"] == ""


def test_a_history_file_of_earlier_versions_reads(tmp_path):
    old = [
        {k: v for k, v in r.items() if k not in ("seed", "error_barrier")}
        for r in tl.LotteryHistory(ROWS[:2]).to_dicts()
    ]
    (tmp_path / "old.json").write_text(json.dumps(old))
    rows = tl.LotteryHistory.from_json(tmp_path / "old.json").rows
    assert [(r.seed, r.error_barrier) for r in rows] == [(0, None), (0, None)]


@pytest.mark.parametrize("error_bars", ["range", "std"])
def test_plot_with_error_bars_is_a_png(tmp_path, error_bars):
    path = tmp_path / "plot.png"
    tl.plot_history(tl.LotteryHistory(ROWS), str(path), error_bars=error_bars)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="error_bars"):
        tl.plot_history(tl.LotteryHistory(ROWS), str(path), error_bars="sem")
