"""Regenerate the embedded Minari datasets that ship with flowrl.

Every dataset lives under the `flowrl/` namespace in this folder (a Minari datasets root), so
`minari.load_dataset("flowrl/reacher/mixed-v0")` works with MINARI_DATASETS_PATH pointing here,
and every algorithm script finds it by id without a download. Each dataset is made by a scripted
behaviour policy, deterministically from a seed: the same seed gives the same arrays. Each stores
its evaluation env spec and reference min/max scores (random policy / scripted expert), so
`minari.get_normalized_score` and `dataset.recover_environment(eval_env=True)` work.

Datasets (recipes, sizes and the returns of each behaviour: docs/datasets.md):
  flowrl/reacher/mixed-v0     offline RL default. Reacher-v5, 3000 episodes: 1/3 Jacobian-transpose
                              expert + N(0, 0.1), 1/3 expert + N(0, 0.75), 1/3 uniform random.
  flowrl/pointmaze/wander-v0  offline RL with headroom (D4RL-maze2d style). The medium maze with one
                              fixed goal and a sparse reward; the data wanders between random cells
                              and never aims at the goal, so a policy has to be stitched together.
  flowrl/pointmaze/demos-v0   demonstrations. A PointMaze with pillars, so that many routes between
                              two cells are equally short; a BFS + PD controller follows one
                              shortest route drawn at random per episode (multimodal demos).

Usage:
  python datasets/make_datasets.py            # regenerate all datasets in datasets/
  python datasets/make_datasets.py --check    # regenerate into a temp dir, compare with the committed copies
  python datasets/make_datasets.py --only flowrl/reacher/mixed-v0 --out /tmp/minari
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# Behaviour policies
# ----------------------------------------------------------------------------------------------
REACHER_LINKS = (0.1, 0.11)  # shoulder->elbow, elbow->fingertip (reacher.xml)


def reacher_expert(obs: np.ndarray, k: float = 20.0, kd: float = 0.07) -> np.ndarray:
    """Jacobian-transpose controller: tau = J(q)^T k (target - fingertip) - kd * qvel.

    Reacher-v5 obs: [cos q1, cos q2, sin q1, sin q2, target_xy, qvel (2), fingertip - target (2)].
    Works on a batch of observations (leading dims) and returns actions clipped to [-1, 1].
    """
    l1, l2 = REACHER_LINKS
    c1, c2, s1, s2 = obs[..., 0], obs[..., 1], obs[..., 2], obs[..., 3]
    s12, c12 = s1 * c2 + c1 * s2, c1 * c2 - s1 * s2
    ex, ey = -obs[..., 8], -obs[..., 9]  # target - fingertip
    tau1 = k * ((-l1 * s1 - l2 * s12) * ex + (l1 * c1 + l2 * c12) * ey) - kd * obs[..., 6]
    tau2 = k * ((-l2 * s12) * ex + (l2 * c12) * ey) - kd * obs[..., 7]
    return np.clip(np.stack([tau1, tau2], axis=-1), -1.0, 1.0)


# A 7x7 maze whose four pillars make many equally short routes between two cells.
PILLAR_MAZE = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 0, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 0, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1],
]


def random_shortest_route(maze_map, start, goal, rng: np.random.Generator) -> list:
    """One shortest grid route from `start` to `goal` (row, col cells), drawn uniformly among all."""
    rows, cols = len(maze_map), len(maze_map[0])
    dist = {tuple(goal): 0}
    frontier = [tuple(goal)]
    while frontier:  # BFS from the goal: dist[c] = steps from cell c to the goal
        nxt = []
        for r, c in frontier:
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                n = (r + dr, c + dc)
                if 0 <= n[0] < rows and 0 <= n[1] < cols and maze_map[n[0]][n[1]] != 1 and n not in dist:
                    dist[n] = dist[(r, c)] + 1
                    nxt.append(n)
        frontier = nxt
    # count shortest routes from each cell, then walk choosing successors in proportion to counts
    count = {tuple(goal): 1}
    for cell in sorted(dist, key=dist.get)[1:]:
        count[cell] = sum(count.get(n, 0) for n in _neighbours(cell) if dist.get(n) == dist[cell] - 1)
    route, cell = [tuple(start)], tuple(start)
    while cell != tuple(goal):
        succ = [n for n in _neighbours(cell) if dist.get(n) == dist[cell] - 1]
        p = np.array([count[n] for n in succ], dtype=np.float64)
        cell = succ[rng.choice(len(succ), p=p / p.sum())]
        route.append(cell)
    return route


def _neighbours(cell):
    r, c = cell
    return [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]


class MazeDemonstrator:
    """Follows a random shortest route through cell centres with a saturating PD controller."""

    def __init__(self, maze, rng: np.random.Generator, kp: float = 10.0, kd: float = 1.0, switch_radius: float = 0.3):
        self.maze, self.rng, self.kp, self.kd, self.switch_radius = maze, rng, kp, kd, switch_radius

    def reset(self, obs: dict) -> None:
        start = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(obs["achieved_goal"]))
        goal = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(obs["desired_goal"]))
        route = random_shortest_route(self.maze.maze_map, start, goal, self.rng)
        self.waypoints = [self.maze.cell_rowcol_to_xy(np.array(c)) for c in route[1:-1]] + [obs["desired_goal"]]

    def __call__(self, obs: dict) -> np.ndarray:
        pos, vel = obs["observation"][:2], obs["observation"][2:]
        if len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - pos) < self.switch_radius:
            self.waypoints.pop(0)
        return np.clip(self.kp * (self.waypoints[0] - pos) - self.kd * vel, -1.0, 1.0)


class MazeWanderer(MazeDemonstrator):
    """Ignores the task's goal: heads for a random cell, then another, until the episode ends (maze2d-style data)."""

    def reset(self, obs: dict) -> None:
        self._new_route(tuple(int(v) for v in self.maze.cell_xy_to_rowcol(obs["achieved_goal"])))

    def _new_route(self, start) -> None:
        cells = [(r, c) for r, row in enumerate(self.maze.maze_map) for c, v in enumerate(row) if v != 1 and (r, c) != start]
        goal = cells[self.rng.integers(len(cells))]
        route = random_shortest_route(self.maze.maze_map, start, goal, self.rng)
        self.waypoints = [self.maze.cell_rowcol_to_xy(np.array(c)) for c in route[1:]]

    def __call__(self, obs: dict) -> np.ndarray:
        pos = obs["observation"][:2]
        if len(self.waypoints) == 1 and np.linalg.norm(self.waypoints[0] - pos) < self.switch_radius:
            self._new_route(tuple(int(v) for v in self.maze.cell_xy_to_rowcol(pos)))
        return super().__call__(obs)


