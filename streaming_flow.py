"""Streaming Flow Policy (SFP).

Paper: "Streaming Flow Policy: Simplifying diffusion/flow-matching policies by treating action
trajectories as flow trajectories", Sunshine Jiang, Xiaolin Fang, Nicholas Roy, Tomas Lozano-Perez,
Leslie Pack Kaelbling, Siddharth Ancha, arXiv:2505.21851 (CoRL 2025).
Official code (PyTorch): https://github.com/siddancha/streaming-flow-policy

Idea. A diffusion / flow-matching policy samples a whole chunk of future actions from noise and
can act only once its sampler has finished ("a trajectory of trajectories"). SFP makes flow time
BE action time: a demonstrated chunk of actions is a trajectory xi(t), t in [0, 1], and the policy
learns a velocity field v_theta(a, t | h) in the ACTION space (conditioned on the observation
history h) whose flow, started from a narrow Gaussian around the last executed action, traces the
action trajectory itself. Integrating the ODE one step yields the next action, so actions stream
to the robot while the flow is being integrated. The conditional flow around each demo is
stabilizing: its velocity xi'(t) - k (a - xi(t)) pulls a perturbed action back to the demo with
rate e^{-kt}, and its marginal p_t(a | xi) = N(xi(t), sigma0^2 e^{-2kt}) is known in closed form,
so conditional flow matching applies. Flow matching reproduces the per-time marginals of the
demos p(a | t, h) (not their joint over time); the stochastic variant adds a latent variable z,
drawn from N(0, I) at t = 0 and flowing towards the trajectory, so the policy can pick a mode
from noise even when every sample starts at the same action.

This file implements:
  * `--variant deterministic`: the action-space SFP (state a), stabilizing when `--k` > 0;
  * `--variant stochastic`: the latent SFP (state (a, z)), a(t) = xi(t) + (a0 - xi(0)) e^{-kt}
    + sigma_r t z0, z(t) = (1 - (1 - sigma1) t) z0 + t xi(t); at inference a(0) is exactly the last
    executed action and only z(0) ~ N(0, I) is random (paper's site, official sfps.py and notebooks);
  * streaming execution as a Python generator that yields each action as soon as its integration
    step is done, with receding-horizon control (execute `--action-horizon` actions, re-observe,
    restart from the last executed action, or with next-state actions from the current state);
  * `--policy chunk`: the standard flow-matching chunk policy (noise -> whole chunk, then act),
    trained and evaluated in the same way, as the paper's baseline;
  * toy mode `--env-id toy/crossing` / `toy/wine-glass`: the paper's two-demo 1-D examples; the
    learned field's sampled trajectories are plotted against the demos (PNG in the run dir).
  * `--action-space next-state` (default): as the official Push-T code, which replaces every action
    by the next agent position, the action is the next value of some observation dims (PointMaze:
    the velocity) and a controller fitted to the demos executes it; `--action-space env` imitates
    the dataset's own actions.
Deliberate differences from the official code: a FiLM-conditioned residual MLP instead of the
65M-parameter Diffusion Policy U-Net (so it trains on a CPU); Euler integration (one step per
action by default) instead of dopri5. Next-state actions (this repo's adaptation of the Push-T
protocol to a force-controlled robot): PointMaze takes forces, and its next position is fixed by
the current velocity to 99.97%, so the controllable next-state quantity is the velocity; the
controller u = clip((v* - gamma v) / c) inverts x_{t+1} = gamma x_t + c u_t fitted to the demos by
least squares (the Push-T env tracks position targets with a PD controller). As in the official code
the chunk starts at the current state (knot 0), and every replan restarts from it. With
`--action-space env` the chunk starts at the previous executed action (zero at an episode's start).
The action-space variant starts inference at a(0) ~ N(last action, sigma0^2), the paper's narrow Gaussian;
the official Push-T sfpd.py starts exactly at the current position (`--no-sample-start`). The chunk
policy's target is a_j..a_{j+H-1} (Diffusion Policy's chunk starts one action earlier, at a_{j-1}, and
executes from its second action: the same executed actions). As in the official code: one datum per step
j <= T - H + action_horizon (at most action_horizon - 1 knots padded after an episode's end), AdamW with
a cosine schedule, and diffusers' EMAModel decay schedule as the official train.py configures it.

Defaults: action-space variant, next-state actions, sigma0 = 0.1, k = 1, H = 16, 8 executed actions, 2
observations. On the embedded PointMaze demos this setting beat the chunk policy (0.84 vs 0.70 success
with next-state actions, 0.77 with force actions); on force actions the deterministic variant averages
the demos' route modes and fails, and the latent variant reached 0.49 (docs/streaming_flow.md; 3-seed
numbers measured before the EMA, end-padding and latent-start fixes, one-seed re-checks there).

Usage:
  python streaming_flow.py                                            # SFP on the embedded PointMaze demos
  python streaming_flow.py --variant stochastic --sigma1 0.5          # latent SFP
  python streaming_flow.py --action-space env                         # imitate the dataset's force actions
  python streaming_flow.py --policy chunk                             # flow-matching chunk baseline
  python streaming_flow.py --cudagraphs                               # compiled update as CUDA graphs (CUDA only)
  python streaming_flow.py --env-id toy/crossing --variant deterministic --sigma0 0.05 --total-steps 2000 \
      --batch-size 256 --hidden-dim 64 --num-blocks 2 --learning-rate 1e-3  # toy, saves trajectories.png
Bad input (a flag out of its range, a broken dataset file or checkpoint, --target-dims that do not fit the dataset)
ends the run before any work with one `error: ...` line (check_args, load_checkpoint); --target-dims the demos'
actions do not explain warn in one line. See docs/streaming_flow.md for the paper <-> code map, logged metrics and
results.
"""

from __future__ import annotations

