"""Learning curves for docs/swfp.md: pretrained BC flow vs SWFP vs naive fine-tuning on the embedded Reacher task.

Per seed: phase 1 runs once (BC pretraining + critic warm-up, saved as a checkpoint); SWFP (default h = 1.0),
SWFP with h = 0.1 and the naive baseline (`--naive-finetune`) all start from that checkpoint with the same online
budget (env steps and updates). The curves and per-block statistics are read back from the tensorboard logs.

  OMP_NUM_THREADS=1 python benchmarks/swfp_curves.py run --seed 1            # all methods
                                                          # one seed; seeds (and methods) can run in parallel
  python benchmarks/swfp_curves.py plot --seeds 1 2 3                   # -> docs/studies/swfp_reacher_*.{csv,png}
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "studies"
METHODS = {"swfp_h1": {"jko_step_size": 1.0}, "swfp_h0.1": {"jko_step_size": 0.1}, "naive": {"naive_finetune": True}}
BUDGET = dict(hidden_dim=128, num_layers=2, batch_size=256, pretrain_steps=5000, critic_warmup_steps=2000,
              total_timesteps=1000, eval_freq=500, eval_episodes=100, log_freq=250)


def scalars(run_dir: str, prefix: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag.startswith(prefix)}


def run(seed: int, methods: list, workdir: Path) -> None:
    """Phase 1 once per seed (reused when its checkpoint exists), then each method from it; a method whose run
    already reached the budget's last evaluation is read back instead of retrained."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    import swfp

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    common = dict(cuda=False, seed=seed, **BUDGET)
    last = BUDGET["total_timesteps"]
    if not glob.glob(f"runs/*__pre{seed}__{seed}__*/pre{seed}.pt"):
        swfp.main(swfp.Args(exp_name=f"pre{seed}", save_model=True, **{**common, "total_timesteps": 0}))
    checkpoint = sorted(glob.glob(f"runs/*__pre{seed}__{seed}__*/pre{seed}.pt"))[-1]
    for method in methods:
        done = [d for d in sorted(glob.glob(f"runs/*__{method}-seed{seed}__{seed}__*"))
                if any(step == last for step, _ in scalars(d, "eval/").get("eval/normalized_score", []))]
        if not done:
            swfp.main(swfp.Args(exp_name=f"{method}-seed{seed}", checkpoint=checkpoint, **{**common, **METHODS[method]}))
            done = sorted(glob.glob(f"runs/*__{method}-seed{seed}__{seed}__*"))
        out = {tag: [(step, v) for step, v in values if step <= last]
               for tag, values in {**scalars(done[-1], "eval/"), **scalars(done[-1], "blocks/"), **scalars(done[-1], "charts/")}.items()}
        (workdir / f"seed{seed}_{method}.json").write_text(json.dumps({"seed": seed, "budget": BUDGET, method: out}))


def plot(seeds: list, workdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    styles = {"swfp_h1": ("SWFP, h = 1.0 (default)", "C0"), "swfp_h0.1": ("SWFP, h = 0.1", "C2"), "naive": ("naive fine-tuning", "C3")}
    results = {m: [json.loads((workdir / f"seed{s}_{m}.json").read_text())[m] for s in seeds]
               for m in styles if all((workdir / f"seed{s}_{m}.json").exists() for s in seeds)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, (fig, ax) = [], plt.subplots(figsize=(6.4, 4.2))
    for method, runs in results.items():
        steps = [s for s, _ in runs[0]["eval/normalized_score"]]
        curves = np.array([[v for _, v in r["eval/normalized_score"]] for r in runs])
        for i, step in enumerate(steps):
            rows.append([method, step, f"{curves[:, i].mean():.2f}", f"{curves[:, i].std():.2f}", *[round(float(x), 2) for x in curves[:, i]]])
        mean, std = curves.mean(0), curves.std(0)
        ax.errorbar(steps, mean, yerr=std, color=styles[method][1], label=styles[method][0], marker="o", capsize=3)
    pre = np.array([r["eval/normalized_score"][0][1] for r in results["naive"]])
    ax.axhline(pre.mean(), color="gray", ls="--", label=f"pretrained BC flow ({pre.mean():.1f})")
    ax.set_xlabel("online environment steps (1 critic + 1 policy update per step)")
    ax.set_ylabel("normalized score (100 eval episodes)")
    ax.set_title(f"flowrl/reacher/mixed-v0: mean +- std over {len(seeds)} seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "swfp_reacher_curves.png", dpi=120)
    with open(RESULTS / "swfp_reacher_curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "env_step", "mean", "std"] + [f"seed{s}" for s in seeds])
        writer.writerows(rows)
    # per-block statistics of the SWFP runs: mean over the logs of the second half of training, then over seeds
    names = ("w2_displacement", "w2_step", "entropy", "q_improvement")
    with open(RESULTS / "swfp_reacher_blocks.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "block"] + [f"{n}_{stat}" for n in names for stat in ("mean", "std")])
        for method in (m for m in results if m != "naive"):
            k = 0
            while f"blocks/{names[0]}_{k}" in results[method][0]:
                row = [method, k]
                for name in names:
                    per_seed = [np.mean([v for _, v in r[f"blocks/{name}_{k}"]][len(r[f"blocks/{name}_{k}"]) // 2:])
                                for r in results[method]]
                    row += [f"{np.mean(per_seed):.4g}", f"{np.std(per_seed):.4g}"]
                writer.writerow(row)
                k += 1
    for method, runs in results.items():
        print(method, "online SPS per seed:", [round(float(np.mean([v for _, v in r["charts/SPS"]])), 2) for r in runs])
    for row in rows:
        print(row)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["run", "plot"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/swfp_curves"))
    cli = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(cli.seed, cli.methods, cli.workdir) if cli.mode == "run" else plot(cli.seeds, cli.workdir)
