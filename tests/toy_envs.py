"""Tiny environments for the tests (importable as `toy_envs` from tests/; Minari specs point here)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

GOOD_MODE = np.array([0.5, 0.5], dtype=np.float32)
BAD_MODE = np.array([-0.5, -0.5], dtype=np.float32)
MODE_RADIUS = 0.5


def bandit_reward(action: np.ndarray) -> np.ndarray:
    """Two bumps of radius 0.5: height 1 at GOOD_MODE, 0.5 at BAD_MODE, 0 elsewhere (works on batches)."""
    good = np.maximum(0.0, 1.0 - np.linalg.norm(action - GOOD_MODE, axis=-1) / MODE_RADIUS)
    bad = np.maximum(0.0, 1.0 - np.linalg.norm(action - BAD_MODE, axis=-1) / MODE_RADIUS)
    return good + 0.5 * bad


class TwoModeBanditEnv(gym.Env):
    """One-step bandit: a constant observation, a 2-D action, reward `bandit_reward`, then the episode ends.

    `nan_reward_after`: from that many steps on (counted over the env's lifetime) the reward is NaN,
    to test that a non-finite loss stops training.
    """

    metadata = {"render_modes": []}

    def __init__(self, nan_reward_after: int = -1):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.nan_reward_after = nan_reward_after
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(2, dtype=np.float32), {}

    def step(self, action):
        self.steps += 1
        reward = float(bandit_reward(np.asarray(action, dtype=np.float32)))
        if 0 <= self.nan_reward_after < self.steps:
            reward = float("nan")
        return np.ones(2, dtype=np.float32), reward, True, False, {"success": reward > 0.75}


# ---------------------------------------------------------------------------------------------- gfp.py tests
# (a separate block for tests/test_gfp.py; added for the online-seeding and eval-pool tests)
class GfpRandomStartEnv(gym.Env):
    """A point in the plane that starts at a random position in [-1, 1]^2 (drawn from the env's RNG at reset) and
    moves by 0.1 * action; reward -|position|. No termination: episodes end by the TimeLimit of the env's spec."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self.position.copy(), {}

    def step(self, action):
        self.position = (self.position + 0.1 * np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)).astype(np.float32)
        return self.position.copy(), -float(np.linalg.norm(self.position)), False, False, {}


# ---------------------------------------------------------------------------------------------------------------
# qam.py additions (issue 17, item A: online episodes must not all start from the same state)
# ---------------------------------------------------------------------------------------------------------------
class QamRandomStartEnv(gym.Env):
    """One-step bandit whose reset draws the observation uniformly in [-1, 1]^2 from the env's own RNG
    (`self.np_random`): a reset with a seed always gives the same start, a reset without one continues the RNG."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.obs = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.obs = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self.obs.copy(), {}

    def step(self, action):
        reward = float(bandit_reward(np.asarray(action, dtype=np.float32)))
        return self.obs.copy(), reward, True, False, {"success": reward > 0.75}
