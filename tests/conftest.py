"""Tiny synthetic tasks, built in seconds, so that loss and learning-curve tests need no download.

Fixtures
- `minari_root`: a session-wide temporary MINARI_DATASETS_PATH (the user's ~/.minari is never touched).
- `bandit_dataset`: a one-step two-mode bandit as a Minari dataset (two action modes in the data,
  one with twice the reward), its env recoverable from the dataset (tests/toy_envs.py).
- `make_bandit_dataset(name, **env_kwargs)`: the same with other env kwargs (e.g. NaN rewards online).
- `ogbench_dir`: a folder with a tiny OGBench-format dataset for
  `pointmaze-medium-navigate-singletask-task1-v0` (train + val .npz), loaded without the network.
- `in_tmp`: run the test inside a temporary folder (scripts write runs/ to the working directory).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the algorithm scripts are top-level files
sys.path.insert(0, str(Path(__file__).resolve().parent))  # toy_envs

import toy_envs  # noqa: E402

OGBENCH_TINY = "pointmaze-medium-navigate-singletask-task1-v0"
EMBEDDED = ["flowrl/reacher/mixed-v0", "flowrl/pointmaze/wander-v0", "flowrl/pointmaze/demos-v0"]


def import_script(name: str):
    """Import a top-level algorithm script (fql.py, ...) as a module."""
    return importlib.import_module(name)


def run_script(script: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `<script>.py` with `argv` in a subprocess, offline (unknown Minari ids fail at once)."""
    return subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def last_error_line(result: subprocess.CompletedProcess) -> str:
    """Bad input must end the run with a non-zero exit and no traceback; returns the last stderr line."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # unknown ids fail at once instead of retrying the network
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


def bandit_buffers(n_episodes: int, seed: int) -> list:
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    buffers = []
    for i in range(n_episodes):
        mode = toy_envs.GOOD_MODE if i % 2 == 0 else toy_envs.BAD_MODE
        action = np.clip(mode + rng.normal(0.0, 0.1, 2), -1.0, 1.0).astype(np.float32)
        reward = toy_envs.bandit_reward(action)
        buffers.append(EpisodeBuffer(
            id=i, seed=i, observations=np.ones((2, 2), np.float32), actions=action[None],
            rewards=np.array([reward], np.float32), terminations=np.array([True]), truncations=np.array([False])))
    return buffers


@pytest.fixture(scope="session")
def make_bandit_dataset(minari_root):
    import minari

    made = {}

    def make(name: str = "bandit", n_episodes: int = 2000, **env_kwargs) -> Path:
        if name in made:  # one dataset per name for the whole session: the same name must mean the same data
            assert made[name][1] == (n_episodes, env_kwargs), f"bandit dataset {name!r} was made with other settings"
        else:
            spec = gym.envs.registration.EnvSpec(id="TwoModeBandit-v0", entry_point="toy_envs:TwoModeBanditEnv",
                                                 max_episode_steps=1, kwargs=env_kwargs)
            dataset_id = f"test/{name}-v0"
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=bandit_buffers(n_episodes, seed=0), env=spec, eval_env=spec,
                ref_min_score=0.0, ref_max_score=1.0, author="flowrl tests", author_email="tests@flowrl",
                algorithm_name="two-mode behaviour", code_permalink="tests/conftest.py")
            made[name] = (minari_root / dataset_id, (n_episodes, env_kwargs))
        return made[name][0]

    return make


@pytest.fixture(scope="session")
def bandit_dataset(make_bandit_dataset) -> Path:
    return make_bandit_dataset()


@pytest.fixture(scope="session")
def ogbench_dir(tmp_path_factory) -> Path:
    """Two short random-action trajectories per split in the OGBench .npz layout."""
    import ogbench

    folder = tmp_path_factory.mktemp("ogbench")
    env = ogbench.make_env_and_datasets(OGBENCH_TINY, env_only=True)
    for split, seed in (("", 0), ("-val", 1)):
        rng = np.random.default_rng(seed)
        cols = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
        for episode in range(2):
            obs, _ = env.reset(seed=seed * 10 + episode)
            for t in range(50):
                action = rng.uniform(-1, 1, 2).astype(np.float32)
                cols["observations"].append(obs)
                cols["actions"].append(action)
                cols["terminals"].append(float(t == 49))
                cols["qpos"].append(env.unwrapped.data.qpos.copy())
                cols["qvel"].append(env.unwrapped.data.qvel.copy())
                obs, *_ = env.step(action)
        np.savez(folder / f"pointmaze-medium-navigate-v0{split}.npz", **{k: np.asarray(v, np.float32) for k, v in cols.items()})
    env.close()
    return folder


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# decision_flow.py / swfp.py (issue 17): a random-start, multi-step task
# ---------------------------------------------------------------------------------------------------------------
RANDOM_START_STEPS = 5  # episode length of `random_start_dataset`


@pytest.fixture(scope="session")
def random_start_dataset(minari_root) -> Path:
    """Gymnasium's Pendulum-v1 (reset draws a random angle and velocity) cut to 5-step episodes, as a Minari
    dataset of 20 uniform-random-action episodes; its env is recoverable. For seeding tests: every episode
    that is not reset with the same seed starts from a different state."""
    import dataclasses

    import minari
    from minari.data_collector import EpisodeBuffer

    spec = dataclasses.replace(gym.spec("Pendulum-v1"), max_episode_steps=RANDOM_START_STEPS)
    env = gym.make(spec)
    env.action_space.seed(0)
    buffers = []
    for i in range(20):
        obs, _ = env.reset(seed=1000 + i)
        cols = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                                  (obs, action, reward, terminated, truncated)):
                cols[key].append(value)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=i, seed=1000 + i, **{k: np.asarray(v) for k, v in cols.items()}))
    env.close()
    dataset_id = "test/random-start-pendulum-v0"
    minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env=spec, eval_env=spec,
                                       author="flowrl tests", author_email="tests@flowrl",
                                       algorithm_name="uniform random", code_permalink="tests/conftest.py")
    return minari_root / dataset_id


class ResetRecorder(gym.Wrapper):
    """Records every reset of the wrapped env (the seed passed and the first observation) and every step's reward."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.resets, self.rewards = [], []

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.resets.append((seed, np.array(obs, copy=True)))
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.rewards.append(float(out[1]))
        return out


