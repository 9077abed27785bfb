"""Q-learning with Adjoint Matching (QAM).

Paper: "Q-learning with Adjoint Matching", Qiyang Li, Sergey Levine, arXiv:2601.14234 (an ICLR 2026
submission, OpenReview vd4eNAdtO6, 18 Sep 2025). Official code (JAX): https://github.com/ColinQiyangLi/qam,
read at f93efd2 (agents/qam.py, main.py, evaluation.py, envs/, utils/datasets.py, experiments/reproduce.py).

Idea. A flow policy is expressive, but steering it with the critic's action gradient means
backpropagating through the whole sampling chain, which is unstable. QAM instead treats policy
improvement as reward fine-tuning of a generative model: the target policy is the behaviour policy
tilted by the critic, pi*(a|s) ~ pi_beta(a|s) exp(inv_temp * Q(s, a)), and adjoint matching
(Domingo-Enrich et al., 2025) turns that into a per-step regression. A BC flow b (the base field)
is cloned from the data; a second field f (the fine-tuned policy) is rolled out through the
memoryless SDE of the linear path; the critic's gradient at the final action, -inv_temp * grad_a Q,
is carried backwards along the rollout with vector-Jacobian products of the BASE field (the "lean
adjoint"); and f is regressed at every step so that (2/sigma)(f - b) matches -sigma * adjoint. No
gradient ever flows through the chain. A critic ensemble (mean - rho * std target) is trained by TD
with action chunking / n-step returns, as in Q-chunking.

This file implements QAM offline and offline->online after the official agents/qam.py and main.py: 10
LayerNorm critics with a pessimistic (mean - rho * std) target, a BC flow (actor_slow) with an EMA copy
used as the base field, a separately initialised fine field (actor_fast) trained by adjoint matching,
action chunks of `--horizon-length` actions with n-step returns (`--action-chunking`: the critic and the
policy see the whole chunk, which is executed open-loop in evaluation and online), the
sparse-reward transform (`--sparse`), one Adam over all networks with a global gradient-norm clip, and the
two variants QAM-FQL (`--fql-alpha`: a one-step policy distilled from f while maximising Q) and QAM-EDIT
(`--edit-scale`: a tanh-Gaussian edit policy added to f's action, trained SAC-style).

Per-task settings. `--env-id` applies the paper's values (TASK_SETTINGS, from experiments/reproduce.py) to
every per-task flag left unset: inv_temp, sparse, horizon_length, gamma, rho, and with `--variant
qam-fql` / `qam-edit` the variant's inv_temp and fql_alpha / edit_scale; an explicit flag always wins;
other tasks get the generic defaults of the official config. The resolved values are printed in one line
and saved with the hyper-parameters and the checkpoint.

Speed: `--compile` runs the whole update through torch.compile, `--cudagraphs` (CUDA only) also replays it as a
CUDA graph; eager is the default and the reference (docs/qam.md, "Speed options").

Differences from the official code, all deliberate:
  * datasets come from Minari (ids, local dirs, the embedded `flowrl/...` datasets) or OGBench;
    Box actions are rescaled to [-1, 1] and the env's actions are rescaled back at the boundary; a Minari id
    that is not local fails in one line when the Hugging Face hub is unreachable (`download_minari`);
  * OGBench envs (evaluation and online) are made with `success_timing='post'`: reward, success and
    termination of the state after the action, as ogbench < 1.2. The official requirements.txt does not pin
    ogbench (a fresh install today gets >= 1.2, which scores the state before the action), but the paper was
    submitted on 2025-09-18, before ogbench 1.2.0 (2025-10-20), so its runs used 'post' (inferred from the dates);
  * D4RL antmaze's reward shift r - 1 is one function (`transform_rewards`) applied to the dataset AND to
    every online reward; the official code shifts only the dataset (envs/d4rl_utils.py:185; main.py:309-332
    stores the raw online reward), which would mix {-1, 0} and {0, 1} rewards in the buffer (the paper has
    no D4RL task, so its runs are unaffected);
  * seeding: the online env is seeded once (`--seed`) at its first reset, and later resets continue its
    RNG (the official main.py seeds no reset); evaluation episode k resets with a fixed seed + k and draws
    its policy noise from its own generator, with the global NumPy RNG (OGBench mazes' start noise) seeded
    for the evaluation and restored after it (official: unseeded resets, a fresh key per evaluation), so
    the metrics do not depend on `--eval-envs` (envs run in parallel, batched policy calls; the official
    evaluation runs one env);
  * the BC flow (actor_slow) is evaluated too (`eval/bc_flow_*`), as the in-run behaviour-cloning baseline;
  * the ablation switches of the official config (residual field, no target actor, no clipping of the
    action inside Q's gradient, online critic's gradient) are not exposed; their default values are built in;
  * no image encoders (state-based tasks only); no 100M-dataset file rotation (the paper's cube-quadruple and
    puzzle-4x4 runs used the 100M-transition datasets; their rows are applied to whatever dataset is loaded).

Usage:
  python qam.py --total-steps 20000 --hidden-dim 256 --num-layers 3 --horizon-length 1 --inv-temp 1  # embedded Reacher, CPU
  python qam.py --env-id cube-double-play-singletask-task2-v0                  # OGBench, the paper's settings for the task
  python qam.py --env-id puzzle-3x3-play-singletask-task1-v0 --online-steps 500000      # offline -> online (sparse, H=5)
  python qam.py --env-id cube-triple-play-singletask-task2-v0 --variant qam-edit         # QAM-EDIT, inv_temp 3, edit 0.1
See docs/qam.md for the paper <-> code map, the per-task settings, logged metrics and results.
"""

from __future__ import annotations

import json
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
    total_steps: int = 1_000_000
    """offline gradient steps"""
    online_steps: int = 0
    """environment steps of online fine-tuning after the offline phase (the paper uses 500_000)"""
    start_training: int = 5000
    """online phase: updates begin after this many environment steps"""
    batch_size: int = 256
    """the batch size of each gradient step"""
    learning_rate: float = 3e-4
    """the learning rate of the (single) Adam optimizer"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip over all networks (<= 0 disables it)"""
    gamma: Optional[float] = None
    """the discount factor (None: the paper's value for the task, else 0.99; see TASK_SETTINGS)"""
    tau: float = 0.005
    """Polyak rate of the target critic and of the EMA base field"""
    hidden_dim: int = 512
    """width of every MLP"""
    num_layers: int = 4
    """hidden layers of every MLP"""
    eval_freq: int = 50_000
    """evaluate every this many steps (and at the end)"""
    eval_episodes: int = 50
    """episodes per evaluation"""
    eval_envs: int = 6
    """environments evaluated in parallel, one batched policy call per step; each OGBench manipulation env holds ~150 MB"""
    eval_bc_flow: bool = True
    """also evaluate the BC flow (actor_slow; the in-run behaviour-cloning baseline)"""
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
    variant: Optional[Literal["qam", "qam-fql", "qam-edit"]] = None
    """which of the paper's rows sets inv_temp / fql_alpha / edit_scale (None: qam-fql if --fql-alpha > 0,
    qam-edit if --edit-scale > 0, else qam)"""
    inv_temp: Optional[float] = None
    """inverse temperature: the target policy is pi_beta * exp(inv_temp * Q) (None: the paper's value for the task, else 0.3)"""
    flow_steps: int = 10
    """steps of the memoryless SDE (adjoint matching) and of the Euler ODE sampler"""
    num_critics: int = 10
    """size of the critic ensemble"""
    rho: Optional[float] = None
    """pessimism of the TD target: mean - rho * std over the target ensemble (None: the paper's value for the task, else 0.5)"""
    horizon_length: Optional[int] = None
    """action-chunk / n-step length H (None: the paper's value for the task, 5 on manipulation, 1 on the mazes; else 5)"""
    action_chunking: bool = True
    """critic and policy act on the whole chunk of H actions (executed open-loop); otherwise n-step returns only"""
    sparse: Optional[bool] = None
    """sparse-reward transform r -> -1[r != 0] (None: the paper's value for the task, True on puzzle and scene; else False)"""
    best_of_n: int = 1
    """sample this many actions and keep the one with the highest mean critic value"""
    fql_alpha: Optional[float] = None
    """QAM-FQL: if > 0, act with a one-step policy distilled from the fine field (distillation weight; None: the
    qam-fql row's value for the task with --variant qam-fql, else 0)"""
    edit_scale: Optional[float] = None
    """QAM-EDIT: if > 0, add edit_scale x a tanh-Gaussian edit policy's output to the fine field's action (None: the
    qam-edit row's value for the task with --variant qam-edit, else 0)"""
    edit_target_entropy_multiplier: float = 0.5
    """QAM-EDIT: target entropy = -multiplier x action dimension"""


