"""The same trained FQL weights through fql.py's evaluation and through the official one (issue 18).

A parity pair (benchmarks/parity.py) compares success rates of two codes whose training and evaluation both
differ in their random draws. When the rates differ, this separates the two: it takes the weights one run
ended with -- the official code's `params_<step>.pkl` (main.py --save_interval) or fql.py's checkpoint
(--save-model) -- and evaluates them with both evaluators:

  * ours: fql.py's `evaluate` (its env from fql.py's OGBench loader, success_timing='post'; episode k reset
    with seed + k; the one-step policy clip(mu(s, z), -1, 1) with z ~ N(0, I) drawn per step);
  * official: utils/evaluation.py's `evaluate` of seohongpark/fql @719d044 with `FQLAgent.sample_actions`,
    on the env its envs/env_utils.py makes (`ogbench.make_env_and_datasets(name, env_only=True)` in
    EpisodeMonitor), run by a driver with the official venv's python in --official-dir.

The weights are moved between the codes by benchmarks/parity_step.py's mapping (checked there: the same
weights give the same losses and gradients to float rounding). If the two evaluators agree on both runs'
weights, a gap between the runs is in training; if they disagree on the same weights, it is in evaluation.

Usage (after benchmarks/parity.py has made the data and the official venv):
  python benchmarks/parity_crosseval.py --official-dir /tmp/fql-official \\
      --official-params RUN/params_60000.pkl --ours-checkpoint runs/<run>/fql.pt --episodes 100
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_step import (ONE_THREAD_JAX, CheckError, add_official_args, check_official, fql_modules,  # noqa: E402
                         load_data, load_fql_checkpoint, official_to_ours, ours_as_official, run_official)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the algorithm scripts are top-level files

OFFICIAL_DRIVER = r'''
"""flowrl benchmarks/parity_crosseval.py driver for the official FQL (not part of it)."""
import json, os, pickle, sys
sys.path.insert(0, os.getcwd())
import flax
import jax
import numpy as np
import ogbench
from agents.fql import FQLAgent, get_config
from envs.env_utils import EpisodeMonitor
from utils.evaluation import evaluate

a = json.loads(sys.argv[1])
flat = lambda params: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/").items()}
if a["mode"] == "export":  # params_<step>.pkl (flax.serialization.to_state_dict of the agent) -> npz
    with open(a["params"], "rb") as f:
        np.savez(a["out"], **flat(pickle.load(f)["agent"]["network"]["params"]))
    sys.exit(0)
config = get_config()
config.actor_hidden_dims = config.value_hidden_dims = (a["hidden_dim"],) * a["num_layers"]
agent = FQLAgent.create(a["seed"], np.zeros((1, a["obs_dim"]), np.float32), np.zeros((1, a["act_dim"]), np.float32), config)
with np.load(a["params"]) as f:
    params = flax.traverse_util.unflatten_dict({tuple(k.split("/")): jax.numpy.asarray(f[k]) for k in f.files})
agent = agent.replace(network=agent.network.replace(params=params))
env = EpisodeMonitor(ogbench.make_env_and_datasets(a["task"], env_only=True), filter_regexes=[".*privileged.*", ".*proprio.*"])
np.random.seed(a["seed"])  # main.py seeds numpy's global RNG; evaluate draws its JAX key from it
stats, _, _ = evaluate(agent=agent, env=env, config=config, num_eval_episodes=a["episodes"], num_video_episodes=0)
json.dump({"success": float(stats["success"]), "episodes": a["episodes"]}, open(a["out"], "w"))
'''


DRIVER_ENV = {**ONE_THREAD_JAX, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}  # the official evaluation steps MuJoCo


def run_crosseval_driver(a, settings: dict) -> None:
    run_official(a, OFFICIAL_DRIVER, "crosseval_driver.py", settings, DRIVER_ENV)


def evaluate_ours(fql, data, modules: dict, a) -> float:
    policy_net = modules["actor_onestep_flow"].eval()
    act_dim = data.transitions["actions"].shape[1]

    @torch.no_grad()
    def policy(obs, z):  # fql.py's deployed policy (its onestep_policy)
        return policy_net(obs, z).clamp(-1.0, 1.0)

    envs = [data.make_env() for _ in range(min(a.episodes, 6))]
    metrics = fql.evaluate(data, envs, policy, act_dim, a.episodes, a.seed, torch.device("cpu"))
    for env in envs:
        env.close()
    return metrics["success"]


def both(fql, data, modules: dict, a, name: str) -> dict:
    """Success of `modules`' one-step policy under both evaluators."""
    work = Path(a.work_dir)
    flat = ours_as_official(fql, modules)
    np.savez(work / f"{name}.npz", **flat)
    obs_dim, act_dim = data.transitions["observations"].shape[1], data.transitions["actions"].shape[1]
    run_crosseval_driver(a, dict(mode="evaluate", params=str(work / f"{name}.npz"), out=str(work / f"{name}_official.json"),
                         task=a.task, seed=a.seed, episodes=a.episodes, hidden_dim=a.hidden_dim,
                         num_layers=a.num_layers, obs_dim=obs_dim, act_dim=act_dim))
    official = json.loads((work / f"{name}_official.json").read_text())["success"]
    return {"official_evaluator": official, "ours_evaluator": evaluate_ours(fql, data, modules, a)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(p)
    p.add_argument("--official-params", help="params_<step>.pkl written by the official main.py")
    p.add_argument("--ours-checkpoint", help="fql.pt written by fql.py --save-model")
    p.add_argument("--episodes", type=int, default=100, help="episodes per evaluation, both evaluators")
    p.add_argument("--seed", type=int, default=0, help="env/noise seed of both evaluators")
    p.add_argument("--hidden-dim", type=int, default=128, help="the official run's width (the checkpoint has its own)")
    p.add_argument("--num-layers", type=int, default=2, help="the official run's depth")
    p.add_argument("--work-dir", default="/tmp/parity-crosseval")
    p.add_argument("--json", help="also write the table here")
    a = p.parse_args(argv)
    if not a.official_params and not a.ours_checkpoint:
        raise CheckError("give --official-params, --ours-checkpoint or both")
    for flag, path in (("--official-params", a.official_params), ("--ours-checkpoint", a.ours_checkpoint)):
        if path and not Path(path).is_file():
            raise CheckError(f"{flag} {path} is not a file")
    if a.episodes < 1:
        raise CheckError("--episodes must be >= 1")
    check_official(a, "utils/evaluation.py")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    import fql

    data = load_data(fql, a)
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    obs_dim, act_dim = data.transitions["observations"].shape[1], data.transitions["actions"].shape[1]
    table = {}
    if a.official_params:
        run_crosseval_driver(a, dict(mode="export", params=str(Path(a.official_params).resolve()), out=str(work / "official_params.npz")))
        with np.load(work / "official_params.npz") as f:
            flat = dict(f)
        modules = fql_modules(fql, obs_dim, act_dim, a.hidden_dim, a.num_layers)
        official_to_ours(flat, "", fql, modules, a.num_layers)
        table[f"official run ({a.official_params})"] = both(fql, data, modules, a, "weights_official_run")
    if a.ours_checkpoint:
        state, modules = load_fql_checkpoint(fql, a.ours_checkpoint, obs_dim, act_dim)
        saved = state["args"]
        ours_args = argparse.Namespace(**{**vars(a), "hidden_dim": saved["hidden_dim"], "num_layers": saved["num_layers"]})
        table[f"fql.py run ({a.ours_checkpoint})"] = both(fql, data, modules, ours_args, "weights_ours_run")
    print(f"{a.task}: success of the same weights under both evaluators, {a.episodes} episodes each, seed {a.seed} "
          "(± binomial standard error)")
    for weights, row in table.items():
        cells = ", ".join(f"{k.replace('_', ' ')} {v:.3f} ± {math.sqrt(v * (1 - v) / a.episodes):.3f}" for k, v in row.items())
        print(f"  weights of the {weights}: {cells}")
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))
    return table


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
