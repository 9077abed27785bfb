"""One-Step Flow Policy Mirror Descent (FPMD).

Paper: "One-Step Flow Policy Mirror Descent", Tianyi Chen, Haitong Ma, Na Li, Kai Wang, Bo Dai,
arXiv:2507.23675. Official code (JAX): https://github.com/tianyyiii/rectified_flow_policy

Idea. Policy mirror descent with a KL proximal term (Eq. 1) has the closed-form update
pi_new(a|s) ∝ pi_old(a|s) exp(Q(s, a) / lambda). FPMD fits a flow policy to that target without
ever evaluating a density: actions are sampled from the current policy pi_old and the flow-matching
loss of each sample is weighted by exp(Q / lambda) (importance sampling, Eq. 7 -> L_FPMD, Eq. 9).
As the policy sharpens, the variance of its action distribution shrinks and so does the error of a
single Euler step of the flow (Prop. 2), so the trained policy is deployed with ONE network call
per action, the cost of a Gaussian policy. Two variants (`--variant`):
  * `rf`  FPMD-R, a rectified-flow velocity v(s, x_t, t): the training-time sampler integrates 20
    Euler steps, deployment takes one;
  * `mf`  FPMD-M, a MeanFlow average velocity u(s, z, r, t) trained with the MeanFlow identity
    u = v - (t - r) du/dt (Eq. 10; du/dt by a Jacobian-vector product, torch.func.jvp): one step
    everywhere.

This file follows the official implementation (relax/algorithm/rf.py, mf.py; scripts/train_mujoco.py):
twin critics with a plain TD target (no entropy bonus) at the policy's next action, rewards scaled
by 0.2; the policy's training samples are the actions a' ~ pi_old(s') drawn for the TD target, with
weights w = exp(minQ(s', a') / (temperature * running_std(minQ))); acting = best-of-N: every particle
gets Gaussian noise of std 0.1 * alpha, the noisy particle with the highest minQ is taken and clipped
(as the official HEAD, network/rf.py:49-67), alpha tuned towards a target entropy of that noise;
the critics take two Adam steps per update with the same gradients (an official quirk the paper's
numbers were made with; `--no-critic-double-step` takes one);
an EMA ("target") policy acts in the environment and is evaluated; 5 vector envs, one gradient
update per vector step. Evaluation reports both the 1-NFE policy (one flow step, no best-of-N;
`eval/episodic_return_1nfe`, the paper's inference claim) and the training-time sampler
(best-of-N, no exploration noise; `eval/episodic_return`, the official evaluator's metric).
Deliberate differences from the official code (details in docs/fpmd.md): `--no-critic-double-step` is
offered (official: always two steps); gymnasium -v5 envs (official: gym -v4) with the random warm-up
counted in --total-timesteps; in-process evaluation of both samplers, final evaluation reported (paper:
best over training); `mf_sample` takes the step size into account for more than one step (official
MeanFlow.p_sample is right for one step only; FPMD-M uses one); Mish by an equivalent exp formula on CPU;
PyTorch RNG streams.

Usage:
  python fpmd.py                                        # FPMD-R on Hopper-v5, paper setting (1M steps)
  python fpmd.py --variant mf --env-id HalfCheetah-v5   # FPMD-M
  python fpmd.py --env-id Pendulum-v1 --total-timesteps 20000 --learning-starts 2000  # quick CPU run
  python fpmd.py --cudagraphs                           # compiled update replayed as CUDA graphs (CUDA only)
See docs/fpmd.md for the paper <-> code map, logged metrics and results.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
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
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    env_id: str = "Hopper-v5"
    """a gymnasium id with a continuous (Box) action space"""
    total_timesteps: int = 1_000_000
    """environment steps in total (all vector envs, random warm-up included; a --checkpoint resumes at its own step);
    the steps left must exceed --learning-starts, or training would never start"""
    num_envs: int = 5
    """parallel environments (gymnasium.vector.SyncVectorEnv)"""
    updates_per_iteration: int = 1
    """gradient updates per vector step; 1 with 5 envs = the official 0.2 updates per transition"""
    learning_starts: int = 30_000
    """uniformly random actions until the buffer holds this many transitions, then training starts"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions); at least --learning-starts, or training would never start"""
    batch_size: int = 256
    """the batch size of each gradient step"""
    learning_rate: float = 3e-4
    """Adam learning rate of the critics (constant) and initial one of the policy"""
    policy_lr_end: float = 3e-5
    """the policy's learning rate decays linearly to this value ..."""
    policy_lr_decay_begin: int = 25_000
    """... starting after this many policy updates ..."""
    policy_lr_decay_steps: int = 50_000
    """... over this many policy updates"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics and of the EMA (acting) policy"""
    policy_freq: int = 2
    """policy, target critics and EMA policy are updated every this many critic updates"""
    reward_scale: float = 0.2
    """rewards are multiplied by this inside the TD target"""
    hidden_dim: int = 256
    """width of every MLP"""
    num_layers: int = 3
    """hidden layers of every MLP"""
    eval_freq: int = 25_000
    """evaluate every this many environment steps (and at the end)"""
    eval_episodes: int = 20
    """episodes per evaluation (for each of the two evaluated samplers)"""
    log_freq: int = 5_000
    """log losses every this many environment steps (the only host syncs of the loop)"""
    save_model: bool = False
    """save a checkpoint at every evaluation (runs/<run>/<exp_name>.pt)"""
    checkpoint: Optional[str] = None
    """resume from this checkpoint: networks, optimizers, alpha, the Q statistics and its env step (the buffer is not
    saved: it is refilled with --learning-starts random transitions first); same --variant, --hidden-dim, --num-layers
    and env dimensions required; at the end of --total-timesteps it is only evaluated"""
    compile: bool = False
    """torch.compile the update step (the gradient update only: env stepping and acting stay eager)"""
    cudagraphs: bool = False
    """replay the update as a CUDA graph (implies --compile; CUDA only)"""

    # Algorithm specific arguments
    variant: Literal["rf", "mf"] = "rf"
    """rf = FPMD-R (rectified flow), mf = FPMD-M (MeanFlow, one step everywhere)"""
    flow_steps: int = 20
    """Euler steps of the training-time sampler of FPMD-R (FPMD-M always takes one MeanFlow step)"""
    num_particles: int = 32
    """best-of-N: actions sampled per state, the one with the highest min-Q is taken"""
    init_noise_scale: float = 0.5
    """the samplers start from init_noise_scale * N(0, I) (training loss uses N(0, I), as the official code)"""
    temperature: float = 3.0
    """lambda = temperature * running_std(minQ) in the weights exp(Q / lambda)"""
    q_std_rate: float = 0.001
    """EMA rate of the running std of the batch's min-Q"""
    alpha_init: float = 5.0
    """initial alpha; the exploration noise std is noise_scale * alpha"""
    alpha_lr: float = 7e-3
    """Adam learning rate of log(alpha)"""
    alpha_freq: int = 250
    """alpha is updated every this many critic updates"""
    noise_scale: float = 0.1
    """exploration noise std = noise_scale * alpha"""
    target_entropy_scale: float = 1.5
    """target entropy of the exploration noise = -target_entropy_scale * action_dim"""
    mf_equal_prob: float = 0.0
    """FPMD-M: probability of r = t in the (r, t) sampling (official: 0.0); only with --variant mf"""
    critic_double_step: bool = True
    """two Adam steps per critic update with the same gradients: a quirk of the official rf.py/mf.py that the
    paper's numbers were made with (kept by default for fidelity); --no-critic-double-step takes one"""


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not fpmd's, made for other networks or past the budget (one line)."""


