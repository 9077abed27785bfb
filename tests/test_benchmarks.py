"""Benchmarks are not tests; this only keeps the sweep runner working (tiny budget)."""

from __future__ import annotations

import csv
import subprocess
import sys

from conftest import ROOT


def test_sweep_runner_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--suite", "smoke", "--out", str(tmp_path),
                          "--workers", "2"], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "smoke_fql.csv")))
    assert {r["seed"] for r in rows} == {"1", "2"}
    assert {r["metric"] for r in rows} == {"eval/normalized_score", "eval/bc_flow_normalized_score"}
    assert {int(r["step"]) for r in rows} == {20, 40}
    assert (tmp_path / "smoke_fql.png").stat().st_size > 1000
    assert "final" in out.stdout


def test_sweep_runner_rejects_unknown_experiment(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--suite", "smoke", "--only", "nope",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "error:" in out.stderr