import json
import math
import os
import re
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Tuple

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
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    env_id: str = "flowrl/pointmaze/demos-v0"
    """demonstrations: toy/crossing, toy/wine-glass, a local Minari dataset dir, an embedded id (datasets/) or a Minari id"""
    total_steps: int = 25_000
    """gradient steps"""
    batch_size: int = 1024
    """the batch size of each gradient step"""
    learning_rate: float = 1e-4
    """AdamW learning rate (peak of the cosine schedule)"""
    weight_decay: float = 1e-6
    """AdamW weight decay"""
    lr_warmup_steps: int = 500
    """linear warm-up steps of the cosine learning-rate schedule"""
    ema_max_decay: float = 0.9999
    """EMA of the weights (evaluation uses the EMA network), as diffusers' EMAModel in the official code: decay
    (1 + s) / (10 + s) at s = step - update_after_step - 1 (0 for s <= 0), clipped to [ema_min_decay, ema_max_decay]"""
    ema_min_decay: float = 0.0
    """lower bound of the EMA decay (diffusers' min_decay)"""
    ema_update_after_step: int = 0
    """EMA decay is 0 (EMA = weights) for this many gradient steps, and one more (diffusers' update_after_step)"""
    ema_warmup: bool = False
    """use diffusers' warm-up decay 1 - (1 + s / ema_inv_gamma)^-ema_power instead of (1 + s) / (10 + s); off in the
    official code (it passes parameters, not a module, so diffusers ignores its power=0.75)"""
    ema_inv_gamma: float = 1.0
    """--ema-warmup only: inverse multiplicative factor of the warm-up"""
    ema_power: float = 0.75
    """--ema-warmup only: exponent of the warm-up (the official code passes 0.75, unused there)"""
    hidden_dim: int = 256
    """width of the velocity network"""
    num_blocks: int = 3
    """FiLM residual blocks of the velocity network"""
    time_emb_dim: int = 64
    """size of the sinusoidal flow-time embedding"""
    time_emb_scale: float = 1.0
    """t is multiplied by this before the sinusoidal embedding (1: t in [0, 1] as the official code)"""
    eval_freq: int = 5_000
    """evaluate every this many gradient steps (and at the end)"""
    eval_episodes: int = 100
    """episodes per evaluation"""
    eval_envs: int = 50
    """environments stepped in parallel (one batched policy call per step)"""
    log_freq: int = 500
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
    policy: Literal["sfp", "chunk"] = "sfp"
    """sfp: streaming flow policy; chunk: standard flow-matching action-chunk policy (the paper's baseline)"""
    variant: Literal["deterministic", "stochastic"] = "deterministic"
    """SFP variant: action-space flow (a), or latent flow over (a, z)"""
    obs_horizon: int = 2
    """observations the policy is conditioned on"""
    pred_horizon: int = 16
    """actions per chunk (for SFP the chunk's first knot is the previous action: flow time spans pred_horizon - 1 steps)"""
    action_horizon: int = 8
    """actions executed before re-observing (receding horizon)"""
    sigma0: float = 0.1
    """std of the initial Gaussian around xi(0) (and, action-space variant only, around the last action at inference)"""
    sigma1: float = 0.5
    """stochastic variant: std of a(1) around xi(1) (needs sigma0 e^-k <= sigma1)"""
    k: float = 1.0
    """stabilizing gain: velocity xi'(t) - k (a - xi(t)); 0 gives the non-stabilizing flow"""
    integration_steps_per_action: int = 1
    """SFP Euler steps between two streamed actions"""
    flow_steps: int = 10
    """chunk policy: Euler steps from noise to the chunk"""
    action_space: Literal["env", "next-state"] = "next-state"
    """next-state: as the official Push-T code (which replaces each action by the next agent position), the action is
    the next value of the observation dims --target-dims, executed through a controller fitted to the demos
    (NextStateController). env: imitate the dataset's actions as they are. Toy tasks ignore it"""
    target_dims: Tuple[int, ...] = (6, 7)
    """next-state: flattened-observation indices whose next value is the action, one per env action dim ((6, 7): the
    velocity in PointMaze's flattened observation achieved_goal, desired_goal, (x, y, vx, vy); other datasets need
    their own dims, or --action-space env; dims the actions do not move stop the run, dims the fitted controller
    does not explain warn)"""
    sample_start: bool = True
    """action-space variant: inference starts at a(0) ~ N(last action, sigma0^2) as in the paper (off: exactly at the last
    action, as the official Push-T code). The latent variant always starts exactly at the last action (paper, official code)"""
    toy_samples: int = 200
    """toy mode: trajectories sampled for the figure and the metrics"""


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class DatasetError(ValueError):
    """Bad --env-id or dataset contents (a missing, empty, truncated or foreign file); one line, exit 1."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not streaming_flow's, made for other networks or data, or past the
    requested --total-steps; one line, exit 1."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (ArgumentError, DatasetError, CheckpointError, NonFiniteLossError)


def check_args(args: Args) -> None:
    """Every flag checked once, before any work: the first value outside its range raises ArgumentError (one line,
    `--flag must be <rule> (got <value>)`); conflicting flags are named together. (The flags that need the dataset,
    --env-id and the count/range of --target-dims, are checked when it is read: DatasetError.)"""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    def finite(*values: float) -> bool:
        return all(math.isfinite(v) for v in values)

    # generic (torch_deterministic, cuda, save_model, sample_start, compile: booleans; policy, variant, action_space:
    # tyro checks their choices)
    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")
    need(0 <= args.seed < 2**32, "seed", "in [0, 2**32) (numpy's seed range)")
    need(bool(args.env_id), "env_id", "a toy task, a dataset dir or a Minari id")
    need(args.checkpoint != "", "checkpoint", "a path")  # the file itself: load_checkpoint
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                            "torch.cuda.is_available() is False") + "); drop --cudagraphs or use --compile")
    need(args.total_steps >= 0, "total_steps", ">= 0")
    need(args.batch_size >= 1, "batch_size", ">= 1")
    need(finite(args.learning_rate) and args.learning_rate > 0, "learning_rate", "finite and > 0")
    need(finite(args.weight_decay) and args.weight_decay >= 0, "weight_decay", "finite and >= 0")
    need(args.lr_warmup_steps >= 0, "lr_warmup_steps", ">= 0")
    need(args.eval_freq >= 1, "eval_freq", ">= 1")
    need(args.eval_episodes >= 1, "eval_episodes", ">= 1")
    need(args.eval_envs >= 1, "eval_envs", ">= 1")
    need(args.log_freq >= 1, "log_freq", ">= 1")
    # EMA (diffusers' EMAModel schedule)
    need(finite(args.ema_max_decay) and 0 <= args.ema_max_decay <= 1, "ema_max_decay", "in [0, 1]")
    need(finite(args.ema_min_decay) and 0 <= args.ema_min_decay <= 1, "ema_min_decay", "in [0, 1]")
    if args.ema_min_decay > args.ema_max_decay:
        raise ArgumentError(f"--ema-min-decay {args.ema_min_decay} and --ema-max-decay {args.ema_max_decay} cannot be "
                            "used together (the lower bound of the decay is above its upper bound)")
    need(args.ema_update_after_step >= 0, "ema_update_after_step", ">= 0")
    need(finite(args.ema_inv_gamma) and args.ema_inv_gamma > 0, "ema_inv_gamma", "finite and > 0 (the warm-up divides by it)")
    need(finite(args.ema_power) and args.ema_power > 0, "ema_power", "finite and > 0 (0: the warm-up decay is always 0)")
    # network (time_emb_dim: sin/cos pairs, so the embedding has exactly time_emb_dim entries)
    need(args.hidden_dim >= 1, "hidden_dim", ">= 1")
    need(args.num_blocks >= 1, "num_blocks", ">= 1 (the FiLM blocks are the only path of t and the observations)")
    need(args.time_emb_dim >= 2 and args.time_emb_dim % 2 == 0, "time_emb_dim", "even and >= 2 (sin/cos pairs)")
    need(finite(args.time_emb_scale) and args.time_emb_scale > 0, "time_emb_scale", "finite and > 0 (0: no flow time)")
    # chunks and receding horizon (toy tasks use their whole demo and one observation, but the ranges still hold)
    need(args.obs_horizon >= 1, "obs_horizon", ">= 1")
    need(args.pred_horizon >= 2, "pred_horizon", ">= 2 (the chunk's first knot is its start)")
    need(args.action_horizon >= 1, "action_horizon", ">= 1")
    if args.action_horizon > args.pred_horizon - 1:
        raise ArgumentError(f"--action-horizon {args.action_horizon} and --pred-horizon {args.pred_horizon} cannot be "
                            "used together (at most --pred-horizon - 1 actions of a chunk can be executed)")
    # the flows: sigma0 = 0 is the official Push-T start (no noise); k = 0 the non-stabilizing flow
    need(finite(args.sigma0) and args.sigma0 >= 0, "sigma0", "finite and >= 0")
    need(finite(args.sigma1) and args.sigma1 >= 0, "sigma1", "finite and >= 0")
    need(finite(args.k) and args.k >= 0, "k", "finite and >= 0 (0: the non-stabilizing flow)")
    if args.policy == "sfp" and args.variant == "stochastic" and not valid_sigmas(args.sigma0, args.sigma1, args.k):
        raise ArgumentError(f"--sigma0 {args.sigma0}, --sigma1 {args.sigma1} and --k {args.k} cannot be used together "
                            "with --variant stochastic (the latent SFP needs sigma0 e^-k <= sigma1)")
    need(args.integration_steps_per_action >= 1, "integration_steps_per_action", ">= 1")
    need(args.flow_steps >= 1, "flow_steps", ">= 1")
    # next-state actions (their count and range against the dataset's observation: next_state_actions)
    need(len(args.target_dims) >= 1 and all(d >= 0 for d in args.target_dims)
         and len(set(args.target_dims)) == len(args.target_dims), "target_dims", "distinct observation indices >= 0")
    need(args.toy_samples >= 1, "toy_samples", ">= 1")


# ---------------------------------------------------------------------------------------------
# Network: residual MLP with FiLM conditioning on [sinusoidal embedding of t, observation history]
# (the official code uses Diffusion Policy's ConditionalUnet1D with the same FiLM conditioning)
# ---------------------------------------------------------------------------------------------
class SinusoidalPosEmb(nn.Module):
    """Transformer-style embedding of the flow time t in [0, 1] (not rescaled, as the official code)."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1)), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = (self.scale * t).reshape(-1, 1) * self.freqs
        return torch.cat([x.sin(), x.cos()], dim=-1)


