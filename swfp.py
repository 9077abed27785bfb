"""Stepwise Flow Policy (SWFP): a BC-pretrained flow policy fine-tuned online as a cascade of JKO blocks.

Paper: "Iterative Refinement of Flow Policies in Probability Space for Online Reinforcement Learning",
Mingyang Sun, Pengxiang Ding, Weinan Zhang, Donglin Wang, arXiv:2510.15388 (2025). No official code.

Idea. A flow policy cloned from demonstrations samples actions with a fixed-step Euler scheme
a_{k+1} = a_k + v(s, a_k, t_k) / K, a_0 ~ N(0, I). The paper reads each Euler step as one step of the
Jordan-Kinderlehrer-Otto (JKO) scheme, pi_{k+1} = argmin_pi F(pi) + W2^2(pi, pi_k) / (2h), with F made
of -E_pi[Q] and an entropic regulariser. Online fine-tuning then trains one small flow block per Euler
step, each inside a Wasserstein trust region of its previous iterate, instead of backpropagating the
critic through the whole sampler.

What is known and what is not. The abstract (the only part of the paper we could read) fixes the pieces
above. The per-block objective, the block architecture and every hyper-parameter are THIS REPO'S
RECONSTRUCTION from that theory, kept minimal. Reading: each block is one JKO step of
F(pi) = -E_pi[Q] + beta E_pi[log pi] (whose W2 gradient flow is Fokker-Planck with fixed point pi* ~ exp(Q / beta)),
of size h / K, so the K blocks are a JKO time h (`--jko-step-size`) whatever K. Q is evaluated only at actions, where
the critic is trained (issue 20: it used to be evaluated at the noisy intermediate iterates of the sampler). Two
block spaces (`--block-space`):
  * flow (default): block k is a small MLP u_k(s, a_k) (zero-initialised last layer) that refines the frozen
    BC velocity of Euler step k: a_{k+1} = a_k + h_e (v_theta(s, a_k, t_k) + u_k(s, a_k)), h_e = 1 / K. Splitting:
    the frozen BC step a~_{k+1} = a_k + h_e v_theta is the JKO step of the BC part of F; the block takes the JKO
    step of F_RL from that iterate (Lie-Trotter), with W2^2 bounded by the coupling a~_{k+1} -> a_{k+1}:
        L_k = E[ -Q(s, a_K(a_{k+1})) - beta log|det d a_{k+1} / d a_k| + K ||a_{k+1} - a~_{k+1}||^2 / (2h) ]
    where a_K(a_{k+1}) is the final action the iterate leads to through the rest of the current cascade (a
    constant map, differentiated through), clipped as the policy clips it. All blocks train together: each update
    splits the batch into K chunks, chunk k trains block k;
  * action: the cascade starts from the BC policy's action a_0 (K Euler steps of the frozen flow) and block k maps
    a_k -> a_{k+1} = a_k + u_k(s, a_k): every iterate is an action, and
        L_k = E[ -Q(s, a_{k+1}) - beta log|det(I + du_k / da)| + K ||a_{k+1} - a_k||^2 / (2h) ],
    the trust region literally between consecutive iterates. The blocks are trained one after another: block k
    during the k-th of K equal parts of the online phase (fresh Adam moments per block), the later blocks still
    the identity, so a_{k+1} is the current policy's action.
  Change of variables: E log pi_{k+1}(a_{k+1}) = E log pi_k(a_k) - E log|det J_k|, and pi_k does not depend on
  block k. With Q and beta off, the optimum is u_k = 0 (the pretrained flow, unchanged); with a quadratic Q and
  K = 1 it is the proximal point (a~ + h c) / (1 + h); with a linear Q every final action moves by h grad Q for
  any K (tests/test_swfp.py). The Q term is divided by the batch's detached mean |Q| (`--normalize-q`);
  * a TD critic ensemble (2 members, Polyak target, clipped double-Q target, next actions from the
    refined policy) learns online from a replay buffer that starts with the demonstrations; it is
    warmed up offline on them before the first environment step.
Baselines. `--naive-finetune`: the same critic, data and number of updates, but the whole BC flow is trained to
maximise Q of its final action with the gradient backpropagated through all K Euler steps (no trust region, no
entropy term). `--naive-finetune --naive-trust-region`: the same plus the blocks' W2 bound in one piece,
||a_K - a_K^BC||^2 / (2h) to the frozen pretrained flow's action from the same noise (the regularised rival).

Data, environments and evaluation (shared with fql.py; not from the paper):
  * online episodes: the online env is seeded with --seed at its first reset only and reset unseeded
    afterwards (its RNG continues, as the official FQL main.py, which seeds no episode), so every online
    episode starts from a new state; evaluation episode i is reset with seed 10000 * --seed + i, the same
    episodes at every evaluation;
  * rewards: one function, `transform_reward`, maps D4RL AntMaze rewards {0, 1} -> {-1, 0} for the dataset
    and for every online reward before it enters the replay buffer (the official FQL's name test, offline and
    online); the logged online and evaluation returns stay the env's own;
  * OGBench: every singletask env (evaluation and online) is built with success_timing='post', so success,
    termination and reward are those of the state after the step, as in ogbench 1.1.0, the version the official
    FQL pins (ogbench 1.2.x, installed here, registers singletask envs with 'pre'). SWFP has no official code
    and its paper names no benchmark: this is this repo's choice, to match fql.py. Dataset rewards are the same
    in both versions;
  * Minari ids: a dataset not under MINARI_DATASETS_PATH is downloaded only after a 5 s probe of the Hugging
    Face hub (HF_ENDPOINT); with the hub unreachable or HF_HUB_OFFLINE set the run stops at once with one line
    that names the id and how to point --env-id at a local folder (huggingface_hub alone retries ~25 s);
  * evaluation: min(--eval-episodes, --eval-envs) envs (default 6; was 25) run in parallel, one batched policy
    call per step. Episode i is reset with seed 10000 * --seed + i whichever env runs it, but the policy noise
    comes from one generator shared by the batch, so the pool size changes which noise an episode draws: with
    the same seeds, metrics of different pool sizes differ by evaluation noise (equal in distribution).

Bad input ends the run before any work with one `error: ...` line and exit 1 (docs/swfp.md, "Bad input"): check_args
validates every flag; load_checkpoint refuses a missing, unreadable or foreign checkpoint and one of other network
sizes. The end of phase 1 fine-tunes with any phase-1 budget and any method; an online checkpoint must match
--naive-finetune, --naive-trust-region and --block-space and is refused past --total-timesteps (exactly at it:
evaluate only, with a notice; below it: fine-tune on to --total-timesteps). A broken dataset file is named in the message.

Usage:
  python swfp.py                                                     # embedded Reacher, this repo's defaults
  python swfp.py --pretrain-steps 5000 --critic-warmup-steps 2000 --total-timesteps 300 --hidden-dim 128 \
      --num-layers 2 --eval-freq 75 --eval-episodes 100                   # the budget of docs/swfp.md
  python swfp.py --block-space action ...                            # the action-space cascade
  python swfp.py --naive-finetune [--naive-trust-region] ...         # baselines with the same budget
  python swfp.py --cudagraphs                                        # compiled updates as CUDA graphs (CUDA only)
See docs/swfp.md for the paper <-> code map, logged metrics and results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
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
    """demonstrations: a local Minari dataset dir, an embedded id (datasets/), an OGBench dataset name or a Minari id"""
    ogbench_dataset_dir: str = "~/.ogbench/data"
    """where OGBench datasets are read from (downloaded there when missing)"""
    pretrain_steps: int = 100_000
    """phase 1: gradient steps of behaviour cloning (flow matching) on the demonstrations"""
    critic_warmup_steps: int = 10_000
    """phase 1: TD updates of the critic on the demonstrations (pretrained policy frozen) before going online"""
    total_timesteps: int = 100_000
    """phase 2: online environment steps (one critic and one policy update per step)"""
    batch_size: int = 256
    """the batch size of each gradient step"""
    learning_rate: float = 3e-4
    """the learning rate of every Adam optimizer"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target critic Polyak rate"""
    hidden_dim: int = 256
    """width of the BC flow and critic MLPs"""
    num_layers: int = 3
    """hidden layers of the BC flow and critic MLPs"""
    keep_offline_data: bool = True
    """the replay buffer starts with the demonstrations (otherwise: online transitions only)"""
    eval_freq: int = 10_000
    """evaluate every this many environment steps (and before the first and after the last)"""
    eval_episodes: int = 50
    """episodes per evaluation"""
    eval_envs: int = 6
    """environments evaluated in parallel, one batched policy call per step; each OGBench manipulation env holds ~150 MB"""
    log_freq: int = 1000
    """log losses every this many gradient steps (the only host syncs of the loop)"""
    save_model: bool = False
    """save a checkpoint at the end of phase 1 and at every evaluation (runs/<run>/<exp_name>.pt)"""
    checkpoint: Optional[str] = None
    """load the networks from this checkpoint and skip phase 1: the end of phase 1 (any phase-1 budget) fine-tunes for
    --total-timesteps; an online one continues from its env step to --total-timesteps. Its network sizes must match"""
    compile: bool = False
    """torch.compile the update steps (BC, critic warm-up, online update; env stepping and acting stay eager)"""
    cudagraphs: bool = False
    """replay the update as a CUDA graph (implies --compile; CUDA only)"""

    # Algorithm specific arguments
    blocks: int = 10
    """K: Euler steps of the flow = number of JKO blocks fine-tuned online"""
    block_space: Literal["flow", "action"] = "flow"
    """flow: block k refines Euler step k of the BC flow, Q at the final action the iterate leads to (blocks trained
    together); action: block k maps action a_k -> a_{k+1}, a_0 the BC sample (blocks trained one after another)"""
    jko_step_size: float = 10.0
    """h: JKO time of the whole cascade, h / K per block; block trust region K ||a_{k+1} - a_k'||^2 / (2h) (Q normalised)"""
    entropy_coef: float = 0.001
    """beta: weight of the entropic term E[log pi] in each block's JKO objective"""
    normalize_q: bool = True
    """divide the Q term by the batch's detached mean |Q| (scale-free step size h)"""
    block_hidden_dim: int = 64
    """width of each block's MLP"""
    block_num_layers: int = 2
    """hidden layers of each block's MLP"""
    num_critics: int = 2
    """size of the critic ensemble (the TD target uses their minimum)"""
    naive_finetune: bool = False
    """baseline: fine-tune the whole BC flow by backpropagating Q through all Euler steps (no JKO blocks)"""
    naive_trust_region: bool = False
    """with --naive-finetune: add ||a_K - a_K^BC||^2 / (2h) to pretrained BC actions of the same noise (regularised baseline)"""


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class DatasetError(ValueError):
    """Bad --env-id or dataset contents (a missing, empty, truncated or foreign file); one line, exit 1."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not swfp's, made for other networks or past the budget."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (ArgumentError, DatasetError, CheckpointError, NonFiniteLossError)  # `error: <message>`, exit 1


def check_args(args: Args) -> None:
    """Every flag checked once, before any work: the first value outside its range raises ArgumentError, one line
    `--flag must be <rule> (got <value>)`, or names the flags that conflict. (torch_deterministic, cuda,
    keep_offline_data, save_model, normalize_q, naive_finetune, naive_trust_region: booleans; env_id,
    ogbench_dataset_dir: read, and checked, by load_offline_data; checkpoint: read, and checked, by load_checkpoint.)"""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")  # it names the run directory and the checkpoint file
    need(0 <= args.seed < 2**32, "seed", "in [0, 2**32) (numpy's seed range)")
    need(args.pretrain_steps >= 0, "pretrain_steps", ">= 0")
    need(args.critic_warmup_steps >= 0, "critic_warmup_steps", ">= 0")
    need(args.total_timesteps >= 0, "total_timesteps", ">= 0")
    need(args.batch_size >= 1, "batch_size", ">= 1")
    need(math.isfinite(args.learning_rate) and args.learning_rate > 0, "learning_rate", "finite and > 0")
    need(math.isfinite(args.gamma) and 0 < args.gamma <= 1, "gamma", "in (0, 1]")
    need(math.isfinite(args.tau) and 0 < args.tau <= 1, "tau", "in (0, 1]")
    need(args.hidden_dim >= 1, "hidden_dim", ">= 1")
    need(args.num_layers >= 1, "num_layers", ">= 1")
    need(args.eval_freq >= 1, "eval_freq", ">= 1")
    need(args.eval_episodes >= 1, "eval_episodes", ">= 1")
    need(args.eval_envs >= 1, "eval_envs", ">= 1")
    need(args.log_freq >= 1, "log_freq", ">= 1")
    need(args.checkpoint != "", "checkpoint", "a path")
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                            "torch.cuda.is_available() is False") + "); drop --cudagraphs or use --compile")
    need(args.blocks >= 1, "blocks", ">= 1")
    need(math.isfinite(args.jko_step_size) and args.jko_step_size > 0, "jko_step_size", "finite and > 0")
    need(math.isfinite(args.entropy_coef) and args.entropy_coef >= 0, "entropy_coef", "finite and >= 0")
    need(args.block_hidden_dim >= 1, "block_hidden_dim", ">= 1")
    need(args.block_num_layers >= 1, "block_num_layers", ">= 1")
    need(args.num_critics >= 1, "num_critics", ">= 1")
    if args.naive_trust_region and not args.naive_finetune:
        raise ArgumentError("--naive-trust-region regularises the naive baseline: it needs --naive-finetune")
    if not args.naive_finetune and args.block_space == "flow" and args.batch_size < args.blocks:
        raise ArgumentError(f"--batch-size {args.batch_size} and --blocks {args.blocks} cannot be used together: each "
                            "block trains on its own chunk of the batch (--batch-size must be >= --blocks)")


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    layers, dim = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
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
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class Critic(nn.Module):
    """Ensemble of critics Q_phi_j(s, a) -> (num_critics, *batch); MLP with GELU then LayerNorm per hidden layer."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int, num_critics: int):
        super().__init__()
        self.num_critics = num_critics
        layers, dim = [], obs_dim + act_dim
        for _ in range(num_layers):
            layers += [EnsembleLinear(num_critics, dim, hidden_dim), nn.GELU(), EnsembleLayerNorm(num_critics, hidden_dim)]
            dim = hidden_dim
        layers.append(EnsembleLinear(num_critics, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        batch_shape = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.num_critics, -1, -1)
        return self.net(x).reshape(self.num_critics, *batch_shape)


class FlowBlocks(nn.Module):
    """The K JKO blocks u_k(s, a_k) -> velocity refinement, as stacked weights (one small MLP per Euler step).

    `forward(x)` with x of shape (K, B, in) runs block k on x[k] (all blocks in one batched pass, for
    training); `step(k, x)` runs block k alone on (B, in) (for sampling). The last layer starts at zero,
    so the cascade starts as the pretrained flow (identity refinement).
    """

    def __init__(self, num_blocks: int, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        dims = [obs_dim + act_dim] + [hidden_dim] * num_layers + [act_dim]
        self.layers = nn.ModuleList(EnsembleLinear(num_blocks, i, o) for i, o in zip(dims[:-1], dims[1:]))
        nn.init.zeros_(self.layers[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x

    @property
    def num_blocks(self) -> int:
        return self.layers[0].weight.shape[0]

    def step(self, k: int, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Block k alone on (B, in); `detach`: its parameters as constants (no gradient reaches them)."""
        for i, layer in enumerate(self.layers):
            weight, bias = (layer.weight[k].detach(), layer.bias[k].detach()) if detach else (layer.weight[k], layer.bias[k])
            x = torch.addmm(bias, x, weight)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


# ---------------------------------------------------------------------------------------------
# Sampler: K fixed Euler steps of the BC flow, refined by the K blocks (in flow or in action space)
# ---------------------------------------------------------------------------------------------
def euler_step(flow: Callable, blocks: Optional[FlowBlocks], k: int, obs: torch.Tensor, x: torch.Tensor, dt: float,
               detach_blocks: bool = False) -> torch.Tensor:
    """Euler step k of the flow-space cascade, x + dt (v_theta(s, x, t_k) + u_k(s, x)), on x of any shape (..., d)."""
    v = flow(obs, x, torch.full_like(x[..., :1], k * dt))
    if blocks is not None:
        inputs = torch.cat([obs, x], dim=-1)
        v = v + blocks.step(k, inputs.reshape(-1, inputs.shape[-1]), detach=detach_blocks).view_as(x)
    return x + dt * v


def flow_rollout(flow: Callable, blocks: Optional[FlowBlocks], obs: torch.Tensor, z: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Flow space: all iterates a_0 = z, ..., a_K as a (K + 1, B, act_dim) tensor (unclipped); differentiable with grad."""
    x, dt, xs = z, 1.0 / num_steps, [z]
    for k in range(num_steps):
        x = euler_step(flow, blocks, k, obs, x, dt)
        xs.append(x)
    return torch.stack(xs)


def action_rollout(flow: Callable, blocks: Optional[FlowBlocks], obs: torch.Tensor, z: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Action space: a_0 = the BC flow's action from z (K Euler steps, clipped), then a_{k+1} = a_k + u_k(s, a_k) for
    each block; all iterates (1 + number of blocks, B, act_dim), unclipped after a_0. Every iterate is an action."""
    x = flow_rollout(flow, None, obs, z, num_steps)[-1].clamp(-1.0, 1.0)
    xs = [x]
    for k in range(0 if blocks is None else blocks.num_blocks):
        x = x + blocks.step(k, torch.cat([obs, x], dim=-1))
        xs.append(x)
    return torch.stack(xs)


@torch.no_grad()
def sample_actions(flow: Callable, blocks: Optional[FlowBlocks], obs: torch.Tensor, z: torch.Tensor, num_steps: int,
                   block_space: str = "flow") -> torch.Tensor:
    """The policy: the (refined) cascade's final action from noise z, clipped to [-1, 1]."""
    rollout = action_rollout if block_space == "action" else flow_rollout
    return rollout(flow, blocks, obs, z, num_steps)[-1].clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def bc_flow_loss(flow: VectorField, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Phase 1, conditional flow matching: x_t = (1 - t) x_0 + t a, target velocity a - x_0 (paper: BC by flow matching)."""
    x_0 = torch.randn_like(actions)
    t = torch.rand_like(actions[:, :1])
    x_t = (1.0 - t) * x_0 + t * actions
    return F.mse_loss(flow(obs, x_t, t), actions - x_0)


def critic_loss(critic: Critic, target_critic: Critic, policy: Callable, batch: dict, gamma: float) -> tuple:
    """TD loss: E[(Q_j(s, a) - r - gamma * mask * min_j Qbar_j(s', a'))^2], a' ~ the current policy (no entropy bonus)."""
    with torch.no_grad():
        next_actions = policy(batch["next_observations"])
        next_q = target_critic(batch["next_observations"], next_actions).min(0).values
        target_q = batch["rewards"] + gamma * batch["masks"] * next_q
    q = critic(batch["observations"], batch["actions"])
    return F.mse_loss(q, target_q.expand_as(q)), q


def jacobian_rows(outputs: torch.Tensor, inputs: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d outputs / d inputs per sample, (..., d, d), for a map applied sample-wise.

    One backward pass per action dimension (not per sample); d is small for control (2-20).
    """
    rows = [torch.autograd.grad(outputs[..., i].sum(), inputs, create_graph=create_graph, retain_graph=True)[0]
            for i in range(outputs.shape[-1])]
    return torch.stack(rows, dim=-2)


def block_log_det(v_bc: Optional[torch.Tensor], u: torch.Tensor, a_k: torch.Tensor, dt: float, create_graph: bool) -> torch.Tensor:
    """log|det J_k| of the block map a_{k+1} = a_k + dt (v_bc(a_k) + u(a_k)): J_k = I + dt (dv_bc/da + du/da).

    The frozen BC part is differentiated without a graph; only the small block's Jacobian keeps one
    (for the entropic term's gradient), which keeps the double backward off the big flow network.
    v_bc None: no BC part (the action-space block a_{k+1} = a_k + u(a_k), dt = 1).
    """
    eye = torch.eye(a_k.shape[-1], device=a_k.device, dtype=a_k.dtype)
    jac = jacobian_rows(u, a_k, create_graph=create_graph)
    if v_bc is not None:
        jac = jac + jacobian_rows(v_bc, a_k, create_graph=False)
    return torch.linalg.slogdet(eye + dt * jac).logabsdet


def normalized_q_term(q: torch.Tensor, normalize_q: bool) -> torch.Tensor:
    """-E[Q] per block (the potential energy of F), divided by the batch's detached mean |Q| when normalize_q."""
    q_term = -q.mean(-1)
    return q_term / q.abs().mean().detach() if normalize_q else q_term


def flow_block_losses(flow: Callable, blocks: FlowBlocks, critic: Callable, obs: torch.Tensor, z: torch.Tensor,
                      step_size: float, entropy_coef: float, normalize_q: bool, with_entropy: bool,
                      with_stats: bool = True) -> dict:
    """`--block-space flow`: every block's JKO objective (this repo's reconstruction, module docstring), one batched pass.

        L_k = E[ -Q(s, a_K(a_{k+1})) / |Q|  -  beta log|det J_k|  +  K ||a_{k+1} - a~_{k+1}||^2 / (2h) ]

    JKO step pi_{k+1} = argmin F(pi) + W2^2(pi, pi_k) / (2 h / K) with F = -E[Q] + beta E[log pi] (paper, abstract),
    split into the frozen BC Euler step a~_{k+1} = a_k + v_theta / K and the block's proximal step from it; the K
    blocks together are a JKO time h. Q is evaluated only at final actions: a_K(a_{k+1}) is the action the iterate
    a_{k+1} leads to through the rest of the current cascade (steps k+1..K-1, flow and blocks as constants, the
    gradient flowing through them to a_{k+1}), clipped as the policy clips it; never at a noisy iterate.
    `obs`, `z`: (K, n, .) states and noise of each block's chunk (chunk k trains block k, from its own a_0 = z[k]).
    Returns the summed loss and per-block statistics (K,): trust-region displacement E||a_{k+1} - a~_{k+1}||^2, step
    E||a_{k+1} - a_k||^2, E log|det J_k| and (with_stats) the Q improvement E[Q(a_K(a_{k+1})) - Q(a_K(a~_{k+1}))].
    """
    num_blocks, n, _ = z.shape
    dt = 1.0 / num_blocks
    with torch.no_grad():  # a_k of chunk k from the current cascade: step j runs on the chunks j + 1..K-1
        x = z
        for j in range(num_blocks - 1):
            x = torch.cat([x[: j + 1], euler_step(flow, blocks, j, obs[j + 1:], x[j + 1:], dt)])
    a_k = x.requires_grad_(with_entropy)
    t = (torch.arange(num_blocks, device=obs.device, dtype=obs.dtype) * dt).view(-1, 1, 1).expand(-1, n, 1)
    v_bc = flow(obs, a_k, t)  # frozen BC velocity (its parameters get no gradient)
    a_ref = a_k + dt * v_bc  # the pretrained Euler step: the previous iterate of the block's proximal step
    u = blocks(torch.cat([obs, a_k], dim=-1))
    a_next = a_ref + dt * u
    # the rest of the cascade from a_{k+1} (and, for the statistics, from a~_{k+1}): step j runs on the chunks 0..j-1
    x, obs_x = (torch.cat([a_next, a_ref.detach()], 1), obs.repeat(1, 2, 1)) if with_stats else (a_next, obs)
    for j in range(1, num_blocks):
        x = torch.cat([euler_step(flow, blocks, j, obs_x[:j], x[:j], dt, detach_blocks=True), x[j:]])
    q_all = critic(obs_x, x.clamp(-1.0, 1.0)).mean(0)  # (K, n or 2n): one critic call
    q = q_all[:, :n]
    displacement = (a_next - a_ref).pow(2).sum(-1)  # W2^2(pi_{k+1}, pi~_{k+1}) <= E of this (coupling bound)
    loss_k = normalized_q_term(q, normalize_q) + num_blocks * displacement.mean(1) / (2.0 * step_size)
    logdet = torch.zeros(num_blocks, device=obs.device)
    if with_entropy:
        logdet = block_log_det(v_bc, u, a_k, dt, create_graph=entropy_coef > 0).mean(1)
        loss_k = loss_k - entropy_coef * logdet  # beta E[log pi_{k+1}] = beta (E[log pi_k] - E log|det J_k|)
    stats = {"loss": loss_k.sum(), "block_loss": loss_k.detach(), "w2_trust": displacement.detach().mean(1),
             "w2_step": (a_next - a_k).detach().pow(2).sum(-1).mean(1), "log_det": logdet.detach()}
    if with_stats:
        stats["q_improvement"] = (q - q_all[:, n:]).detach().mean(1)
    return stats


def action_block_loss(flow: Callable, blocks: FlowBlocks, critic: Callable, obs: torch.Tensor, z: torch.Tensor, block: int,
                      step_size: float, entropy_coef: float, normalize_q: bool, with_entropy: bool) -> dict:
    """`--block-space action`: the JKO objective of block `block` of the action-space cascade (this repo's reading):

        L_k = E[ -Q(s, a_{k+1}) / |Q|  -  beta log|det(I + du_k/da)|  +  K ||a_{k+1} - a_k||^2 / (2h) ],
        a_{k+1} = a_k + u_k(s, a_k),   a_0 = the BC flow's action from z,

    a JKO step of size h / K between consecutive iterates, which are all actions (Q at a_{k+1} clipped to [-1, 1],
    as the policy clips it). The blocks before `block` are constants (trained earlier), the later ones are still the
    identity: a_{k+1} is the current policy's action. Returns the loss and the block's statistics, each (1,).
    """
    num_blocks = blocks.num_blocks
    with torch.no_grad():
        a_k = action_rollout(flow, None, obs, z, num_blocks)[0]
        for j in range(block):
            a_k = a_k + blocks.step(j, torch.cat([obs, a_k], dim=-1))
    a_k.requires_grad_(with_entropy)
    u = blocks.step(block, torch.cat([obs, a_k], dim=-1))
    a_next = a_k + u
    q_all = critic(obs.repeat(2, 1), torch.cat([a_next, a_k.detach()]).clamp(-1.0, 1.0)).mean(0)
    q, q_ref = q_all[: obs.shape[0]], q_all[obs.shape[0]:]
    displacement = u.pow(2).sum(-1)  # ||a_{k+1} - a_k||^2: W2^2(pi_{k+1}, pi_k) <= E of this
    loss = normalized_q_term(q, normalize_q) + num_blocks * displacement.mean() / (2.0 * step_size)
    logdet = torch.zeros((), device=obs.device)
    if with_entropy:
        logdet = block_log_det(None, u, a_k, 1.0, create_graph=entropy_coef > 0).mean()
        loss = loss - entropy_coef * logdet
    one = lambda x: x.detach().reshape(1)  # noqa: E731
    return {"loss": loss, "block_loss": one(loss), "w2_trust": one(displacement.mean()), "w2_step": one(displacement.mean()),
            "log_det": one(logdet), "q_improvement": one((q - q_ref).mean())}


def naive_finetune_loss(flow: VectorField, critic: Callable, obs: torch.Tensor, z: torch.Tensor, num_steps: int,
                        normalize_q: bool, bc_flow: Optional[Callable] = None, step_size: float = 1.0) -> tuple:
    """Baseline: -Q(s, a_K) with the gradient backpropagated through all K Euler steps into the whole flow. With
    `bc_flow` (the frozen pretrained flow; `--naive-trust-region`) the regularised baseline adds the same W2 bound,
    ||a_K - a_K^BC||^2 / (2h), to the pretrained policy's action from the same noise. Returns (loss, that
    displacement E||a_K - a_K^BC||^2, or None without `bc_flow`)."""
    final = flow_rollout(flow, None, obs, z, num_steps)[-1]
    q = critic(obs, final.clamp(-1.0, 1.0)).mean(0)
    loss = normalized_q_term(q, normalize_q)
    if bc_flow is None:
        return loss, None
    with torch.no_grad():
        bc_final = flow_rollout(bc_flow, None, obs, z, num_steps)[-1]
    displacement = (final - bc_final).pow(2).sum(-1).mean()
    return loss + displacement / (2.0 * step_size), displacement.detach()


# ---------------------------------------------------------------------------------------------
# Data: datasets, replay buffer, environments, evaluation
# ---------------------------------------------------------------------------------------------
ACTION_CLIP = 1.0 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5) (as FQL's official code)


def transform_reward(env_id: str, reward):
    """The one reward transform, applied to the dataset and to every online reward before it enters the replay
    buffer: D4RL AntMaze (a Minari D4RL/antmaze/... id, or a local copy named like one) sparse {0, 1} -> {-1, 0};
    every other task unchanged. Floats and arrays.

    The test is the official FQL's (@719d044), offline and online alike: envs/env_utils.py:111 routes exactly these
    names ('antmaze' and one of 'diverse', 'play', 'umaze') to d4rl_utils.get_dataset, which shifts
    (d4rl_utils.py:31-37); main.py:140-144 shifts online rewards under the same test. OGBench antmaze singletask
    rewards are already {-1, 0} and are shifted nowhere."""
    d4rl_antmaze = "antmaze" in env_id and any(kind in env_id for kind in ("diverse", "play", "umaze"))
    return reward - 1.0 if d4rl_antmaze else reward


def flatten_obs(space: gym.Space, obs) -> np.ndarray:
    """Flatten (a batch of) observations of a Box or Dict space to float32 (batch, dim) in `space`'s key order."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_obs(s, obs[k]) for k, s in space.spaces.items()], axis=-1)
    obs = np.asarray(obs, dtype=np.float32)
    return obs.reshape(*obs.shape[: obs.ndim - len(space.shape)], -1)


def check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(f"SWFP needs a continuous 1-D Box action space; this dataset has {act_space}")
    if not np.all(np.isfinite(act_space.low)) or not np.all(np.isfinite(act_space.high)):
        raise DatasetError(f"SWFP needs a bounded action space to rescale to [-1, 1]; got {act_space}")
    spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    for space in spaces:
        if not isinstance(space, gym.spaces.Box) or len(space.shape) > 1:
            raise DatasetError(f"SWFP handles flat Box (or Dict of flat Box) observations; got {obs_space}")


class OfflineData:
    """Transitions of an offline dataset as float32 arrays, with the means to evaluate on its env."""

    def __init__(self, transitions: dict, make_env: Callable[[], gym.Env], flatten: Callable, score: Callable):
        self.transitions = transitions  # observations, actions, rewards, masks, next_observations
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
    parts = {k: [] for k in ("observations", "actions", "rewards", "terminations", "next_observations")}
    for episode in dataset.iterate_episodes():
        obs = flatten_obs(obs_space, episode.observations)
        n = len(episode.actions)
        if len(obs) != n + 1 or len(episode.rewards) != n or len(episode.terminations) != n:
            raise DatasetError(f"dataset {env_id!r}: episode {episode.id} has {len(obs)} observations, {n} actions, "
                               f"{len(episode.rewards)} rewards and {len(episode.terminations)} terminations (a Minari "
                               "episode has one observation more than actions, rewards and terminations)")
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        parts["terminations"].append(np.asarray(episode.terminations, dtype=np.float32))
    if not parts["actions"]:
        raise DatasetError(f"dataset {env_id!r} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["actions"] = to_unit_box(data["actions"], dataset.action_space)
    data["rewards"] = transform_reward(env_id, data["rewards"])  # D4RL antmaze: {0, 1} -> {-1, 0}
    data["masks"] = 1.0 - data.pop("terminations")  # bootstrap through truncations

    def make_env():
        try:
            return unit_box_env(dataset.recover_environment(eval_env=True))
        except Exception as e:  # a missing env package, an env id unknown to this gymnasium
            raise DatasetError(f"cannot recreate the evaluation env of {env_id!r}: {first_line(e)}") from e

    has_ref = dataset.storage.metadata.get("ref_min_score") is not None and dataset.storage.metadata.get("ref_max_score") is not None
    score = (lambda returns: 100.0 * minari.get_normalized_score(dataset, np.asarray(returns))) if has_ref else (lambda r: None)
    return OfflineData(data, make_env, lambda obs: flatten_obs(obs_space, obs), score)


def read_minari(data_dir: Path, env_id: str) -> OfflineData:
    """load_minari of the Minari dataset in `data_dir`; a file that cannot be read is one DatasetError line naming it."""
    import minari

    try:
        return load_minari(minari.MinariDataset(data_dir), env_id)
    except DatasetError:
        raise
    except Exception as e:
        raise minari_file_error(e, data_dir, env_id) from e


def minari_file_error(e: Exception, data_dir: Path, env_id: str) -> DatasetError:
    """What is wrong with which file of a Minari dataset folder, from the exception that reading it raised."""
    hdf5, metadata = data_dir / "main_data.hdf5", data_dir / "metadata.json"
    if isinstance(e, json.JSONDecodeError):
        what = f"{metadata} is not valid JSON ({e})"
    elif not hdf5.is_file() or not metadata.is_file():
        what = f"{data_dir} has no {metadata.name if hdf5.is_file() else hdf5.name} (a Minari dataset needs both files)"
    elif isinstance(e, KeyError):  # h5py: an entry (an episode's 'actions', an episode) is missing
        entry = re.search(r"object '([^']+)' doesn't exist", str(e))
        what = f"{hdf5} lacks the entry {entry.group(1)!r}" if entry else f"{hdf5} lacks an entry ({first_line(e)})"
    elif isinstance(e, OSError):  # h5py: not an HDF5 file
        what = f"{hdf5} is empty" if hdf5.stat().st_size == 0 else f"{hdf5} is truncated or not HDF5 ({first_line(e)})"
    else:
        what = f"{data_dir} cannot be read as a Minari dataset ({first_line(e)})"
    return DatasetError(f"dataset {env_id!r}: {what}")


def check_npz(path: Path, name: str) -> None:
    """An OGBench .npz that is there must open and hold the arrays ogbench reads (cheap: no array is loaded)."""
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
    except Exception as e:  # empty (EOFError), truncated or not a zip (BadZipFile), a pickle (ValueError), ...
        raise DatasetError(f"OGBench dataset {name!r}: {path} cannot be read as .npz: it is empty, truncated or not "
                           f".npz ({first_line(e)})") from e
    missing = sorted({"observations", "actions", "terminals"} - keys)
    if missing:
        raise DatasetError(f"OGBench dataset {name!r}: {path} has no {', '.join(missing)}")


def load_ogbench(name: str, dataset_dir: str) -> OfflineData:
    import ogbench

    splits = name.split("-")
    if "singletask" not in splits:
        raise DatasetError(f"SWFP needs a reward-labelled OGBench dataset (e.g. cube-single-play-singletask-task2-v0); got {name!r}")
    dataset_dir = os.path.expanduser(dataset_dir)
    stem = "-".join(splits[: splits.index("singletask")] + splits[-1:])  # ogbench's file name: no singletask-taskN
    for path in (Path(dataset_dir) / f"{stem}.npz", Path(dataset_dir) / f"{stem}-val.npz"):
        if path.exists():  # a missing file is downloaded by ogbench
            check_npz(path, name)
    # success_timing='post': success, termination and reward of the state after the step, as ogbench 1.1.0 (the
    # version the official FQL pins) computed them; ogbench >= 1.2 registers singletask envs with 'pre'
    env, train, _ = ogbench.make_env_and_datasets(name, dataset_dir=dataset_dir, success_timing="post")
    check_spaces(env.observation_space, env.action_space)
    data = {k: np.asarray(train[k], dtype=np.float32) for k in ("observations", "actions", "rewards", "masks", "next_observations")}
    data["actions"] = to_unit_box(data["actions"], env.action_space)
    data["rewards"] = transform_reward(name, data["rewards"])  # a no-op for every OGBench name, kept for symmetry
    env.close()
    make_env = lambda: unit_box_env(  # noqa: E731
        ogbench.make_env_and_datasets(name, env_only=True, success_timing="post"))
    return OfflineData(data, make_env, lambda obs: flatten_obs(env.observation_space, obs), lambda r: None)


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
    """Resolve --env-id: a local Minari dataset dir, an embedded dataset, an OGBench name, a Minari id."""
    tried = []
    for path in (Path(env_id), Path(__file__).resolve().parent / "datasets" / env_id):
        for data_dir in (path / "data", path):
            if (data_dir / "main_data.hdf5").exists() or (data_dir / "metadata.json").exists():
                return validated(read_minari(data_dir, env_id), env_id)
        tried.append(f"no Minari dataset in {path}")
    if "/" not in env_id and env_id.endswith("-v0"):
        try:
            return validated(load_ogbench(env_id, ogbench_dataset_dir), env_id)
        except DatasetError:
            raise
        except Exception as e:
            tried.append(f"OGBench: {first_line(e)}")
    else:
        dataset = None
        try:
            dataset = download_minari(env_id)
        except DatasetError as e:  # not local and the hub unreachable or offline: the reason, in the one line below
            tried.append(f"Minari: {e}")
        except Exception as e:
            tried.append(f"Minari: {first_line(e)}")
        if dataset is not None:
            try:
                return validated(load_minari(dataset, env_id), env_id)
            except DatasetError:
                raise
            except Exception as e:  # a corrupted copy under MINARI_DATASETS_PATH
                raise minari_file_error(e, Path(dataset.storage.data_path), env_id) from e
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
        idx = torch.randint(0, self.size, (batch_size,), device=self.data["rewards"].device)
        return {key: tensor[idx] for key, tensor in self.data.items()}


def evaluate(data: OfflineData, envs: list, policy: Callable, episodes: int, seed: int, device: torch.device) -> dict:
    """Run `episodes` episodes on the `envs` in parallel, one batched policy call per step."""
    returns, successes = [], []
    next_episode = 0
    obs, ep_return, active = [None] * len(envs), [0.0] * len(envs), [False] * len(envs)
    for i, env in enumerate(envs):
        if next_episode < episodes:
            obs[i], _ = env.reset(seed=seed + next_episode)
            active[i], next_episode = True, next_episode + 1
    while any(active):
        ids = [i for i in range(len(envs)) if active[i]]
        batch = torch.as_tensor(np.stack([data.flatten(obs[i]) for i in ids]), device=device)
        actions = policy(batch).cpu().numpy()
        for i, action in zip(ids, actions):
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            ep_return[i] += float(reward)
            if terminated or truncated:
                returns.append(ep_return[i])
                if "success" in info:
                    successes.append(float(info["success"]))
                ep_return[i] = 0.0
                if next_episode < episodes:
                    obs[i], _ = envs[i].reset(seed=seed + next_episode)
                    next_episode += 1
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


def save_checkpoint(path: Path, modules: dict, phase: str, step: int, args: Args) -> None:
    """Atomic save: write a temporary file, then rename it over the previous checkpoint (both in this run's
    directory). The state names its script and holds the args, which load_checkpoint compares."""
    state = {name: m.state_dict() for name, m in modules.items()}
    state.update(script="swfp", phase=phase, step=step, args=asdict(args))
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


NETWORK_ARGS = ("hidden_dim", "num_layers", "num_critics", "blocks", "block_hidden_dim", "block_num_layers")  # sizes
CHECKPOINT_ENTRIES = ("args", "phase", "step", "flow", "blocks", "critic", "target_critic")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


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


def describe(state) -> str:
    """What a torch file that is not an swfp checkpoint holds, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    if state.get("script") not in (None, "swfp"):
        return f"it was saved by {state['script']}.py"
    return "it is an unrelated torch file"


def online_step(state: dict) -> int:
    """Env steps of online fine-tuning behind a checkpoint: 0 at the end of phase 1."""
    return int(state["step"]) if state["phase"] == "online" else 0


def load_checkpoint(path: str, args: Args, device: torch.device) -> dict:
    """The state of an swfp checkpoint that fits this run, read before any work. Every failure is one CheckpointError
    line: a missing, empty or unreadable file, another script's file, networks of other sizes (NETWORK_ARGS, each
    listed against the checkpoint's), an online checkpoint of the other method (--naive-finetune) or past
    --total-timesteps. The end of phase 1 fits any phase-1 budget, either method and any --total-timesteps: it is what
    fine-tuning starts from. Checkpoints from before the `script` entry are read when they have every entry."""
    state = read_torch_file(Path(path), "--checkpoint", CheckpointError, device)
    if not isinstance(state, dict) or state.get("script", "swfp") != "swfp":
        raise CheckpointError(f"--checkpoint {path} is not an swfp checkpoint: {describe(state)}")
    missing = [k for k in CHECKPOINT_ENTRIES if k not in state]
    if missing or not isinstance(state["args"], dict) or state["phase"] not in ("pretrained", "online"):
        raise CheckpointError(f"--checkpoint {path} is not an swfp checkpoint: it has no "
                              f"{', '.join(missing) or 'args and phase'} ({describe(state)})")
    saved, online = state["args"], state["phase"] == "online"
    # online: the blocks (in flow or action space), or the flow itself (with or without the anchor), were trained
    keys = NETWORK_ARGS + (("naive_finetune", "naive_trust_region", "block_space") if online else ())
    defaults = {"naive_trust_region": False, "block_space": "flow"}  # checkpoints saved before these flags existed
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved.get(k, defaults.get(k, 'none'))})"
              for k in keys if saved.get(k, defaults.get(k)) != getattr(args, k)]
    if differ:
        raise CheckpointError(f"--checkpoint {path} holds other networks: {', '.join(differ)}; pass the checkpoint's "
                              "values")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise CheckpointError(f"--checkpoint {path} has no valid step (step: {state['step']!r})")
    if online_step(state) > args.total_timesteps:
        raise CheckpointError(f"--checkpoint {path} is at env step {state['step']} of online fine-tuning, past "
                              f"--total-timesteps {args.total_timesteps}; pass a larger --total-timesteps")
    return state


def restore_checkpoint(state: dict, args: Args, modules: dict, obs_dim: int, act_dim: int) -> None:
    """Load a state from load_checkpoint into this run's networks; networks of another dataset's sizes are one
    CheckpointError line."""
    try:
        for name, module in modules.items():  # no pretrained_flow (phase 1, or older checkpoints): the flow itself
            module.load_state_dict(state[name if name in state or name != "pretrained_flow" else "flow"])
    except Exception as e:  # size mismatch (RuntimeError)
        raise CheckpointError(f"--checkpoint {args.checkpoint}: its networks do not load into this dataset's "
                              f"(observation dim {obs_dim}, action dim {act_dim}; {first_line(e)})") from e


def clear_grads(params: list) -> None:
    """optimizer.zero_grad(set_to_none=True), which dynamo does not trace (a graph break in a compiled update)."""
    for p in params:
        p.grad = None


def fresh_run_dir(run_name: str) -> Path:
    """runs/<run_name>, or runs/<run_name>_<k> when a run of the same name (same second) already has it: a run never
    writes into another run's directory."""
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
    # every input checked before any work: the flags, then the checkpoint (file, script, networks, budget)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    state = load_checkpoint(args.checkpoint, args, device) if args.checkpoint else None
    start_step = online_step(state) if state is not None else 0  # env steps of phase 2 already done
    if state is not None and start_step == args.total_timesteps:
        print(f"notice: --checkpoint {args.checkpoint} is at env step {start_step}, the --total-timesteps budget: "
              "nothing to fine-tune, evaluating it only", file=sys.stderr, flush=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    data = load_offline_data(args.env_id, args.ogbench_dataset_dir)
    obs_dim = data.transitions["observations"].shape[1]
    act_dim = data.transitions["actions"].shape[1]
    offline = data.transitions if args.keep_offline_data else {k: v[:0] for k, v in data.transitions.items()}
    buffer = ReplayBuffer(offline, len(offline["rewards"]) + args.total_timesteps, device)
    bc_buffer = ReplayBuffer(data.transitions, 0, device) if not args.keep_offline_data else buffer

    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = fresh_run_dir(run_name)
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    flow = VectorField(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    blocks = FlowBlocks(args.blocks, obs_dim, act_dim, args.block_hidden_dim, args.block_num_layers).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic.load_state_dict(critic.state_dict())
    target_critic.requires_grad_(False)
    adam = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if args.cudagraphs:  # Adam's step counter on the device, so the whole optimizer step is captured
        adam["capturable"] = True
    compiled = args.compile or args.cudagraphs  # --cudagraphs implies --compile

    def compile_step(fn: Callable) -> Callable:
        """torch.compile of an update step under --compile. CUDA graphs through torch.compile's "reduce-overhead"
        (inductor + CUDA-graph trees): one code path with --compile and no new dependency. Not fullgraph: torch.optim
        breaks the graph around step() and dynamo around backward() (docs/swfp.md, Speed options)."""
        if not compiled:
            return fn
        step = torch.compile(fn, mode="reduce-overhead" if args.cudagraphs else None)
        if not args.cudagraphs:
            return step

        def replay(*inputs):
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last replay's outputs may be reused
            out = step(*inputs)  # copied below before the next replay overwrites the graph's output buffers
            return {k: v.clone() for k, v in out.items()} if isinstance(out, dict) else tuple(v.clone() for v in out)

        return replay
    critic_params, target_params = list(critic.parameters()), list(target_critic.parameters())
    critic_optimizer = torch.optim.Adam(critic_params, lr=args.learning_rate, **adam)
    pretrained_flow = VectorField(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)  # the BC flow, frozen
    pretrained_flow.requires_grad_(False)
    modules = dict(flow=flow, blocks=blocks, critic=critic, target_critic=target_critic, pretrained_flow=pretrained_flow)
    skip_phase1 = state is not None
    if state is not None:
        restore_checkpoint(state, args, modules, obs_dim, act_dim)

    def noise(obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(obs.shape[0], act_dim, device=device, generator=generator)

    refine = None if args.naive_finetune else blocks  # the naive baseline changes the flow itself, no blocks

    def policy(obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return sample_actions(flow, refine, obs, noise(obs, generator), args.blocks, args.block_space)

    def frozen(module: nn.Module) -> Callable:
        """The module with detached parameters: a policy loss trains the policy through the action only."""
        params = {name: p.detach() for name, p in module.named_parameters()}
        return lambda *inputs: torch.func.functional_call(module, params, inputs)

    def td_update(batch: dict) -> tuple:
        loss, q = critic_loss(critic, target_critic, policy, batch, args.gamma)
        clear_grads(critic_params)
        loss.backward()
        critic_optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, critic_params, args.tau)
        return loss.detach(), q.detach().mean()

    eval_envs = [data.make_env() for _ in range(min(args.eval_episodes, args.eval_envs))]
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    phase1_steps = 0 if skip_phase1 else args.pretrain_steps + args.critic_warmup_steps
    progress = Progress(phase1_steps + args.total_timesteps, start_step)

    def run_evaluation(step: int, prefix: str = "") -> dict:
        """Same env seeds and policy noise at every evaluation, independent of the training RNG."""
        generator = torch.Generator(device=device).manual_seed(args.seed)
        result = evaluate(data, eval_envs, lambda obs: policy(obs, generator), args.eval_episodes, 10_000 * args.seed, device)
        result = {f"eval/{prefix}{k}": v for k, v in result.items()}
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        progress.write(f"env step {step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in result.items() if not k.endswith("_std")))
        return result

    def check_finite(flag: torch.Tensor, where: str) -> None:
        if flag.item():
            raise NonFiniteLossError(f"non-finite loss {where}; training stopped"
                                     + (f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))

    # ----------------------------------------------------------------------- phase 1: BC flow, critic warm-up
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_losses: dict = {}  # the latest value of every scalar loss, returned as losses/* (for tests)
    if not skip_phase1:
        flow_params = list(flow.parameters())
        flow_optimizer = torch.optim.Adam(flow_params, lr=args.learning_rate, **adam)

        @compile_step
        def bc_step(batch: dict) -> tuple:
            loss = bc_flow_loss(flow, batch["observations"], batch["actions"])
            clear_grads(flow_params)
            loss.backward()
            flow_optimizer.step()
            return (loss.detach(),)

        warmup_step = compile_step(td_update)
        t0 = time.time()
        for step in range(1, args.pretrain_steps + 1):
            (loss,) = bc_step(bc_buffer.sample(args.batch_size))  # indices drawn on the device, static shapes
            last_losses["bc_flow_loss"] = loss
            nonfinite |= ~torch.isfinite(loss)
            if step % args.log_freq == 0 or step == args.pretrain_steps:
                check_finite(nonfinite, f"in BC pretraining by step {step}")
                sps = args.log_freq / (time.time() - t0)
                writer.add_scalar("losses/bc_flow_loss", loss.item(), step)
                writer.add_scalar("charts/pretrain_SPS", sps, step)
                progress.update(step, sps=sps, bc=loss.item())
                t0 = time.time()
        for step in range(1, args.critic_warmup_steps + 1):
            loss, q_mean = warmup_step(bc_buffer.sample(args.batch_size))
            last_losses["critic_warmup_loss"] = loss
            nonfinite |= ~torch.isfinite(loss)
            if step % args.log_freq == 0 or step == args.critic_warmup_steps:
                check_finite(nonfinite, f"in critic warm-up by step {step}")
                writer.add_scalar("losses/critic_warmup_loss", loss.item(), step)
                progress.update(args.pretrain_steps + step, critic=loss.item(), q=q_mean.item())
        if args.save_model:
            save_checkpoint(checkpoint_path, modules, "pretrained", 0, args)

    # ----------------------------------------------------------------------- phase 2: online fine-tuning
    critic_optimizer.state.clear()  # fresh Adam moments: the same start whether or not phase 1 ran in this process
    if start_step == 0:  # the pretrained flow (an online checkpoint holds its own copy): the naive baselines' anchor
        pretrained_flow.load_state_dict(flow.state_dict())
    flow.requires_grad_(args.naive_finetune)
    actor_params = list(flow.parameters()) if args.naive_finetune else list(blocks.parameters())
    actor_optimizer = torch.optim.Adam(actor_params, lr=args.learning_rate, **adam)

    bc_anchor = pretrained_flow if args.naive_trust_region else None
    stage = {"block": None}  # action space: the block being trained (one after another over the online phase)

    def actor_losses(obs: torch.Tensor, z: torch.Tensor, block: int, with_stats: bool) -> tuple:
        stats = {}
        with_entropy = args.entropy_coef > 0 or with_stats
        if args.naive_finetune:
            loss_actor, displacement = naive_finetune_loss(flow, frozen(critic), obs, z, args.blocks, args.normalize_q,
                                                           bc_anchor, args.jko_step_size)
            if displacement is not None:
                stats["w2_to_pretrained"] = displacement
        elif args.block_space == "action":
            stats = action_block_loss(flow, blocks, frozen(critic), obs, z, block, args.jko_step_size, args.entropy_coef,
                                      args.normalize_q, with_entropy)
            loss_actor = stats.pop("loss")
        else:
            # the batch is split into K chunks, chunk k trains block k (about the cost of (K + 1) / 2 passes over it)
            per_block = max(1, obs.shape[0] // args.blocks)
            obs = obs[: per_block * args.blocks].view(args.blocks, per_block, obs_dim)
            z = z[: per_block * args.blocks].view(args.blocks, per_block, act_dim)
            stats = flow_block_losses(flow, blocks, frozen(critic), obs, z, args.jko_step_size, args.entropy_coef,
                                      args.normalize_q, with_entropy, with_stats)
            loss_actor = stats.pop("loss")
        return loss_actor, stats

    if compiled and args.entropy_coef > 0 and not args.naive_finetune:
        # the entropic term backpropagates through log|det J_k| (a double backward), which AOT autograd does not
        # support: under --compile the JKO losses and their backward stay eager, the rest of the update is compiled
        actor_losses = torch.compiler.disable(actor_losses)

    def update(batch: dict, block: int, with_stats: bool) -> dict:
        """One online update, compiled under --compile. block (action-space stage) and with_stats are Python values:
        one graph per value met (K stages at most), no recompilation at every step."""
        loss_critic, q_mean = td_update(batch)
        loss_actor, stats = actor_losses(batch["observations"], noise(batch["observations"]), block, with_stats)
        clear_grads(actor_params)
        loss_actor.backward()
        actor_optimizer.step()
        return {"critic_loss": loss_critic, "actor_loss": loss_actor.detach(), "q_mean": q_mean, **stats}

    update = compile_step(update)

    online_env = data.make_env()
    online_obs, episode_return, episode_length = None, 0.0, 0
    online_seed = args.seed  # the online env is seeded once, at its first reset; later resets continue its RNG
    metrics = run_evaluation(start_step)
    # the policy phase 2 starts from is the pretrained one unless the checkpoint was saved online
    pretrained = {k.replace("eval/", "eval/pretrained_"): v for k, v in metrics.items()} if start_step == 0 else {}
    if args.total_timesteps == start_step:
        metrics.update(pretrained)
    entropy_0 = 0.5 * act_dim * math.log(2.0 * math.pi * math.e)  # H(N(0, I)) of a_0
    t0, last_log_step = time.time(), start_step
    for step in range(start_step + 1, args.total_timesteps + 1):
        if online_obs is None:
            online_obs, _ = online_env.reset(seed=online_seed)
            online_seed = None
        obs_np = data.flatten(online_obs)
        action = policy(torch.as_tensor(obs_np[None], device=device))[0].cpu().numpy()
        next_obs, reward, terminated, truncated, info = online_env.step(action)
        buffer.add(observations=obs_np, actions=action, rewards=transform_reward(args.env_id, float(reward)),
                   masks=1.0 - float(terminated), next_observations=data.flatten(next_obs))
        episode_return, episode_length = episode_return + float(reward), episode_length + 1  # the env's own return
        online_obs = next_obs
        if terminated or truncated:
            writer.add_scalar("charts/episodic_return", episode_return, step)
            writer.add_scalar("charts/episodic_length", episode_length, step)
            if "success" in info:
                writer.add_scalar("charts/success", float(info["success"]), step)
            online_obs, episode_return, episode_length = None, 0.0, 0

        log_now = step % args.log_freq == 0 or step == args.total_timesteps
        eval_now = step % args.eval_freq == 0 or step == args.total_timesteps
        block = 0
        if args.block_space == "action" and not args.naive_finetune:
            # stage k of K equal parts of the online phase trains block k alone (Adam moments reset at each stage)
            block = min(args.blocks - 1, (step - 1) * args.blocks // max(1, args.total_timesteps))
            if block != stage["block"]:
                actor_optimizer.state.clear()
                stage["block"] = block
        losses = update(buffer.sample(args.batch_size), block, log_now)  # indices drawn on the device, static shapes
        last_losses.update({k: v for k, v in losses.items() if v.numel() == 1})
        nonfinite |= ~(torch.isfinite(losses["critic_loss"]) & torch.isfinite(losses["actor_loss"]))
        if log_now or eval_now:  # checked before anything is logged, evaluated or saved
            check_finite(nonfinite, f"within env steps {last_log_step + 1}..{step}")
        if log_now:
            sps = (step - last_log_step) / (time.time() - t0)
            for k in ("critic_loss", "actor_loss", "q_mean"):
                writer.add_scalar(f"losses/{k}", losses[k].item(), step)
            if "w2_to_pretrained" in losses:
                writer.add_scalar("losses/w2_to_pretrained", losses["w2_to_pretrained"].item(), step)
            if not args.naive_finetune:
                per_block = {"w2_displacement": losses["w2_trust"], "w2_step": losses["w2_step"],
                             "q_improvement": losses["q_improvement"], "jko_loss": losses["block_loss"]}
                if args.block_space == "flow":  # H(pi_{k+1}) = H(pi_k) + E log|det J_k| from the Gaussian a_0
                    per_block["entropy"] = entropy_0 + torch.cumsum(losses["log_det"], 0)
                    first = 0
                else:  # one block per stage; H of the BC sample a_0 is unknown: the log-det is logged
                    per_block["log_det"] = losses["log_det"]
                    first = stage["block"]
                    writer.add_scalar("blocks/stage", first, step)
                for name, values in per_block.items():
                    for k, v in enumerate(values.tolist(), start=first):
                        writer.add_scalar(f"blocks/{name}_{k}", v, step)
                    if args.block_space == "flow":
                        writer.add_scalar(f"blocks/{name}_mean", values.mean().item(), step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.update(phase1_steps + step, sps=sps,
                            critic=losses["critic_loss"].item(), q=losses["q_mean"].item(), **headline(metrics))
            t0, last_log_step = time.time(), step
        if eval_now:
            metrics = {**run_evaluation(step), **pretrained}
            if args.save_model:
                save_checkpoint(checkpoint_path, modules, "online", step, args)
    progress.close()
    writer.close()
    for env in eval_envs + [online_env]:
        env.close()
    return {**metrics, **{f"losses/{k}": v.item() for k, v in last_losses.items()}}


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