# ----------------------------------------------------------------------------------------------
# Episode collection
# ----------------------------------------------------------------------------------------------
@dataclass
class Episode:
    observations: object  # (T+1, obs_dim) array, or a dict of such arrays
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,)
    truncations: np.ndarray  # (T,)
    seed: int


def rollout(env: gym.Env, policy: Callable, seed: int, reset: Callable | None = None) -> Episode:
    obs, _ = env.reset(seed=seed)
    if reset is not None:
        reset(obs)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    done = False
    while not done:
        action = np.asarray(policy(obs), dtype=np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        done = terminated or truncated
    if isinstance(observations[0], dict):
        stacked = {k: np.stack([o[k] for o in observations]).astype(np.float32) for k in observations[0]}
    else:
        stacked = np.stack(observations).astype(np.float32)
    return Episode(stacked, np.stack(actions), np.asarray(rewards, np.float32), np.asarray(terms), np.asarray(truncs), seed)


def mean_return(episodes: list) -> tuple:
    returns = np.array([float(e.rewards.astype(np.float64).sum()) for e in episodes])
    return float(returns.mean()), float(returns.std())


def noisy(policy: Callable, std: float, rng: np.random.Generator, low: float = -1.0, high: float = 1.0) -> Callable:
    return lambda obs: np.clip(policy(obs) + rng.normal(0.0, std, size=2), low, high)


def uniform(rng: np.random.Generator, dim: int = 2) -> Callable:
    return lambda obs: rng.uniform(-1.0, 1.0, size=dim)


# ----------------------------------------------------------------------------------------------
# Dataset recipes: each returns (env_id or spec, episodes, ref_min, ref_max, description, extras)
# ----------------------------------------------------------------------------------------------
REF_EPISODES = 100  # episodes used to measure the reference scores


def reacher_mix(seed: int, n_episodes: int, mix: list) -> tuple:
    """`mix` = [(name, fraction, action noise std or None for uniform random)]."""
    env = gym.make("Reacher-v5")
    rng = np.random.default_rng(seed)
    episodes, behaviour_returns = [], {}
    start = seed * 1_000_000
    for name, frac, std in mix:
        n = int(round(frac * n_episodes))
        policy = uniform(rng) if std is None else (reacher_expert if std == 0 else noisy(reacher_expert, std, rng))
        eps = [rollout(env, policy, start + len(episodes) + i) for i in range(n)]
        behaviour_returns[name] = mean_return(eps) + (n,)
        episodes += eps
    # reference scores on held-out seeds: uniform random (min) and the noiseless expert (max)
    ref_seed = start + 900_000
    ref_min = mean_return([rollout(env, uniform(rng), ref_seed + i) for i in range(REF_EPISODES)])
    ref_max = mean_return([rollout(env, reacher_expert, ref_seed + i) for i in range(REF_EPISODES)])
    return "Reacher-v5", episodes, ref_min[0], ref_max[0], behaviour_returns, {"random": ref_min, "expert": ref_max}


def make_reacher_mixed(seed: int = 0):
    mix = [("expert+N(0,0.1)", 1 / 3, 0.1), ("expert+N(0,0.75)", 1 / 3, 0.75), ("uniform random", 1 / 3, None)]
    env_id, episodes, ref_min, ref_max, beh, refs = reacher_mix(seed, 3000, mix)
    desc = ("Reacher-v5, 3000 episodes (150k transitions): one third each of a Jacobian-transpose expert "
            "with N(0,0.1) action noise, the expert with N(0,0.75) noise, and uniform random actions. "
            "ref_min_score = uniform random policy, ref_max_score = noiseless expert.")
    return env_id, episodes, ref_min, ref_max, desc, beh, refs


POINTMAZE_SPEC = dict(maze_map=PILLAR_MAZE, continuing_task=False, reset_target=False)
POINTMAZE_MAX_STEPS = 300


def pointmaze_env() -> gym.Env:
    """Made from a spec, not the registry, so the spec stored in the dataset recreates it anywhere."""
    spec = gym.envs.registration.EnvSpec(
        id="PointMaze_Pillars-v3", entry_point="gymnasium_robotics.envs.maze.point_maze:PointMazeEnv",
        max_episode_steps=POINTMAZE_MAX_STEPS, kwargs=POINTMAZE_SPEC)
    return gym.make(spec)


def make_pointmaze_demos(seed: int = 2):
    env = pointmaze_env()
    rng = np.random.default_rng(seed)
    demo = MazeDemonstrator(env.unwrapped.maze, rng)
    start = seed * 1_000_000
    policy = lambda obs: np.clip(demo(obs) + rng.normal(0.0, 0.1, size=2), -1.0, 1.0)  # noqa: E731
    episodes = [rollout(env, policy, start + i, reset=demo.reset) for i in range(1000)]
    beh = {"BFS+PD demonstrator + N(0,0.1)": mean_return(episodes) + (len(episodes),)}
    ref_seed = start + 900_000
    ref_min = mean_return([rollout(env, uniform(rng), ref_seed + i) for i in range(REF_EPISODES)])
    ref_max = mean_return([rollout(env, demo, ref_seed + i, reset=demo.reset) for i in range(REF_EPISODES)])
    desc = ("PointMaze with a 7x7 pillar map (continuing_task=False: the episode ends at the goal; sparse "
            "reward 1 on success, so the return is the success). 1000 episodes with random start and goal "
            "cells; a BFS + PD controller follows one shortest route drawn uniformly among all shortest "
            "routes, with N(0,0.1) action noise. ref_min_score = uniform random, ref_max_score = the "
            "noiseless demonstrator.")
    return env.spec, episodes, ref_min[0], ref_max[0], desc, beh, {"random": ref_min, "demonstrator": ref_max}


# D4RL-maze2d-style offline RL: the medium maze with ONE fixed goal cell ("g"); the data wanders
# between random cells and never aims at the goal, so the policy must be stitched from pieces.
WANDER_MAZE = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 0, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, "g", 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]
WANDER_MAX_STEPS = 400


