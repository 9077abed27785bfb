"""fql.py against the official FQL, update by update, from the same weights, batches and noise (issue 18).

The parity pairs of docs/parity.md compare success rates of whole runs, and those carry the noise of training
seeds and evaluation episodes. This check has none: it runs the official agent (seohongpark/fql @719d044,
agents/fql.py, in its own venv and checkout) for a few updates and fql.py's loss functions on exactly the same
numbers, and compares them term by term.

  1. Our side draws `--steps` batches of `--batch-size` transitions from the generated OGBench dataset (read by
     fql.py's own loader) and writes them to the work dir.
  2. The official side (a driver run with the official venv's python in --official-dir) creates `FQLAgent` at
     `--seed` with the given sizes and hyper-parameters and, for every batch, records the noise that
     `agent.update(batch)` draws, the loss terms it logs, then applies the update. The noise is recomputed
     from the agent's PRNG key by the same `jax.random.split` sequence as `update` -> `total_loss` ->
     `critic_loss` / `sample_actions` / `actor_loss` (agents/fql.py); a wrong guess would show as a loss
     mismatch in step 1. It also records the gradient of `total_loss` at the initial weights and the weights
     after the first and the last update.
  3. Our side loads the official initial weights into fql.py's networks, feeds the recorded noise into
     fql.py's `critic_loss`, `bc_flow_loss` and `onestep_losses` (torch.randn / torch.rand_like replaced by the
     recorded arrays for the call), and takes the step as fql.py's `update` does (the loss sum, the Polyak update
     of the target critic, Adam over all networks).

Before that, the dataset: fql.py's loader is compared with the official envs/env_utils.py `make_env_and_datasets`
(main.py's training data, read from the same files through HOME=<work dir>/home), key by key.

Printed: each loss term of every step (relative difference, worst step), the gradient of every parameter at
step 1, and every parameter after step 1 and after the last step (relative difference of the tensor,
||ours - official|| / ||official||), twice: with the Polyak update of the target critic after Adam's step
and before it (agents/fql.py's `target_update` reads `self.network.params`, the critic before the update; fql.py
does the same since this check found the difference, 2026-12-03). The two runs tell how much of a difference is
that order and how much float rounding.

Usage (after benchmarks/parity.py has made the data and the official venv):
  python benchmarks/parity_step.py --official-dir /tmp/fql-official
  python benchmarks/parity_step.py --official-dir /tmp/fql-official --task cube-single-play-singletask-task2-v0
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the algorithm scripts are top-level files

OFFICIAL_NOISE = r'''
def noise(rng, shape):
    """The noise agent.update draws with key `rng` (the agent's key before the update), in its order of use."""
    _, rng = jax.random.split(rng)                               # update: new_rng, rng
    _, actor_rng, critic_rng = jax.random.split(rng, 3)          # total_loss
    _, sample_rng = jax.random.split(critic_rng)                 # critic_loss
    action_seed, _ = jax.random.split(sample_rng)                # sample_actions
    next_z = jax.random.normal(action_seed, shape)
    rest, x_rng, t_rng = jax.random.split(actor_rng, 3)          # actor_loss: BC flow
    x_0, t = jax.random.normal(x_rng, shape), jax.random.uniform(t_rng, (shape[0], 1))
    _, noise_rng = jax.random.split(rest)                        # actor_loss: distillation
    z = jax.random.normal(noise_rng, shape)
    return rng, dict(next_z=next_z, x_0=x_0, t=t, z=z)
'''

OFFICIAL_DRIVER = r'''
"""flowrl benchmarks/parity_step.py driver for the official FQL (not part of it)."""
import json, os, sys
sys.path.insert(0, os.getcwd())
import flax
import jax
import numpy as np
from agents.fql import FQLAgent, get_config

a = json.loads(sys.argv[1])
batches = dict(np.load(a["batches"]))
steps = batches["observations"].shape[0]
config = get_config()
config.actor_hidden_dims = config.value_hidden_dims = (a["hidden_dim"],) * a["num_layers"]
config.alpha, config.discount, config.q_agg, config.batch_size = a["alpha"], a["gamma"], a["q_agg"], a["batch_size"]
batch = lambda k: {key: batches[key][k] for key in ("observations", "actions", "rewards", "masks", "next_observations")}
agent = FQLAgent.create(a["seed"], batch(0)["observations"][:1], batch(0)["actions"][:1], config)
flat = lambda params: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/").items()}
out = {f"init/{k}": v for k, v in flat(agent.network.params).items()}


''' + OFFICIAL_NOISE + r'''

for k in range(steps):
    b = batch(k)
    loss_rng, drawn = noise(agent.rng, b["actions"].shape)
    out.update({f"noise/{k}/{name}": np.asarray(v) for name, v in drawn.items()})
    if k == 0:
        grads = jax.grad(lambda p: agent.total_loss(b, p, rng=loss_rng)[0])(agent.network.params)
        out.update({f"grad/{key}": v for key, v in flat(grads).items()})
    agent, info = agent.update(b)
    out.update({f"info/{k}/{key}": np.asarray(v) for key, v in info.items()})
    if k == 0 or k == steps - 1:
        out.update({f"after{k + 1}/{key}": v for key, v in flat(agent.network.params).items()})
np.savez(a["out"], **out)
print("official: done", steps, "updates")
'''


DATA_DRIVER = r'''
"""flowrl benchmarks/parity_step.py driver: the official FQL's training dataset (not part of it)."""
import json, os, sys
sys.path.insert(0, os.getcwd())
import numpy as np
from envs.env_utils import make_env_and_datasets

a = json.loads(sys.argv[1])
_, _, train, _ = make_env_and_datasets(a["task"])  # main.py's call; ogbench reads $HOME/.ogbench/data
np.savez(a["out"], **{k: np.asarray(train[k]) for k in a["keys"]})
'''

DATA_KEYS = ("observations", "actions", "rewards", "masks", "next_observations")


class CheckError(ValueError):
    """Bad input or a missing file: one line, exit 2."""


# The pieces parity_step.py and parity_crosseval.py share: the official checkout, its venv, the data, the driver run.
ONE_THREAD_JAX = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def add_official_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--official-dir", required=True, help="a checkout of seohongpark/fql at 719d044")
    p.add_argument("--official-venv", default=os.path.expanduser("~/.cache/flowrl/parity-venv"),
                   help="the official code's venv (benchmarks/parity.py --make-venv makes it)")
    p.add_argument("--task", default="scene-play-singletask-task1-v0", help="OGBench singletask name")
    p.add_argument("--data-dir", default="/tmp/parity-data", help="the generated dataset (benchmarks/parity.py makes it)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The training settings both sides take (the scene pair's by default)."""
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--alpha", type=float, default=300.0)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--q-agg", default="mean", choices=["mean", "min"])


def check_official(a, needed: str) -> None:
    """--official-dir must hold `needed` (a file of the official checkout) and --official-venv a python."""
    if not (Path(a.official_dir) / needed).is_file():
        raise CheckError(f"--official-dir {a.official_dir} has no {needed} (a checkout of seohongpark/fql @719d044)")
    if not (Path(a.official_venv) / "bin" / "python").is_file():
        raise CheckError(f"--official-venv {a.official_venv} has no bin/python (make it with benchmarks/parity.py --make-venv)")


def load_data(fql, a):
    """fql.py's OfflineData of --task from --data-dir; a missing or bad dataset is one CheckError line."""
    try:
        return fql.load_offline_data(a.task, a.data_dir)
    except fql.DatasetError as e:
        raise CheckError(f"{e} (benchmarks/parity.py --task {a.task} generates it)") from None


def run_official(a, driver: str, name: str, settings: dict, env: dict = ONE_THREAD_JAX) -> None:
    """Write `driver` to --work-dir/`name` and run it with the official venv's python in --official-dir, its settings
    as one JSON argument; a failure is one CheckError line with the driver's last line of stderr."""
    path = Path(a.work_dir) / name
    path.write_text(driver)
    run = subprocess.run([str(Path(a.official_venv) / "bin" / "python"), str(path), json.dumps(settings)],
                         cwd=a.official_dir, env=dict(os.environ, **env), capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise CheckError(f"the official side failed (rc {run.returncode}): {run.stderr.strip().splitlines()[-1:]}")


def fql_modules(fql, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int) -> dict:
    """fql.py's four networks (2 critics, as the official default num_qs), named as in its checkpoints and the
    official agent's `modules_<name>`. Their initial weights are meant to be overwritten."""
    torch.manual_seed(0)
    return {"actor_bc_flow": fql.VectorField(obs_dim, act_dim, hidden_dim, num_layers),
            "actor_onestep_flow": fql.OneStepPolicy(obs_dim, act_dim, hidden_dim, num_layers),
            "critic": fql.Critic(obs_dim, act_dim, hidden_dim, num_layers, 2),
            "target_critic": fql.Critic(obs_dim, act_dim, hidden_dim, num_layers, 2)}


def trained(modules: dict) -> list:
    """The parameters fql.py's Adam holds, in its order (main: actor_bc_flow, actor_onestep_flow, critic)."""
    return [p for name in ("actor_bc_flow", "actor_onestep_flow", "critic") for p in modules[name].parameters()]


def load_fql_checkpoint(fql, path, obs_dim: int, act_dim: int) -> tuple:
    """fql.py's checkpoint (--save-model) and its four networks loaded from it; one CheckError line if it is not one
    or has other than the official agent's 2 critics."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("script", "fql") != "fql" or any(k not in state for k in fql.CHECKPOINT_ENTRIES):
        raise CheckError(f"{path} is not an fql.py checkpoint")
    saved = state["args"]
    if saved["num_critics"] != 2:
        raise CheckError(f"{path} has {saved['num_critics']} critics; the official agent has 2")
    modules = fql_modules(fql, obs_dim, act_dim, saved["hidden_dim"], saved["num_layers"])
    for name, module in modules.items():
        module.load_state_dict(state[name])
    return state, modules


def official_to_ours(flat: dict, prefix: str, fql, modules: dict, num_layers: int) -> None:
    """Copy flax parameters (flattened with '/', under `prefix`) into fql.py's modules, in place.

    Dense kernels are (in, out) in flax and (out, in) in torch.nn.Linear; the critic ensemble's vmapped
    parameters have the member axis first, as fql.py's EnsembleLinear (K, in, out) / bias (K, 1, out) and
    EnsembleLayerNorm (K, 1, dim)."""
    with torch.no_grad():
        for name in ("actor_bc_flow", "actor_onestep_flow"):
            linears = [m for m in modules[name].net if isinstance(m, torch.nn.Linear)]
            for i, layer in enumerate(linears):
                layer.weight.copy_(torch.as_tensor(flat[f"{prefix}modules_{name}/mlp/Dense_{i}/kernel"]).T)
                layer.bias.copy_(torch.as_tensor(flat[f"{prefix}modules_{name}/mlp/Dense_{i}/bias"]))
        for name in ("critic", "target_critic"):
            net = modules[name].net
            linears = [m for m in net if isinstance(m, fql.EnsembleLinear)]
            norms = [m for m in net if isinstance(m, fql.EnsembleLayerNorm)]
            assert len(linears) == num_layers + 1 and len(norms) == num_layers
            for i, layer in enumerate(linears):
                layer.weight.copy_(torch.as_tensor(flat[f"{prefix}modules_{name}/value_net/Dense_{i}/kernel"]))
                layer.bias.copy_(torch.as_tensor(flat[f"{prefix}modules_{name}/value_net/Dense_{i}/bias"])[:, None])
            for i, norm in enumerate(norms):
                norm.weight.copy_(torch.as_tensor(flat[f"{prefix}modules_{name}/value_net/LayerNorm_{i}/scale"])[:, None])
                norm.bias.copy_(torch.as_tensor(flat[f"{prefix}modules_{name}/value_net/LayerNorm_{i}/bias"])[:, None])


def ours_as_official(fql, modules: dict, grads: bool = False) -> dict:
    """fql.py's parameters (or their .grad) under the official names and layouts (the inverse of official_to_ours)."""
    get = (lambda p: p.grad) if grads else (lambda p: p)
    out = {}
    for name in ("actor_bc_flow", "actor_onestep_flow"):
        linears = [m for m in modules[name].net if isinstance(m, torch.nn.Linear)]
        for i, layer in enumerate(linears):
            out[f"modules_{name}/mlp/Dense_{i}/kernel"] = get(layer.weight).detach().T.numpy().copy()
            out[f"modules_{name}/mlp/Dense_{i}/bias"] = get(layer.bias).detach().numpy().copy()
    for name in ("critic",) if grads else ("critic", "target_critic"):
        net = modules[name].net
        for i, layer in enumerate(m for m in net if isinstance(m, fql.EnsembleLinear)):
            out[f"modules_{name}/value_net/Dense_{i}/kernel"] = get(layer.weight).detach().numpy().copy()
            out[f"modules_{name}/value_net/Dense_{i}/bias"] = get(layer.bias).detach()[:, 0].numpy().copy()
        for i, norm in enumerate(m for m in net if isinstance(m, fql.EnsembleLayerNorm)):
            out[f"modules_{name}/value_net/LayerNorm_{i}/scale"] = get(norm.weight).detach()[:, 0].numpy().copy()
            out[f"modules_{name}/value_net/LayerNorm_{i}/bias"] = get(norm.bias).detach()[:, 0].numpy().copy()
    return out


@contextlib.contextmanager
def recorded_noise(normal: list, uniform: list, error: type = AssertionError):
    """torch.randn and torch.rand_like return the given arrays, in order (their shapes checked), inside the block; the
    lists are read as they are at each draw, so a caller may refill them in place (parity_stream.py, per update). A
    draw with its own `generator` (fql.py's evaluation) is not the update's and is drawn as usual. `error` is raised
    for a draw too many, a shape that differs, and arrays left at the end."""
    real_randn, real_rand_like = torch.randn, torch.rand_like

    def take(queue: list, shape: tuple, what: str) -> torch.Tensor:
        if not queue:
            raise error(f"fql.py drew more {what} noise than the official update")
        x = queue.pop(0)
        if tuple(x.shape) != tuple(shape):
            raise error(f"fql.py drew {what} noise of shape {tuple(shape)}, the official {tuple(x.shape)}")
        return torch.as_tensor(x, dtype=torch.float32).clone()

    def randn(*size, **kw):
        if kw.get("generator") is not None:
            return real_randn(*size, **kw)
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return take(normal, shape, "normal")

    def rand_like(x, **kw):
        if kw.get("generator") is not None:
            return real_rand_like(x, **kw)
        return take(uniform, x.shape, "uniform")

    torch.randn, torch.rand_like = randn, rand_like
    try:
        yield
    finally:
        torch.randn, torch.rand_like = real_randn, real_rand_like
    if normal or uniform:
        raise error(f"fql.py drew less noise than the official update ({len(normal)} normal, {len(uniform)} uniform left)")


def rel(ours: np.ndarray, official: np.ndarray) -> float:
    """||ours - official|| / ||official|| (absolute difference where the official tensor is 0)."""
    diff = float(np.linalg.norm(np.asarray(ours, np.float64) - np.asarray(official, np.float64)))
    scale = float(np.linalg.norm(np.asarray(official, np.float64)))
    return diff / scale if scale > 0 else diff


def compare_data(ours: dict, official: dict) -> dict:
    """fql.py's transitions against the official training dataset, key by key: shapes, largest |difference|, and how
    many entries differ at all."""
    out = {}
    for key in DATA_KEYS:
        x, y = np.asarray(ours[key]), np.asarray(official[key])
        if x.shape != y.shape:
            out[key] = {"shape": [list(x.shape), list(y.shape)]}
            continue
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        out[key] = {"shape": list(x.shape), "max_abs": float(d.max(initial=0.0)), "differ": int((d > 0).sum())}
    return out


def data_lines(result: dict) -> list:
    lines = ["dataset: fql.py's loader against the official envs/env_utils.py (main.py's training data)"]
    for key, r in result.items():
        if "max_abs" not in r:
            lines.append(f"  {key:17s} SHAPES DIFFER: ours {r['shape'][0]}, official {r['shape'][1]}")
        else:
            n = int(np.prod(r["shape"]))
            lines.append(f"  {key:17s} {tuple(r['shape'])}: " + ("identical" if r["differ"] == 0 else
                         f"{r['differ']} of {n} entries differ, largest |difference| {r['max_abs']:.2e}"))
    return lines


def compare(fql, official: dict, batches: dict, a, polyak_first: bool = False) -> dict:
    """fql.py's side of every update, from the official initial weights and noise; the table as a dict.

    polyak_first: the Polyak update before Adam's step (the official order, fql.py's since 2026-12-03), else after it."""
    obs_dim, act_dim = batches["observations"].shape[-1], batches["actions"].shape[-1]
    modules = fql_modules(fql, obs_dim, act_dim, a.hidden_dim, a.num_layers)
    official_to_ours(official, "init/", fql, modules, a.num_layers)
    modules["target_critic"].requires_grad_(False)
    params = trained(modules)
    optimizer = torch.optim.Adam(params, lr=3e-4, foreach=True)  # fql.py's default learning rate and CPU Adam
    critic_params, target_params = list(modules["critic"].parameters()), list(modules["target_critic"].parameters())
    tau, steps = 0.005, batches["observations"].shape[0]
    terms = {"critic_loss": "critic/critic_loss", "bc_flow_loss": "actor/bc_flow_loss",
             "distill_loss": "actor/distill_loss", "q_loss": "actor/q_loss", "q_mean": "critic/q_mean"}
    worst = {name: (0.0, 0) for name in terms}
    result = {}
    for k in range(steps):
        b = {key: torch.as_tensor(batches[key][k]) for key in ("observations", "actions", "rewards", "masks", "next_observations")}
        n = {name: official[f"noise/{k}/{name}"] for name in ("next_z", "x_0", "t", "z")}
        with recorded_noise([n["next_z"], n["x_0"], n["z"]], [n["t"]]):  # fql.py's order of draws in `update`
            loss_critic, q = fql.critic_loss(modules["critic"], modules["target_critic"], modules["actor_onestep_flow"], b,
                                             a.gamma, a.q_agg)
            loss_bc_flow = fql.bc_flow_loss(modules["actor_bc_flow"], b["observations"], b["actions"])
            loss_distill, loss_q = fql.onestep_losses(modules["actor_onestep_flow"], modules["actor_bc_flow"], modules["critic"],
                                                      b["observations"], act_dim, 10, False)
        loss = loss_critic + loss_bc_flow + a.alpha * loss_distill + loss_q  # fql.py's update, term by term
        ours = {"critic_loss": loss_critic, "bc_flow_loss": loss_bc_flow, "distill_loss": loss_distill, "q_loss": loss_q,
                "q_mean": q.mean()}
        for name, key in terms.items():
            r = rel(ours[name].item(), official[f"info/{k}/{key}"])
            if r >= worst[name][0]:
                worst[name] = (r, k + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if k == 0:
            result["grad"] = {key: rel(v, official[f"grad/{key}"]) for key, v in ours_as_official(fql, modules, True).items()}
        if polyak_first:  # agents/fql.py, fql.py: target <- tau * critic (before the step) + (1 - tau) * target
            with torch.no_grad():
                torch._foreach_lerp_(target_params, critic_params, tau)
        optimizer.step()
        if not polyak_first:  # fql.py before 2026-12-03: the same, after the step
            with torch.no_grad():
                torch._foreach_lerp_(target_params, critic_params, tau)
        if k == 0 or k == steps - 1:
            now = ours_as_official(fql, modules)
            result["after1" if k == 0 else "after_last"] = {key: rel(v, official[f"after{k + 1}/{key}"]) for key, v in now.items()}
    result["losses"] = {name: {"worst_rel": w, "at_step": s} for name, (w, s) in worst.items()}
    return result


# Where the Polyak update sits: before Adam's step (agents/fql.py, and fql.py since 2026-12-03, when this check found
# the difference) or after it (fql.py before)
ORDERS = {"agents/fql.py and fql.py": True, "fql.py before 2026-12-03": False}


def summary(results: dict, steps: int) -> list:
    """The printed table, one block per Polyak order (results: order name -> compare's dict), worst tensor named."""
    def worst(group: dict, keep=lambda k: True) -> str:
        items = [(v, k) for k, v in group.items() if keep(k)]
        v, k = max(items)
        return f"{v:.2e} ({k}; {len(items)} tensors)"

    lines = []
    for order, result in results.items():
        where = "before" if ORDERS[order] else "after"
        lines.append(f"Polyak update {where} Adam's step (as {order}):")
        lines.append("  loss terms, every step: relative difference, worst step")
        for name, w in result["losses"].items():
            lines.append(f"    {name:13s} {w['worst_rel']:.2e} (step {w['at_step']})")
        lines.append(f"  gradients at step 1, worst tensor: {worst(result['grad'])}")
        for tag, label in (("after1", "after step 1"), ("after_last", f"after step {steps}")):
            lines.append(f"  parameters {label}, worst trained tensor: {worst(result[tag], lambda k: 'target' not in k)}")
            lines.append(f"    target critic: {worst(result[tag], lambda k: 'target' in k)}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(p)
    p.add_argument("--work-dir", default="/tmp/parity-step", help="batches and the official side's output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="updates compared")
    add_run_args(p)
    p.add_argument("--json", help="also write the comparison here")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1 or a.hidden_dim < 1 or a.num_layers < 1:
        raise CheckError("--steps, --batch-size, --hidden-dim and --num-layers must be >= 1")
    check_official(a, "agents/fql.py")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    import fql

    data = load_data(fql, a)
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # the batches below come from fql.py's loader: first, that it reads what the official main.py trains on
    from parity import ogbench_home

    run_official(a, DATA_DRIVER, "data_driver.py", dict(task=a.task, out=str(work / "official_data.npz"), keys=DATA_KEYS),
                 dict(ONE_THREAD_JAX, HOME=str(ogbench_home(work, a.data_dir)), MUJOCO_GL="egl"))
    with np.load(work / "official_data.npz") as f:
        data_result = compare_data(data.transitions, f)
    rng = np.random.default_rng(a.seed)
    n = len(data.transitions["rewards"])
    idx = rng.integers(0, n, size=(a.steps, a.batch_size))
    batches = {k: v[idx].astype(np.float32) for k, v in data.transitions.items()}
    np.savez(work / "batches.npz", **batches)
    settings = dict(batches=str(work / "batches.npz"), out=str(work / "official.npz"), seed=a.seed, alpha=a.alpha,
                    gamma=a.gamma, q_agg=a.q_agg, hidden_dim=a.hidden_dim, num_layers=a.num_layers, batch_size=a.batch_size)
    run_official(a, OFFICIAL_DRIVER, "official_driver.py", settings)
    with np.load(work / "official.npz") as f:
        official = dict(f)
    result = {order: compare(fql, official, batches, a, polyak_first) for order, polyak_first in ORDERS.items()}
    print(f"fql.py vs official FQL on {a.task}: {a.steps} updates, batch {a.batch_size}, {a.hidden_dim}x{a.num_layers}, "
          f"alpha {a.alpha:g}, seed {a.seed}")
    print("\n".join(data_lines(data_result) + summary(result, a.steps)))
    if a.json:
        Path(a.json).write_text(json.dumps({"data": data_result, **result}, indent=1))
    return {"data": data_result, **result}


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