# ---------------------------------------------------------------------------------------------
# Per-task settings of the paper's runs, applied by --env-id to every Args field left at None. Every row is
# from ColinQiyangLi/qam experiments/reproduce.py @f93efd2: inv_temp / fql_alpha / edit_scale from
# agent_params["QAM"] (lines 128-140), ["QAM_FQL"] (154-166) and ["QAM_EDIT"] (141-153); sparse, H, gamma and
# rho from base_kwargs (280-298): sparse on the "-sparse" domains, H = 1 if "ant" or "humanoid" is in the
# domain else 5, gamma = 0.995 if "giant" or "humanoid" is in the name else 0.99, rho = 0 if "humanoid" else
# 0.5. Common to all rows and built into Args' defaults: 10 critics, batch 256, 512x4 MLPs, action chunking,
# utd 1, 1M offline + 500k online steps. The same run goes offline then online: there are no separate
# offline->online values. cube-quadruple and puzzle-4x4 were run on the 100M-transition datasets (not loaded here).
# Matching: reproduce.py names each task f"{domain}-singletask-task{k}-v0"; a row applies to a task name equal
# to its pattern or starting with pattern + "-"; the longest matching pattern wins. The paper has no D4RL /
# Minari task, so Minari ids (e.g. D4RL/antmaze/large-play-v1) get the generic defaults.
# ---------------------------------------------------------------------------------------------
# pattern: (sparse, horizon_length, gamma, rho, QAM inv_temp, QAM-FQL (inv_temp, fql_alpha), QAM-EDIT (inv_temp, edit_scale))
TASK_SETTINGS = {
    "puzzle-3x3-play": (True, 5, 0.99, 0.5, 3.0, (3.0, 0.0), (1.0, 0.1)),
    "scene-play": (True, 5, 0.99, 0.5, 1.0, (1.0, 300.0), (1.0, 0.0)),
    "cube-double-play": (False, 5, 0.99, 0.5, 1.0, (1.0, 0.0), (1.0, 0.0)),
    "cube-triple-play": (False, 5, 0.99, 0.5, 3.0, (10.0, 300.0), (3.0, 0.1)),
    "cube-quadruple-play": (False, 5, 0.99, 0.5, 1.0, (0.3, 30.0), (3.0, 0.1)),
    "puzzle-4x4-play": (True, 5, 0.99, 0.5, 30.0, (3.0, 3.0), (0.1, 0.9)),
    "antmaze-large-navigate": (False, 1, 0.99, 0.5, 10.0, (3.0, 30.0), (1.0, 0.1)),
    "antmaze-giant-navigate": (False, 1, 0.995, 0.5, 3.0, (3.0, 30.0), (10.0, 0.1)),
    "humanoidmaze-medium-navigate": (False, 1, 0.995, 0.0, 3.0, (1.0, 30.0), (3.0, 0.1)),
    "humanoidmaze-large-navigate": (False, 1, 0.995, 0.0, 3.0, (0.3, 30.0), (3.0, 0.1)),
}
# generic defaults for any other task: agents/qam.py get_config() (inv_temp 0.3, rho 0.5, discount 0.99,
# fql_alpha 0, edit_scale 0) and main.py's flags (horizon_length 5, sparse False) @f93efd2
GENERIC_SETTINGS = dict(inv_temp=0.3, fql_alpha=0.0, edit_scale=0.0, sparse=False, horizon_length=5, gamma=0.99, rho=0.5)


def paper_row(env_id: str) -> Optional[str]:
    """The TASK_SETTINGS pattern that applies to `env_id` (the longest match), or None."""
    matches = [p for p in TASK_SETTINGS if env_id == p or env_id.startswith(p + "-")]
    return max(matches, key=len) if matches else None


def resolve_task_settings(args: Args) -> Args:
    """A copy of `args` with every per-task field left at None filled from the paper's row for --env-id (or the
    generic default); explicit values always win. Prints the resolved values once, in one line."""
    variant = args.variant or ("qam-fql" if (args.fql_alpha or 0) > 0 else "qam-edit" if (args.edit_scale or 0) > 0 else "qam")
    row = paper_row(args.env_id)
    values = dict(GENERIC_SETTINGS)
    if row is not None:
        sparse, horizon, gamma, rho, qam_temp, (fql_temp, fql_alpha), (edit_temp, edit_scale) = TASK_SETTINGS[row]
        inv_temp = {"qam": qam_temp, "qam-fql": fql_temp, "qam-edit": edit_temp}[variant]
        values.update(sparse=sparse, horizon_length=horizon, gamma=gamma, rho=rho, inv_temp=inv_temp,
                      fql_alpha=fql_alpha if variant == "qam-fql" else 0.0,
                      edit_scale=edit_scale if variant == "qam-edit" else 0.0)
    explicit = {k for k in values if getattr(args, k) is not None}
    resolved = replace(args, variant=variant, **{k: getattr(args, k) if k in explicit else v for k, v in values.items()})
    shown = " ".join(f"{k}={getattr(resolved, k)}" + ("(flag)" if k in explicit else "") for k in values)
    where = f"paper row {row!r}, {variant}" if row is not None else "not a paper task: generic defaults"
    print(f"task settings for {args.env_id} ({where}): {shown}", flush=True)
    return resolved


# ---------------------------------------------------------------------------------------------
# Bad input: every flag checked once, before any work; each user error is one line and exit 1
# ---------------------------------------------------------------------------------------------
class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not qam's, made for other networks or past the budget (one line,
    exit 1)."""


class DatasetError(ValueError):
    """Bad --env-id or dataset contents; reported as one line and a non-zero exit."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (ArgumentError, CheckpointError, DatasetError, NonFiniteLossError)
EVAL_SEED = 10_000  # evaluation episode k of a run with --seed s is seeded with EVAL_SEED * s + k (NumPy: < 2**32)
MAX_SEED = (2**32 - 1) // EVAL_SEED


