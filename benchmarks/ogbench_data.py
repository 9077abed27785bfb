"""Generate OGBench manipulation datasets locally, with the scripted oracles the published ones were made with.

OGBench (Park et al., "OGBench: Benchmarking Offline Goal-Conditioned RL", arXiv:2410.20092) publishes its
datasets as .npz files on a web server; where that server cannot be reached, this script rebuilds them from
the `ogbench` package, which ships the environments (`ogbench.manipspace`) and the scripted data-collection
oracles (`ogbench.manipspace.oracles`). It follows the protocol of the official generator
(github.com/seohongpark/ogbench, `data_gen_scripts/generate_manipspace.py` and the dataset commands in
`data_gen_scripts/commands.sh`); the code here is our own.

Protocol (what one episode is):
  * env: `gymnasium.make(<env>, terminate_at_goal=False, mode='data_collection',
    max_episode_steps=episode_length + 1)`; reset randomises the arm, the objects and a first target.
  * play datasets: the non-Markovian plan oracles (`CubePlanOracle`, `ButtonPlanOracle`, `DrawerPlanOracle`,
    `WindowPlanOracle`) with noise 0.1 and noise smoothing 0.5 (temporally correlated noise on the plan);
    noisy datasets: the closed-loop Markov oracles (min_norm 0.4; the scene's cube oracle with max_step 100)
    plus Gaussian action noise of scale xi * [1, 1, 1, 3, 10], xi ~ U(0, 0.1) drawn once per episode, and a
    uniformly random action with probability 0.1 (cube, scene) or 0.2 (puzzle). Puzzle oracles keep the
    gripper closed. Actions are clipped to [-1, 1].
  * the oracle in charge follows `info['privileged/target_task']`; when it reports done, the env draws a
    new target (`set_new_target(p_stack)`, p_stack 0 for cube-single, U(0, 0.25) per episode for
    cube-double, U(0.05, 0.35) triple, U(0.1, 0.5) quadruple, 0.5 otherwise) and the matching oracle takes
    over; the episode never ends at a goal, only at the time limit.
  * rows: one per env step, episode_length + 1 of them (the published datasets: 1001): the observation
    before the step, the action, terminals (True on the episode's last row only), and the physics state of
    that observation (`info['prev_qpos']`, `info['prev_qvel']`, puzzle/scene `info['prev_button_states']`).
    `ogbench.utils.load_dataset` drops each episode's last row as a transition start (its next observation
    would be the next episode's first), so an episode gives episode_length transitions.
  * scene: an episode in which the cube leaves the visible area (y >= 0.29, or y <= -0.3 outside the drawer
    height 0.06-0.08) is discarded and redrawn, as in the official generator.
  * files: `<out>/<name>.npz` (the training episodes) and `<out>/<name>-val.npz` (the validation episodes),
    np.savez_compressed; dtypes float32 (observations, actions, qpos, qvel), bool (terminals),
    int64 (button_states), what `ogbench.make_env_and_datasets(name, dataset_dir=out)` reads. The
    `-singletask-taskN` variants relabel rewards from qpos / button_states at load time, so one file serves
    all five tasks.

Seeding, the one difference from the official generator (docs/parity.md, "Data"):
  the official generator never seeds (its --seed flag is unused; the env's RNG comes from OS entropy at
  the first reset, the oracles draw from numpy's global RNG, and the random actions of the noisy datasets
  from a new unseeded Box at every `env.action_space` access). Here episode i of a split (0 = train,
  1 = val) has its own seed sequence np.random.SeedSequence([seed, split, i]), which seeds the env
  (`reset(seed=...)`), numpy's global RNG and one persistent action space; the draws happen in the
  official loop's order. So the files are a function of (--seed, the episode counts, --episode-length),
  do not depend on --workers, a smaller dataset's training episodes are a prefix of a larger one's, and
  `--compare-official PATH` checks that the official script, seeded the same way, writes identical arrays.
  What cannot be checked here: the published files themselves (no network), so statistics of the real data
  are not compared. visual-* datasets (rendered pixels) are not supported.

Usage:
  python benchmarks/ogbench_data.py --dataset cube-single-play-v0 --num-episodes 300 --val-episodes 30 \\
      --seed 0 --out ~/.ogbench/data-generated --workers 2
  python fql.py --env-id cube-single-play-singletask-task2-v0 --ogbench-dataset-dir ~/.ogbench/data-generated
  python benchmarks/ogbench_data.py --list       # supported datasets and their published sizes
`--check` loads the result through `ogbench.make_env_and_datasets` for the five single tasks and prints the
shapes and the fraction of transitions at which each task is solved.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Recipe:
    env_id: str  # the goal-conditioned env the data is collected in
    oracle: str  # "play" (plan oracles) or "noisy" (Markov oracles + action noise)
    episodes: int  # training episodes of the published dataset (validation: episodes // 10)
    p_random_action: float  # probability of a uniformly random action (noisy datasets only)


# data_gen_scripts/commands.sh: every state-based manipulation dataset, with its published size
RECIPES = {
    "cube-single-play-v0": Recipe("cube-single-v0", "play", 1000, 0.0),
    "cube-double-play-v0": Recipe("cube-double-v0", "play", 1000, 0.0),
    "cube-triple-play-v0": Recipe("cube-triple-v0", "play", 3000, 0.0),
    "cube-quadruple-play-v0": Recipe("cube-quadruple-v0", "play", 5000, 0.0),
    "cube-single-noisy-v0": Recipe("cube-single-v0", "noisy", 1000, 0.1),
    "cube-double-noisy-v0": Recipe("cube-double-v0", "noisy", 1000, 0.1),
    "cube-triple-noisy-v0": Recipe("cube-triple-v0", "noisy", 3000, 0.1),
    "cube-quadruple-noisy-v0": Recipe("cube-quadruple-v0", "noisy", 5000, 0.1),
    "scene-play-v0": Recipe("scene-v0", "play", 1000, 0.0),
    "scene-noisy-v0": Recipe("scene-v0", "noisy", 1000, 0.1),
    "puzzle-3x3-play-v0": Recipe("puzzle-3x3-v0", "play", 1000, 0.0),
    "puzzle-4x4-play-v0": Recipe("puzzle-4x4-v0", "play", 1000, 0.0),
    "puzzle-4x5-play-v0": Recipe("puzzle-4x5-v0", "play", 3000, 0.0),
    "puzzle-4x6-play-v0": Recipe("puzzle-4x6-v0", "play", 5000, 0.0),
    "puzzle-3x3-noisy-v0": Recipe("puzzle-3x3-v0", "noisy", 1000, 0.2),
    "puzzle-4x4-noisy-v0": Recipe("puzzle-4x4-v0", "noisy", 1000, 0.2),
    "puzzle-4x5-noisy-v0": Recipe("puzzle-4x5-v0", "noisy", 3000, 0.2),
    "puzzle-4x6-noisy-v0": Recipe("puzzle-4x6-v0", "noisy", 5000, 0.2),
}
PUBLISHED_EPISODE_LENGTH = 1000  # transitions per episode (1001 rows, max_episode_steps=1001)
PLAN_NOISE, PLAN_NOISE_SMOOTHING = 0.1, 0.5  # play: noise on the plan oracle's keyframe interpolation
MARKOV_NOISE, MARKOV_MIN_NORM = 0.1, 0.4  # noisy: xi ~ U(0, MARKOV_NOISE); minimum relative-position norm
MARKOV_NOISE_SCALE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])  # per action dim (x, y, z, yaw, gripper)
SPLITS = {"train": 0, "val": 1}


class UsageError(Exception):
    """Bad command-line input: reported as one line, before any work."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cube-single-play-v0", help="OGBench dataset name (--list shows them)")
    p.add_argument("--num-episodes", type=int, default=None,
                   help="training episodes (default: the published count, 1000 for cube-single-play-v0)")
    p.add_argument("--val-episodes", type=int, default=None,
                   help="validation episodes, in <name>-val.npz (default: num_episodes // 10, at least 1)")
    p.add_argument("--episode-length", type=int, default=PUBLISHED_EPISODE_LENGTH,
                   help="transitions per episode; each episode has one row more (default: the published 1000)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; episode i of a split is seeded from (seed, split, i)")
    p.add_argument("--out", default="~/.ogbench/data-generated", help="folder the two .npz files are written to")
    p.add_argument("--workers", type=int, default=1, help="processes (the files do not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files of the same name")
    p.add_argument("--check", action="store_true",
                   help="afterwards load the files through ogbench.make_env_and_datasets and print statistics")
    p.add_argument("--compare-official", default=None, metavar="PATH",
                   help="afterwards run the official data_gen_scripts/generate_manipspace.py (a clone's) with the same "
                        "per-episode seeds and compare its files with ours (needs absl-py; val = num_episodes // 10)")
    p.add_argument("--list", action="store_true", help="list the supported datasets and exit")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[Recipe, int, int, Path, Path]:
    """Every check on the input, before any work; returns (recipe, train episodes, val episodes, paths)."""
    if args.dataset not in RECIPES:
        hint = " (visual datasets are not supported)" if args.dataset.startswith("visual-") else ""
        raise UsageError(f"unknown --dataset {args.dataset!r}{hint}; supported: {', '.join(RECIPES)}")
    recipe = RECIPES[args.dataset]
    n_train = recipe.episodes if args.num_episodes is None else args.num_episodes
    n_val = max(1, n_train // 10) if args.val_episodes is None else args.val_episodes
    if n_train < 1:
        raise UsageError(f"--num-episodes must be >= 1, got {n_train}")
    if n_val < 1:
        raise UsageError(f"--val-episodes must be >= 1 (ogbench loads <name>-val.npz), got {n_val}")
    if args.episode_length < 1:
        raise UsageError(f"--episode-length must be >= 1, got {args.episode_length}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.compare_official is not None:
        if not Path(args.compare_official).is_file():
            raise UsageError(f"--compare-official {args.compare_official!r} is not a file "
                             f"(expected data_gen_scripts/generate_manipspace.py)")
        if importlib.util.find_spec("absl") is None:
            raise UsageError("--compare-official needs absl-py (pip install absl-py), which the official script uses")
        if n_train < 10 or n_val != n_train // 10:
            raise UsageError(f"--compare-official needs --num-episodes >= 10 and --val-episodes = num_episodes // 10 "
                             f"(the official split), got {n_train} and {n_val}")
    out = Path(os.path.expanduser(args.out))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    paths = out / f"{args.dataset}.npz", out / f"{args.dataset}-val.npz"
    existing = [str(q) for q in paths if q.exists()]
    if existing and not args.overwrite:
        raise UsageError(f"{' and '.join(existing)} already {'exist' if len(existing) > 1 else 'exists'}; "
                         f"pass --overwrite to replace")
    return recipe, n_train, n_val, *paths


# ----------------------------------------------------------------------------------------------- collection
def make_env(recipe: Recipe, episode_length: int):
    import gymnasium

    quiet_env_warnings()

    import ogbench.manipspace  # noqa: F401  (registers the envs)

    env = gymnasium.make(recipe.env_id, terminate_at_goal=False, mode="data_collection",
                         max_episode_steps=episode_length + 1)
    return persistent_action_space(env)


def quiet_env_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=r".*DISPLAY environment variable")  # GLFW probed at import, unused
    warnings.filterwarnings("ignore", message=r".*precision lowered by casting")  # the env's float64 Box bounds


def persistent_action_space(env):
    """Give the wrapper one action space that keeps its RNG.

    ManipSpaceEnv.action_space is a property that builds a new Box at every access, so
    `env.action_space.sample()` (the noisy datasets' random actions) draws from a fresh, unseeded RNG each
    time and cannot be seeded. The same Box (uniform on [-1, 1]^5, float32), stored once, can.
    """
    import gymnasium

    env.action_space = gymnasium.spaces.Box(low=-np.ones(5, np.float32), high=np.ones(5, np.float32), dtype=np.float32)
    return env


def make_oracles(recipe: Recipe, env) -> dict:
    """One oracle per target task ('cube', 'button', 'drawer', 'window'), as the env names them in info."""
    if recipe.oracle == "play":
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        noise = dict(noise=PLAN_NOISE, noise_smoothing=PLAN_NOISE_SMOOTHING)
        kinds = {"cube": lambda: CubePlanOracle(env=env, **noise),
                 "button": lambda: ButtonPlanOracle(env=env, **noise),
                 "drawer": lambda: DrawerPlanOracle(env=env, **noise),
                 "window": lambda: WindowPlanOracle(env=env, **noise),
                 "puzzle": lambda: ButtonPlanOracle(env=env, gripper_always_closed=True, **noise)}
    else:
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

        m = dict(min_norm=MARKOV_MIN_NORM)
        cube_kwargs = dict(max_step=100) if recipe.env_id.startswith("scene") else {}
        kinds = {"cube": lambda: CubeMarkovOracle(env=env, **m, **cube_kwargs),
                 "button": lambda: ButtonMarkovOracle(env=env, **m),
                 "drawer": lambda: DrawerMarkovOracle(env=env, **m),
                 "window": lambda: WindowMarkovOracle(env=env, **m),
                 "puzzle": lambda: ButtonMarkovOracle(env=env, gripper_always_closed=True, **m)}
    if recipe.env_id.startswith("cube"):
        return {"cube": kinds["cube"]()}
    if recipe.env_id.startswith("scene"):
        return {k: kinds[k]() for k in ("cube", "button", "drawer", "window")}
    return {"button": kinds["puzzle"]()}  # puzzle: buttons only, gripper closed


def stack_probability(env_id: str) -> float:
    """Probability that a new cube target is on top of another cube, drawn once per episode (numpy's RNG)."""
    ranges = {"cube-single": (0.0, 0.0), "cube-double": (0.0, 0.25), "cube-triple": (0.05, 0.35),
              "cube-quadruple": (0.1, 0.5)}
    for prefix, (lo, hi) in ranges.items():
        if env_id.startswith(prefix):
            return float(np.random.uniform(lo, hi)) if hi > lo else lo
    return 0.5  # scene, puzzle (unused by puzzle targets)


def scene_episode_is_healthy(qpos: np.ndarray) -> bool:
    """The cube stays where a goal image would show it: not too far right, not far left unless in the drawer."""
    cube_xyz = qpos[:, 14:17]  # qpos: 14 arm/gripper entries, then the cube's free joint (xyz, quat)
    too_right = cube_xyz[:, 1] >= 0.29
    too_left = (cube_xyz[:, 1] <= -0.3) & ((cube_xyz[:, 2] < 0.06) | (cube_xyz[:, 2] > 0.08))
    return not (too_right.any() or too_left.any())


def seed_episode(env, seed_words) -> int:
    """Seed numpy's global RNG and the action space for one episode; returns the seed for env.reset.

    Three RNGs drive an episode: the env's (scene, targets), numpy's global one (the oracles' plans and, here
    as in the official loop, p_stack, the noise and the random-action coin) and the action space's.
    """
    env_seed, np_seed, space_seed = (int(w) for w in np.random.SeedSequence(list(seed_words)).generate_state(3))
    np.random.seed(np_seed)
    env.action_space.seed(space_seed)
    return env_seed


class Collector:
    """An env and its oracles; `episode(seed_words)` returns one episode's rows, a function of its seed."""

    def __init__(self, recipe: Recipe, episode_length: int):
        self.recipe, self.episode_length = recipe, episode_length
        self.env = make_env(recipe, episode_length)
        self.oracles = make_oracles(recipe, self.env)
        self.has_buttons = hasattr(self.env.unwrapped, "_cur_button_states")
        self.env.reset()  # builds and compiles the MuJoCo model once, outside the timed episodes

    def episode(self, seed_words: tuple[int, int, int]) -> tuple[dict, float, int]:
        """Rows of one episode, its CPU seconds and how many scene episodes were discarded before it."""
        start = time.process_time()
        env_seed = seed_episode(self.env, seed_words)
        retries, seed = 0, env_seed
        while True:
            rows = self._rollout(seed)
            if not self.recipe.env_id.startswith("scene") or scene_episode_is_healthy(rows["qpos"]):
                return rows, time.process_time() - start, retries
            retries, seed = retries + 1, None  # redraw: every RNG continues from where it is

    def _rollout(self, seed) -> dict:
        # The draws happen in the official loop's order, so that a seeded official run gives the same rows.
        env, recipe = self.env, self.recipe
        ob, info = env.reset(seed=seed)
        p_stack = stack_probability(recipe.env_id)
        xi = np.random.uniform(0.0, MARKOV_NOISE) if recipe.oracle == "noisy" else 0.0
        agent = self.oracles[info["privileged/target_task"]]
        agent.reset(ob, info)
        keys = ["observations", "actions", "terminals", "qpos", "qvel"]
        keys += ["button_states"] if self.has_buttons else []
        rows = {k: [] for k in keys}
        done = False
        while not done:
            if np.random.rand() < recipe.p_random_action:  # drawn at every step, also when the probability is 0
                action = env.action_space.sample()
            else:
                action = np.array(agent.select_action(ob, info))
                if recipe.oracle == "noisy":
                    action = action + np.random.normal(0.0, xi * MARKOV_NOISE_SCALE, action.shape)
            action = np.clip(action, -1.0, 1.0)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if agent.done:  # the target is reached (or the oracle gave up): a new target, maybe another oracle
                agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                agent = self.oracles[agent_info["privileged/target_task"]]
                agent.reset(agent_ob, agent_info)
            rows["observations"].append(ob)
            rows["actions"].append(action)
            rows["terminals"].append(done)
            rows["qpos"].append(info["prev_qpos"])  # the state of `ob`, before this step
            rows["qvel"].append(info["prev_qvel"])
            if self.has_buttons:
                rows["button_states"].append(info["prev_button_states"])
            ob = next_ob
        dtypes = {"terminals": bool, "button_states": np.int64}
        return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in rows.items()}


