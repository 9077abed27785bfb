"""Decision Flow (DF): the flow policy's generation steps as an MDP, optimised jointly with flow matching.

Paper: "Decision Flow Policy Optimization", Jifeng Hu, Sili Huang, Siyuan Guo, Zhaogeng Liu, Li Shen,
Lichao Sun, Hechang Chen, Yi Chang, Dacheng Tao, arXiv:2505.20350 (2025). No official code is public.

Idea. A flow policy u_theta(s, a_t, t) turns noise a_0 ~ N(0, I) into an action a_1 in T Euler steps.
Decision Flow reads those T steps as a Markov decision process of their own, the *flow MDP*:

    flow state   s_f = [s, a_t, t]                 (environment state, intermediate action, flow time)
    flow action  a_f = u_theta(s, a_t, t)          (the velocity)
    transition   a_{t+dt} = a_t + dt * a_f          (one Euler step, deterministic, dt = 1/T)
    reward       r_f,tau for tau < T (variant-specific), and Q(s, a_1) at tau = T (the ordinary critic)
    discount     gamma_f = 1

so that improving the flow policy is ordinary RL in that MDP, and the flow-matching loss on dataset
actions can sit in the same objective (distribution fitting and policy improvement at once). Two
variants: DF-dir (intermediate rewards on the *direction* of the velocity relative to the improvement
of the action value) and DF-div (intermediate rewards penalising the *divergence* of the velocity from
the behaviour velocity).

What is from the paper (verified): the flow MDP above (state, velocity action, deterministic Euler
transition, terminal reward Q(s, a_1), gamma_f = 1), the existence of a flow critic with a
convergence proof and of a policy-improvement step on it, the two variants' names and intent, and
an objective that combines intermediate-flow value signals with flow matching.

THIS REPO'S RECONSTRUCTION (the paper's Section 4 / appendix equations were not available to us;
every choice below is the minimal one that the flow MDP implies; docs/decision_flow.md explains each):
  R1 flow critic V_psi(s, a_t, t): the state value of the flow MDP under the current flow policy. A
     state value (not a Q_f(s_f, a_f)) suffices because the transition is known and deterministic:
     Q_f(s_f, u) = r_f(s_f, u) + V(s, a_t + dt u, t + dt) exactly.
  R2 flow-step TD (flow Bellman equation with gamma_f = 1), on the flow states the current policy
     visits from fresh noise (the flow MDP can be simulated for free, so it is trained on-policy):
        V_psi(s, a_tau, t_tau) <- r_f,tau + V_psibar(s, a_{tau+1}, t_{tau+1})   (tau < T-1)
        V_psi(s, a_{T-1}, t_{T-1}) <- r_f,T-1 + Q(s, a_1)                         (terminal reward)
  R3 per-flow-step policy improvement: at every visited flow state, maximise the one-step lookahead
     r_f,tau(u) + V(s, a_tau + dt u, t_tau + dt) through the known transition. The chain's states are
     detached, so each step's gradient goes through that one velocity only (no backprop through
     the whole sampling chain).
  R4 objective: L_actor = L_FM(theta) + eta * L_PI(theta), L_PI = -E_tau[A_f,tau / dt] / mean|Q|: the flow
     advantage A_f = r_f + V(s_f') - V(s_f) of each decision per unit flow time (A_f is O(dt); dividing by dt
     makes eta independent of T, as advantage rates in continuous-time RL, Tallec et al. 2019), scaled by the
     detached mean |Q| (as TD3+BC) so that eta is free of the reward scale; eta = 0 is plain flow matching.
  R5 DF-dir reward (issue 20; replaces the potential-based shaping of earlier versions): the component of
     grad_a Q at the step's predicted endpoint along the *direction* of the velocity,
        r_f,tau = beta * dt * <u_tau / ||u_tau||, g_tau>,   g_tau = grad_a Q(s, x)|_{x = clip(a_tau + (1 - t_tau) u_tau)}
     (g_tau detached: a fixed target direction, in Q units per unit of action, so that beta is unitless against the
     terminal Q). The predicted endpoint is the action the flow would reach if it kept its current velocity (exact
     for straight flows): a point where Q was trained, unlike the noisy intermediate a_tau. The reward depends on the
     direction of u only (its gradient in u is orthogonal to u) and is weighted by ||g||, so a flat or uncertain
     critic pulls little. It is not a potential difference, so unlike the earlier shaping it is not gradient-neutral
     once the flow critic is exact (tested on linear and quadratic Q). --dir-reward potential keeps the earlier
     shaping beta * (Q(s, a_{tau+1}) - Q(s, a_tau)) for comparison: with an exact flow critic its actor gradient is
     exactly (1 + beta) times that of beta = 0 (tested), i.e. terminal-reward Decision Flow at eta * (1 + beta).
     In issue 20's ablation (embedded Reacher, a reduced budget) it scored below beta = 0 on every seed: it is DF-dir's
     reward because it is a reading of "direction-oriented" that is not gradient-neutral, not because it won.
  R6 DF-div reward: r_f,tau = -beta * dt * ||u_theta(s, a_tau, t_tau) - u_beta(s, a_tau, t_tau)||^2 with
     u_beta a behaviour flow trained by flow matching. Summed over the T steps it is a Riemann sum of
     -beta * int ||u_theta - u_beta||^2 dt, the path-space divergence that bounds W2^2 between the two
     policies' action distributions (and is the Girsanov KL of their SDE versions up to the noise scale).
  R7 hyper-parameters eta = 1, beta = 1 (dir, unitless) / 0.1 (div, Q units) are ours, set without a sweep; the eta /
     beta-0 ablation of issue 20 (eta in {1, 2, 5}) is in docs/decision_flow.md.

The ordinary critic is a TD ensemble with a Polyak target (as in the other offline scripts), trained on
dataset transitions with next actions sampled from the flow policy (T Euler steps). The deployed policy
is the flow policy itself (T Euler steps from seeded noise); there is no separate one-step policy.

Data, environments and evaluation (shared with fql.py; not from the paper):
  * rewards: one function, `transform_reward`, maps D4RL AntMaze dataset rewards {0, 1} -> {-1, 0} (the
    official FQL's name test: 'antmaze' and one of diverse / play / umaze); the script is offline-only, and
    evaluation returns are the env's own;
  * OGBench: every singletask env is built with success_timing='post', so success, termination and reward are
    those of the state after the step, as in ogbench 1.1.0, the version the official FQL pins (ogbench 1.2.x,
    installed here, registers singletask envs with 'pre'). Decision Flow has no official code and its paper
    evaluates on D4RL only: this is this repo's choice, to match fql.py. Dataset rewards are the same in both;
  * Minari ids: a dataset not under MINARI_DATASETS_PATH is downloaded only after a 5 s probe of the Hugging
    Face hub (HF_ENDPOINT); with the hub unreachable or HF_HUB_OFFLINE set the run stops at once with one line
    that names the id and how to point --env-id at a local folder (huggingface_hub alone retries ~25 s);
  * evaluation: min(--eval-episodes, --eval-envs) envs (default 6; was 25) run in parallel, one batched policy
    call per step. Episode i is reset with seed 10000 * --seed + i whichever env runs it, but the policy noise
    comes from one generator shared by the batch, so the pool size changes which noise an episode draws: with
    the same seeds, metrics of different pool sizes differ by evaluation noise (equal in distribution).

Bad input ends the run before any work with one `error: ...` line and exit 1 (docs/decision_flow.md, "Bad input"):
check_args validates every flag; load_checkpoint refuses a missing, unreadable or foreign checkpoint, one made with
other --hidden-dim / --num-layers / --num-critics / --variant, and one past --total-steps (exactly at it: evaluate
only, with a notice; below it: train on to --total-steps); a broken dataset file is named in the message.

Usage:
  python decision_flow.py --variant dir --total-steps 10000 --hidden-dim 128 --num-layers 3  # embedded Reacher
  python decision_flow.py --variant div --env-id mujoco/hopper/medium-v0                       # Minari id
  python decision_flow.py --cudagraphs                       # compiled update replayed as CUDA graphs (CUDA only)
See docs/decision_flow.md for the flow-MDP table, the paper <-> code map and results.
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
    """dataset: a local Minari dataset dir, an embedded id (datasets/), an OGBench dataset name or a Minari id"""
    ogbench_dataset_dir: str = "~/.ogbench/data"
    """where OGBench datasets are read from (downloaded there when missing)"""
    total_steps: int = 1_000_000
    """offline gradient steps"""
    batch_size: int = 256
    """the batch size of each gradient step"""
    learning_rate: float = 3e-4
    """the learning rate of the (single) Adam optimizer"""
    gamma: float = 0.99
    """the discount factor of the environment MDP (the flow MDP's discount is 1)"""
    tau: float = 0.005
    """Polyak rate of the target critic and the target flow critic"""
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
    """train and evaluate a behaviour flow u_beta (pure flow matching) as the in-run BC baseline (always on for div)"""
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
    variant: Literal["dir", "div"] = "dir"
    """intermediate flow reward: dir = direction of the velocity w.r.t. Q improvement, div = divergence from behaviour"""
    flow_steps: int = 10
    """T: Euler steps of the flow policy = decisions per action in the flow MDP"""
    eta: float = 1.0
    """weight of the flow-MDP policy-improvement term against flow matching (0 = behaviour cloning)"""
    beta: Optional[float] = None
    """weight of the intermediate flow reward (dir: alignment weight, unitless, default 1; div: divergence penalty in Q units, default 0.1)"""
    dir_reward: Optional[Literal["align", "potential"]] = None
    """DF-dir reward: align (default; grad Q at the predicted endpoint along u/|u|, R5) or potential (the old shaping; = beta 0 at eta*(1+beta))"""
    normalize_pi_loss: bool = True
    """divide the policy-improvement term by the detached mean |Q(s, a_1)| (makes eta scale-free)"""
    q_agg: Literal["mean", "min"] = "mean"
    """how the target critics are aggregated in the TD target"""
    num_critics: int = 2
    """size of the critic ensemble"""


DEFAULT_BETA = {"dir": 1.0, "div": 0.1}  # this repo's choice (R7): see docs/decision_flow.md


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class DatasetError(ValueError):
    """Bad --env-id or dataset contents (a missing, empty, truncated or foreign file); one line, exit 1."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not decision_flow's, made for other networks or past the budget."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (ArgumentError, DatasetError, CheckpointError, NonFiniteLossError)  # `error: <message>`, exit 1


def check_args(args: Args) -> None:
    """Every flag checked once, before any work: the first value outside its range raises ArgumentError, one line
    `--flag must be <rule> (got <value>)`. (torch_deterministic, cuda, eval_bc_flow, save_model, compile, cudagraphs,
    normalize_pi_loss: booleans; variant, q_agg, dir_reward: choices that tyro checks, dir_reward with --variant dir
    only; env_id, ogbench_dataset_dir: read, and checked, by load_offline_data; checkpoint: read, and checked, by
    load_checkpoint.)"""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")  # it names the run directory and the checkpoint file
    need(0 <= args.seed < 2**32, "seed", "in [0, 2**32) (numpy's seed range)")
    need(args.total_steps >= 0, "total_steps", ">= 0")
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
    need(args.flow_steps >= 1, "flow_steps", ">= 1")
    need(math.isfinite(args.eta) and args.eta >= 0, "eta", "finite and >= 0 (0: flow matching only)")
    need(args.beta is None or (math.isfinite(args.beta) and args.beta >= 0), "beta", "finite and >= 0")
    need(args.num_critics >= 1, "num_critics", ">= 1")
    if args.dir_reward is not None and args.variant != "dir":
        raise ArgumentError(f"--dir-reward {args.dir_reward} and --variant {args.variant} cannot both be given "
                            "(--dir-reward sets DF-dir's reward)")
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                            "torch.cuda.is_available() is False") + "); drop --cudagraphs or use --compile")


# ---------------------------------------------------------------------------------------------
# Networks (GELU MLPs, Glorot-uniform kernels, zero biases; LayerNorm after the activation in the
# critics; time t enters as a raw scalar)
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
    """Velocity field u(s, a_t, t) -> velocity: the flow policy u_theta (and the behaviour flow u_beta)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + 1, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, a_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, a_t, t], dim=-1))


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
    """Ensemble of K critics Q_phi_k(s, a) -> (K, B); MLP with GELU then LayerNorm per hidden layer."""

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
        x = torch.cat([obs, action], dim=-1).expand(self.num_critics, -1, -1)
        return self.net(x).squeeze(-1)


