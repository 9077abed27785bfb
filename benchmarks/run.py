"""Sweep runner: many (script, env-id, seed) training runs -> CSV of eval curves -> mean +- std plots.

A suite is a list of experiments; an experiment is one script + dataset + flags, run for several
seeds, whose `eval/*` scalars (read from each run's TensorBoard file) become one curve per metric.
Runs execute in a local process pool by default. For more than one machine, `--engine submitit`
sends each run as a Slurm job through submitit (`pip install submitit`; an optional dependency,
not in requirements.txt): the same suite definition, the same CSV and plots at the end.

Usage:
  python benchmarks/run.py --suite quick                # docs/results/*.csv + *.png on a 2-core CPU
  python benchmarks/run.py --suite smoke --out /tmp/x   # seconds; what CI runs to keep this working
  python benchmarks/run.py --suite quick --only fql_reacher_mixed --seeds 1 2 3 4 5
  python benchmarks/run.py --suite paper --engine submitit --slurm-partition gpu --workers 64
Also: benchmarks/throughput.py (updates/s) and the per-script latency benchmarks.
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


FQL_QUICK = ["--alpha", "0.3", "--total-steps", "20000", "--hidden-dim", "256", "--num-layers", "3",
             "--eval-freq", "2500", "--eval-episodes", "100"]

SUITES = {
    "smoke": [
        Experiment("smoke_fql", "fql", ["--total-steps", "40", "--hidden-dim", "16", "--num-layers", "1", "--batch-size", "16",
                                        "--eval-freq", "20", "--eval-episodes", "2", "--alpha", "0.3"],
                   "FQL", ("eval/normalized_score", "eval/bc_flow_normalized_score"), seeds=(1, 2)),
    ],
    "quick": [
        Experiment("fql_reacher_mixed", "fql", ["--env-id", "flowrl/reacher/mixed-v0", *FQL_QUICK], "FQL",
                   ("eval/normalized_score", "eval/bc_flow_normalized_score")),
        Experiment("fql_reacher_noisy", "fql", ["--env-id", "flowrl/reacher/noisy-v0", *FQL_QUICK], "FQL",
                   ("eval/normalized_score", "eval/bc_flow_normalized_score")),
    ],
    "paper": [  # paper-scale (1M updates, 512x4): a cluster job, not a CPU one
        Experiment(f"fql_{task}", "fql", ["--env-id", task, "--alpha", str(alpha)], "FQL", ("eval/success",), seeds=tuple(range(1, 9)))
        for task, alpha in [("cube-single-play-singletask-task2-v0", 300), ("scene-play-singletask-task2-v0", 300),
                            ("puzzle-3x3-play-singletask-task4-v0", 1000)]
    ],
}

METRIC_NAMES = {"eval/normalized_score": "", "eval/bc_flow_normalized_score": " (BC flow)", "eval/success": " success",
                "eval/bc_flow_success": " (BC flow) success"}


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


def submit(engine: str, jobs: list, opts) -> list:
    """jobs: [(script, args, seed, workdir)] -> list of row lists, in order."""
    if engine == "local":
        with ProcessPoolExecutor(max_workers=opts.workers) as pool:
            futures = [pool.submit(run_one, *job, opts.threads) for job in jobs]
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
            futures = [executor.submit(run_one, *job, opts.threads) for job in jobs]
        return [f.result() for f in futures]
    raise SystemExit(f"error: unknown engine {engine!r}; use local or submitit")


def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "label", "seed", "metric", "step", "value"])
        writer.writerows(rows)


def plot(path: Path, rows: list, title: str) -> None:
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
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalized score" if "normalized" in str(rows[0][3]) else rows[0][3])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(rows: list) -> dict:
    """Final-eval mean and std over seeds per (label, metric)."""
    import numpy as np

    last = defaultdict(dict)
    for _, label, seed, metric, step, value in rows:
        if step >= last[(label, metric)].get(seed, (-1, 0))[0]:
            last[(label, metric)][seed] = (step, value)
    return {key: (float(np.mean([v for _, v in d.values()])), float(np.std([v for _, v in d.values()])), len(d))
            for key, d in last.items()}


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
    opts = parser.parse_args()

    experiments = [e for e in SUITES[opts.suite] if not opts.only or e.name in opts.only]
    if not experiments:
        print(f"error: no experiment named {opts.only} in suite {opts.suite}; "
              f"known: {[e.name for e in SUITES[opts.suite]]}", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory() if opts.workdir is None else None
    opts.workdir = Path(tmp.name) if tmp else opts.workdir.resolve()
    jobs, owners = [], []
    for e in experiments:
        for seed in opts.seeds or e.seeds:
            jobs.append((e.script, e.args, seed, str(opts.workdir / e.name / f"seed{seed}")))
            owners.append((e, seed))
    t0 = time.time()
    print(f"{len(jobs)} runs, engine {opts.engine}, {opts.workers} workers x {opts.threads} threads", flush=True)
    results = submit(opts.engine, jobs, opts)
    print(f"done in {time.time() - t0:.0f} s", flush=True)

    opts.out.mkdir(parents=True, exist_ok=True)
    by_group = defaultdict(list)
    for (e, seed), scalars in zip(owners, results):
        by_group[e.group or e.name] += [(e.name, e.label, seed, m, step, v) for m, step, v in scalars if m in e.metrics]
    for group, rows in by_group.items():
        write_csv(opts.out / f"{group}.csv", rows)
        plot(opts.out / f"{group}.png", rows, group)
        for (label, metric), (mean, std, n) in sorted(summarise(rows).items()):
            print(f"{group:28s} {label + METRIC_NAMES.get(metric, ' ' + metric):30s} final {mean:7.2f} +- {std:5.2f} ({n} seeds)")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
