"""Histogram of GFP's guidance weights w = sigmoid((lambda/eta)(Qbar(s,a) - Qbar(s,a_actor))) over training.

gfp.py logs the weights of one batch to tensorboard (`guidance/weights`) every --log-freq steps.
This script makes a short run (by default on the two-mode bandit of tests/conftest.py, built in a
temporary Minari folder) or reads an existing run (`--run-dir`), and draws the histograms as a
heat map over training plus a few snapshots. Writes docs/studies/gfp_guidance_hist_<name>.png.

  OMP_NUM_THREADS=1 python benchmarks/gfp_guidance_hist.py                       # bandit, ~1 min on a loaded CPU
  python benchmarks/gfp_guidance_hist.py --run-dir runs/<a gfp run> --name reacher # any finished run
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # toy_envs (the bandit's env) and the bandit's data generator
OUT = ROOT / "docs" / "studies"
BINS = 40  # gfp.py logs the softmax guidance with 40 equal bins on [0, 1]


@dataclass
class Options:
    run_dir: Optional[str] = None
    """plot this finished gfp run instead of making one"""
    name: str = "bandit"
    """suffix of the output file"""
    total_steps: int = 3000
    """steps of the bandit run"""
    log_freq: int = 100
    """histogram every this many steps (bandit run)"""
    eta: float = 1e-3
    """guidance temperature of the bandit run (the paper's default)"""
    alpha: float = 0.3
    """distillation weight of the bandit run"""
    seed: int = 1
    """seed of the bandit run"""


def bandit_run(opt: Options) -> Path:
    import gymnasium as gym
    import minari
    import torch

    from conftest import bandit_buffers

    import gfp

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    os.environ["MINARI_DATASETS_PATH"] = str(work / "minari")
    spec = gym.envs.registration.EnvSpec(id="TwoModeBandit-v0", entry_point="toy_envs:TwoModeBanditEnv", max_episode_steps=1)
    minari.create_dataset_from_buffers(dataset_id="bench/bandit-v0", buffer=bandit_buffers(2000, seed=0), env=spec, eval_env=spec,
                                       ref_min_score=0.0, ref_max_score=1.0, author="flowrl", author_email="bench@flowrl",
                                       algorithm_name="two-mode behaviour", code_permalink="tests/conftest.py",
                                       description="two-mode bandit, good mode (.5,.5) reward 1, bad mode (-.5,-.5) reward .5")
    os.chdir(work)
    gfp.main(gfp.Args(env_id=str(work / "minari" / "bench/bandit-v0"), cuda=False, hidden_dim=128, num_layers=2, batch_size=256,
                      total_steps=opt.total_steps, eval_freq=opt.total_steps, eval_episodes=100, log_freq=opt.log_freq,
                      eta=opt.eta, alpha=opt.alpha, seed=opt.seed))
    return next((work / "runs").glob("*"))


def read_histograms(run_dir: Path) -> tuple:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0}).Reload()
    steps, counts, means = [], [], []
    for event in events.Histograms("guidance/weights"):
        h = event.histogram_value
        row = np.zeros(BINS)
        for limit, count in zip(h.bucket_limit, h.bucket):  # bucket i covers (limit_{i-1}, limit_i]
            row[int(np.clip(round(limit * BINS) - 1, 0, BINS - 1))] += count
        steps.append(event.step)
        counts.append(row / max(h.num, 1))
        means.append(h.sum / max(h.num, 1))
    return np.array(steps), np.array(counts), np.array(means)


def plot(steps, counts, means, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    edges = np.linspace(0, 1, BINS + 1)
    dstep = steps[1] - steps[0] if len(steps) > 1 else 1
    mesh = ax0.pcolormesh(np.append(steps - dstep / 2, steps[-1] + dstep / 2), edges, counts.T + 1e-4,
                          norm=LogNorm(vmin=1e-3, vmax=1), cmap="viridis", shading="flat")
    ax0.plot(steps, means, color="w", lw=1.2, label="mean weight")
    ax0.set_xlabel("gradient steps")
    ax0.set_ylabel("guidance weight w")
    ax0.legend(loc="upper right", fontsize=8)
    fig.colorbar(mesh, ax=ax0, label="fraction of the batch (log)")
    centers = 0.5 * (edges[1:] + edges[:-1])
    picks = sorted({0, len(steps) // 6, len(steps) // 3, len(steps) - 1})
    for i, k in enumerate(picks):
        ax1.step(centers, counts[k] + 1e-4, where="mid", color=plt.cm.plasma(i / max(len(picks) - 1, 1)), label=f"step {steps[k]}")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-3, 1.1)
    ax1.set_xlabel("guidance weight w")
    ax1.set_ylabel("fraction of the batch")
    ax1.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(opt: Options) -> None:
    run_dir = Path(opt.run_dir).resolve() if opt.run_dir else bandit_run(opt)
    steps, counts, means = read_histograms(run_dir)
    title = (f"GFP guidance weights over training ({opt.name}; one batch per point; "
             f"{'eta=%g' % opt.eta if not opt.run_dir else run_dir.name})")
    OUT.mkdir(parents=True, exist_ok=True)
    plot(steps, counts, means, title, OUT / f"gfp_guidance_hist_{opt.name}.png")
    share = counts[:, BINS // 2:].sum(1)
    print("step, mean weight, share above 0.5:")
    for k in sorted({0, len(steps) // 4, len(steps) // 2, len(steps) - 1}):
        print(f"  {steps[k]}: {means[k]:.4f}, {share[k]:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Options))