class FiLMBlock(nn.Module):
    """x + Linear(Mish(FiLM(Linear(x)))), FiLM(h) = scale(c) * h + shift(c)."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        h = F.mish(self.norm(self.fc1(x)))
        return x + self.fc2(F.mish(h * (1.0 + scale) + shift))


class VelocityNet(nn.Module):
    """v_theta(x, t | h): x is the SFP state (a or (a, z)) or the flattened chunk; h the observation history."""

    def __init__(self, x_dim: int, cond_dim: int, hidden_dim: int, num_blocks: int, time_emb_dim: int,
                 time_emb_scale: float = 1.0):
        super().__init__()
        self.time_emb = nn.Sequential(SinusoidalPosEmb(time_emb_dim, time_emb_scale), nn.Linear(time_emb_dim, 4 * time_emb_dim), nn.Mish(),
                                      nn.Linear(4 * time_emb_dim, time_emb_dim))
        self.inp = nn.Linear(x_dim, hidden_dim)
        self.blocks = nn.ModuleList(FiLMBlock(hidden_dim, time_emb_dim + cond_dim) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.Mish(), nn.Linear(hidden_dim, x_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([self.time_emb(t), obs_cond], dim=-1)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


# ---------------------------------------------------------------------------------------------
# Demo trajectories xi(t): piecewise-linear through the chunk's K knots at t = i / (K - 1)
# ---------------------------------------------------------------------------------------------
def interpolate(knots: torch.Tensor, t: torch.Tensor) -> tuple:
    """knots (B, K, D), t (B,) in [0, 1] -> xi(t) (B, D), xi'(t) (B, D) (first-order hold, as the official code)."""
    segments = knots.shape[1] - 1
    s = t * segments
    i = (s + 1e-5).floor().clamp(0, segments - 1)  # t on a knot (as in the sampler) takes the segment to its right
    frac = (s - i).unsqueeze(-1)
    idx = i.long().view(-1, 1, 1).expand(-1, 1, knots.shape[2])
    left, right = knots.gather(1, idx).squeeze(1), knots.gather(1, idx + 1).squeeze(1)
    return left + frac * (right - left), (right - left) * segments


def conditional_velocity(a: torch.Tensor, t: torch.Tensor, knots: torch.Tensor, k: float) -> torch.Tensor:
    """Stabilizing conditional velocity field around one demo: v_xi(a, t) = xi'(t) - k (a - xi(t))."""
    xi, xi_dot = interpolate(knots, t)
    return xi_dot - k * (a - xi)


def valid_sigmas(sigma0: float, sigma1: float, k: float) -> bool:
    """The latent SFP's condition sigma0 e^-k <= sigma1 (so that sigma_r is real)."""
    return sigma1 ** 2 - sigma0 ** 2 * math.exp(-2.0 * k) >= -1e-12


def sigma_r(sigma0: float, sigma1: float, k: float) -> float:
    """Latent SFP: std added through z so that a(1) has std sigma1: sigma_r = sqrt(sigma1^2 - sigma0^2 e^{-2k})."""
    var = sigma1 ** 2 - sigma0 ** 2 * math.exp(-2.0 * k)
    if not valid_sigmas(sigma0, sigma1, k):
        raise ValueError(f"the stochastic variant needs sigma0 e^-k <= sigma1; got sigma0={sigma0}, sigma1={sigma1}, k={k}")
    return math.sqrt(max(var, 0.0))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def sfp_loss(net: nn.Module, obs_cond: torch.Tensor, knots: torch.Tensor, k: float, sigma0: float,
             variant: str = "deterministic", sigma1: float = 0.1) -> torch.Tensor:
    """Conditional flow matching loss of SFP, L_CFM = E_{(h,xi)} E_{t~U[0,1]} E_{a~p_xi(a|t)} ||v_theta(a,t|h) - v_xi(a,t)||^2.

    One t per (observation history, chunk) datum, as the official code.
    deterministic: a ~ N(xi(t), sigma0^2 e^{-2kt}) (the conditional flow a(t) - xi(t) = (a0 - xi(0)) e^{-kt}),
      target v_xi(a, t) = xi'(t) - k (a - xi(t)).
    stochastic (latent SFP, state (a, z)): z0 ~ N(0, I), eps ~ N(0, I),
      a(t) = xi(t) + sigma0 e^{-kt} eps + sigma_r t z0,  z(t) = (1 - (1 - sigma1) t) z0 + t xi(t);
      targets da/dt = xi'(t) - k (a - xi(t)) + sigma_r (1 + k t) z0,  dz/dt = xi(t) + t xi'(t) - (1 - sigma1) z0.
    """
    t = torch.rand(knots.shape[0], device=knots.device, dtype=knots.dtype)
    xi, xi_dot = interpolate(knots, t)
    tt = t.unsqueeze(-1)
    decay = torch.exp(-k * tt)
    eps = torch.randn_like(xi)
    if variant == "deterministic":
        a = xi + sigma0 * decay * eps
        target = xi_dot - k * (a - xi)
        return F.mse_loss(net(a, t, obs_cond), target)
    s_r = sigma_r(sigma0, sigma1, k)
    z0 = torch.randn_like(xi)
    a = xi + sigma0 * decay * eps + s_r * tt * z0
    z = (1.0 - (1.0 - sigma1) * tt) * z0 + tt * xi
    v_a = xi_dot - k * (a - xi) + s_r * (1.0 + k * tt) * z0
    v_z = xi + tt * xi_dot - (1.0 - sigma1) * z0
    return F.mse_loss(net(torch.cat([a, z], dim=-1), t, obs_cond), torch.cat([v_a, v_z], dim=-1))


