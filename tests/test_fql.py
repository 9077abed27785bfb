"""Tests for fql.py: losses on cases with known answers, the two-mode bandit, learning curve vs BC,
bad input, NaN handling, determinism, and every data path (Minari dir, embedded id, OGBench file)."""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import (BROKEN_MINARI, BROKEN_TORCH, OGBENCH_TINY, broken_minari_copy, broken_torch_file, import_script,
                      last_error_line, run_script)
import toy_envs
from toy_envs import GOOD_MODE

fql = import_script("fql")


def tiny(**overrides) -> "fql.Args":
    base = fql.Args(cuda=False, hidden_dim=64, num_layers=2, batch_size=64, total_steps=200, eval_freq=200,
                    eval_episodes=5, log_freq=100)
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------------- losses
class ExactField(torch.nn.Module):
    """The exact conditional velocity towards a fixed action c: v(x_t, t) = (c - x_t) / (1 - t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, obs, x_t, t):
        return (self.c - x_t) / (1.0 - t)


def test_bc_flow_loss_is_zero_for_the_exact_velocity_of_the_linear_path():
    torch.manual_seed(0)
    actions = torch.tensor([[0.3, -0.7]]).expand(512, 2).double()
    obs = torch.zeros(512, 3, dtype=torch.float64)
    assert fql.bc_flow_loss(ExactField(actions), obs, actions).item() < 1e-12


def test_bc_flow_loss_of_the_zero_field_is_the_second_moment_of_the_target():
    # v = 0: loss = E||a - x_0||^2 / d = a^2 + 1 per dimension (x_0 ~ N(0, I))
    torch.manual_seed(0)
    actions = torch.full((20000, 2), 0.5)
    zero = lambda obs, x, t: torch.zeros_like(x)  # noqa: E731
    assert fql.bc_flow_loss(zero, torch.zeros(20000, 1), actions).item() == pytest.approx(1.25, rel=0.02)


def test_euler_sampler_with_a_constant_field_lands_on_x0_plus_v():
    v = torch.tensor([0.25, -0.5])
    field = lambda obs, x, t: v.expand_as(x)  # noqa: E731
    z = torch.tensor([[0.1, 0.2], [0.9, -0.9]])
    out = fql.sample_bc_flow(field, torch.zeros(2, 1), z, flow_steps=10)
    assert torch.allclose(out, (z + v).clamp(-1, 1), atol=1e-6)


def make_nets(obs_dim=3, act_dim=2, hidden=32):
    torch.manual_seed(0)
    return (fql.VectorField(obs_dim, act_dim, hidden, 2), fql.OneStepPolicy(obs_dim, act_dim, hidden, 2),
            fql.Critic(obs_dim, act_dim, hidden, 2, 2), fql.Critic(obs_dim, act_dim, hidden, 2, 2))


def test_distillation_target_has_no_gradient_path_into_the_bc_flow():
    bc_flow, onestep, critic, _ = make_nets()
    distill, q_loss = fql.onestep_losses(onestep, bc_flow, critic, torch.randn(16, 3), 2, flow_steps=10, normalize_q_loss=False)
    (distill + q_loss).backward()
    assert all(p.grad is None for p in bc_flow.parameters())
    assert all(p.grad is None for p in critic.parameters())  # the Q term must not train the critic
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in onestep.parameters())


def constant_critic(critic, values):
    """Make member k output values[k] everywhere (zero last-layer weights, bias = value)."""
    last = critic.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(values, dtype=torch.float32).view(-1, 1, 1))
    return critic


@pytest.mark.parametrize("q_agg, next_q", [("mean", 2.0), ("min", 1.0)])
def test_critic_loss_known_answer_and_q_agg_only_in_the_target(q_agg, next_q):
    _, onestep, critic, target = make_nets()
    constant_critic(critic, [0.5, 1.5])
    constant_critic(target, [1.0, 3.0])
    batch = {"observations": torch.randn(4, 3), "actions": torch.rand(4, 2) * 2 - 1, "next_observations": torch.randn(4, 3),
             "rewards": torch.tensor([0.0, 1.0, -1.0, 2.0]), "masks": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    loss, q = fql.critic_loss(critic, target, onestep, batch, gamma=0.9, q_agg=q_agg)
    target_q = batch["rewards"] + 0.9 * batch["masks"] * next_q
    expected = ((torch.tensor([[0.5], [1.5]]) - target_q) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(q, torch.tensor([[0.5] * 4, [1.5] * 4]))


def test_normalized_q_loss_is_minus_one_for_a_positive_constant_critic():
    bc_flow, onestep, critic, _ = make_nets()
    constant_critic(critic, [3.0, 5.0])
    _, q_loss = fql.onestep_losses(onestep, bc_flow, critic, torch.randn(8, 3), 2, 10, normalize_q_loss=True)
    assert q_loss.item() == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------- behaviour
def mode_fraction(actions: np.ndarray) -> float:
    """Share of actions closer to the bandit's better mode."""
    return float(np.mean(np.linalg.norm(actions - GOOD_MODE, axis=1) < np.linalg.norm(actions + GOOD_MODE, axis=1)))


