"""Tests for fpmd.py: losses with known answers (MeanFlow target at r = t, JVP vs finite differences,
weights, TD target, alpha), Prop. 2 (a Dirac target makes the 1-step sample equal the multi-step one),
best-of-N (noise before the min-Q argmax), the haiku init std, two critic Adam steps, the lean 1-NFE actor,
SAME_STEP autoreset bookkeeping and unseeded autoresets, a short online run on a tiny env
that beats the random policy measured in the same test, determinism, checkpoints and bad input."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import import_script, last_error_line, run_script

fpmd = import_script("fpmd")


# ---------------------------------------------------------------------------------------------- tiny envs
class PointGoalEnv(gym.Env):
    """A point in the plane driven to the origin: obs = position (start uniform in [-1, 1]^2), action = velocity
    in [-2, 2]^2 (so the script must rescale), x' = x + 0.1 a, reward -||x'||; leaving [-2, 2]^2 terminates
    with -10; 20 steps. Random policy ~ -13, driving straight to the goal ~ -3.
    `nan_reward_after`: from that many steps on (over the env's lifetime) the reward is NaN."""

    def __init__(self, nan_reward_after: int = -1):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.nan_reward_after, self.steps = nan_reward_after, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self.pos.copy(), {}

    def step(self, action):
        self.steps += 1
        self.pos = (self.pos + 0.1 * np.clip(action, -2.0, 2.0)).astype(np.float32)
        out = bool(np.abs(self.pos).max() > 2.0)
        reward = -float(np.linalg.norm(self.pos)) - 10.0 * out
        if 0 <= self.nan_reward_after < self.steps:
            reward = float("nan")
        return self.pos.copy(), reward, out, False, {}


class CounterEnv(gym.Env):
    """obs = [number of steps taken]; terminates after 3 steps (for the autoreset bookkeeping)."""

    observation_space = gym.spaces.Box(0.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, self.t == 3, False, {}


class ResetRecordingPointGoalEnv(PointGoalEnv):
    """PointGoal that records (its id, the reset seed, the start position) of every reset in `resets`."""

    resets: list = []

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        ResetRecordingPointGoalEnv.resets.append((id(self), seed, obs.copy()))
        return obs, info


gym.register("FPMDPointGoal-v0", entry_point=PointGoalEnv, max_episode_steps=20)
gym.register("FPMDPointGoalResets-v0", entry_point=ResetRecordingPointGoalEnv, max_episode_steps=20)
gym.register("FPMDPointGoalNaN-v0", entry_point=PointGoalEnv, max_episode_steps=20, kwargs={"nan_reward_after": 150})


def tiny(**overrides) -> "fpmd.Args":
    base = fpmd.Args(cuda=False, env_id="FPMDPointGoal-v0", total_timesteps=300, num_envs=2, learning_starts=100,
                     batch_size=64, hidden_dim=32, num_layers=2, num_particles=4, flow_steps=3, eval_freq=300,
                     eval_episodes=4, log_freq=100)
    return replace(base, **overrides)


def policy_net(variant: str, obs_dim=3, act_dim=2, hidden=32, dtype=torch.float32):
    torch.manual_seed(0)
    return fpmd.FlowPolicy(obs_dim, act_dim, hidden, 2, 1 if variant == "rf" else 2).to(dtype)


# ---------------------------------------------------------------------------------------------- MeanFlow
def test_meanflow_target_is_the_instantaneous_velocity_when_r_equals_t():
    policy = policy_net("mf")
    actions, noise = torch.rand(64, 2) * 2 - 1, torch.randn(64, 2)
    t = torch.rand(64, 1)
    loss, u_target = fpmd.mf_loss(policy, torch.randn(64, 3), actions, torch.ones(64), noise=noise, r=t, t=t)
    assert torch.equal(u_target, noise - actions)  # (t - r) du/dt vanishes: u_tgt = v = eps - a
    assert torch.isfinite(loss)


def test_jvp_total_derivative_matches_central_finite_differences():
    policy = policy_net("mf", dtype=torch.float64)
    obs, z, v = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    r, t = torch.rand(16, 1, dtype=torch.float64) * 0.4, 0.5 + torch.rand(16, 1, dtype=torch.float64) * 0.4
    u, dudt = fpmd.meanflow_u_and_dudt(policy, obs, z, v, r, t)
    h = 1e-6
    with torch.no_grad():
        fd = (policy(obs, z + h * v, r, t + h) - policy(obs, z - h * v, r, t - h)) / (2 * h)
        assert torch.allclose(u, policy(obs, z, r, t))
    assert torch.allclose(dudt, fd, rtol=1e-6, atol=1e-8), (dudt - fd).abs().max()


def test_mf_loss_is_the_weighted_mean_and_trains_only_through_u():
    policy = policy_net("mf")
    obs, actions, noise = torch.randn(32, 3), torch.rand(32, 2) * 2 - 1, torch.randn(32, 2)
    r, t = fpmd.sample_r_t(32, torch.device("cpu"))
    assert torch.all(r <= t)
    weights = torch.rand(32) * 3
    loss, u_target = fpmd.mf_loss(policy, obs, actions, weights, noise=noise, r=r, t=t)
    u = policy(obs, (1 - t) * actions + t * noise, r, t)
    assert loss.item() == pytest.approx((weights[:, None] * (u - u_target) ** 2).mean().item(), rel=1e-5)
    assert not u_target.requires_grad
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())


# ---------------------------------------------------------------------------------------------- RF loss, weights
class ExactDiracVelocity(torch.nn.Module):
    """The exact rectified-flow velocity towards a fixed action c: v(x_t, t) = (c - x_t) / (1 - t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, obs, x, t):
        return (self.c - x) / (1.0 - t)


def test_rf_loss_is_zero_for_the_exact_field_and_weighted_second_moment_for_the_zero_field():
    torch.manual_seed(0)
    c = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    actions, obs = c.expand(512, 2), torch.zeros(512, 1, dtype=torch.float64)
    t = torch.rand(512, 1, dtype=torch.float64) * 0.99
    assert fpmd.rf_loss(ExactDiracVelocity(c), obs, actions, torch.ones(512, dtype=torch.float64), t=t).item() < 1e-20
    # v = 0: loss = mean_i w_i ||a - eps||^2 / d = mean(w) (a^2 + 1) per dimension for a constant action a
    zero = lambda obs, x, t: torch.zeros_like(x)  # noqa: E731
    a = torch.full((40000, 2), 0.5)
    weights = torch.where(torch.arange(40000) % 2 == 0, 1.0, 3.0)
    assert fpmd.rf_loss(zero, torch.zeros(40000, 1), a, weights).item() == pytest.approx(2.0 * 1.25, rel=0.02)


def test_weights_are_exp_q_over_lambda_and_strictly_increasing_in_q():
    q = torch.linspace(-50.0, 50.0, 101)
    w = fpmd.fpmd_weights(q, torch.tensor(2.0), temperature=3.0)
    assert torch.allclose(w, torch.exp(q / 6.0))
    assert torch.all(w[1:] > w[:-1])
    # a larger running std (or temperature) flattens the weights: lambda = temperature * std
    w_flat = fpmd.fpmd_weights(q, torch.tensor(20.0), temperature=3.0)
    assert (w_flat.max() / w_flat.min()) < (w.max() / w.min())


def test_critic_loss_known_answer_with_the_min_of_the_target_critics_and_reward_scale():
    torch.manual_seed(0)
    critic, target = fpmd.Critic(3, 2, 16, 2), fpmd.Critic(3, 2, 16, 2)
    for net, values in ((critic, [0.5, 1.5]), (target, [1.0, 3.0])):
        with torch.no_grad():
            net.net[-1].weight.zero_()
            net.net[-1].bias.copy_(torch.tensor(values).view(2, 1, 1))
    batch = {"observations": torch.randn(4, 3), "actions": torch.rand(4, 2), "next_observations": torch.randn(4, 3),
             "rewards": torch.tensor([0.0, 1.0, -1.0, 2.0]), "dones": torch.tensor([0.0, 0.0, 1.0, 0.0])}
    loss, _ = fpmd.critic_loss(critic, target, batch, torch.rand(4, 2), gamma=0.9, reward_scale=0.2)
    y = 0.2 * batch["rewards"] + 0.9 * (1 - batch["dones"]) * 1.0  # min(1, 3) = 1
    expected = ((0.5 - y) ** 2).mean() + ((1.5 - y) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_alpha_moves_the_noise_entropy_towards_the_target():
    for alpha, direction in ((5.0, -1.0), (0.01, 1.0)):  # H(5) > -1.5 d > H(0.01)
        log_alpha = torch.tensor(np.log(alpha), requires_grad=True)
        fpmd.alpha_loss(log_alpha, act_dim=3, noise_scale=0.1, target_entropy=-4.5).backward()
        entropy = 1.5 * np.log(2 * np.pi * np.e * (0.1 * alpha) ** 2)
        assert log_alpha.grad.item() == pytest.approx(entropy + 4.5, rel=1e-5)
        assert np.sign(-log_alpha.grad.item()) == direction  # gradient descent step direction


# ---------------------------------------------------------------------------------------------- init
def haiku_linear_std(fan_in: int) -> float:
    """Std of haiku's default hk.Linear weights (haiku/_src/basic.py: TruncatedNormal(stddev=1/sqrt(fan_in));
    initializers.py: stddev * truncated_normal(-2, 2), with no rescaling, unlike VarianceScaling): the std of
    a standard normal truncated to [-2, 2], sqrt(1 - 2 * 2 phi(2) / (Phi(2) - Phi(-2))) = 0.8796, / sqrt(fan_in)."""
    phi2, mass = math.exp(-2.0) / math.sqrt(2 * math.pi), math.erf(2 / math.sqrt(2))
    return math.sqrt(1 - 4 * phi2 / mass) / math.sqrt(fan_in)


def test_linear_layers_have_haiku_default_init_std_and_truncation():
    torch.manual_seed(0)
    fan_in = 1024
    critic = fpmd.Critic(fan_in - 2, 2, 1024, 1)  # first layer: 2 x 1024 x 1024 weights with fan_in 1024
    policy = fpmd.FlowPolicy(3, 2, 1024, 2, 1)  # hidden layer: 1024 x 1024 with fan_in 1024
    for weight in (critic.net[0].weight, policy.net[2].weight):
        assert weight.std().item() == pytest.approx(haiku_linear_std(fan_in), rel=0.005)
        assert weight.abs().max().item() <= 2.0 / math.sqrt(fan_in)
    assert haiku_linear_std(1) == pytest.approx(0.87962566, rel=1e-7)  # haiku's own constant for this truncation
    assert torch.all(critic.net[0].bias == 0) and torch.all(policy.net[2].bias == 0)


# ---------------------------------------------------------------------------------------------- Prop. 2
def test_exact_dirac_fields_give_the_target_in_one_step_and_in_many():
    c = torch.tensor([[0.3, -0.7]]).expand(8, 2)
    z, obs = 0.5 * torch.randn(8, 2), torch.zeros(8, 1)
    for steps in (1, 20):
        assert torch.allclose(fpmd.rf_sample(ExactDiracVelocity(c), obs, z, steps), c, atol=1e-5)
    average = lambda obs, z, r, t: (z - c) / t  # noqa: E731  exact MeanFlow average velocity of a Dirac target
    for steps in (1, 4):
        assert torch.allclose(fpmd.mf_sample(average, obs, z, steps), c, atol=1e-5)


def one_vs_multi_step_gap(targets: torch.Tensor, updates: int = 300) -> float:
    """Fit an RF policy (unit weights) to `targets` (a constant obs), then E||1-step - 20-step sample||."""
    policy = policy_net("rf", obs_dim=1, hidden=64)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    obs = torch.zeros(128, 1)
    for _ in range(updates):
        idx = torch.randint(0, len(targets), (128,))
        loss = fpmd.rf_loss(policy, obs, targets[idx], torch.ones(128))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = 0.5 * torch.randn(2000, 2)
        one, many = fpmd.rf_sample(policy, torch.zeros(2000, 1), z, 1), fpmd.rf_sample(policy, torch.zeros(2000, 1), z, 20)
    return float((one - many).norm(dim=1).mean())


def test_prop2_one_step_error_is_small_for_a_dirac_target_and_large_for_a_spread_one():
    torch.manual_seed(0)
    dirac = one_vs_multi_step_gap(torch.tensor([[0.4, -0.3]]))
    bimodal = one_vs_multi_step_gap(torch.tensor([[0.7, 0.7], [-0.7, -0.7]]))
    assert bimodal > 0.3 and dirac < 0.2 * bimodal, (dirac, bimodal)


# ---------------------------------------------------------------------------------------------- acting
def test_best_of_n_takes_the_particle_with_the_highest_min_q():
    torch.manual_seed(0)
    policy = policy_net("rf", obs_dim=3)
    goal = torch.tensor([0.3, -0.2])
    critic = lambda obs, a: torch.stack([-(a - goal).square().sum(-1), -(a - goal).abs().sum(-1)])  # noqa: E731
    obs = torch.randn(50, 3)
    dist = {n: (fpmd.best_of_n_action(policy, critic, obs, "rf", 3, n, 1.0, None) - goal).norm(dim=1).mean() for n in (1, 64)}
    assert dist[64] < 0.5 * dist[1]
    # the choice is the argmax over the same (unclipped) particles, returned clipped: repeat by hand
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    chosen = fpmd.best_of_n_action(policy, critic, obs[:5], "rf", 3, 8, 1.0, None, g1)
    z = torch.randn(40, 2, generator=g2)
    with torch.no_grad():
        particles = fpmd.rf_sample(policy, obs[:5].repeat(8, 1), z, 3).view(8, 5, 2)
    best = critic(None, particles).min(0).values.argmax(0)
    assert torch.allclose(chosen, particles[best, torch.arange(5)].clamp(-1, 1))


class FixedParticles(torch.nn.Module):
    """A stub velocity field whose one Euler step from t = 0 lands on given particles (particle-major rows)."""

    def __init__(self, particles):
        super().__init__()
        self.particles, self.act_dim = particles, particles.shape[-1]

    def forward(self, obs, x, t):
        return self.particles - x


def test_best_of_n_scores_the_unclipped_particles_and_returns_the_winner_clipped():
    # one state, particles 1.5 and 0.8, Q peaked at a = 1: by Q(1.5) = -0.5 < Q(0.8) = -0.2 the official
    # get_action keeps 0.8 (scoring the clipped 1.0 instead, Q = 0, would keep the first particle)
    policy = FixedParticles(torch.tensor([[1.5], [0.8]]))
    critic = lambda obs, a: -(a - 1.0).abs().sum(-1).expand(2, -1)  # noqa: E731
    action = fpmd.best_of_n_action(policy, critic, torch.zeros(1, 1), "rf", 1, 2, 0.5, None)
    assert torch.allclose(action, torch.tensor([[0.8]]))
    policy = FixedParticles(torch.tensor([[1.5], [0.2]]))  # the winner is clipped on the way out
    assert torch.allclose(fpmd.best_of_n_action(policy, critic, torch.zeros(1, 1), "rf", 1, 2, 0.5, None), torch.tensor([[1.0]]))


def test_exploration_noise_is_added_to_every_particle_before_the_q_argmax():
    """Official get_action (network/rf.py, mf.py @78f90a6): particle_k + noise_k is scored by min-Q unclipped,
    the best noisy particle is returned clipped; no fresh noise after the selection."""
    torch.manual_seed(0)
    batch, n, noise_std = 2000, 2, torch.tensor(0.5)
    particles = torch.tensor([[0.0], [0.1]]).repeat_interleave(batch, 0)  # particle-major: 0.0 and 0.1 for every state
    seen = []

    def critic(obs, a):  # Q(s, a) = a (both critics), recording what it scores
        seen.append(a.clone())
        return a.sum(-1).expand(2, -1)

    action = fpmd.best_of_n_action(FixedParticles(particles), critic, torch.zeros(batch, 1), "rf", 1, n, 0.5, noise_std)
    scored = seen[0].view(n, batch, 1)
    noise = scored - particles.view(n, batch, 1)
    assert noise.std().item() == pytest.approx(0.5, rel=0.05) and noise.mean().abs().item() < 0.03
    best = scored.sum(-1).argmax(0)
    assert torch.equal(action, scored[best, torch.arange(batch)].clamp(-1, 1))
    # selecting before the noise would always keep particle 1 (Q 0.1 > 0.0); with the noise first, particle 0
    # wins whenever its noise beats particle 1's by 0.1: P = 1 - Phi(0.1 / (0.5 sqrt 2)) = 0.444
    assert (best == 0).float().mean().item() == pytest.approx(0.444, abs=0.04)


@pytest.mark.parametrize("variant", ["rf", "mf"])
def test_one_step_actor_equals_one_flow_step_of_the_policy(variant):
    policy = policy_net(variant, obs_dim=3)
    obs, z = torch.randn(7, 3), 0.5 * torch.randn(7, 2)
    with torch.no_grad():
        zeros, ones = torch.zeros(7, 1), torch.ones(7, 1)
        expected = fpmd.rf_sample(policy, obs, z, 1) if variant == "rf" else fpmd.mf_sample(policy, obs, z, 1)
        direct = z + policy(obs, z, zeros) if variant == "rf" else z - policy(obs, z, zeros, ones)
    actor = fpmd.OneStepActor(policy, variant, 0.5)
    assert torch.allclose(expected, direct)
    assert torch.allclose(actor(obs, z), expected.clamp(-1, 1), atol=1e-5)
    assert actor.act(obs).shape == (7, 2)


def test_same_step_autoreset_keeps_the_final_observation_for_the_buffer():
    envs = gym.vector.SyncVectorEnv([CounterEnv for _ in range(2)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset(seed=0)
    for step in range(1, 4):
        next_obs, _, terminated, _, infos = envs.step(np.zeros((2, 1), np.float32))
    real = fpmd.final_observations(next_obs, infos)
    assert terminated.all() and np.all(next_obs == 0.0) and np.all(real == 3.0)
    envs.close()


def test_training_envs_are_seeded_once_and_later_episodes_start_elsewhere(in_tmp):
    """gymnasium re-seeds an env's RNG on every seeded reset: only the first reset of each training env may
    carry a seed (SAME_STEP autoreset resets unseeded), so consecutive episodes start from different states."""
    ResetRecordingPointGoalEnv.resets.clear()
    fpmd.main(tiny(env_id="FPMDPointGoalResets-v0", total_timesteps=120, learning_starts=110, eval_freq=120,
                   eval_episodes=1))  # 60 steps per env: >= 3 episodes each; 6 updates at the end
    by_env = {}
    for env_id, seed, obs in ResetRecordingPointGoalEnv.resets:
        by_env.setdefault(env_id, []).append((seed, obs))
    training = [r for r in by_env.values() if r[0][0] in (1, 2)]  # vector env seeds args.seed + i
    assert len(training) == 2 and all(len(r) >= 3 for r in training)
    for resets in training:
        assert all(seed is None for seed, _ in resets[1:])
        starts = [obs for _, obs in resets]
        assert all(not np.allclose(a, b) for a, b in zip(starts, starts[1:]))


def test_actions_are_rescaled_and_discrete_spaces_rejected():
    env = fpmd.make_env("Pendulum-v1")  # Box(-2, 2) -> [-1, 1]
    assert np.allclose(env.action_space.low, -1) and np.allclose(env.action_space.high, 1)
    env.close()
    with pytest.raises(fpmd.EnvError, match="continuous 1-D Box action space"):
        fpmd.make_env("CartPole-v1")


# ---------------------------------------------------------------------------------------------- online runs
def random_policy_return(episodes: int, seed: int) -> float:
    """The uniform random policy on the evaluation's episode seeds."""
    env, rng = fpmd.make_env("FPMDPointGoal-v0"), np.random.default_rng(seed)
    envs = [env]
    metrics = fpmd.evaluate(envs, lambda obs: torch.as_tensor(rng.uniform(-1, 1, (obs.shape[0], 2)), dtype=torch.float32),
                            episodes, 10_000 * seed, torch.device("cpu"))
    env.close()
    return metrics["episodic_return"]