def chunk_fm_loss(net: nn.Module, obs_cond: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """Baseline flow-matching chunk policy: linear path x_t = (1 - t) x0 + t x1, x1 = flattened chunk, target x1 - x0."""
    x1 = chunk.flatten(1)
    x0 = torch.randn_like(x1)
    t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
    x_t = (1.0 - t.unsqueeze(-1)) * x0 + t.unsqueeze(-1) * x1
    return F.mse_loss(net(x_t, t, obs_cond), x1 - x0)


# ---------------------------------------------------------------------------------------------
# Streaming samplers: Python generators that yield one action (B, act_dim) at a time
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def stream_sfp(net: nn.Module, obs_cond: torch.Tensor, a_start: torch.Tensor, num_actions: int, pred_horizon: int,
               steps_per_action: int = 1, variant: str = "deterministic", sigma0: float = 0.0,
               generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Integrate da/dt = v_theta(a, t | h) with Euler from a(0) and yield a(i / (H - 1)), i = 1..num_actions, each as
    soon as its `steps_per_action` integration steps are done.

    Flow time t = i / (pred_horizon - 1) is the time of the chunk's i-th action (its knot 0 is the start).
    deterministic (action-space SFP): a(0) ~ N(a_start, sigma0^2), the narrow Gaussian around the last executed action
      (sigma0 = 0: exactly a_start, as the official Push-T code).
    stochastic (latent SFP): a(0) = a_start exactly, whatever sigma0 (the noise enters through z(0) ~ N(0, I), as on
      the paper's site and in the official sfps.py and latent notebooks); integrates (a, z) and yields a.
    """
    act_dim = a_start.shape[-1]
    a = a_start
    if variant == "stochastic":
        a = torch.cat([a, torch.randn(a.shape, device=a.device, dtype=a.dtype, generator=generator)], dim=-1)
    elif sigma0 > 0:
        a = a + sigma0 * torch.randn(a.shape, device=a.device, dtype=a.dtype, generator=generator)
    n_steps = (pred_horizon - 1) * steps_per_action
    t = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
    for i in range(num_actions):
        for j in range(steps_per_action):
            a = a + net(a, t, obs_cond) / n_steps
            t = t.fill_((i * steps_per_action + j + 1) / n_steps)
        yield a[:, :act_dim]


@torch.no_grad()
def stream_chunk(net: nn.Module, obs_cond: torch.Tensor, num_actions: int, pred_horizon: int, act_dim: int,
                 flow_steps: int, generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Baseline: integrate the chunk flow from noise for all `flow_steps`, then yield the chunk's first actions."""
    x = torch.randn(obs_cond.shape[0], pred_horizon * act_dim, device=obs_cond.device, dtype=obs_cond.dtype,
                    generator=generator)
    dt = 1.0 / flow_steps
    t = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for i in range(flow_steps):
        x = x + dt * net(x, t, obs_cond)
        t = t + dt
    chunk = x.view(x.shape[0], pred_horizon, act_dim)
    for i in range(num_actions):
        yield chunk[:, i]


# ---------------------------------------------------------------------------------------------
# Data: demonstrations as chunks, toy tasks, environments, evaluation
# ---------------------------------------------------------------------------------------------
ACTION_CLIP = 1.0 - 1e-5


def flatten_obs(space: gym.Space, obs) -> np.ndarray:
    """Flatten (a batch of) observations of a Box or Dict space to float32 (batch, dim) in `space`'s key order."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_obs(s, obs[k]) for k, s in space.spaces.items()], axis=-1)
    obs = np.asarray(obs, dtype=np.float32)
    return obs.reshape(*obs.shape[: obs.ndim - len(space.shape)], -1)


def check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(f"SFP needs a continuous 1-D Box action space; this dataset has {act_space}")
    if not np.all(np.isfinite(act_space.low)) or not np.all(np.isfinite(act_space.high)):
        raise DatasetError(f"SFP needs a bounded action space to rescale to [-1, 1]; got {act_space}")
    spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    for space in spaces:
        if not isinstance(space, gym.spaces.Box) or len(space.shape) > 1:
            raise DatasetError(f"SFP handles flat Box (or Dict of flat Box) observations; got {obs_space}")


def to_unit_box(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    return np.clip(2.0 * (actions - low) / (high - low) - 1.0, -ACTION_CLIP, ACTION_CLIP).astype(np.float32)


def unit_box_env(env: gym.Env) -> gym.Env:
    space = env.action_space
    if np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0):
        return env
    return gym.wrappers.RescaleAction(env, -1.0, 1.0)


class Demos:
    """Demonstration episodes, cut into chunks on demand (vectorised gathers on `device`).

    Per datum (one per time step j = 0 .. T - H + action_horizon of every episode of T steps, as the official
    sampler: Diffusion Policy's sample indices with pad_before = obs_horizon - 1, pad_after = action_horizon - 1):
      obs history  o_{j-obs_horizon+1..j} (repeating o_0 before the episode start), min-max normalised to [-1, 1];
      SFP knots    a_{j-1}, a_j, ..., a_{j+H-2}  (a_{-1}: the previous action, 0 at the episode start, or with
                   `state_action` (next-state actions) the current state, so knot 0 is always the current state, as
                   the official Push-T code; the last action repeats at the end, on at most action_horizon - 1
                   knots, so the executed knots 1..action_horizon are always real actions);
      chunk        a_j, ..., a_{j+H-1}           (the chunk policy's target; at most action_horizon knots padded).
    `action_horizon` None: H - 1 (every time step of an episode is a datum).
    """

    def __init__(self, episodes: list, obs_horizon: int, pred_horizon: int, device: torch.device, whole: bool = False,
                 state_action: Optional[Callable] = None, action_horizon: Optional[int] = None):
        action_horizon = pred_horizon - 1 if action_horizon is None else action_horizon
        all_obs = np.concatenate([o for o, _ in episodes])
        self.obs_low, self.obs_high = all_obs.min(0), all_obs.max(0)
        obs_parts, act_parts, obs_base, act_base = [], [], [], []
        n_obs = n_act = 0
        for obs, acts in episodes:
            if whole:  # toy mode: one datum per demo, whose knots are the whole demo (for both policies)
                obs_parts.append(obs[:1])
                act_parts.append(acts)
                obs_base.append(np.array([n_obs]))
                act_base.append(np.array([n_act]))
                n_obs, n_act = n_obs + 1, n_act + len(acts)
                continue
            T = len(acts)
            obs_parts.append(np.concatenate([np.repeat(obs[:1], obs_horizon - 1, 0), obs[:T]]))
            pad = np.repeat(acts[-1:], pred_horizon, 0)
            before = state_action(obs[:1]) if state_action is not None else np.zeros_like(acts[:1])
            act_parts.append(np.concatenate([before, acts, pad]))
            windows = max(0, min(T, T - pred_horizon + action_horizon + 1))  # j <= T - H + action_horizon
            obs_base.append(n_obs + np.arange(windows))
            act_base.append(n_act + np.arange(windows))
            n_obs += T + obs_horizon - 1
            n_act += T + 1 + pred_horizon
        if not whole and sum(len(b) for b in obs_base) == 0:
            raise DatasetError(f"every episode is shorter than the {pred_horizon - action_horizon + 1} steps a chunk needs "
                               f"(--pred-horizon {pred_horizon}, at most --action-horizon - 1 = {action_horizon - 1} "
                               f"knots padded after an episode's end)")
        self.obs = torch.as_tensor(self.normalize(np.concatenate(obs_parts)), device=device)
        self.acts = torch.as_tensor(np.concatenate(act_parts), dtype=torch.float32, device=device)
        self.obs_base = torch.as_tensor(np.concatenate(obs_base), device=device)
        self.act_base = torch.as_tensor(np.concatenate(act_base), device=device)
        self.obs_offsets = torch.arange(obs_horizon, device=device)
        self.act_offsets = torch.arange(pred_horizon, device=device)
        self.chunk_offset = 0 if whole else 1
        self.size = len(self.obs_base)
        self.obs_dim, self.act_dim = self.obs.shape[1], self.acts.shape[1]

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        span = np.where(self.obs_high - self.obs_low > 1e-6, self.obs_high - self.obs_low, 2.0)
        return (2.0 * (obs - self.obs_low) / span - 1.0).astype(np.float32)

    def sample(self, batch_size: int, policy: str, generator: Optional[torch.Generator] = None) -> tuple:
        idx = torch.randint(0, self.size, (batch_size,), device=self.obs.device, generator=generator)
        obs_cond = self.obs[self.obs_base[idx, None] + self.obs_offsets].flatten(1)
        offset = self.chunk_offset if policy == "chunk" else 0
        seq = self.acts[self.act_base[idx, None] + offset + self.act_offsets]
        return obs_cond, seq


class Task:
    """What main() trains on: the demos plus, for environments, the means to evaluate."""

    def __init__(self, episodes: list, make_env: Optional[Callable] = None, flatten: Optional[Callable] = None,
                 score: Optional[Callable] = None, toy: Optional[np.ndarray] = None, state_action: Optional[Callable] = None):
        self.episodes = episodes  # [(obs (T(+1), obs_dim), actions (T, act_dim))]
        self.make_env, self.flatten, self.score = make_env, flatten, score
        self.state_action = state_action  # next-state actions: flat raw obs (B, obs_dim) -> the current state as an action
        self.toy = toy  # toy mode: the demo trajectories (n_demos, K, 1)


# -------------------------------------------------------------------------- toy tasks (paper Fig. 2-4)
TOY_KNOTS = 101


def clamped_cubic_spline(x: np.ndarray, y: np.ndarray, slope0: float, slope1: float, query: np.ndarray) -> np.ndarray:
    """Cubic spline with continuous second derivatives through (x, y) and given end slopes, evaluated at `query`."""
    n, h = len(x) - 1, np.diff(x)
    A, b = np.zeros((n + 1, n + 1)), np.zeros(n + 1)
    A[0, :2], b[0] = [2 * h[0], h[0]], 6 * ((y[1] - y[0]) / h[0] - slope0)
    A[n, n - 1:], b[n] = [h[-1], 2 * h[-1]], 6 * (slope1 - (y[n] - y[n - 1]) / h[-1])
    for i in range(1, n):
        A[i, i - 1:i + 2] = [h[i - 1], 2 * (h[i - 1] + h[i]), h[i]]
        b[i] = 6 * ((y[i + 1] - y[i]) / h[i] - (y[i] - y[i - 1]) / h[i - 1])
    m = np.linalg.solve(A, b)  # second derivatives at the knots
    i = np.clip(np.searchsorted(x, query, side="right") - 1, 0, n - 1)
    left, right, hi = query - x[i], x[i + 1] - query, h[i]
    return (m[i] * right ** 3 + m[i + 1] * left ** 3) / (6 * hi) + (y[i] / hi - m[i] * hi / 6) * right \
        + (y[i + 1] / hi - m[i + 1] * hi / 6) * left


def toy_demos(name: str, num_knots: int = TOY_KNOTS) -> np.ndarray:
    """The paper's 1-D two-demo examples as (2, num_knots, 1) action-vs-time trajectories on t = linspace(0, 1).

    crossing: an S through (0, .25, .5, .75, 1) -> (0, .75, 0, -.75, 0), end slopes 3, and its mirror image.
    wine-glass: 0 until t = .25, then a spline through (.25, .5, .75, 1) -> (0, .62, .70, .5) (slopes 0, -.7), and its mirror.
    """
    t = np.linspace(0.0, 1.0, num_knots)
    if name == "toy/crossing":
        right = clamped_cubic_spline(np.array([0, .25, .5, .75, 1]), np.array([0, .75, 0, -.75, 0]), 3.0, 3.0, t)
    elif name == "toy/wine-glass":
        stem = clamped_cubic_spline(np.array([.25, .5, .75, 1]), np.array([0, .62, .70, .5]), 0.0, -0.7, t)
        right = np.where(t <= 0.25, 0.0, stem)
    else:
        raise DatasetError(f"unknown toy task {name!r}; choose toy/crossing or toy/wine-glass")
    return np.stack([right, -right]).astype(np.float32)[..., None]


def load_toy(name: str) -> Task:
    demos = toy_demos(name)
    return Task([(np.zeros((1, 1), np.float32), demo) for demo in demos], toy=demos)


# -------------------------------------------------------------------------- Minari demonstrations
class NextStateController(gym.Wrapper):
    """`--action-space next-state`: the policy's action is the next value x* of some observation dims, min-max normalised
    to [-1, 1] with the demos' range. The env receives u = clip((x* - gamma x) / c, -1, 1), the inverse of the per-dim
    linear model x_{t+1} = gamma x_t + c u_t fitted to the demos by least squares (for PointMaze's velocity: a
    P-controller with damping compensation). The official Push-T env plays this role with a PD controller that
    tracks the commanded agent position."""

    def __init__(self, env: gym.Env, flatten: Callable, dims: tuple, gamma: np.ndarray, c: np.ndarray, low: np.ndarray,
                 high: np.ndarray):
        super().__init__(env)
        self.flatten, self.dims, self.gamma, self.c, self.low, self.high = flatten, list(dims), gamma, c, low, high
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(dims),), np.float32)
        self.state = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.state = self.flatten(obs)[self.dims]
        return obs, info

    def step(self, action):
        target = self.low + (np.asarray(action, dtype=np.float32) + 1.0) * (self.high - self.low) / 2.0
        u = np.clip((target - self.gamma * self.state) / self.c, -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = self.env.step(u)
        self.state = self.flatten(obs)[self.dims]
        return obs, reward, terminated, truncated, info


PLAUSIBLE_FIT = 0.5  # R^2 of the demos' actions given back by the fitted controller, below which --target-dims warn
# (measured: PointMaze velocity 0.92, Reacher joint velocities 1.00 / 0.93; PointMaze positions -0.11, Reacher angles -3.8)


def check_target_dims(dims: tuple, obs_dim: int, act_dim: int, env_id: str) -> None:
    """--target-dims must name one flattened-observation index per action dim (DatasetError otherwise)."""
    if len(dims) != act_dim or any(not 0 <= d < obs_dim for d in dims):
        raise DatasetError(f"--target-dims {list(dims)} must name {act_dim} of the {obs_dim} observation dims of {env_id!r}, "
                           f"one per action dim (the default 6 7 is PointMaze's velocity), or use --action-space env")


def next_state_actions(episodes: list, dims: tuple, env_id: str) -> tuple:
    """Replace each action a_t by x_{t+1} = o_{t+1}[dims] (normalised to [-1, 1]); fit x_{t+1} = gamma x_t + c a_t per dim.
    Returns (episodes, state_action, controller parameters)."""
    obs_dim, act_dim = episodes[0][0].shape[1], episodes[0][1].shape[1]
    check_target_dims(dims, obs_dim, act_dim, env_id)
    if any(len(obs) != len(acts) + 1 for obs, acts in episodes):
        raise DatasetError(f"--action-space next-state needs the final observation of every episode in {env_id!r}")
    x = np.concatenate([obs[:-1][:, dims] for obs, _ in episodes])
    x_next = np.concatenate([obs[1:][:, dims] for obs, _ in episodes])
    u = np.concatenate([acts for _, acts in episodes])
    gamma, c = np.zeros(act_dim, np.float32), np.zeros(act_dim, np.float32)
    for i in range(act_dim):
        (gamma[i], c[i]), *_ = np.linalg.lstsq(np.stack([x[:, i], u[:, i]], 1), x_next[:, i], rcond=None)
    if np.any(np.abs(c) * u.std(0) < 1e-3 * (x_next - gamma * x).std(0).clip(min=1e-8)) or np.any(np.abs(c) < 1e-8):
        raise DatasetError(f"the actions of {env_id!r} do not move observation dims {list(dims)}; choose --target-dims")
    # plausibility: the controller (the inverse of the fit) applied to the demos' own transitions should give back the
    # demos' actions; dims the actions move only a little or through other dims (positions, angles) do not
    fit = 1.0 - ((np.clip((x_next - gamma * x) / c, -1.0, 1.0) - u) ** 2).mean(0) / u.var(0).clip(min=1e-12)
    if np.any(fit < PLAUSIBLE_FIT):
        print(f"warning: --target-dims {list(dims)} of {env_id!r} look implausible: the controller fitted to the demos "
              f"gives back their own actions with R^2 {', '.join(f'{r:.2f}' for r in fit)} (below {PLAUSIBLE_FIT}), so "
              f"the policy's next-state targets may be out of the actions' reach; pass the observation dims the actions "
              f"drive (e.g. velocities) or use --action-space env", file=sys.stderr, flush=True)
    all_x = np.concatenate([obs[:, dims] for obs, _ in episodes])
    low, high = all_x.min(0), all_x.max(0)
    span = np.where(high - low > 1e-6, high - low, 2.0)

    def state_action(flat_obs: np.ndarray) -> np.ndarray:
        return np.clip(2.0 * (flat_obs[..., dims] - low) / span - 1.0, -1.0, 1.0).astype(np.float32)

    episodes = [(obs, state_action(obs[1:])) for obs, _ in episodes]
    return episodes, state_action, (gamma, c, low, low + span)


def dataset_problem(data_dir: Path, e: Exception) -> str:
    """What is wrong with the files of the Minari dataset in `data_dir`, from the exception reading it raised."""
    hdf5, meta = data_dir / "main_data.hdf5", data_dir / "metadata.json"
    text = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
    if not meta.is_file():
        return f"{meta} does not exist"
    if meta.stat().st_size == 0:
        return f"{meta} is empty"
    if isinstance(e, json.JSONDecodeError):
        return f"{meta} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
    if not hdf5.is_file():
        return f"{hdf5} does not exist"
    if hdf5.stat().st_size == 0:
        return f"{hdf5} is empty"
    if isinstance(e, OSError) and "truncated" in text:
        return f"{hdf5} is truncated ({text})"
    if isinstance(e, OSError):
        return f"{hdf5} is not a readable HDF5 file ({text})"
    return f"{meta} or {hdf5} is not a Minari dataset ({type(e).__name__}: {text})"


def read_episodes(dataset, env_id: str) -> list:
    """The episodes of a Minari dataset as [(flat observations, actions in [-1, 1])], empty ones dropped. An episode
    without observations or actions (h5py's KeyError) is one DatasetError line naming it and the file."""
    obs_space, episodes, read = dataset.observation_space, [], 0
    stream = dataset.iterate_episodes()
    while True:
        try:
            episode = next(stream)
        except StopIteration:
            break
        except KeyError as e:
            missing = re.search(r"object '([^']+)' doesn't exist", str(e))
            what = f"no {missing.group(1)!r} entry" if missing else f"a missing entry ({str(e).strip()})"
            raise DatasetError(f"dataset {env_id!r}: episode {int(dataset.episode_indices[read])} of "
                               f"{Path(dataset.storage.data_path) / 'main_data.hdf5'} has {what}") from e
        read += 1
        obs = flatten_obs(obs_space, episode.observations)
        acts = to_unit_box(np.asarray(episode.actions, dtype=np.float32), dataset.action_space)
        if len(acts) > 0:
            episodes.append((obs, acts))
    return episodes


def load_minari(dataset, env_id: str, target_dims: Optional[tuple] = None) -> Task:
    """Demos of a Minari dataset; with `target_dims` the actions become next-state targets (--action-space next-state)."""
    import minari

    check_spaces(dataset.observation_space, dataset.action_space)
    obs_space = dataset.observation_space
    if target_dims is not None:  # from the metadata, before the episodes are read
        spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
        check_target_dims(tuple(target_dims), sum(int(np.prod(sp.shape)) for sp in spaces), dataset.action_space.shape[0],
                          env_id)
    try:
        episodes = read_episodes(dataset, env_id)
    except DatasetError:
        raise
    except Exception as e:  # a file that opened but whose contents do not read (OSError from h5py, ...)
        raise DatasetError(f"cannot read dataset {env_id!r}: {dataset_problem(Path(dataset.storage.data_path), e)}") from e
    if not episodes:
        raise DatasetError(f"dataset {env_id!r} has no episodes")
    for obs, acts in episodes:
        if not (np.isfinite(obs).all() and np.isfinite(acts).all()):
            raise DatasetError(f"dataset {env_id!r} has non-finite observations or actions")
    flatten = lambda obs: flatten_obs(obs_space, obs)  # noqa: E731
    state_action, wrap = None, lambda env: env  # noqa: E731
    if target_dims is not None:
        episodes, state_action, controller = next_state_actions(episodes, tuple(target_dims), env_id)
        wrap = lambda env: NextStateController(env, flatten, tuple(target_dims), *controller)  # noqa: E731

    def make_env():
        try:
            env = unit_box_env(dataset.recover_environment(eval_env=True))
        except Exception as e:  # a missing env package, an env id unknown to this gymnasium
            raise DatasetError(f"cannot recreate the evaluation env of {env_id!r}: {type(e).__name__}: {e}") from e
        return wrap(env)

    meta = dataset.storage.metadata
    has_ref = meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None
    score = (lambda returns: 100.0 * minari.get_normalized_score(dataset, np.asarray(returns))) if has_ref else (lambda r: None)
    return Task(episodes, make_env, flatten, score, state_action=state_action)


HUB_PROBE_TIMEOUT = 3.0  # seconds for the one TCP connection that tells whether the Minari remote can be reached


def hub_unreachable() -> Optional[str]:
    """Why Minari's remote (a Hugging Face hub) cannot be reached, or None if it can (or is not a hub).

    One TCP connection to HF_ENDPOINT (or to the https proxy, when one applies), HUB_PROBE_TIMEOUT seconds, no
    retry. huggingface_hub itself would retry minari's first call (HfApi.list_datasets) 5 times over ~23 s, with no
    timeout and no setting to change either.
    """
    import socket
    import urllib.parse
    import urllib.request

    if not os.environ.get("MINARI_REMOTE", "hf://farama-minari").startswith("hf://"):
        return None
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if offline.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = urllib.parse.urlsplit(endpoint)
    if not url.hostname:
        return f"HF_ENDPOINT {endpoint!r} names no host"
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        address = (proxy_url.hostname, proxy_url.port or 80)
    try:
        socket.create_connection(address, timeout=HUB_PROBE_TIMEOUT).close()
    except (OSError, ValueError) as e:
        return f"{endpoint} is unreachable ({type(e).__name__}: {e})"
    return None


def download_minari(env_id: str):
    """minari.load_dataset(env_id, download=True), failing at once with one DatasetError line: when the id is not in
    the local Minari datasets path and the hub is unreachable, before any request; otherwise with huggingface_hub's
    retry log lines silenced for the call and any exception turned into the error line."""
    import minari
    from minari.storage import get_dataset_path

    local = get_dataset_path(env_id)
    why = None if (local / "data").exists() else hub_unreachable()
    if why is None:
        verbosity = None
        try:
            from huggingface_hub.utils import logging as hub_logging

            verbosity = hub_logging.get_verbosity()
            hub_logging.set_verbosity_error()  # its "... thrown while requesting" / "Retrying in" warnings
        except ImportError:
            pass
        try:
            return minari.load_dataset(env_id, download=True)
        except Exception as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            if verbosity is not None:
                hub_logging.set_verbosity(verbosity)
    raise DatasetError(f"cannot load --env-id {env_id!r}: not a local Minari dataset dir nor in datasets/, and the "
                       f"Minari download failed: {why}. Point --env-id at a local Minari dataset dir (holding "
                       f"data/metadata.json), or put the dataset at $MINARI_DATASETS_PATH/{env_id}/data "
                       f"(MINARI_DATASETS_PATH={get_dataset_path()}); list ids with "
                       f"`minari list remote`, see datasets/ for the embedded ones, or use toy/crossing or toy/wine-glass")


def load_task(env_id: str, target_dims: Optional[tuple] = None) -> Task:
    """Resolve --env-id: a toy task, a local Minari dataset dir, an embedded dataset, a Minari id (downloaded).
    `target_dims`: next-state actions (--action-space next-state)."""
    import minari

    if env_id.startswith("toy/"):
        return load_toy(env_id)
    for path in (Path(env_id), Path(__file__).resolve().parent / "datasets" / env_id):
        for data_dir in (path / "data", path):
            if (data_dir / "main_data.hdf5").exists() or (data_dir / "metadata.json").exists():
                try:
                    dataset = minari.MinariDataset(data_dir)
                except Exception as e:  # metadata.json: missing, empty, not JSON; main_data.hdf5: missing, truncated
                    raise DatasetError(f"cannot read dataset {env_id!r}: {dataset_problem(data_dir, e)}") from e
                return load_minari(dataset, env_id, target_dims)
    return load_minari(download_minari(env_id), env_id, target_dims)


# -------------------------------------------------------------------------- evaluation
class LatencyMeter:
    """Wall time spent inside the policy generator: time to the first action of a chunk and per later action."""

    def __init__(self):
        self.first, self.rest = [], []

    def run(self, gen: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        i = 0
        while True:
            t0 = time.perf_counter()
            try:
                action = next(gen)
                action = action.clamp(-1.0, 1.0).cpu()  # the action reaches the robot: includes the device sync
            except StopIteration:
                return
            (self.first if i == 0 else self.rest).append(time.perf_counter() - t0)
            i += 1
            yield action

    def metrics(self) -> dict:
        out = {}
        if self.first:
            out["time_to_first_action_ms"] = 1e3 * float(np.median(self.first))
        if self.rest:
            out["per_action_ms"] = 1e3 * float(np.median(self.rest))
        return out


def evaluate(task: Task, envs: list, make_stream: Callable, episodes: int, seed: int, obs_horizon: int,
             normalize: Callable, device: torch.device, act_dim: int) -> dict:
    """Receding-horizon rollouts of `episodes` episodes, `len(envs)` at a time in lock-step.

    `make_stream(obs_cond (B, obs_horizon * obs_dim), last_action (B, act_dim))` returns a generator of actions;
    its actions are executed one by one as they arrive; when it is exhausted the envs are re-observed. SFP restarts
    from the last executed action, or with next-state actions from the current state (`task.state_action`).
    """
    returns, successes, meter = [], [], LatencyMeter()
    for start in range(0, episodes, len(envs)):
        wave = envs[: min(len(envs), episodes - start)]
        first = [env.reset(seed=seed + start + i)[0] for i, env in enumerate(wave)]
        raw = np.stack([task.flatten(o) for o in first])
        history = torch.as_tensor(normalize(raw), device=device).unsqueeze(1).repeat(1, obs_horizon, 1)
        last_action = torch.zeros(len(wave), act_dim, device=device)
        if task.state_action is not None:
            last_action = torch.as_tensor(task.state_action(raw), device=device)
        active, ep_return, success = np.ones(len(wave), bool), np.zeros(len(wave)), np.zeros(len(wave))
        while active.any():
            for action in meter.run(make_stream(history.flatten(1), last_action)):
                action_np = action.numpy()
                for i in np.flatnonzero(active):
                    o, reward, terminated, truncated, info = wave[i].step(action_np[i])
                    ep_return[i] += float(reward)
                    success[i] = max(success[i], float(info.get("success", 0.0)))
                    raw[i] = task.flatten(o)
                    if terminated or truncated:
                        active[i] = False
                new_obs = torch.as_tensor(normalize(raw), device=device)
                history = torch.cat([history[:, 1:], new_obs.unsqueeze(1)], dim=1)
                last_action = action.to(device)
                if task.state_action is not None:
                    last_action = torch.as_tensor(task.state_action(raw), device=device)
                if not active.any():
                    break
        returns += ep_return.tolist()
        successes += success.tolist()
    metrics = {"episodic_return": float(np.mean(returns)), "episodic_return_std": float(np.std(returns)),
               "success": float(np.mean(successes))}
    score = task.score(returns)
    if score is not None:
        metrics["normalized_score"] = float(np.mean(score))
    metrics.update(meter.metrics())
    return metrics


def toy_trajectories(task: Task, demos: Demos, make_stream: Callable, n: int) -> np.ndarray:
    """Sample n trajectories over the whole t in [0, 1] (the toy's chunk is the whole demo): (n, K) incl. a(0).

    Every sample starts at the demos' common start xi(0) = 0; the action-space SFP adds its sigma0 noise itself, the
    latent SFP starts exactly there and draws z(0).
    """
    device = demos.obs.device
    start = torch.as_tensor(np.repeat(task.toy[:1, 0], n, 0), device=device)
    actions = [a for a in make_stream(demos.obs[:1].expand(n, -1), start)]
    if len(actions) < task.toy.shape[1]:  # SFP yields a(t_1..t_{K-1}); prepend its start
        actions = [start] + actions
    return torch.stack(actions, 1)[..., 0].cpu().numpy()


def toy_metrics(demos: np.ndarray, samples: np.ndarray) -> dict:
    """Share of samples in the first demo's mode (where the demos are furthest apart), the distance of the samples to
    the nearest demo at each t (max and mean), and the share of samples whose mean such distance is below 0.1."""
    demos = demos[..., 0]
    decisive = int(np.argmax(np.abs(demos[0] - demos[1])))  # where the two demos are furthest apart
    near_first = np.abs(samples[:, decisive] - demos[0, decisive]) < np.abs(samples[:, decisive] - demos[1, decisive])
    dist = np.abs(samples[:, None, :] - demos[None]).min(1)  # (n, K): distance to the nearest demo at each t
    return {"mode_fraction": float(near_first.mean()), "max_dist_to_demo": float(dist.max()),
            "mean_dist_to_demo": float(dist.mean()), "near_demo_fraction": float((dist.mean(1) < 0.1).mean())}


def plot_toy(path: Path, demos: np.ndarray, samples: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.linspace(0.0, 1.0, demos.shape[1])
    ts = np.linspace(0.0, 1.0, samples.shape[1])
    fig, ax = plt.subplots(figsize=(4, 5))
    for s in samples:
        ax.plot(s, ts, color="tab:blue", alpha=0.25, lw=0.8)
    for i, d in enumerate(demos[..., 0]):
        ax.plot(d, t, color="black", lw=2.5, ls="--", label="demos" if i == 0 else None)
    ax.plot([], [], color="tab:blue", label="SFP samples" if "chunk" not in title else "chunk samples")
    ax.set_xlabel("action a")
    ax.set_ylabel("time t")
    ax.set_xlim(-1.2, 1.2)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ema_decay(step: int, max_decay: float = 0.9999, min_decay: float = 0.0, update_after_step: int = 0,
              warmup: bool = False, inv_gamma: float = 1.0, power: float = 2 / 3) -> float:
    """EMA decay after gradient step `step` (1, 2, ...), the schedule of diffusers' EMAModel.get_decay (which the
    official code uses): s = max(0, step - update_after_step - 1); 0 if s == 0, else (1 + s) / (10 + s), or with
    warm-up 1 - (1 + s / inv_gamma)^-power; then clipped to [min_decay, max_decay]. ema <- decay ema + (1 - decay) w."""
    s = max(0, step - update_after_step - 1)
    if s == 0:
        return 0.0
    decay = 1.0 - (1.0 + s / inv_gamma) ** -power if warmup else (1.0 + s) / (10.0 + s)
    return max(min(decay, max_decay), min_decay)


def fit_adam_to_mode(optimizer: torch.optim.Optimizer, device: torch.device, compiled: bool, cudagraphs: bool) -> None:
    """Set the AdamW up for how the update runs; called after construction and again after a checkpoint's
    state_dict (which restores the saving run's group settings). Eager: unchanged. --compile: the scheduled lr
    becomes a tensor (a float lr is a constant of the graph: each new value would recompile); CPU AdamW takes a
    tensor lr only single-tensor. --cudagraphs: capturable, so the step counter lives on the device and the whole
    optimizer step is captured."""
    for group in optimizer.param_groups:
        if compiled and not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(group["lr"], dtype=torch.float32, device=device)
            if device.type == "cpu":
                group["foreach"] = False
        if cudagraphs:
            group["capturable"] = True
    if cudagraphs:
        for state in optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic save: write a temporary file, then rename it over the previous checkpoint."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


CHECKPOINT_ENTRIES = ("net", "ema", "optimizer", "scheduler", "step", "args", "obs_low", "obs_high")


def network_args(args: Args) -> list:
    """The flags that shape the networks, or fix what their inputs mean, for this run's policy and task."""
    names = ["policy", "hidden_dim", "num_blocks", "time_emb_dim", "time_emb_scale"]
    if args.policy == "sfp":
        names.append("variant")
    if args.env_id.startswith("toy/"):  # the toys' chunk is the whole demo; both toys have the same shapes and data range
        return names + ["env_id"]
    names += ["obs_horizon", "pred_horizon", "action_space"]  # pred_horizon: flow time t = i / (pred_horizon - 1)
    return names + (["target_dims"] if args.action_space == "next-state" else [])


def value_text(value) -> str:
    """A flag value as it is written on the command line: `64`, `6 7`, `toy/crossing`."""
    return " ".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def read_torch_file(path: Path, flag: str, error: type, device: torch.device):
    """torch.load of a user's file; every failure (a directory, an empty or unreadable file) is one `error` line."""
    if path.is_dir():
        raise error(f"{flag} {path} is a directory, not a file")
    if not path.is_file():
        raise error(f"{flag} {path} does not exist")
    if path.stat().st_size == 0:
        raise error(f"{flag} {path} is empty")
    try:
        return torch.load(path, map_location=device)
    except Exception as e:  # garbage: UnpicklingError, KeyError (text), RuntimeError (truncated zip), EOFError, ...
        raise error(f"{flag} {path} is not a readable torch file ({type(e).__name__})") from e


def load_checkpoint(path: str, args: Args, device: torch.device) -> dict:
    """The state of a streaming_flow checkpoint made with the current network flags (network_args) and within the
    budget. Every failure is one CheckpointError line: a missing, empty or unreadable file, a file of another script,
    missing entries, other network flags (each listed against the checkpoint's), a step past --total-steps. (The
    networks and the data range are checked by restore_checkpoint once the dataset is read.)"""
    state = read_torch_file(Path(path), "--checkpoint", CheckpointError, device)
    if not isinstance(state, dict):
        raise CheckpointError(f"--checkpoint {path} is not a streaming_flow checkpoint: it holds a {type(state).__name__}")
    if state.get("script", "streaming_flow") != "streaming_flow":
        raise CheckpointError(f"--checkpoint {path} is not a streaming_flow checkpoint: it was saved by {state['script']}.py")
    missing = [k for k in CHECKPOINT_ENTRIES if k not in state]
    if missing or not isinstance(state["args"], dict) or not isinstance(state["step"], int):
        raise CheckpointError(f"--checkpoint {path} is not a streaming_flow checkpoint: it has no "
                              f"{', '.join(missing) or 'valid args and step'}")
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {value_text(getattr(args, k))} (checkpoint: {value_text(saved[k])})"
              for k in network_args(args) if k in saved and value_text(saved[k]) != value_text(getattr(args, k))]
    if differ:
        raise CheckpointError(f"--checkpoint {path} holds other networks: {', '.join(differ)}; pass the checkpoint's values")
    if state["step"] > args.total_steps:
        raise CheckpointError(f"--checkpoint {path} is at step {state['step']}, past --total-steps {args.total_steps}; "
                              "pass a larger --total-steps")
    return state


def restore_checkpoint(state: dict, path: str, demos: "Demos", net: nn.Module, ema: nn.Module, optimizer, scheduler) -> None:
    """Load a checked checkpoint into the networks, optimizer and schedule: one CheckpointError line when it was trained
    on data of another observation range (the normalisation) or its entries do not load."""
    low, high = (np.asarray(torch.as_tensor(state[k]).cpu(), dtype=np.float64) for k in ("obs_low", "obs_high"))
    if low.shape != demos.obs_low.shape or not (np.allclose(low, demos.obs_low, atol=1e-5)
                                                 and np.allclose(high, demos.obs_high, atol=1e-5)):
        raise CheckpointError(f"--checkpoint {path} was trained on other data: its observation range differs from the "
                              f"dataset's (checkpoint's --env-id: {state['args'].get('env_id')!r})")
    try:
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except Exception as e:  # missing/unexpected entries, shapes (another dataset's observation or action dims)
        raise CheckpointError(f"--checkpoint {path}: its networks do not load ({str(e).strip().splitlines()[0].strip()})") from e


def fresh_run_dir(run_name: str) -> Path:
    """runs/<run_name>, or runs/<run_name>_<k> when a run of the same name (same second) already has it."""
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
    # every input checked before any work: the flags, then the checkpoint file (its networks: once they are built)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    state = load_checkpoint(args.checkpoint, args, device) if args.checkpoint else None
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    next_state = args.action_space == "next-state" and not args.env_id.startswith("toy/")  # toys have no state
    task = load_task(args.env_id, args.target_dims if next_state else None)
    toy = task.toy is not None
    # toy: one datum per demo, the chunk is the whole demo (flow time spans all its knots)
    horizon = task.toy.shape[1] if toy else args.pred_horizon
    obs_horizon = 1 if toy else args.obs_horizon
    demos = Demos(task.episodes, obs_horizon, horizon, device, whole=toy, state_action=task.state_action,
                  action_horizon=args.action_horizon)
    obs_dim, act_dim = demos.obs_dim, demos.act_dim
    cond_dim = obs_horizon * obs_dim
    x_dim = (horizon * act_dim if args.policy == "chunk" else act_dim * (2 if args.variant == "stochastic" else 1))

    net = VelocityNet(x_dim, cond_dim, args.hidden_dim, args.num_blocks, args.time_emb_dim,
                      args.time_emb_scale).to(device)
    ema = VelocityNet(x_dim, cond_dim, args.hidden_dim, args.num_blocks, args.time_emb_dim,
                      args.time_emb_scale).to(device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))

    def lr_lambda(step: int) -> float:  # linear warm-up then cosine decay to 0 (diffusers "cosine" schedule)
        if step < args.lr_warmup_steps:
            return (step + 1) / args.lr_warmup_steps
        progress = (step - args.lr_warmup_steps) / max(1, args.total_steps - args.lr_warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    compiled = args.compile or args.cudagraphs  # --cudagraphs implies --compile
    fit_adam_to_mode(optimizer, device, compiled, args.cudagraphs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    # the scheduler wraps optimizer.step in a function of lr_scheduler.py, a file dynamo never traces (the step would
    # run uncompiled): the update calls AdamW.step itself and sets the one flag that wrapper records
    optimizer_step = optimizer.step.__wrapped__.__get__(optimizer)
    start_step = 0
    if state is not None:
        restore_checkpoint(state, args.checkpoint, demos, net, ema, optimizer, scheduler)
        fit_adam_to_mode(optimizer, device, compiled, args.cudagraphs)
        start_step = int(state["step"])
        if start_step == args.total_steps:
            print(f"--checkpoint {args.checkpoint} is at step {start_step} = --total-steps: evaluating only "
                  "(pass a larger --total-steps to train on)", flush=True)

    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = fresh_run_dir(run_name)
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    params, ema_params = list(net.parameters()), list(ema.parameters())

    def update(ema_weight) -> torch.Tensor:
        """One gradient step and the EMA update (compiled whole under --compile); ema_weight = 1 - decay, a float
        (eager) or a 0-d device tensor (compiled: a float would be a graph constant, recompiled at every value).
        The lr schedule steps outside (a Python-side scheduler)."""
        obs_cond, seq = demos.sample(args.batch_size, args.policy)  # indices drawn on the device, static shapes
        if args.policy == "sfp":
            loss = sfp_loss(net, obs_cond, seq, args.k, args.sigma0, args.variant, args.sigma1)
        else:
            loss = chunk_fm_loss(net, obs_cond, seq)
        for p in params:  # optimizer.zero_grad(set_to_none=True), which dynamo does not trace (a graph break)
            p.grad = None
        loss.backward()
        optimizer_step()
        with torch.no_grad():
            if isinstance(ema_weight, torch.Tensor):
                torch._foreach_lerp_(ema_params, params, [ema_weight] * len(params))
            else:
                torch._foreach_lerp_(ema_params, params, ema_weight)
        return loss.detach()

    ema_weight = torch.zeros((), device=device)  # --compile: the EMA weight, refilled before each step
    if compiled:
        if args.cudagraphs:  # read inside the graph, refilled between replays: it must keep its address
            torch._dynamo.mark_static_address(ema_weight)
        # CUDA graphs through torch.compile's "reduce-overhead" (inductor + CUDA-graph trees): one code path with
        # --compile and no new dependency. Not fullgraph: torch.optim breaks the graph around step() and dynamo
        # around backward() (docs/streaming_flow.md, Speed options).
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    def make_stream(obs_cond: torch.Tensor, last_action: torch.Tensor, num_actions: int,
                    generator: Optional[torch.Generator]) -> Iterator[torch.Tensor]:
        if args.policy == "chunk":
            return stream_chunk(ema, obs_cond, num_actions, horizon, act_dim, args.flow_steps, generator)
        return stream_sfp(ema, obs_cond, last_action, num_actions, horizon, args.integration_steps_per_action,
                          args.variant, args.sigma0 if args.sample_start else 0.0, generator)

    eval_envs = [] if toy else [task.make_env() for _ in range(min(args.eval_episodes, args.eval_envs))]
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    progress = Progress(args.total_steps, start_step)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    metrics: dict = {}
    t0, last_log_step = time.time(), start_step

    def run_evaluation(step: int) -> dict:
        """Same env seeds and policy noise at every evaluation, independent of the training RNG."""
        generator = torch.Generator(device=device).manual_seed(args.seed)
        if toy:
            n_actions = horizon if args.policy == "chunk" else horizon - 1  # the whole toy trajectory
            stream = lambda obs, a: make_stream(obs, a, n_actions, generator)  # noqa: E731
            samples = toy_trajectories(task, demos, stream, args.toy_samples)
            result = toy_metrics(task.toy, samples)
            title = (f"{args.env_id} {args.policy}" + (f" {args.variant} k={args.k} sigma0={args.sigma0}" if args.policy == "sfp" else "")
                     + f"\nmode share {result['mode_fraction']:.2f}, max dist {result['max_dist_to_demo']:.2f}")
            plot_toy(run_dir / "trajectories.png", task.toy, samples, title)
            result = {f"eval/{k}": v for k, v in result.items()}
        else:
            stream = lambda obs, a: make_stream(obs, a, args.action_horizon, generator)  # noqa: E731
            result = evaluate(task, eval_envs, stream, args.eval_episodes, 10_000 * args.seed, obs_horizon,
                              demos.normalize, device, act_dim)
            result = {f"eval/{k}": v for k, v in result.items()}
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        progress.write(f"step {step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in result.items() if not k.endswith("_std")))
        return result

    def checkpoint_state(step: int) -> dict:
        return dict(script="streaming_flow", net=net.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), step=step, args=asdict(args),
                    obs_low=torch.as_tensor(demos.obs_low), obs_high=torch.as_tensor(demos.obs_high))

    for step in range(start_step + 1, args.total_steps + 1):
        weight = 1.0 - ema_decay(step, args.ema_max_decay, args.ema_min_decay, args.ema_update_after_step,
                                 args.ema_warmup, args.ema_inv_gamma, args.ema_power)
        if args.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last replay's outputs may be reused
        loss = update(ema_weight.fill_(weight) if compiled else weight)
        if args.cudagraphs:  # copied before the next replay overwrites the graph's output buffer
            loss = loss.clone()
        optimizer._opt_called = True  # what the scheduler's step wrapper records (see optimizer_step)
        scheduler.step()
        nonfinite |= ~torch.isfinite(loss)
        log_now = step % args.log_freq == 0 or step == args.total_steps
        eval_now = step % args.eval_freq == 0 or step == args.total_steps
        if (log_now or eval_now) and nonfinite.item():  # checked before anything is logged, evaluated or saved
            raise NonFiniteLossError(
                f"non-finite loss within steps {last_log_step + 1}..{step}; training stopped"
                + (f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))
        if log_now:
            sps = (step - last_log_step) / (time.time() - t0)
            name = "losses/sfp_loss" if args.policy == "sfp" else "losses/flow_matching_loss"
            writer.add_scalar(name, loss.item(), step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.update(step, sps=sps, loss=loss.item(), **headline(metrics))
            t0, last_log_step = time.time(), step
        if eval_now:
            metrics = run_evaluation(step)
            if args.save_model:
                save_checkpoint(checkpoint_path, checkpoint_state(step))
    if args.total_steps == start_step:  # nothing to train (e.g. --total-steps 0 with a checkpoint): just evaluate
        metrics = run_evaluation(start_step)
    progress.close()
    writer.close()
    for env in eval_envs:
        env.close()
    if args.total_steps > start_step:  # the final update's loss, for tests
        metrics["losses/sfp_loss" if args.policy == "sfp" else "losses/flow_matching_loss"] = loss.item()
    metrics["run_dir"] = str(run_dir)
    return metrics


def headline(metrics: dict) -> dict:
    """The latest evaluation's main number, for the progress bar."""
    for key in ("eval/success", "eval/mode_fraction", "eval/episodic_return"):
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