def make_pointmaze_wander(seed: int = 3):
    spec = gym.envs.registration.EnvSpec(
        id="PointMaze_MediumFixedGoal-v3", entry_point="gymnasium_robotics.envs.maze.point_maze:PointMazeEnv",
        max_episode_steps=WANDER_MAX_STEPS, kwargs=dict(maze_map=WANDER_MAZE, continuing_task=False, reset_target=False))
    env = gym.make(spec)
    rng = np.random.default_rng(seed)
    wander, demo = MazeWanderer(env.unwrapped.maze, rng), MazeDemonstrator(env.unwrapped.maze, rng)
    start = seed * 1_000_000
    policy = lambda obs: np.clip(wander(obs) + rng.normal(0.0, 0.3, size=2), -1.0, 1.0)  # noqa: E731
    episodes = [rollout(env, policy, start + i, reset=wander.reset) for i in range(300)]
    beh = {"wanderer (random cells) + N(0,0.3)": mean_return(episodes) + (len(episodes),)}
    ref_seed = start + 900_000
    ref_min = mean_return([rollout(env, uniform(rng), ref_seed + i) for i in range(REF_EPISODES)])
    ref_max = mean_return([rollout(env, demo, ref_seed + i, reset=demo.reset) for i in range(REF_EPISODES)])
    desc = ("PointMaze medium maze (D4RL maze2d layout) with one fixed goal cell; sparse reward 1 at the goal, "
            "the episode ends there (so the return is the success), 400 steps at most. 300 episodes of a "
            "wanderer that follows shortest routes to random cells, ignoring the goal, with N(0,0.3) action "
            "noise. ref_min_score = uniform random, ref_max_score = a BFS + PD controller heading for the goal.")
    return spec, episodes, ref_min[0], ref_max[0], desc, beh, {"random": ref_min, "goal-directed controller": ref_max}


