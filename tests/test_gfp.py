"""Tests for gfp.py: guidance-weight properties, losses on cases with known answers, the two-mode bandit
(the VaBC flow moves its mass to the better mode, an unweighted BC flow does not), learning curve,
bad input, NaN handling, determinism, logging of the guidance statistics, every data path."""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import OGBENCH_TINY, ROOT, bandit_buffers, import_script, last_error_line, run_script
from toy_envs import GOOD_MODE, bandit_reward

gfp = import_script("gfp")


@pytest.fixture(scope="module")
def small_bandit(make_bandit_dataset):
    """The two-mode bandit with 200 episodes: loads 10x faster, for runs that only check plumbing."""
    return make_bandit_dataset("gfp-small-bandit", n_episodes=200)


@pytest.fixture(scope="module")
def random_start_dataset(minari_root):
    """20 random-action episodes of 5 steps on toy_envs.GfpRandomStartEnv (random start state at every reset)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    path = minari_root / "test/gfp-random-start-v0"
    if not path.exists():
        spec = gym.envs.registration.EnvSpec(id="GfpRandomStart-v0", entry_point="toy_envs:GfpRandomStartEnv",
                                             max_episode_steps=5)
        rng, buffers = np.random.default_rng(0), []
        for i in range(20):
            start = rng.uniform(-1, 1, 2).astype(np.float32)
            actions = rng.uniform(-1, 1, (5, 2)).astype(np.float32)
            positions = start + 0.1 * np.concatenate([np.zeros((1, 2)), np.cumsum(actions, 0)]).astype(np.float32)
            buffers.append(EpisodeBuffer(id=i, seed=i, observations=positions.astype(np.float32), actions=actions,
                                         rewards=-np.linalg.norm(positions[1:], axis=1).astype(np.float32),
                                         terminations=np.zeros(5, bool), truncations=np.arange(5) == 4))
        minari.create_dataset_from_buffers(dataset_id="test/gfp-random-start-v0", buffer=buffers, env=spec, eval_env=spec,
                                           ref_min_score=-10.0, ref_max_score=0.0, author="flowrl tests",
                                           author_email="tests@flowrl", algorithm_name="random", code_permalink="tests")
    return path


def record_buffer_adds(monkeypatch) -> list:
    """Every transition the training loop appends to the replay buffer (the online steps), as dicts of arrays."""
    added, original = [], gfp.ReplayBuffer.add

    def add(self, **transition):
        added.append({k: np.array(v, dtype=np.float32, copy=True) for k, v in transition.items()})
        original(self, **transition)

    monkeypatch.setattr(gfp.ReplayBuffer, "add", add)
    return added


def tiny(**overrides) -> "gfp.Args":
    base = gfp.Args(cuda=False, hidden_dim=64, num_layers=2, batch_size=64, total_steps=200, eval_freq=200,
                    eval_episodes=5, log_freq=100)
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------------- guidance weights
def test_guidance_weights_are_the_two_way_softmax_and_lie_in_0_1():
    torch.manual_seed(0)
    q_data, q_ref = torch.randn(1000, dtype=torch.float64) * 3, torch.randn(1000, dtype=torch.float64) * 3
    lam, eta = 0.7, 0.5  # |k * advantage| < 40: strictly inside (0, 1) in float64
    w = gfp.guidance_weights(q_data, q_ref, lam, eta)
    k = lam / eta
    softmax = torch.exp(k * q_data) / (torch.exp(k * q_data) + torch.exp(k * q_ref))
    assert torch.allclose(w, softmax, atol=1e-6)
    assert ((w > 0) & (w < 1)).all()
    assert gfp.guidance_weights(torch.tensor(1.0), torch.tensor(0.0), 1.0, 1.0).item() == pytest.approx(1 / (1 + np.exp(-1)))


def test_guidance_weight_is_one_half_when_data_and_reference_values_are_equal():
    q = torch.linspace(-5, 5, 11)
    for eta in (1e-6, 1e-3, 1.0):
        assert torch.equal(gfp.guidance_weights(q, q.clone(), 2.0, eta), torch.full_like(q, 0.5))


def test_guidance_weights_go_to_the_sign_of_the_advantage_as_eta_goes_to_zero():
    q_ref = torch.zeros(6)
    q_data = torch.tensor([-1.0, -0.1, -1e-3, 1e-3, 0.1, 1.0])
    w_soft = gfp.guidance_weights(q_data, q_ref, 1.0, 1.0)
    w_hard = gfp.guidance_weights(q_data, q_ref, 1.0, 1e-8)
    assert torch.equal(w_hard, (q_data > 0).float())
    # monotone in the advantage and sharper for a smaller eta
    assert (w_soft.diff() > 0).all()
    assert ((w_hard - 0.5).abs() >= (w_soft - 0.5).abs()).all()


def test_guidance_is_invariant_to_the_scale_of_q_through_lambda():
    # lambda = 1 / mean|Q|: multiplying every Q by c and lambda by 1/c leaves the weights unchanged
    torch.manual_seed(1)
    q_data, q_ref = torch.randn(64), torch.randn(64)
    w = gfp.guidance_weights(q_data, q_ref, 1.0, 0.1)
    assert torch.allclose(gfp.guidance_weights(100 * q_data, 100 * q_ref, 0.01, 0.1), w, atol=1e-6)


def test_advantage_guidance_is_the_unnormalised_exponential():
    q_data, q_ref = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.0, 0.5, 0.5])
    w = gfp.guidance_weights(q_data, q_ref, 2.0, 1.0, guidance_fn="advantage")
    assert torch.allclose(w, torch.exp(2.0 * (q_data - q_ref)))


def test_guidance_statistics_known_values():
    w = torch.tensor([0.1, 0.4, 0.6, 0.9])
    stats = gfp.guidance_statistics(w, 3 * w - 1)
    assert stats["mean"].item() == pytest.approx(0.5)
    assert stats["above_50"].item() == pytest.approx(0.5)
    assert stats["adv_corr"].item() == pytest.approx(1.0)
    assert gfp.guidance_statistics(torch.ones(4), torch.arange(4.0))["adv_corr"].item() == 0.0  # constant: 0, not NaN


# ---------------------------------------------------------------------------------------------- networks, sampler
def test_sinusoidal_time_embedding_known_values():
    emb = gfp.SinusoidalTimeEmbedding(64)
    t = torch.tensor([[0.0], [0.5]])
    out = emb(t)
    assert out.shape == (2, 64)
    assert torch.equal(out[0], torch.cat([torch.zeros(32), torch.ones(32)]))
    freqs = torch.exp(torch.arange(32) * (-np.log(10000.0) / 31))
    assert freqs[0] == 1.0 and freqs[-1].item() == pytest.approx(1e-4)
    assert torch.allclose(out[1], torch.cat([torch.sin(0.5 * freqs), torch.cos(0.5 * freqs)]))


class ExactField(torch.nn.Module):
    """The exact conditional velocity towards c (a tensor, or a function of obs): v(x_t, t) = (c - x_t) / (1 - t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, obs, x_t, t):
        c = self.c(obs) if callable(self.c) else self.c
        return (c - x_t) / (1.0 - t)


