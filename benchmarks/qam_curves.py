"""Learning curves of qam.py: the fine-tuned policy vs the BC flow (actor_slow) trained in the same run.

Runs `qam.main` for each seed, evaluating both policies every `--eval-freq` steps (the evaluation lines
of the plain-text log are parsed), then writes docs/studies/qam_<task>_curve.csv and a PNG with the
mean +- std over seeds. Tasks:
  bandit   the two-mode one-step bandit of tests/conftest.py (built in a temporary Minari root);
  reacher  the embedded flowrl/reacher/mixed-v0 dataset.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/qam_curves.py --task bandit --seeds 1 2 3 --steps 1000 --eval-freq 100
  OMP_NUM_THREADS=1 python benchmarks/qam_curves.py --task reacher --seeds 1 2 3 --steps 3000 --eval-freq 1000 \\
      --hidden-dim 128 --num-layers 2 --inv-temp 1.0
  python benchmarks/qam_curves.py --task bandit --plot-only        # redraw the PNG from the CSV
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "docs" / "studies"


def bandit_dataset(root: Path) -> str:
    import gymnasium as gym
    import minari

    import conftest  # tests/conftest.py: the bandit's episodes

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    spec = gym.envs.registration.EnvSpec(id="TwoModeBandit-v0", entry_point="toy_envs:TwoModeBanditEnv", max_episode_steps=1)
    minari.create_dataset_from_buffers(
        dataset_id="bench/bandit-v0", buffer=conftest.bandit_buffers(2000, seed=0), env=spec, eval_env=spec,
        ref_min_score=0.0, ref_max_score=1.0, author="flowrl", author_email="bench@flowrl",
        algorithm_name="two-mode behaviour", code_permalink="tests/conftest.py", description="two-mode bandit")
    return str(root / "bench/bandit-v0")


def run(args) -> list:
    import qam

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env_id = bandit_dataset(Path(tmp) / "minari") if args.task == "bandit" else "flowrl/reacher/mixed-v0"
        for seed in args.seeds:
            qargs = replace(qam.Args(), cuda=False, env_id=env_id, seed=seed, total_steps=args.steps,
                            eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, log_freq=args.eval_freq,
                            hidden_dim=args.hidden_dim, num_layers=args.num_layers, batch_size=args.batch_size,
                            horizon_length=args.horizon_length, num_critics=args.num_critics, inv_temp=args.inv_temp)
            out, start = io.StringIO(), time.time()
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                with contextlib.redirect_stdout(out):
                    qam.main(qargs)
            finally:
                os.chdir(cwd)
            for line in out.getvalue().splitlines():
                m = re.match(r"step (\d+): (.*)", line)
                if m:
                    vals = dict(kv.split("=") for kv in m.group(2).split(", "))
                    rows.append(dict(seed=seed, step=int(m.group(1)), qam=float(vals["normalized_score"]),
                                     bc_flow=float(vals["bc_flow_normalized_score"])))
            print(f"seed {seed}: {time.time() - start:.0f}s, final {rows[-1]}", flush=True)
    return rows


def plot(task: str, rows: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r["step"] for r in rows})
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, color in (("qam", "QAM (fine field f, ODE)", "C0"), ("bc_flow", "BC flow (actor_slow, same run)", "C7")):
        vals = np.array([[r[key] for r in rows if r["step"] == s] for s in steps], dtype=float)
        mean, std = vals.mean(1), vals.std(1)
        ax.plot(steps, mean, color=color, marker="o", label=label)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalized score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"qam_{task}_curve.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["bandit", "reacher"], default="bandit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-freq", type=int, default=100)
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--horizon-length", type=int, default=1)
    parser.add_argument("--num-critics", type=int, default=2)
    parser.add_argument("--inv-temp", type=float, default=10.0)
    parser.add_argument("--out", default=None, help="CSV to write (default docs/studies/qam_<task>_curve.csv)")
    parser.add_argument("--plot-only", action="store_true", help="no training: merge --inputs (or the default CSV) and plot")
    parser.add_argument("--inputs", nargs="*", default=[], help="per-seed CSVs (from parallel runs) to merge")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / f"qam_{args.task}_curve.csv"
    if args.plot_only:
        rows = []
        for name in args.inputs or [path]:
            with open(name) as f:
                rows += [{k: (float(v) if k in ("qam", "bc_flow") else int(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    else:
        rows = run(args)
    if not args.plot_only or args.inputs:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if not args.plot_only and args.out:
            return  # a partial (per-seed) run: merge and plot later
    seeds = sorted({r["seed"] for r in rows})
    title = (f"qam.py on {args.task}: {len(seeds)} seeds, mean +- std, {args.eval_episodes} eval episodes\n"
             f"{args.hidden_dim}x{args.num_layers} MLPs, batch {args.batch_size}, inv_temp {args.inv_temp}, "
             f"H={args.horizon_length}; 2-core CPU under load")
    plot(args.task, rows, title)


if __name__ == "__main__":
    main()