class EnvError(ValueError):
    """Bad --env-id or an unsupported space; reported as one line and a non-zero exit."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (ArgumentError, CheckpointError, EnvError, NonFiniteLossError)  # __main__: one `error:` line, exit 1


def check_args(args: Args) -> None:
    """Every flag checked once, before any work: the first value outside its range raises ArgumentError with one
    line, `--flag must be <rule> (got <value>)`. With a --checkpoint, the budget is checked again from the
    checkpoint's step (check_budget, called by load_checkpoint)."""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    def finite(flag: str) -> bool:
        return math.isfinite(getattr(args, flag))

    # generic (torch_deterministic, cuda, save_model, compile: booleans, any value is fine)
    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")  # runs/<run>/<exp_name>.pt
    need(0 <= args.seed < 2**32, "seed", "in [0, 2**32) (numpy's seed range)")
    # env_id: checked by make_env (EnvError: an unknown id, a discrete or unbounded action space)
    need(args.total_timesteps >= 0, "total_timesteps", ">= 0")
    need(args.num_envs >= 1, "num_envs", ">= 1")
    need(args.updates_per_iteration >= 1, "updates_per_iteration", ">= 1")
    need(args.learning_starts >= 0, "learning_starts", ">= 0")
    need(args.buffer_size >= 1, "buffer_size", ">= 1")
    need(args.batch_size >= 1, "batch_size", ">= 1")
    need(finite("learning_rate") and args.learning_rate > 0, "learning_rate", "finite and > 0")
    need(finite("policy_lr_end") and args.policy_lr_end >= 0, "policy_lr_end", "finite and >= 0")
    need(args.policy_lr_decay_begin >= 0, "policy_lr_decay_begin", ">= 0")
    need(args.policy_lr_decay_steps >= 1, "policy_lr_decay_steps", ">= 1")
    need(0 < args.gamma <= 1, "gamma", "in (0, 1]")
    need(0 < args.tau <= 1, "tau", "in (0, 1]")
    need(args.policy_freq >= 1, "policy_freq", ">= 1")
    need(finite("reward_scale") and args.reward_scale > 0, "reward_scale", "finite and > 0")  # 0: rewards ignored
    need(args.hidden_dim >= 1, "hidden_dim", ">= 1")
    need(args.num_layers >= 1, "num_layers", ">= 1")
    need(args.eval_freq >= 1, "eval_freq", ">= 1")
    need(args.eval_episodes >= 1, "eval_episodes", ">= 1")
    need(args.log_freq >= 1, "log_freq", ">= 1")
    need(args.checkpoint != "", "checkpoint", "a path")  # the file itself is checked by load_checkpoint
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                            "torch.cuda.is_available() is False") + "); drop --cudagraphs or use --compile")
    # algorithm
    need(args.variant in ("rf", "mf"), "variant", "rf or mf")
    need(args.flow_steps >= 1, "flow_steps", ">= 1")  # FPMD-R's sampler; FPMD-M ignores it (one MeanFlow step)
    need(args.num_particles >= 1, "num_particles", ">= 1")
    need(finite("init_noise_scale") and args.init_noise_scale >= 0, "init_noise_scale", "finite and >= 0")
    need(finite("temperature") and args.temperature > 0, "temperature", "finite and > 0")  # lambda divides Q
    need(0 <= args.q_std_rate <= 1, "q_std_rate", "in [0, 1]")  # an EMA rate; 0 keeps the initial std 1
    need(finite("alpha_init") and args.alpha_init > 0, "alpha_init", "finite and > 0")  # log(alpha) is learned
    need(finite("alpha_lr") and args.alpha_lr > 0, "alpha_lr", "finite and > 0")
    need(args.alpha_freq >= 1, "alpha_freq", ">= 1")
    need(finite("noise_scale") and args.noise_scale > 0, "noise_scale", "finite and > 0")  # log of the noise std
    need(finite("target_entropy_scale"), "target_entropy_scale", "finite")  # any sign: a Gaussian's entropy is any real
    need(0 <= args.mf_equal_prob <= 1, "mf_equal_prob", "in [0, 1]")
    if args.mf_equal_prob > 0 and args.variant == "rf":
        raise ArgumentError(f"--mf-equal-prob {args.mf_equal_prob} and --variant rf cannot be used together "
                            "(--mf-equal-prob is FPMD-M's; pass --variant mf)")
    # runs that would never train (item 3 of the issue): the buffer must reach --learning-starts, within the budget
    if args.buffer_size < args.learning_starts:
        raise ArgumentError(f"--buffer-size must be >= --learning-starts {args.learning_starts} (got "
                            f"{args.buffer_size}): the buffer would never hold enough transitions, "
                            "training would never start")
    if args.checkpoint is None:
        check_budget(args, 0)