def test_euler_sampler_with_a_constant_field_lands_on_x0_plus_v():
    v = torch.tensor([0.25, -0.5])
    field = lambda obs, x, t: v.expand_as(x)  # noqa: E731
    z = torch.tensor([[0.1, 0.2], [0.9, -0.9]])
    out = gfp.sample_flow(field, torch.zeros(2, 1), z, flow_steps=10)
    assert torch.allclose(out, (z + v).clamp(-1, 1), atol=1e-6)


def test_flow_matching_error_is_zero_for_the_exact_velocity_and_known_for_the_zero_field():
    torch.manual_seed(0)
    actions = torch.tensor([[0.3, -0.7]]).expand(512, 2).double()
    assert gfp.flow_matching_errors(ExactField(actions), torch.zeros(512, 3, dtype=torch.float64), actions).max() < 1e-12
    # v = 0: error = E||a - x_0||^2 / d = a^2 + 1 per dimension (x_0 ~ N(0, I))
    zero = lambda obs, x, t: torch.zeros_like(x)  # noqa: E731
    errors = gfp.flow_matching_errors(zero, torch.zeros(20000, 1), torch.full((20000, 2), 0.5))
    assert errors.shape == (20000,) and errors.mean().item() == pytest.approx(1.25, rel=0.02)


# ---------------------------------------------------------------------------------------------- losses
def make_nets(obs_dim=3, act_dim=2, hidden=32):
    torch.manual_seed(0)
    return (gfp.VaBCField(obs_dim, act_dim, hidden, 2, 16), gfp.OneStepActor(obs_dim, act_dim, hidden, 2),
            gfp.Critic(obs_dim, act_dim, hidden, 2, 2), gfp.Critic(obs_dim, act_dim, hidden, 2, 2))


def constant_critic(critic, values):
    """Make member k output values[k] everywhere (zero last-layer weights, bias = value)."""
    last = critic.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(values, dtype=torch.float32).view(-1, 1, 1))
    return critic


def test_vabc_loss_with_eta_zero_is_plain_flow_matching():
    vabc, _, _, target = make_nets()
    obs, actions = torch.randn(32, 3), torch.rand(32, 2) * 2 - 1
    torch.manual_seed(5)
    loss, weights, _ = gfp.vabc_loss(vabc, target, obs, actions, actions, actions, torch.tensor(1.0), 0.0, "softmax", "mean", "actor")
    torch.manual_seed(5)  # the same noise: x_0 then t, the linear path, target velocity a - x_0
    x_0, t = torch.randn_like(actions), torch.rand(32, 1)
    expected = torch.nn.functional.mse_loss(vabc(obs, (1 - t) * x_0 + t * actions, t), actions - x_0)
    assert weights is None
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_vabc_loss_is_half_the_plain_loss_when_the_critic_cannot_tell_actions_apart():
    vabc, _, _, target = make_nets()
    constant_critic(target, [2.0, 4.0])
    obs, actions, other = torch.randn(32, 3), torch.rand(32, 2) * 2 - 1, torch.rand(32, 2) * 2 - 1
    torch.manual_seed(5)
    plain, _, _ = gfp.vabc_loss(vabc, target, obs, actions, other, other, torch.tensor(1.0), 0.0, "softmax", "mean", "actor")
    for agg in ("actor", "vabc", "min", "mean", "max"):
        torch.manual_seed(5)
        loss, weights, adv = gfp.vabc_loss(vabc, target, obs, actions, other, other, torch.tensor(1 / 3), 1e-3, "softmax",
                                           "mean", agg)
        assert torch.equal(weights, torch.full((32,), 0.5)) and torch.equal(adv, torch.zeros(32))
        assert loss.item() == pytest.approx(0.5 * plain.item(), rel=1e-6)


class SumCritic(torch.nn.Module):
    """A 2-member 'critic' with Q_1 = sum(a), Q_2 = 2 sum(a) (the observation is ignored)."""

    def forward(self, obs, actions):
        q = actions.sum(-1)
        return torch.stack([q, 2 * q])


def test_guidance_reference_follows_guidance_agg_and_uses_the_target_critic():
    vabc, _, _, _ = make_nets()
    obs = torch.randn(4, 3)
    data = torch.full((4, 2), 0.1)  # Qbar(s, a) = 1.5 * 0.2 = 0.3 (mean aggregation), 0.2 (min)
    actor_actions, flow_actions = torch.full((4, 2), 0.3), torch.full((4, 2), -0.2)  # 0.9 / 0.6 and -0.6 / -0.8
    for q_agg, agg, q_data, q_ref in [("mean", "actor", 0.3, 0.9), ("mean", "vabc", 0.3, -0.6), ("mean", "min", 0.3, -0.6),
                                      ("mean", "max", 0.3, 0.9), ("mean", "mean", 0.3, 0.15), ("min", "actor", 0.2, 0.6),
                                      ("min", "mean", 0.2, -0.1)]:
        _, weights, adv = gfp.vabc_loss(vabc, SumCritic(), obs, data, actor_actions, flow_actions, torch.tensor(2.0), 0.5,
                                        "softmax", q_agg, agg)
        assert torch.allclose(adv, torch.full((4,), q_data - q_ref), atol=1e-6), (q_agg, agg)
        assert torch.allclose(weights, torch.sigmoid(torch.full((4,), 4.0 * (q_data - q_ref))), atol=1e-6)


def test_vabc_loss_trains_only_the_vabc_field():
    vabc, _, critic, target = make_nets()
    obs, actions = torch.randn(16, 3), torch.rand(16, 2) * 2 - 1
    loss, _, _ = gfp.vabc_loss(vabc, critic, obs, actions, actions.flip(0), actions, torch.tensor(1.0), 1e-2, "softmax",
                               "mean", "min")
    loss.backward()
    assert all(p.grad is None for p in critic.parameters())  # no gradient through the guidance weights
    assert all(p.grad is not None for p in vabc.parameters())


