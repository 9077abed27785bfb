"""Sweep runner: many (script, env-id, seed) training runs -> CSV of eval curves -> mean +- std plots.

A suite is a list of experiments; an experiment is one script + dataset + flags, run for several
seeds, whose `eval/*` scalars (read from each run's TensorBoard file) become one curve per metric.
Runs execute in a local process pool by default. For more than one machine, `--engine submitit`
sends each run as a Slurm job through submitit (`pip install submitit`; an optional dependency,
not in requirements.txt): the same suite definition, the same CSV and plots at the end.

The quick suite also measures, in the same process pool: update throughput of every training script at
the quick-suite (128x2) and paper (512x4) network sizes (benchmarks/throughput.py) and action
latency of every policy type (benchmarks/latency.py). Its outputs are exactly what docs/results/ holds:
  quick_<dataset>.csv / .png   learning curves (mean +- std over 3 seeds) per dataset, one plot each
  throughput_cpu.csv           updates/s, 1 thread per run, --workers runs at a time
  latency_cpu.csv              ms per action, batch 1 and 50, 1 thread
  quick_summary.md             final evaluation per curve + the throughput and latency tables
On a 2-core CPU (2 workers x 1 thread) the whole quick suite takes about 34 minutes (2028 s measured).

Usage:
  python benchmarks/run.py --suite quick                # docs/results/ on a 2-core CPU
  python benchmarks/run.py --suite smoke --out /tmp/x   # seconds; what CI runs to keep this working
  python benchmarks/run.py --suite quick --only fql_reacher_mixed --seeds 1 2 3 4 5
  python benchmarks/run.py --suite quick --only throughput latency   # the measurements only
  python benchmarks/run.py --suite paper --engine submitit --slurm-partition gpu --workers 64
  python benchmarks/run.py --suite quick --only qam_reacher_mixed --seeds 1 --out /tmp/x \
      --override --total-steps 40 --eval-freq 20 --eval-episodes 2   # shrink a suite to check it runs
Per-algorithm studies (longer runs, ablations, toy figures) are made by the other scripts of benchmarks/
into docs/studies/; each docs page names its command.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Experiment:
    name: str  # also the CSV / PNG file stem and the plot group
    script: str
    args: list
    label: str  # legend label
    metrics: tuple = ("eval/normalized_score",)  # each becomes a curve "<label> <metric>"
    seeds: tuple = (1, 2, 3)
    group: str = ""  # experiments with the same group share one plot (default: own name)
    xlabel: str = "gradient steps"


# The quick suite's offline methods share one budget (4000 updates of a 128x2 network, evaluation every 1000 on 50
# episodes, 3 seeds): what fits 45 minutes of a 2-core CPU with qam and decision_flow, whose updates cost ~5x fql's
# (benchmarks/throughput.py). Each script uses its documented Reacher hyper-parameters (docs/<script>.md); the same
# flags on PointMaze wander. Longer single-method runs are in docs/studies/ (e.g. FQL at 10k updates of 256x3).
QUICK_SIZE = ["--total-steps", "4000", "--hidden-dim", "128", "--num-layers", "2", "--eval-freq", "1000",
              "--eval-episodes", "50"]
FQL_QUICK = ["--alpha", "0.3", *QUICK_SIZE]  # docs/fql.md
QAM_QUICK = ["--inv-temp", "1", "--horizon-length", "1", *QUICK_SIZE]  # docs/qam.md: Reacher H = 1, inv_temp 1
GFP_QUICK = ["--alpha", "0.3", "--eta", "1e-3", *QUICK_SIZE]  # docs/gfp.md: alpha 0.3, default eta
DF_QUICK = ["--variant", "dir", "--eta", "1.0", *QUICK_SIZE]  # docs/decision_flow.md: DF-dir defaults
# PointMaze demos: the budgets of docs/swfp.md (online: env steps on the x axis) and docs/streaming_flow.md (SFP and the
# chunk policy with the script's default next-state actions, and the chunk policy on the dataset's own force actions)
SWFP_QUICK = ["--pretrain-steps", "5000", "--critic-warmup-steps", "2000", "--total-timesteps", "1000", "--hidden-dim", "128",
              "--num-layers", "2", "--eval-freq", "500", "--eval-episodes", "100"]
SFP_QUICK = ["--total-steps", "2000", "--batch-size", "256", "--hidden-dim", "128", "--num-blocks", "2", "--learning-rate", "1e-3",
             "--lr-warmup-steps", "100", "--eval-freq", "500", "--eval-episodes", "100"]
OFFLINE_QUICK = [  # (script, label, args, metrics), slowest first (the pool starts jobs in this order)
    ("qam", "QAM", QAM_QUICK, ("eval/normalized_score", "eval/bc_flow_normalized_score")),
    ("decision_flow", "DF-dir", DF_QUICK, ("eval/normalized_score", "eval/bc_flow_normalized_score")),
    ("gfp", "GFP", GFP_QUICK, ("eval/normalized_score", "eval/flow_normalized_score")),
    ("fql", "FQL", FQL_QUICK, ("eval/normalized_score", "eval/bc_flow_normalized_score")),
]
OFFLINE_DATASETS = [("reacher_mixed", "flowrl/reacher/mixed-v0"), ("pointmaze_wander", "flowrl/pointmaze/wander-v0")]

SUITES = {
    "smoke": [
        Experiment("smoke_fql", "fql", ["--total-steps", "40", "--hidden-dim", "16", "--num-layers", "1", "--batch-size", "16",
                                        "--eval-freq", "20", "--eval-episodes", "2", "--alpha", "0.3"],
                   "FQL", ("eval/normalized_score", "eval/bc_flow_normalized_score"), seeds=(1, 2)),
    ],
    "quick": [
        *[Experiment(f"{script}_{name}", script, ["--env-id", env_id, *args], label,
                     tuple(m.replace("normalized_score", "success") for m in metrics) if name == "pointmaze_wander" else metrics,
                     group=f"quick_{name}")  # the maze's reward is sparse: its success rate is the readable metric
          for script, label, args, metrics in OFFLINE_QUICK for name, env_id in OFFLINE_DATASETS],
        Experiment("swfp_pointmaze_demos", "swfp", ["--env-id", "flowrl/pointmaze/demos-v0", *SWFP_QUICK], "SWFP",
                   ("eval/success",), group="quick_pointmaze_demos_online", xlabel="online env steps (after BC pretraining)"),
        Experiment("streaming_flow_pointmaze_demos", "streaming_flow", ["--env-id", "flowrl/pointmaze/demos-v0", *SFP_QUICK],
                   "SFP", ("eval/success",), group="quick_pointmaze_demos"),
        Experiment("streaming_flow_chunk_pointmaze_demos", "streaming_flow",
                   ["--env-id", "flowrl/pointmaze/demos-v0", *SFP_QUICK, "--policy", "chunk"], "FM chunk policy",
                   ("eval/success",), group="quick_pointmaze_demos"),
        Experiment("streaming_flow_chunk_env_actions_pointmaze_demos", "streaming_flow",
                   ["--env-id", "flowrl/pointmaze/demos-v0", *SFP_QUICK, "--policy", "chunk", "--action-space", "env"],
                   "FM chunk policy (env actions)", ("eval/success",), group="quick_pointmaze_demos"),
    ],
    "paper": [  # paper-scale (1M updates, 512x4): a cluster job, not a CPU one
        Experiment(f"fql_{task}", "fql", ["--env-id", task, "--alpha", str(alpha)], "FQL", ("eval/success",), seeds=tuple(range(1, 9)))
        for task, alpha in [("cube-single-play-singletask-task2-v0", 300), ("scene-play-singletask-task2-v0", 300),
                            ("puzzle-3x3-play-singletask-task4-v0", 1000)]
    ],
}
# Measurements run in the same pool as a suite's training runs (names usable with --only):
# throughput (one job per script and size, benchmarks/throughput.py) and latency (one job, benchmarks/latency.py).
# Updates per throughput measurement (4 log intervals, the first dropped): fewer where one update costs seconds on a CPU
# (fpmd at 512x4: each update samples best-of-32 candidates with 20 Euler steps for the whole batch).
MEASUREMENTS = {"quick": dict(throughput_sizes=("512x4", "128x2"), latency_repeats=200,
                              throughput_steps={"fpmd": 40, "qam": 100, "decision_flow": 100, "default": 200})}

METRIC_NAMES = {"eval/normalized_score": "", "eval/bc_flow_normalized_score": " (BC flow)", "eval/success": " success",
                "eval/bc_flow_success": " (BC flow) success", "eval/flow_normalized_score": " (VaBC flow)", "eval/flow_success": " (VaBC flow) success"}
# --override flags under another name in some scripts: script -> {flag: the script's flag}
OVERRIDE_NAMES = {"swfp": {"--total-steps": "--total-timesteps"}}  # swfp's x axis is online env steps


def with_override(script: str, args: list, override: list) -> list:
    """args + override (tyro keeps the last value of a repeated flag), override flags renamed for this script."""
    names = OVERRIDE_NAMES.get(script, {})
    return [*args, *[names.get(a, a) for a in override]]


def run_one(script: str, args: list, seed: int, workdir: str, threads: int) -> list:
    """One training run in its own folder; returns its eval scalars as (metric, step, value) rows."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Path(workdir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(ROOT / f"{script}.py"), *args, "--seed", str(seed)]
    with open(Path(workdir) / "log.txt", "w") as log:
        subprocess.run(cmd, cwd=workdir, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    (run_dir,) = [p for p in (Path(workdir) / "runs").iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(tag, e.step, e.value) for tag in acc.Tags()["scalars"] if tag.startswith("eval/") for e in acc.Scalars(tag)]


def run_throughput(script: str, size: str, steps: int, threads: int) -> dict:
    """Median updates/s of one script at one network size (benchmarks/throughput.py's measurement)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    ups = throughput.measure(script, size, steps, threads, cuda=False, extra=[])
    return dict(script=script, size=size, updates_per_s=round(ups, 1), device=throughput.device_name(False), threads=threads)


def run_latency(out: str, repeats: int, threads: int) -> None:
    """benchmarks/latency.py for every policy type (writes <out>/latency_cpu.csv)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--out", out, "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)