class FlowCritic(nn.Module):
    """Flow critic V_psi(s, a_t, t) -> (B,): value of the flow state [s, a_t, t] under the current flow policy (R1)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int):
        super().__init__()
        self.critic = Critic(obs_dim + 1, act_dim, hidden_dim, num_layers, 1)  # same body as Q, one member

    def forward(self, obs: torch.Tensor, a_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([obs, t], dim=-1), a_t)[0]


def q_value(critic: Critic, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q(s, a) of the flow MDP's terminal reward: the ensemble mean at the clipped action."""
    return critic(obs, action.clamp(-1.0, 1.0)).mean(0)


def frozen(module: nn.Module) -> Callable:
    """`module` with detached parameters: gradients flow to the inputs only (critics inside the policy loss)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda *inputs: torch.func.functional_call(module, params, inputs)


# ---------------------------------------------------------------------------------------------
# The flow MDP: deterministic Euler transitions of the velocity field
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_flow(field: Callable, obs: torch.Tensor, z: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """Roll the flow MDP from a_0 = z to a_1 (a_{t+dt} = a_t + dt * u(s, a_t, t)) and clip to the action box."""
    a, dt = z, 1.0 / flow_steps
    for i in range(flow_steps):
        a = a + dt * field(obs, a, torch.full_like(a[:, :1], i * dt))
    return a.clamp(-1.0, 1.0)


def flow_rollout(policy: Callable, obs: torch.Tensor, z: torch.Tensor, flow_steps: int) -> tuple:
    """One episode of the flow MDP per row: states a_tau (T, B, d), velocities u_tau (T, B, d), times (T, B, 1).

    The state fed to each step is detached (R3): the velocity u_tau carries the gradient of its own step
    only, and next = a_tau + dt * u_tau is the one-step transition through which that step is improved.
    """
    a, dt = z, 1.0 / flow_steps
    states, velocities = [], []
    for i in range(flow_steps):
        u = policy(obs, a, torch.full_like(a[:, :1], i * dt))
        states.append(a)
        velocities.append(u)
        a = (a + dt * u).detach()
    states, velocities = torch.stack(states), torch.stack(velocities)
    times = (torch.arange(flow_steps, device=z.device, dtype=z.dtype) * dt).view(-1, 1, 1).expand(-1, z.shape[0], 1)
    return states, velocities, times


def flat(x: torch.Tensor) -> torch.Tensor:
    """(T, B, ...) -> (T * B, ...): every flow step of every sample in one network call."""
    return x.reshape(-1, *x.shape[2:])


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def critic_loss(critic: Critic, target_critic: Critic, policy: VectorField, batch: dict, gamma: float,
                flow_steps: int, q_agg: str) -> tuple:
    """Ordinary TD critic of the terminal flow reward: E[(Q_phi(s, a) - r - gamma * mask * Qbar(s', a'))^2],
    a' = the flow policy's action at s' (T Euler steps, no gradient), mean over the ensemble."""
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = sample_flow(policy, next_obs, torch.randn_like(batch["actions"]), flow_steps)
        next_qs = target_critic(next_obs, next_actions)
        next_q = next_qs.mean(0) if q_agg == "mean" else next_qs.min(0).values
        target_q = batch["rewards"] + gamma * batch["masks"] * next_q
    q = critic(batch["observations"], batch["actions"])
    return F.mse_loss(q, target_q.expand_as(q)), q