def test_bandit_bc_flow_keeps_both_modes_while_the_onestep_policy_picks_the_better_one(bandit_dataset, in_tmp):
    args = tiny(env_id=str(bandit_dataset), total_steps=1500, alpha=0.3, hidden_dim=128, eval_episodes=200,
                eval_freq=1500, save_model=True)
    metrics = fql.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/fql.pt")))
    bc_flow, onestep = fql.VectorField(2, 2, 128, 2), fql.OneStepPolicy(2, 2, 128, 2)
    bc_flow.load_state_dict(state["actor_bc_flow"])
    onestep.load_state_dict(state["actor_onestep_flow"])
    torch.manual_seed(0)
    obs, z = torch.ones(2000, 2), torch.randn(2000, 2)
    bc_share = mode_fraction(fql.sample_bc_flow(bc_flow, obs, z, 10).numpy())
    with torch.no_grad():
        onestep_share = mode_fraction(onestep(obs, z).clamp(-1, 1).numpy())
    assert 0.3 < bc_share < 0.7, bc_share
    assert onestep_share > 0.9, onestep_share
    assert metrics["eval/normalized_score"] > metrics["eval/bc_flow_normalized_score"] + 15


def test_learning_curve_on_the_embedded_reacher_dataset_beats_bc(in_tmp):
    """FQL's one-step policy vs the BC flow trained in the same run (100 evaluation episodes each)."""
    args = tiny(env_id="flowrl/reacher/mixed-v0", total_steps=3000, alpha=0.3, hidden_dim=128, batch_size=256,
                eval_freq=3000, eval_episodes=100)
    metrics = fql.main(args)
    assert metrics["eval/normalized_score"] > metrics["eval/bc_flow_normalized_score"] + 10, metrics


# ---------------------------------------------------------------------------------------------- data paths
def test_ogbench_file_loads_and_trains(ogbench_dir, in_tmp):
    data = fql.load_offline_data(OGBENCH_TINY, str(ogbench_dir))
    t = data.transitions
    assert t["observations"].shape == (98, 2) and t["next_observations"].shape == (98, 2) and t["actions"].shape == (98, 2)
    assert set(np.unique(t["rewards"])) <= {-1.0, 0.0} and set(np.unique(t["masks"])) <= {0.0, 1.0}
    metrics = fql.main(tiny(env_id=OGBENCH_TINY, ogbench_dataset_dir=str(ogbench_dir), total_steps=20, eval_episodes=1,
                            eval_freq=20, log_freq=10, eval_bc_flow=False))
    assert "eval/success" in metrics and "eval/normalized_score" not in metrics


def test_online_finetuning_appends_to_the_buffer_and_logs_returns(bandit_dataset, in_tmp):
    metrics = fql.main(tiny(env_id=str(bandit_dataset), total_steps=50, online_steps=50, eval_freq=100, log_freq=25))
    assert np.isfinite(metrics["eval/episodic_return"])
    assert list(in_tmp.glob("runs/*/events.out.tfevents.*"))