def test_actor_losses_train_only_the_actor_and_normalise_q():
    vabc, actor, critic, _ = make_nets()
    constant_critic(critic, [3.0, 5.0])
    distill, q_loss, lam, clipped, flow_actions = gfp.actor_losses(actor, vabc, critic, torch.randn(8, 3), 2, 10, "mean", True)
    assert q_loss.item() == pytest.approx(-1.0) and lam.item() == pytest.approx(0.25)
    assert not clipped.requires_grad and clipped.abs().max() <= 1 and flow_actions.abs().max() <= 1
    _, q_min, lam_min, _, _ = gfp.actor_losses(actor, vabc, critic, torch.randn(8, 3), 2, 10, "min", False)
    assert q_min.item() == pytest.approx(-3.0) and lam_min.item() == pytest.approx(1 / 3)
    critic = gfp.Critic(3, 2, 32, 2, 2)  # a non-constant critic, so that the Q term has a gradient
    distill, q_loss, *_ = gfp.actor_losses(actor, vabc, critic, torch.randn(8, 3), 2, 10, "mean", True)
    (distill + q_loss).backward()
    assert all(p.grad is None for p in vabc.parameters())  # distillation target carries no gradient
    assert all(p.grad is None for p in critic.parameters())  # the Q term must not train the critic
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())


class ConstantActor(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, obs, z):
        return torch.full_like(z, self.value)


@pytest.mark.parametrize("target_agg, use_next, next_q", [
    ("actor", True, 1.5 * 0.8),  # the actor's next action 0.4 per dim: Q = mean of {sum, 2 sum} = 1.5 * 0.8
    ("vabc", True, 1.5 * 0.2),  # the VaBC flow lands on next_obs[:, :2] = 0.1
    ("vabc", False, 1.5 * -0.6),  # ... or on obs[:, :2] = -0.3 (the official code's target_use_next=False)
    ("min", True, 1.5 * 0.2), ("max", True, 1.5 * 0.8), ("mean", True, 1.5 * 0.5)])
