"""Benchmarks are not tests; this only keeps the sweep runner working (tiny budget)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
import types

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402


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
    that prefix, or benchmarks/parity.py with <name> among its --script choices (OFFICIAL); a parity_*.json is parity.py's
    record of the settings of the CSV beside it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import parity
    import run

    groups = {e.group or e.name for e in run.SUITES["quick"]}
    written = {f"{g}.{ext}" for g in groups for ext in ("csv", "png")} | {"throughput_cpu.csv", "latency_cpu.csv", "quick_summary.md"}
    # benchmarks/throughput.py --cuda (benchmarks/gpu_throughput.sh) writes this one, once a GPU has run it
    present = {p.name for p in (ROOT / "docs" / "results").iterdir()} - {"throughput_gpu.csv"}
    parity_files = {n for n in present - written if n.startswith("parity_") and n.endswith((".csv", ".png", ".json"))}
    for name in parity_files:
        stem = name.split("_")[1]
        if name.endswith(".json"):  # parity.py's settings of a CSV (for --add-csv): only beside that CSV
            assert stem in parity.OFFICIAL and name[:-5] + ".csv" in present, f"{name}: no parity.py CSV beside it"
            continue
        own = ROOT / "benchmarks" / f"parity_{stem}.py"  # a benchmark of its own (parity_fpmd.py), or parity.py's --script
        assert (own.exists() and f"parity_{stem}_" in own.read_text()) or stem in parity.OFFICIAL, f"{name}: no benchmark writes it"
    assert present - parity_files == written, f"extra: {present - parity_files - written}, missing: {written - present}"


def test_throughput_summary_drops_the_warm_up_interval_and_measures_its_excess():
    # 50 updates per interval; the first took 5 s (compilation), the later ones run at a median of 100 updates/s
    s = throughput.summarize([(50, 10.0), (100, 100.0), (150, 50.0), (200, 120.0)], first_steps=50)
    assert s["updates_per_s"] == 100.0 and s["intervals"] == 3
    assert s["warmup_s"] == pytest.approx(5.0 - 0.5)
    assert throughput.summarize([(50, 10.0)])["updates_per_s"] is None  # the warm-up alone measures nothing


def test_throughput_child_reads_the_clock_after_a_device_sync_and_stops_after_its_window():
    class Writer:  # stands in for torch's SummaryWriter
        def __init__(self, *a):
            self.tags = []

        def add_scalar(self, tag, value, step):
            self.tags.append(tag)

    mod = types.SimpleNamespace(SummaryWriter=Writer, time=time)
    syncs = []
    points = throughput.instrument(mod, lambda: syncs.append(1), measure_s=0.05, min_intervals=3)
    reads = 0

    def main():  # a script's loop: SPS from its own clock every 10 steps, logged with its other scalars, no end
        nonlocal reads
        writer, step, t0 = mod.SummaryWriter("runs"), 0, mod.time.time()
        reads += 1
        while True:
            step += 10
            time.sleep(0.005)
            sps = 10 / (mod.time.time() - t0)
            writer.add_scalar("losses/x", 1.0, step)
            writer.add_scalar("charts/SPS", sps, step)
            t0 = mod.time.time()
            reads += 2

    with pytest.raises(throughput._Stop):
        main()
    assert len(syncs) >= reads - 1 > 0  # every clock read waited for the device (the last one raced the stop)
    assert len(points) >= 4 and [p[0] for p in points] == list(range(10, 10 * len(points) + 1, 10))
    assert all(0 < sps < 2000 for _, sps in points)


def test_throughput_runs_in_the_order_the_ratios_need_and_sees_which_flags_a_script_has():
    order = throughput.plan(["gfp", "qam", "fql"], ["eager", "compile", "cudagraphs"], ["qam", "fql"])
    assert order[:8] == [("official", "fql", "jit"), ("ours", "fql", "eager"), ("ours", "fql", "cudagraphs"),
                         ("ours", "fql", "compile"), ("official", "qam", "jit"), ("ours", "qam", "eager"),
                         ("ours", "qam", "cudagraphs"), ("ours", "qam", "compile")]
    assert order[8:] == [("ours", "gfp", "eager"), ("ours", "gfp", "cudagraphs"), ("ours", "gfp", "compile")]
    assert {"compile", "hidden_dim", "batch_size"} <= throughput.script_flags("fql")
    assert throughput.dataset_dims("flowrl/reacher/mixed-v0") == (10, 2)  # the official agents' batches: Reacher's sizes


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "512by4"], "--sizes must be 'paper' or HIDDENxLAYERS"),
    (["--fql-official-dir", "/nonexistent"], "--fql-official-dir /nonexistent has no agents/fql.py"),
    (["--scripts", "nope"], "no throughput configuration for ['nope']"),
])
def test_throughput_bad_input_is_one_clear_line(argv, message, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *argv, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: ") and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_throughput_cuda_without_a_gpu_writes_no_gpu_rows(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code = throughput.main(["--cuda", "--scripts", "fql", "--sizes", "16x1", "--steps", "8", "--out", str(tmp_path)])
    assert code == 1 and "--cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# benchmarks/loss_trace.py (issue 22's behaviour check): the comparison itself, without running the cases
import loss_trace  # noqa: E402


def test_loss_trace_cases_cover_every_training_script_for_200_updates_logged_at_each():
    assert {script for script, _ in loss_trace.CASES.values()} == set(loss_trace.SCRIPTS)
    for name, (_, argv) in loss_trace.CASES.items():
        assert argv[argv.index("--log-freq") + 1] == "1", name
        assert "--no-cuda" in argv, name


def test_loss_trace_compare_finds_one_changed_loss_and_ignores_timings():
    trace = {"fql": {"losses/critic_loss": [[1, 0.5], [2, 0.25]], "eval/normalized_score": [[2, 10.0]]}}
    changed = {"fql": {"losses/critic_loss": [[1, 0.5], [2, 0.25000003]], "eval/normalized_score": [[2, 10.0]]}}
    assert loss_trace.compare(trace, trace) == ["fql: same (3 values of 2 tags, bit for bit)"]
    (line,) = loss_trace.compare(trace, changed)
    assert "DIFFERS" in line and "losses/critic_loss at step 2" in line
    assert ": same" in loss_trace.compare(trace, changed, rtol=1e-6)[0]
    fewer = {"fql": {"losses/critic_loss": trace["fql"]["losses/critic_loss"]}}
    assert "different tags" in loss_trace.compare(trace, fewer)[0]
    assert "missing" in loss_trace.compare(trace, {})[0]
    assert not loss_trace.compared("charts/SPS") and not loss_trace.compared("eval/N4/t_flowopt_s")
    assert loss_trace.compared("losses/q_loss") and loss_trace.compared("eval/success")


def test_loss_trace_bad_input_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        loss_trace.main(["--only", "nope", "--save", str(tmp_path / "t.json")])
    assert "unknown case" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        loss_trace.main(["--only", "fql"])
    assert "give --ref, --save or --against" in capsys.readouterr().err