def check_args(args: Args) -> None:
    """Every field of the (resolved) Args checked once, before any work: the first value outside its range raises
    ArgumentError, one line `--flag must be <rule> (got <value>)`; conflicting flags are named together."""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    def finite(flag: str) -> bool:
        return math.isfinite(getattr(args, flag))

    # generic (torch_deterministic, cuda, eval_bc_flow, save_model, compile: booleans, any value is fine)
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                                                                   "torch.cuda.is_available() is False") + ")")
    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")  # it names the run directory and the checkpoint file
    need(0 <= args.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}] ({EVAL_SEED} * seed seeds the evaluation's NumPy RNG)")
    need(bool(args.env_id.strip()), "env_id", "a dataset folder, an embedded id, an OGBench or a Minari id")
    # ogbench_dataset_dir: any folder (read by load_ogbench); checkpoint: a path, read and checked by load_checkpoint
    need(args.checkpoint != "", "checkpoint", "a path")
    need(args.total_steps >= 0, "total_steps", ">= 0")
    need(args.online_steps >= 0, "online_steps", ">= 0")
    need(args.start_training >= 0, "start_training", ">= 0")
    if args.online_steps > 0 and args.start_training > args.online_steps:
        raise ArgumentError(f"--start-training {args.start_training} and --online-steps {args.online_steps} cannot be "
                            "used together: the online phase would end before its first update (pass --start-training "
                            "<= --online-steps)")
    need(args.batch_size >= 1, "batch_size", ">= 1")
    need(finite("learning_rate") and args.learning_rate > 0, "learning_rate", "finite and > 0")
    need(finite("max_grad_norm"), "max_grad_norm", "finite (<= 0 disables the clip)")
    need(finite("gamma") and 0 < args.gamma <= 1, "gamma", "in (0, 1]")
    need(finite("tau") and 0 < args.tau <= 1, "tau", "in (0, 1]")
    need(args.hidden_dim >= 1, "hidden_dim", ">= 1")
    need(args.num_layers >= 1, "num_layers", ">= 1")
    need(args.eval_freq >= 1, "eval_freq", ">= 1")
    need(args.eval_episodes >= 1, "eval_episodes", ">= 1")
    if EVAL_SEED * args.seed + args.eval_episodes > 2**32:
        raise ArgumentError(f"--seed {args.seed} and --eval-episodes {args.eval_episodes} cannot be used together: "
                            f"evaluation episode k is seeded with {EVAL_SEED} * seed + k, which must stay below 2**32")
    need(args.eval_envs >= 1, "eval_envs", ">= 1")
    need(args.log_freq >= 1, "log_freq", ">= 1")
    # algorithm (action_chunking, sparse: booleans; variant: one of its Literal values, checked by tyro)
    need(finite("inv_temp") and args.inv_temp >= 0, "inv_temp", "finite and >= 0 (0: the BC flow)")
    need(args.flow_steps >= 1, "flow_steps", ">= 1")
    need(args.num_critics >= 1, "num_critics", ">= 1")
    need(finite("rho") and args.rho >= 0, "rho", "finite and >= 0 (the TD target's pessimism)")
    need(args.horizon_length >= 1, "horizon_length", ">= 1")
    need(args.best_of_n >= 1, "best_of_n", ">= 1")
    need(finite("fql_alpha") and args.fql_alpha >= 0, "fql_alpha", "finite and >= 0 (0: no one-step policy)")
    need(finite("edit_scale") and args.edit_scale >= 0, "edit_scale", "finite and >= 0 (0: no edit policy)")
    # the target entropy -multiplier x dim may have either sign (a tanh-Gaussian's entropy is at most dim x log 2)
    need(finite("edit_target_entropy_multiplier"), "edit_target_entropy_multiplier", "finite")
    if args.fql_alpha > 0 and args.edit_scale > 0:
        raise ArgumentError(f"--fql-alpha {args.fql_alpha} and --edit-scale {args.edit_scale} cannot both be > 0 "
                            "(QAM-FQL and QAM-EDIT are two variants)")
    for flag, value, other in (("fql_alpha", args.fql_alpha, "qam-fql"), ("edit_scale", args.edit_scale, "qam-edit")):
        if value > 0 and args.variant != other:
            raise ArgumentError(f"--variant {args.variant} and --{flag.replace('_', '-')} {value} cannot both be given "
                                f"(--{flag.replace('_', '-')} > 0 is --variant {other})")


# ---------------------------------------------------------------------------------------------
# Networks (official code: GELU, LayerNorm after the activation in the critic only, Glorot-uniform
# kernels, zero biases; time t enters the velocity field as a raw scalar)
# utils/networks.py @f93efd2 uses flax's nn.gelu (jax.nn.gelu: the tanh approximation by default) and
# nn.LayerNorm() (epsilon 1e-6): this file uses both, not torch's erf GELU and epsilon 1e-5.
# ---------------------------------------------------------------------------------------------
LAYER_NORM_EPS = 1e-6


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: Optional[int]) -> nn.Sequential:
    """GELU MLP; with out_dim=None it ends with the last hidden activation (a trunk)."""
    layers, dim = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh")]
        dim = hidden_dim
    if out_dim is not None:
        layers.append(nn.Linear(dim, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class VectorField(nn.Module):
    """Velocity field v(s, x_t, t) -> velocity; used for the BC flow b and for the fine field f."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + 1, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, x_t, t], dim=-1))


class OneStepPolicy(nn.Module):
    """QAM-FQL's one-step policy mu(s, z) -> action (unbounded; clipped where it is used)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, z], dim=-1))


class EditPolicy(nn.Module):
    """QAM-EDIT's edit policy: tanh(N(mu(s, a), std(s, a))), log-std clipped to [-20, 2] (official TanhNormal)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.trunk = mlp(obs_dim + act_dim, hidden_dim, num_layers, None)
        self.mean, self.log_std = nn.Linear(hidden_dim, act_dim), nn.Linear(hidden_dim, act_dim)
        for layer in (self.mean, self.log_std):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, noise: torch.Tensor) -> tuple:
        """Reparameterised sample e = tanh(mu + std * noise) and its log-probability (B,)."""
        h = self.trunk(torch.cat([obs, action], dim=-1))
        mean, log_std = self.mean(h), self.log_std(h).clamp(-20.0, 2.0)
        u = mean + log_std.exp() * noise
        log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)  # log|d tanh(u)/du|
        return torch.tanh(u), log_prob


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
    """Ensemble of K critics Q_k(s, a) -> (K, B); MLP with GELU then LayerNorm per hidden layer."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int, num_critics: int):
        super().__init__()
        self.num_critics = num_critics
        layers, dim = [], obs_dim + act_dim
        for _ in range(num_layers):
            layers += [EnsembleLinear(num_critics, dim, hidden_dim), nn.GELU(approximate="tanh"), EnsembleLayerNorm(num_critics, hidden_dim)]
            dim = hidden_dim
        layers.append(EnsembleLinear(num_critics, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return self.net(x.reshape(1, -1, x.shape[-1]).expand(self.num_critics, -1, -1)).reshape(
            self.num_critics, *x.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------
# --compile: the noise of the update is drawn with torch.randn(shape), never torch.randn_like(x): AOT autograd's CSE
# (torch 2.13) does not count randn_like as random and merges two randn_like calls on the same tensor into ONE draw
# where randn_like is not decomposed first (aot_eager; inductor with fallback_random; fql.py). Same numbers in eager
@torch.no_grad()
def sample_flow(field: Callable, obs: torch.Tensor, z: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """Euler ODE of a velocity field from noise z (x_{i+1} = x_i + v(s, x_i, i/T) / T), clipped to [-1, 1]."""
    x, dt = z, 1.0 / flow_steps
    for i in range(flow_steps):
        t = torch.full_like(x[..., :1], i * dt)
        x = x + dt * field(obs, x, t)
    return x.clamp(-1.0, 1.0)


def memoryless_sigma(t: torch.Tensor, h: float) -> torch.Tensor:
    """Memoryless noise schedule of the linear path, sigma_t = sqrt(2 (1 - t) / t), shifted by h to avoid t = 0."""
    return torch.sqrt(2.0 * (1.0 - t + h) / (t + h))


@torch.no_grad()
def memoryless_rollout(fine_field: Callable, base_field: Callable, obs: torch.Tensor, x0: torch.Tensor,
                       flow_steps: int) -> tuple:
    """Euler-Maruyama of the memoryless SDE dX = (2 f(X, t) - X / t) dt + sigma_t dB with the FINE field.

    The last step is a deterministic ODE step with the BASE field (as the official agents/qam.py:72-73, following the
    adjoint-matching paper). Returns the visited states xs = (x_0..x_{T-1}) as (T, B, D), their times
    ts (T, B, 1) and the final action x_T (B, D). Nothing here carries a gradient.
    """
    h = 1.0 / flow_steps
    x, xs, ts = x0, [], []
    for i in range(flow_steps):
        t = torch.full_like(x[..., :1], i * h)
        xs.append(x)
        ts.append(t)
        if i < flow_steps - 1:
            drift = 2.0 * fine_field(obs, x, t) - x / (t + h)
            x = x + h * drift + math.sqrt(h) * memoryless_sigma(t, h) * torch.randn(x.shape, device=x.device)
        else:
            x = x + h * base_field(obs, x, t)
    return torch.stack(xs), torch.stack(ts), x


def input_vjp(fn: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v^T d fn(x) / dx, with respect to the input x only: no graph is kept, no parameter gradient is formed.

    Eager: torch.autograd.grad of a requires_grad copy of x. --compile: torch.func.vjp, which dynamo traces without a
    graph break (autograd.grad breaks the graph; torch.func costs more per call in eager, docs/qam.md). Same numbers.
    """
    if torch.compiler.is_compiling():
        with torch.no_grad():  # torch.func.vjp differentiates inside it; the result stays out of the update's graph
            return torch.func.vjp(fn, x)[1](v)[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(x), x, grad_outputs=v)[0]


def terminal_adjoint(critic: Critic, obs: torch.Tensor, action: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """Terminal condition of the lean adjoint: a_1 = grad_a of the reward g(a) = -inv_temp * mean_k Q_k(s, clip(a)).

    The critic's parameters are not differentiated (only the action is); clip has zero gradient outside [-1, 1].
    """
    grad = input_vjp(lambda a: critic(obs, a.clamp(-1.0, 1.0)).mean(0).sum(), action, torch.ones((), device=action.device))
    return -inv_temp * grad


def lean_adjoint(base_field: Callable, obs: torch.Tensor, xs: torch.Tensor, adj_terminal: torch.Tensor,
                 flow_steps: int) -> torch.Tensor:
    """Lean adjoint ODE d a_t / dt = -a_t^T d/dx [2 b(x, t) - x / t], integrated backwards from t = 1.

    Discretised as the official agents/qam.py:92-99: a_i = a_{i+1} + h * J_i^T a_{i+1}, with J_i the Jacobian of
    2 b(s, x, t_i + h) - x / (t_i + h) at x = x_i: one batched vector-Jacobian product of the BASE field per
    step (input_vjp: w.r.t. the input only, no graph is kept, no parameter gradient is formed). Returns (T, B, D),
    entry i paired with (x_i, t_i).
    """
    h = 1.0 / flow_steps
    adj, adjs = adj_terminal.detach(), [None] * flow_steps
    for i in reversed(range(flow_steps)):
        t = torch.full_like(adj[..., :1], i * h + h)
        vjp = input_vjp(lambda x: 2.0 * base_field(obs, x, t) - x / t, xs[i], adj)
        adj = adj + h * vjp
        adjs[i] = adj
    return torch.stack(adjs)


def adjoint_matching_loss(fine_field: nn.Module, base_field: Callable, critic: Critic, obs: torch.Tensor,
                          action_dim: int, flow_steps: int, inv_temp: float) -> tuple:
    """The adjoint-matching objective of QAM (the paper's policy loss; Domingo-Enrich et al. 2025, "adjoint matching"):

        L(f) = E sum_i || (2 / sigma_i) (f(s, x_i, t_i) - b(s, x_i, t_i)) + sigma_i a_i ||^2

    with (x_i) a memoryless-SDE rollout of f, a_i the lean adjoint of the base field b started from
    -inv_temp * grad_a Q, and all of (x_i, a_i, b) constants: the gradient reaches f only through f(s, x_i, t_i).
    Sum over action dimensions and steps, mean over the batch. Returns (loss, |terminal adjoint| mean).
    """
    h = 1.0 / flow_steps
    x0 = torch.randn(obs.shape[0], action_dim, device=obs.device, dtype=obs.dtype)
    xs, ts, action = memoryless_rollout(fine_field, base_field, obs, x0, flow_steps)
    adj_terminal = terminal_adjoint(critic, obs, action, inv_temp)
    adjs = lean_adjoint(base_field, obs, xs, adj_terminal, flow_steps)
    sigmas = memoryless_sigma(ts, h)
    obs_steps = obs.expand(flow_steps, *obs.shape)
    with torch.no_grad():
        vf_base = base_field(obs_steps, xs, ts)
    vf_fine = fine_field(obs_steps, xs, ts)
    residual = (2.0 / sigmas) * (vf_fine - vf_base) + sigmas * adjs
    return residual.square().sum(-1).sum(0).mean(), adj_terminal.abs().mean()


# ---------------------------------------------------------------------------------------------
# Other losses (official agents/qam.py)
# ---------------------------------------------------------------------------------------------
def critic_loss(critic: Critic, target_critic: Critic, batch: dict, next_actions: torch.Tensor, gamma: float,
                horizon: int, rho: float) -> tuple:
    """TD loss with a chunked n-step target (Q-chunking):
    E[ valid * (Q_k(s, a_chunk) - (R_H + gamma^H * mask * (mean_k Qbar - rho * std_k Qbar)(s_H, a')))^2 ].
    """
    with torch.no_grad():
        next_qs = target_critic(batch["next_observations"], next_actions)
        next_q = next_qs.mean(0) - rho * next_qs.std(0, unbiased=False)
        target_q = batch["rewards"] + gamma ** horizon * batch["masks"] * next_q
    q = critic(batch["observations"], batch["critic_actions"])
    return ((q - target_q).square() * batch["valid"]).mean(), q


def bc_flow_loss(actor_slow: VectorField, obs: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Flow matching on the data (linear path x_t = (1 - t) x_0 + t a, target velocity a - x_0), valid chunks only."""
    x_0 = torch.randn(actions.shape, device=actions.device)
    t = torch.rand_like(actions[:, :1])
    x_t = (1.0 - t) * x_0 + t * actions
    return ((actor_slow(obs, x_t, t) - (actions - x_0)).square().mean(-1) * valid).mean()


def frozen_q(critic: Critic, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Mean critic value with the critic's parameters detached (the gradient reaches the actions only)."""
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    return torch.func.functional_call(critic, frozen, (obs, actions)).mean(0)


def qam_fql_losses(one_step: OneStepPolicy, fine_field: Callable, critic: Critic, obs: torch.Tensor, action_dim: int,
                   flow_steps: int) -> tuple:
    """QAM-FQL: -Q(s, clip(mu(s, z))) and ||mu(s, z) - ODE_f(s, z)||^2 (weighted by fql_alpha by the caller)."""
    z = torch.randn(obs.shape[0], action_dim, device=obs.device)
    target = sample_flow(fine_field, obs, z, flow_steps)
    actions = one_step(obs, z)
    return F.mse_loss(actions, target), -frozen_q(critic, obs, actions.clamp(-1.0, 1.0)).mean()


def qam_edit_losses(edit: EditPolicy, log_alpha: torch.Tensor, fine_field: Callable, critic: Critic, obs: torch.Tensor,
                    action_dim: int, flow_steps: int, edit_scale: float, target_entropy: float) -> tuple:
    """QAM-EDIT: -Q(s, clip(a_f + scale * e)) + alpha * log pi_e(e | s, a_f), and the SAC temperature loss."""
    base_actions = sample_flow(fine_field, obs, torch.randn(obs.shape[0], action_dim, device=obs.device), flow_steps)
    e, log_prob = edit(obs, base_actions, torch.randn(base_actions.shape, device=obs.device))
    q_loss = -frozen_q(critic, obs, (base_actions + edit_scale * e).clamp(-1.0, 1.0)).mean()
    entropy_loss = (log_prob * log_alpha.detach().exp()).mean()
    entropy = -log_prob.detach().mean()
    alpha_loss = log_alpha.exp() * (entropy - target_entropy)
    return q_loss, entropy_loss, alpha_loss, entropy


# ---------------------------------------------------------------------------------------------
# Data: datasets, replay buffer with chunked sampling, environments, evaluation
# ---------------------------------------------------------------------------------------------
ACTION_CLIP = 1.0 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5) as the official envs/env_utils.py:139-141


def flatten_obs(space: gym.Space, obs) -> np.ndarray:
    """Flatten (a batch of) observations of a Box or Dict space to float32 (batch, dim) in `space`'s key order."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_obs(s, obs[k]) for k, s in space.spaces.items()], axis=-1)
    obs = np.asarray(obs, dtype=np.float32)
    return obs.reshape(*obs.shape[: obs.ndim - len(space.shape)], -1)


def check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(f"QAM needs a continuous 1-D Box action space; this dataset has {act_space}")
    if not np.all(np.isfinite(act_space.low)) or not np.all(np.isfinite(act_space.high)):
        raise DatasetError(f"QAM needs a bounded action space to rescale to [-1, 1]; got {act_space}")
    spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    for space in spaces:
        if not isinstance(space, gym.spaces.Box) or len(space.shape) > 1:
            raise DatasetError(f"QAM handles flat Box (or Dict of flat Box) observations; got {obs_space}")


class OfflineData:
    """Transitions of an offline dataset as float32 arrays, with the means to evaluate on its env."""

    def __init__(self, transitions: dict, make_env: Callable[[], gym.Env], flatten: Callable, score: Callable):
        self.transitions = transitions  # observations, actions, rewards, masks, next_observations, ends
        self.make_env = make_env  # -> env with actions in [-1, 1]
        self.flatten = flatten  # env observation(s) -> float32 (batch, obs_dim)
        self.score = score  # episode returns -> normalized score x100 (or None)


def to_unit_box(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    return np.clip(2.0 * (actions - low) / (high - low) - 1.0, -ACTION_CLIP, ACTION_CLIP).astype(np.float32)


def unit_box_env(env: gym.Env) -> gym.Env:
    space = env.action_space
    if np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0):
        return env
    return gym.wrappers.RescaleAction(env, -1.0, 1.0)


def load_minari(dataset, env_id: str) -> OfflineData:
    import minari

    check_spaces(dataset.observation_space, dataset.action_space)
    obs_space = dataset.observation_space
    parts = {k: [] for k in ("observations", "actions", "rewards", "terminations", "next_observations", "ends")}
    folder = Path(dataset.storage.data_path)
    where = str(folder / "main_data.hdf5") if (folder / "main_data.hdf5").exists() else f"the Minari dataset in {folder}"
    for n, episode in enumerate(read_episodes(dataset, where)):
        lengths = [entry_length(getattr(episode, k)) for k in ("observations", "actions", "rewards", "terminations")]
        if lengths[1:] != [lengths[0] - 1] * 3:
            raise DatasetError(f"episode {n} of {where} is inconsistent: {lengths[0]} observations, {lengths[1]} actions, "
                               f"{lengths[2]} rewards, {lengths[3]} terminations (a Minari episode has one observation more)")
        obs = flatten_obs(obs_space, episode.observations)
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        parts["terminations"].append(np.asarray(episode.terminations, dtype=np.float32))
        ends = np.zeros(len(episode.actions), dtype=np.float32)
        ends[-1:] = 1.0  # episode boundary: action chunks never cross it
        parts["ends"].append(ends)
    if not parts["actions"]:
        raise DatasetError(f"dataset {env_id!r} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["actions"] = to_unit_box(data["actions"], dataset.action_space)
    data["masks"] = 1.0 - data.pop("terminations")  # bootstrap through truncations

    def make_env():
        try:
            return unit_box_env(dataset.recover_environment(eval_env=True))
        except Exception as e:  # a missing env package, an env id unknown to this gymnasium
            raise DatasetError(f"cannot recreate the evaluation env of {env_id!r}: {type(e).__name__}: {e}") from e

    has_ref = dataset.storage.metadata.get("ref_min_score") is not None and dataset.storage.metadata.get("ref_max_score") is not None
    score = (lambda returns: 100.0 * minari.get_normalized_score(dataset, np.asarray(returns))) if has_ref else (lambda r: None)
    return OfflineData(data, make_env, lambda obs: flatten_obs(obs_space, obs), score)


def read_episodes(dataset, where: str):
    """The episodes of a Minari dataset (its data file: `where`); a truncated, empty or foreign data file, or an episode
    without one of its entries, is one DatasetError line naming the file."""
    episodes = iter(dataset.iterate_episodes())
    for n in range(dataset.total_episodes):
        try:
            yield next(episodes)
        except StopIteration:
            return
        except OSError as e:  # h5py: truncated, empty or not an HDF5 file
            raise DatasetError(f"{where} is unreadable: truncated, empty or not HDF5 ({first_line(e)})") from e
        except KeyError as e:  # an episode group without 'actions', 'observations', ...
            raise DatasetError(f"episode {n} of {where} is incomplete ({e.args[0] if e.args else e})") from e
        except Exception as e:
            raise DatasetError(f"episode {n} of {where} cannot be read ({type(e).__name__}: {first_line(e)})") from e


def entry_length(x) -> int:
    """Number of steps of an episode entry (of the first leaf of a Dict observation)."""
    while isinstance(x, dict) and x:
        x = next(iter(x.values()))
    return len(x)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_minari(data_dir: Path):
    """minari.MinariDataset(data_dir); a missing, empty or broken metadata.json (or data file) is one DatasetError line."""
    import minari

    metadata = data_dir / "metadata.json"
    if not metadata.is_file():
        raise DatasetError(f"Minari dataset folder {data_dir} has no metadata.json")
    if metadata.stat().st_size == 0:
        raise DatasetError(f"{metadata} is empty")
    try:
        return minari.MinariDataset(data_dir)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{metadata} is not valid JSON ({e})") from e
    except Exception as e:  # no data file, unknown data format, a space that does not decode, ...
        raise DatasetError(f"cannot open the Minari dataset in {data_dir} ({type(e).__name__}: {first_line(e)})") from e


def ogbench_files(name: str, dataset_dir: str) -> list:
    """The two .npz files ogbench.make_env_and_datasets reads for a singletask name (its naming rule: drop
    'singletask' and 'task<k>'), train then validation."""
    splits = name.split("-")
    pos = splits.index("singletask")
    stem = "-".join(splits[:pos] + splits[-1:])
    folder = Path(os.path.expanduser(dataset_dir))
    return [folder / f"{stem}.npz", folder / f"{stem}-val.npz"]


def check_npz(path: Path) -> None:
    """An OGBench file that exists must be a readable .npz with observations, actions and terminals (one line if not).
    Only the zip directory is read, not the arrays."""
    if path.is_dir():
        raise DatasetError(f"OGBench dataset file {path} is a directory")
    if path.stat().st_size == 0:
        raise DatasetError(f"OGBench dataset file {path} is empty")
    try:
        with np.load(path) as f:
            missing = [k for k in ("observations", "actions", "terminals") if k not in f.files]
    except Exception as e:  # truncated (BadZipFile), garbage (pickle refused), ...
        raise DatasetError(f"OGBench dataset file {path} is not a readable .npz ({type(e).__name__}: {first_line(e)})") from e
    if missing:
        raise DatasetError(f"OGBench dataset file {path} has no {', '.join(repr(k) for k in missing)}")


def load_ogbench(name: str, dataset_dir: str) -> OfflineData:
    import ogbench

    if "singletask" not in name.split("-"):
        raise DatasetError(f"QAM needs a reward-labelled OGBench dataset (e.g. cube-double-play-singletask-task2-v0); got {name!r}")
    files = ogbench_files(name, dataset_dir)
    for path in files:
        if path.exists() or path.is_symlink():
            check_npz(path)
    try:
        env, train, _ = ogbench.make_env_and_datasets(name, dataset_dir=os.path.expanduser(dataset_dir))
    except Exception as e:
        if all(path.is_file() for path in files):  # both files were there: no download; reading them (or the env) failed
            raise DatasetError(f"ogbench cannot load {name!r} from {files[0].parent} ({type(e).__name__}: {first_line(e)})") from e
        raise  # a download that failed: load_offline_data reports it with the other places it tried
    check_spaces(env.observation_space, env.action_space)
    data = {k: np.asarray(train[k], dtype=np.float32) for k in ("observations", "actions", "rewards", "masks", "next_observations")}
    data["ends"] = np.asarray(train["terminals"], dtype=np.float32)  # OGBench: 1 on each trajectory's last transition
    data["actions"] = to_unit_box(data["actions"], env.action_space)
    env.close()
    # success_timing='post': reward, success and termination of the state AFTER the action, as ogbench < 1.2 (see the
    # module docstring: the paper's runs predate ogbench 1.2.0, which made singletask envs score the state before it)
    make_env = lambda: unit_box_env(ogbench.make_env_and_datasets(name, env_only=True, success_timing="post"))  # noqa: E731
    return OfflineData(data, make_env, lambda obs: flatten_obs(env.observation_space, obs), lambda r: None)


def load_offline_data(env_id: str, ogbench_dataset_dir: str) -> OfflineData:
    """Resolve --env-id: a local Minari dataset dir, an embedded dataset, an OGBench name, a Minari id."""
    tried = []
    for path in (Path(env_id), Path(__file__).resolve().parent / "datasets" / env_id):
        for data_dir in (path / "data", path):
            if (data_dir / "main_data.hdf5").exists() or (data_dir / "metadata.json").exists():
                return validated(load_minari(open_minari(data_dir), env_id), env_id)
        tried.append(f"no Minari dataset in {path}")
    if "/" not in env_id and env_id.endswith("-v0"):
        try:
            return validated(load_ogbench(env_id, ogbench_dataset_dir), env_id)
        except DatasetError:
            raise
        except Exception as e:
            tried.append(f"OGBench: {type(e).__name__}: {e}")
    else:
        try:
            dataset = download_minari(env_id)
        except DatasetError as e:
            tried.append(f"Minari: {e}")
        except Exception as e:
            tried.append(f"Minari: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        else:
            return validated(load_minari(dataset, env_id), env_id)
    raise DatasetError(f"cannot load --env-id {env_id!r} ({'; '.join(tried)}). List ids with "
                       f"`minari list remote`, see datasets/ for the embedded ones, or pass an OGBench "
                       f"singletask name such as cube-double-play-singletask-task2-v0")


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


def validated(data: OfflineData, env_id: str) -> OfflineData:
    for key, array in data.transitions.items():
        bad = ~np.isfinite(array)
        if bad.any():
            raise DatasetError(f"dataset {env_id!r} has {int(bad.sum())} non-finite values in {key!r}")
    return data


def is_d4rl_antmaze(env_id: str) -> bool:
    """The names whose rewards the official loader shifts: D4RL antmaze (envs/env_utils.py:103-117, after the
    OGBench 'singletask' branch, and d4rl_utils.py:179-185 @f93efd2), here also their Minari re-releases."""
    return "antmaze" in env_id and "singletask" not in env_id and any(k in env_id for k in ("diverse", "play", "umaze"))


def transform_rewards(rewards, env_id: str, sparse: bool) -> np.ndarray:
    """The one reward transform of the dataset and of every online step (applied before `buffer.add`):
    D4RL antmaze's {0, 1} -> {-1, 0} shift (r - 1), then the paper's sparse transform for puzzle/scene,
    r -> -1 if r != 0 else 0 (`--sparse`; official main.py:127-132 offline, 320-322 online)."""
    r = np.asarray(rewards, dtype=np.float32)
    if is_d4rl_antmaze(env_id):
        r = r - 1.0
    if sparse:
        r = -(r != 0).astype(np.float32)
    return r


class ReplayBuffer:
    """All transitions as tensors on `device`; offline data first, online transitions appended.

    `sample_chunks` draws H consecutive transitions per sample (Q-chunking's sampler): chunks that run over an
    episode boundary are marked invalid (`valid` = 0) and masked out of the critic and BC losses.
    """

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

    def sample_chunks(self, batch_size: int, horizon: int, gamma: float, action_chunking: bool) -> dict:
        # capture: indices drawn on the device (the global CUDA RNG on a GPU), static shapes, no host sync
        d, device = self.data, self.data["rewards"].device
        start = torch.randint(0, self.size - horizon + 1, (batch_size,), device=device)
        idx = start[:, None] + torch.arange(horizon, device=device)  # (B, H)
        ends = d["ends"][idx]
        # valid_i = 1 until the chunk has passed an episode's last transition (valid_0 = 1)
        valid = torch.cat([torch.ones_like(ends[:, :1]), 1.0 - ends[:, :-1].cummax(1).values], dim=1)
        discounts = gamma ** torch.arange(horizon, device=device, dtype=torch.float32)
        last = valid.sum(1).long() - 1  # index of the last valid transition
        actions = d["actions"][idx]  # (B, H, A)
        return {
            "observations": d["observations"][start],
            "actions": actions,
            "critic_actions": actions.flatten(1) if action_chunking else actions[:, 0],
            "rewards": (d["rewards"][idx] * discounts * valid).sum(1),  # n-step discounted return of the chunk
            "masks": torch.where(valid > 0, d["masks"][idx], torch.ones_like(valid)).amin(1),
            "next_observations": d["next_observations"][idx[torch.arange(batch_size, device=device), last]],
            "valid": valid[:, -1],
        }


def draw_noise(rows: int, shape: tuple, generators: Optional[list], device: torch.device) -> torch.Tensor:
    """Standard normal noise (rows, *shape): from the global RNG, or row r from its own generators[r] (CPU)."""
    if generators is None:
        return torch.randn(rows, *shape, device=device)
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def evaluate(data: OfflineData, envs: list, policy: Callable, action_dim: int, episodes: int, seed: int,
             device: torch.device) -> dict:
    """Run `episodes` episodes on the `envs` in parallel; each env executes its action chunk open-loop and
    asks the policy (one batched call for all envs that need one) for a new chunk when it is used up.

    Episode k resets its env with seed + k and draws its policy noise from its own generator seeded with seed + k,
    and the global NumPy RNG (OGBench's mazes draw their start noise from it) is seeded with `seed` for the
    evaluation and restored afterwards: the metrics do not depend on the number of envs, nor on the training RNG.
    `policy(obs, generators)` gets one generator per row of obs."""
    returns, successes = [], []
    next_episode = 0
    obs, ep_return, active = [None] * len(envs), [0.0] * len(envs), [False] * len(envs)
    queues, generators = [[] for _ in envs], [None] * len(envs)
    np_state = np.random.get_state()
    np.random.seed(seed)

    def start(i: int) -> None:
        nonlocal next_episode
        obs[i], _ = envs[i].reset(seed=seed + next_episode)
        generators[i] = torch.Generator().manual_seed(seed + next_episode)
        active[i], next_episode = True, next_episode + 1

    try:
        for i in range(len(envs)):
            if next_episode < episodes:
                start(i)
        while any(active):
            ids = [i for i in range(len(envs)) if active[i] and not queues[i]]
            if ids:
                batch = torch.as_tensor(np.stack([data.flatten(obs[i]) for i in ids]), device=device)
                chunks = policy(batch, [generators[i] for i in ids]).cpu().numpy().reshape(len(ids), -1, action_dim)
                for i, chunk in zip(ids, chunks):
                    queues[i] = list(chunk)
            for i in [i for i in range(len(envs)) if active[i]]:
                obs[i], reward, terminated, truncated, info = envs[i].step(queues[i].pop(0))
                ep_return[i] += float(reward)
                if terminated or truncated:
                    returns.append(ep_return[i])
                    if "success" in info:
                        successes.append(float(info["success"]))
                    ep_return[i], queues[i], active[i] = 0.0, [], False
                    if next_episode < episodes:
                        start(i)
    finally:
        np.random.set_state(np_state)
    metrics = {"episodic_return": float(np.mean(returns)), "episodic_return_std": float(np.std(returns))}
    score = data.score(returns)
    if score is not None:
        metrics["normalized_score"] = float(np.mean(score))
        metrics["normalized_score_std"] = float(np.std(score))
    if successes:
        metrics["success"] = float(np.mean(successes))
    return metrics


def save_checkpoint(path: Path, modules: dict, optimizer: torch.optim.Optimizer, step: int, args: Args,
                    dims: dict) -> None:
    """Atomic save: write a temporary file, then rename it over the previous checkpoint. The state names its script
    and holds the (resolved) args and the dataset's dims, which load_checkpoint compares with the current ones."""
    state = {name: m.state_dict() for name, m in modules.items()}
    state.update(optimizer=optimizer.state_dict(), step=step, args=asdict(args), script="qam", **dims)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


NETWORK_ARGS = ("hidden_dim", "num_layers", "num_critics", "horizon_length", "action_chunking", "variant")  # shape the nets


def load_checkpoint(path: str, args: Args, modules: dict, optimizer: torch.optim.Optimizer, dims: dict,
                    device: torch.device) -> int:
    """Load a qam checkpoint into `modules` and `optimizer` and return its step. Every failure is one CheckpointError
    line: a missing, empty or unreadable file, another script's file, other network settings or dataset dims (each
    listed against the checkpoint's, compared before anything is loaded), entries that do not load, a step past
    the budget (--total-steps + --online-steps). A checkpoint exactly at the budget is only evaluated (one notice)."""
    file = Path(path)
    if file.is_dir():
        raise CheckpointError(f"--checkpoint {path} is a directory, not a file")
    if not file.is_file():
        raise CheckpointError(f"--checkpoint {path} does not exist")
    if file.stat().st_size == 0:
        raise CheckpointError(f"--checkpoint {path} is empty")
    try:
        state = torch.load(file, map_location=device)
    except Exception as e:  # garbage: UnpicklingError; truncated: RuntimeError (zip), EOFError, ...
        raise CheckpointError(f"--checkpoint {path} is not a readable torch file ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"--checkpoint {path} is not a qam checkpoint: it holds a {type(state).__name__}")
    if state.get("script", "qam") != "qam":  # checkpoints from before `script` was saved are qam's if they have its entries
        raise CheckpointError(f"--checkpoint {path} is not a qam checkpoint: it was saved by {state['script']}.py")
    missing = [k for k in ("critic", "actor_fast", "optimizer", "step", "args") if k not in state]
    if missing:
        raise CheckpointError(f"--checkpoint {path} is not a qam checkpoint: it has no {', '.join(missing)}")
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"
              for k in NETWORK_ARGS if k in saved and saved[k] != getattr(args, k)]
    differ += [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"  # the variant's own networks
               for k in ("fql_alpha", "edit_scale") if saved.get(k) is not None and (saved[k] > 0) != (getattr(args, k) > 0)]
    if differ:
        raise CheckpointError(f"--checkpoint {path} holds other networks: {', '.join(differ)}; pass the checkpoint's values")
    differ = [f"{k} {dims[k]} (checkpoint: {state[k]})" for k in dims if k in state and state[k] != dims[k]]
    if differ:
        raise CheckpointError(f"--checkpoint {path} was trained on another dataset: --env-id {args.env_id} has "
                              f"{', '.join(differ)}")
    step, total = int(state["step"]), args.total_steps + args.online_steps
    budget = f"--total-steps {args.total_steps}" + (f" + --online-steps {args.online_steps}" if args.online_steps else "")
    if step > total:
        raise CheckpointError(f"--checkpoint {path} is at step {step}, past {budget}; pass a larger "
                              + ("--total-steps" if not args.online_steps else "--total-steps or --online-steps"))
    absent = [name for name in modules if name not in state]
    if absent:
        raise CheckpointError(f"--checkpoint {path} holds other networks: it has no {', '.join(absent)}")
    try:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # missing / unexpected entries, other shapes
        raise CheckpointError(f"--checkpoint {path}: its networks do not load ({first_line(e)})") from e
    if step == total:
        print(f"--checkpoint {path} is at step {step}, the end of {budget}: evaluating only", flush=True)
    return step


def chunk_coverage(ends: np.ndarray, horizon: int) -> tuple:
    """(share, longest): the share of the chunk starts 0..N-H whose H transitions lie within one episode (the chunks
    ReplayBuffer.sample_chunks marks valid; the others are masked out of the critic and BC losses), and the length
    of the longest episode (`ends` marks each episode's last transition)."""
    n = len(ends)
    edges = np.concatenate([[-1], np.flatnonzero(ends), [n - 1]])
    lengths = np.diff(edges)
    longest = int(lengths.max(initial=0))
    starts = n - horizon + 1
    if starts <= 0:
        return 0.0, longest
    crossings = np.concatenate([[0], np.cumsum(ends > 0)])  # an episode ends within [s, s + H - 2]: invalid
    return float(np.mean(crossings[horizon - 1: horizon - 1 + starts] == crossings[:starts])), longest


def check_chunks(ends: np.ndarray, horizon: int, env_id: str) -> None:
    """No valid chunk: one DatasetError line suggesting a --horizon-length that fits; under half valid: a one-line
    warning on stderr (the critic and the BC flow then learn from that share of the data only)."""
    share, longest = chunk_coverage(ends, horizon)
    if longest == 0:
        raise DatasetError(f"dataset {env_id!r} has no transitions")
    if share == 0:
        raise DatasetError(f"no action chunk of --horizon-length {horizon} fits in one episode of {env_id!r} (its longest "
                           f"episode has {longest} step{'s' if longest > 1 else ''}), so the critic and the BC flow would "
                           f"never be trained; pass --horizon-length {longest}{' or less' if longest > 1 else ''}")
    if share < 0.5:
        fits = next((h for h in range(horizon - 1, 0, -1) if chunk_coverage(ends, h)[0] >= 0.5), 1)
        print(f"warning: only {share:.0%} of the action chunks of --horizon-length {horizon} fit in one episode of "
              f"{env_id!r}; the others are masked out of the critic and BC losses (--horizon-length {fits} keeps "
              f"{chunk_coverage(ends, fits)[0]:.0%})", file=sys.stderr, flush=True)


class LogParam(nn.Module):
    """A positive scalar stored as its log (QAM-EDIT's entropy temperature, initialised to 1)."""

    def __init__(self):
        super().__init__()
        self.log_value = nn.Parameter(torch.zeros(()))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict:
    args = resolve_task_settings(args)  # fills the per-task fields left at None (TASK_SETTINGS)
    check_args(args)  # the resolved values, before any work
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
    data.transitions["rewards"] = transform_rewards(data.transitions["rewards"], args.env_id, args.sparse)
    obs_dim = data.transitions["observations"].shape[1]
    act_dim = data.transitions["actions"].shape[1]
    H = args.horizon_length
    check_chunks(data.transitions["ends"], H, args.env_id)  # error if no chunk lies within an episode, warning < 50%
    chunk_dim = act_dim * H if args.action_chunking else act_dim  # what the critic and the policies see
    dims = dict(obs_dim=obs_dim, act_dim=act_dim)
    buffer = ReplayBuffer(data.transitions, len(data.transitions["rewards"]) + args.online_steps, device)

    # networks: critic ensemble (+ target), BC flow actor_slow (+ EMA target = base field b), fine field actor_fast
    def field():
        return VectorField(obs_dim, chunk_dim, args.hidden_dim, args.num_layers).to(device)

    critic = Critic(obs_dim, chunk_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic = Critic(obs_dim, chunk_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    actor_slow, target_actor_slow, actor_fast = field(), field(), field()  # actor_fast: its own initialisation
    target_critic.load_state_dict(critic.state_dict())
    target_actor_slow.load_state_dict(actor_slow.state_dict())
    target_critic.requires_grad_(False)
    target_actor_slow.requires_grad_(False)
    modules = dict(critic=critic, target_critic=target_critic, actor_slow=actor_slow, target_actor_slow=target_actor_slow,
                   actor_fast=actor_fast)
    if args.fql_alpha > 0:
        modules["one_step_actor"] = OneStepPolicy(obs_dim, chunk_dim, args.hidden_dim, args.num_layers).to(device)
    if args.edit_scale > 0:
        modules["edit_actor"] = EditPolicy(obs_dim, chunk_dim, args.hidden_dim, args.num_layers).to(device)
        modules["edit_alpha"] = LogParam().to(device)
    trained = [m for name, m in modules.items() if not name.startswith("target_")]
    params = [p for m in trained for p in m.parameters()]
    # one Adam over all networks after one global gradient-norm clip, as the official optax chain (agents/qam.py:387-389)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, **({"fused": True} if device.type == "cuda" else {"foreach": True}),
                                 capturable=args.cudagraphs)  # capture: Adam's step counter lives on the device
    start_step = load_checkpoint(args.checkpoint, args, modules, optimizer, dims, device) if args.checkpoint else 0
    polyak = ([p for m in (critic, actor_slow) for p in m.parameters()],
              [p for m in (target_critic, target_actor_slow) for p in m.parameters()])
    target_entropy = -args.edit_target_entropy_multiplier * chunk_dim

    def policy(obs: torch.Tensor, generators: Optional[list] = None) -> torch.Tensor:
        """The deployed policy (chunk of H actions, or one): ODE of the fine field (of the BC flow if inv_temp = 0),
        or QAM-FQL's one-step policy, plus QAM-EDIT's edit; best-of-n by the mean critic value. Noise from the
        global RNG, or from one generator per row (evaluation)."""
        with torch.no_grad():
            n = args.best_of_n
            obs_n = obs.repeat_interleave(n, 0) if n > 1 else obs
            z = draw_noise(obs.shape[0], (n, chunk_dim), generators, device).view(-1, chunk_dim)
            if args.fql_alpha > 0:
                actions = modules["one_step_actor"](obs_n, z).clamp(-1.0, 1.0)
            else:
                actions = sample_flow(actor_fast if args.inv_temp != 0 else actor_slow, obs_n, z, args.flow_steps)
                if args.edit_scale > 0:
                    noise = draw_noise(obs.shape[0], (n, chunk_dim), generators, device).view(-1, chunk_dim)
                    actions = (actions + args.edit_scale * modules["edit_actor"](obs_n, actions, noise)[0]).clamp(-1.0, 1.0)
            if n > 1:
                best = critic(obs_n, actions).mean(0).view(-1, n).argmax(1)
                actions = actions.view(-1, n, chunk_dim)[torch.arange(obs.shape[0], device=device), best]
            return actions

    def bc_flow_policy(obs: torch.Tensor, generators: Optional[list] = None) -> torch.Tensor:
        return sample_flow(actor_slow, obs, draw_noise(obs.shape[0], (chunk_dim,), generators, device), args.flow_steps)

    def update(batch: dict) -> dict:
        obs = batch["observations"]
        loss_critic, q = critic_loss(critic, target_critic, batch, policy(batch["next_observations"]), args.gamma, H, args.rho)
        loss_flow = bc_flow_loss(actor_slow, obs, batch["critic_actions"], batch["valid"])
        loss_adj, adj_mean = adjoint_matching_loss(actor_fast, target_actor_slow, target_critic, obs, chunk_dim,
                                                   args.flow_steps, args.inv_temp)
        loss = loss_critic + loss_flow + loss_adj
        out = {"critic_loss": loss_critic, "flow_loss": loss_flow, "adj_loss": loss_adj, "adj_mean": adj_mean}
        if args.fql_alpha > 0:
            distill, fql_q = qam_fql_losses(modules["one_step_actor"], actor_fast, critic, obs, chunk_dim, args.flow_steps)
            loss = loss + fql_q + args.fql_alpha * distill
            out.update(fql_distill_loss=distill, fql_q_loss=fql_q)
        if args.edit_scale > 0:
            log_alpha = modules["edit_alpha"].log_value
            edit_q, edit_entropy, alpha_loss, entropy = qam_edit_losses(
                modules["edit_actor"], log_alpha, actor_fast, critic, obs, chunk_dim, args.flow_steps, args.edit_scale,
                target_entropy)
            loss = loss + edit_q + edit_entropy + alpha_loss
            out.update(edit_q_loss=edit_q, edit_entropy_loss=edit_entropy, edit_alpha_loss=alpha_loss,
                       edit_entropy=entropy, edit_alpha=log_alpha.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.max_grad_norm > 0:
            out["grad_norm"] = nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
        with torch.no_grad():  # Polyak with the weights before this step, as agents/qam.py's target_update
            torch._foreach_lerp_(polyak[1], polyak[0], args.tau)
        optimizer.step()
        out.update(q_mean=q.mean(), total_loss=loss)
        return {k: v.detach() for k, v in out.items()}

    if args.compile:
        # CUDA graphs via inductor's CUDA-graph trees ("reduce-overhead"), not tensordict: no extra dependency, one code
        # path with --compile. The update compiles to 4 graphs; the breaks are torch's own, none in this file: at
        # optimizer.zero_grad (never traced), loss.backward (AOT autograd compiles it with the forward) and around
        # optimizer.step (on purpose, pytorch#104053); the adjoint's VJPs are traced (input_vjp)
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    eval_envs = [data.make_env() for _ in range(min(args.eval_episodes, args.eval_envs))]
    online_env = data.make_env() if args.online_steps > 0 else None
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name  # created only now: every check above comes first
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    total = args.total_steps + args.online_steps
    progress = Progress(total, start_step)
    online_obs, online_queue, episode_return, episode_length = None, [], 0.0, 0
    online_seeded = False  # the online env is seeded once, at its first reset; later resets continue its RNG
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    metrics: dict = {}
    losses: dict = {}
    logged: dict = {}  # the losses of the last log step, returned with the final evaluation
    t0, last_log_step = time.time(), start_step

    def run_evaluation(step: int) -> dict:
        """Same env seeds and policy noise at every evaluation (evaluate: per episode), independent of the training RNG."""
        policies = {"": policy, "bc_flow_": bc_flow_policy} if args.eval_bc_flow else {"": policy}
        result = {}
        for prefix, pol in policies.items():
            m = evaluate(data, eval_envs, pol, act_dim, args.eval_episodes, EVAL_SEED * args.seed, device)
            result.update({f"eval/{prefix}{k}": v for k, v in m.items()})
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        progress.write(f"step {step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in result.items() if not k.endswith("_std")))
        return result

    for step in range(start_step + 1, total + 1):
        train_now = True
        if step > args.total_steps:  # online: one env step (chunks executed open-loop), then one update
            if online_obs is None:
                online_obs, _ = online_env.reset(seed=None if online_seeded else args.seed)
                online_seeded = True
            if not online_queue:
                chunk = policy(torch.as_tensor(data.flatten(online_obs)[None], device=device))[0].cpu().numpy()
                online_queue = list(chunk.reshape(-1, act_dim))
            action = online_queue.pop(0)
            next_obs, reward, terminated, truncated, info = online_env.step(action)
            buffer.add(observations=data.flatten(online_obs), actions=action,
                       rewards=transform_rewards(reward, args.env_id, args.sparse), masks=1.0 - float(terminated),
                       next_observations=data.flatten(next_obs), ends=float(terminated or truncated))
            episode_return, episode_length = episode_return + float(reward), episode_length + 1
            online_obs = next_obs
            if terminated or truncated:
                writer.add_scalar("charts/episodic_return", episode_return, step)
                writer.add_scalar("charts/episodic_length", episode_length, step)
                if "success" in info:
                    writer.add_scalar("charts/success", float(info["success"]), step)
                online_obs, online_queue, episode_return, episode_length = None, [], 0.0, 0
            train_now = step - args.total_steps >= args.start_training

        if train_now:
            if args.cudagraphs:  # capture: a new replay may overwrite the previous outputs (read below, before the next)
                torch.compiler.cudagraph_mark_step_begin()
            losses = update(buffer.sample_chunks(args.batch_size, H, args.gamma, args.action_chunking))
            nonfinite |= ~torch.isfinite(losses["total_loss"])  # the NaN/inf guard: an eager op on a returned tensor

        log_now, eval_now = step % args.log_freq == 0 or step == total, step % args.eval_freq == 0 or step == total
        if (log_now or eval_now) and nonfinite.item():  # checked before anything is logged, evaluated or saved
            raise NonFiniteLossError(
                f"non-finite loss within steps {last_log_step + 1}..{step}; training stopped"
                + (f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))
        if log_now and losses:
            sps = (step - last_log_step) / (time.time() - t0)
            logged = {f"losses/{k}": v.item() for k, v in losses.items()}
            for k, v in logged.items():
                writer.add_scalar(k, v, step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.update(step, sps=sps, critic=losses["critic_loss"].item(), adj=losses["adj_loss"].item(),
                            q=losses["q_mean"].item(), **headline(metrics))
            t0, last_log_step = time.time(), step
        if eval_now:
            metrics = run_evaluation(step)
            if args.save_model:
                save_checkpoint(checkpoint_path, modules, optimizer, step, args, dims)
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
