"""Hand a run's whole training state from one FQL code to the other, to continue it there (issue 18).

When fql.py and the official FQL agree update by update (benchmarks/parity_step.py) and on the same weights'
success (benchmarks/parity_crosseval.py) but their runs still end apart, the difference is either in the state a
run reaches by some step or in the updates after it. Continuing each side from the other's state at that step
tells which: this script converts the state, the runs are the codes' own.

  * official -> ours: the official `params_<step>.pkl` (main.py --save_interval; flax.serialization.to_state_dict of
    the agent: the parameters, Adam's moments and count) becomes an fql.py checkpoint (the four networks, Adam's
    state in torch's layout, the step), to continue with `fql.py --checkpoint <file> --total-steps <later step>`.
  * ours -> official: fql.py's checkpoint (--save-model) becomes `<dir>/params_<step>.pkl` for the official
    `main.py --restore_path=<dir> --restore_epoch=<step>` (the agent's PRNG key is a fresh one from --seed; the
    target critic's Adam moments, which are zero in the official agent as no gradient reaches it, are zero).

Weights and moments are moved with parity_step.py's mapping (the same weights give the same losses and gradients to
float rounding). `--check` converts back and reports the largest difference of the round trip (it must be 0).

Usage (after benchmarks/parity.py has made the data and the official venv):
  python benchmarks/parity_swap.py --official-dir /tmp/fql-official --official-params RUN/params_40000.pkl \\
      --out-checkpoint /tmp/swap/from_official_40000.pt --check
  python benchmarks/parity_swap.py --official-dir /tmp/fql-official --ours-checkpoint runs/<run>/fql.pt \\
      --out-official-dir /tmp/swap/from_ours --check
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_step import (CheckError, add_official_args, check_official, fql_modules, load_data,  # noqa: E402
                         load_fql_checkpoint, official_to_ours, ours_as_official, run_official, trained)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the algorithm scripts are top-level files

# The official agent's training state as official_to_checkpoint reads it (used by this driver and parity_stream.py's)
OFFICIAL_STATE = r'''
def official_state(agent):
    """params/, mu/, nu/ (flax trees flattened with '/'), Adam's count and the TrainState step, as numpy arrays."""
    flat = lambda tree: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/").items()}
    adam, _ = agent.network.opt_state
    return {**{f"params/{k}": v for k, v in flat(agent.network.params).items()},
            **{f"mu/{k}": v for k, v in flat(adam.mu).items()}, **{f"nu/{k}": v for k, v in flat(adam.nu).items()},
            "count": np.asarray(adam.count), "step": np.asarray(agent.network.step)}
'''

OFFICIAL_DRIVER = r'''
"""flowrl benchmarks/parity_swap.py driver for the official FQL (not part of it)."""
import json, os, pickle, sys
sys.path.insert(0, os.getcwd())
import flax
import jax
import numpy as np
from agents.fql import FQLAgent, get_config
from utils.flax_utils import restore_agent, save_agent

a = json.loads(sys.argv[1])
config = get_config()
config.actor_hidden_dims = config.value_hidden_dims = (a["hidden_dim"],) * a["num_layers"]
agent = FQLAgent.create(a["seed"], np.zeros((1, a["obs_dim"]), np.float32), np.zeros((1, a["act_dim"]), np.float32), config)
''' + OFFICIAL_STATE + r'''
tree = lambda f, group: flax.traverse_util.unflatten_dict(
    {tuple(k[len(group) + 1:].split("/")): jax.numpy.asarray(f[k]) for k in f.files if k.startswith(group + "/")})
if a["mode"] == "export":  # params_<step>.pkl -> npz of params/, mu/, nu/ and the counters
    agent = restore_agent(agent, os.path.dirname(a["params"]), int(a["step"]))
    np.savez(a["out"], **official_state(agent))
else:  # npz -> <out dir>/params_<step>.pkl, the agent created from --seed with the state replaced
    with np.load(a["npz"]) as f:
        params, mu, nu = tree(f, "params"), tree(f, "mu"), tree(f, "nu")
        count, step = int(f["count"]), int(f["step"])
    adam, rest = agent.network.opt_state
    for name, new, old in (("params", params, agent.network.params), ("mu", mu, adam.mu), ("nu", nu, adam.nu)):
        if jax.tree_util.tree_structure(new) != jax.tree_util.tree_structure(flax.core.unfreeze(old)):
            sys.exit(f"{name}: not the official agent's tree")
    adam = adam._replace(count=jax.numpy.asarray(count, adam.count.dtype), mu=mu, nu=nu)
    agent = agent.replace(network=agent.network.replace(params=params, opt_state=(adam, rest), step=step))
    os.makedirs(a["out"], exist_ok=True)
    save_agent(agent, a["out"], count)  # named by updates, as main.py does
