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
  python benchmarks/run.py --suite quick --only qam_reacher_mixed --seeds 1 --out /tmp/x \
      --override --total-steps 40 --eval-freq 20 --eval-episodes 2   # shrink a suite to check it runs
Every curve also gets a row in <out>/<suite>_summary.md (final eval, mean +- std over seeds).
The quick suite: FQL, QAM, GFP and DF-dir on flowrl/reacher/mixed-v0 and flowrl/pointmaze/wander-v0 (one plot per
dataset, same budget), latent SFP and the flow-matching chunk policy on flowrl/pointmaze/demos-v0 (one plot), and SWFP
on flowrl/pointmaze/demos-v0 (own plot: its x axis is online env steps after BC pretraining); 33 runs with 3 seeds.
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


# The quick suite's offline methods share one budget (10k steps, 256x3, eval every 2000 on 100 episodes, 3 seeds) and
# use each script's documented Reacher hyper-parameters (docs/<script>.md); the same flags on PointMaze wander.
QUICK_SIZE = ["--total-steps", "10000", "--hidden-dim", "256", "--num-layers", "3", "--eval-freq", "2000",
              "--eval-episodes", "100"]
FQL_QUICK = ["--alpha", "0.3", *QUICK_SIZE]  # docs/fql.md

QAM_QUICK = ["--inv-temp", "1", "--horizon-length", "1", *QUICK_SIZE]  # docs/qam.md: Reacher H = 1, inv_temp 1
GFP_QUICK = ["--alpha", "0.3", "--eta", "1e-3", *QUICK_SIZE]  # docs/gfp.md: alpha 0.3, default eta
DF_QUICK = ["--variant", "dir", "--eta", "1.0", *QUICK_SIZE]  # docs/decision_flow.md: DF-dir defaults
# PointMaze demos: the budgets of docs/swfp.md (online: env steps on the x axis) and docs/streaming_flow.md
SWFP_QUICK = ["--pretrain-steps", "5000", "--critic-warmup-steps", "2000", "--total-timesteps", "1000", "--hidden-dim", "128",
              "--num-layers", "2", "--eval-freq", "500", "--eval-episodes", "100"]
SFP_QUICK = ["--total-steps", "2000", "--batch-size", "256", "--hidden-dim", "128", "--num-blocks", "2", "--learning-rate", "1e-3",
             "--lr-warmup-steps", "100", "--eval-freq", "500", "--eval-episodes", "100"]
OFFLINE_QUICK = [  # (script, label, args, metrics): one curve set per dataset, offline methods in one plot per dataset
    ("fql", "FQL", FQL_QUICK, ("eval/normalized_score", "eval/bc_flow_normalized_score")),
    ("qam", "QAM", QAM_QUICK, ("eval/normalized_score", "eval/bc_flow_normalized_score")),
    ("gfp", "GFP", GFP_QUICK, ("eval/normalized_score", "eval/flow_normalized_score")),
    ("decision_flow", "DF-dir", DF_QUICK, ("eval/normalized_score", "eval/bc_flow_normalized_score")),
]

