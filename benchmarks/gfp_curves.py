"""Learning curves of GFP vs the same code with eta = 0 (unweighted BC flow, FQL-like actor) on the embedded Reacher data.

For each seed, two runs of gfp.main with identical settings except --eta: GFP's default 1e-3 and 0.
Every `--eval-freq` updates both the one-step actor and the multi-step flow are evaluated on
`--eval-episodes` episodes; the curves are read back from the runs' tensorboard files.
Writes docs/studies/gfp_reacher_curves.csv and .png (mean +- std over seeds).

  OMP_NUM_THREADS=1 python benchmarks/gfp_curves.py                 # 3 seeds x 2 configs, ~1 h on a loaded 2-core CPU
  python benchmarks/gfp_curves.py --plot-only                       # re-plot from the csv
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "studies"


@dataclass
class Options:
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds (each runs both configurations)"""
    total_steps: int = 5000
    """gradient steps per run"""
    eval_freq: int = 1000
    """evaluate every this many steps"""
    eval_episodes: int = 100
    """episodes per evaluation"""
    hidden_dim: int = 128
    """MLP width (paper: 512)"""
    num_layers: int = 2
    """MLP depth (paper: 4)"""
    alpha: float = 0.3
    """distillation weight (FQL's best value on this dataset)"""
    env_id: str = "flowrl/reacher/mixed-v0"
    """dataset"""
    keep_runs: str = ""
    """keep the runs/ folders here (default: a temporary folder, deleted)"""
    plot_only: bool = False
    """only re-plot from docs/studies/gfp_reacher_curves*.csv (all such files are merged)"""
    csv_name: str = "gfp_reacher_curves.csv"
    """csv written under docs/studies (give seeds run in parallel processes their own file)"""


CONFIGS = {"GFP (eta=1e-3)": 1e-3, "eta=0 (BC flow, FQL-like actor)": 0.0}
POLICIES = {"actor": "one-step actor", "flow": "multi-step flow"}


def run_all(opt: Options) -> list[dict]:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import gfp

    torch.set_num_threads(1)
    rows = []
    base = Path(opt.keep_runs) if opt.keep_runs else Path(tempfile.mkdtemp())
    base.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    for seed in opt.seeds:
        for name, eta in CONFIGS.items():
            folder = base / f"eta{eta}_seed{seed}"
            folder.mkdir(exist_ok=True)
            os.chdir(folder)
            t0 = time.time()
            try:
                gfp.main(gfp.Args(env_id=opt.env_id, seed=seed, eta=eta, alpha=opt.alpha, cuda=False, hidden_dim=opt.hidden_dim,
                                  num_layers=opt.num_layers, total_steps=opt.total_steps, eval_freq=opt.eval_freq,
                                  eval_episodes=opt.eval_episodes, log_freq=opt.eval_freq // 4))
            finally:
                os.chdir(cwd)
            wall = time.time() - t0
            run_dir = max(folder.glob("runs/*"), key=lambda p: p.stat().st_mtime)
            events = EventAccumulator(str(run_dir)).Reload()
            for policy in POLICIES:
                for event in events.Scalars(f"eval/{policy}_normalized_score"):
                    rows.append(dict(config=name, eta=eta, seed=seed, policy=policy, step=event.step,
                                     normalized_score=round(event.value, 3), run_wall_s=round(wall, 1)))
            print(f"seed {seed} {name}: {wall:.0f} s, final " + ", ".join(
                f"{r['policy']}={r['normalized_score']:.1f}" for r in rows[-2 * len(events.Scalars('eval/actor_normalized_score')):]
                if r["step"] == opt.total_steps), flush=True)
            write_csv(rows, opt.csv_name)
    return rows


def write_csv(rows: list[dict], name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], opt: Options) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {("GFP (eta=1e-3)", "actor"): ("C0", "-"), ("GFP (eta=1e-3)", "flow"): ("C0", "--"),
              ("eta=0 (BC flow, FQL-like actor)", "actor"): ("C1", "-"), ("eta=0 (BC flow, FQL-like actor)", "flow"): ("C1", "--")}
    summary = []
    for (config, policy), (color, ls) in styles.items():
        sel = [r for r in rows if r["config"] == config and r["policy"] == policy]
        if not sel:
            continue
        steps = sorted({int(r["step"]) for r in sel})
        seeds = sorted({r["seed"] for r in sel})
        values = np.array([[float(r["normalized_score"]) for s in steps for r in sel if int(r["step"]) == s and r["seed"] == seed]
                           for seed in seeds])
        mean, std = values.mean(0), values.std(0)
        label = f"{config}: {POLICIES[policy]}"
        ax.plot(steps, mean, color=color, ls=ls, marker="o", ms=3, label=label)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
        summary.append(f"{label}: {mean[-1]:.1f} +- {std[-1]:.1f} ({len(seeds)} seeds)")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalized score (x100)")
    ax.set_title(f"{opt.env_id}: GFP vs eta = 0, {opt.hidden_dim}x{opt.num_layers} MLPs, mean +- std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "gfp_reacher_curves.png", dpi=120)
    print("\n".join(summary))


def main(opt: Options) -> None:
    if opt.plot_only:
        rows = []
        for path in sorted(OUT.glob("gfp_reacher_curves*.csv")):
            with open(path) as f:
                rows += list(csv.DictReader(f))
        for r in rows:
            r["seed"] = int(r["seed"])
    else:
        rows = run_all(opt)
    plot(rows, opt)


if __name__ == "__main__":
    main(tyro.cli(Options))