RECIPES = {
    "flowrl/reacher/mixed-v0": make_reacher_mixed,
    "flowrl/pointmaze/wander-v0": make_pointmaze_wander,
    "flowrl/pointmaze/demos-v0": make_pointmaze_demos,
}


# ----------------------------------------------------------------------------------------------
# Writing and checking
# ----------------------------------------------------------------------------------------------
def write_dataset(dataset_id: str, root: Path, verbose: bool = True):
    import minari
    from minari.data_collector import EpisodeBuffer

    env, episodes, ref_min, ref_max, desc, beh, refs = RECIPES[dataset_id]()
    env_spec = env if isinstance(env, gym.envs.registration.EnvSpec) else gym.spec(env)
    probe = gym.make(env_spec)
    obs_space = _float32_space(probe.observation_space)
    buffers = [
        EpisodeBuffer(id=i, seed=e.seed, observations=e.observations, actions=e.actions, rewards=e.rewards,
                      terminations=e.terminations, truncations=e.truncations)
        for i, e in enumerate(episodes)
    ]
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    path = root / dataset_id
    if path.exists():
        shutil.rmtree(path)
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id, buffer=buffers, env=env_spec, eval_env=env_spec, observation_space=obs_space,
        action_space=probe.action_space, ref_min_score=ref_min, ref_max_score=ref_max, description=desc,
        algorithm_name="scripted (datasets/make_datasets.py)", author="flowrl", code_permalink="datasets/make_datasets.py",
        data_format="hdf5",
    )
    _repack(root / dataset_id / "data" / "main_data.hdf5")
    if verbose:
        n_steps = sum(len(e.actions) for e in episodes)
        print(f"{dataset_id}: {len(episodes)} episodes, {n_steps} steps, ref_min {ref_min:.3f}, ref_max {ref_max:.3f}")
        for name, (mean, std, n) in beh.items():
            print(f"  behaviour {name:>28s}: {n:5d} episodes, return {mean:8.3f} +- {std:.3f}")
        for name, (mean, std) in refs.items():
            print(f"  reference {name:>28s}: {REF_EPISODES:5d} episodes, return {mean:8.3f} +- {std:.3f}")