def record_envs(module, monkeypatch) -> list:
    """Wrap every env that `module.main` builds through its OfflineData.make_env in a ResetRecorder, in creation
    order (decision_flow.py / swfp.py: the evaluation envs first, then swfp's online env); returns that list."""
    created = []
    original = module.load_offline_data

    def load(*args, **kwargs):
        data = original(*args, **kwargs)
        make_env = data.make_env

        def make():
            env = ResetRecorder(make_env())
            created.append(env)
            return env

        data.make_env = make
        return data

    monkeypatch.setattr(module, "load_offline_data", load)
    return created


# ---------------------------------------------------------------------------------------------------------------
# decision_flow.py / swfp.py (issue 23): broken copies of a Minari dataset, broken torch files
# ---------------------------------------------------------------------------------------------------------------
BROKEN_MINARI = ("empty hdf5", "garbage hdf5", "truncated hdf5", "episode without actions", "episode cut short",
                 "broken metadata.json", "no metadata.json")
BROKEN_TORCH = ("missing", "empty", "garbage", "text", "truncated", "a directory", "a tensor")


def broken_minari_copy(src: Path, dest: Path, kind: str) -> Path:
    """A copy at `dest` of the Minari dataset folder `src` (holding data/), broken in one way (BROKEN_MINARI); episode 3
    is the broken one where an episode is. Returns `dest`."""
    import json
    import shutil

    import h5py

    shutil.copytree(src, dest)
    hdf5, metadata = dest / "data" / "main_data.hdf5", dest / "data" / "metadata.json"
    if kind == "empty hdf5":
        hdf5.write_bytes(b"")
    elif kind == "garbage hdf5":
        hdf5.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated hdf5":
        hdf5.write_bytes(hdf5.read_bytes()[: hdf5.stat().st_size // 2])
    elif kind == "episode without actions":
        with h5py.File(hdf5, "a") as f:
            del f["episode_3/actions"]
    elif kind == "episode cut short":  # one observation for one action (a Minari episode has T + 1 for T)
        with h5py.File(hdf5, "a") as f:
            observations = f["episode_3/observations"][:1]
            del f["episode_3/observations"]
            f["episode_3/observations"] = observations
    elif kind == "broken metadata.json":
        text = metadata.read_text()
        json.loads(text)  # valid before
        metadata.write_text(text[: len(text) // 2])
    elif kind == "no metadata.json":
        metadata.unlink()
    else:
        raise ValueError(kind)
    return dest


def broken_torch_file(path: Path, kind: str, valid: Path | None = None) -> Path:
    """A file at `path` that torch.load cannot read as a checkpoint (BROKEN_TORCH); "truncated" cuts the torch file
    `valid` in half. Returns `path`."""
    import torch

    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        path.write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    elif kind == "a directory":
        path.mkdir()
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    elif kind != "missing":
        raise ValueError(kind)
    return path


# ---------------------------------------------------------------------------------------------------------------
# qam.py additions (issue 17, item A)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def qam_random_start_dataset(minari_root) -> Path:
    """The bandit's episodes as a Minari dataset whose env (toy_envs.QamRandomStartEnv) draws a random start."""
    import minari

    spec = gym.envs.registration.EnvSpec(id="QamRandomStart-v0", entry_point="toy_envs:QamRandomStartEnv",
                                         max_episode_steps=1)
    dataset_id = "test/qam-random-start-v0"
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id, buffer=bandit_buffers(200, seed=0), env=spec, eval_env=spec, ref_min_score=0.0,
        ref_max_score=1.0, author="flowrl tests", author_email="tests@flowrl", algorithm_name="two-mode behaviour",
        code_permalink="tests/conftest.py")
    return minari_root / dataset_id