def test_same_seed_gives_the_same_networks_on_cpu(bandit_dataset, tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        fql.main(tiny(env_id=str(bandit_dataset), total_steps=60, eval_freq=60, log_freq=30, save_model=True, eval_bc_flow=False))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/fql.pt"))))
    for name in ("actor_bc_flow", "actor_onestep_flow", "critic"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)


def test_checkpoint_reloads_and_evaluates(bandit_dataset, in_tmp):
    first = fql.main(tiny(env_id=str(bandit_dataset), total_steps=100, eval_freq=100, save_model=True))
    path = next(in_tmp.glob("runs/*/fql.pt"))
    again = fql.main(tiny(env_id=str(bandit_dataset), total_steps=100, checkpoint=str(path)))
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_env_id_exits_with_one_clear_line(in_tmp):
    result = run_script("fql", "--env-id", "nosuch/dataset-v0", "--no-cuda")
    last = last_error_line(result)
    assert last.startswith("error: cannot load --env-id 'nosuch/dataset-v0'") and "minari list remote" in last


def test_discrete_action_dataset_is_rejected(minari_root):
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=0, observations=np.zeros((3, 4), np.float32), actions=np.array([0, 1]),
                             rewards=np.zeros(2, np.float32), terminations=np.array([False, True]), truncations=np.zeros(2, bool))]
    minari.create_dataset_from_buffers("test/discrete-v0", buffers, env="CartPole-v1", ref_min_score=0.0,
                                       ref_max_score=1.0, author="t", author_email="t@t", algorithm_name="t", code_permalink="t")
    with pytest.raises(fql.DatasetError, match="continuous 1-D Box action space"):
        fql.load_offline_data(str(minari_root / "test/discrete-v0"), "")


def test_non_finite_dataset_values_are_rejected(bandit_dataset, monkeypatch):
    original = fql.load_minari

    def poisoned(dataset, env_id, *where):
        data = original(dataset, env_id, *where)
        data.transitions["rewards"][3] = np.nan
        return data

    monkeypatch.setattr(fql, "load_minari", poisoned)
    with pytest.raises(fql.DatasetError, match="non-finite values in 'rewards'"):
        fql.load_offline_data(str(bandit_dataset), "")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(make_bandit_dataset, in_tmp):
    # the env returns NaN rewards from its 20th step: the online phase puts them in the buffer
    dataset = make_bandit_dataset("nan-bandit", n_episodes=200, nan_reward_after=20)
    args = tiny(env_id=str(dataset), total_steps=100, eval_freq=100, eval_episodes=1, online_steps=300, log_freq=50,
                save_model=True)
    with pytest.raises(fql.NonFiniteLossError, match="non-finite loss"):
        fql.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/fql.pt")))
    assert state["step"] == 100
    assert all(torch.isfinite(v).all() for v in state["critic"].values())


# ---------------------------------------------------------------------------------------------- online / eval envs
class RandomStartWalk(gym.Env):
    """2-D point that starts uniformly in [-1, 1]^2 (env RNG), moves by 0.2 a, reward -|x|, 4 steps per episode.
    Every reset is recorded in `log` as (seed, start state)."""

    def __init__(self, log: list):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.log = log

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = self.np_random.uniform(-1, 1, 2).astype(np.float32), 0
        self.log.append((seed, self.x.copy()))
        return self.x.copy(), {}

    def step(self, action):
        self.x, self.t = self.x + 0.2 * np.asarray(action, np.float32), self.t + 1
        norm = float(np.linalg.norm(self.x))
        return self.x.copy(), -norm, False, self.t >= 4, {"success": norm < 0.3}


def random_walk_data(logs: list) -> "fql.OfflineData":
    rng = np.random.default_rng(0)
    n = 256
    obs = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    next_obs = obs + 0.2 * actions
    transitions = dict(observations=obs, actions=actions, rewards=-np.linalg.norm(next_obs, axis=1).astype(np.float32),
                       masks=np.ones(n, np.float32), next_observations=next_obs)

    def make_env():
        logs.append([])
        return RandomStartWalk(logs[-1])

    space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    return fql.OfflineData(transitions, make_env, lambda o: fql.flatten_obs(space, o), lambda r: None)


def test_online_episodes_are_seeded_once_and_start_from_different_states(monkeypatch, in_tmp):
    logs = []
    monkeypatch.setattr(fql, "load_offline_data", lambda env_id, directory: random_walk_data(logs))
    fql.main(tiny(env_id="toy/random-walk", total_steps=10, online_steps=12, eval_freq=100, log_freq=11, eval_episodes=1,
                  eval_bc_flow=False, seed=3))
    online = [log for log in logs if log and log[0][0] == 3]  # the online env: its first reset is seeded with --seed
    assert len(online) == 1 and len(online[0]) >= 3, logs
    seeds, starts = zip(*online[0])
    assert seeds[1:] == (None,) * (len(seeds) - 1)
    assert not np.allclose(starts[0], starts[1]) and not np.allclose(starts[1], starts[2])