SUITES = {
    "smoke": [
        Experiment("smoke_fql", "fql", ["--total-steps", "40", "--hidden-dim", "16", "--num-layers", "1", "--batch-size", "16",
                                        "--eval-freq", "20", "--eval-episodes", "2", "--alpha", "0.3"],
                   "FQL", ("eval/normalized_score", "eval/bc_flow_normalized_score"), seeds=(1, 2)),
    ],
    "quick": [
        *[Experiment(f"{script}_{name}", script, ["--env-id", env_id, *args], label, metrics, group=f"quick_{name}")
          for name, env_id in [("reacher_mixed", "flowrl/reacher/mixed-v0"), ("pointmaze_wander", "flowrl/pointmaze/wander-v0")]
          for script, label, args, metrics in OFFLINE_QUICK],
        Experiment("swfp_pointmaze_demos", "swfp", ["--env-id", "flowrl/pointmaze/demos-v0", *SWFP_QUICK], "SWFP",
                   ("eval/success",), group="quick_pointmaze_demos_online"),
        Experiment("streaming_flow_pointmaze_demos", "streaming_flow", ["--env-id", "flowrl/pointmaze/demos-v0", *SFP_QUICK],
                   "SFP (latent)", ("eval/success",), group="quick_pointmaze_demos"),
        Experiment("streaming_flow_chunk_pointmaze_demos", "streaming_flow",
                   ["--env-id", "flowrl/pointmaze/demos-v0", *SFP_QUICK, "--policy", "chunk"], "FM chunk policy",
                   ("eval/success",), group="quick_pointmaze_demos"),
    ],
    "paper": [  # paper-scale (1M updates, 512x4): a cluster job, not a CPU one
        Experiment(f"fql_{task}", "fql", ["--env-id", task, "--alpha", str(alpha)], "FQL", ("eval/success",), seeds=tuple(range(1, 9)))
        for task, alpha in [("cube-single-play-singletask-task2-v0", 300), ("scene-play-singletask-task2-v0", 300),
                            ("puzzle-3x3-play-singletask-task4-v0", 1000)]
    ],
}

METRIC_NAMES = {"eval/normalized_score": "", "eval/bc_flow_normalized_score": " (BC flow)", "eval/success": " success",
                "eval/bc_flow_success": " (BC flow) success", "eval/flow_normalized_score": " (VaBC flow)"}
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
    """Final-eval mean, std, number of seeds and (largest) final step per (label, metric)."""
    import numpy as np

    last = defaultdict(dict)
    for _, label, seed, metric, step, value in rows:
        if step >= last[(label, metric)].get(seed, (-1, 0))[0]:
            last[(label, metric)][seed] = (step, value)
    return {key: (float(np.mean([v for _, v in d.values()])), float(np.std([v for _, v in d.values()])), len(d),
                  max(s for s, _ in d.values())) for key, d in last.items()}


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
            jobs.append((e.script, with_override(e.script, e.args, opts.override), seed, str(opts.workdir / e.name / f"seed{seed}")))
            owners.append((e, seed))
    t0 = time.time()
    print(f"{len(jobs)} runs, engine {opts.engine}, {opts.workers} workers x {opts.threads} threads", flush=True)
    results = submit(opts.engine, jobs, opts)
    print(f"done in {time.time() - t0:.0f} s", flush=True)

    opts.out.mkdir(parents=True, exist_ok=True)
    by_group = defaultdict(list)
    for (e, seed), scalars in zip(owners, results):
        by_group[e.group or e.name] += [(e.name, e.label, seed, m, step, v) for m, step, v in scalars if m in e.metrics]
    table = ["| plot (csv/png) | curve | final step | final mean ± std | seeds |", "|---|---|---|---|---|"]
    for group, rows in by_group.items():
        write_csv(opts.out / f"{group}.csv", rows)
        plot(opts.out / f"{group}.png", rows, group)
        for (label, metric), (mean, std, n, step) in sorted(summarise(rows).items()):
            curve = label + METRIC_NAMES.get(metric, " " + metric)
            print(f"{group:28s} {curve:30s} final {mean:7.2f} +- {std:5.2f} ({n} seeds)")
            table.append(f"| {group} | {curve} | {step} | {mean:.2f} ± {std:.2f} | {n} |")
    summary = opts.out / f"{opts.suite}_summary.md"
    command = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    summary.write_text(f"# Suite `{opts.suite}`: final evaluation per curve\n\nMade by `{command}` "
                       f"({len(jobs)} runs, {time.time() - t0:.0f} s). Mean ± std over seeds of each seed's last "
                       f"evaluation (normalized scores x100, success rates in [0, 1]).\n\n" + "\n".join(table) + "\n", encoding="utf-8")
    print(f"summary: {summary}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