'''


def official_to_checkpoint(fql, flat: dict, task: str, hidden_dim: int, num_layers: int, obs_dim: int, act_dim: int,
                           out: Path) -> int:
    """An fql.py checkpoint (networks, Adam, step) from the official state `flat` (params/, mu/, nu/, count, step)."""
    modules = fql_modules(fql, obs_dim, act_dim, hidden_dim, num_layers)
    official_to_ours(flat, "params/", fql, modules, num_layers)
    moments = {}
    for group in ("mu", "nu"):
        holder = fql_modules(fql, obs_dim, act_dim, hidden_dim, num_layers)
        official_to_ours(flat, f"{group}/", fql, holder, num_layers)
        moments[group] = [p.detach().clone() for p in trained(holder)]
    args = fql.Args(env_id=task, hidden_dim=hidden_dim, num_layers=num_layers, cuda=False)
    params = trained(modules)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, foreach=True)  # fql.py's CPU Adam
    count = int(flat["count"])
    for p, m, v in zip(params, moments["mu"], moments["nu"]):
        optimizer.state[p] = {"step": torch.tensor(float(count)), "exp_avg": m, "exp_avg_sq": v}
    step = int(flat["step"]) - 1  # utils/flax_utils.py's TrainState counts from 1: `step` is updates + 1
    if count != step:
        raise CheckError(f"the official state has Adam count {count} at TrainState step {step + 1}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fql.save_checkpoint(out, modules, optimizer, step, args, obs_dim, act_dim)
    return step


def checkpoint_to_official(fql, path: Path, obs_dim: int, act_dim: int) -> tuple:
    """The official state (params/, mu/, nu/, count, step) of an fql.py checkpoint, and its network sizes."""
    state, modules = load_fql_checkpoint(fql, path, obs_dim, act_dim)
    hidden_dim, num_layers = state["args"]["hidden_dim"], state["args"]["num_layers"]
    flat = {f"params/{k}": v for k, v in ours_as_official(fql, modules).items()}
    adam = state["optimizer"]["state"]
    params = trained(modules)
    if sorted(adam) != list(range(len(params))):
        raise CheckError(f"{path}: Adam's state does not cover the {len(params)} trained tensors")
    steps = {float(adam[i]["step"]) for i in adam}
    if len(steps) != 1:
        raise CheckError(f"{path}: Adam's step differs between tensors ({sorted(steps)})")
    for group, key in (("mu", "exp_avg"), ("nu", "exp_avg_sq")):
        holder = fql_modules(fql, obs_dim, act_dim, hidden_dim, num_layers)
        with torch.no_grad():
            for p in holder["target_critic"].parameters():
                p.zero_()  # no gradient reaches the official target critic: its moments are zero
            for i, p in enumerate(trained(holder)):
                p.copy_(adam[i][key])
        flat.update({f"{group}/{k}": v for k, v in ours_as_official(fql, holder).items()})
    flat["count"] = np.asarray(int(steps.pop()), np.int32)
    flat["step"] = np.asarray(int(state["step"]) + 1)  # the official TrainState's step: updates + 1
    return flat, hidden_dim, num_layers


def without_target_moments(flat: dict) -> dict:
    """`flat` less the target critic's Adam moments (fql.py keeps none: they come back as zeros)."""
    return {k: v for k, v in flat.items() if not ("target_critic" in k and k.split("/")[0] in ("mu", "nu"))}


def largest_difference(x: dict, y: dict) -> float:
    if sorted(x) != sorted(y):
        raise CheckError(f"the round trip changed the entries: {sorted(set(x) ^ set(y))[:4]}")
    return max(float(np.max(np.abs(np.asarray(x[k], np.float64) - np.asarray(y[k], np.float64)), initial=0.0)) for k in x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(p)
    p.add_argument("--official-params", help="params_<step>.pkl written by the official main.py (--save_interval)")
    p.add_argument("--out-checkpoint", help="with --official-params: the fql.py checkpoint to write")
    p.add_argument("--ours-checkpoint", help="fql.pt written by fql.py --save-model")
    p.add_argument("--out-official-dir", help="with --ours-checkpoint: the folder to write params_<step>.pkl in")
    p.add_argument("--hidden-dim", type=int, default=128, help="the official run's width (an fql.py checkpoint has its own)")
    p.add_argument("--num-layers", type=int, default=2, help="the official run's depth")
    p.add_argument("--seed", type=int, default=0, help="the official agent's PRNG key (ours -> official)")
    p.add_argument("--work-dir", default="/tmp/parity-swap")
    p.add_argument("--check", action="store_true", help="convert back and report the round trip's largest difference")
    a = p.parse_args(argv)
    if bool(a.official_params) == bool(a.ours_checkpoint):
        raise CheckError("give one of --official-params or --ours-checkpoint")
    if a.official_params and not a.out_checkpoint:
        raise CheckError("--official-params needs --out-checkpoint")
    if a.ours_checkpoint and not a.out_official_dir:
        raise CheckError("--ours-checkpoint needs --out-official-dir")
    source = a.official_params or a.ours_checkpoint
    if not Path(source).is_file():
        raise CheckError(f"{source} is not a file")
    if a.official_params and (not Path(a.official_params).name.startswith("params_")
                              or not Path(a.official_params).stem[len("params_"):].isdigit()):
        raise CheckError(f"--official-params {a.official_params}: the official main.py names it params_<step>.pkl")
    if a.out_checkpoint and Path(a.out_checkpoint).exists():
        raise CheckError(f"--out-checkpoint {a.out_checkpoint} exists; give a new path")
    check_official(a, "utils/flax_utils.py")
    return a


def main(argv=None) -> float | None:
    a = parse_args(argv)
    import fql

    data = load_data(fql, a)
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    obs_dim, act_dim = data.transitions["observations"].shape[1], data.transitions["actions"].shape[1]
    driver = lambda **s: run_official(a, OFFICIAL_DRIVER, "swap_driver.py",  # noqa: E731
                                      dict(s, seed=a.seed, obs_dim=obs_dim, act_dim=act_dim))
    diff = None
    if a.official_params:
        step = int(Path(a.official_params).stem[len("params_"):])
        driver(mode="export", params=str(Path(a.official_params).resolve()), step=step, out=str(work / "official.npz"),
               hidden_dim=a.hidden_dim, num_layers=a.num_layers)
        with np.load(work / "official.npz") as f:
            flat = dict(f)
        step = official_to_checkpoint(fql, flat, a.task, a.hidden_dim, a.num_layers, obs_dim, act_dim, Path(a.out_checkpoint))
        print(f"official state at step {step} -> fql.py checkpoint {a.out_checkpoint}")
        if a.check:
            back, _, _ = checkpoint_to_official(fql, Path(a.out_checkpoint), obs_dim, act_dim)
            diff = largest_difference(without_target_moments(flat), without_target_moments(back))
    else:
        flat, hidden_dim, num_layers = checkpoint_to_official(fql, Path(a.ours_checkpoint), obs_dim, act_dim)
        np.savez(work / "ours.npz", **flat)
        out, step = Path(a.out_official_dir), int(flat["count"])
        pkl = out / f"params_{step}.pkl"
        if pkl.exists():
            raise CheckError(f"{pkl} exists; give a new --out-official-dir")
        driver(mode="import", npz=str(work / "ours.npz"), out=str(out.resolve()), hidden_dim=hidden_dim, num_layers=num_layers)
        print(f"fql.py checkpoint at step {step} -> {pkl} (official main.py --restore_path={out} --restore_epoch={step})")
        if a.check:
            driver(mode="export", params=str(pkl.resolve()), step=step,
                   out=str(work / "back.npz"), hidden_dim=hidden_dim, num_layers=num_layers)
            with np.load(work / "back.npz") as f:
                diff = largest_difference(flat, dict(f))
    if diff is not None:
        print(f"round trip: largest difference {diff:.3g} (must be 0)")
        if diff != 0.0:
            raise CheckError(f"the round trip is not exact (largest difference {diff:.3g})")
    return diff


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