def check_budget(args: Args, start_step: int) -> None:
    """Training starts once the buffer holds --learning-starts transitions (it is not saved in checkpoints, so a
    resumed run refills it first): the steps left after `start_step` must exceed --learning-starts. A checkpoint at
    the end of --total-timesteps (the budget, or up to num_envs - 1 beyond it: the last vector step is taken whole)
    is only evaluated (main says so); one further on is refused."""
    left = args.total_timesteps - start_step
    if left <= -args.num_envs:
        raise CheckpointError(f"--checkpoint {args.checkpoint} is at env step {start_step}, past --total-timesteps "
                              f"{args.total_timesteps}; pass a larger --total-timesteps "
                              f"(or {start_step} to only evaluate it)")
    if start_step > 0 and left <= 0:
        return
    if left <= args.learning_starts:
        if start_step == 0:
            raise ArgumentError(f"--total-timesteps must be > --learning-starts {args.learning_starts} (got "
                                f"{args.total_timesteps}): training would never start")
        raise ArgumentError(f"--total-timesteps {args.total_timesteps} leaves {left} env steps after the checkpoint's "
                            f"{start_step}, not more than --learning-starts {args.learning_starts} (a resumed run "
                            "refills the buffer first): training would never start; pass a larger --total-timesteps")


# ---------------------------------------------------------------------------------------------
# Networks (official code: Mish everywhere, hk.Linear's default init and zero biases; time enters
# through a sinusoidal embedding and a small MLP)
# ---------------------------------------------------------------------------------------------
def haiku_init_(weight: torch.Tensor, fan_in: int) -> None:
    """hk.Linear's default w_init (haiku/_src/basic.py): TruncatedNormal(stddev=1/sqrt(fan_in)), i.e. a normal of
    std 1/sqrt(fan_in) truncated at +-2 std and NOT rescaled (only VarianceScaling divides by 0.8796), so the
    weights' actual std is 0.8796/sqrt(fan_in)."""
    std = 1.0 / math.sqrt(fan_in)
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)


class Mish(nn.Module):
    """Mish, x tanh(softplus(x)), written on CPU as x n / (n + 2) with n = e^x (e^x + 2): the same function
    (to 1e-7 relative), about 2x faster than aten::mish there; aten::mish on GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return F.mish(x)
        if torch.is_grad_enabled():
            e = x.clamp(max=20.0).exp()
            n = e * (e + 2.0)
            return x * n / (n + 2.0)
        n = x.clamp(max=20.0).exp_()  # acting / sampling: in place, fewer allocations
        n.mul_(n + 2.0)
        return n.div_(n + 2.0).mul_(x)


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    layers, dim = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), Mish()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            haiku_init_(layer.weight, layer.in_features)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class TimeEmbedding(nn.Module):
    """Scaled sinusoidal features of a time in [0, 1] (dim 16, theta 1e4) -> Linear(32) -> Mish -> Linear(16)."""

    def __init__(self, dim: int = 16, theta: float = 1e4):
        super().__init__()
        half = dim // 2
        self.register_buffer("inv_freq", theta ** -(torch.arange(half, dtype=torch.float32) / half), persistent=False)
        self.scale = 1.0 / math.sqrt(dim)
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), Mish(), nn.Linear(2 * dim, dim))
        for layer in (self.net[0], self.net[2]):
            haiku_init_(layer.weight, layer.in_features)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # t: (B, 1)
        angles = t * self.inv_freq
        return self.net(torch.cat([angles.sin(), angles.cos()], dim=-1) * self.scale)


class FlowPolicy(nn.Module):
    """FPMD-R: velocity v(s, x_t, t) (one time input); FPMD-M: average velocity u(s, z, r, t) (two)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int, num_times: int, time_dim: int = 16):
        super().__init__()
        self.obs_dim, self.act_dim, self.num_times = obs_dim, act_dim, num_times
        self.time_embeddings = nn.ModuleList(TimeEmbedding(time_dim) for _ in range(num_times))
        self.net = mlp(obs_dim + act_dim + num_times * time_dim, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, *times: torch.Tensor) -> torch.Tensor:
        embedded = [embed(t) for embed, t in zip(self.time_embeddings, times)]
        return self.net(torch.cat([obs, x, *embedded], dim=-1))


class EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, B, in) -> (K, B, out)."""

    def __init__(self, num: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num, 1, out_dim))
        haiku_init_(self.weight, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class Critic(nn.Module):
    """Twin critics Q_k(s, a) -> (2, B), MLP with Mish, evaluated as one stacked-weight ensemble."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int, num_critics: int = 2):
        super().__init__()
        self.num_critics = num_critics
        layers, dim = [], obs_dim + act_dim
        for _ in range(num_layers):
            layers += [EnsembleLinear(num_critics, dim, hidden_dim), Mish()]
            dim = hidden_dim
        layers.append(EnsembleLinear(num_critics, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1).expand(self.num_critics, -1, -1)
        return self.net(x).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------
def rf_sample(policy: FlowPolicy, obs: torch.Tensor, x: torch.Tensor, flow_steps: int) -> torch.Tensor:
    """FPMD-R: Euler integration x_{k+1} = x_k + v(s, x_k, k/K) / K from x_0 = noise (t = 0) to t = 1."""
    dt = 1.0 / flow_steps
    for k in range(flow_steps):
        x = x + dt * policy(obs, x, torch.full_like(x[:, :1], k * dt))
    return x


def mf_sample(policy: FlowPolicy, obs: torch.Tensor, z: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """FPMD-M: z_r = z_t - (t - r) u(s, z_t, r, t) from t = 1 (noise) to r = 0 (action); one step by default."""
    dt = 1.0 / steps
    for k in range(steps, 0, -1):
        t = torch.full_like(z[:, :1], k * dt)
        z = z - dt * policy(obs, z, t - dt, t)
    return z


def sample_actions(policy: FlowPolicy, obs: torch.Tensor, z: torch.Tensor, variant: str, flow_steps: int) -> torch.Tensor:
    """The training-time flow sampler of each variant (FPMD-R: flow_steps Euler steps; FPMD-M: one step)."""
    return rf_sample(policy, obs, z, flow_steps) if variant == "rf" else mf_sample(policy, obs, z, 1)


@torch.no_grad()
def best_of_n_action(policy: FlowPolicy, critic: Critic, obs: torch.Tensor, variant: str, flow_steps: int,
                     num_particles: int, init_noise_scale: float, noise_std: Optional[torch.Tensor],
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Official get_action (relax/network/rf.py, mf.py @78f90a6): N flow samples per state, each plus its own
    N(0, noise_std^2) exploration noise; the noisy particles are scored by min(Q1, Q2) unclipped and the best
    one is returned clipped to [-1, 1]. noise_std=None: no noise (evaluation). All particles of all states
    are one batch (particle-major rows)."""
    batch, act_dim = obs.shape[0], policy.act_dim
    z = torch.randn(num_particles * batch, act_dim, device=obs.device, generator=generator) * init_noise_scale
    obs_n = obs.repeat(num_particles, 1)
    actions = sample_actions(policy, obs_n, z, variant, flow_steps)
    if noise_std is not None:
        actions = actions + noise_std * torch.randn(actions.shape, device=obs.device, generator=generator)
    if num_particles > 1:
        q = critic(obs_n, actions).min(0).values.view(num_particles, batch)
        best = q.argmax(0)
        actions = actions.view(num_particles, batch, act_dim)[best, torch.arange(batch, device=obs.device)]
    return actions.clamp_(-1.0, 1.0)


class OneStepActor(nn.Module):
    """The deployed 1-NFE policy (the paper's inference claim): a = z + v(s, z, 0) (FPMD-R) or
    a = z - u(s, z, 0, 1) (FPMD-M), z ~ init_noise_scale * N(0, I), no best-of-N, clipped to [-1, 1].

    A frozen snapshot made for acting: the time embedding(s) at the fixed sampling times are constant,
    so they are folded into the first layer's bias once; one call is then as lean as a Gaussian MLP
    policy's (cat, the MLP, one add). Rebuild it after the policy changes."""

    def __init__(self, policy: FlowPolicy, variant: str, init_noise_scale: float = 0.5):
        super().__init__()
        in_dim = policy.obs_dim + policy.act_dim
        first = policy.net[0]
        with torch.no_grad():
            one = first.weight.new_ones(1, 1)
            times = (0.0 * one,) if variant == "rf" else (0.0 * one, one)
            embedded = torch.cat([embed(t) for embed, t in zip(policy.time_embeddings, times)], dim=-1)
            self.weight0 = nn.Parameter(first.weight[:, :in_dim].clone(), requires_grad=False)
            self.bias0 = nn.Parameter((first.bias + embedded[0] @ first.weight[:, in_dim:].T).clone(), requires_grad=False)
        self.rest = copy.deepcopy(policy.net[1:]).requires_grad_(False)
        self.sign = 1.0 if variant == "rf" else -1.0
        self.act_dim, self.init_noise_scale = policy.act_dim, init_noise_scale

    @torch.inference_mode()
    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.rest(F.linear(torch.cat([obs, z], dim=-1), self.weight0, self.bias0))
        return torch.add(z, out, alpha=self.sign).clamp_(-1.0, 1.0)

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        z = torch.randn(obs.shape[0], self.act_dim, device=obs.device, generator=generator).mul_(self.init_noise_scale)
        return self.forward(obs, z)


# ---------------------------------------------------------------------------------------------
# Losses (equation numbers of the paper, arXiv:2507.23675 v2)
# ---------------------------------------------------------------------------------------------
def fpmd_weights(min_q: torch.Tensor, running_std: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 7: importance weights of the mirror-descent target pi_old * exp(Q / lambda), with the official
    lambda = temperature * running_std(minQ). Unnormalised (no per-state partition function, as the paper's
    Eq. 9 and the official code); strictly increasing in Q."""
    return torch.exp(min_q / (running_std * temperature))


def rf_loss(policy: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor,
            noise: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 9 (L_FPMD, rectified flow): mean_i w_i ||v(s, x_t, t) - (a - eps)||^2 with x_t = t a + (1 - t) eps,
    eps ~ N(0, I), t ~ U(0, 1), a ~ pi_old(s) (no gradient)."""
    noise = torch.randn_like(actions) if noise is None else noise
    t = torch.rand_like(actions[:, :1]) if t is None else t
    x_t = t * actions + (1.0 - t) * noise
    return (weights[:, None] * (policy(obs, x_t, t) - (actions - noise)).square()).mean()


def meanflow_u_and_dudt(policy: FlowPolicy, obs: torch.Tensor, z_t: torch.Tensor, v: torch.Tensor,
                        r: torch.Tensor, t: torch.Tensor) -> tuple:
    """u(s, z_t, r, t) and its total derivative along the flow, du/dt = v . d_z u + d_t u, as one
    Jacobian-vector product with tangents (v, 0, 1) for (z, r, t) (torch.func.jvp; forward mode)."""
    return torch.func.jvp(lambda z, r_, t_: policy(obs, z, r_, t_), (z_t, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))


def sample_r_t(batch: int, device: torch.device, equal_prob: float = 0.0) -> tuple:
    """Official (r, t) sampling: two U(0, 1) draws sorted so that r <= t; with probability equal_prob r = t."""
    pair = torch.rand(2, batch, 1, device=device)
    r, t = pair.min(0).values, pair.max(0).values
    if equal_prob > 0.0:
        equal = torch.rand(batch, 1, device=device) < equal_prob
        r = torch.where(equal, pair[0], r)
        t = torch.where(equal, pair[0], t)
    return r, t


def mf_loss(policy: FlowPolicy, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor,
            noise: Optional[torch.Tensor] = None, r: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None,
            equal_prob: float = 0.0) -> tuple:
    """Eq. 10 (FPMD-M, MeanFlow identity), importance-weighted as Eq. 9:
    mean_i w_i ||u(s, z_t, r, t) - sg(v - (t - r) du/dt)||^2, z_t = (1 - t) a + t eps, v = eps - a.
    Returns (loss, u_target)."""
    noise = torch.randn_like(actions) if noise is None else noise
    if r is None or t is None:
        r, t = sample_r_t(actions.shape[0], actions.device, equal_prob)
    z_t = (1.0 - t) * actions + t * noise
    v = noise - actions
    u, dudt = meanflow_u_and_dudt(policy, obs, z_t, v, r, t)
    u_target = (v - (t - r) * dudt).detach()
    return (weights[:, None] * (u - u_target).square()).mean(), u_target


def critic_loss(critic: Critic, target_critic: Critic, batch: dict, next_actions: torch.Tensor, gamma: float,
                reward_scale: float) -> tuple:
    """TD loss of the twin critics: sum_k E[(Q_k(s, a) - y)^2], y = reward_scale * r + gamma (1 - d)
    min_k Qbar_k(s', a'), a' ~ pi_old(s') (best-of-N + noise); no entropy term (official code)."""
    with torch.no_grad():
        next_q = target_critic(batch["next_observations"], next_actions).min(0).values
        target_q = reward_scale * batch["rewards"] + gamma * (1.0 - batch["dones"]) * next_q
    q = critic(batch["observations"], batch["actions"])
    return (q - target_q).square().mean(1).sum(), q


def alpha_loss(log_alpha: torch.Tensor, act_dim: int, noise_scale: float, target_entropy: float) -> torch.Tensor:
    """alpha tuning (official code): H = d/2 log(2 pi e (noise_scale alpha)^2), the entropy of the Gaussian
    exploration noise; loss = -log(alpha) (target_entropy - sg(H)) drives H towards target_entropy."""
    entropy = 0.5 * act_dim * torch.log(2 * math.pi * math.e * (noise_scale * log_alpha.exp()) ** 2)
    return -log_alpha * (target_entropy - entropy.detach())


# ---------------------------------------------------------------------------------------------
# Environments, replay buffer, evaluation
# ---------------------------------------------------------------------------------------------
def make_env(env_id: str) -> gym.Env:
    """gym.make + checks; observations flattened to 1-D float, actions rescaled to [-1, 1]."""
    try:
        env = gym.make(env_id)
    except Exception as e:  # unknown id, missing package, bad kwargs
        raise EnvError(f"cannot make --env-id {env_id!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"list ids with `python -c 'import gymnasium; gymnasium.pprint_registry()'`") from e
    space = env.action_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        env.close()
        raise EnvError(f"FPMD needs a continuous 1-D Box action space; {env_id} has {space}")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        env.close()
        raise EnvError(f"FPMD needs a bounded action space to rescale to [-1, 1]; {env_id} has {space}")
    obs_space = env.observation_space
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
        try:
            env = gym.wrappers.FlattenObservation(env)
        except Exception as e:
            env.close()
            raise EnvError(f"cannot flatten the observation space {obs_space} of {env_id}: {e}") from e
    if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
        ones = np.ones(space.shape, dtype=np.float32)
        env = gym.wrappers.RescaleAction(env, -ones, ones)
    return env


class ReplayBuffer:
    """Circular buffer of tensors on `device`; a vector step's transitions are written at once."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        shapes = dict(observations=(obs_dim,), actions=(act_dim,), rewards=(), dones=(), next_observations=(obs_dim,))
        self.data = {k: torch.zeros((capacity, *s), dtype=torch.float32, device=device) for k, s in shapes.items()}
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device

    def add(self, **transitions: np.ndarray) -> None:
        n = len(transitions["rewards"])
        idx = (self.pos + torch.arange(n)) % self.capacity
        for key, value in transitions.items():
            self.data[key][idx.to(self.device)] = torch.as_tensor(np.asarray(value, dtype=np.float32), device=self.device)
        self.pos, self.size = (self.pos + n) % self.capacity, min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return {key: tensor[idx] for key, tensor in self.data.items()}


def final_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """s' of each transition of a SAME_STEP-autoreset vector step: where an episode ended, `next_obs` is
    already the next episode's first observation and the true last one is in infos["final_obs"]."""
    real = np.array(next_obs, dtype=np.float32)
    if "_final_obs" in infos:
        for i in np.flatnonzero(infos["_final_obs"]):
            real[i] = infos["final_obs"][i]
    return real


def evaluate(envs: list, policy: Callable, episodes: int, seed: int, device: torch.device) -> dict:
    """Run `episodes` episodes on the `envs` in parallel, one batched policy call per step."""
    returns, lengths = [], []
    next_episode = 0
    obs, ep_return, ep_length, active = [None] * len(envs), [0.0] * len(envs), [0] * len(envs), [False] * len(envs)
    for i, env in enumerate(envs):
        if next_episode < episodes:
            obs[i], _ = env.reset(seed=seed + next_episode)
            active[i], next_episode = True, next_episode + 1
    while any(active):
        ids = [i for i in range(len(envs)) if active[i]]
        batch = torch.as_tensor(np.stack([obs[i] for i in ids]), dtype=torch.float32, device=device)
        actions = policy(batch).clamp(-1.0, 1.0).cpu().numpy()
        for i, action in zip(ids, actions):
            obs[i], reward, terminated, truncated, _ = envs[i].step(action)
            ep_return[i] += float(reward)
            ep_length[i] += 1
            if terminated or truncated:
                returns.append(ep_return[i])
                lengths.append(ep_length[i])
                ep_return[i], ep_length[i] = 0.0, 0
                if next_episode < episodes:
                    obs[i], _ = envs[i].reset(seed=seed + next_episode)
                    next_episode += 1
                else:
                    active[i] = False
    return {"episodic_return": float(np.mean(returns)), "episodic_return_std": float(np.std(returns)),
            "episodic_length": float(np.mean(lengths))}


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic save: write a temporary file, then rename it over the previous checkpoint (in the run directory)."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"script": "fpmd", **state}, tmp)
    os.replace(tmp, path)


NETWORK_ARGS = ("variant", "hidden_dim", "num_layers")  # the args that shape the networks (with the env's dims)
CHECKPOINT_ENTRIES = ("policy", "ema_policy", "critic", "target_critic", "critic_opt", "policy_opt", "alpha_opt",
                      "policy_sched", "log_alpha", "running_std", "num_updates", "step", "args")


def load_checkpoint(path: str, args: Args, obs_dim: int, act_dim: int, device: torch.device) -> dict:
    """The state of an fpmd checkpoint for the current networks and budget. Every failure is one CheckpointError
    line: a missing, empty or unreadable file, a file of another script, other network args or env dimensions
    (each listed against the checkpoint's), a step past --total-timesteps; check_budget then refuses a resume
    that would never train. The entries are loaded into the networks by main (wrapped there too)."""
    file = Path(path)
    if file.is_dir():
        raise CheckpointError(f"--checkpoint {path} is a directory, not a file")
    if not file.is_file():
        raise CheckpointError(f"--checkpoint {path} does not exist")
    if file.stat().st_size == 0:
        raise CheckpointError(f"--checkpoint {path} is empty")
    try:
        state = torch.load(file, map_location=device)
    except Exception as e:  # garbage or truncated: UnpicklingError, RuntimeError (zip), EOFError, ...
        raise CheckpointError(f"--checkpoint {path} is not a readable torch file ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"--checkpoint {path} is not an fpmd checkpoint: it holds a {type(state).__name__}")
    if state.get("script", "fpmd") != "fpmd":  # checkpoints from before `script` was stored have none
        raise CheckpointError(f"--checkpoint {path} is not an fpmd checkpoint: it was saved by {state['script']}.py")
    missing = [k for k in CHECKPOINT_ENTRIES if k not in state]
    if missing:
        raise CheckpointError(f"--checkpoint {path} is not an fpmd checkpoint: it has no {', '.join(missing)}")
    if not all(isinstance(state[k], int) for k in ("step", "num_updates")) or not isinstance(state["args"], dict):
        raise CheckpointError(f"--checkpoint {path} is not an fpmd checkpoint: its step, num_updates or args are malformed")
    saved = dict(state["args"])
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"
              for k in NETWORK_ARGS if k in saved and saved[k] != getattr(args, k)]
    if "obs_dim" in state and (state["obs_dim"], state["act_dim"]) != (obs_dim, act_dim):
        differ.append(f"--env-id {args.env_id} with {obs_dim}-D observations and {act_dim}-D actions (checkpoint: "
                      f"{saved.get('env_id')} with {state['obs_dim']}-D and {state['act_dim']}-D)")
    if differ:
        raise CheckpointError(f"--checkpoint {path} holds other networks: {', '.join(differ)}; pass the checkpoint's values")
    check_budget(args, int(state["step"]))
    return state


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def fit_adam_to_mode(optimizer: torch.optim.Optimizer, device: torch.device, compiled: bool, cudagraphs: bool,
                     scheduled: bool = False) -> None:
    """Set an Adam up for how the update runs; called after construction and again after a checkpoint's
    state_dict (which restores the saving run's group settings). Eager: unchanged. --compile: a scheduled lr
    becomes a tensor (a float lr is a constant of the graph: each new value would recompile); CPU Adam takes a
    tensor lr only single-tensor. --cudagraphs: capturable, so the step counter lives on the device and the
    whole optimizer step is captured."""
    for group in optimizer.param_groups:
        if compiled and scheduled and not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(group["lr"], dtype=torch.float32, device=device)
            if device.type == "cpu":
                group["foreach"] = False
        if cudagraphs:
            group["capturable"] = True
    if cudagraphs:
        for state in optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


def clear_grads(params: list) -> None:
    """optimizer.zero_grad(set_to_none=True), which dynamo does not trace (a graph break in the compiled update)."""
    for p in params:
        p.grad = None


def main(args: Args) -> dict:
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    probe = make_env(args.env_id)  # fails fast with one line on a bad id or space
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    checkpoint = load_checkpoint(args.checkpoint, args, obs_dim, act_dim, device) if args.checkpoint else None
    start_step = int(checkpoint["step"]) if checkpoint is not None else 0  # a checkpoint resumes its run

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    envs = gym.vector.SyncVectorEnv([lambda: make_env(args.env_id) for _ in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    eval_envs = [make_env(args.env_id) for _ in range(min(args.eval_episodes, 10))]
    buffer = ReplayBuffer(min(args.buffer_size, max(args.total_timesteps - start_step, 1)), obs_dim, act_dim, device)

    # networks: flow policy (+ its EMA, which acts and is evaluated), twin critics (+ targets), log(alpha)
    num_times = 1 if args.variant == "rf" else 2
    policy = FlowPolicy(obs_dim, act_dim, args.hidden_dim, args.num_layers, num_times).to(device)
    ema_policy = copy.deepcopy(policy).requires_grad_(False)
    critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    target_critic = copy.deepcopy(critic).requires_grad_(False)
    log_alpha = torch.tensor(math.log(args.alpha_init), device=device, requires_grad=True)
    running_std = torch.ones((), device=device)
    adam = {"fused": True} if device.type == "cuda" else {"foreach": True}
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, **adam)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=args.learning_rate, **adam)
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    compiled = args.compile or args.cudagraphs  # --cudagraphs implies --compile

    def fit_optimizers_to_mode() -> None:
        for opt in (critic_opt, policy_opt, alpha_opt):
            fit_adam_to_mode(opt, device, compiled, args.cudagraphs, scheduled=opt is policy_opt)

    fit_optimizers_to_mode()
    end_factor = args.policy_lr_end / args.learning_rate
    policy_sched = torch.optim.lr_scheduler.LambdaLR(policy_opt, lambda k: 1.0 + (end_factor - 1.0) * min(
        max(k - args.policy_lr_decay_begin, 0) / max(args.policy_lr_decay_steps, 1), 1.0))
    # the scheduler wraps policy_opt.step in a function of lr_scheduler.py, a file dynamo never traces (the step would
    # run uncompiled): the update calls Adam.step itself and sets the one flag that wrapper records
    policy_step = policy_opt.step.__wrapped__.__get__(policy_opt)
    target_entropy = -args.target_entropy_scale * act_dim
    modules = dict(policy=policy, ema_policy=ema_policy, critic=critic, target_critic=target_critic)
    optimizers = dict(critic_opt=critic_opt, policy_opt=policy_opt, alpha_opt=alpha_opt, policy_sched=policy_sched)
    num_updates = 0
    if checkpoint is not None:
        try:
            for name, obj in {**modules, **optimizers}.items():
                obj.load_state_dict(checkpoint[name])
            with torch.no_grad():
                log_alpha.copy_(checkpoint["log_alpha"])
                running_std.copy_(checkpoint["running_std"])
            fit_optimizers_to_mode()
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"--checkpoint {args.checkpoint} does not load into these networks "
                                  f"({type(e).__name__}: {first})") from e
        num_updates = int(checkpoint["num_updates"])
        if start_step >= args.total_timesteps:
            print(f"note: --checkpoint {args.checkpoint} is at env step {start_step}, the end of --total-timesteps "
                  f"{args.total_timesteps}: evaluating it only, no training", flush=True)

    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / run_name
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    online_params, ema_params = list(policy.parameters()), list(ema_policy.parameters())
    critic_params, target_params = list(critic.parameters()), list(target_critic.parameters())

    def update(batch: dict, update_policy: bool, update_alpha: bool) -> dict:
        """One gradient update (compiled whole under --compile: losses, backward, Adam steps, Polyak); the
        policy lr schedule steps outside it (a Python-side scheduler)."""
        # a' ~ pi_old(s'): best-of-N + exploration noise from the online policy and the online critics;
        # it is both the TD target's next action and the policy's training sample (official rf.py / mf.py)
        next_obs = batch["next_observations"]
        next_actions = best_of_n_action(policy, critic, next_obs, args.variant, args.flow_steps, args.num_particles,
                                        args.init_noise_scale, log_alpha.detach().exp() * args.noise_scale)
        loss_critic, q = critic_loss(critic, target_critic, batch, next_actions, args.gamma, args.reward_scale)
        clear_grads(critic_params)
        loss_critic.backward()
        critic_opt.step()
        with torch.no_grad():  # weights from the critics after their (first) step, as the official code
            min_q = critic(next_obs, next_actions).min(0).values
            weights = fpmd_weights(min_q, running_std, args.temperature)
        if args.critic_double_step:  # official quirk (algorithm/rf.py:118-121 then 179-180): same grads, 2nd step
            critic_opt.step()
        out = {"critic_loss": loss_critic.detach(), "q_mean": q.detach().mean(), "weights_mean": weights.mean(),
               "weights_max": weights.max(), "running_q_std": running_std.clone()}
        if update_policy:
            if args.variant == "rf":
                loss_policy = rf_loss(policy, next_obs, next_actions, weights)
            else:
                loss_policy, _ = mf_loss(policy, next_obs, next_actions, weights, equal_prob=args.mf_equal_prob)
            clear_grads(online_params)
            loss_policy.backward()
            policy_step()
            out["policy_loss"] = loss_policy.detach()
        running_std.lerp_(min_q.std(unbiased=False), args.q_std_rate)
        if update_alpha:
            clear_grads([log_alpha])
            alpha_loss(log_alpha, act_dim, args.noise_scale, target_entropy).backward()
            alpha_opt.step()
        if update_policy:
            with torch.no_grad():
                torch._foreach_lerp_(target_params, critic_params, args.tau)
                torch._foreach_lerp_(ema_params, online_params, args.tau)
        return out

    if compiled:
        if args.cudagraphs:  # the tensors the update mutates in place must keep their address between replays
            torch._dynamo.mark_static_address(running_std)
            torch._dynamo.mark_static_address(log_alpha)
        # CUDA graphs through torch.compile's "reduce-overhead" (inductor + CUDA-graph trees): one code path with
        # --compile and no new dependency. Not fullgraph: torch.optim breaks the graph around every step() and
        # dynamo around backward() (docs/fpmd.md, Speed options). update_policy/update_alpha are Python bools: one
        # graph per combination met (policy_freq, alpha_freq), no recompilation after that.
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    @torch.no_grad()
    def explore(obs: torch.Tensor) -> torch.Tensor:
        """Acting in the environment: EMA policy, best-of-N with the online critics, + noise (official)."""
        return best_of_n_action(ema_policy, critic, obs, args.variant, args.flow_steps, args.num_particles,
                                args.init_noise_scale, log_alpha.detach().exp() * args.noise_scale)

    def run_evaluation(step: int) -> dict:
        """Both samplers from the EMA policy, same env seeds and noise at every evaluation."""
        onestep = OneStepActor(ema_policy, args.variant, args.init_noise_scale)
        samplers = {
            "_1nfe": lambda obs, g: onestep.act(obs, g),
            "": lambda obs, g: best_of_n_action(ema_policy, critic, obs, args.variant, args.flow_steps,
                                                args.num_particles, args.init_noise_scale, None, g),
        }
        result = {}
        for suffix, sampler in samplers.items():
            generator = torch.Generator(device=device).manual_seed(args.seed)
            metrics = evaluate(eval_envs, lambda obs: sampler(obs, generator), args.eval_episodes, 10_000 * args.seed, device)
            result.update({f"eval/{k}{suffix}": v for k, v in metrics.items()})
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        progress.write(f"step {step}: return={result['eval/episodic_return']:.1f} (best-of-{args.num_particles}), "
                       f"return_1nfe={result['eval/episodic_return_1nfe']:.1f}")
        return result

    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    rng = np.random.default_rng(args.seed)
    obs, _ = envs.reset(seed=args.seed)
    ep_return, ep_length = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=np.int64)
    progress = Progress(args.total_timesteps, start_step)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    metrics, losses, last_return = {}, {}, None
    last_losses: dict = {}  # the latest value of every loss (policy_loss comes every --policy-freq updates)
    global_step, t0, last_log_step = start_step, time.time(), start_step
    num_iterations = max(math.ceil((args.total_timesteps - start_step) / args.num_envs), 0)
    for iteration in range(1, num_iterations + 1):
        if buffer.size < args.learning_starts:
            actions = rng.uniform(-1.0, 1.0, (args.num_envs, act_dim)).astype(np.float32)
        else:
            actions = explore(torch.as_tensor(obs, dtype=torch.float32, device=device)).clamp_(-1.0, 1.0).cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        real_next_obs = final_observations(next_obs, infos)
        buffer.add(observations=obs, actions=actions, rewards=rewards, dones=terminations, next_observations=real_next_obs)
        obs = next_obs
        ep_return += rewards
        ep_length += 1
        prev_step, global_step = global_step, start_step + iteration * args.num_envs
        for i in np.flatnonzero(np.logical_or(terminations, truncations)):
            writer.add_scalar("charts/episodic_return", ep_return[i], global_step)
            writer.add_scalar("charts/episodic_length", ep_length[i], global_step)
            last_return, ep_return[i], ep_length[i] = float(ep_return[i]), 0.0, 0

        if buffer.size >= args.learning_starts:
            for _ in range(args.updates_per_iteration):
                batch = buffer.sample(args.batch_size)  # indices drawn on the device, static shapes (eager: size grows)
                update_policy = num_updates % args.policy_freq == 0
                if args.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last replay's outputs may be reused
                losses = update(batch, update_policy, num_updates % args.alpha_freq == 0)
                if args.cudagraphs:  # copied before the next replay overwrites the graph's output buffers
                    losses = {k: v.clone() for k, v in losses.items()}
                if update_policy:
                    policy_opt._opt_called = True  # what the scheduler's step wrapper records (see policy_step)
                    policy_sched.step()
                last_losses.update(losses)
                num_updates += 1
                nonfinite |= ~torch.isfinite(losses["critic_loss"] + losses.get("policy_loss", 0.0))

        last = iteration == num_iterations
        log_now = last or global_step // args.log_freq > prev_step // args.log_freq
        eval_now = last or global_step // args.eval_freq > prev_step // args.eval_freq
        if (log_now or eval_now) and nonfinite.item():  # checked before anything is logged, evaluated or saved
            raise NonFiniteLossError(
                f"non-finite loss within env steps {last_log_step + 1}..{global_step}; training stopped"
                + (f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))
        if log_now:
            sps = (global_step - last_log_step) / (time.time() - t0)
            for k, v in losses.items():
                writer.add_scalar(f"losses/{k}", v.item(), global_step)
            writer.add_scalar("losses/alpha", log_alpha.exp().item(), global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/num_updates", num_updates, global_step)
            postfix = {"critic": losses["critic_loss"].item()} if losses else {}
            if last_return is not None:
                postfix["return"] = last_return
            if metrics:
                postfix["eval"] = metrics["eval/episodic_return"]
            progress.update(global_step, sps=sps, **postfix)
            t0, last_log_step = time.time(), global_step
        if eval_now:
            metrics = run_evaluation(global_step)
            if args.save_model:
                state = {name: obj.state_dict() for name, obj in {**modules, **optimizers}.items()}
                state.update(log_alpha=log_alpha.detach(), running_std=running_std, num_updates=num_updates,
                             step=global_step, args=asdict(args), obs_dim=obs_dim, act_dim=act_dim)
                save_checkpoint(checkpoint_path, state)
    if num_iterations == 0:  # a checkpoint exactly at --total-timesteps: just evaluate
        metrics = run_evaluation(start_step)
    metrics = {**metrics, **{f"losses/{k}": v.item() for k, v in last_losses.items()}}  # the final losses, for tests
    progress.close()
    writer.close()
    envs.close()
    for env in eval_envs:
        env.close()
    return metrics


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
