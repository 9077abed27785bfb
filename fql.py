"""Flow Q-Learning (FQL).

Paper: "Flow Q-Learning", Seohong Park, Qiyang Li, Sergey Levine, ICML 2025, arXiv:2502.02538.
Official code (JAX): https://github.com/seohongpark/fql

Idea. An expressive flow policy cloned from the data is hard to steer with a critic, because the
gradient of Q would have to be backpropagated through the whole iterative sampler. FQL sidesteps
that with three networks trained together:
  * a BC flow policy v_theta(s, x_t, t), trained by flow matching on dataset actions (Eq. 5);
  * a one-step policy mu_omega(s, z) that maps noise straight to an action; it maximises Q while
    being distilled towards the BC flow's Euler sample mu_theta(s, z) for the SAME noise z (Eq. 7);
    the distillation loss upper-bounds the squared W2 distance between the two policies (Eq. 8);
  * an ensemble of 2 critics Q_phi(s, a) with a Polyak target, bootstrapped with mu_omega (Eq. 6).
The deployed policy is the one-step policy: one network call per action. alpha weighs the
distillation term; it is the one hyper-parameter to tune per task.

This file implements FQL offline and offline->online. It follows the official agents/fql.py and
utils/networks.py (read at seohongpark/fql@719d044): the three losses, their stop-gradients (no gradient
into the BC flow from distillation, the Q term trains mu_omega through the action only), Q of the actor
loss always the ensemble mean, `--q-agg` only in the TD target, `--normalize-q-loss`, the networks and
their initialisation (tanh-approximate GELU and LayerNorm epsilon 1e-6, flax's defaults) and one Adam over
all networks. Offline->online (`--online-steps N`) appends the environment's transitions to the same
buffer and keeps the same objective, as in the paper.

Behaviour worth knowing (docs/fql.md, "Implementation details"):
  * per-task settings: `--alpha`, `--gamma`, `--q-agg`, `--total-steps` left unset take the paper's values
    for --env-id (TASK_SETTINGS, from the official README's command lines), else generic defaults;
  * OGBench envs are built with success_timing='post', the step semantics of ogbench 1.1.0 that the official
    code pins (ogbench >= 1.2 defaults to 'pre'); D4RL antmaze rewards are shifted {0,1} -> {-1,0} on the
    dataset and online, by one function, for the names the official code shifts;
  * the online env is seeded at its first reset only; evaluation seeds episode k (env reset and policy
    noise) with 10000 * seed + k, so its metrics do not depend on `--eval-envs`;
  * a Minari id that is not local fails fast, in one line, when the Hugging Face hub is unreachable.
  * `--compile` runs the whole update through torch.compile, `--cudagraphs` (CUDA only) also replays it as a CUDA
    graph; eager is the default and the reference (docs/fql.md, "Speed options").

Differences from the official code, all deliberate:
  * datasets come from Minari (ids, local dirs, the embedded `flowrl/...` datasets) or OGBench; D4RL comes
    from Minari's re-releases instead of d4rl.qlearning_dataset; Box actions are rescaled to [-1, 1] and the
    env's actions are rescaled back at the boundary;
  * evaluation runs `--eval-envs` envs side by side with seeded episodes (official: one env, unseeded
    resets, noise keys drawn from numpy's global RNG) and does not evaluate at step 1; the BC flow is
    evaluated too (`eval/bc_flow_*`), as the in-run behaviour-cloning baseline;
  * the online env's first reset is seeded (official: no reset is seeded);
  * no image encoders (state-based tasks only; image observations are rejected with an error), no
    validation-set losses, TensorBoard instead of wandb/CSV.

Bad input (a flag out of range: check_args; an unreadable or malformed dataset file; a bad --checkpoint:
load_checkpoint) ends the run before any training with one `error: ...` line and exit 1; see docs/fql.md.

Usage:
  python fql.py --alpha 0.3 --total-steps 10000 --hidden-dim 256 --num-layers 3   # embedded Reacher, CPU, minutes
  python fql.py --env-id cube-single-play-singletask-task2-v0                      # OGBench, paper setting (alpha 300)
  python fql.py --env-id D4RL/antmaze/large-play-v1                                # Minari id (alpha 3, 500k steps)
  python fql.py --env-id scene-play-singletask-task2-v0 --online-steps 1000000     # offline -> online
See docs/fql.md for the paper <-> code map, logged metrics and results.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True` and deterministic algorithms"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    env_id: str = "flowrl/reacher/mixed-v0"
    """dataset: a local Minari dataset dir, an embedded id (datasets/), an OGBench dataset name or a Minari id"""
    ogbench_dataset_dir: str = "~/.ogbench/data"
    """where OGBench datasets are read from (downloaded there when missing)"""
    total_steps: Optional[int] = None
    """offline gradient steps (default: the paper's for --env-id, see TASK_SETTINGS; else 1_000_000)"""
    online_steps: int = 0
    """environment steps of online fine-tuning after the offline phase (one update per step)"""
    batch_size: int = 256
    """the batch size of each gradient step"""
    learning_rate: float = 3e-4
    """the learning rate of the (single) Adam optimizer"""
    gamma: Optional[float] = None
    """the discount factor (default: the paper's for --env-id, see TASK_SETTINGS; else 0.99)"""
    tau: float = 0.005
    """target critic Polyak rate"""
    hidden_dim: int = 512
    """width of every MLP"""
    num_layers: int = 4
    """hidden layers of every MLP"""
    eval_freq: int = 100_000
    """evaluate every this many gradient steps (and at the end)"""
    eval_episodes: int = 50
    """episodes per evaluation"""
    eval_envs: int = 6
    """environments evaluated in parallel, one batched policy call per step; each OGBench manipulation env holds ~150 MB"""
    eval_bc_flow: bool = True
    """also evaluate the BC flow policy (the in-run behaviour-cloning baseline)"""
    log_freq: int = 5000
    """log losses every this many gradient steps (the only host syncs of the loop)"""
    save_model: bool = False
    """save a checkpoint at every evaluation (runs/<run>/<exp_name>.pt)"""
    checkpoint: Optional[str] = None
    """load the networks (and optimizer) from this checkpoint before training"""
    compile: bool = False
    """torch.compile the update step"""
    cudagraphs: bool = False
    """replay the update as a CUDA graph (implies --compile; CUDA only)"""

    # Algorithm specific arguments
    flow_steps: int = 10
    """Euler steps of the BC flow (distillation target, evaluation)"""
    alpha: Optional[float] = None
    """weight of the distillation loss (default: the paper's for --env-id, see TASK_SETTINGS; else 10.0)"""
    q_agg: Optional[Literal["mean", "min"]] = None
    """how the target critics are aggregated in the TD target (default: the paper's for --env-id; else mean)"""
    normalize_q_loss: bool = False
    """divide the Q loss by the (detached) mean |Q|, as the official code's option"""
    num_critics: int = 2
    """size of the critic ensemble"""


# Per-task settings of the paper's FQL runs: the official README's "exact command-line flags"
# (seohongpark/fql@719d044 README.md, "Reproducing the main results"; --agent.alpha, --agent.discount,
# --agent.q_agg and --offline_steps; every other flag there is the official default = our generic default).
# pattern -> (paper row, offline settings, offline->online settings or None). A row matches when its
# pattern is a substring of --env-id; the longest matching pattern wins (so "visual-cube-double-play" beats
# "cube-double-play"). OGBench patterns cover the 5 tasks of a dataset and its default-task name (e.g.
# cube-single-play-singletask-v0 = task2); the offline->online values come from the README's default-task
# commands and are applied to every task of that dataset (the paper likewise reuses the default task's alpha
# for the other four). D4RL rows match the Minari re-releases (D4RL/antmaze/*-v1 for D4RL antmaze-*-v2,
# D4RL/<hand>/*-v2 for Adroit <hand>-*-v1). With --online-steps > 0 the online dict updates the offline
# one; a task without an online row keeps its offline values. The README's offline->online commands set no
# --offline_steps, so those runs use 1M offline steps even on D4RL (offline-only D4RL runs use 500k).
GENERIC_SETTINGS = dict(alpha=10.0, gamma=0.99, q_agg="mean", total_steps=1_000_000)  # official agents/fql.py, main.py
_500K, _1M = dict(total_steps=500_000), dict(total_steps=1_000_000)  # README --offline_steps (offline D4RL, pixels: 500k)
TASK_SETTINGS = {
    # OGBench, state-based (README "FQL on state-based OGBench (all tasks)", "Offline-to-online RL")
    "antmaze-large-navigate": ("antmaze-large", dict(alpha=10.0, q_agg="min"), None),
    "antmaze-giant-navigate": ("antmaze-giant", dict(alpha=10.0, q_agg="min", gamma=0.995), None),
    "humanoidmaze-medium-navigate": ("humanoidmaze-medium", dict(alpha=30.0, gamma=0.995), dict(alpha=100.0)),
    "humanoidmaze-large-navigate": ("humanoidmaze-large", dict(alpha=30.0, gamma=0.995), None),
    "antsoccer-arena-navigate": ("antsoccer-arena", dict(alpha=10.0, gamma=0.995), dict(alpha=30.0)),
    "cube-single-play": ("cube-single", dict(alpha=300.0), None),
    "cube-double-play": ("cube-double", dict(alpha=300.0), dict(alpha=300.0)),
    "scene-play": ("scene", dict(alpha=300.0), dict(alpha=300.0)),
    "puzzle-3x3-play": ("puzzle-3x3", dict(alpha=1000.0), None),
    "puzzle-4x4-play": ("puzzle-4x4", dict(alpha=1000.0), dict(alpha=1000.0)),
    # OGBench, pixel-based (README "FQL on pixel-based OGBench"): fql.py rejects image observations; the rows
    # are here so that these names do not fall on the state rows above
    "visual-cube-single-play": ("visual-cube-single", dict(alpha=300.0, **_500K), None),
    "visual-cube-double-play": ("visual-cube-double", dict(alpha=100.0, **_500K), None),
    "visual-scene-play": ("visual-scene", dict(alpha=100.0, **_500K), None),
    "visual-puzzle-3x3-play": ("visual-puzzle-3x3", dict(alpha=300.0, **_500K), None),
    "visual-puzzle-4x4-play": ("visual-puzzle-4x4", dict(alpha=300.0, **_500K), None),
    # D4RL antmaze (README "FQL on D4RL", "Offline-to-online RL")
    "D4RL/antmaze/umaze-v": ("antmaze-umaze", dict(alpha=10.0, **_500K), dict(alpha=10.0, **_1M)),
    "D4RL/antmaze/umaze-diverse-v": ("antmaze-umaze-diverse", dict(alpha=10.0, **_500K), dict(alpha=10.0, **_1M)),
    "D4RL/antmaze/medium-play-v": ("antmaze-medium-play", dict(alpha=10.0, **_500K), dict(alpha=10.0, **_1M)),
    "D4RL/antmaze/medium-diverse-v": ("antmaze-medium-diverse", dict(alpha=10.0, **_500K), dict(alpha=10.0, **_1M)),
    "D4RL/antmaze/large-play-v": ("antmaze-large-play", dict(alpha=3.0, **_500K), dict(alpha=3.0, **_1M)),
    "D4RL/antmaze/large-diverse-v": ("antmaze-large-diverse", dict(alpha=3.0, **_500K), dict(alpha=3.0, **_1M)),
    # D4RL Adroit, all with clipped double Q (README "FQL on D4RL", "Offline-to-online RL"; the paper's Table 6 is
    # reported to list lower alphas for door, hammer and relocate: the README's are the flags of the reported runs)
    "D4RL/pen/human-v": ("pen-human", dict(alpha=10000.0, q_agg="min", **_500K), None),
    "D4RL/pen/cloned-v": ("pen-cloned", dict(alpha=10000.0, q_agg="min", **_500K), dict(alpha=1000.0, **_1M)),
    "D4RL/pen/expert-v": ("pen-expert", dict(alpha=3000.0, q_agg="min", **_500K), None),
    "D4RL/door/human-v": ("door-human", dict(alpha=30000.0, q_agg="min", **_500K), None),
    "D4RL/door/cloned-v": ("door-cloned", dict(alpha=30000.0, q_agg="min", **_500K), dict(alpha=1000.0, **_1M)),
    "D4RL/door/expert-v": ("door-expert", dict(alpha=30000.0, q_agg="min", **_500K), None),
    "D4RL/hammer/human-v": ("hammer-human", dict(alpha=30000.0, q_agg="min", **_500K), None),
    "D4RL/hammer/cloned-v": ("hammer-cloned", dict(alpha=10000.0, q_agg="min", **_500K), dict(alpha=1000.0, **_1M)),
    "D4RL/hammer/expert-v": ("hammer-expert", dict(alpha=30000.0, q_agg="min", **_500K), None),
    "D4RL/relocate/human-v": ("relocate-human", dict(alpha=10000.0, q_agg="min", **_500K), None),
    "D4RL/relocate/cloned-v": ("relocate-cloned", dict(alpha=30000.0, q_agg="min", **_500K), dict(alpha=10000.0, **_1M)),
    "D4RL/relocate/expert-v": ("relocate-expert", dict(alpha=30000.0, q_agg="min", **_500K), None),
}


def resolve_task_settings(args: Args) -> Args:
    """A copy of `args` with every per-task field left at None filled from TASK_SETTINGS (else GENERIC_SETTINGS).

    An explicit flag always wins. Prints the resolved values in one line."""
    matches = [pattern for pattern in TASK_SETTINGS if pattern in args.env_id]
    values = dict(GENERIC_SETTINGS)
    if matches:
        row, offline, online = TASK_SETTINGS[max(matches, key=len)]
        values.update(offline)
        if args.online_steps > 0 and online is not None:
            values.update(online)
            row += " offline->online"
        source = f"paper row {row!r}"
    else:
        source = "not a paper task: generic defaults"
    explicit = [k for k in values if getattr(args, k) is not None]
    values.update({k: getattr(args, k) for k in explicit})
    print(f"task settings for {args.env_id} ({source}): " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                                       for k, v in values.items())
          + (f" [{', '.join(explicit)} set by flag]" if explicit else ""), flush=True)
    return replace(args, **values)