def test_critic_loss_known_answer_for_every_target_rule(target_agg, use_next, next_q):
    _, _, critic, _ = make_nets()
    constant_critic(critic, [0.5, 1.5])
    vabc = ExactField(lambda obs: obs[:, :2])
    batch = {"observations": torch.full((4, 3), -0.3), "actions": torch.rand(4, 2) * 2 - 1,
             "next_observations": torch.full((4, 3), 0.1), "rewards": torch.tensor([0.0, 1.0, -1.0, 2.0]),
             "masks": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    loss, q = gfp.critic_loss(critic, SumCritic(), ConstantActor(0.4), vabc, batch, 0.9, "mean", target_agg, use_next, 10)
    target_q = batch["rewards"] + 0.9 * batch["masks"] * next_q
    expected = ((torch.tensor([[0.5], [1.5]]) - target_q) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(q, torch.tensor([[0.5] * 4, [1.5] * 4]))


def test_default_td_target_samples_the_vabc_next_action_at_s_as_the_release():
    """The release's fixed target_use_next=False, on a paper row that mixes the VaBC flow into the TD target (cube-*)."""
    args = gfp.resolve_task_settings(gfp.Args(env_id="cube-double-play-singletask-task2-v0"))
    assert args.target_agg == "mean" and args.target_use_next is False
    _, _, critic, _ = make_nets()
    constant_critic(critic, [0.5, 1.5])
    batch = {"observations": torch.full((4, 3), -0.3), "actions": torch.zeros(4, 2), "next_observations": torch.full((4, 3), 0.1),
             "rewards": torch.zeros(4), "masks": torch.ones(4)}
    vabc = ExactField(lambda obs: obs[:, :2])  # lands on the state it is sampled at: -0.3 (s) or 0.1 (s')
    loss, _ = gfp.critic_loss(critic, SumCritic(), ConstantActor(0.4), vabc, batch, 1.0, args.q_agg, args.target_agg,
                              args.target_use_next, args.flow_steps)
    next_q = 0.5 * (1.5 * 0.8 + 1.5 * -0.6)  # mean of Qbar(s', actor 0.4) and Qbar(s', VaBC sampled at s = -0.3)
    assert loss.item() == pytest.approx(((torch.tensor([0.5, 1.5]) - next_q) ** 2).mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- per-task settings
@pytest.mark.parametrize("env_id, row, expected", [
    ("cube-single-play-singletask-task2-v0", ("OGBench", "cube_single_play"),
     dict(total_steps=1_000_000, batch_size=256, gamma=0.99, target_agg="mean", guidance_agg="actor", alpha=10.0, eta=0.1)),
    ("humanoidmaze-large-navigate-singletask-task1-v0", ("OGBench", "humanoidmaze_large_navigate"),
     dict(batch_size=1024, gamma=0.999, flow_steps=30, q_agg="mean", target_agg="actor", guidance_agg="min", alpha=0.3, eta=1e-4)),
    ("humanoidmaze-medium-navigate-singletask-task3-v0", ("OGBench", "humanoidmaze_medium_navigate"),
     dict(gamma=0.995, target_agg="mean", guidance_agg="min", alpha=0.3, eta=1e-3)),
    ("antmaze-giant-navigate-singletask-task5-v0", ("OGBench", "antmaze_giant_navigate"),
     dict(batch_size=1024, gamma=0.995, q_agg="min", guidance_agg="min", alpha=0.1, eta=0.1)),
    ("D4RL/antmaze/large-play-v1", ("D4RL", "antmaze_large_play"),  # the Minari re-release takes the D4RL row
     dict(total_steps=500_000, gamma=0.99, q_agg="min", target_agg="actor", guidance_agg="actor", alpha=0.03, eta=1e-5)),
    ("antmaze-umaze-diverse-v2", ("D4RL", "antmaze_umaze_diverse"), dict(total_steps=500_000, alpha=0.1, eta=1e-3)),  # longest name wins
    ("pen-human-v1", ("D4RL", "pen_human_v1"), dict(total_steps=500_000, q_agg="mean", alpha=3.0, eta=1e-4)),
    ("D4RL/pen/expert-v2", ("Minari", "D4RL_pen_expert_v2"), dict(total_steps=1_000_000, batch_size=256, alpha=0.3, eta=1e-6)),
    ("mujoco/halfcheetah/simple-v0", ("Minari", "mujoco_halfcheetah_simple_v0"), dict(batch_size=1024, alpha=0.03, eta=1e-6)),
])
def test_paper_tasks_resolve_to_their_row(env_id, row, expected, capsys):
    assert gfp.find_task_row(env_id)[:2] == row
    args = gfp.resolve_task_settings(gfp.Args(env_id=env_id))
    assert {k: getattr(args, k) for k in expected} == expected
    assert all(getattr(args, k) is not None for k in gfp.TASK_FIELDS)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"task settings for {env_id} (paper row {row[0]} '{row[1]}')")


def test_explicit_flags_override_the_paper_row(capsys):
    args = gfp.resolve_task_settings(gfp.Args(env_id="cube-single-play-singletask-task2-v0", alpha=0.5, batch_size=32,
                                              target_agg="actor"))
    assert (args.alpha, args.batch_size, args.target_agg, args.eta) == (0.5, 32, "actor", 0.1)
    assert "explicit flags: batch_size, target_agg, alpha" in capsys.readouterr().out


@pytest.mark.parametrize("env_id", ["flowrl/reacher/mixed-v0", "mujoco/pusher/expert-v0"])
def test_unknown_tasks_get_the_generic_defaults_with_a_one_line_notice(env_id, capsys):
    args = gfp.resolve_task_settings(gfp.Args(env_id=env_id))
    assert {k: getattr(args, k) for k in gfp.TASK_FIELDS} == gfp.GENERIC_TASK_SETTINGS
    assert gfp.GENERIC_TASK_SETTINGS == dict(total_steps=1_000_000, batch_size=256, gamma=0.99, flow_steps=10, q_agg="mean",
                                             target_agg="actor", guidance_agg="actor", alpha=1.0, eta=1e-3)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"task settings for {env_id}: no GFP paper row") and "alpha=1.0" in out[0]


def test_resolved_settings_are_logged_and_saved(small_bandit, in_tmp):
    gfp.main(tiny(env_id=str(small_bandit), total_steps=10, eval_freq=10, log_freq=10, eval_episodes=1, batch_size=None,
                  save_model=True))
    saved = torch.load(next(in_tmp.glob("runs/*/gfp.pt")))["args"]
    assert {k: saved[k] for k in gfp.TASK_FIELDS} == {**gfp.GENERIC_TASK_SETTINGS, "total_steps": 10}


def test_gfp_reference_scores_replace_minari_metadata():
    assert gfp.reference_scores("D4RL/pen/expert-v2", {"ref_min_score": 0.0, "ref_max_score": 1.0}) == \
        (137.92955108500217, 8820.50845967583, "GFP")
    assert gfp.reference_scores("mujoco/hopper/medium-v0", {}) == (-20.272305, 3234.3, "GFP")
    assert gfp.reference_scores("mujoco/invertedpendulum/expert-v0", {"ref_min_score": 1, "ref_max_score": 2}) == \
        (1.0, 2.0, "Minari metadata")
    assert gfp.reference_scores("flowrl/reacher/mixed-v0", {}) is None
    assert gfp.normalized_score([137.92955108500217, 8820.50845967583, 4479.219005380416], 137.92955108500217,
                                8820.50845967583) == pytest.approx([0.0, 100.0, 50.0])


def test_a_loaded_hopper_dataset_is_scored_with_gfps_reference_returns(tmp_path, monkeypatch):
    """A Minari dataset whose id names hopper, with (wrong) metadata reference scores 0 and 1."""
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    spec = gym.envs.registration.EnvSpec(id="TwoModeBandit-v0", entry_point="toy_envs:TwoModeBanditEnv", max_episode_steps=1)
    minari.create_dataset_from_buffers(dataset_id="mujoco/hopper/gfp-test-v0", buffer=bandit_buffers(10, seed=0), env=spec,
                                       eval_env=spec, ref_min_score=0.0, ref_max_score=1.0, author="t", author_email="t@t",
                                       algorithm_name="t", code_permalink="t")
    data = gfp.load_offline_data(str(tmp_path / "mujoco/hopper/gfp-test-v0"), "")
    assert data.score([-20.272305, 3234.3, 1607.0138475]) == pytest.approx([0.0, 100.0, 50.0])


# ---------------------------------------------------------------------------------------------- behaviour
def mode_fraction(actions: np.ndarray) -> float:
    """Share of actions closer to the bandit's better mode."""
    return float(np.mean(np.linalg.norm(actions - GOOD_MODE, axis=1) < np.linalg.norm(actions + GOOD_MODE, axis=1)))


def trained_flow_share(run_dir, hidden: int) -> float:
    state = torch.load(next(run_dir.glob("runs/*/gfp.pt")))
    vabc = gfp.VaBCField(2, 2, hidden, 2)
    vabc.load_state_dict(state["vabc"])
    torch.manual_seed(0)
    return mode_fraction(gfp.sample_flow(vabc, torch.ones(2000, 2), torch.randn(2000, 2), 10).numpy())


def test_bandit_vabc_flow_moves_to_the_better_mode_while_the_unweighted_bc_flow_does_not(bandit_dataset, tmp_path, monkeypatch):
    """Same code path, same seed: eta = 1e-3 (GFP's default) vs eta = 0 (unweighted flow matching, FQL's BC flow)."""
    shares, metrics = {}, {}
    for eta in (1e-3, 0.0):
        folder = tmp_path / f"eta{eta}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        metrics[eta] = gfp.main(tiny(env_id=str(bandit_dataset), total_steps=1200, alpha=0.3, hidden_dim=128, eta=eta,
                                     eval_episodes=100, eval_freq=1200, log_freq=400, save_model=True))
        shares[eta] = trained_flow_share(folder, 128)
    assert shares[1e-3] >= 0.8, shares
    assert 0.3 < shares[0.0] < 0.7, shares
    # the VaBC flow and the actor both beat the unweighted BC flow on return
    assert metrics[1e-3]["eval/flow_normalized_score"] > metrics[0.0]["eval/flow_normalized_score"] + 10, metrics
    assert metrics[1e-3]["eval/actor_normalized_score"] > metrics[0.0]["eval/flow_normalized_score"] + 30, metrics


def reacher_dataset_score() -> float:
    """The behaviour policy's mean normalized score over the embedded dataset's episodes."""
    import minari

    dataset = minari.MinariDataset(ROOT / "datasets/flowrl/reacher/mixed-v0/data")
    returns = np.array([episode.rewards.sum() for episode in dataset.iterate_episodes()])
    return float(np.mean(100 * minari.get_normalized_score(dataset, returns)))


