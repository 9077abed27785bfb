"""Issue 20's DF-dir ablation: DF-div, DF-dir (the alignment reward, R5) and DF-dir with beta = 0 (terminal-reward
Decision Flow) at the same eta values, on the embedded offline datasets, same seeds and budget for every method.

Why these three: the earlier DF-dir reward (potential shaping, `--dir-reward potential`) is, once the flow critic is
exact, terminal-reward DF at eta * (1 + beta) (tests/test_decision_flow.py), so "DF-dir with beta = 0 at eta = 2" is
the old default DF-dir (beta = 1, eta = 1) up to the flow critic's error. The alignment reward does not rescale eta,
so the three methods are compared at equal eta, each at every eta of the sweep.

Runs `python decision_flow.py ...` as subprocesses (at most --jobs at a time), appends one CSV row per finished run
(so an interrupted sweep keeps what it finished) with the final evaluation and the run's CPU time (user + sys),
and plots the final score against eta, one panel per dataset.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/decision_flow_ablation.py                    # the sweep as documented
  python benchmarks/decision_flow_ablation.py --plot-only                          # re-plot the committed CSV
  OMP_NUM_THREADS=1 python benchmarks/decision_flow_ablation.py --steps 1500 --tag _1500 \
      --blocks flowrl/reacher/mixed-v0:1 --methods "DF-dir (align)" "DF-dir beta=0"     # the longer check
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "studies"
CSV = RESULTS / "decision_flow_ablation.csv"
PNG = RESULTS / "decision_flow_ablation.png"
METHODS = {  # label -> decision_flow.py flags
    "DF-div": ["--variant", "div"],
    "DF-dir (align)": ["--variant", "dir", "--dir-reward", "align", "--no-eval-bc-flow"],
    "DF-dir beta=0": ["--variant", "dir", "--beta", "0", "--no-eval-bc-flow"],
}
DATASETS = {"flowrl/reacher/mixed-v0": "normalized_score", "flowrl/pointmaze/wander-v0": "success"}
EVAL_LINE = re.compile(r"^step (\d+): (.*)$")
FIELDS = ["env_id", "method", "eta", "seed", "step", "normalized_score", "success", "bc_flow_normalized_score",
          "bc_flow_success", "cpu_s", "wall_s"]


def final_eval(stdout: str) -> dict:
    rows = [m for m in (EVAL_LINE.match(line.strip()) for line in stdout.splitlines()) if m and "=" in m.group(2)]
    if not rows:
        return {}
    values = dict(kv.split("=") for kv in rows[-1].group(2).split(", "))
    return {"step": int(rows[-1].group(1)), **{k: float(v) for k, v in values.items()}}


def done_keys() -> set:
    if not CSV.exists():
        return set()
    with open(CSV) as f:
        return {(r["env_id"], r["method"], float(r["eta"]), int(r["seed"])) for r in csv.DictReader(f)}


def run_all(args) -> None:
    common = ["--no-cuda", "--total-steps", str(args.steps), "--hidden-dim", str(args.hidden_dim), "--num-layers",
              str(args.num_layers), "--batch-size", str(args.batch_size), "--eval-freq", str(args.steps),
              "--log-freq", str(args.steps), "--eval-episodes", str(args.eval_episodes), "--eval-envs",
              str(args.eval_episodes), "--flow-steps", "10"]
    # priority order: each (dataset, eta) block holds every method and seed, so a cut sweep stays a fair comparison
    jobs = [(env_id, eta, label, seed) for env_id, eta in args.blocks for seed in args.seeds for label in args.methods]
    finished = done_keys()
    jobs = [j for j in jobs if (j[0], j[2], j[1], j[3]) not in finished]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)  # runs/ of the subprocesses go here, out of the repo
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not CSV.exists():
        with open(CSV, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writeheader()
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < args.jobs:
            env_id, eta, label, seed = pending.pop(0)
            exp = f"ablation{args.tag}_{label.split()[0].lower().replace('-', '_')}_{'b0' if 'beta=0' in label else 'x'}_eta{eta:g}"
            cmd = [sys.executable, str(ROOT / "decision_flow.py"), *common, "--env-id", env_id, "--seed", str(seed),
                   "--eta", str(eta), "--exp-name", exp, *METHODS[label]]
            log = open(workdir / f"{exp}_{env_id.replace('/', '_')}_{seed}.log", "w+")
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
            running.append(((env_id, eta, label, seed), proc, log, time.time()))
        time.sleep(2)
        for item in list(running):
            (env_id, eta, label, seed), proc, log, start = item
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            running.remove(item)
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.seek(0)
            out = log.read()
            log.close()
            if proc.returncode != 0:
                print(f"{env_id} {label} eta {eta} seed {seed} failed:\n{out[-2000:]}", file=sys.stderr, flush=True)
                continue
            result = final_eval(out)
            row = {"env_id": env_id, "method": label, "eta": eta, "seed": seed, "step": result.get("step"),
                   "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(time.time() - start, 1)}
            for key in FIELDS[5:9]:
                row[key] = result.get(key, "")
            with open(CSV, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
            print(f"{env_id} {label} eta {eta} seed {seed}: {DATASETS[env_id]} {row[DATASETS[env_id]]}, "
                  f"cpu {row['cpu_s']} s, wall {row['wall_s']} s", flush=True)


def summary(rows: list) -> list:
    """(env_id, method, eta, n, mean, std) of the headline metric over seeds, and the in-run BC flow of DF-div."""
    import numpy as np

    out = []
    for env_id, metric in DATASETS.items():
        for label in [*METHODS, "BC flow (DF-div runs)"]:
            key, method = (f"bc_flow_{metric}", "DF-div") if label.startswith("BC") else (metric, label)
            for eta in sorted({float(r["eta"]) for r in rows if r["env_id"] == env_id}):
                vals = [float(r[key]) for r in rows if r["env_id"] == env_id and r["method"] == method
                        and float(r["eta"]) == eta and r[key] != ""]
                if vals:
                    out.append((env_id, label, eta, len(vals), float(np.mean(vals)), float(np.std(vals))))
    return out


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    with open(CSV) as f:
        rows = list(csv.DictReader(f))
    stats = summary(rows)
    envs = [e for e in DATASETS if any(s[0] == e for s in stats)]
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4.0), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        for label in [*METHODS, "BC flow (DF-div runs)"]:
            sel = [s for s in stats if s[0] == env_id and s[1] == label]
            if not sel:
                continue
            style = dict(color="gray", linestyle="--") if label.startswith("BC") else {}
            etas, means, stds = [s[2] for s in sel], [s[4] for s in sel], [s[5] for s in sel]
            ax.errorbar(etas, means, yerr=stds, marker="o", capsize=3, label=f"{label} (n={sel[0][3]})", **style)
        ax.set_xscale("log")
        ax.set_xlim(0.8, 6.0)
        ax.set_xticks([1, 2, 5], ["1", "2", "5"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("eta (policy-improvement weight)")
        ax.set_ylabel(DATASETS[env_id] + (" (x100)" if DATASETS[env_id] == "normalized_score" else ""))
        ax.set_title(env_id, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"decision_flow.py, {args.steps} updates, {args.hidden_dim}x{args.num_layers} MLPs, batch "
                 f"{args.batch_size}, 10 flow steps; mean +- std over seeds, {args.eval_episodes} eval episodes each; "
                 "2-core CPU (shared)", fontsize=8)
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)
    for s in stats:
        print(f"{s[0]:28s} {s[1]:24s} eta {s[2]:g}: {s[4]:.3f} +- {s[5]:.3f} (n={s[3]})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", type=lambda s: (s.split(":")[0], float(s.split(":")[1])),
                        default=[("flowrl/reacher/mixed-v0", 1.0), ("flowrl/reacher/mixed-v0", 2.0),
                                 ("flowrl/pointmaze/wander-v0", 1.0), ("flowrl/reacher/mixed-v0", 5.0),
                                 ("flowrl/pointmaze/wander-v0", 2.0), ("flowrl/pointmaze/wander-v0", 5.0)],
                        help="env_id:eta blocks in the order they run (each: every method and seed)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--workdir", default="/tmp/decision_flow_ablation", help="where the runs/ folders and logs go")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--tag", default="", help="suffix of the CSV / PNG names (e.g. _1500 for a longer budget)")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    CSV = RESULTS / f"decision_flow_ablation{args.tag}.csv"
    PNG = RESULTS / f"decision_flow_ablation{args.tag}.png"
    if not args.plot_only:
        run_all(args)
    plot(args)