_worker: Collector | None = None


def _init_worker(recipe: Recipe, episode_length: int) -> None:
    global _worker
    _worker = Collector(recipe, episode_length)


def _run_episode(seed_words):
    return _worker.episode(seed_words)


def collect(recipe: Recipe, episode_length: int, seed_words: list, workers: int, log) -> tuple[list, list, int]:
    """Episodes in the order of `seed_words` (deterministic whatever `workers` is)."""
    results = []
    every = max(1, len(seed_words) // 20)
    if workers == 1 and (_worker is None or (_worker.recipe, _worker.episode_length) != (recipe, episode_length)):
        _init_worker(recipe, episode_length)  # kept for the next call: an episode does not depend on earlier ones
    t0 = time.perf_counter()

    def progress(i):
        if (i + 1) % every == 0 or i + 1 == len(seed_words):
            elapsed = time.perf_counter() - t0
            eta = elapsed / (i + 1) * (len(seed_words) - i - 1)
            log(f"  {i + 1}/{len(seed_words)} episodes, {elapsed:.0f} s, ETA {eta:.0f} s")

    if workers == 1:
        for i, words in enumerate(seed_words):
            results.append(_run_episode(words))
            progress(i)
    else:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited MuJoCo state
        with ctx.Pool(workers, initializer=_init_worker, initargs=(recipe, episode_length)) as pool:
            for i, result in enumerate(pool.imap(_run_episode, seed_words)):
                results.append(result)
                progress(i)
    episodes, cpu, retries = zip(*results)
    return list(episodes), list(cpu), int(sum(retries))


def save_npz(path: Path, episodes: list) -> None:
    """Concatenate episodes and write them atomically (a temporary file, then os.replace)."""
    arrays = {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- check
def singletask_name(dataset: str, task: int) -> str:
    assert dataset.endswith("-v0")
    return f"{dataset[:-3]}-singletask-task{task}-v0"


def check(dataset: str, out: Path, log) -> dict:
    """Load through ogbench for the five single tasks; how often each task is solved in the training data."""
    import ogbench

    quiet_env_warnings()
    stats = {}
    for task in range(1, 6):
        name = singletask_name(dataset, task)
        env, train, val = ogbench.make_env_and_datasets(name, dataset_dir=str(out))
        env.close()
        if task == 1:
            for split, d in (("train", train), ("val", val)):
                log(f"  {split}: " + ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in d.items()))
        solved = train["masks"] == 0.0
        episodes = np.split(solved, np.flatnonzero(train["terminals"])[:-1] + 1)  # terminals: last transitions
        stats[name] = {"solved_fraction": float(np.mean(solved)), "mean_reward": float(np.mean(train["rewards"])),
                       "episodes_solved": int(sum(e.any() for e in episodes)), "episodes": len(episodes)}
        log(f"  {name}: solved at {100 * np.mean(solved):.2f}% of the training transitions, in "
            f"{stats[name]['episodes_solved']}/{len(episodes)} episodes; mean reward {stats[name]['mean_reward']:.3f}")
    return stats


def compare_official(script: Path, dataset: str, recipe: Recipe, episode_length: int, n_train: int,
                     seed_words: list, ours: tuple[Path, Path], log) -> dict:
    """Run the official generator (data_gen_scripts/generate_manipspace.py of a clone of seohongpark/ogbench)
    in this process and compare its two files with ours array by array. The official code runs unchanged;
    its env gets two changes: each env.reset first seeds the episode as here (`seed_episode`), and the
    action space is persistent (`persistent_action_space`, so that random actions can be seeded). Needs
    absl-py. The official loop redraws an unhealthy scene episode with a new reset, which takes the next
    seed there: a scene comparison is exact only when no episode was redrawn (reported)."""
    import shutil
    import tempfile

    import gymnasium

    from absl import flags
    spec = importlib.util.spec_from_file_location("ogbench_official_generate_manipspace", script)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    resets = []
    real_make = gymnasium.make

    def make(*a, **kw):
        env = persistent_action_space(real_make(*a, **kw))
        reset = env.reset

        def seeded_reset(*_, **__):
            words = seed_words[len(resets)] if len(resets) < len(seed_words) else None
            resets.append(words)
            return reset(seed=None if words is None else seed_episode(env, words))

        env.reset = seeded_reset
        return env

    tmp = Path(tempfile.mkdtemp(prefix="ogbench_official_"))
    try:
        gymnasium.make = make
        flags.FLAGS(["generate_manipspace", f"--env_name={recipe.env_id}", f"--dataset_type={recipe.oracle}",
                     f"--save_path={tmp / (dataset + '.npz')}", f"--num_episodes={n_train}",
                     f"--max_episode_steps={episode_length + 1}", f"--p_random_action={recipe.p_random_action}"])
        official.main(None)
        report = {}
        for mine, name in zip(ours, (dataset + ".npz", dataset + "-val.npz")):
            a, b = np.load(tmp / name), np.load(mine)
            for key in sorted(set(a.files) | set(b.files)):
                if key not in a.files or key not in b.files:
                    verdict = "missing in " + ("official" if key not in a.files else "ours")
                elif a[key].dtype != b[key].dtype or a[key].shape != b[key].shape:
                    verdict = f"official {a[key].dtype}{a[key].shape} vs ours {b[key].dtype}{b[key].shape}"
                elif np.array_equal(a[key], b[key]):
                    verdict = "identical"
                else:
                    verdict = f"differs (max |diff| {np.max(np.abs(a[key].astype(np.float64) - b[key])):.3g})"
                report[f"{name}:{key}"] = verdict
                log(f"  official vs ours, {name} {key}: {verdict}")
        if len(resets) != len(seed_words):
            log(f"  the official loop reset {len(resets)} times for {len(seed_words)} episodes "
                f"(redrawn scene episodes): not comparable")
        return report
    finally:
        gymnasium.make = real_make
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- main
def main(argv=None, log=print) -> dict:
    """Generate the dataset; returns the paths, sizes and timing (tests call this)."""
    args = parse_args(argv)
    if args.list:
        for name, r in RECIPES.items():
            log(f"{name:26s} env {r.env_id:18s} {r.oracle:5s} oracle, {r.episodes} + {r.episodes // 10} episodes")
        return {}
    recipe, n_train, n_val, train_path, val_path = validate(args)
    train_path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val}
    seeds = {split: [(args.seed, SPLITS[split], i) for i in range(n)] for split, n in counts.items()}
    log(f"{args.dataset}: {n_train} + {n_val} episodes of {args.episode_length} steps ({recipe.oracle} oracles on "
        f"{recipe.env_id}), seed {args.seed}, {args.workers} worker(s)")
    episodes, cpu, retries = collect(recipe, args.episode_length, seeds["train"] + seeds["val"], args.workers, log)
    save_npz(train_path, episodes[:n_train])
    save_npz(val_path, episodes[n_train:])
    result = {"train": str(train_path), "val": str(val_path),
              "train_rows": sum(len(e["actions"]) for e in episodes[:n_train]),
              "val_rows": sum(len(e["actions"]) for e in episodes[n_train:]),
              "cpu_s_per_episode": float(np.mean(cpu)), "scene_retries": retries}
    log(f"wrote {train_path} ({result['train_rows']} rows) and {val_path} ({result['val_rows']} rows); "
        f"{result['cpu_s_per_episode']:.2f} CPU s per episode"
        + (f", {retries} unhealthy scene episodes redrawn" if retries else ""))
    if args.check:
        result["check"] = check(args.dataset, train_path.parent, log)
    if args.compare_official is not None:
        result["official"] = compare_official(Path(args.compare_official), args.dataset, recipe, args.episode_length,
                                              n_train, seeds["train"] + seeds["val"], (train_path, val_path), log)
    return result


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