# ---------------------------------------------------------------------------------------------
# Bad input: one line (`error: <message>`) and exit 1, caught before any work
# ---------------------------------------------------------------------------------------------
class DatasetError(ValueError):
    """A bad --env-id, or a dataset file that is missing, unreadable or malformed; one line, exit 1."""


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not fql's, made for other networks or past the budget; one line, exit 1."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (DatasetError, ArgumentError, CheckpointError, NonFiniteLossError)  # __main__: `error: <message>`, exit 1


def check_args(args: Args) -> None:
    """Every flag checked once, on the resolved per-task values, before any work: the first value outside its range
    raises ArgumentError (`--flag must be <rule> (got <value>)`)."""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    finite = math.isfinite
    # generic (torch_deterministic, cuda, eval_bc_flow, save_model, compile: booleans, any value is fine)
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                                                                   "torch.cuda.is_available() is False") + ")")
    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")
    need(0 <= args.seed < 2**32, "seed", "in [0, 2**32) (numpy's seed range)")
    need(args.env_id.strip() != "", "env_id", "a dataset (a folder, an embedded id, an OGBench name or a Minari id)")
    need(args.ogbench_dataset_dir.strip() != "", "ogbench_dataset_dir", "a folder")
    need(args.total_steps >= 0, "total_steps", ">= 0")
    need(args.online_steps >= 0, "online_steps", ">= 0")
    need(args.batch_size >= 1, "batch_size", ">= 1")
    need(finite(args.learning_rate) and args.learning_rate > 0, "learning_rate", "finite and > 0")
    need(finite(args.gamma) and 0 < args.gamma <= 1, "gamma", "in (0, 1]")
    need(finite(args.tau) and 0 < args.tau <= 1, "tau", "in (0, 1]")
    need(args.hidden_dim >= 1, "hidden_dim", ">= 1")
    need(args.num_layers >= 1, "num_layers", ">= 1")
    need(args.eval_freq >= 1, "eval_freq", ">= 1")
    need(args.eval_episodes >= 1, "eval_episodes", ">= 1")
    need(args.eval_envs >= 1, "eval_envs", ">= 1")
    need(args.log_freq >= 1, "log_freq", ">= 1")
    need(args.checkpoint != "", "checkpoint", "a path")  # the file itself is checked by load_checkpoint
    # algorithm (normalize_q_loss: a boolean, any value is fine)
    need(args.flow_steps >= 1, "flow_steps", ">= 1")
    need(finite(args.alpha) and args.alpha >= 0, "alpha", "finite and >= 0 (0: no distillation)")
    need(args.q_agg in ("mean", "min"), "q_agg", "mean or min")
    need(args.num_critics >= 1, "num_critics", ">= 1")