def _repack(path: Path) -> None:
    """Rewrite Minari's HDF5 file with compact per-episode datasets.

    Minari writes every per-episode array as a resizable chunked dataset, whose chunk allocation
    costs more than the data itself for 50-step episodes. Readers do not care about the layout,
    so we store small arrays inside their object headers (HDF5 "compact" layout, < 64 KiB) and
    use the newest file format, which roughly halves the file.
    """
    import h5py

    tmp = path.with_suffix(".repack")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver="latest") as dst:
        def copy(group_in, group_out):
            group_out.attrs.update(group_in.attrs)
            for name, item in group_in.items():
                if isinstance(item, h5py.Group):
                    copy(item, group_out.create_group(name))
                    continue
                data = np.ascontiguousarray(item[()])
                if data.nbytes < 60_000 and data.dtype.kind in "biuf":
                    space = h5py.h5s.create_simple(data.shape) if data.shape else h5py.h5s.create(h5py.h5s.SCALAR)
                    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                    dcpl.set_layout(h5py.h5d.COMPACT)
                    h5py.h5d.create(group_out.id, name.encode(), h5py.h5t.py_create(data.dtype), space, dcpl=dcpl).write(
                        h5py.h5s.ALL, h5py.h5s.ALL, data)
                else:
                    group_out.create_dataset(name, data=data)
                group_out[name].attrs.update(item.attrs)

        copy(src, dst)
    os.replace(tmp, path)


def _float32_space(space: gym.Space) -> gym.Space:
    """Store observations as float32 (halves the files; every script trains in float32)."""
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({k: _float32_space(s) for k, s in space.spaces.items()})
    return gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)


def compare(dataset_id: str, ref_root: Path, new_root: Path) -> list:
    """Differences between two copies of a dataset: arrays, env spec and reference scores."""
    import minari

    a, b = (minari.MinariDataset(root / dataset_id / "data") for root in (ref_root, new_root))
    problems = []
    for key in ("env_spec", "eval_env_spec", "ref_min_score", "ref_max_score", "total_episodes", "total_steps"):
        if a.storage.metadata.get(key) != b.storage.metadata.get(key):
            problems.append(f"metadata {key}: {a.storage.metadata.get(key)!r} != {b.storage.metadata.get(key)!r}")
    if problems:
        return problems
    for ea, eb in zip(a.iterate_episodes(), b.iterate_episodes()):
        for field in ("observations", "actions", "rewards", "terminations", "truncations"):
            xa, xb = getattr(ea, field), getattr(eb, field)
            xa, xb = (xa, xb) if isinstance(xa, dict) else ({"": xa}, {"": xb})
            for k in xa:
                if xa[k].shape != xb[k].shape or not np.array_equal(xa[k], xb[k]):
                    return problems + [f"episode {ea.id}: {field}{'.' + k if k else ''} differs"]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=list(RECIPES), help="dataset ids to make")
    parser.add_argument("--out", type=Path, default=HERE, help="Minari datasets root to write into")
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    args = parser.parse_args()
    unknown = [d for d in args.only if d not in RECIPES]
    if unknown:
        print(f"error: unknown dataset id(s) {unknown}; known: {list(RECIPES)}", file=sys.stderr)
        return 2
    if not args.check:
        for dataset_id in args.only:
            write_dataset(dataset_id, args.out)
        return 0
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for dataset_id in args.only:
            if not (args.out / dataset_id / "data").exists():
                print(f"FAIL {dataset_id}: no committed copy under {args.out}")
                failed = True
                continue
            write_dataset(dataset_id, Path(tmp), verbose=False)
            problems = compare(dataset_id, args.out, Path(tmp))
            print(("FAIL " if problems else "ok   ") + dataset_id + "".join("\n     " + p for p in problems))
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