def test_short_online_run_beats_the_random_policy(in_tmp):
    """FPMD-R, 1600 env steps (700 updates): both the 1-NFE policy and the training sampler vs uniform random,
    on the same 30 evaluation episodes (measured: random -17.9, FPMD -7.0 (1 NFE) / -6.2 (best-of-4))."""
    args = tiny(total_timesteps=1600, learning_starts=200, hidden_dim=64, eval_freq=1600, eval_episodes=30, log_freq=800)
    metrics = fpmd.main(args)
    random_return = random_policy_return(30, args.seed)
    assert metrics["eval/episodic_return_1nfe"] > random_return + 3.0, (metrics, random_return)
    assert metrics["eval/episodic_return"] > random_return + 3.0, (metrics, random_return)


def test_meanflow_variant_runs_on_pendulum_and_the_checkpoint_reloads(in_tmp, capsys):
    args = tiny(env_id="Pendulum-v1", variant="mf", total_timesteps=240, learning_starts=120, eval_freq=240,
                eval_episodes=2, save_model=True)
    first = fpmd.main(args)
    assert all(np.isfinite(v) for v in first.values())
    assert list(in_tmp.glob("runs/*/events.out.tfevents.*"))
    path = next(in_tmp.glob("runs/*/fpmd.pt"))
    state = torch.load(path)
    assert state["step"] == 240 and state["num_updates"] == 61 and set(state["policy"]) == set(state["ema_policy"])
    assert state["script"] == "fpmd" and (state["obs_dim"], state["act_dim"]) == (3, 1)
    capsys.readouterr()
    # a checkpoint exactly at --total-timesteps: evaluated only, with a one-line notice
    again = fpmd.main(replace(args, checkpoint=str(path), save_model=False))
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: --checkpoint {path} is at env step 240, the end of --total-timesteps 240: evaluating it "
                     "only, no training"]
    assert again["eval/episodic_return_1nfe"] == pytest.approx(first["eval/episodic_return_1nfe"])
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])