def flow_matching_loss(field: Callable, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Conditional flow matching on dataset actions (Lipman et al. 2023; the paper's flow-matching objective):
    linear path a_t = (1 - t) a_0 + t a, a_0 ~ N(0, I), regression target velocity a - a_0."""
    a_0 = torch.randn_like(actions)
    t = torch.rand_like(actions[:, :1])
    a_t = (1.0 - t) * a_0 + t * actions
    return F.mse_loss(field(obs, a_t, t), actions - a_0)


def endpoint_q_gradients(q: Callable, obs: torch.Tensor, states: torch.Tensor, velocities: torch.Tensor,
                         times: torch.Tensor) -> torch.Tensor:
    """g_tau = grad_x Q(s, x) at x = clip(a_tau + (1 - t_tau) u_tau), the step's predicted endpoint (R5), detached:
    (T, B, d). `q(obs, action) -> (B,)` is called at in-box points only (where the critic was trained)."""
    T = states.shape[0]
    with torch.enable_grad():
        x = (states + (1.0 - times) * velocities).detach().clamp(-1.0, 1.0).requires_grad_(True)
        (g,) = torch.autograd.grad(q(flat(obs.expand(T, *obs.shape)), flat(x)).sum(), x)
    return g.detach()


def intermediate_rewards(variant: str, beta: float, dt: float, velocities: torch.Tensor, phi: Optional[torch.Tensor] = None,
                         behaviour_velocities: Optional[torch.Tensor] = None,
                         q_grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """r_f,tau for tau = 0..T-1 -> (T, B). This repo's reconstruction (R5, R6):

    align (DF-dir): beta * dt * <u_tau / ||u_tau||, g_tau>, g_tau = `q_grad` (T, B, d), the gradient of Q at the
           predicted endpoint (endpoint_q_gradients); the gradient reaches u_tau through its direction only.
    potential (DF-dir, the earlier shaping, kept for comparison): beta * (Phi_{tau+1} - Phi_tau) with
           Phi_tau = Q(s, a_tau), given as `phi` (T + 1, B); the gradient reaches u_tau through Phi_{tau+1} only.
    div:   -beta * dt * ||u_tau - u_beta(s, a_tau, t_tau)||^2 (u_beta detached).
    """
    if variant == "align":
        direction = velocities / velocities.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return beta * dt * (direction * q_grad).sum(-1)
    if variant == "potential":
        return beta * (phi[1:] - phi[:-1].detach())
    return -beta * dt * (velocities - behaviour_velocities.detach()).pow(2).sum(-1)


def flow_critic_loss(flow_critic: Callable, states: torch.Tensor, times: torch.Tensor, obs: torch.Tensor,
                     rewards: torch.Tensor, next_values: torch.Tensor) -> torch.Tensor:
    """Flow-step TD (flow Bellman equation, gamma_f = 1; R2): E_tau[(V_psi(s, a_tau, t_tau) - r_f,tau - V_{tau+1})^2],
    V_{tau+1} = Vbar_psi(s, a_{tau+1}, t_{tau+1}) for tau < T-1 and the terminal reward Q(s, a_1) for tau = T-1.
    `states`, `times` (T, B, .), `obs` (B, .), `rewards`, `next_values` (T, B); the target carries no gradient."""
    T = states.shape[0]
    v = flow_critic(flat(obs.expand(T, *obs.shape)), flat(states.detach()), flat(times)).view(T, -1)
    return F.mse_loss(v, (rewards + next_values).detach()), v


def actor_loss(fm_loss: torch.Tensor, advantage_rate: torch.Tensor, q_terminal: torch.Tensor, eta: float,
               normalize: bool) -> tuple:
    """L_actor = L_FM + eta * L_PI (R4). L_PI = -E_tau[(r_f,tau + V(s_f') - V(s_f)) / dt] (R3): the one-step
    lookahead through the deterministic transition, as an advantage rate per unit of flow time, divided by the
    detached mean |Q(s, a_1)| when `normalize`. `advantage_rate` (T, B) carries the gradient of each u_tau."""
    pi_loss = -advantage_rate.mean()
    if normalize:
        pi_loss = pi_loss / q_terminal.detach().abs().mean().clamp_min(1e-6)
    return fm_loss + eta * pi_loss, pi_loss


def decision_flow_losses(policy: VectorField, flow_critic: FlowCritic, target_flow_critic: FlowCritic, critic: Critic,
                         behaviour: Optional[VectorField], obs: torch.Tensor, actions: torch.Tensor, variant: str,
                         flow_steps: int, eta: float, beta: float, normalize: bool, dir_reward: str = "align") -> dict:
    """All flow-MDP terms on one batch: rollout, intermediate rewards, one-step lookahead values, flow-critic TD,
    actor objective. Critic and flow-critic parameters get no gradient from the actor's term (frozen copies).
    `dir_reward` (align | potential) chooses DF-dir's reward (R5); DF-div ignores it."""
    T, dt, B = flow_steps, 1.0 / flow_steps, obs.shape[0]
    z = torch.randn_like(actions)
    states, velocities, times = flow_rollout(policy, obs, z, T)
    next_states = states + dt * velocities  # deterministic transition, differentiable in u_tau only
    next_times = times + dt
    obs_T = obs.expand(T, *obs.shape)
    q_frozen, v_frozen = frozen(critic), frozen(flow_critic)

    if variant == "dir" and dir_reward == "potential":
        # Phi at a_0 (no gradient) and at every next flow state (gradient into u_tau); Phi_T is also Q(s, a_1)
        with torch.no_grad():
            phi_0 = q_value(critic, obs, z)
        phi_next = q_frozen(flat(obs_T), flat(next_states).clamp(-1.0, 1.0)).mean(0).view(T, B)
        rewards = intermediate_rewards("potential", beta, dt, velocities, phi=torch.cat([phi_0[None], phi_next]))
        q_terminal = phi_next[-1]
    else:
        q_terminal = q_frozen(obs, next_states[-1].clamp(-1.0, 1.0)).mean(0)
        if variant == "dir":
            q_grad = endpoint_q_gradients(lambda o, a: q_frozen(o, a).mean(0), obs, states, velocities, times)
            rewards = intermediate_rewards("align", beta, dt, velocities, q_grad=q_grad)
        else:
            with torch.no_grad():
                behaviour_velocities = behaviour(flat(obs_T), flat(states), flat(times)).view(T, B, -1)
            rewards = intermediate_rewards("div", beta, dt, velocities, behaviour_velocities=behaviour_velocities)

    # value of the next flow state: the flow critic for tau < T-1, the terminal reward Q(s, a_1) at tau = T-1
    obs_inner = obs.expand(T - 1, *obs.shape)
    v_next = v_frozen(flat(obs_inner), flat(next_states[:-1]), flat(next_times[:-1])).view(T - 1, B)
    lookahead = rewards + torch.cat([v_next, q_terminal[None]])  # one-step lookahead r_f + V(s_f'), R3
    with torch.no_grad():
        v_next_target = target_flow_critic(flat(obs_inner), flat(next_states[:-1]), flat(next_times[:-1])).view(T - 1, B)
    next_values = torch.cat([v_next_target, q_terminal.detach()[None]])
    loss_flow_critic, v = flow_critic_loss(flow_critic, states, times, obs, rewards.detach(), next_values)

    # advantage of each flow decision, per unit flow time: V(s_f) is constant in theta (detached flow state), so the
    # gradient is that of the lookahead; the 1 / dt keeps eta's meaning independent of T (each decision moves a by dt u)
    advantage_rate = (lookahead - v.detach()) / dt
    loss_fm = flow_matching_loss(policy, obs, actions)
    loss_actor, loss_pi = actor_loss(loss_fm, advantage_rate, q_terminal, eta, normalize)
    return {"actor_loss": loss_actor, "flow_matching_loss": loss_fm, "policy_loss": loss_pi,
            "flow_critic_loss": loss_flow_critic, "flow_value": v[0].detach().mean(),
            "flow_return": rewards.detach().sum(0).mean(), "q_policy": q_terminal.detach().mean(),
            "advantage_rate": advantage_rate.detach().mean()}


# ---------------------------------------------------------------------------------------------
# Data: datasets, replay buffer, environments, evaluation
# ---------------------------------------------------------------------------------------------
ACTION_CLIP = 1.0 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5) as in the other offline scripts (fql.py)


def transform_reward(env_id: str, reward):
    """The one reward transform, applied to the dataset (decision_flow.py is offline-only; an online loop would
    apply it before its replay buffer): D4RL AntMaze (a Minari D4RL/antmaze/... id, or a local copy named like
    one) sparse {0, 1} -> {-1, 0}; every other task unchanged. Floats and arrays.

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
        raise DatasetError(f"Decision Flow needs a continuous 1-D Box action space; this dataset has {act_space}")
    if not np.all(np.isfinite(act_space.low)) or not np.all(np.isfinite(act_space.high)):
        raise DatasetError(f"Decision Flow needs a bounded action space to rescale to [-1, 1]; got {act_space}")
    spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    for space in spaces:
        if not isinstance(space, gym.spaces.Box) or len(space.shape) > 1:
            raise DatasetError(f"Decision Flow handles flat Box (or Dict of flat Box) observations; got {obs_space}")


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
        raise DatasetError(f"Decision Flow needs a reward-labelled OGBench dataset (e.g. cube-single-play-singletask-task2-v0); got {name!r}")
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
    """All dataset transitions as tensors on `device`, sampled by index on the device."""

    def __init__(self, transitions: dict, capacity: int, device: torch.device):
        self.size = len(transitions["rewards"])
        capacity = max(capacity, self.size)
        self.data = {}
        for key, array in transitions.items():
            tensor = torch.zeros((capacity,) + array.shape[1:], dtype=torch.float32, device=device)
            tensor[: self.size] = torch.as_tensor(array, device=device)
            self.data[key] = tensor

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


def save_checkpoint(path: Path, modules: dict, optimizer: torch.optim.Optimizer, step: int, args: Args) -> None:
    """Atomic save: write a temporary file, then rename it over the previous checkpoint (both in this run's
    directory). The state names its script and holds the args, which load_checkpoint compares."""
    state = {name: m.state_dict() for name, m in modules.items()}
    state.update(script="decision_flow", optimizer=optimizer.state_dict(), step=step, args=asdict(args))
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


NETWORK_ARGS = ("hidden_dim", "num_layers", "num_critics", "variant")  # what the saved networks were made and trained as
CHECKPOINT_ENTRIES = ("args", "step", "optimizer", "policy", "flow_critic", "target_flow_critic", "critic", "target_critic")


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
    """What a torch file that is not a decision_flow checkpoint holds, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    if state.get("script") not in (None, "decision_flow"):
        return f"it was saved by {state['script']}.py"
    return "it is an unrelated torch file"


def load_checkpoint(path: str, args: Args, device: torch.device) -> dict:
    """The state of a decision_flow checkpoint that fits this run, read before any work. Every failure is one
    CheckpointError line: a missing, empty or unreadable file, another script's file, networks made or trained with
    other NETWORK_ARGS (each listed against the checkpoint's), a step past --total-steps. Checkpoints from before
    the `script` entry are read when they have every entry."""
    state = read_torch_file(Path(path), "--checkpoint", CheckpointError, device)
    if not isinstance(state, dict) or state.get("script", "decision_flow") != "decision_flow":
        raise CheckpointError(f"--checkpoint {path} is not a decision_flow checkpoint: {describe(state)}")
    missing = [k for k in CHECKPOINT_ENTRIES if k not in state]
    if missing or not isinstance(state["args"], dict):
        raise CheckpointError(f"--checkpoint {path} is not a decision_flow checkpoint: it has no "
                              f"{', '.join(missing) or 'args'} ({describe(state)})")
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved.get(k, 'none')})"
              for k in NETWORK_ARGS if saved.get(k) != getattr(args, k)]
    # the behaviour flow u_beta exists when --variant div or --eval-bc-flow: a dir checkpoint must agree on the latter
    if not differ and args.variant == "dir" and bool(saved.get("eval_bc_flow")) != args.eval_bc_flow:
        differ.append(f"--eval-bc-flow {args.eval_bc_flow} (checkpoint: {saved.get('eval_bc_flow')})")
    if differ:
        raise CheckpointError(f"--checkpoint {path} holds other networks: {', '.join(differ)}; pass the checkpoint's "
                              "values")
    step = state["step"]
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"--checkpoint {path} has no valid step (step: {step!r})")
    if step > args.total_steps:
        raise CheckpointError(f"--checkpoint {path} is at step {step}, past --total-steps {args.total_steps}; pass a "
                              "larger --total-steps")
    return state


