"""Stability study for docs/swfp.md (issue 20): pretrained BC flow vs SWFP's two block spaces vs naive and regularised
naive fine-tuning, on the embedded Reacher and PointMaze demonstrations.

Per (task, seed): phase 1 runs once (BC pretraining + critic warm-up, saved as a checkpoint); every method starts
from that checkpoint with the same online budget (env steps, one critic and one policy update per step) and the
same seeded evaluations, so env step 0 is the same pretrained policy for all. Per run the score of interest is
  * worst drop: max(0, pretrained score - the lowest score of any evaluation of the online phase),
  * final: the score of the last evaluation.
The curves are read back from the tensorboard logs.

  OMP_NUM_THREADS=1 python benchmarks/swfp_curves.py run --task reacher --seed 1   # all methods of a seed
  python benchmarks/swfp_curves.py plot                                          # -> docs/studies/swfp_*.{csv,png}
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "studies"
TASKS = {"reacher": "flowrl/reacher/mixed-v0", "pointmaze": "flowrl/pointmaze/demos-v0"}
METHODS = {  # h is the JKO time of the whole cascade (K blocks of h / K); the regularised baseline uses the same h
    "naive": dict(naive_finetune=True),
    "naive_reg_h10": dict(naive_finetune=True, naive_trust_region=True, jko_step_size=10.0),
    "naive_reg_h1": dict(naive_finetune=True, naive_trust_region=True, jko_step_size=1.0),
    "flow_h10": dict(block_space="flow", jko_step_size=10.0),
    "flow_h1": dict(block_space="flow", jko_step_size=1.0),
    "action_h10": dict(block_space="action", jko_step_size=10.0),
    "action_h1": dict(block_space="action", jko_step_size=1.0),
}
LABELS = {"naive": ("naive fine-tuning", "C3", "-"), "naive_reg_h10": ("naive + W2 penalty, h = 10", "C1", "-"),
          "naive_reg_h1": ("naive + W2 penalty, h = 1", "C1", "--"), "flow_h10": ("SWFP flow space, h = 10", "C0", "-"),
          "flow_h1": ("SWFP flow space, h = 1", "C0", "--"), "action_h10": ("SWFP action space, h = 10", "C2", "-"),
          "action_h1": ("SWFP action space, h = 1", "C2", "--")}
BUDGET = dict(hidden_dim=128, num_layers=2, batch_size=256, pretrain_steps=5000, critic_warmup_steps=2000,
              total_timesteps=300, eval_freq=75, eval_episodes=100, log_freq=75)


def scalars(run_dir: str, prefix: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag.startswith(prefix)}


def run(task: str, seed: int, methods: list, workdir: Path) -> None:
    """Phase 1 once per (task, seed) (reused when its checkpoint exists), then each method from it; a method whose
    result file exists is skipped."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    import swfp

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    common = dict(cuda=False, seed=seed, env_id=TASKS[task], **BUDGET)
    pre = f"pre-{task}{seed}"
    if not glob.glob(f"runs/*__{pre}__{seed}__*/{pre}.pt"):
        swfp.main(swfp.Args(exp_name=pre, save_model=True, **{**common, "total_timesteps": 0}))
    checkpoint = sorted(glob.glob(f"runs/*__{pre}__{seed}__*/{pre}.pt"))[-1]
    for method in methods:
        out_file = workdir / f"{task}_seed{seed}_{method}.json"
        if out_file.exists():
            continue
        name = f"{task}-{method}-seed{seed}"
        swfp.main(swfp.Args(exp_name=name, checkpoint=checkpoint, **{**common, **METHODS[method]}))
        run_dir = sorted(glob.glob(f"runs/*__{name}__{seed}__*"))[-1]
        out = {**scalars(run_dir, "eval/"), **scalars(run_dir, "blocks/"), **scalars(run_dir, "charts/"),
               **scalars(run_dir, "losses/")}
        out_file.write_text(json.dumps({"task": task, "seed": seed, "method": method, "budget": BUDGET, "scalars": out}))