def test_same_seed_gives_the_same_networks_on_cpu(tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        fpmd.main(tiny(total_timesteps=200, eval_episodes=2, eval_freq=200, save_model=True))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/fpmd.pt"))))
    for name in ("policy", "ema_policy", "critic", "target_critic"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)
    assert torch.equal(states[0]["log_alpha"], states[1]["log_alpha"])


def test_critics_take_two_adam_steps_per_update_by_default_and_one_with_the_flag_off(tmp_path, monkeypatch):
    """Official rf.py/mf.py @78f90a6 (lines 118-121 and 179-180 of algorithm/rf.py) apply the critics' Adam update
    twice per update with the same gradients; --no-critic-double-step takes one step."""
    updates = {}
    for double in (True, False):  # the default first
        monkeypatch.chdir(tmp_path)
        overrides = {} if double else {"critic_double_step": False}
        fpmd.main(tiny(total_timesteps=200, eval_episodes=1, eval_freq=200, save_model=True, exp_name=f"d{double}", **overrides))
        state = torch.load(next(tmp_path.glob(f"runs/*__d{double}__*/d{double}.pt")))
        updates[double] = state["num_updates"]
        critic_steps = {float(s["step"]) for s in state["critic_opt"]["state"].values()}
        policy_steps = {float(s["step"]) for s in state["policy_opt"]["state"].values()}
        assert critic_steps == {(2 if double else 1) * updates[double]}, (double, critic_steps, updates)
        assert policy_steps == {math.ceil(updates[double] / 2)}  # once every policy_freq = 2 updates either way
    assert updates[True] == updates[False] > 0


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(in_tmp):
    # each of the 2 envs returns NaN rewards after its 150th step (env step 300 in total): the evaluation
    # at env step 200 saved finite networks, a later check (every 100 env steps) stops training
    args = tiny(env_id="FPMDPointGoalNaN-v0", total_timesteps=1200, eval_freq=200, eval_episodes=1, log_freq=100,
                save_model=True)
    with pytest.raises(fpmd.NonFiniteLossError, match="non-finite loss"):
        fpmd.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/fpmd.pt")))
    assert state["step"] == 200
    assert all(torch.isfinite(v).all() for v in state["critic"].values())


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_env_id_exits_with_one_clear_line(in_tmp):
    result = run_script("fpmd", "--env-id", "NoSuchEnv-v0", "--no-cuda", env={"OMP_NUM_THREADS": "1"})
    last = last_error_line(result)
    assert last.startswith("error: cannot make --env-id 'NoSuchEnv-v0'") and "pprint_registry" in last


# ---------------------------------------------------------------------------------------------- checkpoints
# Every checkpoint problem is one CheckpointError (or ArgumentError) line, raised before any training: no run
# directory is created. One real checkpoint (FPMD-R on PointGoal, 2x32 networks, env step 300) for them all.
@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fpmd_checkpoint")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        fpmd.main(tiny(total_timesteps=300, eval_episodes=1, save_model=True))
    finally:
        os.chdir(cwd)
    return str(next(root.glob("runs/*/fpmd.pt")))


def refused(args, error=None) -> str:
    """main(args) raises a user error before any work (no runs/ directory): its one-line message."""
    with pytest.raises(error or fpmd.USER_ERRORS) as caught:
        fpmd.main(args)
    message = str(caught.value)
    assert "\n" not in message and not Path("runs").exists(), message
    return message


def test_broken_checkpoint_files_are_refused_in_one_line(in_tmp, saved_checkpoint):
    data = Path(saved_checkpoint).read_bytes()
    Path("empty.pt").write_bytes(b"")
    Path("garbage.pt").write_bytes(b"this is not a torch file\n" * 10)
    Path("truncated.pt").write_bytes(data[: len(data) // 2])
    Path("folder.pt").mkdir()
    torch.save([1, 2, 3], "list.pt")
    cases = {"missing.pt": "does not exist", "empty.pt": "is empty", "garbage.pt": "is not a readable torch file",
             "truncated.pt": "is not a readable torch file", "folder.pt": "is a directory",
             "list.pt": "is not an fpmd checkpoint: it holds a list"}
    for name, expected in cases.items():
        message = refused(tiny(total_timesteps=600, checkpoint=name), fpmd.CheckpointError)
        assert message.startswith(f"--checkpoint {name} ") and expected in message, message


def test_a_checkpoint_of_another_script_or_without_fpmd_entries_is_refused(in_tmp, saved_checkpoint):
    torch.save({"script": "fql", "actor_bc_flow": {}, "step": 10, "args": {}}, "fql.pt")
    state = torch.load(saved_checkpoint)
    del state["script"], state["critic"]
    torch.save(state, "partial.pt")
    assert "it was saved by fql.py" in refused(tiny(total_timesteps=600, checkpoint="fql.pt"), fpmd.CheckpointError)
    assert "it has no critic" in refused(tiny(total_timesteps=600, checkpoint="partial.pt"), fpmd.CheckpointError)


def test_a_checkpoint_of_other_networks_lists_every_mismatch(in_tmp, saved_checkpoint):
    message = refused(tiny(total_timesteps=600, checkpoint=saved_checkpoint, hidden_dim=64, variant="mf"),
                      fpmd.CheckpointError)
    assert "--variant mf (checkpoint: rf)" in message and "--hidden-dim 64 (checkpoint: 32)" in message, message
    assert "--num-layers 3 (checkpoint: 2)" in refused(tiny(total_timesteps=600, checkpoint=saved_checkpoint,
                                                            num_layers=3))
    message = refused(tiny(env_id="Pendulum-v1", total_timesteps=600, checkpoint=saved_checkpoint), fpmd.CheckpointError)
    assert "--env-id Pendulum-v1 with 3-D observations and 1-D actions (checkpoint: FPMDPointGoal-v0 with 2-D and 2-D)" \
        in message, message


def test_a_checkpoint_without_recorded_dims_that_does_not_fit_is_one_line(in_tmp, saved_checkpoint):
    state = torch.load(saved_checkpoint)
    del state["obs_dim"], state["act_dim"], state["script"]  # as checkpoints saved before the dims were recorded
    torch.save(state, "old.pt")
    message = refused(tiny(env_id="Pendulum-v1", total_timesteps=600, checkpoint="old.pt"), fpmd.CheckpointError)
    assert "does not load into these networks (RuntimeError" in message, message


def test_a_checkpoint_past_the_budget_or_too_close_to_it_to_train_is_refused(in_tmp, saved_checkpoint):
    message = refused(tiny(total_timesteps=298, checkpoint=saved_checkpoint), fpmd.CheckpointError)
    assert message == (f"--checkpoint {saved_checkpoint} is at env step 300, past --total-timesteps 298; pass a larger "
                       "--total-timesteps (or 300 to only evaluate it)")
    # 100 steps left, learning_starts 100: the (unsaved) buffer is refilled first, training would never start
    message = refused(tiny(total_timesteps=400, checkpoint=saved_checkpoint), fpmd.ArgumentError)
    assert "leaves 100 env steps after the checkpoint's 300, not more than --learning-starts 100" in message, message


def test_a_run_whose_budget_ends_inside_the_last_vector_step_evaluates_its_final_checkpoint(in_tmp, capsys):
    # 2 envs, --total-timesteps 301: the run takes 151 vector steps and ends (and saves) at env step 302; the same
    # command with that checkpoint only evaluates it
    args = tiny(total_timesteps=301, eval_freq=1000, eval_episodes=1, save_model=True)
    first = fpmd.main(args)
    path = next(in_tmp.glob("runs/*/fpmd.pt"))
    assert torch.load(path)["step"] == 302
    capsys.readouterr()
    again = fpmd.main(replace(args, checkpoint=str(path), save_model=False))
    assert "is at env step 302, the end of --total-timesteps 301: evaluating it only" in capsys.readouterr().out
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])


def test_a_checkpoint_resumes_its_run_up_to_the_total_budget(in_tmp, saved_checkpoint):
    before = torch.load(saved_checkpoint)
    fpmd.main(tiny(total_timesteps=600, checkpoint=saved_checkpoint, eval_freq=600, eval_episodes=1, save_model=True))
    after = torch.load(next(in_tmp.glob("runs/*/fpmd.pt")))
    # 150 more vector steps of 2 envs; updates once the refilled buffer holds 100 transitions: iterations 50..150
    assert after["step"] == 600 and after["num_updates"] == before["num_updates"] + 101, (before["num_updates"],
                                                                                        after["num_updates"])


def test_a_bad_checkpoint_on_the_command_line_is_one_error_line(in_tmp):
    Path("garbage.pt").write_bytes(b"\x00garbage")
    result = run_script("fpmd", "--checkpoint", "garbage.pt", "--no-cuda", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: --checkpoint garbage.pt is not a readable torch file (UnpicklingError)"], result.stderr