def restore_checkpoint(state: dict, args: Args, modules: dict, optimizer: torch.optim.Optimizer, obs_dim: int,
                       act_dim: int) -> None:
    """Load a state from load_checkpoint into this run's networks and optimizer; the networks of another dataset's
    sizes are one CheckpointError line. The learning rate is this run's --learning-rate (Adam's moments are kept)."""
    try:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # size mismatch (RuntimeError), another parameter count in the optimizer (ValueError)
        raise CheckpointError(f"--checkpoint {args.checkpoint}: its networks do not load into this dataset's "
                              f"(observation dim {obs_dim}, action dim {act_dim}; {first_line(e)})") from e
    for group in optimizer.param_groups:
        group["lr"] = args.learning_rate


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
def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.zero_grad(set_to_none=True), which dynamo does not trace (a graph break in the compiled update)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """--cudagraphs: Adam with capturable=True (its step counter a device tensor, so no host sync in the step),
    also after a checkpoint's state_dict restored the saving run's group settings."""
    for group in optimizer.param_groups:
        group["capturable"] = True
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


def main(args: Args) -> dict:
    # every input checked before any work: the flags, then the checkpoint (file, script, networks, budget)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    state = load_checkpoint(args.checkpoint, args, device) if args.checkpoint else None
    start_step = int(state["step"]) if state is not None else 0
    if state is not None and start_step == args.total_steps:
        print(f"notice: --checkpoint {args.checkpoint} is at step {start_step}, the --total-steps budget: nothing to "
              "train, evaluating it only", file=sys.stderr, flush=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    beta = args.beta if args.beta is not None else DEFAULT_BETA[args.variant]

    data = load_offline_data(args.env_id, args.ogbench_dataset_dir)
    obs_dim = data.transitions["observations"].shape[1]
    act_dim = data.transitions["actions"].shape[1]
    buffer = ReplayBuffer(data.transitions, len(data.transitions["rewards"]), device)

    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = fresh_run_dir(run_name)
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # networks: flow policy u_theta, flow critic V_psi (+ target), critic ensemble Q_phi (+ target),
    # behaviour flow u_beta (the div reward's reference and the in-run BC baseline)
    policy = VectorField(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    flow_critic = FlowCritic(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    target_flow_critic = FlowCritic(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    for target, online in ((target_flow_critic, flow_critic), (target_critic, critic)):
        target.load_state_dict(online.state_dict())
        target.requires_grad_(False)
    modules = dict(policy=policy, flow_critic=flow_critic, target_flow_critic=target_flow_critic, critic=critic,
                   target_critic=target_critic)
    use_behaviour = args.variant == "div" or args.eval_bc_flow
    behaviour = VectorField(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device) if use_behaviour else None
    if behaviour is not None:
        modules["behaviour"] = behaviour
    trained = [m for m in (policy, flow_critic, critic, behaviour) if m is not None]
    # one Adam over all networks (Adam is per-parameter: the same as one optimizer per network)
    optimizer = torch.optim.Adam([p for m in trained for p in m.parameters()], lr=args.learning_rate,
                                 **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    if state is not None:
        restore_checkpoint(state, args, modules, optimizer, obs_dim, act_dim)
    if args.cudagraphs:  # Adam's step counter on the device, so the whole step is captured (also after a checkpoint)
        make_capturable(optimizer, device)
    online_params = list(critic.parameters()) + list(flow_critic.parameters())
    target_params = list(target_critic.parameters()) + list(target_flow_critic.parameters())

    def update(batch: dict) -> dict:
        obs, actions = batch["observations"], batch["actions"]
        loss_critic, q = critic_loss(critic, target_critic, policy, batch, args.gamma, args.flow_steps, args.q_agg)
        df = decision_flow_losses(policy, flow_critic, target_flow_critic, critic, behaviour, obs, actions, args.variant,
                                  args.flow_steps, args.eta, beta, args.normalize_pi_loss, args.dir_reward or "align")
        loss = loss_critic + df["flow_critic_loss"] + df["actor_loss"]
        out = {"critic_loss": loss_critic.detach(), "q_mean": q.detach().mean()}
        if behaviour is not None:
            loss_behaviour = flow_matching_loss(behaviour, obs, actions)
            loss = loss + loss_behaviour
            out["behaviour_flow_loss"] = loss_behaviour.detach()
        clear_grads(optimizer)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, online_params, args.tau)
        out.update({k: v.detach() for k, v in df.items()})
        out["total_loss"] = loss.detach()
        return out

    if args.compile or args.cudagraphs:  # --cudagraphs implies --compile
        # CUDA graphs through torch.compile's "reduce-overhead" (inductor + CUDA-graph trees): one code path with
        # --compile and no new dependency. Not fullgraph: torch.optim breaks the graph around step(), dynamo around
        # backward() and torch.autograd.grad (docs/decision_flow.md, Speed options).
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    def noise(obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(obs.shape[0], act_dim, device=device, generator=generator)

    @torch.no_grad()
    def flow_policy(obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The deployed policy: T Euler steps of u_theta from noise, clipped to [-1, 1]."""
        return sample_flow(policy, obs, noise(obs, generator), args.flow_steps)

    @torch.no_grad()
    def bc_flow_policy(obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return sample_flow(behaviour, obs, noise(obs, generator), args.flow_steps)

    eval_envs = [data.make_env() for _ in range(min(args.eval_episodes, args.eval_envs))]
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    progress = Progress(args.total_steps, start_step)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    metrics: dict = {}
    t0, last_log_step = time.time(), start_step

    def run_evaluation(step: int) -> dict:
        """Same env seeds and policy noise at every evaluation, independent of the training RNG."""
        policies = {"": flow_policy}
        if args.eval_bc_flow and behaviour is not None:
            policies["bc_flow_"] = bc_flow_policy
        result = {}
        for prefix, pol in policies.items():
            generator = torch.Generator(device=device).manual_seed(args.seed)
            metrics = evaluate(data, eval_envs, lambda obs: pol(obs, generator), args.eval_episodes, 10_000 * args.seed, device)
            result.update({f"eval/{prefix}{k}": v for k, v in metrics.items()})
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        progress.write(f"step {step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in result.items() if not k.endswith("_std")))
        return result

    for step in range(start_step + 1, args.total_steps + 1):
        batch = buffer.sample(args.batch_size)  # indices drawn on the device, static shapes
        if args.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last replay's outputs may be reused
        losses = update(batch)
        if args.cudagraphs:  # copied before the next replay overwrites the graph's output buffers
            losses = {k: v.clone() for k, v in losses.items()}
        nonfinite |= ~torch.isfinite(losses["total_loss"])

        log_now = step % args.log_freq == 0 or step == args.total_steps
        eval_now = step % args.eval_freq == 0 or step == args.total_steps
        if (log_now or eval_now) and nonfinite.item():  # checked before anything is logged, evaluated or saved
            raise NonFiniteLossError(
                f"non-finite loss within steps {last_log_step + 1}..{step}; training stopped"
                + (f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))
        if log_now:
            sps = (step - last_log_step) / (time.time() - t0)
            for k, v in losses.items():
                writer.add_scalar(f"losses/{k}", v.item(), step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.update(step, sps=sps, critic=losses["critic_loss"].item(), fm=losses["flow_matching_loss"].item(),
                            q=losses["q_policy"].item(), **headline(metrics))
            t0, last_log_step = time.time(), step
        if eval_now:
            metrics = run_evaluation(step)
            if args.save_model:
                save_checkpoint(checkpoint_path, modules, optimizer, step, args)
    if args.total_steps == start_step:  # nothing to train (e.g. --total-steps 0 with a checkpoint): just evaluate
        metrics = run_evaluation(start_step)
    else:  # the final update's losses, for tests
        metrics = {**metrics, **{f"losses/{k}": v.item() for k, v in losses.items()}}
    progress.close()
    writer.close()
    for env in eval_envs:
        env.close()
    return metrics


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
