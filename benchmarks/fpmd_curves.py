"""Learning curves of fpmd.py on a small CPU budget (docs/studies/fpmd_*.csv, fpmd_*.png).

Trains FPMD-R and FPMD-M on PointGoal (a 20-step 2-D reaching task, the env of tests/test_fpmd.py,
defined again below) for several seeds with a reduced configuration (see CONFIG), evaluates every
run's final EMA policy on 100 episodes with both samplers, and measures a uniformly random policy on
the same 100 episode seeds. Curves come from the runs' tensorboard logs. (Pendulum-v1 was tried first:
at ~7 env steps/s on the shared CPU, 10k steps x 6 runs did not fit this task's time.)

  python benchmarks/fpmd_curves.py run --variants rf mf --seeds 1 2 3   # writes the csv files (slow on CPU)
  python benchmarks/fpmd_curves.py plot                                   # csv -> png
  python benchmarks/fpmd_curves.py run --task pendulum --seeds 1 ; python benchmarks/fpmd_curves.py plot --task pendulum
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "studies"
sys.path.insert(0, str(ROOT))



class PointGoalEnv(gym.Env):
    """A point in the plane driven to the origin: obs = position (start uniform in [-1, 1]^2), action = velocity
    in [-2, 2]^2, x' = x + 0.1 a, reward -||x'||; leaving [-2, 2]^2 terminates with -10; 20 steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = (self.pos + 0.1 * np.clip(action, -2.0, 2.0)).astype(np.float32)
        out = bool(np.abs(self.pos).max() > 2.0)
        return self.pos.copy(), -float(np.linalg.norm(self.pos)) - 10.0 * out, out, False, {}


ENV_ID = "PointGoal-v0"
gym.register(ENV_ID, entry_point=PointGoalEnv, max_episode_steps=20)
# reduced from the paper's setting so that one run takes minutes on a loaded 2-core CPU
CONFIG = dict(env_id=ENV_ID, total_timesteps=3_000, num_envs=2, updates_per_iteration=1, learning_starts=200,
              batch_size=128, hidden_dim=64, num_layers=2, num_particles=8, flow_steps=5, eval_freq=300,
              eval_episodes=20, log_freq=300, save_model=True, cuda=False)
# a standard gymnasium task, too slow on this CPU for more than one seed in this task's time (docs say so)
PENDULUM_CONFIG = dict(CONFIG, env_id="Pendulum-v1", total_timesteps=10_000, num_envs=1, learning_starts=1_000,
                       eval_freq=1_000, eval_episodes=10, log_freq=1_000)
TASKS = {"pointgoal": CONFIG, "pendulum": PENDULUM_CONFIG}
FINAL_EPISODES = 100


def scalars(run_dir: str, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def random_returns(env_id: str, episodes: int, seed: int) -> list:
    import fpmd

    env = fpmd.make_env(env_id)
    rng = np.random.default_rng(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=10_000 * seed + episode)  # the evaluation seeds of fpmd.evaluate
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return returns


def run(task: str, variants: list, seeds: list, workdir: str) -> None:
    import torch

    import fpmd

    torch.set_num_threads(1)
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        for seed in seeds:
            exp_name = f"fpmd_{variant}"
            start = time.time()
            config = TASKS[task]
            fpmd.main(fpmd.Args(exp_name=exp_name, variant=variant, seed=seed, **config))
            wall = time.time() - start
            run_dir = sorted(glob.glob(f"runs/{config['env_id']}__{exp_name}__{seed}__*"))[-1]
            curve = {name: dict(scalars(run_dir, f"eval/episodic_return{name}")) for name in ("", "_1nfe")}
            with open(RESULTS / f"fpmd_{task}_curve_{variant}_{seed}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["env_step", "return_best_of_n", "return_1nfe"])
                for step in sorted(curve[""]):
                    w.writerow([step, curve[""][step], curve["_1nfe"].get(step, float("nan"))])
            # the same budget as the run: the final checkpoint is only evaluated, on FINAL_EPISODES episodes
            final = fpmd.main(fpmd.Args(exp_name=f"{exp_name}_final", variant=variant, seed=seed,
                                        **{**config, "eval_episodes": FINAL_EPISODES,
                                           "save_model": False}, checkpoint=f"{run_dir}/{exp_name}.pt"))
            rand = random_returns(config["env_id"], FINAL_EPISODES, seed)
            with open(RESULTS / f"fpmd_{task}_final_{variant}_{seed}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["variant", "seed", "episodes", "return_best_of_n", "return_1nfe", "return_random", "wall_s"])
                w.writerow([variant, seed, FINAL_EPISODES, final["eval/episodic_return"], final["eval/episodic_return_1nfe"],
                            float(np.mean(rand)), round(wall, 1)])
            print(variant, seed, final, "random", np.mean(rand), f"{wall:.0f}s", flush=True)


def plot(task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, variant, title in zip(axes, ("rf", "mf"), ("FPMD-R (rectified flow)", "FPMD-M (MeanFlow)")):
        files = sorted(RESULTS.glob(f"fpmd_{task}_curve_{variant}_*.csv"))
        if not files:
            continue
        rows = [np.genfromtxt(f, delimiter=",", names=True) for f in files]
        steps = rows[0]["env_step"]
        n = min(len(r) for r in rows)
        for column, label in (("return_best_of_n", "training sampler (best-of-8, 5 Euler steps)" if variant == "rf"
                               else "training sampler (best-of-8, 1 step)"), ("return_1nfe", "1 NFE, no best-of-N")):
            values = np.stack([r[column][:n] for r in rows])
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps[:n], mean, label=label)
            ax.fill_between(steps[:n], mean - std, mean + std, alpha=0.2)
        finals = [np.genfromtxt(f, delimiter=",", names=True) for f in sorted(RESULTS.glob(f"fpmd_{task}_final_{variant}_*.csv"))]
        if finals:
            ax.axhline(np.mean([f["return_random"] for f in finals]), color="gray", ls="--", label="uniform random")
        ax.set_title(f"{title}, {len(files)} seed{'s' if len(files) > 1 else ''}")
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"evaluation return ({TASKS[task]['eval_episodes']} episodes)")
    axes[0].legend(loc="lower right", fontsize=8)
    name = {"pointgoal": "PointGoal (20-step 2-D reaching)", "pendulum": "Pendulum-v1"}[task]
    fig.suptitle(f"{name}, reduced CPU budget (see docs/fpmd.md); mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / f"fpmd_{task}.png", dpi=120)
    print("wrote", RESULTS / f"fpmd_{task}.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run", "plot"])
    parser.add_argument("--task", choices=list(TASKS), default="pointgoal")
    parser.add_argument("--variants", nargs="+", default=["rf", "mf"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--workdir", default="/tmp/fpmd_curves", help="where runs/ is written (outside the repo)")
    cli = parser.parse_args()
    run(cli.task, cli.variants, cli.seeds, cli.workdir) if cli.command == "run" else plot(cli.task)
