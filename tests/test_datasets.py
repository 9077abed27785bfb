"""The embedded datasets: loadable with minari, their eval env recoverable and steppable, normalized
scores defined, and `datasets/make_datasets.py` regenerating them bit for bit."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import EMBEDDED, ROOT

DATASETS = ROOT / "datasets"


@pytest.fixture
def embedded_root(monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(DATASETS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("dataset_id", EMBEDDED)
def test_embedded_dataset_loads_and_its_eval_env_steps(embedded_root, dataset_id):
    import minari

    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_episodes >= 300 and dataset.total_steps >= 25_000
    episode = next(dataset.iterate_episodes())
    n = len(episode.actions)
    first_obs = episode.observations if not isinstance(episode.observations, dict) else episode.observations["observation"]
    assert len(first_obs) == n + 1 and len(episode.rewards) == n  # Minari layout: T+1 observations
    assert np.all(np.abs(episode.actions) <= 1.0)

    env = dataset.recover_environment(eval_env=True)
    flatdim = gym.spaces.utils.flatdim
    assert flatdim(env.observation_space) == flatdim(dataset.observation_space)  # dataset stores float32 obs
    assert env.action_space.shape == dataset.action_space.shape
    obs, _ = env.reset(seed=0)
    assert gym.spaces.utils.flatten(env.observation_space, obs).shape == (flatdim(dataset.observation_space),)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(reward)
    env.close()

    lo, hi = dataset.storage.metadata["ref_min_score"], dataset.storage.metadata["ref_max_score"]
    assert lo < hi
    assert minari.get_normalized_score(dataset, np.array([lo, hi])) == pytest.approx([0.0, 1.0])


def test_reacher_reference_scores_match_the_env(embedded_root):
    """ref_min is the uniform random policy's mean return: re-measure it roughly on the recovered env."""
    import minari

    dataset = minari.load_dataset("flowrl/reacher/mixed-v0")
    env = dataset.recover_environment(eval_env=True)
    rng = np.random.default_rng(0)
    returns = []
    for i in range(20):
        env.reset(seed=10_000 + i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(rng.uniform(-1, 1, 2))
            total, done = total + r, term or trunc
        returns.append(total)
    assert abs(np.mean(returns) - dataset.storage.metadata["ref_min_score"]) < 4.0


def test_make_datasets_check_reproduces_pointmaze():
    """Regenerating from the seed gives the committed arrays (the two Reacher sets: `pytest -m slow`)."""
    out = subprocess.run([sys.executable, str(DATASETS / "make_datasets.py"), "--check", "--only", "flowrl/pointmaze/demos-v0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   flowrl/pointmaze/demos-v0" in out.stdout


@pytest.mark.slow
def test_make_datasets_check_all():
    out = subprocess.run([sys.executable, str(DATASETS / "make_datasets.py"), "--check"], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_datasets_rejects_unknown_id():
    out = subprocess.run([sys.executable, str(DATASETS / "make_datasets.py"), "--only", "flowrl/nope-v0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "unknown dataset id" in out.stderr