def test_learning_curve_on_the_embedded_reacher_dataset_beats_the_behaviour_policy(in_tmp):
    """GFP's actor and VaBC flow after 1000 updates vs the dataset's own score (its 1/3 random episodes score ~0)."""
    metrics = gfp.main(tiny(env_id="flowrl/reacher/mixed-v0", total_steps=1000, alpha=0.3, hidden_dim=128, batch_size=256,
                            eval_freq=1000, log_freq=500, eval_episodes=100))
    baseline = reacher_dataset_score()
    assert metrics["eval/actor_normalized_score"] > baseline + 25, (metrics, baseline)
    assert metrics["eval/flow_normalized_score"] > baseline + 15, (metrics, baseline)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_learning_curve_on_the_embedded_reacher_dataset_beats_an_unweighted_bc_flow(seed, tmp_path, monkeypatch):
    """GFP (actor and VaBC flow) vs the BC flow of the same code with eta = 0, 5000 updates, 100 episodes each."""
    metrics = {}
    for eta in (1e-3, 0.0):
        (tmp_path / str(eta)).mkdir()
        monkeypatch.chdir(tmp_path / str(eta))
        metrics[eta] = gfp.main(tiny(env_id="flowrl/reacher/mixed-v0", total_steps=5000, alpha=0.3, hidden_dim=128,
                                     batch_size=256, eval_freq=5000, log_freq=1000, eval_episodes=100, eta=eta, seed=seed))
    bc = metrics[0.0]["eval/flow_normalized_score"]
    assert metrics[1e-3]["eval/actor_normalized_score"] > bc + 10, metrics
    assert metrics[1e-3]["eval/flow_normalized_score"] > bc + 5, metrics


# ---------------------------------------------------------------------------------------------- logging, variants, data paths
def test_guidance_statistics_and_histogram_are_logged(small_bandit, in_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    gfp.main(tiny(env_id=str(small_bandit), total_steps=40, eval_freq=40, log_freq=20, eta=0.1))
    events = EventAccumulator(str(next(in_tmp.glob("runs/*"))), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()
    for tag in ("guidance/mean", "guidance/above_50", "guidance/adv_corr", "losses/vabc_loss", "losses/distill_loss",
                "eval/actor_episodic_return", "eval/flow_episodic_return", "eval/normalized_score"):
        assert tag in tags["scalars"], tag
    histograms = events.Histograms("guidance/weights")
    assert [h.step for h in histograms] == [20, 40]
    assert histograms[-1].histogram_value.num == 64 and 0 <= histograms[-1].histogram_value.min <= histograms[-1].histogram_value.max <= 1


@pytest.mark.parametrize("variant", [
    dict(guidance_fn="advantage", eta=1.0, guidance_agg="min", target_agg="mean", target_use_next=False, q_agg="min"),
    dict(target_agg="max", guidance_agg="vabc", normalize_q_loss=False, online_steps=20, eta_online=0.0)])
def test_variants_run(small_bandit, in_tmp, variant):
    metrics = gfp.main(tiny(env_id=str(small_bandit), total_steps=30, eval_freq=50, log_freq=25, **variant))
    assert np.isfinite(metrics["eval/actor_episodic_return"]) and np.isfinite(metrics["eval/flow_episodic_return"])


def test_ogbench_file_loads_and_trains(ogbench_dir, in_tmp):
    data = gfp.load_offline_data(OGBENCH_TINY, str(ogbench_dir))
    assert data.transitions["observations"].shape == (98, 2) and data.transitions["actions"].shape == (98, 2)
    metrics = gfp.main(tiny(env_id=OGBENCH_TINY, ogbench_dataset_dir=str(ogbench_dir), total_steps=20, eval_episodes=1,
                            eval_freq=20, log_freq=10, eval_flow=False))
    assert "eval/actor_success" in metrics and "eval/success" in metrics and "eval/flow_success" not in metrics


def test_ogbench_envs_judge_success_after_the_step(ogbench_dir):
    """success_timing='post' (ogbench < 1.2, the release's pin): a step that enters the goal succeeds on that step."""
    env = gfp.load_offline_data(OGBENCH_TINY, str(ogbench_dir)).make_env()
    maze = env.unwrapped
    assert maze._success_timing == "post"
    env.reset(seed=0)
    goal = np.array(maze.cur_goal_xy)
    maze.set_xy(goal + np.array([0.0, maze._goal_tol + 0.1]))  # just outside the goal; one step of -1 enters it
    _, reward, terminated, _, info = env.step(np.array([0.0, -1.0], dtype=np.float32))
    assert np.linalg.norm(maze.get_xy() - goal) < maze._goal_tol
    assert (reward, terminated, info["success"]) == (0.0, True, 1.0)  # 'pre' would give -1, False, 0
    env.close()


def test_online_episodes_start_from_different_states(random_start_dataset, in_tmp, monkeypatch):
    added = record_buffer_adds(monkeypatch)
    gfp.main(tiny(env_id=str(random_start_dataset), total_steps=5, online_steps=15, eval_freq=100, log_freq=10,
                  eval_episodes=1, eval_flow=False))
    assert len(added) == 15  # 3 episodes of 5 steps
    starts = [added[i]["observations"] for i in (0, 5, 10)]
    assert all(np.array_equal(added[i]["next_observations"], added[i + 1]["observations"]) for i in range(14) if i % 5 != 4)
    assert not np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[1], starts[2]), starts


def test_antmaze_reward_shift_applies_to_the_dataset_and_to_online_steps(make_bandit_dataset, in_tmp, monkeypatch):
    """D4RL antmaze: {0, 1} -> {-1, 0} by one function, offline and online (the buffer never mixes the two)."""
    assert gfp.transform_reward("D4RL/antmaze/large-play-v1", 1.0) == 0.0
    assert gfp.transform_reward("D4RL/pen/expert-v2", 1.0) == 1.0
    path = make_bandit_dataset("gfp-antmaze-bandit", n_episodes=200)
    data = gfp.load_offline_data(str(path), "")
    actions = np.stack([np.clip(b.actions[0], -1, 1) for b in bandit_buffers(200, seed=0)])
    assert np.allclose(data.transitions["rewards"], bandit_reward(actions) - 1.0, atol=1e-6)
    added = record_buffer_adds(monkeypatch)
    gfp.main(tiny(env_id=str(path), total_steps=5, online_steps=10, eval_freq=100, log_freq=10, eval_episodes=1,
                  eval_flow=False))
    assert len(added) == 10
    for transition in added:
        assert transition["rewards"] == pytest.approx(bandit_reward(transition["actions"]) - 1.0, abs=1e-6)


def test_evaluation_does_not_depend_on_the_number_of_eval_envs(random_start_dataset):
    data = gfp.load_offline_data(str(random_start_dataset), "")
    policy = lambda obs, z: (0.5 * z - obs).clamp(-1, 1)  # noqa: E731 (depends on the noise and on the state)
    results = [gfp.evaluate(data, [data.make_env() for _ in range(n)], policy, 7, 123, 2, torch.device("cpu"))
               for n in (1, 3, 7)]
    assert results[0] == results[1] == results[2]
    assert results[0]["episodic_return_std"] > 0  # episodes differ (start state and noise)


def test_main_builds_at_most_eval_envs_environments(small_bandit, in_tmp, monkeypatch):
    made, original = [], gfp.load_offline_data

    def counting(*args, **kwargs):
        data = original(*args, **kwargs)
        make_env = data.make_env
        data.make_env = lambda: made.append(1) or make_env()
        return data

    monkeypatch.setattr(gfp, "load_offline_data", counting)
    assert gfp.Args().eval_envs == 6
    gfp.main(tiny(env_id=str(small_bandit), total_steps=10, eval_freq=10, log_freq=10, eval_episodes=5, eval_envs=2))
    assert len(made) == 2
    made.clear()
    gfp.main(tiny(env_id=str(small_bandit), total_steps=10, eval_freq=10, log_freq=10, eval_episodes=3))
    assert len(made) == 3


def test_online_finetuning_appends_to_the_buffer_and_logs_returns(small_bandit, in_tmp):
    metrics = gfp.main(tiny(env_id=str(small_bandit), total_steps=40, online_steps=40, eval_freq=80, log_freq=20, eta_online=0.01))
    assert np.isfinite(metrics["eval/episodic_return"])
    assert list(in_tmp.glob("runs/*/events.out.tfevents.*"))


def test_same_seed_gives_the_same_networks_on_cpu(small_bandit, tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        gfp.main(tiny(env_id=str(small_bandit), total_steps=60, eval_freq=60, log_freq=30, save_model=True, eval_flow=False))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/gfp.pt"))))
    for name in ("vabc", "actor", "critic", "target_critic"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)


def test_checkpoint_reloads_and_evaluates(small_bandit, in_tmp):
    first = gfp.main(tiny(env_id=str(small_bandit), total_steps=60, eval_freq=60, save_model=True))
    path = next(in_tmp.glob("runs/*/gfp.pt"))
    again = gfp.main(tiny(env_id=str(small_bandit), total_steps=60, checkpoint=str(path)))
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])
    assert again["eval/flow_episodic_return"] == pytest.approx(first["eval/flow_episodic_return"])


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_env_id_exits_with_one_clear_line(in_tmp):
    last = last_error_line(run_script("gfp", "--env-id", "nosuch/dataset-v0", "--no-cuda"))
    assert last.startswith("error: cannot load --env-id 'nosuch/dataset-v0'") and "minari list remote" in last


