"""Learning curves of streaming_flow.py on the embedded PointMaze demos, and the toy figures.

  python benchmarks/streaming_flow_curves.py run --config sfp-stochastic --seeds 1 2 3   # appends to the CSV
  python benchmarks/streaming_flow_curves.py run --config chunk --seeds 1 2 3
  python benchmarks/streaming_flow_curves.py plot        # docs/studies/streaming_flow_pointmaze.png + summary table
  python benchmarks/streaming_flow_curves.py toy         # docs/studies/streaming_flow_toy_*.png

Every configuration is trained with the same CPU-scale budget (COMMON below) and evaluated on the same
100 env seeds at every evaluation; the CSV holds one row per (config, seed, step).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "studies"
CSV = RESULTS / "streaming_flow_pointmaze.csv"
# the study of the dataset's own force actions (docs/streaming_flow.md); the next-state default is in the quick suite
COMMON = dict(cuda=False, total_steps=2000, batch_size=256, hidden_dim=128, num_blocks=2, learning_rate=1e-3,
              lr_warmup_steps=100, eval_freq=500, eval_episodes=100, eval_envs=50, log_freq=500, action_space="env")
CONFIGS = {
    "sfp-stochastic": dict(policy="sfp", variant="stochastic"),
    "sfp-deterministic": dict(policy="sfp", variant="deterministic"),
    "chunk": dict(policy="chunk"),
}
FIELDS = ["config", "seed", "step", "success", "episodic_return", "normalized_score", "time_to_first_action_ms",
          "per_action_ms", "wall_s"]


def scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("eval/"):
            for e in acc.Scalars(tag):
                out.setdefault(e.step, {})[tag[5:]] = e.value
    return out


def run(config: str, seeds: list) -> None:
    import time

    import torch

    import streaming_flow as sfp

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                t0 = time.time()
                metrics = sfp.main(replace(sfp.Args(), seed=seed, exp_name=config, **COMMON, **CONFIGS[config]))
                wall = time.time() - t0
                curve = scalars(Path(tmp) / metrics["run_dir"])
            finally:
                os.chdir(cwd)
        new = not CSV.exists()
        with open(CSV, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            for step, m in sorted(curve.items()):
                writer.writerow(dict(config=config, seed=seed, step=step, wall_s=round(wall, 1),
                                     **{k: round(m[k], 4) for k in FIELDS[3:-1] if k in m}))
        print(f"{config} seed {seed}: success {metrics['eval/success']:.3f} ({wall:.0f} s)", flush=True)


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(CSV)))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    print("| policy | seeds | success (final, mean +- std) | return | time to first action (ms) | per later action (ms) |")
    print("|-|-|-|-|-|-|")
    for config in CONFIGS:
        sub = [r for r in rows if r["config"] == config]
        if not sub:
            continue
        steps = sorted({int(r["step"]) for r in sub})
        per_step = [[float(r["success"]) for r in sub if int(r["step"]) == s] for s in steps]
        mean, std = np.array([np.mean(v) for v in per_step]), np.array([np.std(v) for v in per_step])
        ax.plot(steps, mean, marker="o", label=config)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        final = [r for r in sub if int(r["step"]) == steps[-1]]
        col = lambda k: np.array([float(r[k]) for r in final])  # noqa: E731
        print(f"| {config} | {len(final)} | {col('success').mean():.2f} +- {col('success').std():.2f} | "
              f"{col('episodic_return').mean():.2f} | {np.median(col('time_to_first_action_ms')):.2f} | "
              f"{np.median(col('per_action_ms')):.2f} |")
    ax.axhline(1.0, color="k", ls=":", lw=1, label="demonstrator (data)")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("success rate (100 episodes)")
    ax.set_title("flowrl/pointmaze/demos-v0, mean +- std over seeds", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "streaming_flow_pointmaze.png", dpi=120)
    print(f"wrote {RESULTS / 'streaming_flow_pointmaze.png'}")


def toy() -> None:
    import streaming_flow as sfp

    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = dict(cuda=False, total_steps=2000, batch_size=256, hidden_dim=64, num_blocks=2,
                    learning_rate=1e-3, lr_warmup_steps=100, eval_freq=2000, log_freq=1000, sigma0=0.05, k=1.0)
    for env in ("crossing", "wine-glass"):
        for variant, sigma1 in (("deterministic", 0.1), ("stochastic", 0.2)):
            with tempfile.TemporaryDirectory() as tmp:
                cwd = os.getcwd()
                os.chdir(tmp)
                try:
                    m = sfp.main(replace(sfp.Args(), env_id=f"toy/{env}", variant=variant, sigma1=sigma1, **settings))
                    shutil.copy(Path(tmp) / m["run_dir"] / "trajectories.png",
                                RESULTS / f"streaming_flow_toy_{env}_{variant}.png")
                finally:
                    os.chdir(cwd)
            print(env, variant, {k: round(v, 3) for k, v in m.items() if k.startswith("eval/")})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["run", "plot", "toy"])
    parser.add_argument("--config", choices=list(CONFIGS), default="sfp-stochastic")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    a = parser.parse_args()
    {"run": lambda: run(a.config, a.seeds), "plot": plot, "toy": toy}[a.what]()
