"""Guided Flow Policy (GFP).

Paper: "Guided Flow Policy: Learning from High-Value Actions in Offline Reinforcement Learning",
Franki Nguimatsia Tiofack, Theotime Le Hellard, Fabian Schramm, Nicolas Perrin-Gilbert, Justin
Carpentier, ICLR 2026, arXiv:2512.03973. Official code (JAX, a fork of FQL): agents/gfp.py.

Idea. FQL (arXiv:2502.02538) distills a plain behaviour-cloning flow into a one-step actor that
climbs the critic; the BC flow clones every dataset action, good or bad, so the distillation term
keeps pulling the actor towards the data's poor modes. GFP makes the guidance mutual:
  * the one-step actor mu_theta(s, z) maximises the normalised critic lambda * Q(s, mu_theta(s, z))
    (lambda = 1 / mean|Q|, detached) while being distilled towards the multi-step flow's Euler sample
    for the SAME noise z;
  * the multi-step flow "VaBC" (value-aware behaviour cloning) v_omega(s, x_t, t) is trained by
    flow matching on dataset actions WEIGHTED by
        w(s, a) = sigmoid((lambda / eta) * (Qbar(s, a) - Qbar(s, clip(mu_theta(s, z))))),
    a two-way softmax between the dataset action and the actor's action under the target critic
    (no gradient through w). Actions better than the actor's are cloned with weight -> 1, worse
    ones are down-weighted towards 0; eta is the temperature, eta = 0 gives plain BC (FQL);
  * an ensemble of 2 critics (LayerNorm) with a Polyak target, bootstrapped with the actor.
All three are trained with one summed loss and one Adam step. The deployed policy is the actor
(one network call per action); the VaBC flow is evaluated as well.

This file implements GFP offline and offline->online, with the release's switches (official code: the GFP
release, commit 49f6b17, kept in the fork github.com/ZhangJL16/FQLbaseline; agents/gfp.py, main.py, config/):
`--q-agg`, `--target-agg`, `--guidance-agg`, `--guidance-fn advantage` (the paper's AWR-like ablation,
exp((lambda/eta) * advantage), unclipped), `--normalize-q-loss`, the sinusoidal time embedding of the VaBC
field, `--eta-online` for fine-tuning. Settings as the release's runs:
  * per-task settings: --env-id picks the paper's row of the release's hyperparams/gfp_params.csv (total steps,
    batch size, gamma, flow steps, q_agg, target_agg, guidance_agg, alpha, eta; `TASK_SETTINGS`, matched as its
    hyperparams.py does); an explicit flag wins, an unknown task gets the generic defaults (one printed line);
  * `--target-use-next` is off: when the TD target uses the VaBC flow (`--target-agg` vabc/min/mean/max; the
    paper's rows use `mean` on every cube-* and humanoidmaze-medium-* task) its next action is sampled at s and
    evaluated at s', as the release (agents/gfp.py:60-63, config/agent/gfp.yaml `target_use_next: False`) that
    made the paper's numbers; `--target-use-next` samples it at s', the paper's equation for y_VaBC;
  * OGBench envs are made with success_timing='post' (success, termination and reward of the state after the
    action, as ogbench < 1.2, which the release pins; ogbench 1.2 defaults its singletask envs to 'pre');
  * Minari normalized scores of the datasets GFP evaluates (mujoco hopper/halfcheetah/walker2d, D4RL adroit)
    use GFP's own reference returns (release envs/minari_utils.py), not Minari's metadata (missing or wrong);
  * D4RL antmaze (read here from Minari's D4RL/antmaze re-releases, which take the paper's D4RL rows): rewards
    {0, 1} -> {-1, 0} for the dataset and for every online step (`transform_reward`), as the release does for
    the d4rl-package antmaze it ran (its Minari loader shifts nothing; GFP reports no Minari antmaze run).
Deliberate differences:
  * datasets come from Minari (ids, local dirs, the embedded `flowrl/...` datasets) or OGBench, not the d4rl
    package; Box actions are rescaled to [-1, 1] and the env's actions are rescaled back at the boundary;
  * the online env is seeded once, at its first reset (the release seeds nothing); evaluation uses fixed env
    seeds and per-episode policy noise (the release draws both afresh at every evaluation);
  * no image encoders (state-based tasks only; image observations are rejected with an error), so the five
    visual-* rows of the release's table are left out.

Bad input (a flag out of range: check_args; an unreadable or malformed dataset file; a bad --checkpoint:
load_checkpoint) ends the run before any training with one `error: ...` line and exit 1; see docs/gfp.md.

Speed: `--compile` runs the whole update through torch.compile, `--cudagraphs` (CUDA only) also replays it as a
CUDA graph; eager is the default and the reference (docs/gfp.md, "Speed options").

Usage:
  python gfp.py --total-steps 10000 --hidden-dim 256 --num-layers 3 --alpha 0.3    # embedded Reacher, CPU, minutes
  python gfp.py --env-id cube-double-noisy-singletask-task2-v0                       # the paper's row for that task
  python gfp.py --env-id D4RL/pen/expert-v2                                          # Minari id, GFP's Minari row
See docs/gfp.md for the paper <-> code map, per-task hyper-parameters, logged metrics and results.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
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
    """offline gradient steps (default: the paper's value for --env-id, else 1_000_000)"""
    online_steps: int = 0
    """environment steps of online fine-tuning after the offline phase (one update per step)"""
    batch_size: Optional[int] = None
    """the batch size of each gradient step (default: the paper's value for --env-id, else 256)"""
    learning_rate: float = 3e-4
    """the learning rate of the (single) Adam optimizer"""
    gamma: Optional[float] = None
    """the discount factor (default: the paper's value for --env-id, else 0.99)"""
    tau: float = 0.005
    """target critic Polyak rate"""
    hidden_dim: int = 512
    """width of every MLP"""
    num_layers: int = 4
    """hidden layers of every MLP"""
    eval_freq: int = 100_000
    """evaluate every this many gradient steps (and at the end)"""
    eval_episodes: int = 50
    """episodes per evaluation (of the actor, and of the VaBC flow with --eval-flow)"""
    eval_envs: int = 6
    """environments evaluated in parallel, one batched policy call per step; each OGBench manipulation env holds ~150 MB"""
    eval_flow: bool = True
    """also evaluate the VaBC flow policy (eval/flow_*), as the official code's eval_flow_policy"""
    log_freq: int = 5000
    """log losses, guidance statistics and the guidance-weight histogram every this many steps"""
    save_model: bool = False
    """save a checkpoint at every evaluation (runs/<run>/<exp_name>.pt)"""
    checkpoint: Optional[str] = None
    """load the networks (and optimizer) from this gfp checkpoint; training continues from its step to --total-steps (+ --online-steps); at exactly that step it is only evaluated"""
    compile: bool = False
    """torch.compile the update step"""
    cudagraphs: bool = False
    """replay the update as a CUDA graph (implies --compile; CUDA only)"""

    # Algorithm specific arguments
    flow_steps: Optional[int] = None
    """Euler steps of the VaBC flow (distillation target, evaluation) (default: the paper's value for --env-id, else 10)"""
    alpha: Optional[float] = None
    """weight of the distillation loss (default: the paper's value for --env-id, else 1.0)"""
    eta: Optional[float] = None
    """guidance temperature eta (official: eta_temperature); 0 = unweighted BC flow (FQL-like) (default: the paper's value for --env-id, else 1e-3)"""
    eta_online: Optional[float] = None
    """guidance temperature during online fine-tuning (default: --eta)"""
    guidance_fn: Literal["softmax", "advantage"] = "softmax"
    """guidance weights: sigmoid((lambda/eta) * adv) (GFP) or exp((lambda/eta) * adv) (AWR-like ablation)"""
    q_agg: Optional[Literal["mean", "min"]] = None
    """how the critic ensemble is aggregated (TD target, actor's Q loss, guidance) (default: the paper's value for --env-id, else mean)"""
    target_agg: Optional[Literal["actor", "vabc", "min", "mean", "max"]] = None
    """next action(s) of the TD target: the actor's, the VaBC flow's, or min/mean/max of both (same z) (default: the paper's value for --env-id, else actor)"""
    guidance_agg: Optional[Literal["actor", "vabc", "min", "mean", "max"]] = None
    """reference value of the guidance: Qbar at the actor's action, the VaBC flow's, or min/mean/max of both (default: the paper's value for --env-id, else actor)"""
    target_use_next: bool = False
    """sample the VaBC next action of the TD target at s' (the paper's y_VaBC); off: at s, as the release that made the paper's numbers"""
    normalize_q_loss: bool = True
    """multiply the actor's Q loss by lambda = 1 / mean|Q| (detached)"""
    time_emb_dim: int = 64
    """size of the sinusoidal time embedding of the VaBC field (official: encode_time_dim)"""
    num_critics: int = 2
    """size of the critic ensemble"""


# ---------------------------------------------------------------------------------------------
# Per-task settings. Rows: hyperparams/gfp_params.csv of the GFP release (commit 49f6b17, github.com/ZhangJL16/
# FQLbaseline; the authors' Simple-Robotics/guided-flow-policy holds only a README), all rows but the five
# visual-* ones (image observations are not supported here). Generic values: config/main.yaml and
# config/agent/gfp.yaml of the same commit. target_use_next is not per task (False in config/agent/gfp.yaml).
# Matching (release hyperparams/hyperparams.py:31-40): a row matches when its benchmark is the task's (OGBench: the
# name has 'singletask'; Minari: it has 'D4RL' or 'mujoco'; D4RL otherwise) and its name is a substring of --env-id
# with '/' and '-' replaced by '_'; the longest matching name wins. (The release's process_env_name drops a Minari
# id's namespace, so its own loader never matches the Minari rows; this file matches the full id.) GFP has no
# Minari antmaze rows: the Minari re-releases of D4RL antmaze take the D4RL rows (MINARI_D4RL_ANTMAZE).
# ---------------------------------------------------------------------------------------------
TASK_FIELDS = ("total_steps", "batch_size", "gamma", "flow_steps", "q_agg", "target_agg", "guidance_agg", "alpha", "eta")
GENERIC_TASK_SETTINGS = dict(total_steps=1_000_000, batch_size=256, gamma=0.99, flow_steps=10, q_agg="mean",
                             target_agg="actor", guidance_agg="actor", alpha=1.0, eta=1e-3)
TASK_SETTINGS = [  # benchmark, name, then TASK_FIELDS (csv: offline_steps, batch_size, discount, flow_steps, q_agg, target_agg, guidance_agg, alpha, eta_temperature)
    ("OGBench", "antmaze_giant_navigate", 1_000_000, 1024, 0.995, 10, "min", "actor", "min", 0.1, 0.1),
    ("OGBench", "antmaze_large_explore", 1_000_000, 1024, 0.995, 10, "min", "actor", "min", 0.01, 1e-6),
    ("OGBench", "antmaze_large_navigate", 1_000_000, 256, 0.995, 10, "min", "actor", "min", 0.3, 1e-4),
    ("OGBench", "antmaze_large_stitch", 1_000_000, 256, 0.995, 10, "min", "actor", "min", 0.3, 1e-6),
    ("OGBench", "antsoccer_arena_navigate", 1_000_000, 256, 0.995, 10, "mean", "actor", "min", 0.1, 0.01),
    ("OGBench", "antsoccer_arena_stitch", 1_000_000, 256, 0.995, 10, "mean", "actor", "min", 0.1, 0.01),
    ("OGBench", "cube_double_noisy", 1_000_000, 256, 0.99, 10, "mean", "mean", "actor", 0.1, 1e-4),
    ("OGBench", "cube_double_play", 1_000_000, 256, 0.99, 10, "mean", "mean", "actor", 1.0, 0.01),
    ("OGBench", "cube_single_noisy", 1_000_000, 256, 0.99, 10, "mean", "mean", "actor", 10.0, 1e-3),
    ("OGBench", "cube_single_play", 1_000_000, 256, 0.99, 10, "mean", "mean", "actor", 10.0, 0.1),
    ("OGBench", "cube_triple_noisy", 1_000_000, 1024, 0.99, 10, "mean", "mean", "actor", 0.1, 1e-5),
    ("OGBench", "cube_triple_play", 1_000_000, 1024, 0.99, 10, "mean", "mean", "actor", 1.0, 1e-5),
    ("OGBench", "humanoidmaze_large_navigate", 1_000_000, 1024, 0.999, 30, "mean", "actor", "min", 0.3, 1e-4),
    ("OGBench", "humanoidmaze_medium_navigate", 1_000_000, 256, 0.995, 10, "mean", "mean", "min", 0.3, 1e-3),
    ("OGBench", "humanoidmaze_medium_stitch", 1_000_000, 256, 0.999, 10, "mean", "mean", "min", 0.3, 1e-3),
    ("OGBench", "puzzle_3x3_play", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("OGBench", "puzzle_4x4_noisy", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("OGBench", "puzzle_4x4_play", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-5),
    ("OGBench", "scene_noisy", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 1.0, 1e-4),
    ("OGBench", "scene_play", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 1e-3),
    ("D4RL", "antmaze_large_diverse", 500_000, 256, 0.99, 10, "min", "actor", "actor", 0.03, 1e-5),
    ("D4RL", "antmaze_large_play", 500_000, 256, 0.99, 10, "min", "actor", "actor", 0.03, 1e-5),
    ("D4RL", "antmaze_medium_diverse", 500_000, 256, 0.99, 10, "min", "actor", "actor", 0.03, 1e-3),
    ("D4RL", "antmaze_medium_play", 500_000, 256, 0.99, 10, "min", "actor", "actor", 0.03, 1e-3),
    ("D4RL", "antmaze_umaze", 500_000, 256, 0.99, 10, "min", "actor", "actor", 0.1, 1e-3),
    ("D4RL", "antmaze_umaze_diverse", 500_000, 256, 0.99, 10, "min", "actor", "actor", 0.1, 1e-3),
    ("D4RL", "door_cloned_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 0.01),
    ("D4RL", "door_expert_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 0.01),
    ("D4RL", "door_human_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 0.01),
    ("D4RL", "hammer_cloned_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 1e-5),
    ("D4RL", "hammer_expert_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 0.01),
    ("D4RL", "hammer_human_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 1e-5),
    ("D4RL", "pen_cloned_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-5),
    ("D4RL", "pen_expert_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 1.0, 1e-3),
    ("D4RL", "pen_human_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-4),
    ("D4RL", "relocate_cloned_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 1e-4),
    ("D4RL", "relocate_expert_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 1e-4),
    ("D4RL", "relocate_human_v1", 500_000, 256, 0.99, 10, "mean", "actor", "actor", 10.0, 1e-4),
    ("Minari", "D4RL_door_cloned_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 0.03, 1e-6),
    ("Minari", "D4RL_door_expert_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("Minari", "D4RL_door_human_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 0.01, 0.01),
    ("Minari", "D4RL_hammer_cloned_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-5),
    ("Minari", "D4RL_hammer_expert_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 1.0, 1e-5),
    ("Minari", "D4RL_hammer_human_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 1.0, 0.01),
    ("Minari", "D4RL_pen_cloned_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 1.0, 1e-4),
    ("Minari", "D4RL_pen_expert_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 0.3, 1e-6),
    ("Minari", "D4RL_pen_human_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-6),
    ("Minari", "D4RL_relocate_cloned_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-4),
    ("Minari", "D4RL_relocate_expert_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("Minari", "D4RL_relocate_human_v2", 1_000_000, 256, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-5),
    ("Minari", "mujoco_halfcheetah_expert_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 3.0, 0.01),
    ("Minari", "mujoco_halfcheetah_medium_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 0.1, 1e-3),
    ("Minari", "mujoco_halfcheetah_simple_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 0.03, 1e-6),
    ("Minari", "mujoco_hopper_expert_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 3.0, 0.01),
    ("Minari", "mujoco_hopper_medium_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("Minari", "mujoco_hopper_simple_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("Minari", "mujoco_walker2d_expert_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 3.0, 1e-3),
    ("Minari", "mujoco_walker2d_medium_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 0.3, 0.01),
    ("Minari", "mujoco_walker2d_simple_v0", 1_000_000, 1024, 0.99, 10, "mean", "actor", "actor", 3.0, 0.1),
]
# Minari re-releases of the D4RL antmaze datasets (any version) -> the paper's D4RL row
MINARI_D4RL_ANTMAZE = {"D4RL/antmaze/umaze": "antmaze_umaze", "D4RL/antmaze/umaze-diverse": "antmaze_umaze_diverse",
                       "D4RL/antmaze/medium-play": "antmaze_medium_play", "D4RL/antmaze/medium-diverse": "antmaze_medium_diverse",
                       "D4RL/antmaze/large-play": "antmaze_large_play", "D4RL/antmaze/large-diverse": "antmaze_large_diverse"}


def find_task_row(env_id: str) -> Optional[tuple]:
    """The paper's row for --env-id as (benchmark, name, {field: value}), or None (see the matching rule above)."""
    rows = {(r[0], r[1]): dict(zip(TASK_FIELDS, r[2:])) for r in TASK_SETTINGS}
    base = re.sub(r"-v\d+$", "", env_id.rstrip("/"))
    for minari_name, row_name in MINARI_D4RL_ANTMAZE.items():
        if base.endswith(minari_name):
            return "D4RL", row_name, rows["D4RL", row_name]
    benchmark = "OGBench" if "singletask" in env_id else "Minari" if ("D4RL" in env_id or "mujoco" in env_id) else "D4RL"
    name = env_id.replace("/", "_").replace("-", "_")
    matches = [key for key in rows if key[0] == benchmark and key[1] in name]
    if not matches:
        return None
    key = max(matches, key=lambda k: len(k[1]))
    return key[0], key[1], rows[key]


def resolve_task_settings(args: Args) -> Args:
    """A copy of args with every per-task field left None filled from the paper's row for --env-id (else the generic
    defaults); explicit flags win. Prints the resolved values in one line."""
    row = find_task_row(args.env_id)
    source = row[2] if row is not None else GENERIC_TASK_SETTINGS
    explicit = [k for k in TASK_FIELDS if getattr(args, k) is not None]
    resolved = replace(args, **{k: source[k] for k in TASK_FIELDS if k not in explicit})
    values = ", ".join(f"{k}={getattr(resolved, k)}" for k in TASK_FIELDS)
    flags = f" (explicit flags: {', '.join(explicit)})" if explicit else ""
    if row is not None:
        print(f"task settings for {args.env_id} (paper row {row[0]} '{row[1]}'): {values}{flags}", flush=True)
    else:
        print(f"task settings for {args.env_id}: no GFP paper row for this task, generic defaults: {values}{flags}", flush=True)
    return resolved


# ---------------------------------------------------------------------------------------------
# Bad input: one line (`error: <message>`) and exit 1, caught before any work
# ---------------------------------------------------------------------------------------------
class DatasetError(ValueError):
    """A bad --env-id, or a dataset file that is missing, unreadable or malformed; one line, exit 1."""


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not gfp's, made for other networks or past the budget; one line, exit 1."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (DatasetError, ArgumentError, CheckpointError, NonFiniteLossError)  # __main__: `error: <message>`, exit 1


def check_args(args: Args) -> None:
    """Every flag checked once, on the resolved per-task values, before any work: the first value outside its range
    raises ArgumentError (`--flag must be <rule> (got <value>)`); flags that cannot be used together are named."""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    finite = math.isfinite
    # generic (torch_deterministic, cuda, eval_flow, save_model, compile: booleans, any value is fine)
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
    # algorithm
    need(args.flow_steps >= 1, "flow_steps", ">= 1")
    need(finite(args.alpha) and args.alpha >= 0, "alpha", "finite and >= 0")
    need(finite(args.eta) and args.eta >= 0, "eta", "finite and >= 0 (0: unweighted BC flow)")
    need(args.eta_online is None or (finite(args.eta_online) and args.eta_online >= 0), "eta_online",
         "finite and >= 0 (0: unweighted BC flow)")
    need(args.guidance_fn in ("softmax", "advantage"), "guidance_fn", "softmax or advantage")
    need(args.q_agg in ("mean", "min"), "q_agg", "mean or min")
    need(args.target_agg in ("actor", "vabc", "min", "mean", "max"), "target_agg", "actor, vabc, min, mean or max")
    need(args.guidance_agg in ("actor", "vabc", "min", "mean", "max"), "guidance_agg", "actor, vabc, min, mean or max")
    need(args.time_emb_dim >= 4 and args.time_emb_dim % 2 == 0, "time_emb_dim",
         "even and >= 4 (sin/cos pairs of at least 2 frequencies)")
    need(args.num_critics >= 1, "num_critics", ">= 1")
    # target_use_next, normalize_q_loss: booleans; flags that would have no effect together are refused
    if args.target_use_next and args.target_agg == "actor":
        raise ArgumentError("--target-use-next and --target-agg actor cannot be used together (the TD target then "
                            "uses no VaBC action); pass --target-agg vabc, min, mean or max")
    if args.eta_online is not None and args.online_steps == 0:
        raise ArgumentError(f"--eta-online {args.eta_online} and --online-steps 0 cannot be used together "
                            "(--eta-online applies to online fine-tuning only)")
    etas = [args.eta] + ([args.eta if args.eta_online is None else args.eta_online] if args.online_steps > 0 else [])
    if args.guidance_fn == "advantage" and all(eta == 0 for eta in etas):
        flags = "--guidance-fn advantage, --eta 0 and --eta-online 0" if args.eta_online is not None else \
            "--guidance-fn advantage and --eta 0"
        raise ArgumentError(f"{flags} cannot be used together (eta = 0 turns the guidance off: plain BC flow)")


# ---------------------------------------------------------------------------------------------
# Networks (official code: GELU, LayerNorm after the activation in the critic only, Glorot-uniform
# kernels, zero biases; the VaBC field sees t through a sinusoidal embedding, the actor sees no t)
# utils/networks.py @49f6b17 uses flax's nn.gelu (jax.nn.gelu: the tanh approximation by default) and
# nn.LayerNorm() (epsilon 1e-6): this file uses both, not torch's erf GELU and epsilon 1e-5.
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


class SinusoidalTimeEmbedding(nn.Module):
    """[sin(t f_j), cos(t f_j)] with f_j = 10000^(-j / (d/2 - 1)), j < d/2, for t in [0, 1] (not rescaled)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding size must be even and >= 4, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.arange(half) * (-math.log(10000.0) / (half - 1))), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B, 1) -> (B, dim)
        angles = t * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class VaBCField(nn.Module):
    """VaBC flow policy v_omega(s, x_t, t) -> velocity (MLP on [s, x_t, emb(t)])."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_layers: int, time_emb_dim: int = 64):
        super().__init__()
        self.time_emb = SinusoidalTimeEmbedding(time_emb_dim)
        self.net = mlp(obs_dim + act_dim + time_emb_dim, hidden_dim, num_layers, act_dim)

    def forward(self, obs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, x_t, self.time_emb(t)], dim=-1))


class OneStepActor(nn.Module):
    """One-step actor mu_theta(s, z) -> action (unbounded; clipped where it is used)."""

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
            layers += [EnsembleLinear(num_critics, dim, hidden_dim), nn.GELU(approximate="tanh"), EnsembleLayerNorm(num_critics, hidden_dim)]
            dim = hidden_dim
        layers.append(EnsembleLinear(num_critics, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1).expand(self.num_critics, -1, -1)
        return self.net(x).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Sampler: Euler integration of the VaBC flow from noise z (x_{k+1} = x_k + v(s, x_k, k/M) / M)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_flow(vabc: VaBCField, obs: torch.Tensor, z: torch.Tensor, flow_steps: int) -> torch.Tensor:
    x, dt = z, 1.0 / flow_steps
    for i in range(flow_steps):
        t = torch.full_like(x[:, :1], i * dt)
        x = x + dt * vabc(obs, x, t)
    return x.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Losses (GFP paper: L_C, L_A, g_eta, L_VaBC; official agents/gfp.py)
# ---------------------------------------------------------------------------------------------
def aggregate(qs: torch.Tensor, q_agg: str) -> torch.Tensor:
    """Ensemble (K, B) -> (B,): mean or min over the critics."""
    return qs.mean(0) if q_agg == "mean" else qs.min(0).values


def combine(q_actor: Optional[torch.Tensor], q_vabc: Optional[torch.Tensor], rule: str) -> torch.Tensor:
    """The official `value_with_all_options`: Q at the actor's action, at the VaBC flow's, or min/mean/max of both."""
    if rule == "actor":
        return q_actor
    if rule == "vabc":
        return q_vabc
    if rule == "min":
        return torch.minimum(q_actor, q_vabc)
    if rule == "max":
        return torch.maximum(q_actor, q_vabc)
    return 0.5 * (q_actor + q_vabc)


def critic_loss(critic: Critic, target_critic: Critic, actor: OneStepActor, vabc: VaBCField, batch: dict, gamma: float,
                q_agg: str, target_agg: str, target_use_next: bool, flow_steps: int) -> tuple:
    """Critic loss L_C(phi) (paper): E[(Q_phi(s, a) - r - gamma * mask * Qbar(s', a'))^2], mean over the ensemble.

    a' = clip(mu_theta(s', z)) (`target_agg=actor`, the paper's main form); the conservative variants
    combine Qbar(s', clip(mu_theta(s', z))) and Qbar(s', mu_omega(., z)) for the SAME z (min/mean/max;
    `mean` is the paper's y_VaBC). The VaBC action is mu_omega(s, z), sampled at the current state, unless
    target_use_next (mu_omega(s', z), the paper's equation): the release's fixed target_use_next=False
    (agents/gfp.py:60-63, config/agent/gfp.yaml) made the paper's numbers.
    """
    with torch.no_grad():
        next_obs = batch["next_observations"]
        z = torch.randn(batch["actions"].shape, device=next_obs.device)  # randn, not randn_like: see flow_matching_errors
        obs_list, act_list = [], []
        if target_agg != "vabc":
            obs_list.append(next_obs)
            act_list.append(actor(next_obs, z).clamp(-1.0, 1.0))
        if target_agg != "actor":
            vabc_obs = next_obs if target_use_next else batch["observations"]  # release default: at s
            obs_list.append(next_obs)
            act_list.append(sample_flow(vabc, vabc_obs, z, flow_steps))
        next_qs = aggregate(target_critic(torch.cat(obs_list), torch.cat(act_list)), q_agg).chunk(len(obs_list))
        q_actor = next_qs[0] if target_agg != "vabc" else None
        q_vabc = next_qs[-1] if target_agg != "actor" else None
        next_q = combine(q_actor, q_vabc, target_agg)
        target_q = batch["rewards"] + gamma * batch["masks"] * next_q
    q = critic(batch["observations"], batch["actions"])
    return F.mse_loss(q, target_q.expand_as(q)), q


def actor_losses(actor: OneStepActor, vabc: VaBCField, critic: Critic, obs: torch.Tensor, act_dim: int, flow_steps: int,
                 q_agg: str, normalize_q_loss: bool) -> tuple:
    """Actor loss L_A(theta) (paper): -lambda * Q(s, clip(mu_theta(s, z))) + alpha * ||mu_theta(s, z) - mu_omega(s, z)||^2.

    lambda = 1 / mean|Q| is detached (and returned: it also scales the guidance). The distillation
    target mu_omega(s, z) is the VaBC flow's clipped Euler sample for the SAME z and carries no
    gradient; the actor's output is distilled unclipped. The critic's parameters are used detached
    (functional_call), so the Q term trains mu_theta through the action only. alpha is applied by
    the caller. Returns (distill_loss, q_loss, lambda, clipped actor actions (detached), VaBC actions).
    """
    z = torch.randn(obs.shape[0], act_dim, device=obs.device)
    flow_actions = sample_flow(vabc, obs, z, flow_steps)
    actions = actor(obs, z)
    distill_loss = F.mse_loss(actions, flow_actions)
    clipped = actions.clamp(-1.0, 1.0)
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    q = aggregate(torch.func.functional_call(critic, frozen, (obs, clipped)), q_agg)
    lam = 1.0 / q.abs().mean().detach()
    q_loss = -q.mean() * (lam if normalize_q_loss else 1.0)
    return distill_loss, q_loss, lam, clipped.detach(), flow_actions


def guidance_weights(q_data: torch.Tensor, q_ref: torch.Tensor, lam: torch.Tensor | float, eta: float,
                     guidance_fn: str = "softmax") -> torch.Tensor:
    """Guiding function g_eta (paper): g = exp(k Q(s,a)) / (exp(k Q(s,a)) + exp(k Q(s,a_ref))), k = lambda / eta.

    That two-way softmax is sigmoid(k * (Q(s, a) - Q(s, a_ref))), computed in that stable form; in
    (0, 1), 0.5 when both values are equal, -> 1 / 0 with the sign of the advantage as eta -> 0.
    `advantage` is the paper's AWR-like ablation exp(k * (Q(s, a) - Q(s, a_ref))) (unbounded).
    """
    scaled_advantage = (lam / eta) * (q_data - q_ref)
    return torch.sigmoid(scaled_advantage) if guidance_fn == "softmax" else torch.exp(scaled_advantage)


def flow_matching_errors(vabc: VaBCField, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-sample flow-matching error, linear path x_t = (1 - t) x_0 + t a, target velocity a - x_0 (mean over action dims)."""
    # --compile: torch.randn(shape), not torch.randn_like(actions): AOT autograd's CSE (torch 2.13) does not count
    # randn_like as random and would merge this draw with critic_loss's randn_like(actions) where randn_like is not
    # decomposed first (aot_eager; inductor with fallback_random, as tests/test_compile.py; not inductor's default).
    # Same numbers in eager
    x_0 = torch.randn(actions.shape, device=actions.device)
    t = torch.rand_like(actions[:, :1])
    x_t = (1.0 - t) * x_0 + t * actions
    return (vabc(obs, x_t, t) - (actions - x_0)).pow(2).mean(-1)


def vabc_loss(vabc: VaBCField, target_critic: Critic, obs: torch.Tensor, data_actions: torch.Tensor,
              actor_actions: torch.Tensor, flow_actions: torch.Tensor, lam: torch.Tensor, eta: float, guidance_fn: str,
              q_agg: str, guidance_agg: str) -> tuple:
    """VaBC loss L_VaBC(omega) (paper): E[g_eta(s, a) * ||v_omega(s, x_t, t) - (a - x_0)||^2], weighted flow matching.

    g uses the TARGET critic, the data action a and the reference action(s) of `guidance_agg`
    (the actor's clipped action; or the VaBC sample for the same z; or min/mean/max of both), and
    carries no gradient. eta = 0 is plain (unweighted) flow matching, i.e. FQL's BC flow.
    Returns (loss, weights or None, advantage Qbar(s, a) - Qbar(s, a_ref) or None).
    """
    errors = flow_matching_errors(vabc, obs, data_actions)
    if eta == 0:
        return errors.mean(), None, None
    with torch.no_grad():
        acts = [data_actions]
        if guidance_agg != "vabc":
            acts.append(actor_actions)
        if guidance_agg != "actor":
            acts.append(flow_actions)
        qs = aggregate(target_critic(obs.repeat(len(acts), 1), torch.cat(acts)), q_agg).chunk(len(acts))
        q_data = qs[0]
        q_ref = combine(qs[1] if guidance_agg != "vabc" else None, qs[-1] if guidance_agg != "actor" else None, guidance_agg)
        weights = guidance_weights(q_data, q_ref, lam, eta, guidance_fn)
    return (weights * errors).mean(), weights, q_data - q_ref


def guidance_statistics(weights: torch.Tensor, advantage: torch.Tensor) -> dict:
    """Mean weight, share above 0.5, and the Pearson correlation of the weights with the advantage (0 if either is constant)."""
    w, adv = weights - weights.mean(), advantage - advantage.mean()
    denom = (w.pow(2).sum() * adv.pow(2).sum()).sqrt()
    corr = torch.where(denom > 0, (w * adv).sum() / denom.clamp_min(1e-30), torch.zeros_like(denom))
    return {"mean": weights.mean(), "above_50": (weights > 0.5).float().mean(), "adv_corr": corr,
            "advantage_mean": advantage.mean()}


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
        raise DatasetError(f"GFP needs a continuous 1-D Box action space; this dataset has {act_space}")
    if not np.all(np.isfinite(act_space.low)) or not np.all(np.isfinite(act_space.high)):
        raise DatasetError(f"GFP needs a bounded action space to rescale to [-1, 1]; got {act_space}")
    spaces = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    for space in spaces:
        if not isinstance(space, gym.spaces.Box) or len(space.shape) > 1:
            raise DatasetError(f"GFP handles flat Box (or Dict of flat Box) observations; got {obs_space}")


class OfflineData:
    """Transitions of an offline dataset as float32 arrays, with the means to evaluate on its env."""

    def __init__(self, transitions: dict, make_env: Callable[[], gym.Env], flatten: Callable, score: Callable,
                 transform_reward: Callable = lambda reward: reward):
        self.transitions = transitions  # observations, actions, rewards, masks, next_observations
        self.make_env = make_env  # -> env with actions in [-1, 1]
        self.flatten = flatten  # env observation(s) -> float32 (batch, obs_dim)
        self.score = score  # episode returns -> normalized score x100 (or None)
        self.transform_reward = transform_reward  # env reward -> the reward stored in the buffer (online steps)


def transform_reward(env_id: str, reward):
    """The reward the agent learns from, for the dataset AND every online step (before buffer.add).

    D4RL antmaze: sparse {0, 1} -> {-1, 0}. The release shifts D4RL antmaze offline (envs/d4rl_utils.py:31-37) and
    online (main.py:60, 251); it reads D4RL through the d4rl package, this file reads the Minari re-releases
    (D4RL/antmaze/...), so every Minari-loaded dataset whose --env-id contains 'antmaze' is shifted. OGBench
    singletask rewards are already in {-1, 0} and are never shifted (nor in the release)."""
    return reward - 1.0 if "antmaze" in env_id else reward


# Reference returns GFP normalises its Minari scores with (release envs/minari_utils.py:29-37 @49f6b17): Minari's
# metadata lacks them for some datasets (hopper, Minari issue 323) and had wrong ones for others (pen, issue 303).
GFP_MINARI_REF_SCORES = {
    "hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0), "walker2d": (1.629008, 4592.3),
    "pen": (137.92955108500217, 8820.50845967583), "door": (-45.80706024169922, 2940.578369140625),
    "hammer": (-267.074462890625, 12635.712890625), "relocate": (9.189092636108398, 4287.70458984375)}


def reference_scores(dataset_id: str, metadata: dict) -> Optional[tuple]:
    """(min, max, source) of the returns that map to normalized scores 0 and 100, or None.

    GFP's own values when the dataset's environment (the id's middle part: mujoco/hopper/medium-v0 -> hopper) is
    one of GFP_MINARI_REF_SCORES, whatever the metadata says (as the release); else the Minari metadata."""
    parts = dataset_id.split("/")
    if len(parts) >= 2 and parts[-2] in GFP_MINARI_REF_SCORES:
        return (*GFP_MINARI_REF_SCORES[parts[-2]], "GFP")
    if metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        return float(metadata["ref_min_score"]), float(metadata["ref_max_score"]), "Minari metadata"
    return None


def normalized_score(returns, ref_min: float, ref_max: float) -> np.ndarray:
    """100 * (R - ref_min) / (ref_max - ref_min) per episode (the release: minari_normalized_score)."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


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

    metadata = dataset.storage.metadata
    refs = reference_scores(str(metadata.get("dataset_id") or env_id), metadata)
    if refs is not None and refs[2] == "GFP":
        meta = (metadata.get("ref_min_score"), metadata.get("ref_max_score"))
        print(f"normalized scores of {metadata.get('dataset_id')} use GFP's reference returns ({refs[0]}, {refs[1]}); "
              f"Minari metadata: {meta if None not in meta else 'none'}", flush=True)
    score = (lambda returns: normalized_score(returns, refs[0], refs[1])) if refs is not None else (lambda r: None)
    return OfflineData(data, make_env, lambda obs: flatten_obs(obs_space, obs), score,
                       lambda reward: transform_reward(env_id, reward))


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
        raise DatasetError(f"GFP needs a reward-labelled OGBench dataset (e.g. cube-single-play-singletask-task2-v0); got {name!r}")
    # success_timing='post': success, termination and reward of the state AFTER the action, as ogbench < 1.2 (the
    # release's requirements.txt); ogbench 1.2 registers its singletask envs with 'pre' (before the action)
    make_env = lambda: ogbench.make_env_and_datasets(name, env_only=True, success_timing="post")  # noqa: E731
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
        except DatasetError as e:  # not local and the hub is unreachable / offline
            tried.append(f"Minari: {e}")
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


def evaluate(data: OfflineData, envs: list, policy: Callable, episodes: int, seed: int, act_dim: int,
             device: torch.device) -> dict:
    """Run `episodes` episodes on the `envs` in parallel, one batched policy call `policy(obs, z)` per step.

    Episode i starts from env.reset(seed=seed + i) and draws its policy noise z from its own generator seeded
    with seed + i, whichever env runs it: the metrics do not depend on the pool size (--eval-envs)."""
    returns, successes = [0.0] * episodes, [None] * episodes
    next_episode = 0
    obs, episode, active = [None] * len(envs), [0] * len(envs), [False] * len(envs)
    generators = {}

    def start(i: int) -> None:
        nonlocal next_episode
        obs[i], _ = envs[i].reset(seed=seed + next_episode)
        generators[next_episode] = torch.Generator().manual_seed(seed + next_episode)
        episode[i], active[i], next_episode = next_episode, True, next_episode + 1

    for i in range(len(envs)):
        if next_episode < episodes:
            start(i)
    while any(active):
        ids = [i for i in range(len(envs)) if active[i]]
        batch = torch.as_tensor(np.stack([data.flatten(obs[i]) for i in ids]), device=device)
        z = torch.stack([torch.randn(act_dim, generator=generators[episode[i]]) for i in ids]).to(device)
        actions = policy(batch, z).cpu().numpy()
        for i, action in zip(ids, actions):
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            returns[episode[i]] += float(reward)
            if terminated or truncated:
                if "success" in info:
                    successes[episode[i]] = float(info["success"])
                del generators[episode[i]]
                if next_episode < episodes:
                    start(i)
                else:
                    active[i] = False
    successes = [x for x in successes if x is not None]
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
    state.update(script="gfp", optimizer=optimizer.state_dict(), step=step, args=asdict(args), obs_dim=obs_dim,
                 act_dim=act_dim)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


NETWORK_ARGS = ("hidden_dim", "num_layers", "num_critics", "time_emb_dim")  # the shapes of the networks
VARIANT_ARGS = ("guidance_fn",)  # the method's variant (the release's gfp and gfp-advantage agents)
CHECKPOINT_ENTRIES = ("vabc", "actor", "critic", "target_critic", "optimizer", "step", "args")


def load_checkpoint(path: str, args: Args, modules: dict, optimizer: torch.optim.Optimizer, obs_dim: int,
                    act_dim: int, device: torch.device) -> int:
    """Load a gfp checkpoint into `modules` and `optimizer`; returns its step. Every failure is one CheckpointError
    line: a missing, empty or unreadable file, a file of another script, other network sizes or variant (each
    listed against the checkpoint's), data of other sizes, entries that do not load, a step past the budget
    (--total-steps + --online-steps). At exactly the budget the run evaluates only (a one-line notice)."""
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
        raise CheckpointError(f"--checkpoint {path} is not a gfp checkpoint (it holds a {type(state).__name__})")
    if state.get("script", "gfp") != "gfp":  # checkpoints from before `script` was recorded are gfp's if complete
        raise CheckpointError(f"--checkpoint {path} is not a gfp checkpoint: it was saved by {state['script']}.py")
    missing = [k for k in CHECKPOINT_ENTRIES if k not in state]
    if missing or not isinstance(state["args"], dict):
        raise CheckpointError(f"--checkpoint {path} is not a gfp checkpoint: it has no {', '.join(missing or ['args'])}")
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"
              for k in NETWORK_ARGS + VARIANT_ARGS if k in saved and saved[k] != getattr(args, k)]
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
    args = resolve_task_settings(args)  # the paper's per-task values for every per-task flag left unset
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

    # networks: VaBC flow v_omega, one-step actor mu_theta, critic ensemble Q_phi (+ target)
    vabc = VaBCField(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.time_emb_dim).to(device)
    actor = OneStepActor(obs_dim, act_dim, args.hidden_dim, args.num_layers).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic = Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.num_critics).to(device)
    target_critic.load_state_dict(critic.state_dict())
    target_critic.requires_grad_(False)
    modules = dict(vabc=vabc, actor=actor, critic=critic, target_critic=target_critic)
    params = [p for m in (vabc, actor, critic) for p in m.parameters()]
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
    eta = {"now": args.eta}  # switched to --eta-online when fine-tuning starts

    def update(batch: dict) -> dict:
        obs = batch["observations"]
        loss_critic, q = critic_loss(critic, target_critic, actor, vabc, batch, args.gamma, args.q_agg, args.target_agg,
                                     args.target_use_next, args.flow_steps)
        loss_distill, loss_q, lam, actor_actions, flow_actions = actor_losses(
            actor, vabc, critic, obs, act_dim, args.flow_steps, args.q_agg, args.normalize_q_loss)
        loss_vabc, weights, advantage = vabc_loss(vabc, target_critic, obs, batch["actions"], actor_actions, flow_actions,
                                                  lam, eta["now"], args.guidance_fn, args.q_agg, args.guidance_agg)
        loss = loss_critic + loss_vabc + args.alpha * loss_distill + loss_q  # one summed loss, one Adam step
        # Polyak with the critic before this step, as agents/gfp.py's target_update; taken here, once the target has been
        # used (under no_grad: backward needs none of it), so that it stays in the compiled graph of the forward
        with torch.no_grad():
            torch._foreach_lerp_(target_params, critic_params, args.tau)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        out = {"critic_loss": loss_critic.detach(), "vabc_loss": loss_vabc.detach(), "distill_loss": loss_distill.detach(),
               "q_loss": loss_q.detach(), "q_mean": q.detach().mean(), "total_loss": loss.detach()}
        if weights is not None:
            out.update({f"guidance/{k}": v for k, v in guidance_statistics(weights, advantage).items()}, weights=weights)
        return out

    if args.compile:
        # CUDA graphs via inductor's CUDA-graph trees ("reduce-overhead"), not tensordict: no extra dependency, one code
        # path with --compile. The update compiles to 3 graphs; the breaks are torch's own, none in this file: at
        # optimizer.zero_grad (never traced), loss.backward (AOT autograd compiles it with the forward) and around
        # optimizer.step (on purpose, pytorch#104053). eta["now"] is a constant of the graph: the switch to
        # --eta-online recompiles the update once
        update = torch.compile(update, mode="reduce-overhead" if args.cudagraphs else None)

    @torch.no_grad()
    def actor_policy(obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The deployed policy: a = clip(mu_theta(s, z), -1, 1), z ~ N(0, I), one network call."""
        return actor(obs, z).clamp(-1.0, 1.0)

    @torch.no_grad()
    def flow_policy(obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The VaBC flow: flow_steps Euler steps from z ~ N(0, I), clipped."""
        return sample_flow(vabc, obs, z, args.flow_steps)

    eval_envs = [data.make_env() for _ in range(min(args.eval_episodes, args.eval_envs))]
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    total = args.total_steps + args.online_steps
    progress = Progress(total, start_step)
    online_env = data.make_env() if args.online_steps > 0 else None
    online_obs, episode_return, episode_length, episodes_done = None, 0.0, 0, 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    metrics: dict = {}
    logged: dict = {}  # the losses (and guidance statistics) of the last log step, returned with the final evaluation
    t0, last_log_step = time.time(), start_step
    hist_bins = np.linspace(0.0, 1.0, 41) if args.guidance_fn == "softmax" else "tensorflow"

    def run_evaluation(step: int) -> dict:
        """Same env seeds and policy noise at every evaluation, independent of the training RNG and of --eval-envs.

        eval/actor_* is the one-step actor (the deployed policy, the paper's headline numbers, also
        logged without prefix as eval/<metric>), eval/flow_* the VaBC flow."""
        policies = {"actor_": actor_policy, "flow_": flow_policy} if args.eval_flow else {"actor_": actor_policy}
        result = {}
        for prefix, policy in policies.items():
            metrics = evaluate(data, eval_envs, policy, args.eval_episodes, 10_000 * args.seed, act_dim, device)
            result.update({f"eval/{prefix}{k}": v for k, v in metrics.items()})
            if prefix == "actor_":
                result.update({f"eval/{k}": v for k, v in metrics.items()})
        for k, v in result.items():
            writer.add_scalar(k, v, step)
        shown = [k for k in result if k.startswith(("eval/actor_", "eval/flow_")) and not k.endswith("_std")]
        progress.write(f"step {step}: " + ", ".join(f"{k[5:]}={result[k]:.3f}" for k in shown))
        return result

    for step in range(start_step + 1, total + 1):
        if step > args.total_steps:  # online fine-tuning: one env step with the actor, then one update
            if online_obs is None:  # seeded once, at the first reset; later episodes continue the env's RNG
                online_obs, _ = online_env.reset(seed=args.seed if episodes_done == 0 else None)
                eta["now"] = args.eta if args.eta_online is None else args.eta_online
            obs_t = torch.as_tensor(data.flatten(online_obs)[None], device=device)
            action = actor_policy(obs_t, torch.randn(1, act_dim, device=device))[0].cpu().numpy()
            next_obs, reward, terminated, truncated, info = online_env.step(action)
            buffer.add(observations=data.flatten(online_obs), actions=action, rewards=data.transform_reward(reward),
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
            weights = losses.pop("weights", None)
            logged = {k if k.startswith("guidance/") else f"losses/{k}": v.item() for k, v in losses.items()}
            for k, v in logged.items():
                writer.add_scalar(k, v, step)
            if weights is not None:  # the guidance weights of this step's batch (docs/gfp.md's histogram)
                writer.add_histogram("guidance/weights", weights.float().cpu().numpy(), step, bins=hist_bins)
            writer.add_scalar("charts/SPS", sps, step)
            extra = {"w": losses["guidance/mean"].item()} if weights is not None else {}
            progress.update(step, sps=sps, critic=losses["critic_loss"].item(), q=losses["q_mean"].item(), **extra,
                            **headline(metrics))
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
