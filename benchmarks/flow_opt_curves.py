"""Evaluation table of flow_opt.py over seeds: trains the small CPU configuration (N = 4 and 8) once per seed, then
evaluates each seed's checkpoint with the harness benchmarks/flow_opt_eval.py (ablations, repeated timings, CPU
time, certificate) and writes mean +- std per robot count and a figure.

  OMP_NUM_THREADS=1 python benchmarks/flow_opt_curves.py --seeds 1 2 3 --eval "--robots 8 --scenarios 100 --repeats 3"
writes docs/studies/flow_opt_eval.csv (mean and std), flow_opt_eval_seeds.csv (raw rows), flow_opt_eval.png and
flow_opt_trajectories.png (the first seed's trajectories). Run output goes to --workdir (default /tmp/flow_opt_curves), not the repo.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "studies"
COLUMNS = ("success", "success_at_instants", "collision_before_sf", "collision_after_sf", "smoothness_ratio_vs_opt",
           "sf_iters", "t_sample_s", "t_init_s", "t_sf_s", "t_flowopt_s", "opt_success", "opt_iters", "t_opt_s",
           "time_ratio_opt_over_flowopt", "t_median_flowopt_s", "t_median_opt_s", "median_time_ratio",
           "sf_zero_init_success", "sf_zero_init_iters", "sf_zero_init_smoothness_ratio_vs_opt", "t_sf_zero_init_s",
           "t_median_sf_zero_init_s", "line_sf_success", "line_sf_smoothness_ratio_vs_opt", "t_line_sf_s",
           "t_median_line_sf_s", "cpu_flowopt_s", "cpu_opt_s", "cpu_time_ratio", "solvable", "success_on_solvable",
           "opt_success_on_solvable")


def evaluation_csv(run_dir: Path) -> list:
    """The harness's table of a seed's run (eval/evaluation.csv; else the training run's own evaluation.csv)."""
    found = sorted(run_dir.glob("eval/evaluation.csv")) or sorted(run_dir.glob("runs/*/evaluation.csv"))
    return found[-1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--workdir", default="/tmp/flow_opt_curves")
    parser.add_argument("--extra", default="", help="extra flow_opt.py (training) arguments, one string")
    parser.add_argument("--eval", default="--robots 4 8 16 32 --scenarios 50", help="flow_opt_eval.py arguments, one string")
    parser.add_argument("--collect-only", action="store_true", help="only summarise the runs already in --workdir")
    cli = parser.parse_args()
    work = Path(cli.workdir)
    for seed in cli.seeds:
        run_dir = work / f"seed{seed}"
        if cli.collect_only or evaluation_csv(run_dir):
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        train = [sys.executable, str(ROOT / "flow_opt.py"), "--no-cuda", "--threads", "1", "--seed", str(seed),
                 "--eval-robots", "4", "--eval-scenarios", "1", *shlex.split(cli.extra)]
        with open(run_dir / "log.txt", "w") as log:
            subprocess.run(train, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, check=True)
            ckpt = sorted(run_dir.glob("runs/*/flow_opt.pt"))[-1]
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flow_opt_eval.py"), "--checkpoint", str(ckpt),
                            "--out", str(run_dir / "eval"), *shlex.split(cli.eval)], cwd=run_dir, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    tables = []
    for seed in cli.seeds:
        found = evaluation_csv(work / f"seed{seed}")
        if found:
            with open(found[-1]) as f:
                tables.append(list(csv.DictReader(f)))
    if not tables:
        sys.exit("no evaluation.csv found")
    robots = [int(r["robots"]) for r in tables[0]]
    summary = []
    for i, n in enumerate(robots):
        row = {"robots": n, "seeds": len(tables), "scenarios": tables[0][i]["scenarios"], "samples": tables[0][i]["samples"]}
        for col in COLUMNS:
            values = np.array([float(t[i].get(col, "nan")) for t in tables])
            row[f"{col}_mean"], row[f"{col}_std"] = values.mean(), values.std()
        summary.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "flow_opt_eval_seeds.csv", "w", newline="") as f:  # the raw rows, one per seed and robot count
        writer = csv.DictWriter(f, fieldnames=["seed", *tables[0][0]])
        writer.writeheader()
        writer.writerows({"seed": seed, **row} for seed, table in zip(cli.seeds, tables) for row in table)
    with open(RESULTS / "flow_opt_eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    first = sorted((work / f"seed{cli.seeds[0]}").glob("eval/trajectories.png"))
    if first:
        shutil.copy(first[-1], RESULTS / "flow_opt_trajectories.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    get = lambda col: (np.array([r[f"{col}_mean"] for r in summary]), np.array([r[f"{col}_std"] for r in summary]))  # noqa: E731
    for col, label in (("success", "Flow-Opt success"), ("opt_success", "optimizer success"),
                       ("collision_before_sf", "collisions before SF"), ("collision_after_sf", "collisions after SF")):
        m, s = get(col)
        axes[0].errorbar(robots, m, s, marker="o", capsize=3, label=label)
    axes[0].set_ylabel("fraction of scenarios")
    axes[0].legend(fontsize=7)
    for col, label in (("t_flowopt_s", "Flow-Opt (sample+init+SF)"), ("t_opt_s", "centralized optimizer")):
        m, s = get(col)
        axes[1].errorbar(robots, m, s, marker="o", capsize=3, label=label)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("batch wall-clock [s]")
    axes[1].legend(fontsize=7)
    for col, label in (("time_ratio_opt_over_flowopt", "time ratio opt / Flow-Opt"), ("smoothness_ratio_vs_opt", "smoothness ratio Flow-Opt / opt")):
        m, s = get(col)
        axes[2].errorbar(robots, m, s, marker="o", capsize=3, label=label)
    axes[2].axhline(1.0, color="0.5", lw=0.8)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("robots N")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"flow_opt.py, {len(tables)} seed(s), {len(summary)} robot count(s), CPU, single thread")
    fig.tight_layout()
    fig.savefig(RESULTS / "flow_opt_eval.png", dpi=110)
    print(open(RESULTS / "flow_opt_eval.csv").read())


if __name__ == "__main__":
    main()