# ---------------------------------------------------------------------------------------------- D4RL antmaze rewards
@pytest.mark.parametrize("env_id, shifted", [
    ("D4RL/antmaze/large-play-v1", True), ("D4RL/antmaze/umaze-v1", True), ("D4RL/antmaze/medium-diverse-v1", True),
    ("/data/D4RL/antmaze/umaze-diverse-v1", True), ("antmaze-large-navigate-singletask-task1-v0", False),
    ("antmaze-giant-stitch-v0", False), ("D4RL/pen/human-v2", False), ("flowrl/pointmaze/wander-v0", False)])
def test_d4rl_antmaze_reward_shift_names(env_id, shifted):
    assert fql.transform_reward(env_id, 1.0) == (0.0 if shifted else 1.0)
    assert np.array_equal(fql.transform_reward(env_id, np.array([0.0, 1.0])), np.array([-1.0, 0.0]) if shifted else [0.0, 1.0])


def test_d4rl_antmaze_shift_applies_to_offline_and_online_rewards(make_bandit_dataset, monkeypatch, in_tmp):
    dataset = make_bandit_dataset("antmaze-umaze-bandit", n_episodes=200)  # an antmaze/umaze name: rewards shifted
    buffers = []

    class Recorded(fql.ReplayBuffer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            buffers.append(self)

    monkeypatch.setattr(fql, "ReplayBuffer", Recorded)
    fql.main(tiny(env_id=str(dataset), total_steps=10, online_steps=20, eval_freq=100, log_freq=15, eval_episodes=1,
                  eval_bc_flow=False))
    buffer, = buffers
    rewards, actions = buffer.data["rewards"][: buffer.size].numpy(), buffer.data["actions"][: buffer.size].numpy()
    assert buffer.size == 220
    expected = toy_envs.bandit_reward(actions) - 1.0  # bandit actions live in [-1, 1]: no rescaling
    np.testing.assert_allclose(rewards[:200], expected[:200], atol=1e-3)  # dataset actions are clipped to 1 - 1e-5
    np.testing.assert_allclose(rewards[200:], expected[200:], atol=1e-6)  # online: the same transform


# ---------------------------------------------------------------------------------------------- OGBench step timing
def test_ogbench_envs_compute_success_after_the_step_as_ogbench_1_1(ogbench_dir):
    data = fql.load_offline_data(OGBENCH_TINY, str(ogbench_dir))
    env = data.make_env()
    assert env.unwrapped._success_timing == "post"
    env.reset(seed=0)
    maze = env.unwrapped
    goal = np.asarray(maze.cur_goal_xy)
    away = (maze.get_xy() - goal) / np.linalg.norm(maze.get_xy() - goal)
    maze.set_xy(goal + away * (maze._goal_tol + 0.05))  # just outside the goal; one step towards it gets inside
    _, reward, terminated, _, info = env.step(-away.astype(np.float32))
    assert np.linalg.norm(maze.get_xy() - goal) < maze._goal_tol
    assert (reward, terminated, info["success"]) == (0.0, True, 1.0)  # 'pre' would give -1, False, 0 here
    env.close()


# ---------------------------------------------------------------------------------------------- Minari without network


def test_eval_metrics_do_not_depend_on_the_number_of_eval_envs(monkeypatch, in_tmp):
    results = []
    for eval_envs in (1, 3):
        logs = []
        monkeypatch.setattr(fql, "load_offline_data", lambda env_id, directory: random_walk_data(logs))
        results.append(fql.main(tiny(env_id="toy/random-walk", total_steps=30, eval_freq=30, log_freq=30, eval_episodes=5,
                                     eval_envs=eval_envs)))
        assert len(logs) == eval_envs
    for key in ("eval/episodic_return", "eval/bc_flow_episodic_return", "eval/success"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------------------------------------- per-task settings
@pytest.mark.parametrize("env_id, online, expected", [
    ("cube-single-play-singletask-task2-v0", False, dict(alpha=300.0, gamma=0.99, q_agg="mean", total_steps=1_000_000)),
    ("cube-single-play-singletask-v0", False, dict(alpha=300.0, gamma=0.99, q_agg="mean", total_steps=1_000_000)),
    ("puzzle-4x4-play-singletask-task1-v0", False, dict(alpha=1000.0, gamma=0.99, q_agg="mean", total_steps=1_000_000)),
    ("antmaze-large-navigate-singletask-task3-v0", False, dict(alpha=10.0, gamma=0.99, q_agg="min", total_steps=1_000_000)),
    ("antmaze-giant-navigate-singletask-v0", False, dict(alpha=10.0, gamma=0.995, q_agg="min", total_steps=1_000_000)),
    ("humanoidmaze-medium-navigate-singletask-v0", False, dict(alpha=30.0, gamma=0.995, q_agg="mean", total_steps=1_000_000)),
    ("humanoidmaze-medium-navigate-singletask-v0", True, dict(alpha=100.0, gamma=0.995, q_agg="mean", total_steps=1_000_000)),
    ("antsoccer-arena-navigate-singletask-task4-v0", True, dict(alpha=30.0, gamma=0.995, q_agg="mean", total_steps=1_000_000)),
    ("visual-cube-double-play-singletask-task1-v0", False, dict(alpha=100.0, gamma=0.99, q_agg="mean", total_steps=500_000)),
    ("D4RL/antmaze/large-play-v1", False, dict(alpha=3.0, gamma=0.99, q_agg="mean", total_steps=500_000)),
    ("D4RL/antmaze/large-play-v1", True, dict(alpha=3.0, gamma=0.99, q_agg="mean", total_steps=1_000_000)),
    ("D4RL/antmaze/umaze-v1", False, dict(alpha=10.0, gamma=0.99, q_agg="mean", total_steps=500_000)),
    ("D4RL/door/cloned-v2", False, dict(alpha=30000.0, gamma=0.99, q_agg="min", total_steps=500_000)),
    ("D4RL/door/cloned-v2", True, dict(alpha=1000.0, gamma=0.99, q_agg="min", total_steps=1_000_000)),
    ("D4RL/pen/expert-v2", True, dict(alpha=3000.0, gamma=0.99, q_agg="min", total_steps=500_000)),  # no online row
])
def test_task_settings_resolve_to_the_readme_row(env_id, online, expected, capsys):
    resolved = fql.resolve_task_settings(fql.Args(env_id=env_id, online_steps=1000 if online else 0))
    assert {k: getattr(resolved, k) for k in expected} == expected
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"task settings for {env_id} (paper row '") and f"alpha={expected['alpha']:g}" in out[0]


def test_task_settings_explicit_flag_wins(capsys):
    resolved = fql.resolve_task_settings(fql.Args(env_id="antmaze-giant-navigate-singletask-v0", alpha=1.0, q_agg="mean"))
    assert (resolved.alpha, resolved.q_agg, resolved.gamma) == (1.0, "mean", 0.995)
    assert "[alpha, q_agg set by flag]" in capsys.readouterr().out


@pytest.mark.parametrize("env_id", ["flowrl/reacher/mixed-v0", "mujoco/hopper/medium-v0"])
def test_task_settings_unknown_task_falls_back_to_generic_defaults(env_id, capsys):
    resolved = fql.resolve_task_settings(fql.Args(env_id=env_id))
    assert (resolved.alpha, resolved.gamma, resolved.q_agg, resolved.total_steps) == (10.0, 0.99, "mean", 1_000_000)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"task settings for {env_id} (not a paper task: generic defaults): "
                   "alpha=10, gamma=0.99, q_agg=mean, total_steps=1000000"]


