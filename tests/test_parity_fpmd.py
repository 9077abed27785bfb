"""Tests for benchmarks/parity_fpmd.py without the official code: the smoke run of our side end to end (csv and plot
written, curve at the right steps), the parity statistics on known numbers, the stdout parser, the patcher refusing
a tree it does not fit, and bad input."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import parity_fpmd  # noqa: E402


def test_smoke_run_of_our_side_writes_the_curve(tmp_path):
    assert parity_fpmd.main(["--smoke", "--seeds", "1", "--out-dir", str(tmp_path / "out"),
                             "--results-dir", str(tmp_path / "res")]) == 0
    with open(tmp_path / "res" / "parity_fpmd_Pendulum-v1.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["side"] for r in rows} == {"ours", "ours_1nfe", "random"}
    assert sum(r["side"] == "random" for r in rows) == 1  # one row per episode of the random policy
    assert [int(r["step"]) for r in rows if r["side"] == "ours"] == [100]  # steps after the warm-up, the final one
    assert all(-2000 < float(r["return"]) <= 0 for r in rows)  # Pendulum returns of one 200-step episode
    assert (tmp_path / "res" / "parity_fpmd_Pendulum-v1.png").stat().st_size > 0


def test_compare_on_known_numbers():
    s = parity_fpmd.compare([100.0, 110.0, 120.0], [90.0, 100.0, 110.0])  # both std 10 (ddof 1), diff -10
    assert s["official_mean"] == 110.0 and s["ours_mean"] == 100.0 and s["official_std"] == pytest.approx(10.0)
    assert s["diff"] == -10.0 and s["se"] == pytest.approx(math.sqrt(200 / 3))  # 8.165
    assert s["tolerance"] == pytest.approx(2 * math.sqrt(200 / 3)) and s["pass"]  # 16.3 > 5% of 110
    s = parity_fpmd.compare([1000.0, 1001.0, 1002.0], [900.0, 901.0, 902.0])  # tight seeds: 5% of 1000 decides
    assert s["tolerance"] == pytest.approx(0.05 * 1001) and not s["pass"]  # |diff| 100 > 50.05


def test_parse_ours_keeps_steps_after_the_warmup_and_the_median_rate():
    log = "\n".join(["step 1000/3000 sps=5000", "step 2000/3000 sps=900", "step 2000: return=-300.0 (best-of-8), "
                     "return_1nfe=-310.5", "step 2500/3000 sps=100", "step 3000/3000 sps=120 critic=1",
                     "step 3000: return=-50.5 (best-of-8), return_1nfe=-60.0", "step 3500/3000 sps=10"])
    curve, curve_1nfe, rate = parity_fpmd.parse_ours(log, warmup=2000)
    assert curve == [(1000, -50.5)] and curve_1nfe == [(1000, -60.0)]  # the evaluation at the warm-up's end is dropped
    assert rate == 100.0  # windows 2000-2500, 2500-3000, 3000-3500 (the warm-up ones excluded): median of 100, 120, 10


def test_patches_refuse_a_tree_they_do_not_fit(tmp_path):
    for rel, _, _ in parity_fpmd.PATCHES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# not the official file\n")
    with pytest.raises(parity_fpmd.ParityError, match="patch does not apply"):
        parity_fpmd.apply_patches(tmp_path)


def test_bad_input_gives_one_line(tmp_path, capsys):
    assert parity_fpmd.main(["--official-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 1
    assert "is not a rectified_flow_policy checkout" in capsys.readouterr().err.strip().splitlines()[-1]
    assert parity_fpmd.main(["--steps", "1000", "--eval-every", "300", "--sides", "ours"]) == 2
    assert "multiple of --eval-every" in capsys.readouterr().err.strip().splitlines()[-1]
    assert parity_fpmd.main([]) == 2  # the official side needs --official-dir
    assert "--official-dir is required" in capsys.readouterr().err.strip().splitlines()[-1]
