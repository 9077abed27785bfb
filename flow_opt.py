"""Flow-Opt: multi-robot trajectory optimisation with a flow model and a learned differentiable safety filter.

Paper: "Flow-Opt: Scalable Centralized Multi-Robot Trajectory Optimization with Flow Matching and
Differentiable Optimization", Simon Idoko, Arun Kumar Singh (v2 adds Prajyot Jadhav), arXiv:2510.09204.
Official code (linked from the paper, not available here): github.com/cisimon7/FlowOpt.

Idea. Centralized joint trajectory optimisation for N robots is accurate but slow. Flow-Opt learns the
distribution of optimal joint trajectories with a conditional flow-matching model (a diffusion transformer,
DiT, with permutation-invariant robot and map encoders), samples a batch of candidates in one shot, and
makes them feasible with a safety filter (SF): a batched, differentiable projection solver whose
initialisation (a coefficient correction and the multipliers) is predicted by a network trained
self-supervised by back-propagating through the unrolled solver.

This file, batched over samples and scenarios in torch (CPU or CUDA): procedural scenarios (N disc robots,
circular obstacles, square workspace); Bernstein trajectories; the SF / centralized optimizer (augmented-Lagrangian
alternating minimisation with the polar reformulation, one constant KKT matrix inverted once, differentiable by
unrolling); the continuous-time certificate of success (`certify`); training data from the optimizer; the DiT flow
model; the init network; a compact evaluation of the pipeline (certified success, time per instance). The baselines
(optimizer from scratch, SF from straight lines, zero init), repeated timings and IPOPT are in benchmarks/.

THIS REPO'S RECONSTRUCTION. The paper body and code were not readable here. Everything beyond the abstract follows
the same first author's Swarm-Gen safety filter (github cisimon7/SwarmGen) and the Singh lab's polar-reformulation
solvers, adapted to 2-D; assumptions, named:
  * 2-D holonomic disc robots, static circular obstacles, square workspace, velocity/acceleration norm bounds;
    all sizes, limits, the horizon and every network size and training budget are ours;
  * multipliers live in coefficient space (lambda <- lambda - rho F^T res), as in Swarm-Gen;
  * the flow model generates the residual w.r.t. the straight-line Bernstein trajectory, normalised;
  * the init-net loss is Swarm-Gen's (mean fixed-point residual + distance to the generated sample) plus a
    constraint-violation term; `--init-loss iterations` trains it on the SF's stopping quantity instead (ours);
  * the init network sees the sample's constraint residual F^T res (one polar step), and the DiT that of x_t at
    every flow step (`--flow-residual`): our additions;
  * every solve to tolerance gets a deadlock kick: a stalled sample's robots in conflict are bent to their right
    and their multipliers reset (ours);
  * the constraints at the instants inflated by the motion between them (`sample_margins`, one rule for the data
    generator, the SF and the optimizer) and the continuous-time certificate (ours);
  * the optimizer (data generator and baseline) is the same solver with cost 1/2|c - c_line|^2 + w_s/2 |Pddot c|^2,
    started from a perturbed straight line; Flow-Opt returns the certified sample with the least acceleration cost.

Usage:
  OMP_NUM_THREADS=1 python flow_opt.py --no-cuda                       # small CPU config (train N=4 and 8, evaluate)
  python flow_opt.py --evaluate --checkpoint runs/<run>/flow_opt.pt   # evaluate a checkpoint for N in {4, 8, 16, 32}
  python flow_opt.py --cudagraphs                                     # GPU: training steps compiled and CUDA-graphed
See docs/flow_opt.md for the pipeline, the paper <-> code map and the measured results.
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Tuple

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
    threads: int = 0
    """torch.set_num_threads(threads) when > 0 (use 1 to measure single-threaded CPU time)"""
    compile: bool = False
    """torch.compile the training steps (flow matching, init network)"""
    cudagraphs: bool = False
    """replay the training steps as CUDA graphs (implies --compile; CUDA only)"""
    save_model: bool = True
    """save the networks to runs/<run>/<exp_name>.pt (atomically, at every log step and at the end)"""
    checkpoint: Optional[str] = None
    """load the networks from this checkpoint (made with the same --order, --hidden-dim, --depth, --heads and
    --flow-residual) before training; with --evaluate, evaluate it only"""
    evaluate: bool = False
    """only evaluate --checkpoint (no data, no training) over --eval-robots"""
    log_freq: int = 250
    """log losses every this many gradient steps (the only host syncs of the training loops)"""

    # Scenarios and trajectories (this repo's choice; see the module docstring)
    train_robots: Tuple[int, ...] = (4, 8)
    """robot counts of the training scenarios (one model for all; batches cycle through them)"""
    num_obstacles: int = 4
    """circular obstacles per scenario"""
    layouts: Tuple[str, ...] = ("random", "antipodal", "swap")
    """start/goal layouts sampled uniformly: random, antipodal, swap"""
    workspace: float = 5.0
    """half-width of the square workspace [m]"""
    robot_radius: float = 0.2
    """robot disc radius [m]; robots must stay 2 r apart"""
    obstacle_radius: Tuple[float, float] = (0.25, 0.45)
    """obstacle radii are uniform in this range [m]"""
    horizon: float = 10.0
    """trajectory duration T [s]"""
    num_times: int = 100
    """instants at which the solver imposes the constraints, inflated by the motion between them (sample_margins)"""
    order: int = 10
    """Bernstein polynomial order per axis (order + 1 coefficients)"""
    v_max: float = 2.0
    """speed bound [m/s]"""
    a_max: float = 2.0
    """acceleration bound [m/s^2]"""
    tol: float = 0.02
    """constraint tolerance (m, m/s, m/s^2) of success over the whole horizon (certify), for every method alike"""

    # Solver (safety filter and centralized optimizer)
    rho_agent: float = 3.0
    """augmented-Lagrangian weight of robot-robot separation"""
    rho_obs: float = 3.0
    """augmented-Lagrangian weight of robot-obstacle separation"""
    rho_ws: float = 3.0
    """augmented-Lagrangian weight of the workspace box"""
    rho_vel: float = 3.0
    """augmented-Lagrangian weight of the speed bound"""
    rho_acc: float = 3.0
    """augmented-Lagrangian weight of the acceleration bound"""
    sf_iters: int = 15
    """SF iterations unrolled when training the init network (Swarm-Gen: 15)"""
    sf_max_iters: int = 600
    """at evaluation the SF runs until every scenario has a sample within --tol, at most this many iterations"""
    check_every: int = 5
    """iterations between convergence checks (host syncs) of the solvers at evaluation"""
    kick_every: int = 100
    """window [iterations] of the deadlock kick of every solve to tolerance (this repo's addition; 0: none)"""
    kick_progress: float = 0.8
    """a window stalls when its least violation is not below this share of the previous window's"""
    kick_patience: int = 2
    """stalled windows in a row before a kick"""
    kick_bend: float = 2.0
    """size [m] of the kick's bend, each bent robot to its right (the consistent side that resolves crossings)"""
    kick_robots: float = 0.3
    """the kick bends the robots whose constraint residual is at least this share of the sample's largest (0: all)"""

    # Data generation (centralized optimizer run to convergence)
    num_scenarios: int = 2000
    """training scenarios per robot count"""
    opt_max_iters: int = 600
    """centralized-optimizer iterations at most"""
    opt_smoothness: float = 10.0
    """weight of sum ||Pddot c||^2 in the optimizer's cost (its proximity weight to the guess is 1)"""
    data_iters: int = 300
    """optimizer iterations at most when generating data (stops once 95% of a chunk is solved)"""
    perturb_std: float = 0.3
    """std [m] of the noise on the interior coefficients of the optimizer's straight-line start (diverse data)"""
    detour_scales: Tuple[float, ...] = (-2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0)
    """sideways bends [m] (+: right, -: left) of the detour starts tried on the data scenarios a random start missed"""
    data_path: Optional[str] = None
    """reuse/extend this data cache (.pt; a new path is created) made with the same data parameters (DATA_ARGS)"""

    # Flow model (DiT)
    total_steps: int = 4000
    """flow-matching gradient steps"""
    batch_size: int = 128
    """scenarios per flow-matching step"""
    learning_rate: float = 3e-4
    """Adam learning rate of the flow model"""
    hidden_dim: int = 128
    """DiT width (also robot/map encoders and the init network)"""
    depth: int = 4
    """DiT blocks"""
    heads: int = 4
    """attention heads"""
    flow_residual: bool = True
    """give every DiT token the constraint residual F^T res of the trajectory x_t encodes (this repo's addition)"""
    flow_steps: int = 4
    """Euler steps of the flow sampler"""

    # Init network
    init_steps: int = 120
    """init-network gradient steps (through the unrolled SF)"""
    init_batch_size: int = 32
    """scenarios per init-network step (one flow sample each)"""
    init_learning_rate: float = 1e-3
    """Adam learning rate of the init network"""
    init_loss: str = "swarmgen"
    """swarmgen: weighted fixed-point residual + distance + violation (init_loss); iterations: mean excess over --tol
    of the SF's stopping quantity at the start and every unrolled iterate + distance (iterations_loss; ours)"""
    init_w_fp: float = 1.0
    """weight of the mean fixed-point residual in the swarmgen init loss"""
    init_w_dist: float = 1.0
    """weight of ||c_K - c_gen||^2 in the init loss"""
    init_w_viol: float = 1.0
    """weight of the final constraint violation in the swarmgen init loss"""

    # Evaluation
    eval_robots: Tuple[int, ...] = (4, 8, 16, 32)
    """robot counts of the evaluation"""
    eval_scenarios: int = 50
    """held-out scenarios per robot count"""
    num_samples: int = 1
    """flow samples per scenario (the smoothest certified one is returned)"""
    filter_samples: int = 0
    """of them, the SF filters this many per scenario, the least violating ones (0: all)"""


class ArgumentError(ValueError):
    """A flag value outside the range the method needs (one line, exit 1)."""


class ScenarioError(ValueError):
    """Scenario geometry that cannot be built (robots or obstacles that do not fit the workspace); one line, exit 1."""


class CheckpointError(ValueError):
    """A --checkpoint that is missing, unreadable, not flow_opt's, or made for other networks; one line, exit 1."""


class DatasetError(ValueError):
    """A --data-path that is not flow_opt's data cache, or a cache made with other data parameters; one line, exit 1.
    The file is left as it is."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops and the last good checkpoint is kept."""


USER_ERRORS = (ArgumentError, ScenarioError, CheckpointError, DatasetError, NonFiniteLossError)


def check_args(args: Args) -> None:
    """Every flag checked once, before any work: the first flag value outside its range raises ArgumentError (one
    line, `--flag must be <rule> (got <value>)`); then the scenario geometry of every robot count (ScenarioError)."""

    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)!r})")

    def finite(*values: float) -> bool:
        return all(math.isfinite(v) for v in values)

    # generic (torch_deterministic, cuda, save_model, evaluate, flow_residual, compile: booleans, any value is fine)
    if args.cudagraphs and not (args.cuda and torch.cuda.is_available()):
        raise ArgumentError("--cudagraphs needs a CUDA device (" + ("--no-cuda was given" if not args.cuda else
                                                                   "torch.cuda.is_available() is False") + ")")
    need(bool(args.exp_name) and "/" not in args.exp_name and args.exp_name not in (".", ".."), "exp_name",
         "a non-empty file name without '/'")
    need(0 <= args.seed < 2**32, "seed", "in [0, 2**32) (numpy's seed range)")
    need(args.threads >= 0, "threads", ">= 0 (0: torch's default)")
    if args.evaluate and not args.checkpoint:
        raise ArgumentError("--evaluate needs --checkpoint (the networks to evaluate)")
    if args.evaluate and args.data_path:
        raise ArgumentError("--evaluate and --data-path cannot both be given (--evaluate reads no data)")
    if args.evaluate and not args.eval_robots:
        raise ArgumentError("--evaluate and an empty --eval-robots cannot both be given (nothing to evaluate)")
    # checkpoint and data_path: paths, read (and checked) by load_checkpoint and open_data_cache
    need(args.checkpoint != "", "checkpoint", "a path")
    need(args.data_path != "", "data_path", "a path")
    need(bool(args.train_robots) or args.evaluate, "train_robots", "at least one robot count (or pass --evaluate)")
    need(all(n >= 2 for n in args.train_robots), "train_robots", "robot counts >= 2")
    need(all(n >= 2 for n in args.eval_robots), "eval_robots", "robot counts >= 2")  # empty: no evaluation
    need(bool(args.layouts) and all(lay in LAYOUTS for lay in args.layouts), "layouts",
         f"one or more of {', '.join(LAYOUTS)}")
    lo, hi = args.obstacle_radius
    need(finite(lo, hi) and 0 < lo <= hi, "obstacle_radius", "finite, with 0 < low <= high")
    # counts, budgets and frequencies
    for flag, low in (("log_freq", 1), ("num_obstacles", 0), ("num_times", 2), ("sf_iters", 1), ("sf_max_iters", 1),
                      ("check_every", 1), ("kick_patience", 1), ("num_scenarios", 1), ("opt_max_iters", 1),
                      ("data_iters", 1), ("total_steps", 0), ("batch_size", 1), ("depth", 1), ("heads", 1),
                      ("flow_steps", 1), ("init_steps", 0), ("init_batch_size", 1), ("eval_scenarios", 1),
                      ("num_samples", 1)):
        need(getattr(args, flag) >= low, flag, f">= {low}")
    need(args.kick_every >= 0, "kick_every", ">= 0 (0: no kick)")
    need(args.filter_samples >= 0, "filter_samples", ">= 0 (0: all samples)")
    need(args.order >= 6, "order", ">= 6 (the boundary conditions fix 6 coefficients per axis)")
    need(args.hidden_dim >= 2 and args.hidden_dim % 2 == 0, "hidden_dim",
         "even and >= 2 (the time embedding is sin/cos pairs)")
    # sizes, limits, weights (a constraint is enforced only through its rho: 0 would drop it from the solve)
    for flag in ("workspace", "robot_radius", "horizon", "v_max", "a_max", "rho_agent", "rho_obs", "rho_ws", "rho_vel",
                 "rho_acc", "learning_rate", "init_learning_rate"):
        need(finite(getattr(args, flag)) and getattr(args, flag) > 0, flag, "finite and > 0")
    for flag in ("tol", "opt_smoothness", "perturb_std", "init_w_fp", "init_w_dist", "init_w_viol"):
        need(finite(getattr(args, flag)) and getattr(args, flag) >= 0, flag, "finite and >= 0")
    need(finite(args.kick_bend) and args.kick_bend > 0, "kick_bend",
         "finite and > 0 (--kick-every 0 turns the kick off)")
    need(finite(args.kick_progress) and 0 < args.kick_progress <= 1, "kick_progress", "in (0, 1]")
    need(finite(args.kick_robots) and 0 <= args.kick_robots <= 1, "kick_robots", "in [0, 1]")
    need(finite(*args.detour_scales), "detour_scales", "finite")  # any sign (+: right, -: left), empty: none
    need(args.init_loss in INIT_LOSSES, "init_loss", f"one of {', '.join(INIT_LOSSES)}")
    # flags that conflict, named together
    if args.hidden_dim % args.heads:
        raise ArgumentError(f"--hidden-dim {args.hidden_dim} and --heads {args.heads} cannot be used together "
                            "(--hidden-dim must be a multiple of --heads)")
    weights = (args.init_w_fp, args.init_w_dist, args.init_w_viol) if args.init_loss == "swarmgen" else (1.0,)
    if args.init_steps > 0 and not any(weights):
        raise ArgumentError("--init-w-fp, --init-w-dist and --init-w-viol cannot all be 0 with --init-steps > 0 "
                            "(the init loss would be 0)")
    if args.filter_samples > args.num_samples:
        raise ArgumentError(f"--filter-samples {args.filter_samples} and --num-samples {args.num_samples} cannot be "
                            "used together (the SF cannot filter more samples than are drawn)")
    # scenario geometry, now that every size is in range: each robot count fits, and its obstacles can be placed
    world = World.from_args(args)
    sample_margins(world, args.horizon, args.num_times, args.tol)  # enough instants for the constraints between them
    for n in sorted(set(args.train_robots) | set(args.eval_robots)):
        check_scenario_args(n, args.num_obstacles, world, args.layouts)
        sample_scenarios(1, n, args.num_obstacles, world, args.layouts, torch.Generator().manual_seed(0),
                         torch.device("cpu"))