def test_resolved_settings_are_saved_with_the_checkpoint(bandit_dataset, in_tmp):
    fql.main(tiny(env_id=str(bandit_dataset), alpha=None, total_steps=20, eval_freq=20, log_freq=10, eval_episodes=1,
                  eval_bc_flow=False, save_model=True))
    saved = torch.load(next(in_tmp.glob("runs/*/fql.pt")))["args"]
    assert (saved["alpha"], saved["gamma"], saved["q_agg"], saved["total_steps"]) == (10.0, 0.99, "mean", 20)

# ---------------------------------------------------------------------------------------------- flax defaults
def test_gelu_and_layer_norm_are_those_of_the_official_flax_networks():
    # utils/networks.py MLP uses flax nn.gelu = jax.nn.gelu(approximate=True) and nn.LayerNorm(epsilon=1e-6)
    x = torch.tensor([1.0, -2.0])
    tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # 0.841192 at 1 (erf: 0.841345)
    actor, critic = fql.mlp(1, 4, 1, 1), fql.Critic(1, 1, 8, 1, 2)
    assert torch.allclose(actor[1](x), tanh_gelu, atol=1e-6) and torch.allclose(critic.net[1](x), tanh_gelu, atol=1e-6)
    h = torch.zeros(2, 1, 8)
    h[..., 0] = 1e-3  # variance ~1e-7: the epsilon decides the scale
    expected = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(critic.net[2](h), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bad input: flags
# (the table of bad flag values is TABLES["fql"] in tests/test_bad_input.py)
@pytest.mark.parametrize("pattern", fql.TASK_SETTINGS)
@pytest.mark.parametrize("online", [False, True])
def test_every_paper_row_passes_check_args(pattern, online, capsys):
    """check_args validates the RESOLVED per-task values: none of the README's rows is refused."""
    fql.check_args(fql.resolve_task_settings(fql.Args(env_id=pattern, online_steps=1000 if online else 0)))


def test_the_generic_defaults_pass_check_args(capsys):
    fql.check_args(fql.resolve_task_settings(fql.Args()))


def test_check_args_runs_before_any_work(in_tmp, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read before the flags were checked")

    monkeypatch.setattr(fql, "load_offline_data", no_data)
    with pytest.raises(fql.ArgumentError, match="--batch-size must be >= 1 \\(got 0\\)"):
        fql.main(tiny(batch_size=0))
    assert not (in_tmp / "runs").exists()


# ---------------------------------------------------------------------------------------------- bad input: datasets
@pytest.fixture(scope="module")
def small_bandit(make_bandit_dataset):
    """The two-mode bandit with 300 episodes (loads ~7x faster than the 2000-episode one), for plumbing checks."""
    return make_bandit_dataset("small-bandit", n_episodes=300)


MINARI_CASES = {  # conftest.BROKEN_MINARI kind (or "no hdf5"): what the one line says after the file's path
    "empty hdf5": "main_data.hdf5 is empty",
    "garbage hdf5": "main_data.hdf5 is not a readable HDF5 file (truncated or corrupted",
    "truncated hdf5": "main_data.hdf5 is not a readable HDF5 file (truncated or corrupted",
    "episode without actions": "data: episode 3 cannot be read (KeyError",
    "episode cut short": "data: episode 3 has 1 observations, 1 actions, 1 rewards and 1 terminations (needs T + 1, T, T, T)",
    "broken metadata.json": "metadata.json is not valid JSON (JSONDecodeError",
    "no metadata.json": "has no metadata.json",
    "no hdf5": "has no main_data.hdf5",
}


@pytest.mark.parametrize("kind", list(MINARI_CASES))
def test_a_corrupted_minari_dataset_gives_one_line_naming_the_file(kind, small_bandit, tmp_path, monkeypatch):
    assert kind in BROKEN_MINARI or kind == "no hdf5"
    folder = tmp_path / "dataset"
    if kind == "no hdf5":
        shutil.copytree(small_bandit, folder)
        (folder / "data" / "main_data.hdf5").unlink()
    else:
        broken_minari_copy(small_bandit, folder, kind)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(fql.DatasetError) as caught:
        fql.main(tiny(env_id=str(folder)))
    message = str(caught.value)
    assert "\n" not in message and str(folder / "data") in message and MINARI_CASES[kind] in message, message
    assert time.perf_counter() - start < 10 and not (tmp_path / "runs").exists()


def test_a_corrupted_minari_dataset_under_minari_datasets_path_is_named(small_bandit, minari_root):
    """A Minari id already downloaded is read from MINARI_DATASETS_PATH with the same checks (not a traceback)."""
    folder = minari_root / "test" / "fql-broken-v0"
    if not folder.exists():
        shutil.copytree(small_bandit, folder)
        (folder / "data" / "metadata.json").write_text("")
    with pytest.raises(fql.DatasetError, match="fql-broken-v0/data/metadata.json is not valid JSON"):
        fql.load_offline_data("test/fql-broken-v0", "")


def test_a_corrupted_dataset_on_the_command_line_is_one_line(small_bandit, tmp_path):
    folder = broken_minari_copy(small_bandit, tmp_path / "dataset", "episode without actions")
    last = last_error_line(run_script("fql", "--env-id", str(folder), "--no-cuda"))
    assert last.startswith(f"error: Minari dataset {folder / 'data'}: episode 3 cannot be read"), last


@pytest.mark.parametrize("how,expected", [
    ("empty", "pointmaze-medium-navigate-v0.npz is empty"),
    ("truncated", "pointmaze-medium-navigate-v0.npz is not a readable .npz (truncated or corrupted: BadZipFile"),
    ("no actions", "pointmaze-medium-navigate-v0.npz has no 'actions'")])
def test_a_corrupted_ogbench_file_gives_one_line_naming_the_file(how, expected, ogbench_dir, tmp_path):
    folder = tmp_path / "ogbench"
    shutil.copytree(ogbench_dir, folder)
    npz = folder / "pointmaze-medium-navigate-v0.npz"
    if how == "empty":
        npz.write_bytes(b"")
    elif how == "truncated":
        os.truncate(npz, npz.stat().st_size // 2)
    else:
        arrays = dict(np.load(npz))
        del arrays["actions"]
        np.savez(npz, **arrays)
    with pytest.raises(fql.DatasetError) as caught:
        fql.load_offline_data(OGBENCH_TINY, str(folder))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"OGBench dataset file {folder}") and expected in message, message


def test_a_missing_ogbench_file_that_cannot_be_downloaded_is_named(ogbench_dir, tmp_path, monkeypatch):
    import ogbench.utils

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(ogbench.utils, "download_datasets", offline)
    folder = tmp_path / "ogbench"
    shutil.copytree(ogbench_dir, folder)
    (folder / "pointmaze-medium-navigate-v0-val.npz").unlink()
    with pytest.raises(fql.DatasetError, match="pointmaze-medium-navigate-v0-val.npz is not there and could not be "
                                               "downloaded \\(ConnectionError: no network\\); put it in --ogbench-dataset-dir"):
        fql.load_offline_data(OGBENCH_TINY, str(folder))


# ---------------------------------------------------------------------------------------------- bad input: checkpoints
@pytest.fixture(scope="module")
def checkpoint(small_bandit, tmp_path_factory):
    """An fql checkpoint of tiny() networks (hidden 64, 2 layers, 2 critics) at step 60, on the small bandit
    (observations 2, actions 2)."""
    folder = tmp_path_factory.mktemp("fql-checkpoint")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        fql.main(tiny(env_id=str(small_bandit), total_steps=60, eval_freq=60, save_model=True, eval_bc_flow=False))
    finally:
        os.chdir(cwd)
    return next(folder.glob("runs/*/fql.pt"))


def write_state(path, state) -> str:
    torch.save(state, path)
    return str(path)


def test_a_checkpoint_records_the_script_the_args_and_the_data_sizes(checkpoint):
    state = torch.load(checkpoint)
    assert state["script"] == "fql" and state["step"] == 60 and (state["obs_dim"], state["act_dim"]) == (2, 2)
    assert (state["args"]["hidden_dim"], state["args"]["num_layers"], state["args"]["num_critics"]) == (64, 2, 2)


TORCH_CASES = {  # conftest.BROKEN_TORCH kind: what the one line says after `--checkpoint <path>`
    "missing": "does not exist", "empty": "is empty", "garbage": "is not a readable torch file (UnpicklingError)",
    "text": "is not a readable torch file (", "truncated": "is not a readable torch file (",
    "a directory": "is a directory, not a file", "a tensor": "is not an fql checkpoint (it holds a Tensor)",
}


def checkpoint_case(name: str, checkpoint, folder):
    """(path to load, args overrides, expected text) for each bad checkpoint, built in `folder`."""
    if name in TORCH_CASES:
        return str(broken_torch_file(folder / "bad.pt", name, valid=checkpoint)), {}, TORCH_CASES[name]
    state = torch.load(checkpoint)
    old = {k: v for k, v in state.items() if k not in ("script", "obs_dim", "act_dim")}  # saved before this format
    cases = {
        "another script": lambda: (write_state(folder / "gfp.pt", {"script": "gfp", "actor": {}, "step": 5}), {},
                                   "is not an fql checkpoint: it was saved by gfp.py"),
        "entries missing": lambda: (write_state(folder / "partial.pt", {"critic": state["critic"], "step": 60}), {},
                                    "is not an fql checkpoint: it has no actor_bc_flow, actor_onestep_flow, target_critic, "
                                    "optimizer, args"),
        "other sizes": lambda: (str(checkpoint), dict(hidden_dim=32, num_layers=3),
                                "was made with other settings: --hidden-dim 32 (checkpoint: 64), --num-layers 3 "
                                "(checkpoint: 2); pass the checkpoint's values"),
        "other critics": lambda: (str(checkpoint), dict(num_critics=3), "--num-critics 3 (checkpoint: 2)"),
        "other dataset": lambda: (str(checkpoint), dict(env_id="flowrl/reacher/mixed-v0"),
                                  "was made for observations of size 2 and actions of size 2 (--env-id "
                                  f"{state['args']['env_id']}); this dataset has "),
        "other dataset, old format": lambda: (write_state(folder / "old.pt", old), dict(env_id="flowrl/reacher/mixed-v0"),
                                              "its networks do not load (RuntimeError: Error(s) in loading state_dict for "
                                              "VectorField: size mismatch"),
        "past the budget": lambda: (str(checkpoint), dict(total_steps=20),
                                    "is at step 60, past --total-steps 20; pass a larger --total-steps"),
        "past the budget with online steps": lambda: (str(checkpoint), dict(total_steps=20, online_steps=10),
                                                      "is at step 60, past --total-steps 20 + --online-steps 10; pass a "
                                                      "larger --total-steps or --online-steps"),
    }
    return cases[name]()


CHECKPOINT_CASES = list(TORCH_CASES) + ["another script", "entries missing", "other sizes", "other critics",
                                        "other dataset", "other dataset, old format", "past the budget",
                                        "past the budget with online steps"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_bad_checkpoint_gives_one_line_before_training(case, checkpoint, small_bandit, tmp_path, monkeypatch):
    assert case not in TORCH_CASES or case in BROKEN_TORCH
    folder = tmp_path / "files"
    folder.mkdir()
    path, overrides, expected = checkpoint_case(case, checkpoint, folder)
    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr(fql, "critic_loss", lambda *a, **k: trained.append(1))  # the first update would call it
    start = time.perf_counter()
    with pytest.raises(fql.CheckpointError) as caught:
        fql.main(tiny(**{"env_id": str(small_bandit), "checkpoint": path, **overrides}))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--checkpoint {path}") and expected in message, message
    assert not trained and time.perf_counter() - start < 10
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


def test_a_bad_checkpoint_on_the_command_line_is_one_line(checkpoint, small_bandit, tmp_path):
    """The issue's example: a checkpoint past --total-steps used to exit 0 having done nothing."""
    result = run_script("fql", "--env-id", str(small_bandit), "--no-cuda", "--checkpoint", str(checkpoint),
                        "--hidden-dim", "64", "--num-layers", "2", "--total-steps", "20")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0] == f"error: --checkpoint {checkpoint} is at step 60, past --total-steps 20; pass a larger --total-steps"


def test_a_checkpoint_at_the_budget_is_evaluated_with_a_notice(checkpoint, small_bandit, in_tmp, capsys, monkeypatch):
    trained = []
    original = fql.critic_loss
    monkeypatch.setattr(fql, "critic_loss", lambda *a, **k: trained.append(1) or original(*a, **k))
    metrics = fql.main(tiny(env_id=str(small_bandit), total_steps=60, checkpoint=str(checkpoint), eval_bc_flow=False))
    assert not trained and "eval/episodic_return" in metrics
    assert f"--checkpoint {checkpoint} is at step 60, the budget: evaluating it, no training" in capsys.readouterr().out


def test_a_checkpoint_saved_before_the_script_was_recorded_still_loads(checkpoint, small_bandit, in_tmp):
    state = torch.load(checkpoint)
    old = write_state(in_tmp / "old.pt", {k: v for k, v in state.items() if k not in ("script", "obs_dim", "act_dim")})
    metrics = fql.main(tiny(env_id=str(small_bandit), total_steps=70, eval_freq=70, checkpoint=old, eval_bc_flow=False))
    assert np.isfinite(metrics["eval/episodic_return"])


def test_two_runs_started_in_the_same_second_keep_their_own_directory(small_bandit, in_tmp, monkeypatch):
    """A run never writes into another run's directory, so it never overwrites that run's checkpoint."""
    clock = iter(1_700_000_000.0 + 1e-6 * np.arange(1, 100_000))  # the same second throughout, still increasing
    monkeypatch.setattr(fql.time, "time", lambda: float(next(clock)))
    for _ in range(2):
        fql.main(tiny(env_id=str(small_bandit), total_steps=10, eval_freq=10, eval_episodes=1, save_model=True,
                      eval_bc_flow=False))
    runs = sorted(p.name for p in (in_tmp / "runs").iterdir())
    assert len(runs) == 2 and runs[1] == runs[0] + "_1", runs
    assert all((in_tmp / "runs" / run / "fql.pt").exists() for run in runs)