# ---------------------------------------------------------------------------------------------
# Networks (official utils/networks.py: GELU, LayerNorm after the activation in the critic only,
# Glorot-uniform kernels, zero biases; time t enters the velocity field as a raw scalar). flax's nn.gelu is
# jax.nn.gelu, whose default is the tanh approximation, and flax's LayerNorm has epsilon 1e-6: fql.py uses both.
# ---------------------------------------------------------------------------------------------
LAYER_NORM_EPS = 1e-6


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    layers, dim = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh")]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class VectorField(nn.Module):
    """BC flow policy v_theta(s, x_t, t) -> velocity."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + 1, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, x_t, t], dim=-1))


class OneStepPolicy(nn.Module):
    """One-step policy mu_omega(s, z) -> action (unbounded; clipped where it is used)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, z], dim=-1))


class EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, B, in) -> (K, B, out)."""

    def __init__(self, num: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num, 1, out_dim))
        bound = math.sqrt(6.0 / (in_dim + out_dim))  # Glorot uniform, per member
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with a separate affine transform per ensemble member."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS) * self.weight + self.bias


class Critic(nn.Module):
    """Ensemble of K critics Q_phi_k(s, a) -> (K, B); MLP with GELU then LayerNorm per hidden layer."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int, num_critics: int):
        super().__init__()
        self.num_critics = num_critics
        layers, dim = [], obs_dim + act_dim
        for _ in range(num_layers):
            layers += [EnsembleLinear(num_critics, dim, hidden_dim), nn.GELU(approximate="tanh"),
                       EnsembleLayerNorm(num_critics, hidden_dim)]
            dim = hidden_dim
        layers.append(EnsembleLinear(num_critics, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1).expand(self.num_critics, -1, -1)
        return self.net(x).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Sampler: Euler integration of the BC flow from noise z (Algorithm 1: z_{k+1} = z_k + v(k/M)/M)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_bc_flow(actor_bc_flow: VectorField, obs: torch.Tensor, z: torch.Tensor, flow_steps: int) -> torch.Tensor:
    x, dt = z, 1.0 / flow_steps
    for i in range(flow_steps):
        t = torch.full_like(x[:, :1], i * dt)
        x = x + dt * actor_bc_flow(obs, x, t)
    return x.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Losses (FQL paper Algorithm 1; official agents/fql.py)
# ---------------------------------------------------------------------------------------------
# --compile: noise is drawn with torch.randn(shape), not torch.randn_like(x): AOT autograd's CSE (torch 2.13) does not
# count randn_like as random and merges two randn_like calls on the same tensor into ONE draw where randn_like is not
# decomposed first (the aot_eager backend; inductor with fallback_random, which tests/test_compile.py sets to match
# eager's random numbers; inductor's default decomposes it to randn). Eager draws the same numbers either way
def critic_loss(critic: Critic, target_critic: Critic, actor_onestep_flow: OneStepPolicy, batch: dict,
                gamma: float, q_agg: str) -> tuple:
    """Eq. (6): E[(Q_phi(s, a) - r - gamma * mask * Qbar(s', clip(mu_omega(s', z))))^2], mean over the ensemble."""
    with torch.no_grad():
        next_obs = batch["next_observations"]
        z = torch.randn(batch["actions"].shape, device=next_obs.device)
        next_actions = actor_onestep_flow(next_obs, z).clamp(-1.0, 1.0)
        next_qs = target_critic(next_obs, next_actions)
        next_q = next_qs.mean(0) if q_agg == "mean" else next_qs.min(0).values
        target_q = batch["rewards"] + gamma * batch["masks"] * next_q
    q = critic(batch["observations"], batch["actions"])
    return F.mse_loss(q, target_q.expand_as(q)), q


def bc_flow_loss(actor_bc_flow: VectorField, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Eq. (5), flow matching with the linear path x_t = (1 - t) x_0 + t x_1, x_1 = a, target v = x_1 - x_0."""
    x_0 = torch.randn(actions.shape, device=actions.device)
    t = torch.rand_like(actions[:, :1])
    x_t = (1.0 - t) * x_0 + t * actions
    return F.mse_loss(actor_bc_flow(obs, x_t, t), actions - x_0)


def onestep_losses(actor_onestep_flow: OneStepPolicy, actor_bc_flow: VectorField, critic: Critic, obs: torch.Tensor,
                   act_dim: int, flow_steps: int, normalize_q_loss: bool) -> tuple:
    """Eq. (7): -Q(s, mu_omega(s, z)) + alpha * ||mu_omega(s, z) - mu_theta(s, z)||^2 (alpha applied by the caller).

    The distillation target mu_theta(s, z) is the BC flow's Euler sample with the same z and carries
    no gradient. The critic's parameters are used detached (functional_call), so the Q term trains
    mu_omega through the action only, as in the official code.
    """
    z = torch.randn(obs.shape[0], act_dim, device=obs.device)
    target_actions = sample_bc_flow(actor_bc_flow, obs, z, flow_steps)
    actions = actor_onestep_flow(obs, z)
    distill_loss = F.mse_loss(actions, target_actions)
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    q = torch.func.functional_call(critic, frozen, (obs, actions.clamp(-1.0, 1.0))).mean(0)
    q_loss = -q.mean()
    if normalize_q_loss:
        q_loss = q_loss / q.abs().mean().detach()
    return distill_loss, q_loss


# ---------------------------------------------------------------------------------------------
# Data: datasets, replay buffer, environments, evaluation
# ---------------------------------------------------------------------------------------------
ACTION_CLIP = 1.0 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5) as in the official code


def flatten_obs(space: gym.Space, obs) -> np.ndarray:
    """Flatten (a batch of) observations of a Box or Dict space to float32 (batch, dim) in `space`'s key order."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_obs(s, obs[k]) for k, s in space.spaces.items()], axis=-1)
    obs = np.asarray(obs, dtype=np.float32)
    return obs.reshape(*obs.shape[: obs.ndim - len(space.shape)], -1)


def check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(f"FQL needs a continuous 1-D Box action space; this dataset has {act_space}")
    if not np.all(np.isfinite(act_space.low)) or not np.all(np.isfinite(act_space.high)):
        raise DatasetError(f"FQL needs a bounded action space to rescale to [-1, 1]; got {act_space}")
    spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    for space in spaces:
        if not isinstance(space, gym.spaces.Box) or len(space.shape) > 1:
            raise DatasetError(f"FQL handles flat Box (or Dict of flat Box) observations; got {obs_space}")


class OfflineData:
    """Transitions of an offline dataset as float32 arrays, with the means to evaluate on its env."""

    def __init__(self, transitions: dict, make_env: Callable[[], gym.Env], flatten: Callable, score: Callable):
        self.transitions = transitions  # observations, actions, rewards, masks, next_observations
        self.make_env = make_env  # -> env with actions in [-1, 1]
        self.flatten = flatten  # env observation(s) -> float32 (batch, obs_dim)
        self.score = score  # episode returns -> normalized score x100 (or None)


def is_d4rl_antmaze(env_id: str) -> bool:
    """The names whose rewards the official code shifts: envs/env_utils.py's D4RL antmaze branch (offline,
    reached only by non-OGBench names) and main.py's online test, both 'antmaze' and one of diverse/play/umaze."""
    return "antmaze" in env_id and any(k in env_id for k in ("diverse", "play", "umaze")) and "singletask" not in env_id


def transform_reward(env_id: str, reward):
    """D4RL antmaze: sparse {0, 1} -> {-1, 0} (official envs/d4rl_utils.py get_dataset offline, main.py online).

    Used on the dataset's rewards and on every online reward before it enters the buffer."""
    return reward - 1.0 if is_d4rl_antmaze(env_id) else reward


def to_unit_box(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    return np.clip(2.0 * (actions - low) / (high - low) - 1.0, -ACTION_CLIP, ACTION_CLIP).astype(np.float32)


def unit_box_env(env: gym.Env) -> gym.Env:
    space = env.action_space
    if np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0):
        return env
    return gym.wrappers.RescaleAction(env, -1.0, 1.0)


def one_line(e: BaseException) -> str:
    """An exception as `Type: message` on one line (h5py, torch and gymnasium messages can span several)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def open_minari(data_dir: Path):
    """minari.MinariDataset of a dataset folder (the one holding metadata.json and main_data.hdf5). A missing, empty
    or broken metadata.json, and a missing, empty, truncated or non-HDF5 main_data.hdf5, is one DatasetError line
    naming the file."""
    import json

    import minari

    meta_path = data_dir / "metadata.json"
    if not meta_path.is_file():
        raise DatasetError(f"Minari dataset {data_dir} has no metadata.json")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise DatasetError(f"{meta_path} is not valid JSON ({one_line(e)})") from None
    if not isinstance(metadata, dict):
        raise DatasetError(f"{meta_path} is not Minari metadata (it holds a JSON {type(metadata).__name__})")
    if metadata.get("data_format", "hdf5") == "hdf5":
        import h5py

        h5_path = data_dir / "main_data.hdf5"
        if not h5_path.is_file():
            raise DatasetError(f"Minari dataset {data_dir} has no main_data.hdf5")
        if h5_path.stat().st_size == 0:
            raise DatasetError(f"{h5_path} is empty")
        try:
            h5py.File(h5_path, "r").close()
        except OSError as e:  # h5py: file signature not found, truncated file, ...
            raise DatasetError(f"{h5_path} is not a readable HDF5 file (truncated or corrupted: {one_line(e)})") from None
    try:
        return minari.MinariDataset(data_dir)
    except Exception as e:  # a missing metadata entry, an unsupported Minari version, an unreadable space
        raise DatasetError(f"Minari dataset {data_dir} cannot be read ({one_line(e)})") from None


def load_minari(dataset, env_id: str, where: str = "") -> OfflineData:
    """Transitions of a Minari dataset. An episode that cannot be read (an entry missing from the file, e.g. no
    'actions') or whose arrays do not line up (T + 1 observations, T actions, rewards and terminations) is one
    DatasetError line naming the dataset (`where`: its folder) and the episode."""
    import minari

    where = where or repr(env_id)
    check_spaces(dataset.observation_space, dataset.action_space)
    obs_space, act_shape = dataset.observation_space, dataset.action_space.shape
    obs_dim = int(gym.spaces.flatdim(obs_space))
    parts = {k: [] for k in ("observations", "actions", "rewards", "terminations", "next_observations")}
    episodes, number = iter(dataset.iterate_episodes()), 0
    while True:
        try:
            episode = next(episodes)
            obs = flatten_obs(obs_space, episode.observations)
            actions = np.asarray(episode.actions, dtype=np.float32)
            rewards = np.asarray(episode.rewards, dtype=np.float32)
            terminations = np.asarray(episode.terminations, dtype=np.float32)
        except StopIteration:
            break
        except Exception as e:  # h5py KeyError for a missing entry, a short array, a Dict key that is not there
            raise DatasetError(f"Minari dataset {where}: episode {number} cannot be read ({one_line(e)})") from None
        steps = len(actions)
        if not (obs.ndim == 2 and len(obs) == steps + 1 and rewards.shape == (steps,) and terminations.shape == (steps,)):
            raise DatasetError(f"Minari dataset {where}: episode {number} has {len(obs)} observations, {steps} actions, "
                               f"{len(rewards)} rewards and {len(terminations)} terminations (needs T + 1, T, T, T)")
        if obs.shape[1] != obs_dim or actions.shape[1:] != act_shape:
            raise DatasetError(f"Minari dataset {where}: episode {number} has observations of size {obs.shape[1]} and "
                               f"actions of shape {actions.shape[1:]}; its spaces say {obs_dim} and {act_shape}")
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(actions)
        parts["rewards"].append(rewards)
        parts["terminations"].append(terminations)
        number += 1
    if not parts["actions"]:
        raise DatasetError(f"dataset {env_id!r} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["actions"] = to_unit_box(data["actions"], dataset.action_space)
    data["rewards"] = np.asarray(transform_reward(env_id, data["rewards"]), dtype=np.float32)
    data["masks"] = 1.0 - data.pop("terminations")  # bootstrap through truncations

    def make_env():
        try:
            return unit_box_env(dataset.recover_environment(eval_env=True))
        except Exception as e:  # a missing env package, an env id unknown to this gymnasium
            raise DatasetError(f"cannot recreate the evaluation env of {env_id!r}: {one_line(e)}") from e

    has_ref = dataset.storage.metadata.get("ref_min_score") is not None and dataset.storage.metadata.get("ref_max_score") is not None
    score = (lambda returns: 100.0 * minari.get_normalized_score(dataset, np.asarray(returns))) if has_ref else (lambda r: None)
    return OfflineData(data, make_env, lambda obs: flatten_obs(obs_space, obs), score)


# The official code pins ogbench==1.1.0 (requirements.txt@719d044), whose single-task envs compute success,
# terminated and reward AFTER the step; ogbench >= 1.2 registers them with success_timing='pre' (before the
# action). Every OGBench env built here gets 'post', so evaluation and online rewards are those of the paper's
# runs. The datasets' reward/mask labels (relabel_utils) are the same in both versions.
OGBENCH_ENV_KWARGS = dict(success_timing="post")


def ogbench_files(name: str, dataset_dir: str) -> list:
    """The train and validation .npz files ogbench.make_env_and_datasets reads for a singletask name (its own rule:
    `cube-single-play-singletask-task2-v0` -> `<dir>/cube-single-play-v0.npz` and `...-v0-val.npz`)."""
    splits = name.split("-")
    pos = splits.index("singletask")
    base = Path(os.path.expanduser(dataset_dir)) / "-".join(splits[:pos] + splits[-1:])
    return [base.with_name(base.name + ".npz"), base.with_name(base.name + "-val.npz")]


def check_npz(path: Path) -> None:
    """An OGBench dataset file that is empty, not a readable .npz (truncated, garbage) or lacks an entry is one line."""
    if path.is_dir():
        raise DatasetError(f"OGBench dataset file {path} is a directory")
    if path.stat().st_size == 0:
        raise DatasetError(f"OGBench dataset file {path} is empty")
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
    except Exception as e:  # EOFError, BadZipFile (truncated), ValueError (not an .npz: pickled data)
        raise DatasetError(f"OGBench dataset file {path} is not a readable .npz (truncated or corrupted: {one_line(e)})") from None
    missing = [k for k in ("observations", "actions", "terminals") if k not in keys]
    if missing:
        raise DatasetError(f"OGBench dataset file {path} has no {', '.join(repr(k) for k in missing)} (it holds "
                           f"{', '.join(sorted(keys)) or 'nothing'})")


def load_ogbench(name: str, dataset_dir: str) -> OfflineData:
    import ogbench

    if "singletask" not in name.split("-"):
        raise DatasetError(f"FQL needs a reward-labelled OGBench dataset (e.g. cube-single-play-singletask-task2-v0); got {name!r}")
    make_env = lambda: ogbench.make_env_and_datasets(name, env_only=True, **OGBENCH_ENV_KWARGS)  # noqa: E731
    env = make_env()  # an unknown task name fails here (load_offline_data reports it with what else it tried)
    files = ogbench_files(name, dataset_dir)
    for path in files:
        if path.exists():
            check_npz(path)
    try:  # ogbench downloads the files that are not there
        train, _ = ogbench.make_env_and_datasets(name, dataset_dir=os.path.expanduser(dataset_dir), dataset_only=True,
                                                 cur_env=env)
    except Exception as e:
        absent = [str(p) for p in files if not p.exists()]
        if absent:
            raise DatasetError(f"OGBench dataset file {' and '.join(absent)} is not there and could not be downloaded "
                               f"({one_line(e)}); put it in --ogbench-dataset-dir") from None
        raise DatasetError(f"OGBench dataset file {files[0]} (or {files[1].name}) cannot be read ({one_line(e)})") from None
    check_spaces(env.observation_space, env.action_space)
    data = {k: np.asarray(train[k], dtype=np.float32) for k in ("observations", "actions", "rewards", "masks", "next_observations")}
    data["actions"] = to_unit_box(data["actions"], env.action_space)
    env.close()
    return OfflineData(data, lambda: unit_box_env(make_env()), lambda obs: flatten_obs(env.observation_space, obs),
                       lambda r: None)


def download_minari(env_id: str):
    """minari.load_dataset(env_id, download=True), failing fast and in one line when the hub is unreachable.

    A dataset already under MINARI_DATASETS_PATH loads without the network. Otherwise the Hugging Face hub
    (HF_ENDPOINT, default https://huggingface.co) is probed once with a 5 s timeout before Minari is called:
    huggingface_hub retries a refused connection 5 times with back-off (~25 s and 12 log lines)."""
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    local = get_dataset_path(env_id)
    if not (local / "data").exists():
        hint = (f"point --env-id at a local Minari dataset folder, or put the dataset at {local} "
                f"(MINARI_DATASETS_PATH sets the root)")
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise DatasetError(f"Minari dataset {env_id!r} is not local and HF_HUB_OFFLINE is set; {hint}")
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        try:
            urllib.request.urlopen(endpoint, timeout=5).close()
        except urllib.error.HTTPError:
            pass  # the hub answered (any status): it is reachable
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DatasetError(f"cannot download Minari dataset {env_id!r}: the Hugging Face hub at {endpoint} "
                               f"is unreachable ({reason}); {hint}") from None
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # no retry chatter if the hub fails mid-way
    return minari.load_dataset(env_id, download=True)


def load_offline_data(env_id: str, ogbench_dataset_dir: str) -> OfflineData:
    """Resolve --env-id: a local Minari dataset dir, an embedded dataset, an OGBench name, a Minari id (already under
    MINARI_DATASETS_PATH, else downloaded). A dataset file that is found but cannot be read is one DatasetError line."""
    from minari.storage.datasets_root_dir import get_dataset_path

    tried = []
    for path in (Path(env_id), Path(__file__).resolve().parent / "datasets" / env_id):
        for data_dir in (path / "data", path):
            if (data_dir / "main_data.hdf5").exists() or (data_dir / "metadata.json").exists():
                return validated(load_minari(open_minari(data_dir), env_id, str(data_dir)), env_id)
        tried.append(f"no Minari dataset in {path}")
    if "/" not in env_id and env_id.endswith("-v0"):
        try:
            return validated(load_ogbench(env_id, ogbench_dataset_dir), env_id)
        except DatasetError:
            raise
        except Exception as e:
            tried.append(f"OGBench: {one_line(e)}")
    else:
        local = get_dataset_path(env_id) / "data"
        if local.exists():  # downloaded before: read (and check) the local copy
            return validated(load_minari(open_minari(local), env_id, str(local)), env_id)
        try:
            dataset = download_minari(env_id)
        except DatasetError as e:  # not local and the hub is off or unreachable: its own message, in one line
            raise DatasetError(f"cannot load --env-id {env_id!r}: {e}; list ids with `minari list remote`") from None
        except Exception as e:
            tried.append(f"Minari: {one_line(e)}")
        else:
            return validated(load_minari(dataset, env_id, str(local)), env_id)
    raise DatasetError(f"cannot load --env-id {env_id!r} ({'; '.join(tried)}). List ids with "
                       f"`minari list remote`, see datasets/ for the embedded ones, or pass an OGBench "
                       f"singletask name such as cube-single-play-singletask-task2-v0")


def validated(data: OfflineData, env_id: str) -> OfflineData:
    for key, array in data.transitions.items():
        bad = ~np.isfinite(array)
        if bad.any():
            raise DatasetError(f"dataset {env_id!r} has {int(bad.sum())} non-finite values in {key!r}")
    return data


class ReplayBuffer:
    """All transitions as tensors on `device`; offline data first, online transitions appended."""

    def __init__(self, transitions: dict, capacity: int, device: torch.device):
        self.size = len(transitions["rewards"])
        capacity = max(capacity, self.size)
        self.data = {}
        for key, array in transitions.items():
            tensor = torch.zeros((capacity,) + array.shape[1:], dtype=torch.float32, device=device)
            tensor[: self.size] = torch.as_tensor(array, device=device)
            self.data[key] = tensor

    def add(self, **transition) -> None:
        for key, value in transition.items():
            self.data[key][self.size] = torch.as_tensor(value, dtype=torch.float32)
        self.size += 1

    def sample(self, batch_size: int) -> dict:
        # capture: indices drawn on the device (the global CUDA RNG on a GPU), a static batch shape, no host sync
        idx = torch.randint(0, self.size, (batch_size,), device=self.data["rewards"].device)
        return {key: tensor[idx] for key, tensor in self.data.items()}


def evaluate(data: OfflineData, envs: list, policy: Callable, act_dim: int, episodes: int, seed: int,
             device: torch.device) -> dict:
    """Run `episodes` episodes on the `envs` in parallel, one batched call policy(obs, z) per step.

    Episode k resets its env with seed + k and draws its policy noise z from its own generator seeded with
    seed + k, so the metrics do not depend on how many envs run side by side (only float rounding of the
    batched network call can differ)."""
    returns, successes = [], []
    next_episode = 0
    obs, ep_return, active = [None] * len(envs), [0.0] * len(envs), [False] * len(envs)
    generators = [None] * len(envs)

    def start(i: int) -> None:
        nonlocal next_episode
        obs[i], _ = envs[i].reset(seed=seed + next_episode)
        generators[i] = torch.Generator().manual_seed(seed + next_episode)
        active[i], next_episode = True, next_episode + 1

    for i in range(len(envs)):
        if next_episode < episodes:
            start(i)
    while any(active):
        ids = [i for i in range(len(envs)) if active[i]]
        batch = torch.as_tensor(np.stack([data.flatten(obs[i]) for i in ids]), device=device)
        z = torch.stack([torch.randn(act_dim, generator=generators[i]) for i in ids]).to(device)
        actions = policy(batch, z).cpu().numpy()
        for i, action in zip(ids, actions):
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            ep_return[i] += float(reward)
            if terminated or truncated:
                returns.append(ep_return[i])
                if "success" in info:
                    successes.append(float(info["success"]))
                ep_return[i] = 0.0
                if next_episode < episodes:
                    start(i)
                else:
                    active[i] = False
    metrics = {"episodic_return": float(np.mean(returns)), "episodic_return_std": float(np.std(returns))}
    score = data.score(returns)
    if score is not None:
        metrics["normalized_score"] = float(np.mean(score))
        metrics["normalized_score_std"] = float(np.std(score))
    if successes:
        metrics["success"] = float(np.mean(successes))
    return metrics


def save_checkpoint(path: Path, modules: dict, optimizer: torch.optim.Optimizer, step: int, args: Args,
                    obs_dim: int, act_dim: int) -> None:
    """Atomic save: write a temporary file, then rename it over the previous checkpoint. The state records the script,
    the (resolved) args and the data's sizes, which load_checkpoint compares with the run that loads it."""
    state = {name: m.state_dict() for name, m in modules.items()}
    state.update(script="fql", optimizer=optimizer.state_dict(), step=step, args=asdict(args), obs_dim=obs_dim,
                 act_dim=act_dim)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


NETWORK_ARGS = ("hidden_dim", "num_layers", "num_critics")  # the shapes of the networks
# FQL has no variant flag: alpha, gamma, q_agg, flow_steps, normalize_q_loss and the learning rate change the training,
# not the networks, and may differ on purpose when a checkpoint is resumed (the README's offline->online alphas differ
# from the offline ones)
CHECKPOINT_ENTRIES = ("actor_bc_flow", "actor_onestep_flow", "critic", "target_critic", "optimizer", "step", "args")


def load_checkpoint(path: str, args: Args, modules: dict, optimizer: torch.optim.Optimizer, obs_dim: int,
                    act_dim: int, device: torch.device) -> int:
    """Load an fql checkpoint into `modules` and `optimizer`; returns its step. Every failure is one CheckpointError
    line: a missing, empty or unreadable file, a file of another script, other network sizes (each listed against the
    checkpoint's), data of other sizes, entries that do not load, a step past the budget (--total-steps +
    --online-steps). At exactly the budget the run evaluates only (a one-line notice)."""
    file = Path(path)
    if file.is_dir():
        raise CheckpointError(f"--checkpoint {path} is a directory, not a file")
    if not file.is_file():
        raise CheckpointError(f"--checkpoint {path} does not exist")
    if file.stat().st_size == 0:
        raise CheckpointError(f"--checkpoint {path} is empty")
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # garbage: UnpicklingError; truncated: RuntimeError (zip archive), EOFError, ...
        raise CheckpointError(f"--checkpoint {path} is not a readable torch file ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"--checkpoint {path} is not an fql checkpoint (it holds a {type(state).__name__})")
    if state.get("script", "fql") != "fql":  # checkpoints from before `script` was recorded are fql's if complete
        raise CheckpointError(f"--checkpoint {path} is not an fql checkpoint: it was saved by {state['script']}.py")
    missing = [k for k in CHECKPOINT_ENTRIES if k not in state]
    if missing or not isinstance(state["args"], dict):
        raise CheckpointError(f"--checkpoint {path} is not an fql checkpoint: it has no {', '.join(missing or ['args'])}")
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"
              for k in NETWORK_ARGS if k in saved and saved[k] != getattr(args, k)]
    if differ:
        raise CheckpointError(f"--checkpoint {path} was made with other settings: {', '.join(differ)}; pass the "
                              "checkpoint's values")
    if (state.get("obs_dim", obs_dim), state.get("act_dim", act_dim)) != (obs_dim, act_dim):
        raise CheckpointError(f"--checkpoint {path} was made for observations of size {state['obs_dim']} and actions of "
                              f"size {state['act_dim']} (--env-id {saved.get('env_id')}); this dataset has {obs_dim} "
                              f"and {act_dim}")
    step, total = state["step"], args.total_steps + args.online_steps
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"--checkpoint {path} has no valid step (step: {step!r})")
    if step > total:
        budget = f"--total-steps {args.total_steps}" + (f" + --online-steps {args.online_steps}" if args.online_steps else "")
        raise CheckpointError(f"--checkpoint {path} is at step {step}, past {budget}; pass a larger --total-steps"
                              + (" or --online-steps" if args.online_steps else ""))
    try:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # missing/unexpected entries, other shapes (a checkpoint from before obs_dim was saved)
        raise CheckpointError(f"--checkpoint {path}: its networks do not load ({one_line(e)})") from None
    if step == total:
        print(f"--checkpoint {path} is at step {step}, the budget: evaluating it, no training", flush=True)
    return step


def fresh_run_dir(run_name: str) -> Path:
    """runs/<run_name>, or runs/<run_name>_<k> when a run of the same name (same second) already has it: a run never
    writes into (or overwrites the checkpoint of) another run's directory."""
    run_dir, k = Path("runs") / run_name, 0
    while True:
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            k += 1
            run_dir = Path("runs") / f"{run_name}_{k}"


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict:
    args = resolve_task_settings(args)  # fills alpha, gamma, q_agg, total_steps left at None
    check_args(args)  # every flag, before any work
    if args.cudagraphs:  # CUDA graphs are torch.compile's "reduce-overhead" mode: --cudagraphs implies --compile
        args = replace(args, compile=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    data = load_offline_data(args.env_id, args.ogbench_dataset_dir)
    obs_dim = data.transitions["observations"].shape[1]
    act_dim = data.transitions["actions"].shape[1]
    buffer = ReplayBuffer(data.transitions, len(data.transitions["rewards"]) + args.online_steps, device)

    # networks: BC flow v_theta, one-step policy mu_omega, critic ensemble Q_phi (+ target)
    actor_bc_flow = VectorField(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    actor_onestep_flow = OneStepPolicy(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic.load_state_dict(critic.state_dict())
    target_critic.requires_grad_(False)
    modules = dict(actor_bc_flow=actor_bc_flow, actor_onestep_flow=actor_onestep_flow, critic=critic, target_critic=target_critic)
    params = [p for m in (actor_bc_flow, actor_onestep_flow, critic) for p in m.parameters()]
    # one Adam over all networks, as the official code (Adam is per-parameter: same as one per network)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, **({"fused": True} if device.type == "cuda" else {"foreach": True}),
                                 capturable=args.cudagraphs)  # capture: Adam's step counter lives on the device
    start_step = 0
    if args.checkpoint is not None:
        start_step = load_checkpoint(args.checkpoint, args, modules, optimizer, obs_dim, act_dim, device)

    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = fresh_run_dir(run_name)
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    critic_params, target_params = list(critic.parameters()), list(target_critic.parameters())

    def update(batch: dict) -> dict:
        """One gradient step: the losses, backward, the Polyak update, Adam, all in the (compiled) function."""
        loss_critic, q = critic_loss(critic, target_critic, actor_onestep_flow, batch, args.gamma, args.q_agg)
        loss_bc_flow = bc_flow_loss(actor_bc_flow, batch["observations"], batch["actions"])
        loss_distill, loss_q = onestep_losses(actor_onestep_flow, actor_bc_flow, critic, batch["observations"], act_dim,
                                              args.flow_steps, args.normalize_q_loss)
        loss = loss_critic + loss_bc_flow + args.alpha * loss_distill + loss_q
        # Polyak with the critic before this step, as agents/fql.py's target_update; taken here, once the target has been
        # used (under no_grad: backward needs none of it), so that it stays in the compiled graph of the forward
        with torch.no_grad():
            torch._foreach_lerp_(target_params, critic_params, args.tau)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"critic_loss": loss_critic.detach(), "bc_flow_loss": loss_bc_flow.detach(), "distill_loss": loss_distill.detach(),
                "q_loss": loss_q.detach(), "q_mean": q.detach().mean(), "total_loss": loss.detach()}

    if args.compile:
        # CUDA graphs via inductor's CUDA-graph trees ("reduce-overhead"), not tensordict: no extra dependency, one code
        # path with --compile. The update compiles to 3 graphs; the breaks are torch's own, none in this file: at
        # optimizer.zero_grad (never traced), loss.backward (AOT autograd compiles it with the forward) and around
        # optimizer.step (on purpose, pytorch#104053)
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    @torch.no_grad()
    def onestep_policy(obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The deployed policy: a = clip(mu_omega(s, z), -1, 1), z ~ N(0, I), one network call."""
        return actor_onestep_flow(obs, z).clamp(-1.0, 1.0)

    @torch.no_grad()
    def bc_flow_policy(obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return sample_bc_flow(actor_bc_flow, obs, z, args.flow_steps)

    eval_envs = [data.make_env() for _ in range(min(args.eval_episodes, args.eval_envs))]
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    total = args.total_steps + args.online_steps
    progress = Progress(total, start_step)
    online_env = data.make_env() if args.online_steps > 0 else None
    online_obs, episode_return, episode_length, episodes_done = None, 0.0, 0, 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    metrics: dict = {}
    logged: dict = {}  # the losses of the last log step, returned with the final evaluation
    t0, last_log_step = time.time(), start_step

    def run_evaluation(step: int) -> dict:
        """Same env seeds and policy noise at every evaluation, independent of the training RNG."""
        policies = {"": onestep_policy, "bc_flow_": bc_flow_policy} if args.eval_bc_flow else {"": onestep_policy}
        result = {}
        for prefix, policy in policies.items():
            metrics = evaluate(data, eval_envs, policy, act_dim, args.eval_episodes, 10_000 * args.seed, device)
            result.update({f"eval/{prefix}{k}": v for k, v in metrics.items()})
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        progress.write(f"step {step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in result.items() if not k.endswith("_std")))
        return result

    for step in range(start_step + 1, total + 1):
        if step > args.total_steps:  # online fine-tuning: one env step with the one-step policy, then one update
            if online_obs is None:  # seeded at the first reset only: later episodes draw new start states
                online_obs, _ = online_env.reset(seed=args.seed) if episodes_done == 0 else online_env.reset()
            obs_t = torch.as_tensor(data.flatten(online_obs)[None], device=device)
            action = onestep_policy(obs_t, torch.randn(1, act_dim, device=device))[0].cpu().numpy()
            next_obs, reward, terminated, truncated, info = online_env.step(action)
            buffer.add(observations=data.flatten(online_obs), actions=action, rewards=transform_reward(args.env_id, reward),
                       masks=1.0 - float(terminated), next_observations=data.flatten(next_obs))
            episode_return, episode_length = episode_return + float(reward), episode_length + 1
            online_obs = next_obs
            if terminated or truncated:
                writer.add_scalar("charts/episodic_return", episode_return, step)
                writer.add_scalar("charts/episodic_length", episode_length, step)
                if "success" in info:
                    writer.add_scalar("charts/success", float(info["success"]), step)
                online_obs, episode_return, episode_length = None, 0.0, 0
                episodes_done += 1

        if args.cudagraphs:  # capture: a new replay may overwrite the previous outputs (read below, before the next call)
            torch.compiler.cudagraph_mark_step_begin()
        losses = update(buffer.sample(args.batch_size))
        nonfinite |= ~torch.isfinite(losses["total_loss"])  # the NaN/inf guard: an eager op on a returned tensor

        log_now, eval_now = step % args.log_freq == 0 or step == total, step % args.eval_freq == 0 or step == total
        if (log_now or eval_now) and nonfinite.item():  # checked before anything is logged, evaluated or saved
            raise NonFiniteLossError(
                f"non-finite loss within steps {last_log_step + 1}..{step}; training stopped"
                + (f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))
        if log_now:
            sps = (step - last_log_step) / (time.time() - t0)
            logged = {f"losses/{k}": v.item() for k, v in losses.items()}
            for k, v in logged.items():
                writer.add_scalar(k, v, step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.update(step, sps=sps, critic=losses["critic_loss"].item(), q=losses["q_mean"].item(), **headline(metrics))
            t0, last_log_step = time.time(), step
        if eval_now:
            metrics = run_evaluation(step)
            if args.save_model:
                save_checkpoint(checkpoint_path, modules, optimizer, step, args, obs_dim, act_dim)
    if total == start_step:  # nothing to train (e.g. --total-steps 0 with a checkpoint): just evaluate
        metrics = run_evaluation(start_step)
    progress.close()
    writer.close()
    for env in eval_envs + ([online_env] if online_env else []):
        env.close()
    return {**metrics, **logged}


def headline(metrics: dict) -> dict:
    """The latest evaluation's main number, for the progress bar."""
    for key in ("eval/success", "eval/normalized_score", "eval/episodic_return"):
        if key in metrics:
            return {key.split("/")[1]: metrics[key]}
    return {}


class Progress:
    """tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, initial: int):
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True)
        self.total, self.last = total, initial

    def update(self, step: int, **postfix) -> None:
        text = {k: f"{v:.3g}" for k, v in postfix.items()}
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(text, refresh=False)
        else:
            print(f"step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in text.items()), flush=True)
        self.last = step

    def write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