def test_negative_eta_is_rejected(small_bandit, in_tmp):
    with pytest.raises(gfp.ArgumentError, match="--eta"):
        gfp.main(tiny(env_id=str(small_bandit), eta=-1.0))


def test_discrete_action_dataset_is_rejected(minari_root):
    import minari
    from minari.data_collector import EpisodeBuffer

    path = minari_root / "test/discrete-gfp-v0"
    if not path.exists():
        buffers = [EpisodeBuffer(id=0, observations=np.zeros((3, 4), np.float32), actions=np.array([0, 1]),
                                 rewards=np.zeros(2, np.float32), terminations=np.array([False, True]), truncations=np.zeros(2, bool))]
        minari.create_dataset_from_buffers("test/discrete-gfp-v0", buffers, env="CartPole-v1", ref_min_score=0.0,
                                           ref_max_score=1.0, author="t", author_email="t@t", algorithm_name="t", code_permalink="t")
    with pytest.raises(gfp.DatasetError, match="continuous 1-D Box action space"):
        gfp.load_offline_data(str(path), "")


def test_non_finite_dataset_values_are_rejected(small_bandit, monkeypatch):
    original = gfp.load_minari

    def poisoned(dataset, env_id, *where):
        data = original(dataset, env_id, *where)
        data.transitions["rewards"][3] = np.nan
        return data

    monkeypatch.setattr(gfp, "load_minari", poisoned)
    with pytest.raises(gfp.DatasetError, match="non-finite values in 'rewards'"):
        gfp.load_offline_data(str(small_bandit), "")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(make_bandit_dataset, in_tmp):
    # the env returns NaN rewards from its 20th step: the online phase puts them in the buffer
    dataset = make_bandit_dataset("nan-bandit", n_episodes=200, nan_reward_after=20)
    args = tiny(env_id=str(dataset), total_steps=100, eval_freq=100, eval_episodes=1, online_steps=300, log_freq=50,
                save_model=True)
    with pytest.raises(gfp.NonFiniteLossError, match="non-finite loss"):
        gfp.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/gfp.pt")))
    assert state["step"] == 100
    assert all(torch.isfinite(v).all() for v in state["critic"].values())


# ---------------------------------------------------------------------------------------------- bad input: flags
# (the table of bad flag values is TABLES["gfp"] in tests/test_bad_input.py)
@pytest.mark.parametrize("row", gfp.TASK_SETTINGS, ids=[f"{r[0]}:{r[1]}" for r in gfp.TASK_SETTINGS])
def test_every_paper_row_passes_check_args(row):
    """check_args validates the RESOLVED per-task values: none of the paper's rows is refused."""
    gfp.check_args(replace(gfp.Args(), **dict(zip(gfp.TASK_FIELDS, row[2:]))))


def test_the_generic_defaults_pass_check_args(capsys):
    gfp.check_args(gfp.resolve_task_settings(gfp.Args()))


