"""Learning curves of decision_flow.py (both variants) beside fql.py on the same embedded dataset, budget and seeds.

Runs `python decision_flow.py --variant dir|div ...` and `python fql.py ...` as subprocesses (the same network
size, batch, gradient steps, flow steps, evaluation episodes and seeds for all), parses their evaluation lines,
writes docs/studies/decision_flow_curves.csv and plots docs/studies/decision_flow_curves.png. Each run also
evaluates its own in-run BC flow, plotted as the behaviour-cloning reference.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/decision_flow_curves.py                 # run + plot (defaults below)
  python benchmarks/decision_flow_curves.py --plot-only                       # re-plot the committed CSV
  python benchmarks/decision_flow_curves.py --from-runs                       # CSV from the runs' tensorboard logs
                                                                              # (also for unfinished runs)
  python benchmarks/decision_flow_curves.py --methods DF-dir DF-div --steps 1000 --eval-freq 500 \
      --df-flags="--eta 5" --tag _eta5 --workdir /tmp/df_eta5              # the eta sensitivity run
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
CSV = RESULTS / "decision_flow_curves.csv"
PNG = RESULTS / "decision_flow_curves.png"
METHODS = {  # label -> (script, algorithm-specific flags)
    "DF-dir": ("decision_flow.py", ["--variant", "dir"]),
    "DF-div": ("decision_flow.py", ["--variant", "div"]),
    "FQL": ("fql.py", ["--alpha", "0.3"]),
}
EVAL_LINE = re.compile(r"^step (\d+): (.*)$")


def parse(stdout: str) -> list:
    rows = []
    for line in stdout.splitlines():
        m = EVAL_LINE.match(line.strip())
        if m and "=" in m.group(2) and "/" not in m.group(1):
            values = dict(kv.split("=") for kv in m.group(2).split(", "))
            rows.append((int(m.group(1)), {k: float(v) for k, v in values.items()}))
    return rows


def run_all(args) -> None:
    common = ["--no-cuda", "--env-id", args.env_id, "--total-steps", str(args.steps), "--hidden-dim", str(args.hidden_dim),
              "--num-layers", str(args.num_layers), "--batch-size", str(args.batch_size), "--eval-freq", str(args.eval_freq),
              "--eval-episodes", str(args.eval_episodes), "--log-freq", str(args.eval_freq), "--flow-steps", "10"]
    jobs = [(label, seed) for seed in args.seeds for label in args.methods]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)  # runs/ of the subprocesses go here, out of the repo
    pending, running, rows = list(jobs), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            label, seed = pending.pop(0)
            script, flags = METHODS[label]
            exp_name = f"{Path(script).stem}_{label.lower().replace('-', '_')}{args.tag}"  # distinct run dirs per method
            extra = args.df_flags.split() if script == "decision_flow.py" else []
            cmd = [sys.executable, str(ROOT / script), *common, "--seed", str(seed), "--exp-name", exp_name, *flags, *extra]
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((label, seed, proc, time.time()))
        time.sleep(2)
        for item in list(running):
            label, seed, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = proc.stdout.read()
            wall = time.time() - start
            if proc.returncode != 0:
                print(f"{label} seed {seed} failed:\n{out[-2000:]}", file=sys.stderr)
                continue
            for step, values in parse(out):
                rows.append({"method": label, "seed": seed, "step": step, "normalized_score": values["normalized_score"],
                             "bc_flow_normalized_score": values.get("bc_flow_normalized_score", float("nan")),
                             "wall_s": round(wall, 1)})
            print(f"{label} seed {seed}: done in {wall:.0f} s, final {rows[-1]['normalized_score']:.1f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["method"], r["seed"], r["step"])))


def collect_runs(workdir: str) -> None:
    """Build the CSV from the tensorboard logs under <workdir>/runs (evaluations logged so far)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    # one event file per run: two runs started in the same second share a run directory
    for run in sorted(Path(workdir, "runs").glob("*/events.out.tfevents.*")):
        env_part, exp, seed, _ = run.parent.name.rsplit("__", 3)
        acc = EventAccumulator(str(run))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        if "eval/normalized_score" not in tags:
            continue
        hparams = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
        label = "FQL" if exp.startswith("fql") else ("DF-div" if "|variant|div|" in hparams else "DF-dir")
        bc = {e.step: e.value for e in acc.Scalars("eval/bc_flow_normalized_score")} if "eval/bc_flow_normalized_score" in tags else {}
        for e in acc.Scalars("eval/normalized_score"):
            rows.append({"method": label, "seed": int(seed), "step": e.step, "normalized_score": round(e.value, 3),
                         "bc_flow_normalized_score": round(bc.get(e.step, float("nan")), 3), "wall_s": ""})
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["method"], r["seed"], r["step"])))


def plot(title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(CSV) as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    summary = []
    for label in [m for m in METHODS if any(r["method"] == m for r in rows)] + ["BC flow (all runs)"]:
        key = "bc_flow_normalized_score" if label.startswith("BC") else "normalized_score"
        sel = [r for r in rows if (label.startswith("BC") or r["method"] == label) and r[key] not in ("", "nan")]
        steps = sorted({int(r["step"]) for r in sel})
        per_step = [[float(r[key]) for r in sel if int(r["step"]) == s] for s in steps]
        mean, std = np.array([np.mean(v) for v in per_step]), np.array([np.std(v) for v in per_step])
        style = dict(color="gray", linestyle="--") if label.startswith("BC") else {}
        line, = ax.plot(steps, mean, marker="o", label=f"{label} (n={len(per_step[-1])})", **style)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())
        summary.append(f"{label}: {mean[-1]:.1f} +- {std[-1]:.1f} at step {steps[-1]}")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalized score (x100)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)
    print("\n".join(summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="flowrl/reacher/mixed-v0")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-freq", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=3, help="runs in parallel")
    parser.add_argument("--workdir", default="/tmp/decision_flow_curves", help="where the runs/ folders go")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--from-runs", action="store_true", help="collect the CSV from <workdir>/runs, then plot")
    parser.add_argument("--df-flags", default="", help="extra flags for decision_flow.py, e.g. '--eta 5'")
    parser.add_argument("--tag", default="", help="suffix of the CSV / PNG names and run names")
    args = parser.parse_args()
    CSV = RESULTS / f"decision_flow_curves{args.tag}.csv"
    PNG = RESULTS / f"decision_flow_curves{args.tag}.png"
    if args.from_runs:
        collect_runs(args.workdir)
    elif not args.plot_only:
        run_all(args)
    plot(f"{args.env_id}{' ' + args.df_flags if args.df_flags else ''}: {args.hidden_dim}x{args.num_layers} MLPs, batch {args.batch_size}, 10 flow steps, "
         f"mean +- std over seeds\n2-core AMD EPYC CPU (shared, under load), no GPU")