def plot(seeds: list, workdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    RESULTS.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in TASKS if any(workdir.glob(f"{t}_seed*_*.json"))]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.0 * len(tasks), 4.4), squeeze=False)
    curve_rows, summary_rows = [], []
    for ax, task in zip(axes[0], tasks):
        pre_scores = None
        for method in METHODS:
            have = [s for s in seeds if (workdir / f"{task}_seed{s}_{method}.json").exists()]
            if not have:
                continue  # a method with fewer seeds is kept, its seed count shown (label, summary)
            runs = [json.loads((workdir / f"{task}_seed{s}_{method}.json").read_text())["scalars"]["eval/normalized_score"]
                    for s in have]
            steps = [s for s, _ in runs[0]]
            curves = np.array([[v for _, v in r] for r in runs])  # (seeds, evals)
            pre_scores = curves[:, 0]
            for i, step in enumerate(steps):
                per_seed = dict(zip(have, curves[:, i]))
                curve_rows.append([task, method, step, f"{curves[:, i].mean():.2f}", f"{curves[:, i].std():.2f}",
                                   *[f"{per_seed[s]:.2f}" if s in per_seed else "" for s in seeds]])
            drop = np.maximum(0.0, curves[:, :1] - curves[:, 1:].min(1, keepdims=True))[:, 0]
            final, gain = curves[:, -1], curves[:, -1] - curves[:, 0]
            summary_rows.append([task, method, len(have), f"{curves[:, 0].mean():.2f}", f"{drop.mean():.2f}", f"{drop.std():.2f}",
                                 f"{final.mean():.2f}", f"{final.std():.2f}", f"{gain.mean():.2f}", f"{gain.std():.2f}",
                                 " ".join(f"{x:.1f}" for x in drop), " ".join(f"{x:.1f}" for x in final)])
            label, color, ls = LABELS[method]
            label += "" if len(have) == len(seeds) else f" ({len(have)} seed{'s' if len(have) > 1 else ''})"
            ax.errorbar(steps, curves.mean(0), yerr=curves.std(0), color=color, ls=ls, label=label, marker="o",
                        ms=3, capsize=3)
        if pre_scores is not None:
            ax.axhline(pre_scores.mean(), color="gray", ls=":", label=f"pretrained BC flow ({pre_scores.mean():.1f})")
        ax.set_xlabel("online environment steps (1 critic + 1 policy update per step)")
        ax.set_ylabel("normalized score (100 eval episodes)")
        ax.set_title(f"{TASKS[task]}: mean +- std over {len(seeds)} seeds", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "swfp_stability_curves.png", dpi=110)
    with open(RESULTS / "swfp_stability_curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "method", "env_step", "mean", "std"] + [f"seed{s}" for s in seeds])
        w.writerows(curve_rows)
    with open(RESULTS / "swfp_stability_summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "method", "seeds", "pretrained_mean", "worst_drop_mean", "worst_drop_std", "final_mean", "final_std",
                    "gain_mean", "gain_std", "worst_drop_per_seed", "final_per_seed"])
        w.writerows(summary_rows)
    # per-block statistics of the SWFP runs: mean over the logs and over seeds
    with open(RESULTS / "swfp_stability_blocks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "method", "block", "w2_displacement_mean", "q_improvement_mean"])
        for task in tasks:
            for method in (m for m in METHODS if m.startswith(("flow", "action"))):
                files = [workdir / f"{task}_seed{s}_{method}.json" for s in seeds]
                files = [f for f in files if f.exists()]
                if not files:
                    continue
                sc = [json.loads(f.read_text())["scalars"] for f in files]
                for k in range(100):  # action space: only the blocks whose stage held a logging step
                    if not all(f"blocks/w2_displacement_{k}" in s for s in sc):
                        continue
                    disp = np.mean([np.mean([v for _, v in s[f"blocks/w2_displacement_{k}"]]) for s in sc])
                    qimp = np.mean([np.mean([v for _, v in s[f"blocks/q_improvement_{k}"]]) for s in sc])
                    w.writerow([task, method, k, f"{disp:.4g}", f"{qimp:.4g}"])
    for row in summary_rows:
        print(row)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["run", "plot"])
    parser.add_argument("--task", choices=list(TASKS), default="reacher")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/swfp_curves"))
    cli = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(cli.task, cli.seed, cli.methods, cli.workdir) if cli.mode == "run" else plot(cli.seeds, cli.workdir)