def test_check_args_runs_before_any_work(in_tmp, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read before the flags were checked")

    monkeypatch.setattr(gfp, "load_offline_data", no_data)
    with pytest.raises(gfp.ArgumentError, match="--batch-size must be >= 1 \\(got 0\\)"):
        gfp.main(tiny(batch_size=0))
    assert not (in_tmp / "runs").exists()


# ---------------------------------------------------------------------------------------------- bad input: datasets
def hdf5_of(folder):
    return folder / "data" / "main_data.hdf5"


def drop_entry(folder, episode: str, key: str) -> None:
    import h5py

    with h5py.File(hdf5_of(folder), "r+") as f:
        del f[episode][key]


def misalign_rewards(folder) -> None:
    import h5py

    with h5py.File(hdf5_of(folder), "r+") as f:
        del f["episode_1"]["rewards"]
        f["episode_1"]["rewards"] = np.zeros(3, np.float32)


DATASET_CASES = {  # name: (how the copy of a good dataset is damaged, what the one line says after the file's path)
    "empty hdf5": (lambda d: hdf5_of(d).write_bytes(b""), "main_data.hdf5 is empty"),
    "truncated hdf5": (lambda d: os.truncate(hdf5_of(d), hdf5_of(d).stat().st_size // 2),
                       "main_data.hdf5 is not a readable HDF5 file (truncated or corrupted"),
    "garbage hdf5": (lambda d: hdf5_of(d).write_bytes(b"not an hdf5 file " * 50),
                     "main_data.hdf5 is not a readable HDF5 file (truncated or corrupted"),
    "no hdf5": (lambda d: hdf5_of(d).unlink(), "has no main_data.hdf5"),
    "broken metadata.json": (lambda d: (d / "data" / "metadata.json").write_text("{broken"),
                             "metadata.json is not valid JSON (JSONDecodeError"),
    "no metadata.json": (lambda d: (d / "data" / "metadata.json").unlink(), "has no metadata.json"),
    "episode without actions": (lambda d: drop_entry(d, "episode_3", "actions"),
                                "data: episode 3 cannot be read (KeyError: \"Unable to synchronously open object (object 'actions'"),
    "episode with 3 rewards for 1 action": (misalign_rewards, "data: episode 1 has 2 observations, 1 actions, 3 rewards"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_a_corrupted_minari_dataset_gives_one_line_naming_the_file(case, small_bandit, tmp_path, monkeypatch):
    import shutil

    damage, expected = DATASET_CASES[case]
    folder = tmp_path / "dataset"
    shutil.copytree(small_bandit, folder)
    damage(folder)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(gfp.DatasetError) as caught:
        gfp.main(tiny(env_id=str(folder)))
    message = str(caught.value)
    assert "\n" not in message and str(folder / "data") in message and expected in message, message
    assert time.perf_counter() - start < 10 and not (tmp_path / "runs").exists()


def test_a_corrupted_minari_dataset_under_minari_datasets_path_is_named(small_bandit, minari_root):
    """A Minari id already downloaded is read from MINARI_DATASETS_PATH with the same checks (not a traceback)."""
    import shutil

    folder = minari_root / "test" / "gfp-broken-v0"
    if not folder.exists():
        shutil.copytree(small_bandit, folder)
        (folder / "data" / "metadata.json").write_text("")
    with pytest.raises(gfp.DatasetError, match="gfp-broken-v0/data/metadata.json is not valid JSON"):
        gfp.load_offline_data("test/gfp-broken-v0", "")


def test_a_corrupted_dataset_on_the_command_line_is_one_line(small_bandit, tmp_path):
    import shutil

    folder = tmp_path / "dataset"
    shutil.copytree(small_bandit, folder)
    drop_entry(folder, "episode_0", "actions")
    last = last_error_line(run_script("gfp", "--env-id", str(folder), "--no-cuda"))
    assert last.startswith(f"error: Minari dataset {folder / 'data'}: episode 0 cannot be read"), last


def damage_npz(path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "no actions":
        arrays = dict(np.load(path))
        del arrays["actions"]
        np.savez(path, **arrays)


@pytest.mark.parametrize("how,expected", [
    ("empty", "pointmaze-medium-navigate-v0.npz is empty"),
    ("truncated", "pointmaze-medium-navigate-v0.npz is not a readable .npz (truncated or corrupted: BadZipFile"),
    ("no actions", "pointmaze-medium-navigate-v0.npz has no 'actions'")])
def test_a_corrupted_ogbench_file_gives_one_line_naming_the_file(how, expected, ogbench_dir, tmp_path):
    import shutil

    folder = tmp_path / "ogbench"
    shutil.copytree(ogbench_dir, folder)
    damage_npz(folder / "pointmaze-medium-navigate-v0.npz", how)
    with pytest.raises(gfp.DatasetError) as caught:
        gfp.load_offline_data(OGBENCH_TINY, str(folder))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"OGBench dataset file {folder}") and expected in message, message


def test_a_missing_ogbench_file_that_cannot_be_downloaded_is_named(ogbench_dir, tmp_path, monkeypatch):
    import shutil

    import ogbench.utils

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(ogbench.utils, "download_datasets", offline)
    folder = tmp_path / "ogbench"
    shutil.copytree(ogbench_dir, folder)
    (folder / "pointmaze-medium-navigate-v0-val.npz").unlink()
    with pytest.raises(gfp.DatasetError, match="pointmaze-medium-navigate-v0-val.npz is not there and could not be "
                                               "downloaded \\(ConnectionError: no network\\); put it in --ogbench-dataset-dir"):
        gfp.load_offline_data(OGBENCH_TINY, str(folder))


# ---------------------------------------------------------------------------------------------- bad input: checkpoints
@pytest.fixture(scope="module")
def checkpoint(small_bandit, tmp_path_factory):
    """A gfp checkpoint of tiny() networks (hidden 64, 2 layers) at step 60, on the small bandit (obs 2, actions 2)."""
    folder = tmp_path_factory.mktemp("gfp-checkpoint")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        gfp.main(tiny(env_id=str(small_bandit), total_steps=60, eval_freq=60, save_model=True, eval_flow=False))
    finally:
        os.chdir(cwd)
    return next(folder.glob("runs/*/gfp.pt"))


@pytest.fixture(scope="module")
def wide_bandit(minari_root):
    """20 one-step bandit episodes with 3-D observations (the small bandit has 2-D ones)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    path = minari_root / "test/gfp-wide-bandit-v0"
    if not path.exists():
        buffers = [EpisodeBuffer(id=b.id, seed=b.seed, observations=np.ones((2, 3), np.float32), actions=b.actions,
                                 rewards=b.rewards, terminations=b.terminations, truncations=b.truncations)
                   for b in bandit_buffers(20, seed=0)]
        minari.create_dataset_from_buffers(dataset_id="test/gfp-wide-bandit-v0", buffer=buffers,
                                           observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                                           action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                                           ref_min_score=0.0, ref_max_score=1.0, author="flowrl tests",
                                           author_email="tests@flowrl", algorithm_name="t", code_permalink="tests")
    return path


def write_state(path, state) -> str:
    torch.save(state, path)
    return str(path)


def test_a_checkpoint_records_the_script_the_args_and_the_data_sizes(checkpoint):
    state = torch.load(checkpoint)
    assert state["script"] == "gfp" and state["step"] == 60 and (state["obs_dim"], state["act_dim"]) == (2, 2)
    assert state["args"]["hidden_dim"] == 64 and state["args"]["guidance_fn"] == "softmax"


def checkpoint_case(name: str, checkpoint, folder, wide):
    """(path to load, args overrides, expected text) for each bad checkpoint, built in `folder` (`wide`: a dataset
    with 3-D observations)."""
    state = torch.load(checkpoint)
    old = {k: v for k, v in state.items() if k not in ("script", "obs_dim", "act_dim")}  # saved before this format
    cases = {
        "missing": (str(folder / "nosuch.pt"), {}, "does not exist"),
        "a directory": (str(folder), {}, "is a directory, not a file"),
        "empty": (str(folder / "empty.pt"), {}, "is empty"),
        "garbage": (str(folder / "garbage.pt"), {}, "is not a readable torch file ("),
        "truncated": (str(folder / "truncated.pt"), {}, "is not a readable torch file"),
        "another script": (write_state(folder / "fql.pt", {"script": "fql", "actor": {}, "step": 5}), {},
                           "is not a gfp checkpoint: it was saved by fql.py"),
        "not a dict": (write_state(folder / "list.pt", [1, 2, 3]), {}, "is not a gfp checkpoint (it holds a list)"),
        "entries missing": (write_state(folder / "partial.pt", {"actor": state["actor"], "step": 60}), {},
                            "is not a gfp checkpoint: it has no vabc, critic, target_critic, optimizer, args"),
        "other sizes": (str(checkpoint), dict(hidden_dim=32, num_layers=3),
                        "was made with other settings: --hidden-dim 32 (checkpoint: 64), --num-layers 3 (checkpoint: 2); "
                        "pass the checkpoint's values"),
        "other critics": (str(checkpoint), dict(num_critics=3), "--num-critics 3 (checkpoint: 2)"),
        "other variant": (str(checkpoint), dict(guidance_fn="advantage"), "--guidance-fn advantage (checkpoint: softmax)"),
        "other dataset": (str(checkpoint), dict(env_id=str(wide)),
                          "was made for observations of size 2 and actions of size 2 (--env-id "
                          f"{state['args']['env_id']}); this dataset has 3 and 2"),
        "other dataset, old format": (write_state(folder / "old.pt", old), dict(env_id=str(wide)),
                                      "its networks do not load (RuntimeError: Error(s) in loading state_dict for VaBCField: "
                                      "size mismatch"),
        "past the budget": (str(checkpoint), dict(total_steps=20),
                            "is at step 60, past --total-steps 20; pass a larger --total-steps"),
        "past the budget with online steps": (str(checkpoint), dict(total_steps=20, online_steps=10),
                                              "is at step 60, past --total-steps 20 + --online-steps 10; pass a larger "
                                              "--total-steps or --online-steps"),
    }
    (folder / "empty.pt").write_bytes(b"")
    (folder / "garbage.pt").write_bytes(b"this is not a checkpoint" * 20)
    data = checkpoint.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    return cases[name]


CHECKPOINT_CASES = ["missing", "a directory", "empty", "garbage", "truncated", "another script", "not a dict",
                    "entries missing", "other sizes", "other critics", "other variant", "other dataset",
                    "other dataset, old format", "past the budget", "past the budget with online steps"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_bad_checkpoint_gives_one_line_before_training(case, checkpoint, small_bandit, wide_bandit, tmp_path,
                                                         monkeypatch):
    folder = tmp_path / "files"
    folder.mkdir()
    path, overrides, expected = checkpoint_case(case, checkpoint, folder, wide_bandit)
    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr(gfp, "critic_loss", lambda *a, **k: trained.append(1))  # the first update would call it
    start = time.perf_counter()
    with pytest.raises(gfp.CheckpointError) as caught:
        gfp.main(tiny(**{"env_id": str(small_bandit), "checkpoint": path, **overrides}))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--checkpoint {path}") and expected in message, message
    assert not trained and time.perf_counter() - start < 10
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


def test_a_bad_checkpoint_on_the_command_line_is_one_line(checkpoint, small_bandit, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage")
    result = run_script("gfp", "--env-id", str(small_bandit), "--no-cuda", "--checkpoint", str(garbage))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --checkpoint {garbage} is not a readable torch file ("), lines[0]


def test_a_checkpoint_at_the_budget_is_evaluated_with_a_notice(checkpoint, small_bandit, in_tmp, capsys, monkeypatch):
    trained = []
    original = gfp.critic_loss
    monkeypatch.setattr(gfp, "critic_loss", lambda *a, **k: trained.append(1) or original(*a, **k))
    metrics = gfp.main(tiny(env_id=str(small_bandit), total_steps=60, checkpoint=str(checkpoint), eval_flow=False))
    assert not trained and "eval/episodic_return" in metrics
    assert f"--checkpoint {checkpoint} is at step 60, the budget: evaluating it, no training" in capsys.readouterr().out


def test_a_checkpoint_saved_before_the_script_was_recorded_still_loads(checkpoint, small_bandit, in_tmp):
    state = torch.load(checkpoint)
    old = write_state(in_tmp / "old.pt", {k: v for k, v in state.items() if k not in ("script", "obs_dim", "act_dim")})
    metrics = gfp.main(tiny(env_id=str(small_bandit), total_steps=70, eval_freq=70, checkpoint=old, eval_flow=False))
    assert np.isfinite(metrics["eval/episodic_return"])


def test_two_runs_started_in_the_same_second_keep_their_own_directory(small_bandit, in_tmp, monkeypatch):
    """A run never writes into another run's directory, so it never overwrites that run's checkpoint."""
    clock = iter(1_700_000_000.0 + 1e-6 * np.arange(1, 100_000))  # the same second throughout, still increasing
    monkeypatch.setattr(gfp.time, "time", lambda: float(next(clock)))
    for _ in range(2):
        gfp.main(tiny(env_id=str(small_bandit), total_steps=10, eval_freq=10, eval_episodes=1, save_model=True,
                      eval_flow=False))
    runs = sorted(p.name for p in (in_tmp / "runs").iterdir())
    assert len(runs) == 2 and runs[1] == runs[0] + "_1", runs
    assert all((in_tmp / "runs" / run / "gfp.pt").exists() for run in runs)


# ---------------------------------------------------------------------------------------------- flax defaults
def test_gelu_and_layer_norm_are_those_of_the_official_flax_networks():
    # utils/networks.py @49f6b17: flax nn.gelu = jax.nn.gelu(approximate=True) and nn.LayerNorm() (epsilon 1e-6)
    x = torch.tensor([1.0, -2.0])
    tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # 0.841192 at 1 (erf: 0.841345)
    actor, critic = gfp.mlp(1, 4, 1, 1), gfp.Critic(1, 1, 8, 1, 2)
    assert torch.allclose(actor[1](x), tanh_gelu, atol=1e-6) and torch.allclose(critic.net[1](x), tanh_gelu, atol=1e-6)
    h = torch.zeros(2, 1, 8)
    h[..., 0] = 1e-3  # variance ~1e-7: the epsilon decides the scale
    expected = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(critic.net[2](h), expected, atol=1e-4)
