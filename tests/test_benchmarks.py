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


def test_latency_benchmark_covers_every_policy_script(tmp_path):
    scripts = ["fql", "qam", "gfp", "decision_flow", "fpmd", "swfp", "streaming_flow"]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--repeats", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "latency_cpu.csv")))
    assert {r["script"] for r in rows} == set(scripts)
    assert {int(r["batch"]) for r in rows} == {1, 50}
    assert all(float(r["ms_per_action"]) > 0 and float(r["ms_first_action"]) > 0 for r in rows)
    assert all(float(r["network_calls_per_action"]) > 0 for r in rows)
    assert "| fql |" in out.stdout


def test_throughput_job_of_the_runner(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run

    row = run.run_throughput("fql", "16x1", 8, 1)
    assert row["script"] == "fql" and row["size"] == "16x1" and row["updates_per_s"] > 0


def test_docs_results_holds_exactly_what_the_quick_suite_and_the_parity_benchmarks_write():
    """docs/results/ is reproduced by `python benchmarks/run.py --suite quick` and the parity benchmarks: no file there
    that they do not write. A parity_<name>_* file needs a benchmark that writes it: benchmarks/parity_<name>.py naming
    that prefix, or benchmarks/parity.py with <name> among its --script choices (OFFICIAL)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import parity
    import run

    groups = {e.group or e.name for e in run.SUITES["quick"]}
    written = {f"{g}.{ext}" for g in groups for ext in ("csv", "png")} | {"throughput_cpu.csv", "latency_cpu.csv", "quick_summary.md"}
    present = {p.name for p in (ROOT / "docs" / "results").iterdir()}
    parity_files = {n for n in present - written if n.startswith("parity_") and n.endswith((".csv", ".png"))}
    for name in parity_files:
        stem = name.split("_")[1]
        own = ROOT / "benchmarks" / f"parity_{stem}.py"  # a benchmark of its own (parity_fpmd.py), or parity.py's --script
        assert (own.exists() and f"parity_{stem}_" in own.read_text()) or stem in parity.OFFICIAL, f"{name}: no benchmark writes it"
    assert present - parity_files == written, f"extra: {present - parity_files - written}, missing: {written - present}"