def submit(engine: str, jobs: list, opts) -> list:
    """jobs: [(function, args)] run as function(*args) -> their results, in order (the pool starts them in order)."""
    if engine == "local":
        with ProcessPoolExecutor(max_workers=opts.workers) as pool:
            futures = [pool.submit(fn, *args) for fn, args in jobs]
            return [f.result() for f in futures]
    if engine == "submitit":
        try:
            import submitit
        except ImportError:
            raise SystemExit("error: --engine submitit needs `pip install submitit` (optional dependency)")
        executor = submitit.AutoExecutor(folder=opts.workdir / "submitit")
        executor.update_parameters(timeout_min=opts.slurm_timeout_min, slurm_partition=opts.slurm_partition,
                                   cpus_per_task=opts.threads, gpus_per_node=opts.slurm_gpus, slurm_array_parallelism=opts.workers)
        with executor.batch():
            futures = [executor.submit(fn, *args) for fn, args in jobs]
        return [f.result() for f in futures]
    raise SystemExit(f"error: unknown engine {engine!r}; use local or submitit")


def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "label", "seed", "metric", "step", "value"])
        writer.writerows(rows)


def plot(path: Path, rows: list, title: str, xlabel: str = "gradient steps") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = defaultdict(lambda: defaultdict(dict))  # curve -> seed -> step -> value
    for _, label, seed, metric, step, value in rows:
        curves[label + METRIC_NAMES.get(metric, " " + metric)][seed][step] = value
    fig, ax = plt.subplots(figsize=(6, 4))
    for curve, by_seed in curves.items():
        steps = sorted(set.intersection(*(set(s) for s in by_seed.values())))
        values = np.array([[by_seed[seed][t] for t in steps] for seed in by_seed])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{curve} ({len(by_seed)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalized score" if "normalized" in str(rows[0][3]) else rows[0][3])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(rows: list) -> dict:
    """Final-eval mean, std, number of seeds and (largest) final step per (label, metric)."""
    import numpy as np

    last = defaultdict(dict)
    for _, label, seed, metric, step, value in rows:
        if step >= last[(label, metric)].get(seed, (-1, 0))[0]:
            last[(label, metric)][seed] = (step, value)
    return {key: (float(np.mean([v for _, v in d.values()])), float(np.std([v for _, v in d.values()])), len(d),
                  max(s for s, _ in d.values())) for key, d in last.items()}


def summary_sections(suite: str, out: Path) -> list:
    """Markdown sections from the suite's files in `out` (curves CSVs, throughput_cpu.csv, latency_cpu.csv)."""
    sections, table = [], ["| plot (csv/png) | curve | final step | final mean ± std | seeds |", "|---|---|---|---|---|"]
    for group in dict.fromkeys(e.group or e.name for e in SUITES[suite]):
        if not (out / f"{group}.csv").exists():
            continue
        rows = [(r["experiment"], r["label"], int(r["seed"]), r["metric"], int(r["step"]), float(r["value"]))
                for r in csv.DictReader(open(out / f"{group}.csv"))]
        for (label, metric), (mean, std, n, step) in sorted(summarise(rows).items()):
            curve = label + METRIC_NAMES.get(metric, " " + metric)
            table.append(f"| [{group}]({group}.png) | {curve} | {step} | {mean:.2f} ± {std:.2f} | {n} |")
    if len(table) > 2:
        sections.append("## Learning curves\n\nMean ± std over seeds of each seed's last evaluation (normalized scores x100, "
                        "success rates in [0, 1]).\n\n" + "\n".join(table))
    if (out / "throughput_cpu.csv").exists():
        rows = list(csv.DictReader(open(out / "throughput_cpu.csv")))
        sizes = list(dict.fromkeys(r["size"] for r in rows))
        by_script = defaultdict(dict)
        for r in rows:
            by_script[r["script"]][r["size"]] = r["updates_per_s"]
        lines = ["| script | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        lines += [f"| {script} | " + " | ".join(v.get(size, "") for size in sizes) + " |" for script, v in by_script.items()]
        sections.append(f"## Update throughput (updates/s)\n\n{rows[0]['device']}, {rows[0]['threads']} thread per run, "
                        f"{rows[0].get('parallel_runs', 1)} runs at a time (throughput_cpu.csv).\n\n" + "\n".join(lines))
    if (out / "latency_cpu.csv").exists():
        rows = list(csv.DictReader(open(out / "latency_cpu.csv")))
        lines = ["| script | policy | batch | ms / action | ms to first action | NFE / action |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['script']} | {r['policy']} | {r['batch']} | {float(r['ms_per_action']):.3f} | "
                  f"{float(r['ms_first_action']):.3f} | {float(r['network_calls_per_action']):g} |" for r in rows]
        sections.append(f"## Action latency (ms, {rows[0]['device']}, {rows[0]['threads']} thread, latency_cpu.csv)\n\n"
                        + "\n".join(lines))
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="quick", choices=list(SUITES))
    parser.add_argument("--only", nargs="*", help="experiment names (default: the whole suite)")
    parser.add_argument("--seeds", nargs="*", type=int, help="override every experiment's seeds")
    parser.add_argument("--engine", default="local", choices=["local", "submitit"])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 1), help="parallel runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="where CSV and PNG files go")
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-gpus", type=int, default=0)
    parser.add_argument("--slurm-timeout-min", type=int, default=24 * 60)
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[],
                        help="must come last: flags appended to every run's args, e.g. --override --total-steps 40 "
                             "--eval-freq 20 --eval-episodes 2; appended after each experiment's own flags, so they win (tyro "
                             "keeps the last value); for swfp --total-steps means --total-timesteps")
    opts = parser.parse_args()

    measure = MEASUREMENTS.get(opts.suite, {})
    names = [e.name for e in SUITES[opts.suite]] + (["throughput", "latency"] if measure else [])
    unknown = [n for n in opts.only or [] if n not in names]
    if unknown:
        print(f"error: no experiment named {unknown} in suite {opts.suite}; known: {names}", file=sys.stderr)
        return 2
    wanted = lambda name: not opts.only or name in opts.only  # noqa: E731
    experiments = [e for e in SUITES[opts.suite] if wanted(e.name)]
    tmp = tempfile.TemporaryDirectory() if opts.workdir is None else None
    opts.workdir = Path(tmp.name) if tmp else opts.workdir.resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    jobs, owners = [], []  # owners: ("run", experiment, seed) | ("throughput",) | ("latency",)
    if measure and wanted("latency"):
        jobs.append((run_latency, (str(opts.out.resolve()), measure["latency_repeats"], opts.threads)))
        owners.append(("latency",))
    if measure and wanted("throughput"):
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from throughput import SCRIPTS as THROUGHPUT_SCRIPTS

        for size in measure["throughput_sizes"]:  # the biggest (slowest) first
            for script in THROUGHPUT_SCRIPTS:
                steps = measure["throughput_steps"].get(script, measure["throughput_steps"]["default"])
                jobs.append((run_throughput, (script, size, steps, opts.threads)))
                owners.append(("throughput",))
    for e in experiments:
        for seed in opts.seeds or e.seeds:
            workdir = str(opts.workdir / e.name / f"seed{seed}")
            jobs.append((run_one, (e.script, with_override(e.script, e.args, opts.override), seed, workdir, opts.threads)))
            owners.append(("run", e, seed))
    t0 = time.time()
    print(f"{len(jobs)} jobs, engine {opts.engine}, {opts.workers} workers x {opts.threads} threads", flush=True)
    results = submit(opts.engine, jobs, opts)
    print(f"done in {time.time() - t0:.0f} s", flush=True)

    by_group, xlabels, throughput_rows = defaultdict(list), {}, []
    for owner, result in zip(owners, results):
        if owner[0] == "latency":
            continue
        elif owner[0] == "throughput":
            throughput_rows.append(dict(result, parallel_runs=opts.workers))
        else:
            _, e, seed = owner
            by_group[e.group or e.name] += [(e.name, e.label, seed, m, step, v) for m, step, v in result if m in e.metrics]
            xlabels[e.group or e.name] = e.xlabel
    for group, rows in by_group.items():
        write_csv(opts.out / f"{group}.csv", rows)
        plot(opts.out / f"{group}.png", rows, group, xlabels[group])
        for (label, metric), (mean, std, n, _) in sorted(summarise(rows).items()):
            print(f"{group:28s} {label + METRIC_NAMES.get(metric, ' ' + metric):30s} final {mean:7.2f} +- {std:5.2f} ({n} seeds)")
    if throughput_rows:
        with open(opts.out / "throughput_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(throughput_rows[0]))
            writer.writeheader()
            writer.writerows(throughput_rows)
    summary = opts.out / f"{opts.suite}_summary.md"
    command = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    summary.write_text(f"# Suite `{opts.suite}`\n\nEvery file of this folder, summarised (a partial run with --only refreshes its own "
                       f"files; this summary is rebuilt from all of them). Last run: `{command}` ({len(jobs)} jobs, "
                       f"{opts.workers} workers x {opts.threads} threads, {time.time() - t0:.0f} s).\n\n"
                       + "\n\n".join(summary_sections(opts.suite, opts.out)) + "\n", encoding="utf-8")
    print(f"summary: {summary}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