# --- Bernstein trajectory parameterisation: x(t) = P(t) c, c = order + 1 coefficients per axis ---------------------
def bernstein_basis(order: int, num_times: int, horizon: float) -> tuple:
    """(P, Pdot, Pddot), each (num_times, order + 1), float64, at t_k = k T / (num_times - 1)."""
    tau = torch.linspace(0.0, 1.0, num_times, dtype=torch.float64)

    def b(n: int, i: int) -> torch.Tensor:
        if i < 0 or i > n:
            return torch.zeros_like(tau)
        return math.comb(n, i) * tau**i * (1.0 - tau) ** (n - i)

    n = order
    P = torch.stack([b(n, i) for i in range(n + 1)], 1)
    Pd = torch.stack([b(n - 1, i - 1) - b(n - 1, i) for i in range(n + 1)], 1) * (n / horizon)
    Pdd = (torch.stack([b(n - 2, i - 2) - 2 * b(n - 2, i - 1) + b(n - 2, i) for i in range(n + 1)], 1)
           * (n * (n - 1) / horizon**2))
    return P, Pd, Pdd


def boundary_matrix(P: torch.Tensor, Pd: torch.Tensor, Pdd: torch.Tensor) -> torch.Tensor:
    """A (6, nv): position, velocity, acceleration at t = 0 and t = T (one robot, one axis)."""
    return torch.stack([P[0], Pd[0], Pdd[0], P[-1], Pd[-1], Pdd[-1]])


def boundary_values(starts: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
    """b (B, N, 2, 6) = [start, 0, 0, goal, 0, 0] per robot and axis (rest-to-rest)."""
    z = torch.zeros_like(starts)
    return torch.stack([starts, z, z, goals, z, z], -1)


def straight_line_coefs(starts: torch.Tensor, goals: torch.Tensor, order: int) -> torch.Tensor:
    """Coefficients (B, N, 2, nv) of the straight path start -> goal at rest at both ends: the first and last
    three coefficients equal start / goal (zero end velocity and acceleration), the interior ones linear."""
    nv = order + 1
    s = torch.zeros(nv, dtype=starts.dtype, device=starts.device)
    s[3:nv - 3] = torch.arange(1, nv - 5, dtype=starts.dtype, device=starts.device) / (nv - 5)
    s[nv - 3:] = 1.0
    return starts[..., None] + (goals - starts)[..., None] * s


# --- Procedural scenarios (batched; collision-free by construction) ------------------------------------------------
@dataclass
class World:
    """Geometry and limits shared by the sampler, the solver and the metrics."""

    workspace: float
    robot_radius: float
    obstacle_radius: Tuple[float, float]
    v_max: float
    a_max: float

    @classmethod
    def from_args(cls, args: Args) -> "World":
        return cls(args.workspace, args.robot_radius, tuple(args.obstacle_radius), args.v_max, args.a_max)


def check_scenario_args(n: int, num_obstacles: int, world: World, layouts: tuple) -> None:
    if n < 2:
        raise ScenarioError(f"need at least 2 robots per scenario, got {n}")
    if num_obstacles < 0:
        raise ScenarioError(f"--num-obstacles must be >= 0, got {num_obstacles}")
    bad = [lay for lay in layouts if lay not in LAYOUTS]
    if bad or not layouts:
        raise ScenarioError(f"unknown layout(s) {bad or list(layouts)}; choose from {list(LAYOUTS)}")
    cells = grid_cells(world).shape[0]
    if n > cells // 2:
        raise ScenarioError(f"{n} robots do not fit a {2 * world.workspace:g} m workspace with radius "
                            f"{world.robot_radius:g} m (at most {cells // 2}); enlarge --workspace")
    if num_obstacles > cells:
        raise ScenarioError(f"{num_obstacles} obstacles do not fit a {2 * world.workspace:g} m workspace (at most "
                            f"{cells} grid cells); lower --num-obstacles or enlarge --workspace")
    smallest = antipodal_radius(world) - 0.5  # circle radius in [R - 0.5, R], angular jitter +-10% of the spacing
    gap = 2 * smallest * math.sin(0.8 * math.pi / n)  # the least distance of two neighbours on the circle
    if "antipodal" in layouts and (smallest <= 0 or gap < 2 * world.robot_radius + 0.05):
        raise ScenarioError(f"{n} robots do not fit on the antipodal circle of radius {antipodal_radius(world):g} m; "
                            f"enlarge --workspace or drop the antipodal layout")


LAYOUTS = ("random", "antipodal", "swap")
PLACEMENT_TRIES = 100  # draws in a row (each >= 10 candidate scenarios) without one valid scenario: give up


def grid_spacing(world: World) -> float:
    return max(1.0, 2 * world.robot_radius + 0.6)


def grid_cells(world: World, device=None) -> torch.Tensor:
    g = grid_spacing(world)
    m = int((2 * (world.workspace - world.robot_radius)) // g)
    ticks = (torch.arange(m, dtype=torch.float32, device=device) - (m - 1) / 2) * g
    return torch.stack(torch.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)


def antipodal_radius(world: World) -> float:
    return world.workspace - 1.0


def sample_scenarios(num: int, n: int, num_obstacles: int, world: World, layouts: tuple, generator: torch.Generator,
                     device: torch.device) -> dict:
    """num scenarios with n robots: starts, goals (num, n, 2), obstacles (num, M, 3) = (x, y, radius).

    Robots occupy distinct cells of a grid (spacing >= 2 r + 0.6) with a jitter that keeps them >= 2 r + 0.1
    apart; antipodal robots sit on a circle; obstacles take grid cells at least r + r_obs + 0.1 from every start
    and goal (scenarios without enough such cells are redrawn; ScenarioError after PLACEMENT_TRIES draws in a row
    without one)."""
    check_scenario_args(n, num_obstacles, world, layouts)
    cells = grid_cells(world, device)
    g, r = grid_spacing(world), world.robot_radius
    jitter = (g - 2 * r - 0.1) / (2 * math.sqrt(2))
    kept, have, barren = [], 0, 0
    while have < num:
        if barren == PLACEMENT_TRIES:
            raise ScenarioError(f"could not place {num_obstacles} obstacles of radius {world.obstacle_radius[0]:g}-"
                                f"{world.obstacle_radius[1]:g} m clear of the starts and goals of {n} robots in "
                                f"{PLACEMENT_TRIES} draws; lower --num-obstacles or --obstacle-radius")
        m = 2 * (num - have) + 8
        rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
        starts = cells[rand(m, cells.shape[0]).argsort(1)[:, :n]] + (2 * rand(m, n, 2) - 1) * jitter
        goals = cells[rand(m, cells.shape[0]).argsort(1)[:, :n]] + (2 * rand(m, n, 2) - 1) * jitter
        layout = torch.tensor([LAYOUTS.index(lay) for lay in layouts], device=device)[
            (rand(m) * len(layouts)).long().clamp(max=len(layouts) - 1)]
        # swap: robots (0,1), (2,3), ... exchange places (a 3-cycle closes odd n)
        partner = torch.arange(n, device=device) ^ 1
        if n % 2:
            partner[-3:] = torch.tensor([n - 2, n - 1, n - 3], device=device)
        goals = torch.where((layout == 2)[:, None, None], starts[:, partner], goals)
        # antipodal: evenly spaced on a circle (angular jitter 10% of the spacing), goal = -start
        radius = antipodal_radius(world) - 0.5 * rand(m, 1)
        angle = (rand(m, 1) * 2 * math.pi + (torch.arange(n, device=device) + 0.2 * (rand(m, n) - 0.5))
                 * (2 * math.pi / n))
        circle = radius[..., None] * torch.stack([angle.cos(), angle.sin()], -1)
        anti = (layout == 1)[:, None, None]
        starts, goals = torch.where(anti, circle, starts), torch.where(anti, -circle, goals)
        if num_obstacles > 0:
            lo, hi = world.obstacle_radius
            cand = cells[None] + (2 * rand(m, cells.shape[0], 2) - 1) * 0.1 * g
            ends = torch.cat([starts, goals], 1)
            clearance = torch.cdist(cand, ends).min(-1).values  # (m, cells)
            radii = lo + (hi - lo) * rand(m, cells.shape[0])
            valid = clearance >= r + radii + 0.1
            score = rand(m, cells.shape[0]) + valid.float() * 2.0
            pick = score.topk(num_obstacles, dim=1).indices
            ok = valid.gather(1, pick).all(1)
            take = lambda x: x.gather(1, pick[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
            obstacles = torch.cat([take(cand), take(radii[..., None])], -1)
        else:
            ok = torch.ones(m, dtype=torch.bool, device=device)
            obstacles = torch.zeros(m, 0, 3, device=device)
        idx = ok.nonzero().squeeze(1)[: num - have]
        kept.append((starts[idx], goals[idx], obstacles[idx]))
        have += idx.numel()
        barren = 0 if idx.numel() else barren + 1
    starts, goals, obstacles = (torch.cat(x) for x in zip(*kept))
    return {"starts": starts, "goals": goals, "obstacles": obstacles}


def repeat_scenarios(scen: dict, k: int) -> dict:
    """Each scenario k times in a row (k samples per scenario)."""
    return {key: value.repeat_interleave(k, 0) for key, value in scen.items()}


# --- Safety filter / centralized optimizer: batched augmented-Lagrangian projection, constant KKT matrix -----------
class TrajectorySolver:
    """min_c  w_p/2 ||c - c_bar||^2 + w_s/2 ||Pddot c||^2   s.t.  A c = b (rest-to-rest boundary conditions),
                                                         F_j c - b_j = s_j,  s_j in S_j  for every constraint j.

    Constraints j (per time sample): robot-robot p_i - p_k in {||.|| >= 2 r}, robot-obstacle p_i - o_m in
    {||.|| >= r + r_m}, workspace p_i in box, velocity in {||.|| <= v_max}, acceleration in {||.|| <= a_max}.
    The polar form s = a d (cos alpha, sin alpha), d >= 1 (separation) or d <= 1 (bounds), has the closed-form
    minimiser alpha = atan2(.), d = max(1, ||.|| / a) or min(1, ||.|| / a) (Swarm-Gen), i.e. s = Proj_S(F c - b).

    One iteration (augmented Lagrangian, multiplier lambda in coefficient space, as in Swarm-Gen):
        c      <- argmin_{A c = b}  cost(c) - lambda^T c + sum_j rho_j/2 ||F_j c - b_j - s_j||^2   (KKT solve)
        s_j    <- Proj_{S_j}(F_j c - b_j)                                                          (polar step)
        lambda <- lambda - sum_j rho_j F_j^T (F_j c - b_j - s_j)                                  (dual step)
    The c-step's KKT matrix depends only on N, the number of obstacles and the rho's: it is inverted once here
    and every iteration is a batched matmul (separable per axis). With `iters` fixed the whole solve is a
    differentiable function of (c_bar, c_0, lambda_0) by unrolling.
    """

    def __init__(self, n: int, num_obstacles: int, world: World, args: Args, w_prox: float = 1.0, w_smooth: float = 0.0,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        P, Pd, Pdd = bernstein_basis(args.order, args.num_times, args.horizon)
        self.n, self.m, self.nv, self.world = n, num_obstacles, args.order + 1, world
        self.rho = dict(agent=args.rho_agent, obs=args.rho_obs, ws=args.rho_ws, vel=args.rho_vel, acc=args.rho_acc)
        self.w_prox = w_prox
        rho = self.rho
        nv = self.nv
        Hi = (w_prox * torch.eye(nv, dtype=torch.float64) + w_smooth * Pdd.T @ Pdd
              + (rho["obs"] * num_obstacles + rho["ws"]) * P.T @ P + rho["vel"] * Pd.T @ Pd + rho["acc"] * Pdd.T @ Pdd)
        laplacian = n * torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64)  # D^T D of all pairs
        H = torch.kron(torch.eye(n, dtype=torch.float64), Hi) + rho["agent"] * torch.kron(laplacian, P.T @ P)
        Aeq = torch.kron(torch.eye(n, dtype=torch.float64), boundary_matrix(P, Pd, Pdd))
        zero = torch.zeros(6 * n, 6 * n, dtype=torch.float64)
        kkt = torch.cat([torch.cat([H, Aeq.T], 1), torch.cat([Aeq, zero], 1)], 0)
        inv = torch.linalg.inv(kkt)  # constant: factorised once
        dim = n * nv
        self.G = inv[:dim, :dim].to(device, dtype).contiguous()  # (n nv, n nv), symmetric
        self.E = inv[:dim, dim:].T.to(device, dtype).contiguous()  # (6 n, n nv): b_eq -> c
        self.P, self.Pd, self.Pdd = (M.to(device, dtype) for M in (P, Pd, Pdd))
        self.M, self.K = torch.cat([self.P, self.Pd, self.Pdd]), P.shape[0]  # (3 K, nv): all states in one matmul
        self.offdiag = 1.0 - torch.eye(n, dtype=dtype, device=device)
        A = boundary_matrix(P, Pd, Pdd)
        self.A = A.to(device, dtype)
        self.eq_proj = (A.T @ torch.linalg.inv(A @ A.T)).to(device, dtype)  # (nv, 6)
        self.dt = args.horizon / (args.num_times - 1)
        self.margin = sample_margins(world, args.horizon, args.num_times, args.tol)  # the constraints between instants

    # -- pieces -------------------------------------------------------------------------------
    def c_step(self, q: torch.Tensor, b_eq: torch.Tensor) -> torch.Tensor:
        """argmin 1/2 c^T H c - q^T c s.t. A c = b, for q (B, N, 2, nv), b_eq (B, N, 2, 6): two batched matmuls."""
        B, n, _, nv = q.shape
        qf = q.permute(0, 2, 1, 3).reshape(B, 2, n * nv)
        bf = b_eq.permute(0, 2, 1, 3).reshape(B, 2, n * 6)
        c = qf @ self.G + bf @ self.E
        return c.reshape(B, 2, n, nv).permute(0, 2, 1, 3)

    def equality_projection(self, c: torch.Tensor, b_eq: torch.Tensor) -> torch.Tensor:
        """Closest coefficients satisfying the boundary conditions exactly: c - A^T (A A^T)^-1 (A c - b)."""
        return c - (c @ self.A.T - b_eq) @ self.eq_proj.T

    def states(self, c: torch.Tensor) -> tuple:
        """Positions, velocities, accelerations (B, N, 2, K) at the time samples (one matmul)."""
        return (c @ self.M.T).split(self.K, -1)

    def project(self, c: torch.Tensor, obstacles: torch.Tensor) -> tuple:
        """Polar step at c. Returns (q_s, f_res, violation, collision):
        q_s = sum_j rho_j F_j^T (b_j + s_j) and f_res = sum_j rho_j F_j^T (F_j c - b_j - s_j), both (B, N, 2, nv);
        violation / collision: the largest constraint excess per sample (all constraints / separations only)."""
        rho, w, n = self.rho, self.world, self.n
        pos, vel, acc = self.states(c)
        r2 = 2 * w.robot_radius + self.margin["agent"]
        # robot-robot, time-major (B, K, N, 2): Delta_ik = p_i - p_k, s_ik = Delta_ik max(1, 2r / ||Delta_ik||);
        # F^T of the pair rows sums over partners k; sum_k (Delta_ik - s_ik) = -(p_i sum_k w_ik - sum_k w_ik p_k)
        pk = pos.permute(0, 3, 1, 2)
        sq = pk.square().sum(-1)
        dist = (sq[..., :, None] + sq[..., None, :] - 2 * pk @ pk.transpose(-1, -2)).clamp(min=1e-12).sqrt()
        short = (r2 / dist - 1.0).clamp(min=0.0) * self.offdiag  # d = max(1, ||Delta|| / 2r)
        res_rr = short @ pk - pk * short.sum(-1, keepdim=True)
        s_rr = n * pk - pk.sum(2, keepdim=True) - res_rr
        pen = ((r2 - dist) * self.offdiag).clamp(min=0.0).amax((1, 2, 3))
        g_pos, r_pos = rho["agent"] * s_rr, rho["agent"] * res_rr
        if self.m > 0:  # robot-obstacle: Delta = p_i - o_m, s = Delta max(1, (r + r_m) / ||Delta||)
            centre, radius = obstacles[:, None, None, :, :2], obstacles[:, None, None, :, 2]
            dob = pk[:, :, :, None] - centre  # (B, K, N, M, 2)
            dist_o = (dob.square().sum(-1) + 1e-12).sqrt()
            reach = w.robot_radius + radius + self.margin["obs"]
            res_o = -(dob * (reach / dist_o - 1.0).clamp(min=0.0)[..., None]).sum(3)
            g_pos = g_pos + rho["obs"] * (self.m * pk - res_o)  # sum_m (o_m + s_m)
            r_pos = r_pos + rho["obs"] * res_o
            pen = torch.maximum(pen, (reach - dist_o).clamp(min=0.0).amax((1, 2, 3)))
        bound = w.workspace - w.robot_radius - self.margin["ws"]  # workspace box: s = clip(p)
        s_w = pk.clamp(-bound, bound)
        g_pos, r_pos = g_pos + rho["ws"] * s_w, r_pos + rho["ws"] * (pk - s_w)
        exc_w = (pk.abs() - bound).clamp(min=0.0).amax((1, 2, 3))

        def disc(x: torch.Tensor, limit: float) -> tuple:  # polar with d <= 1: s = x min(1, limit / ||x||)
            norm = (x.square().sum(2, keepdim=True) + 1e-12).sqrt()
            s = x * (limit / norm).clamp(max=1.0)
            return s, x - s, (norm - limit).clamp(min=0.0).amax((1, 2, 3))

        s_v, res_v, exc_v = disc(vel, w.v_max)
        s_a, res_a, exc_a = disc(acc, w.a_max)
        to_robot = lambda x: x.permute(0, 2, 3, 1)  # noqa: E731  (B, K, N, 2) -> (B, N, 2, K)
        both = torch.stack([torch.cat([to_robot(g_pos), rho["vel"] * s_v, rho["acc"] * s_a], -1),
                            torch.cat([to_robot(r_pos), rho["vel"] * res_v, rho["acc"] * res_a], -1)]) @ self.M
        violation = torch.stack([pen, exc_w, exc_v, exc_a], -1).amax(-1)
        return both[0], both[1], violation, pen

    # -- solve --------------------------------------------------------------------------------
    def start(self, scen: dict, c_bar: torch.Tensor, c0: Optional[torch.Tensor], lam0: Optional[torch.Tensor]) -> tuple:
        """(b_eq, c, lambda, q_s, violation, collision) at the start (default: c_bar's equality projection, 0)."""
        b_eq = boundary_values(scen["starts"], scen["goals"])
        c = self.equality_projection(c_bar, b_eq) if c0 is None else c0
        q_s, _, violation, collision = self.project(c, scen["obstacles"])
        return b_eq, c, torch.zeros_like(c) if lam0 is None else lam0, q_s, violation, collision

    def iterate(self, c_bar: torch.Tensor, lam: torch.Tensor, q_s: torch.Tensor, b_eq: torch.Tensor,
                obstacles: torch.Tensor) -> tuple:
        """One iteration (c-step, polar step, dual step): returns (c, lambda, q_s, violation, collision)."""
        c = self.c_step(self.w_prox * c_bar + lam + q_s, b_eq)
        q_s, f_res, violation, collision = self.project(c, obstacles)
        return c, lam - f_res, q_s, violation, collision

    def solve(self, scen: dict, c_bar: torch.Tensor, c0: Optional[torch.Tensor] = None,
              lam0: Optional[torch.Tensor] = None, iters: int = 15) -> dict:
        """`iters` iterations from (c0, lambda0) (default: c_bar's equality projection, 0): differentiable by unrolling.
        Returns the final iterate, the fixed-point residuals ||c_k - c_{k-1}|| + ||lambda_k - lambda_{k-1}|| (B, iters)
        and the violations (B, iters + 1) of the start and of every iterate."""
        b_eq, c, lam, q_s, violation, collision = self.start(scen, c_bar, c0, lam0)
        fixed_point, violations = [], [violation]
        for _ in range(iters):
            c_new, lam_new, q_s, violation, collision = self.iterate(c_bar, lam, q_s, b_eq, scen["obstacles"])
            fixed_point.append((c_new - c).flatten(1).norm(dim=1) + (lam_new - lam).flatten(1).norm(dim=1))
            violations.append(violation)
            c, lam = c_new, lam_new
        return {"c": c, "lam": lam, "violation": violation, "collision": collision,
                "violations": torch.stack(violations, 1),
                "fixed_point": torch.stack(fixed_point, 1) if fixed_point else c.new_zeros(c.shape[0], 0)}

    @torch.no_grad()
    def solve_to_tolerance(self, scen: dict, c_bar: torch.Tensor, c0: Optional[torch.Tensor] = None,
                           lam0: Optional[torch.Tensor] = None, max_iters: int = 600, tol: float = 0.02, group: int = 1,
                           check_every: int = 5, stop_fraction: float = 1.0, kick_every: int = 0,
                           kick_bend: float = 0.0, kick_progress: float = 0.8, kick_patience: int = 2,
                           kick_robots: float = 0.3) -> dict:
        """The same iteration until every group of `group` consecutive samples (the samples of one scenario) has an
        iterate within `tol` (or `stop_fraction` of the groups), at most `max_iters` iterations.

        Each sample keeps its first iterate within tol. Every `check_every` iterations (the only host syncs) the
        finished groups leave the batch (compaction), so each scenario costs the iterations it needs, not the
        slowest scenario's. With kick_every > 0, an unsolved sample whose violation stops falling gets the deadlock
        kick described below. Returns per sample c, violation, collision, solved_at (-1: never) and finished_s: the
        time.perf_counter() at which its group left the batch (its result was ready)."""
        B, dev = c_bar.shape[0], c_bar.device
        b_eq, c, lam, q_s, violation, collision = self.start(scen, c_bar, c0, lam0)
        out = {"c": c.clone(), "violation": violation.clone(), "collision": collision.clone(),
               "solved_at": torch.where(violation <= tol, 0, -1), "finished_s": torch.zeros(B, dtype=torch.float64)}
        rows = torch.arange(B, device=dev)  # the samples still iterating
        c_bar_a, obstacles = c_bar, scen["obstacles"]
        best_c, best_viol, best_coll = out["c"].clone(), out["violation"].clone(), out["collision"].clone()
        solved_at = out["solved_at"].clone()
        groups_done, it = 0, 0

        def retire(mask: torch.Tensor) -> None:  # write the finished samples' results back to the outputs
            idx = rows[mask]
            out["c"][idx], out["violation"][idx], out["collision"][idx] = best_c[mask], best_viol[mask], best_coll[mask]
            out["solved_at"][idx] = solved_at[mask]
            out["finished_s"][idx.cpu()] = time.perf_counter()

        # deadlock kick (this repo's addition). A window of kick_every iterations stalls when its least violation is
        # not below kick_progress x the previous window's; after kick_patience stalled windows in a row, the paths of
        # the sample's robots in conflict (constraint residual >= kick_robots x the largest robot's) are bent to the
        # right and their multipliers reset
        kick = detour_bends(scen, self.nv - 1, (kick_bend,)) if kick_every else None
        window_min, last_min = torch.full_like(violation, math.inf), torch.full_like(violation, math.inf)
        stalls = torch.zeros_like(solved_at)
        for it in range(1, max_iters + 1):
            if kick_every and it % kick_every == 0:
                stalled = (solved_at < 0) & (window_min >= kick_progress * last_min)
                stalls = torch.where(stalled, stalls + 1, 0)
                stuck = stalls >= kick_patience
                stalls = torch.where(stuck, 0, stalls)
                conflict = self.project(c, obstacles)[1].flatten(2).norm(dim=2)  # (B, N): each robot's residual
                bent = stuck[:, None] & (conflict >= kick_robots * conflict.amax(1, keepdim=True))
                c = torch.where(bent[..., None, None], c + kick, c)  # the bend keeps the boundary coefficients
                lam = torch.where(bent[..., None, None], 0.0, lam)
                q_s = self.project(c, obstacles)[0]
                last_min, window_min = torch.where(stuck, math.inf, window_min), torch.full_like(window_min, math.inf)
            c, lam, q_s, violation, collision = self.iterate(c_bar_a, lam, q_s, b_eq, obstacles)
            window_min = torch.minimum(window_min, violation)
            fresh = (solved_at < 0) & (violation <= tol)
            keep = solved_at < 0  # unsolved samples follow the iterate
            best_c = torch.where(keep[:, None, None, None], c, best_c)
            best_viol, best_coll = torch.where(keep, violation, best_viol), torch.where(keep, collision, best_coll)
            solved_at = torch.where(fresh, it, solved_at)
            if it % check_every == 0 or it == max_iters:
                done = (solved_at >= 0).view(-1, group).any(1)
                num_done = int(done.sum().item())
                if groups_done + num_done >= stop_fraction * (B // group):
                    break
                if num_done:  # compaction: the finished scenarios leave the batch
                    finished = done.repeat_interleave(group)
                    retire(finished)
                    groups_done += num_done
                    live = ~finished
                    rows, c, lam, q_s, c_bar_a, b_eq = (x[live] for x in (rows, c, lam, q_s, c_bar_a, b_eq))
                    kick = kick[live] if kick_every else None
                    window_min, last_min, stalls = window_min[live], last_min[live], stalls[live]
                    obstacles, best_c, best_viol, best_coll, solved_at = (
                        x[live] for x in (obstacles, best_c, best_viol, best_coll, solved_at))
        retire(torch.ones_like(rows, dtype=torch.bool))
        out["iters"] = it
        return out

    def smoothness(self, c: torch.Tensor) -> torch.Tensor:
        """Sum over robots and time of ||acceleration||^2 dt, per sample (the paper's smoothness metric)."""
        return (c @ self.Pdd.T).square().sum((1, 2, 3)) * self.dt


# --- Continuous-time certificate: Bernstein convex-hull bounds on every constraint over the whole horizon ----------
def sample_margins(world: World, horizon: float, num_times: int, tol: float) -> dict:
    """How much the solver inflates each constraint at its `num_times` instants so that a trajectory within `tol` at
    the instants is within `tol` between them (the one rule of the data generator, the SF and the optimizer).

    Between two instants h apart a curve leaves its chord by at most h^2/8 max|accel| (accel <= a_max + tol), and a
    chord of length <= L whose ends are >= D from a point comes no closer than sqrt(D^2 - (L/2)^2). Robot pairs:
    L = 2 (v_max + tol) h, relative accel 2 (a_max + tol); obstacles: L = (v_max + tol) h; the workspace box is convex
    (curvature term only). Speed and acceleration get no margin (their between-instant motion is bounded by jerk,
    which is not constrained): the certificate checks them. Raises ArgumentError when the chords are too long."""
    h, v, a, r = horizon / (num_times - 1), world.v_max + tol, world.a_max + tol, world.robot_radius

    def chord(reach: float, speed: float, curve: float, what: str) -> float:  # chord length <= 2 speed h
        if speed * h >= reach:
            raise ArgumentError(f"--num-times must be at least {math.floor(horizon * speed / reach) + 2} for {what} to "
                                f"hold between the instants (got {num_times})")
        return reach - math.sqrt(reach**2 - (speed * h) ** 2) + curve

    return {"agent": chord(2 * r - tol, v, 2 * a * h * h / 8, "robot-robot separation"),
            "obs": chord(r + world.obstacle_radius[0] - tol, v / 2, a * h * h / 8, "obstacle separation"),
            "ws": a * h * h / 8}


@lru_cache(maxsize=None)
def split_matrix(m: int, segments: int) -> torch.Tensor:
    """(segments * (m + 1), m + 1), float64: the degree-m Bernstein coefficients on [0, 1] -> those of the restriction
    to each of `segments` equal pieces (row j of piece [a, b]: the blossom at (a^(m-j), b^j))."""
    def bern(deg: int, x: float) -> np.ndarray:
        return np.array([math.comb(deg, k) * x**k * (1 - x) ** (deg - k) for k in range(deg + 1)])

    rows = [np.convolve(bern(j, (s + 1) / segments), bern(m - j, s / segments))
            for s in range(segments) for j in range(m + 1)]
    return torch.tensor(np.stack(rows))


def bernstein_product(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Degree-2m Bernstein coefficients of the product of two degree-m polynomials (..., m + 1)."""
    m = u.shape[-1] - 1
    binom = torch.tensor([math.comb(m, i) for i in range(m + 1)], dtype=u.dtype, device=u.device)
    out = u.new_zeros(*u.shape[:-1], 2 * m + 1)
    uu, vv = u * binom, v * binom
    for i in range(m + 1):
        out[..., i:i + m + 1] += uu[..., i:i + 1] * vv
    return out / torch.tensor([math.comb(2 * m, k) for k in range(2 * m + 1)], dtype=u.dtype, device=u.device)


def certified_min(coef: torch.Tensor, threshold: torch.Tensor, coarse: int = 16, fine: int = 512,
                  chunk: int = 4096) -> torch.Tensor:
    """A lower bound of min over [0, 1] of each Bernstein polynomial coef (..., m + 1): the least control point of its
    restrictions to `coarse` pieces (a polynomial lies in the convex hull of its control points), refined to `fine`
    pieces where that bound is below `threshold` (broadcast to coef.shape[:-1])."""
    m = coef.shape[-1] - 1
    flat = coef.reshape(-1, m + 1)
    lb = (flat @ split_matrix(m, coarse).to(flat).T).amin(1)
    thr = threshold.expand(coef.shape[:-1]).reshape(-1)
    low = (lb < thr).nonzero().squeeze(1)
    R = split_matrix(m, fine).to(flat)
    for start in range(0, low.numel(), chunk):
        idx = low[start:start + chunk]
        lb[idx] = torch.maximum(lb[idx], (flat[idx] @ R.T).amin(1))
    return lb.view(coef.shape[:-1])


@torch.no_grad()
def certify(c: torch.Tensor, scen: dict, world: World, horizon: float, tol: float) -> dict:
    """Certified worst excess over the whole horizon t in [0, T] (not only at the instants), per sample, of each
    constraint: robot-robot and robot-obstacle penetration [m], workspace excess [m], speed and acceleration excess
    [m/s, m/s^2]; `violation` is their max, and a trajectory succeeds iff violation <= tol. Each is an upper bound
    (exact up to float64 rounding): squared distances, speeds and accelerations are polynomials in Bernstein form
    (products of the coefficient differences), bounded by their control points on 16 pieces, 512 where needed."""
    c = c.double()
    B, n, _, nv = c.shape
    r, o = world.robot_radius, scen["obstacles"].double()
    one = torch.ones((), dtype=torch.float64, device=c.device)
    def sq(d: torch.Tensor) -> torch.Tensor:  # ||d(t)||^2 of a 2-D Bernstein polynomial d (..., 2, m + 1)
        return bernstein_product(d[..., 0, :], d[..., 0, :]) + bernstein_product(d[..., 1, :], d[..., 1, :])

    i, j = torch.triu_indices(n, n, 1, device=c.device)
    d2 = certified_min(sq(c[:, i] - c[:, j]), one * (2 * r - tol) ** 2)  # (B, pairs)
    out = {"agent": (2 * r - d2.clamp(min=0).sqrt()).amax(1)}
    if o.shape[1]:
        reach = r + o[:, None, :, 2]  # (B, 1, M)
        d2o = certified_min(sq(c[:, :, None] - o[:, None, :, :2, None]), (reach - tol).square())
        out["obs"] = (reach - d2o.clamp(min=0).sqrt()).amax((1, 2))
    else:
        out["obs"] = c.new_zeros(B)
    bound = world.workspace - r
    out["ws"] = -torch.minimum(certified_min(bound - c, -tol * one), certified_min(bound + c, -tol * one)).amin((1, 2))
    vel = (c[..., 1:] - c[..., :-1]) * (nv - 1) / horizon
    acc = (vel[..., 1:] - vel[..., :-1]) * (nv - 2) / horizon
    for key, d, limit in (("vel", vel, world.v_max), ("acc", acc, world.a_max)):
        top = -certified_min(-sq(d), -one * (limit + tol) ** 2)  # an upper bound of ||.||^2
        out[key] = top.clamp(min=0).sqrt().amax(1) - limit
    out["violation"] = torch.stack([out[k] for k in ("agent", "obs", "ws", "vel", "acc")], -1).amax(-1)
    return out


def perturbed_guess(scen: dict, order: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """Straight-line coefficients with Gaussian noise on the interior coefficients (the boundary ones stay)."""
    c = straight_line_coefs(scen["starts"], scen["goals"], order)
    noise = torch.randn(c.shape, generator=generator, device=c.device) * std
    noise[..., :3] = 0.0
    noise[..., -3:] = 0.0
    return c + noise


# --- Networks: DiT flow model with permutation-invariant robot and map encoders; init network ----------------------
def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    layers, dim = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.SiLU()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def robot_features(starts: torch.Tensor, goals: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-robot (start, goal, goal - start) / workspace: no robot index anywhere (permutation equivariance)."""
    return torch.cat([starts, goals, goals - starts], -1) / scale


class MapEncoder(nn.Module):
    """DeepSets over obstacles (x, y, radius): shared MLP, then mean- and max-pool, then an MLP."""

    def __init__(self, hidden: int):
        super().__init__()
        self.phi, self.rho = mlp(3, hidden, 2, hidden), mlp(2 * hidden, hidden, 1, hidden)
        self.hidden = hidden

    def forward(self, obstacles: torch.Tensor, scale: float) -> torch.Tensor:
        if obstacles.shape[1] == 0:
            return obstacles.new_zeros(obstacles.shape[0], self.hidden)
        h = self.phi(obstacles / scale)
        return self.rho(torch.cat([h.mean(1), h.amax(1)], -1))


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, H = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, H))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie): shift/scale/gate from the condition,
    the gates initialised to zero so every block starts as the identity."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn, self.mlp = Attention(hidden, heads), mlp(hidden, 4 * hidden, 1, hidden)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(cond).chunk(6, -1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = t[:, None] * 1000.0 * freqs
    return torch.cat([angles.cos(), angles.sin()], -1)


class FlowDiT(nn.Module):
    """Velocity field v_theta(x_t, t | starts, goals, obstacles) over joint coefficients x (B, N, 2 nv).

    One token per robot = Linear(x_i) + RobotEncoder(start_i, goal_i); condition = t-embedding + pooled context
    (mean of the robot encodings, DeepSets map encoding) through adaLN-Zero. No positional embedding over
    robots, so permuting the robots permutes the output."""

    def __init__(self, nv: int, hidden: int, depth: int, heads: int, scale: float, residual_input: bool = True):
        super().__init__()
        self.scale, self.hidden, self.residual_input = scale, hidden, residual_input
        self.x_in = nn.Linear((4 if residual_input else 2) * nv, hidden)
        self.robot = mlp(6, hidden, 2, hidden)
        self.map = MapEncoder(hidden)
        self.context = mlp(2 * hidden, hidden, 1, hidden)
        self.time = mlp(hidden, hidden, 1, hidden)
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, 2 * nv)
        for layer in (self.ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def encode(self, scen: dict) -> tuple:
        """Robot encodings (B, N, H) and pooled context (B, H): computed once per sample, reused by every flow step."""
        r = self.robot(robot_features(scen["starts"], scen["goals"], self.scale))
        return r, self.context(torch.cat([r.mean(1), self.map(scen["obstacles"], self.scale)], -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, enc: tuple,
                residual: Optional[Callable] = None) -> torch.Tensor:
        """`residual`: x -> constraint residual tokens (`residual_input`), required when the model was built with it."""
        robots, context = enc
        h = self.x_in(torch.cat([x, residual(x)], -1) if self.residual_input else x) + robots
        cond = self.time(timestep_embedding(t, self.hidden)) + context
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.ada(cond).chunk(2, -1)
        return self.out(modulate(self.norm(h), shift, scale))


class InitNet(nn.Module):
    """Predicts the SF initialisation (Delta c, lambda_0) from the context and the generated sample: per-robot
    encoder of (start, goal, normalised sample, normalised constraint residual F^T res of the sample), one
    self-attention layer across robots, pooled map encoding; permutation equivariant. The residual input (one
    polar step, this repo's addition to Swarm-Gen's inputs) tells the network where the sample is infeasible.
    Output layer zero-initialised: training starts from the zero initialisation."""

    def __init__(self, nv: int, hidden: int, heads: int, scale: float):
        super().__init__()
        self.scale = scale
        self.robot = mlp(6 + 4 * nv, hidden, 2, hidden)
        self.map = MapEncoder(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.head = mlp(2 * hidden, hidden, 2, 4 * nv)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, scen: dict, x_gen: torch.Tensor, r_gen: torch.Tensor) -> tuple:
        B, N, _ = x_gen.shape
        h = self.robot(torch.cat([robot_features(scen["starts"], scen["goals"], self.scale), x_gen, r_gen], -1))
        h = h + self.attn(self.norm(h))
        out = self.head(torch.cat([h, self.map(scen["obstacles"], self.scale)[:, None].expand(-1, N, -1)], -1))
        dc, lam = out.view(B, N, 2, 2, -1).unbind(2)
        return dc, lam


# --- Flow matching: loss and sampler -------------------------------------------------------------------------------
def normalised_residual(solver: "TrajectorySolver", c: torch.Tensor, scen: dict, coef_scale: float) -> torch.Tensor:
    """F^T res of one polar step at eqproj(c), per robot (B, N, 2 nv), in token units: where and how far the
    trajectories violate a constraint (input of the init network, and of the DiT with --flow-residual)."""
    b_eq = boundary_values(scen["starts"], scen["goals"])
    return (solver.project(solver.equality_projection(c, b_eq), scen["obstacles"])[1] / coef_scale).flatten(2)


def residual_input(solver: "TrajectorySolver", scen: dict, order: int, coef_scale: float):
    """tokens x -> normalised_residual of the coefficients x encodes: the DiT's extra input."""
    return lambda x: normalised_residual(solver, from_tokens(x, scen, order, coef_scale), scen, coef_scale)


def to_tokens(c: torch.Tensor, scen: dict, order: int, coef_scale: float) -> torch.Tensor:
    """Coefficients (B, N, 2, nv) -> normalised residual w.r.t. the straight line, tokens (B, N, 2 nv)."""
    return ((c - straight_line_coefs(scen["starts"], scen["goals"], order)) / coef_scale).flatten(2)


def from_tokens(x: torch.Tensor, scen: dict, order: int, coef_scale: float) -> torch.Tensor:
    B, N, _ = x.shape
    return x.view(B, N, 2, order + 1) * coef_scale + straight_line_coefs(scen["starts"], scen["goals"], order)


def flow_matching_loss(model: FlowDiT, x1: torch.Tensor, scen: dict,
                       residual: Optional[Callable] = None) -> torch.Tensor:
    """Conditional flow matching with the linear path x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), target x1 - x0
    (Lipman et al. 2023 Eq. 23 with sigma_min = 0; the paper's generative loss)."""
    x0 = torch.randn_like(x1)
    t = torch.rand(x1.shape[0], device=x1.device)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    return F.mse_loss(model(xt, t, model.encode(scen), residual), x1 - x0)


@torch.no_grad()
def sample_flow(model: FlowDiT, scen: dict, flow_steps: int, generator: Optional[torch.Generator] = None,
                residual: Optional[Callable] = None) -> torch.Tensor:
    """Euler integration of dx/dt = v_theta(x, t) from x0 ~ N(0, I), t: 0 -> 1; batched over all samples."""
    B, N = scen["starts"].shape[:2]
    nv2 = model.out.out_features
    x = torch.randn(B, N, nv2, device=scen["starts"].device, generator=generator)
    enc, dt = model.encode(scen), 1.0 / flow_steps
    for i in range(flow_steps):
        x = x + dt * model(x, torch.full((B,), i * dt, device=x.device), enc, residual)
    return x


def init_from_net(init_net: InitNet, solver: TrajectorySolver, scen: dict, x_gen: torch.Tensor, c_gen: torch.Tensor,
                  coef_scale: float, lam_scale: float) -> tuple:
    """c_0 = equality projection of c_gen + Delta c, lambda_0 (Swarm-Gen's InitModel recipe)."""
    dc, lam = init_net(scen, x_gen, normalised_residual(solver, c_gen, scen, coef_scale))
    c0 = solver.equality_projection(c_gen + dc * coef_scale, boundary_values(scen["starts"], scen["goals"]))
    return c0, lam * lam_scale


def init_loss(out: dict, c_gen: torch.Tensor, args: Args) -> dict:
    """Self-supervised init loss through the unrolled SF (Swarm-Gen recipe + violation term):
    mean_k fixed-point residual_k + ||c_K - c_gen||^2 (mean over coefficients) + final violation."""
    fp, dist, viol = out["fixed_point"].mean(), (out["c"] - c_gen).square().mean(), out["violation"].mean()
    return {"init_loss": args.init_w_fp * fp + args.init_w_dist * dist + args.init_w_viol * viol,
            "init_fixed_point_residual": fp, "init_distance": dist, "init_violation": viol}


def iterations_loss(out: dict, c_gen: torch.Tensor, args: Args) -> dict:
    """This repo's init loss, for fewer SF iterations to tolerance: the SF stops at the first iterate k whose violation
    v_k (its largest constraint excess) is <= --tol, after sum_k 1[v_k > tol] iterations when v falls; the surrogate
    mean_{k=0..K} max(v_k - tol, 0) over the start and the K unrolled iterates makes every early iterate count;
    + --init-w-dist ||c_K - c_gen||^2 keeps the filtered trajectory near the generated sample."""
    excess = (out["violations"] - args.tol).clamp(min=0.0).mean()
    dist = (out["c"] - c_gen).square().mean()
    return {"init_loss": excess + args.init_w_dist * dist, "init_excess": excess, "init_distance": dist,
            "init_violation": out["violation"].mean()}


INIT_LOSSES = {"swarmgen": init_loss, "iterations": iterations_loss}


# --- Training: the flow model, then the init network through the unrolled SF ---------------------------------------
def training_batch(data: dict, n: int, size: int, solver: TrajectorySolver, norm: dict, args: Args,
                   generator: torch.Generator) -> tuple:
    """`size` random training scenarios with n robots: (indices, scenarios, the DiT's residual input)."""
    idx = torch.randint(0, data[n]["coefs"].shape[0], (size,), device=data[n]["coefs"].device, generator=generator)
    scen = {k: data[n][k][idx] for k in ("starts", "goals", "obstacles")}
    return idx, scen, residual_input(solver, scen, args.order, norm["coef_scale"])


def compiled(step: Callable, args: Args) -> Callable:
    """--compile: torch.compile of a whole training step (loss, backward, Adam); --cudagraphs: inductor's CUDA-graph
    trees ("reduce-overhead"), not tensordict: no extra dependency, one code path with --compile. One graph set per
    robot count (static shapes); torch breaks the step at zero_grad, backward and around optimizer.step."""
    return torch.compile(step, mode="reduce-overhead" if args.cudagraphs else None) if args.compile else step


def train_flow(model: FlowDiT, data: dict, solvers: dict, norm: dict, args: Args, generator: torch.Generator,
               log: Callable) -> None:
    """--total-steps Adam steps of conditional flow matching on the normalised coefficient residuals of the data,
    batches cycling through the robot counts; log(step, losses, nonfinite) every --log-freq steps."""
    targets = {n: to_tokens(data[n]["coefs"], data[n], args.order, norm["coef_scale"]) for n in args.train_robots}
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate,
                                 capturable=args.cudagraphs)  # capture: Adam's step counter lives on the device

    def flow_step(x1: torch.Tensor, scen: dict, residual: Callable) -> torch.Tensor:
        loss = flow_matching_loss(model, x1, scen, residual)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    flow_step = compiled(flow_step, args)
    nonfinite = torch.zeros((), dtype=torch.bool, device=next(model.parameters()).device)
    for step in range(1, args.total_steps + 1):
        n = args.train_robots[step % len(args.train_robots)]
        idx, scen, residual = training_batch(data, n, args.batch_size, solvers[n], norm, args, generator)
        if args.cudagraphs:  # capture: a new replay may overwrite the previous output (read before the next call)
            torch.compiler.cudagraph_mark_step_begin()
        loss = flow_step(targets[n][idx], scen, residual)
        nonfinite |= ~torch.isfinite(loss)  # the NaN/inf guard: an eager op on a returned tensor
        if step % args.log_freq == 0 or step == args.total_steps:
            log(step, {"flow_matching_loss": loss}, nonfinite)


def train_init_net(init_net: InitNet, model: FlowDiT, data: dict, solvers: dict, norm: dict, args: Args,
                   generator: torch.Generator, log: Callable) -> None:
    """--init-steps Adam steps of the init network (loss --init-loss through --sf-iters unrolled SF iterations), one
    flow sample per training scenario; log(step, losses, nonfinite) every --log-freq steps."""
    optimizer = torch.optim.Adam(init_net.parameters(), lr=args.init_learning_rate,
                                 capturable=args.cudagraphs)  # capture: Adam's step counter lives on the device

    def init_step(solver: TrajectorySolver, scen: dict, x_gen: torch.Tensor) -> dict:
        c_gen = from_tokens(x_gen, scen, args.order, norm["coef_scale"])
        c0, lam0 = init_from_net(init_net, solver, scen, x_gen, c_gen, norm["coef_scale"], norm["lam_scale"])
        losses = INIT_LOSSES[args.init_loss](solver.solve(scen, c_gen, c0, lam0, iters=args.sf_iters), c_gen, args)
        optimizer.zero_grad(set_to_none=True)
        losses["init_loss"].backward()
        optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    init_step = compiled(init_step, args)
    nonfinite = torch.zeros((), dtype=torch.bool, device=next(init_net.parameters()).device)
    for step in range(1, args.init_steps + 1):
        n = args.train_robots[step % len(args.train_robots)]
        _, scen, residual = training_batch(data, n, args.init_batch_size, solvers[n], norm, args, generator)
        x_gen = sample_flow(model, scen, args.flow_steps, generator, residual)  # eager: it draws from `generator`
        if args.cudagraphs:  # capture: a new replay may overwrite the previous outputs (read before the next call)
            torch.compiler.cudagraph_mark_step_begin()
        losses = init_step(solvers[n], scen, x_gen)
        nonfinite |= ~torch.isfinite(losses["init_loss"])
        if step % args.log_freq == 0 or step == args.init_steps:
            log(step, losses, nonfinite)


# --- Data generation: the centralized optimizer run to convergence -------------------------------------------------
def optimizer_for(n: int, num_obstacles: int, world: World, args: Args, device: torch.device) -> TrajectorySolver:
    return TrajectorySolver(n, num_obstacles, world, args, w_prox=1.0, w_smooth=args.opt_smoothness, device=device)


def kick_args(args: Args) -> dict:
    """The deadlock-kick settings of `TrajectorySolver.solve_to_tolerance` (the same for every method)."""
    return dict(kick_every=args.kick_every, kick_bend=args.kick_bend, kick_progress=args.kick_progress,
                kick_patience=args.kick_patience, kick_robots=args.kick_robots)


def optimize_from_scratch(opt: TrajectorySolver, scen: dict, args: Args, guess: torch.Tensor, max_iters: int,
                          check_every: int, stop_fraction: float = 1.0) -> dict:
    """The centralized optimizer: min 1/2 ||c - c_line||^2 + w_s/2 ||Pddot c||^2 under every constraint (c_line: the
    straight-line coefficients), started from `guess` (a perturbed straight line, `perturbed_guess`: the perturbation
    breaks the symmetry of swaps and picks the homotopy class)."""
    c0 = opt.equality_projection(guess, boundary_values(scen["starts"], scen["goals"]))
    line = straight_line_coefs(scen["starts"], scen["goals"], args.order)
    return opt.solve_to_tolerance(scen, line, c0, max_iters=max_iters, tol=args.tol, check_every=check_every,
                                  stop_fraction=stop_fraction, **kick_args(args))


def detour_bends(scen: dict, order: int, scales: Tuple[float, ...]) -> torch.Tensor:
    """Coefficient offsets that bend every robot's path sideways by each scale [m], to the same side of its own
    direction (+: right, -: left): the consistent 'roundabout' that resolves crossings where random perturbations
    deadlock. Zero on the boundary coefficients. Returns (B * len(scales), N, 2, nv), one scenario's bends in a row."""
    nv = order + 1
    d = scen["goals"] - scen["starts"]
    right = torch.stack([d[..., 1], -d[..., 0]], -1) / d.norm(dim=-1, keepdim=True).clamp(min=1e-6)  # (B, N, 2)
    bump = torch.sin(math.pi * torch.arange(nv, dtype=d.dtype, device=d.device) / (nv - 1))
    bump[:3], bump[-3:] = 0.0, 0.0  # the boundary coefficients stay
    scale = torch.tensor(scales, dtype=d.dtype, device=d.device)
    return (scale[None, :, None, None, None] * right[:, None, ..., None] * bump).flatten(0, 1)


def detour_starts(scen: dict, order: int, scales: Tuple[float, ...]) -> torch.Tensor:
    """Straight lines bent by `detour_bends`: (B * len(scales), N, 2, nv), the starts of one scenario in a row."""
    line = straight_line_coefs(scen["starts"], scen["goals"], order)
    return line.repeat_interleave(len(scales), 0) + detour_bends(scen, order, scales)


def optimize_multistart(opt: TrajectorySolver, scen: dict, args: Args, generator: torch.Generator, max_iters: int,
                        random_starts: int) -> tuple:
    """The optimizer (same cost) from several starts per scenario: the detour starts and `random_starts` perturbed
    straight lines; a scenario stops once one start is solved. Returns (solved (B,), coefficients (B, N, 2, nv) of
    the smoothest solved start)."""
    B, R = scen["starts"].shape[0], len(args.detour_scales) + random_starts
    rep = repeat_scenarios(scen, R)
    parts = [detour_starts(scen, args.order, args.detour_scales).unflatten(0, (B, -1))]
    if random_starts:
        parts.append(perturbed_guess(repeat_scenarios(scen, random_starts), args.order, args.perturb_std,
                                     generator).unflatten(0, (B, -1)))
    c0 = opt.equality_projection(torch.cat(parts, 1).flatten(0, 1), boundary_values(rep["starts"], rep["goals"]))
    out = opt.solve_to_tolerance(rep, straight_line_coefs(rep["starts"], rep["goals"], args.order), c0,
                                 max_iters=max_iters, tol=args.tol, group=R, check_every=10, **kick_args(args))
    cert = certify(out["c"], rep, opt.world, args.horizon, args.tol)["violation"]
    ok = ((out["solved_at"] >= 0) & (cert <= args.tol)).view(B, R)
    best = torch.where(ok, opt.smoothness(out["c"]).view(B, R), math.inf).argmin(1)
    return ok.any(1), out["c"].unflatten(0, (B, R))[torch.arange(B, device=best.device), best]


def generate_data(n: int, args: Args, world: World, generator: torch.Generator, device: torch.device,
                  chunk: int = 500) -> dict:
    """Scenarios and their optimised joint trajectories: the optimizer from a random start, then from the detour
    starts for the scenarios it missed; only instances solved within --tol are kept."""
    opt = optimizer_for(n, args.num_obstacles, world, args, device)
    parts, tried = [], 0
    for start in range(0, args.num_scenarios, chunk):
        scen = sample_scenarios(min(chunk, args.num_scenarios - start), n, args.num_obstacles, world, args.layouts,
                                generator, device)
        guess = perturbed_guess(scen, args.order, args.perturb_std, generator)
        out = optimize_from_scratch(opt, scen, args, guess, args.data_iters, check_every=10, stop_fraction=0.95)
        ok, coefs = out["solved_at"] >= 0, out["c"]
        if args.detour_scales and not ok.all():
            missed = (~ok).nonzero().squeeze(1)
            rest = {k: v[missed] for k, v in scen.items()}
            solved, c = optimize_multistart(opt, rest, args, generator, args.data_iters, 0)
            coefs[missed[solved]], ok[missed[solved]] = c[solved], True
        ok &= certify(coefs, scen, world, args.horizon, args.tol)["violation"] <= args.tol  # continuous-time criterion
        parts.append({**{k: v[ok] for k, v in scen.items()}, "coefs": coefs[ok]})
        tried += ok.numel()
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    data["solved_fraction"] = torch.tensor(data["coefs"].shape[0] / max(tried, 1))
    return data


# --- Evaluation: the Flow-Opt pipeline on held-out scenarios, success certified over the whole horizon -------------
EVAL_SEED = 20_000  # held-out scenarios: seed EVAL_SEED + --seed (the data never uses it)


def timed(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


@torch.no_grad()
def evaluate(model: FlowDiT, init_net: InitNet, norm: dict, n: int, args: Args, world: World, device: torch.device,
             seed: int) -> tuple:
    """Flow-Opt on --eval-scenarios held-out scenarios with n robots (seed `seed`): sample, keep the S least violating
    samples per scenario, predict the SF init, filter until --tol; per scenario the certified sample with the least
    acceleration cost. Returns (row, parts): parts (scenarios, solver, outputs, generator, clock stamps) lets
    benchmarks/flow_opt_eval.py run the baselines on the same scenarios."""
    gen = torch.Generator(device=device).manual_seed(seed)
    scen = sample_scenarios(args.eval_scenarios, n, args.num_obstacles, world, args.layouts, gen, device)
    opt_start = perturbed_guess(scen, args.order, args.perturb_std, gen)  # the optimizer baseline's start (benchmarks/)
    S, num = min(args.filter_samples or args.num_samples, args.num_samples), args.eval_scenarios
    sf = TrajectorySolver(n, args.num_obstacles, world, args, device=device)
    drawn = repeat_scenarios(scen, args.num_samples)
    clock = {"flow": (timed(device), time.process_time())}  # (wall, process CPU) stamps
    x_gen = sample_flow(model, drawn, args.flow_steps, gen, residual_input(sf, drawn, args.order, norm["coef_scale"]))
    c_gen = from_tokens(x_gen, drawn, args.order, norm["coef_scale"])
    b_drawn = boundary_values(drawn["starts"], drawn["goals"])
    viol_gen, coll_gen = sf.project(sf.equality_projection(c_gen, b_drawn), drawn["obstacles"])[2:]  # ranks them
    if S < args.num_samples:  # no SF iteration is spent on the other samples
        keep = viol_gen.view(num, -1).topk(S, dim=1, largest=False).indices
        keep = (keep + args.num_samples * torch.arange(num, device=device)[:, None]).flatten()
        x_gen, c_gen = x_gen[keep], c_gen[keep]
    rep = repeat_scenarios(scen, S)
    clock["init"] = (timed(device), time.process_time())
    c0, lam0 = init_from_net(init_net, sf, rep, x_gen, c_gen, norm["coef_scale"], norm["lam_scale"])
    clock["sf"] = (timed(device), time.process_time())
    to_tol = dict(max_iters=args.sf_max_iters, tol=args.tol, group=S, check_every=args.check_every, **kick_args(args))
    flt = sf.solve_to_tolerance(rep, c_gen, c0, lam0, **to_tol)
    clock["end"] = (timed(device), time.process_time())
    certified(flt, rep, world, args)  # the continuous-time criterion (not timed)
    parts = dict(scen=scen, rep=rep, S=S, sf=sf, flt=flt, c_gen=c_gen, opt_start=opt_start, gen=gen, clock=clock,
                 to_tol=to_tol)
    chosen, success, smooth = best_sample(flt, parts, args)
    t = {k: v[0] for k, v in clock.items()}
    return {
        "robots": n, "scenarios": num, "samples": args.num_samples, "filtered": S, "batch": num * S,
        "success": success.float().mean().item(),
        "success_at_instants": (chosen(flt["violation"]) <= args.tol).float().mean().item(),
        "collision_before_sf": (coll_gen > args.tol).float().mean().item(),
        "collision_after_sf": (chosen(flt["collision_ct"]) > args.tol).float().mean().item(),
        "violation_before_sf": viol_gen.mean().item(), "smoothness": smooth.mean().item(), "sf_iters": flt["iters"],
        "t_sample_s": t["init"] - t["flow"], "t_init_s": t["sf"] - t["init"], "t_sf_s": t["end"] - t["sf"],
        "t_flowopt_s": t["end"] - t["flow"], "t_median_flowopt_s": ready(flt, S, t["flow"], args).median().item(),
    }, parts


def certified(out: dict, scen: dict, world: World, args: Args) -> None:
    """Adds each sample's certified continuous-time violation (`certified`) and penetration (`collision_ct`)."""
    cert = certify(out["c"], scen, world, args.horizon, args.tol)
    out["certified"], out["collision_ct"] = cert["violation"], torch.maximum(cert["agent"], cert["obs"])


def best_sample(out: dict, parts: dict, args: Args) -> tuple:
    """Per scenario: the certified sample with the least acceleration cost (else the least violating one). Returns
    (selector of that sample's rows, success, smoothness)."""
    S, num = parts["S"], parts["scen"]["starts"].shape[0]
    smooth = parts["sf"].smoothness(out["c"]).view(num, S)
    cert = out["certified"].view(num, S)
    pick = torch.where(cert <= args.tol, smooth, 1e9 + cert).argmin(1)
    chosen = lambda x: x.view(num, S, *x.shape[1:])[torch.arange(num, device=x.device), pick]  # noqa: E731
    return chosen, chosen(out["certified"]) <= args.tol, chosen(smooth.view(-1))


def ready(out: dict, k: int, start: float, args: Args) -> torch.Tensor:
    """Per scenario: seconds from `start` until it left the solver's batch with a certified sample (inf: never)."""
    solved = ((out["solved_at"] >= 0) & (out["certified"] <= args.tol)).view(-1, k).any(1).cpu()
    return torch.where(solved, out["finished_s"].view(-1, k)[:, 0] - start, float("inf"))


# --- Files: checkpoints, the data cache, run directories -----------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic save: write a fresh temporary file next to `path` (a name nobody else holds), then rename it over
    `path`. Callers write only to paths flow_opt made: its run directory or a checked data cache."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


NETWORK_ARGS = ("order", "hidden_dim", "depth", "heads", "flow_residual")  # the args that shape the networks
# every arg that shapes the training data (generate_data and what it calls); not the seed, which picks other
# scenarios from the same distribution (reusing one cache across seeds is the point of --data-path)
DATA_ARGS = ("num_scenarios", "num_obstacles", "layouts", "workspace", "robot_radius", "obstacle_radius", "horizon",
             "num_times", "order", "v_max", "a_max", "tol", "rho_agent", "rho_obs", "rho_ws", "rho_vel", "rho_acc",
             "opt_smoothness", "data_iters", "perturb_std", "detour_scales", "kick_every", "kick_progress",
             "kick_patience", "kick_bend", "kick_robots")
DATA_CACHE = "flow_opt data cache"  # the `content` entry that marks a file as flow_opt's data cache


def differences(args: Args, saved: dict, keys: tuple, what: str) -> str:
    """`--flag <value> (<what>: <saved value>)` for each of `keys` whose saved value differs, as on the command line."""
    text = lambda v: (" ".join(map(str, v)) or "()") if isinstance(v, (tuple, list)) else str(v)  # noqa: E731
    value = lambda v: tuple(v) if isinstance(v, (tuple, list)) else v  # noqa: E731  (a tuple saved as a list)
    same = lambda a, b: value(a) == value(b)  # noqa: E731
    return ", ".join(f"--{k.replace('_', '-')} {text(getattr(args, k))} ({what}: {text(saved.get(k, 'none'))})"
                     for k in keys if k not in saved or not same(saved[k], getattr(args, k)))


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
    """What a torch file that is not the expected one holds, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    if state.get("content") == DATA_CACHE:
        return "it is a flow_opt data cache (--data-path)"
    if state.get("script") not in (None, "flow_opt"):
        return f"it was saved by {state['script']}.py"
    if "model" in state and "init_net" in state:
        return "it is a flow_opt checkpoint"
    if state and all(isinstance(k, int) and isinstance(v, dict) and "coefs" in v for k, v in state.items()):
        return "it is an old-format flow_opt data cache, which records no parameters to check"
    return "it is an unrelated torch file"


def load_checkpoint(path: str, args: Args, device: torch.device) -> dict:
    """The state of a flow_opt checkpoint for networks of the current --order/--hidden-dim/--depth/--heads/
    --flow-residual. Every failure is one CheckpointError line: a missing, empty or unreadable file, a file of another
    script (or flow_opt's data cache), other network settings (each listed against the checkpoint's), entries that
    do not load. (--checkpoint is a warm start: training then runs its full budget, so no step is compared.)"""
    state = read_torch_file(Path(path), "--checkpoint", CheckpointError, device)
    if (not isinstance(state, dict) or state.get("script", "flow_opt") != "flow_opt"
            or state.get("content") == DATA_CACHE):
        raise CheckpointError(f"--checkpoint {path} is not a flow_opt checkpoint: {describe(state)}")
    missing = [k for k in ("model", "init_net", "norm", "args") if k not in state]
    if missing:
        raise CheckpointError(f"--checkpoint {path} is not a flow_opt checkpoint: it has no {', '.join(missing)} "
                              f"({describe(state)})")
    saved = dict(state["args"])
    saved.setdefault("flow_residual", False)  # checkpoints from before --flow-residual were made without it
    differ = differences(args, saved, NETWORK_ARGS, "checkpoint")
    if differ:
        raise CheckpointError(f"--checkpoint {path} holds other networks: {differ}; pass the checkpoint's values")
    norm = state["norm"]
    if not (isinstance(norm, dict) and all(isinstance(norm.get(k), float) and math.isfinite(norm[k]) and norm[k] > 0
                                           for k in ("coef_scale", "lam_scale"))):
        raise CheckpointError(f"--checkpoint {path} has no valid normalisation (norm: {norm!r})")
    with torch.random.fork_rng(devices=[]):  # a trial load into throw-away networks; the random stream is unchanged
        model, init_net = build_networks(args, torch.device("cpu"))
    try:
        model.load_state_dict(state["model"])
        init_net.load_state_dict(state["init_net"])
    except Exception as e:  # missing/unexpected entries, shapes
        first = str(e).splitlines()[0].strip()
        raise CheckpointError(f"--checkpoint {path}: its networks do not load ({first})") from e
    return state


def open_data_cache(path: Path, args: Args, device: torch.device) -> dict:
    """The data {robot count: ...} of the cache at `path`, {} for a fresh path. A file that is not flow_opt's data
    cache (a checkpoint, any other torch file, text, ...) and a cache made with other data parameters (DATA_ARGS,
    each listed) are refused with one DatasetError line, and the file is left as it is."""
    if not path.exists():
        return {}
    state = read_torch_file(path, "--data-path", DatasetError, device)
    if not (isinstance(state, dict) and state.get("script") == "flow_opt" and state.get("content") == DATA_CACHE
            and isinstance(state.get("data"), dict) and isinstance(state.get("args"), dict)):
        raise DatasetError(f"--data-path {path} is not a flow_opt data cache ({describe(state)}); it was left as it "
                           "is: give a new path")
    differ = differences(args, state["args"], DATA_ARGS, "cache")
    if differ:
        raise DatasetError(f"--data-path {path} was made with other data parameters: {differ}; give a new "
                           "--data-path or the cache's values")
    return state["data"]


def save_data_cache(path: Path, args: Args, data: dict) -> None:
    """Write flow_opt's data cache (atomically) with the data parameters it was made with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"script": "flow_opt", "content": DATA_CACHE, "seed": args.seed, "data": data,
                           "args": {k: getattr(args, k) for k in DATA_ARGS}})


def build_networks(args: Args, device: torch.device) -> tuple:
    nv = args.order + 1
    return (FlowDiT(nv, args.hidden_dim, args.depth, args.heads, args.workspace, args.flow_residual).to(device),
            InitNet(nv, args.hidden_dim, args.heads, args.workspace).to(device))


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


# --- main: data -> flow model -> init network -> evaluation table --------------------------------------------------
def main(args: Args) -> dict:
    # every input checked before any work: flags, scenario geometry, the checkpoint, the data cache
    check_args(args)
    if args.cudagraphs:  # CUDA graphs are torch.compile's "reduce-overhead" mode: --cudagraphs implies --compile
        args = replace(args, compile=True)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    state = load_checkpoint(args.checkpoint, args, device) if args.checkpoint else None
    cache = Path(args.data_path) if args.data_path else None  # None: runs/<run>/data.pt, a fresh file
    data = open_data_cache(cache, args, device) if cache is not None and not args.evaluate else {}

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    world = World.from_args(args)
    run_dir = fresh_run_dir(f"multirobot__{args.exp_name}__{args.seed}__{int(time.time())}")
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters",
                    "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    checkpoint_path = run_dir / f"{args.exp_name}.pt"
    stages, metrics = {}, {}  # stage -> (wall-clock, process CPU time) [s]; the latter is robust to a shared machine

    def clocked(stage: str, t0: float, c0: float) -> None:
        stages[stage] = (time.perf_counter() - t0, time.process_time() - c0)

    if not args.evaluate:
        # 1) data: the centralized optimizer run to convergence from perturbed straight lines
        t0, c0 = time.perf_counter(), time.process_time()
        cache = cache or run_dir / "data.pt"
        missing = [n for n in dict.fromkeys(args.train_robots) if n not in data or data[n]["coefs"].shape[0] == 0]
        for n in missing:
            data[n] = generate_data(n, args, world, generator, device)
            print(f"data: N={n}: {data[n]['coefs'].shape[0]} solved trajectories "
                  f"({data[n]['solved_fraction'].item():.1%} of scenarios)", flush=True)
        if missing:  # the file is a fresh path or flow_opt's cache made with these data parameters (checked above)
            save_data_cache(cache, args, data)
        clocked("data", t0, c0)
        for n in args.train_robots:
            if data[n]["coefs"].shape[0] == 0:
                raise ScenarioError(f"the optimizer solved none of the N={n} training scenarios; raise --data-iters")

    if state is not None:
        norm = state["norm"]
    else:  # residual scale of the data; multiplier scale from the solver's rho (one number each)
        res = torch.cat([to_tokens(data[n]["coefs"], data[n], args.order, 1.0).flatten() for n in args.train_robots])
        norm = {"coef_scale": res.std().clamp(min=1e-3).item(), "lam_scale": 1.0}
    model, init_net = build_networks(args, device)
    if state is not None:  # its network settings equal these (load_checkpoint)
        model.load_state_dict(state["model"])
        init_net.load_state_dict(state["init_net"])

    def save() -> None:
        if args.save_model:
            save_checkpoint(checkpoint_path, {"script": "flow_opt", "model": model.state_dict(),
                                              "init_net": init_net.state_dict(), "norm": norm, "args": asdict(args)})

    last = [time.perf_counter(), 0]  # time and step of the last log

    def log(what: str, offset: int) -> Callable:
        def logged(step: int, losses: dict, nonfinite: torch.Tensor) -> None:  # the only host syncs of training
            g = offset + step
            if nonfinite.item():
                raise NonFiniteLossError(f"non-finite {what} loss before step {g}; training stopped" + (
                    f", last good checkpoint kept at {checkpoint_path}" if checkpoint_path.exists() else ""))
            sps = (g - last[1]) / (time.perf_counter() - last[0])
            for name, value in losses.items():
                writer.add_scalar(f"losses/{name}", value.item(), g)
                metrics[f"losses/{name}"] = value.item()
            writer.add_scalar("charts/SPS", sps, g)
            progress.update(g, sps=sps, **{k: v.item() for k, v in list(losses.items())[:3]})
            last[:] = time.perf_counter(), g
            save()
        return logged

    if not args.evaluate:
        progress = Progress(args.total_steps + args.init_steps)
        solvers = {n: TrajectorySolver(n, args.num_obstacles, world, args, device=device) for n in args.train_robots}
        t0, c0 = time.perf_counter(), time.process_time()  # 2) flow model: conditional flow matching
        train_flow(model, data, solvers, norm, args, generator, log("flow-matching", 0))
        clocked("flow", t0, c0)
        t0, c0 = time.perf_counter(), time.process_time()  # 3) init network: through the unrolled safety filter
        train_init_net(init_net, model, data, solvers, norm, args, generator, log("init-network", args.total_steps))
        clocked("init", t0, c0)
        progress.close()
        stages["total"] = tuple(map(sum, zip(*stages.values())))
        print("training wall-clock / process CPU time: " + ", ".join(f"{k} {w:.1f}s / {c:.1f}s" for k, (w, c) in
                                                                     stages.items()), flush=True)
        for k, (wall, cpu) in stages.items():
            writer.add_scalar(f"charts/time_{k}_s", wall, 0)
            writer.add_scalar(f"charts/cpu_time_{k}_s", cpu, 0)
            metrics[f"train/time_{k}_s"], metrics[f"train/cpu_time_{k}_s"] = wall, cpu
        save()

    # 4) evaluation on held-out scenarios (a seed the training data never used)
    model.eval()
    init_net.eval()
    rows = []
    for n in args.eval_robots:
        rows.append(evaluate(model, init_net, norm, n, args, world, device, seed=EVAL_SEED + args.seed)[0])
        for k, v in rows[-1].items():
            writer.add_scalar(f"eval/N{n}/{k}", v, 0)
            metrics[f"eval/N{n}/{k}"] = v
        row = rows[-1]
        print(f"eval N={n}: certified success {row['success']:.2f} of {row['scenarios']} scenarios, collisions "
              f"{row['collision_before_sf']:.2f} -> {row['collision_after_sf']:.2f}, {row['t_flowopt_s']:.3f}s per "
              f"batch, median {row['t_median_flowopt_s']:.3f}s per instance", flush=True)
    if rows:
        with open(run_dir / "evaluation.csv", "w") as f:
            f.write(",".join(rows[0]) + "\n" + "\n".join(",".join(str(v) for v in row.values()) for row in rows) + "\n")
    writer.close()
    return metrics


class Progress:
    """tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, dynamic_ncols=True) if sys.stdout.isatty() else None
        self.total, self.last = total, 0

    def update(self, step: int, **postfix) -> None:
        text = {k: f"{v:.3g}" for k, v in postfix.items()}
        if self.bar is None:
            print(f"step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in text.items()), flush=True)
        else:
            self.bar.update(step - self.last)
            self.bar.set_postfix(text, refresh=False)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
