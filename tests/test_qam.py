"""Tests for qam.py: the adjoint-matching pieces against closed forms (lean adjoint of a linear base field,
f = b at inv_temp = 0, the tilted-Gaussian mean), the critic / BC / edit losses, the chunked sampler, the
two-mode bandit and the embedded Reacher dataset against the BC flow of the same run, bad input, NaN
handling, determinism and the data paths."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import OGBENCH_TINY, import_script, last_error_line, run_script
from toy_envs import GOOD_MODE, bandit_reward

qam = import_script("qam")


def tiny(**overrides) -> "qam.Args":
    base = qam.Args(cuda=False, hidden_dim=64, num_layers=2, batch_size=64, total_steps=200, eval_freq=200,
                    eval_episodes=5, log_freq=100, horizon_length=1, num_critics=2, start_training=0)
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------------- adjoint matching
class LinearField(torch.nn.Module):
    """b(s, x, t) = t * A x + c: Jacobian in x is t * A, so the lean adjoint has a closed form."""

    def __init__(self, A, c):
        super().__init__()
        self.A, self.c = A, c

    def forward(self, obs, x, t):
        return t * (x @ self.A.T) + self.c


def test_lean_adjoint_of_a_linear_base_field_matches_the_closed_form_product():
    # a_i = (I + h J_i)^T a_{i+1},  J_i = 2 (t_i + h) A - I / (t_i + h): product of the step matrices
    torch.manual_seed(0)
    T, B, D = 10, 7, 3
    h = 1.0 / T
    A = torch.randn(D, D, dtype=torch.float64)
    base = LinearField(A, torch.randn(D, dtype=torch.float64))
    xs = torch.randn(T, B, D, dtype=torch.float64)  # a linear field's Jacobian does not depend on x
    adj_T = torch.randn(B, D, dtype=torch.float64)
    adjs = qam.lean_adjoint(base, torch.zeros(B, 1, dtype=torch.float64), xs, adj_T, T)
    expected, a = [None] * T, adj_T
    eye = torch.eye(D, dtype=torch.float64)
    for i in reversed(range(T)):
        t = i * h + h
        a = a @ (eye + h * (2.0 * t * A - eye / t))  # row vectors: a^T M = (M^T a)^T
        expected[i] = a
    assert adjs.shape == (T, B, D)
    assert torch.allclose(adjs, torch.stack(expected), atol=1e-5, rtol=0)
    assert (adjs - torch.stack(expected)).abs().max().item() < 1e-12  # float64: exact up to round-off


def test_lean_adjoint_of_a_network_uses_its_input_jacobian_at_x_i_and_t_i_plus_h():
    torch.manual_seed(0)
    T, B, D = 4, 3, 2
    h = 1.0 / T
    base = qam.VectorField(2, D, 16, 2).double()
    obs, xs = torch.randn(B, 2, dtype=torch.float64), torch.randn(T, B, D, dtype=torch.float64)
    adj_T = torch.randn(B, D, dtype=torch.float64)
    adjs = qam.lean_adjoint(base, obs, xs, adj_T, T)
    a = adj_T.clone()
    for i in reversed(range(T)):
        t = i * h + h
        new = torch.empty_like(a)
        for b in range(B):  # explicit per-sample Jacobians
            J = torch.autograd.functional.jacobian(
                lambda x: 2.0 * base(obs[b:b + 1], x[None], torch.full((1, 1), t, dtype=torch.float64))[0] - x / t, xs[i, b])
            new[b] = a[b] + h * J.T @ a[b]
        a = new
        assert torch.allclose(adjs[i], a, atol=1e-10)


def test_terminal_adjoint_is_minus_inv_temp_times_the_action_gradient_of_the_mean_critic():
    torch.manual_seed(0)
    critic = qam.Critic(3, 2, 16, 2, 4).double()
    obs = torch.randn(5, 3, dtype=torch.float64)
    action = torch.tensor([[0.1, -0.2], [0.5, 0.5], [1.5, 0.0], [-0.3, -1.2], [0.0, 0.9]], dtype=torch.float64)
    adj = qam.terminal_adjoint(critic, obs, action, inv_temp=3.0)
    a = action.clamp(-1, 1).requires_grad_(True)  # Q is evaluated at the clipped action
    (grad,) = torch.autograd.grad(critic(obs, a).mean(0).sum(), a)
    inside = (action.abs() <= 1.0).double()  # clip(a) inside Q: zero gradient in clipped coordinates
    assert torch.allclose(adj, -3.0 * grad * inside, atol=1e-12)
    assert adj[2, 0] == 0 and adj[3, 1] == 0


def test_rollout_is_the_memoryless_sde_of_the_fine_field_with_a_final_base_ode_step():
    torch.manual_seed(0)
    T, B, D = 5, 4, 2
    h = 1.0 / T
    fine = lambda obs, x, t: 0.3 * x + t  # noqa: E731
    base = lambda obs, x, t: -x  # noqa: E731
    x0 = torch.randn(B, D, dtype=torch.float64)
    torch.manual_seed(1)
    xs, ts, xT = qam.memoryless_rollout(fine, base, None, x0, T)
    torch.manual_seed(1)
    x = x0
    for i in range(T):
        t = i * h
        assert torch.allclose(xs[i], x) and torch.allclose(ts[i], torch.full((B, 1), t, dtype=torch.float64))
        if i < T - 1:
            sigma = math.sqrt(2 * (1 - t + h) / (t + h))
            x = x + h * (2 * (0.3 * x + t) - x / (t + h)) + math.sqrt(h) * sigma * torch.randn_like(x)
        else:
            x = x - h * x
    assert torch.allclose(xT, x)


def test_with_f_equal_to_b_the_residual_is_sigma_times_the_adjoint():
    torch.manual_seed(0)
    T, B, D = 10, 32, 2
    h = 1.0 / T
    field, critic = qam.VectorField(3, D, 32, 2).double(), qam.Critic(3, D, 32, 2, 3).double()
    obs = torch.randn(B, 3, dtype=torch.float64)
    torch.manual_seed(5)
    loss, _ = qam.adjoint_matching_loss(field, field, critic, obs, D, T, inv_temp=2.0)
    torch.manual_seed(5)
    x0 = torch.randn(B, D, dtype=torch.float64)
    xs, ts, action = qam.memoryless_rollout(field, field, obs, x0, T)
    adjs = qam.lean_adjoint(field, obs, xs, qam.terminal_adjoint(critic, obs, action, 2.0), T)
    sigmas = torch.sqrt(2 * (1 - ts + h) / (ts + h))
    expected = (sigmas * adjs).square().sum(-1).sum(0).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert expected.item() > 0


def test_at_zero_inv_temp_the_loss_is_minimised_by_the_base_field():
    # inv_temp = 0: adjoint = 0, loss = E sum_i (4 / sigma_i^2) ||f - b||^2; f = b + delta gives sum_i 4/sigma_i^2 |delta|^2
    torch.manual_seed(0)
    T, B, D = 10, 16, 2
    h = 1.0 / T
    base, critic = qam.VectorField(3, D, 32, 2).double(), qam.Critic(3, D, 32, 2, 2).double()
    obs = torch.randn(B, 3, dtype=torch.float64)
    loss_at_b, adj = qam.adjoint_matching_loss(base, base, critic, obs, D, T, inv_temp=0.0)
    assert loss_at_b.item() == 0.0 and adj.item() == 0.0
    delta = torch.tensor([0.3, -0.4], dtype=torch.float64)
    shifted = lambda o, x, t: base(o, x, t) + delta  # noqa: E731
    loss, _ = qam.adjoint_matching_loss(shifted, base, critic, obs, D, T, inv_temp=0.0)
    ts = torch.arange(T, dtype=torch.float64) * h
    expected = (4.0 / (2 * (1 - ts + h) / (ts + h))).sum() * delta.square().sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    # gradient of the loss w.r.t. the fine field vanishes at f = b
    fine = qam.VectorField(3, D, 32, 2).double()
    fine.load_state_dict(base.state_dict())
    loss, _ = qam.adjoint_matching_loss(fine, base, critic, obs, D, T, inv_temp=0.0)
    loss.backward()
    assert all(p.grad.abs().max() == 0 for p in fine.parameters())


def test_no_gradient_reaches_the_base_field_or_the_critic():
    torch.manual_seed(0)
    fine, base, critic = qam.VectorField(3, 2, 16, 2), qam.VectorField(3, 2, 16, 2), qam.Critic(3, 2, 16, 2, 2)
    loss, _ = qam.adjoint_matching_loss(fine, base, critic, torch.randn(8, 3), 2, 10, inv_temp=1.0)
    loss.backward()
    assert all(p.grad is None for p in base.parameters()) and all(p.grad is None for p in critic.parameters())
    assert all(p.grad is not None for p in fine.parameters())


class GaussianBase(torch.nn.Module):
    """Exact velocity of the linear path from N(0, I) to N(mu, s^2 I): v = mu + (t s^2 - (1 - t)) / var_t (x - t mu)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s2 = mu, s * s

    def forward(self, obs, x, t):
        var_t = (1 - t) ** 2 + t * t * self.s2
        return self.mu + (t * self.s2 - (1 - t)) / var_t * (x - t * self.mu)


class LinearQ(torch.nn.Module):
    """Q(s, a) = w . a as a 1-member 'ensemble' (K, B)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, obs, action):
        return (action @ self.w)[None]


def test_fine_tuned_field_samples_the_tilted_gaussian_on_a_one_step_bandit():
    # base N(mu, s^2 I), Q = w.a, inv_temp lam: pi* ~ N(mu, s^2) exp(lam w.a) = N(mu + lam s^2 w, s^2 I)
    torch.manual_seed(0)
    mu, s, lam, w = torch.tensor([0.1, -0.2]), 0.4, 2.0, torch.tensor([1.0, -0.5])
    base, q = GaussianBase(mu, s), LinearQ(w)
    fine = qam.VectorField(1, 2, 64, 2)
    fine.load_state_dict(qam.VectorField(1, 2, 64, 2).state_dict())
    opt = torch.optim.Adam(fine.parameters(), lr=1e-3)
    obs = torch.ones(256, 1)
    for _ in range(400):
        loss, _ = qam.adjoint_matching_loss(fine, base, q, obs, 2, 10, inv_temp=lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.randn(20000, 2)
    tilted = qam.sample_flow(fine, torch.ones(20000, 1), z, 10).mean(0)
    untilted = qam.sample_flow(base, torch.ones(20000, 1), z, 10).mean(0)
    expected = mu + lam * s * s * w  # shift (0.32, -0.16)
    assert torch.allclose(untilted, mu, atol=0.02), untilted
    assert torch.allclose(tilted, expected, atol=0.04), (tilted, expected)


# ---------------------------------------------------------------------------------------------- other losses
def constant_critic(critic, values):
    """Make member k output values[k] everywhere (zero last-layer weights, bias = value)."""
    last = critic.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(values, dtype=torch.float32).view(-1, 1, 1))
    return critic


def test_critic_loss_uses_the_pessimistic_ensemble_target_gamma_to_the_h_and_valid_mask():
    torch.manual_seed(0)
    critic = constant_critic(qam.Critic(3, 4, 16, 2, 3), [0.5, 1.5, 2.5])
    target = constant_critic(qam.Critic(3, 4, 16, 2, 3), [1.0, 2.0, 3.0])  # mean 2, population std sqrt(2/3)
    batch = {"observations": torch.randn(4, 3), "critic_actions": torch.rand(4, 4) * 2 - 1,
             "next_observations": torch.randn(4, 3), "rewards": torch.tensor([0.0, 1.0, -1.0, 2.0]),
             "masks": torch.tensor([1.0, 1.0, 0.0, 1.0]), "valid": torch.tensor([1.0, 1.0, 1.0, 0.0])}
    loss, q = qam.critic_loss(critic, target, batch, torch.zeros(4, 4), gamma=0.9, horizon=2, rho=0.5)
    next_q = 2.0 - 0.5 * math.sqrt(2.0 / 3.0)
    target_q = batch["rewards"] + 0.81 * batch["masks"] * next_q
    expected = (((torch.tensor([[0.5], [1.5], [2.5]]) - target_q) ** 2) * batch["valid"]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert q.shape == (3, 4)


class ExactField(torch.nn.Module):
    """The exact conditional velocity towards a fixed action c: v(x_t, t) = (c - x_t) / (1 - t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, obs, x_t, t):
        return (self.c - x_t) / (1.0 - t)


def test_bc_flow_loss_is_zero_for_the_exact_velocity_and_ignores_invalid_chunks():
    torch.manual_seed(0)
    actions = torch.tensor([[0.3, -0.7]]).expand(512, 2).double()
    obs, valid = torch.zeros(512, 3, dtype=torch.float64), torch.ones(512, dtype=torch.float64)
    assert qam.bc_flow_loss(ExactField(actions), obs, actions, valid).item() < 1e-12
    zero = lambda o, x, t: torch.zeros_like(x)  # noqa: E731 ; loss = E||a - x_0||^2 / d = a^2 + 1 per dimension
    a = torch.full((20000, 2), 0.5)
    assert qam.bc_flow_loss(zero, torch.zeros(20000, 1), a, torch.ones(20000)).item() == pytest.approx(1.25, rel=0.02)
    assert qam.bc_flow_loss(zero, torch.zeros(20000, 1), a, torch.zeros(20000)).item() == 0.0


def test_edit_policy_log_prob_is_the_tanh_normal_density():
    torch.manual_seed(0)
    edit = qam.EditPolicy(3, 2, 16, 2)
    obs, act, noise = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1, torch.randn(6, 2)
    e, log_prob = edit(obs, act, noise)
    h = edit.trunk(torch.cat([obs, act], -1))
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(edit.mean(h), edit.log_std(h).clamp(-20, 2).exp()),
        [torch.distributions.TanhTransform()])
    assert torch.allclose(log_prob, dist.log_prob(e).sum(-1), atol=1e-4)


def test_variant_losses_do_not_train_the_critic_or_the_fine_field():
    torch.manual_seed(0)
    fine, critic = qam.VectorField(3, 2, 16, 2), qam.Critic(3, 2, 16, 2, 2)
    one_step, edit = qam.OneStepPolicy(3, 2, 16, 2), qam.EditPolicy(3, 2, 16, 2)
    log_alpha = torch.zeros((), requires_grad=True)
    obs = torch.randn(8, 3)
    distill, q_loss = qam.qam_fql_losses(one_step, fine, critic, obs, 2, 10)
    edit_q, ent_loss, alpha_loss, entropy = qam.qam_edit_losses(edit, log_alpha, fine, critic, obs, 2, 10, 0.1, -1.0)
    (distill + q_loss + edit_q + ent_loss + alpha_loss).backward()
    assert all(p.grad is None for p in list(fine.parameters()) + list(critic.parameters()))
    assert all(p.grad is not None for p in list(one_step.parameters()) + list(edit.parameters()))
    assert log_alpha.grad.item() == pytest.approx(entropy.item() + 1.0, rel=1e-5)  # d/d log_alpha of alpha (H - H_target)


# ---------------------------------------------------------------------------------------------- chunked sampler
def test_chunked_sampler_n_step_returns_masks_and_validity_match_a_reference():
    # three episodes: 0-2 (terminal), 3-6 (truncated), 7-9 (terminal); observation = index
    n, H, gamma = 10, 3, 0.9
    ends = np.zeros(n, np.float32)
    ends[[2, 6, 9]] = 1
    masks = np.ones(n, np.float32)
    masks[[2, 9]] = 0
    idx = np.arange(n, dtype=np.float32)
    transitions = {"observations": idx[:, None], "next_observations": idx[:, None] + 100, "actions": np.stack([idx, -idx], 1),
                   "rewards": idx + 1, "masks": masks, "ends": ends}
    torch.manual_seed(0)
    batch = qam.ReplayBuffer(transitions, n, torch.device("cpu")).sample_chunks(400, H, gamma, action_chunking=True)
    starts = batch["observations"][:, 0].long().numpy()
    assert set(starts) == set(range(n - H + 1))
    for b, s in enumerate(starts):
        ret, mask, valid, last = 0.0, 1.0, 1.0, s
        for i in range(H):
            if i > 0 and ends[s + i - 1]:  # the chunk has left its episode
                valid = 0.0
                break
            ret += gamma ** i * (s + i + 1)
            mask, last = min(mask, masks[s + i]), s + i
        assert batch["rewards"][b].item() == pytest.approx(ret)
        assert batch["masks"][b].item() == mask and batch["valid"][b].item() == valid
        assert batch["next_observations"][b, 0].item() == last + 100
        assert torch.equal(batch["critic_actions"][b], torch.tensor([[s + i, -(s + i)] for i in range(H)], dtype=torch.float32).flatten())
    single = qam.ReplayBuffer(transitions, n, torch.device("cpu")).sample_chunks(50, H, gamma, action_chunking=False)
    assert single["critic_actions"].shape == (50, 2)


# ---------------------------------------------------------------------------------------------- behaviour
def mode_fraction(actions: np.ndarray) -> float:
    """Share of actions closer to the bandit's better mode."""
    return float(np.mean(np.linalg.norm(actions - GOOD_MODE, axis=1) < np.linalg.norm(actions + GOOD_MODE, axis=1)))


def test_bandit_fine_field_moves_to_the_better_mode_and_beats_the_bc_flow(bandit_dataset, in_tmp):
    args = tiny(env_id=str(bandit_dataset), total_steps=600, inv_temp=30.0, eval_episodes=200, eval_freq=600,
                save_model=True)
    metrics = qam.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/qam.pt")))
    slow, fine = qam.VectorField(2, 2, 64, 2), qam.VectorField(2, 2, 64, 2)
    slow.load_state_dict(state["actor_slow"])
    fine.load_state_dict(state["actor_fast"])
    torch.manual_seed(0)
    obs, z = torch.ones(2000, 2), torch.randn(2000, 2)
    bc_share = mode_fraction(qam.sample_flow(slow, obs, z, 10).numpy())
    fine_share = mode_fraction(qam.sample_flow(fine, obs, z, 10).numpy())
    assert 0.3 < bc_share < 0.7, bc_share
    assert fine_share > bc_share + 0.2, (fine_share, bc_share)
    assert metrics["eval/normalized_score"] > metrics["eval/bc_flow_normalized_score"] + 20, metrics


@pytest.mark.slow
def test_learning_curve_on_the_embedded_reacher_dataset_beats_bc(in_tmp):
    """QAM's fine field vs the BC flow trained in the same run (100 evaluation episodes each)."""
    # the setting of docs/studies/qam_reacher_curve.csv (there: +12.4 at 2000 steps for seed 1, +13 mean of 3 seeds)
    args = tiny(env_id="flowrl/reacher/mixed-v0", total_steps=2000, inv_temp=1.0, hidden_dim=128, batch_size=256,
                eval_freq=2000, eval_episodes=100, num_critics=10)
    metrics = qam.main(args)
    assert metrics["eval/normalized_score"] > metrics["eval/bc_flow_normalized_score"] + 5, metrics


# ---------------------------------------------------------------------------------------------- data paths, variants
def test_ogbench_file_loads_and_trains_with_action_chunks(ogbench_dir, in_tmp):
    data = qam.load_offline_data(OGBENCH_TINY, str(ogbench_dir))
    t = data.transitions
    assert t["observations"].shape == (98, 2) and t["actions"].shape == (98, 2)
    assert t["ends"].sum() == 2 and t["ends"][48] == 1 and t["ends"][97] == 1
    metrics = qam.main(tiny(env_id=OGBENCH_TINY, ogbench_dataset_dir=str(ogbench_dir), total_steps=20, eval_episodes=1,
                            eval_freq=20, log_freq=10, eval_bc_flow=False, horizon_length=3, sparse=True))
    assert "eval/success" in metrics and "eval/normalized_score" not in metrics


@pytest.mark.parametrize("variant", [dict(fql_alpha=10.0), dict(edit_scale=0.1), dict(best_of_n=4)])
def test_variants_train_offline_then_online_with_action_chunks(variant, random_start_dataset, in_tmp):
    # 5-step Pendulum episodes: 80% of the chunks of 2 actions lie within one episode (the one-step bandit has none)
    metrics = qam.main(tiny(env_id=str(random_start_dataset), total_steps=20, online_steps=20, eval_freq=40, log_freq=10,
                            eval_episodes=3, horizon_length=2, **variant))
    assert np.isfinite(metrics["eval/episodic_return"])
    assert list(in_tmp.glob("runs/*/events.out.tfevents.*"))


def test_same_seed_gives_the_same_networks_on_cpu(bandit_dataset, tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        qam.main(tiny(env_id=str(bandit_dataset), total_steps=30, eval_freq=30, log_freq=15, save_model=True,
                      eval_bc_flow=False))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/qam.pt"))))
    for name in ("actor_slow", "actor_fast", "critic", "target_actor_slow"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)


def test_checkpoint_reloads_and_evaluates(bandit_dataset, in_tmp, capsys):
    first = qam.main(tiny(env_id=str(bandit_dataset), total_steps=30, eval_freq=30, save_model=True, eval_bc_flow=False))
    path = next(in_tmp.glob("runs/*/qam.pt"))
    capsys.readouterr()
    again = qam.main(tiny(env_id=str(bandit_dataset), total_steps=30, checkpoint=str(path), eval_bc_flow=False))
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])
    # exactly at the budget: evaluated only, with a one-line notice (and no training step logged)
    out = capsys.readouterr().out.splitlines()
    assert f"--checkpoint {path} is at step 30, the end of --total-steps 30: evaluating only" in out, out
    assert not any(line.startswith("step 30/30") for line in out), out


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_env_id_exits_with_one_clear_line(in_tmp):
    result = run_script("qam", "--env-id", "nosuch/dataset-v0", "--no-cuda")
    last = last_error_line(result)
    assert last.startswith("error: cannot load --env-id 'nosuch/dataset-v0'") and "minari list remote" in last


def test_non_finite_dataset_values_are_rejected(bandit_dataset, monkeypatch):
    original = qam.load_minari

    def poisoned(dataset, env_id):
        data = original(dataset, env_id)
        data.transitions["rewards"][3] = np.nan
        return data

    monkeypatch.setattr(qam, "load_minari", poisoned)
    with pytest.raises(qam.DatasetError, match="non-finite values in 'rewards'"):
        qam.load_offline_data(str(bandit_dataset), "")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(make_bandit_dataset, in_tmp):
    # the env returns NaN rewards from its 20th step: the online phase puts them in the buffer
    dataset = make_bandit_dataset("nan-bandit", n_episodes=200, nan_reward_after=20)
    args = tiny(env_id=str(dataset), total_steps=50, eval_freq=50, eval_episodes=1, online_steps=300, log_freq=25,
                save_model=True, eval_bc_flow=False)
    with pytest.raises(qam.NonFiniteLossError, match="non-finite loss"):
        qam.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/qam.pt")))
    assert state["step"] == 50
    assert all(torch.isfinite(v).all() for v in state["critic"].values())


# ---------------------------------------------------------------------------------------------- issue 17: fidelity fixes
def record_online_transitions(monkeypatch) -> list:
    """Every transition the online phase adds to the replay buffer, in order."""
    added = []
    original = qam.ReplayBuffer.add

    def add(self, **transition):
        added.append({k: np.asarray(v, dtype=np.float32).copy() for k, v in transition.items()})
        original(self, **transition)

    monkeypatch.setattr(qam.ReplayBuffer, "add", add)
    return added


def test_online_env_is_seeded_once_so_consecutive_episodes_start_from_different_states(qam_random_start_dataset,
                                                                                       in_tmp, monkeypatch):
    # the env draws each start from its own RNG (self.np_random); one-step episodes, so every transition is a start
    added = record_online_transitions(monkeypatch)
    qam.main(tiny(env_id=str(qam_random_start_dataset), total_steps=5, online_steps=6, start_training=6,
                  eval_freq=10**6, eval_episodes=1, eval_bc_flow=False, inv_temp=1.0))
    starts = np.stack([t["observations"] for t in added])
    assert len(starts) == 6 and all(t["ends"] == 1 for t in added)
    assert len(np.unique(starts.round(6), axis=0)) == 6, starts
    # only the first reset is seeded (with --seed): the run is reproducible
    env = qam.load_offline_data(str(qam_random_start_dataset), "").make_env()
    assert np.allclose(starts[0], env.reset(seed=1)[0]) and np.allclose(starts[1], env.reset()[0])


def test_d4rl_antmaze_reward_shift_is_one_function_for_the_dataset_and_the_online_steps(make_bandit_dataset, in_tmp,
                                                                                        monkeypatch):
    import minari

    dataset = make_bandit_dataset("antmaze-umaze", n_episodes=100)  # a Minari dir whose name is a D4RL antmaze name
    raw = np.concatenate([ep.rewards for ep in minari.MinariDataset(dataset / "data").iterate_episodes()])
    offline = {}
    original_init = qam.ReplayBuffer.__init__

    def init(self, transitions, capacity, device):
        offline["rewards"] = transitions["rewards"].copy()
        original_init(self, transitions, capacity, device)

    monkeypatch.setattr(qam.ReplayBuffer, "__init__", init)
    added = record_online_transitions(monkeypatch)
    qam.main(tiny(env_id=str(dataset), total_steps=5, online_steps=20, start_training=20, eval_freq=10**6,
                  eval_episodes=1, eval_bc_flow=False, inv_temp=1.0))
    np.testing.assert_allclose(offline["rewards"], raw - 1.0, atol=1e-6)
    assert len(added) == 20
    for t in added:  # the bandit's reward is a known function of the action: the online rewards are shifted too
        assert t["rewards"] == pytest.approx(float(bandit_reward(t["actions"])) - 1.0, abs=1e-6)
    # which names: official envs/env_utils.py:103-117 + d4rl_utils.py:179-185 (D4RL antmaze, not OGBench singletask)
    assert qam.is_d4rl_antmaze("D4RL/antmaze/large-play-v1") and qam.is_d4rl_antmaze("D4RL/antmaze/umaze-v1")
    assert qam.is_d4rl_antmaze("antmaze-medium-diverse-v2")
    assert not qam.is_d4rl_antmaze("antmaze-large-navigate-singletask-task1-v0")  # OGBench: no shift
    assert not qam.is_d4rl_antmaze("mujoco/hopper/medium-v0") and not qam.is_d4rl_antmaze("flowrl/pointmaze/wander-v0")
    np.testing.assert_array_equal(qam.transform_rewards(np.array([0.0, 1.0]), "D4RL/antmaze/umaze-v1", False), [-1.0, 0.0])
    np.testing.assert_array_equal(qam.transform_rewards(np.array([0.0, 1.0]), "D4RL/antmaze/umaze-v1", True), [-1.0, 0.0])
    np.testing.assert_array_equal(qam.transform_rewards(np.array([0.0, -1.0, 2.0]), "scene-play-singletask-v0", True),
                                  [0.0, -1.0, -1.0])


def test_ogbench_envs_score_the_state_after_the_action(ogbench_dir):
    # ogbench >= 1.2 scores singletask envs before the action by default; the paper's runs used the older 'post'
    env = qam.load_offline_data(OGBENCH_TINY, str(ogbench_dir)).make_env()
    u = env.unwrapped
    assert u._success_timing == "post"
    env.reset(seed=0)
    goal = np.array(u.cur_goal_xy)
    u.set_xy(goal + np.array([u._goal_tol + 0.02, 0.0]))  # just outside the goal, stepping into it
    assert not u.compute_success()
    _, reward, terminated, _, info = env.step(np.array([-1.0, 0.0], np.float32))
    assert u.compute_success() and info["success"] == 1.0 and reward == 0.0 and terminated
    env.reset(seed=0)
    u.set_xy(goal + np.array([u._goal_tol - 0.02, 0.0]))  # just inside the goal, stepping out of it
    assert u.compute_success()
    _, reward, terminated, _, info = env.step(np.array([1.0, 0.0], np.float32))
    assert not u.compute_success() and info["success"] == 0.0 and reward == -1.0 and not terminated


def test_eval_env_pool_is_eval_envs_and_its_size_does_not_change_the_metrics(in_tmp, monkeypatch):
    # multi-step episodes (embedded Reacher, 50 steps): with 3 envs the policy calls of the episodes interleave
    made = []
    original = qam.load_offline_data

    def counting(env_id, ogbench_dataset_dir):
        data = original(env_id, ogbench_dataset_dir)
        make_env = data.make_env
        data.make_env = lambda: made.append(1) or make_env()
        return data

    monkeypatch.setattr(qam, "load_offline_data", counting)
    results = []
    for pool in (1, 3):
        made.clear()
        results.append(qam.main(tiny(env_id="flowrl/reacher/mixed-v0", total_steps=5, eval_freq=5, eval_episodes=5,
                                     eval_envs=pool, inv_temp=1.0)))
        assert len(made) == pool
    assert results[0].keys() == results[1].keys()
    for key, value in results[0].items():  # equal up to float rounding (batched matmuls of 1 or 3 rows)
        assert results[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert results[0]["eval/episodic_return_std"] > 0


def test_evaluation_starts_of_ogbench_mazes_repeat_and_do_not_depend_on_the_pool(ogbench_dir):
    # OGBench's mazes draw the start noise from the GLOBAL NumPy RNG (locomaze/maze.py add_noise), not the env's
    data = qam.load_offline_data(OGBENCH_TINY, str(ogbench_dir))

    def starts_of(pool: int) -> list:
        seen = []

        def policy(obs, *generators):  # zero actions; records the observation of each episode's first call
            seen.append(obs.numpy().copy())
            return torch.zeros(obs.shape[0], 2)

        envs = [data.make_env() for _ in range(pool)]
        np.random.uniform(size=7)  # the training phase moves the global RNG between evaluations
        qam.evaluate(data, envs, policy, 2, episodes=2, seed=123, device=torch.device("cpu"))
        return [seen[0][0], seen[0][1] if pool == 2 else seen[1000][0]]  # episodes 0 and 1

    first, again, pooled = starts_of(1), starts_of(1), starts_of(2)
    assert not np.allclose(first[0], first[1])
    np.testing.assert_allclose(again, first)
    np.testing.assert_allclose(pooled, first)


# ---------------------------------------------------------------------------------------------- per-task settings
def test_task_settings_resolve_to_the_paper_rows(capsys):
    r = qam.resolve_task_settings(qam.Args(env_id="puzzle-3x3-play-singletask-task4-v0"))
    assert (r.sparse, r.horizon_length, r.gamma, r.rho, r.inv_temp, r.fql_alpha, r.edit_scale, r.variant) == \
        (True, 5, 0.99, 0.5, 3.0, 0.0, 0.0, "qam")
    assert "task settings for puzzle-3x3-play-singletask-task4-v0 (paper row 'puzzle-3x3-play', qam)" in capsys.readouterr().out
    r = qam.resolve_task_settings(qam.Args(env_id="humanoidmaze-medium-navigate-singletask-task3-v0"))
    assert (r.sparse, r.horizon_length, r.gamma, r.rho, r.inv_temp) == (False, 1, 0.995, 0.0, 3.0)
    r = qam.resolve_task_settings(qam.Args(env_id="antmaze-giant-navigate-singletask-v0"))
    assert (r.horizon_length, r.gamma, r.rho, r.inv_temp) == (1, 0.995, 0.5, 3.0)
    r = qam.resolve_task_settings(qam.Args(env_id="antmaze-large-navigate-singletask-task1-v0"))
    assert (r.horizon_length, r.gamma, r.rho, r.inv_temp) == (1, 0.99, 0.5, 10.0)
    r = qam.resolve_task_settings(qam.Args(env_id="puzzle-4x4-play-singletask-task1-v0"))
    assert (r.sparse, r.inv_temp) == (True, 30.0)
    r = qam.resolve_task_settings(qam.Args(env_id="cube-double-play-singletask-task2-v0"))
    assert (r.sparse, r.horizon_length, r.inv_temp) == (False, 5, 1.0)
    # the variants' rows (README: cube-triple task2, QAM-FQL inv_temp 10 fql_alpha 300, QAM-EDIT inv_temp 3 edit_scale 0.1)
    task = "cube-triple-play-singletask-task2-v0"
    assert qam.resolve_task_settings(qam.Args(env_id=task)).inv_temp == 3.0
    r = qam.resolve_task_settings(qam.Args(env_id=task, variant="qam-fql"))
    assert (r.inv_temp, r.fql_alpha, r.edit_scale) == (10.0, 300.0, 0.0)
    r = qam.resolve_task_settings(qam.Args(env_id=task, variant="qam-edit"))
    assert (r.inv_temp, r.fql_alpha, r.edit_scale) == (3.0, 0.0, 0.1)
    r = qam.resolve_task_settings(qam.Args(env_id="puzzle-4x4-play-singletask-task3-v0", edit_scale=0.5))  # inferred
    assert (r.variant, r.inv_temp, r.edit_scale) == ("qam-edit", 0.1, 0.5)
    assert qam.paper_row("visual-cube-double-play-singletask-task1-v0") is None  # a prefix, not a substring


def test_explicit_flags_override_the_task_row():
    r = qam.resolve_task_settings(qam.Args(env_id="puzzle-3x3-play-singletask-task1-v0", inv_temp=0.7, sparse=False,
                                           horizon_length=2))
    assert (r.inv_temp, r.sparse, r.horizon_length, r.gamma, r.rho) == (0.7, False, 2, 0.99, 0.5)
    r = qam.resolve_task_settings(qam.Args(env_id="cube-triple-play-singletask-task2-v0", variant="qam-fql", fql_alpha=3.0))
    assert (r.inv_temp, r.fql_alpha) == (10.0, 3.0)


@pytest.mark.parametrize("env_id", ["flowrl/reacher/mixed-v0", "D4RL/antmaze/large-play-v1", "mujoco/hopper/medium-v0"])
def test_unknown_tasks_get_the_generic_defaults_with_a_notice(env_id, capsys):
    r = qam.resolve_task_settings(qam.Args(env_id=env_id))
    assert (r.inv_temp, r.fql_alpha, r.edit_scale, r.sparse, r.horizon_length, r.gamma, r.rho) == \
        (0.3, 0.0, 0.0, False, 5, 0.99, 0.5)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"task settings for {env_id} (not a paper task: generic defaults)")


def test_resolved_settings_are_saved_with_the_checkpoint(bandit_dataset, in_tmp):
    qam.main(tiny(env_id=str(bandit_dataset), total_steps=10, eval_freq=10, eval_episodes=1, save_model=True,
                  eval_bc_flow=False))
    saved = torch.load(next(in_tmp.glob("runs/*/qam.pt")))["args"]
    assert (saved["inv_temp"], saved["sparse"], saved["gamma"], saved["rho"], saved["variant"]) == (0.3, False, 0.99, 0.5, "qam")
    assert saved["horizon_length"] == 1  # tiny() sets it


# ---------------------------------------------------------------------------------------------- flax defaults
def test_gelu_and_layer_norm_are_those_of_the_official_flax_networks():
    # utils/networks.py @f93efd2: flax nn.gelu = jax.nn.gelu(approximate=True) and nn.LayerNorm() (epsilon 1e-6)
    x = torch.tensor([1.0, -2.0])
    tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # 0.841192 at 1 (erf: 0.841345)
    actor, critic = qam.mlp(1, 4, 1, 1), qam.Critic(1, 1, 8, 1, 2)
    assert torch.allclose(actor[1](x), tanh_gelu, atol=1e-6) and torch.allclose(critic.net[1](x), tanh_gelu, atol=1e-6)
    h = torch.zeros(2, 1, 8)
    h[..., 0] = 1e-3  # variance ~1e-7: the epsilon decides the scale
    expected = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(critic.net[2](h), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------- issue 23: bad input
# (the flag table is TABLES["qam"] in tests/test_bad_input.py; here: files, checkpoints, the share of valid chunks)
@pytest.fixture(scope="module")
def small_bandit(make_bandit_dataset):
    """The one-step bandit with 100 episodes (loads in a fraction of the 2000-episode fixture's time)."""
    return make_bandit_dataset("qam-small-bandit", n_episodes=100)


def test_every_numeric_flag_has_a_row_in_the_bad_input_table():
    from dataclasses import fields

    from test_bad_input import TABLES

    numeric = {f.name.replace("_", "-") for f in fields(qam.Args) if "int" in str(f.type) or "float" in str(f.type)}
    covered = {arg[2:] for argv, _ in TABLES["qam"] for arg in argv if arg.startswith("--")}
    assert numeric and numeric <= covered, sorted(numeric - covered)


def test_chunk_coverage_is_the_share_of_valid_chunks_of_the_sampler():
    rng = np.random.default_rng(0)
    ends = (rng.random(300) < 0.15).astype(np.float32)
    ends[-1] = 1.0
    for horizon in (1, 2, 4, 7):
        starts = range(len(ends) - horizon + 1)
        reference = np.mean([not ends[s:s + horizon - 1].any() for s in starts])
        share, longest = qam.chunk_coverage(ends, horizon)
        assert share == pytest.approx(reference, abs=1e-12)
        # the sampler marks the same chunks valid (uniform starts: its mean valid is that share)
        buffer = qam.ReplayBuffer({"ends": ends, "rewards": np.zeros(300, np.float32), "masks": np.ones(300, np.float32),
                                   "actions": np.zeros((300, 1), np.float32), "observations": np.zeros((300, 1), np.float32),
                                   "next_observations": np.zeros((300, 1), np.float32)}, 300, torch.device("cpu"))
        torch.manual_seed(0)
        assert buffer.sample_chunks(40_000, horizon, 0.99, True)["valid"].mean().item() == pytest.approx(share, abs=0.01)
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(ends)]))
    assert longest == lengths.max()
    assert qam.chunk_coverage(np.ones(5, np.float32), 2) == (0.0, 1)
    assert qam.chunk_coverage(np.array([0, 0, 1], np.float32), 4) == (0.0, 3)  # fewer transitions than H


@pytest.mark.parametrize("horizon", [2, None])  # None: the generic default H = 5
def test_one_step_episodes_with_a_longer_horizon_stop_before_any_work(horizon, small_bandit, in_tmp):
    # the bandit's episodes have one step: every chunk of H >= 2 crosses an episode end, so every chunk is masked
    # out and the BC flow and the critic would never be trained
    with pytest.raises(qam.DatasetError) as caught:
        qam.main(tiny(env_id=str(small_bandit), horizon_length=horizon))
    message = str(caught.value)
    assert "\n" not in message and f"no action chunk of --horizon-length {horizon or 5} fits in one episode" in message
    assert message.endswith("pass --horizon-length 1"), message
    assert not (in_tmp / "runs").exists()


def test_less_than_half_of_the_chunks_valid_warns_in_one_line(random_start_dataset, in_tmp, capsys):
    # 20 episodes of 5 steps: chunks of 4 fit at 2 of 5 starts (41%), of 3 at 3 of 5 (61%)
    args = tiny(env_id=str(random_start_dataset), total_steps=4, eval_freq=4, log_freq=2, eval_episodes=1,
                eval_bc_flow=False)
    metrics = qam.main(replace(args, horizon_length=4))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: only 41% of the action chunks of --horizon-length 4 fit in one episode of "
                        f"{str(random_start_dataset)!r}; the others are masked out of the critic and BC losses "
                        f"(--horizon-length 3 keeps 61%)"], warnings
    assert np.isfinite(metrics["eval/episodic_return"])  # a warning: the run goes on
    qam.main(replace(args, horizon_length=3))
    assert "warning" not in capsys.readouterr().err


# corrupted Minari datasets, built from a copy of the bandit dataset: (what to do to the copy, expected text)
def _remove(path):
    path.unlink()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_entry(group, entry):
    def drop(path):
        import h5py

        with h5py.File(path, "a") as f:
            del f[group][entry]
    return drop


def _shorten_actions(path):
    import h5py

    with h5py.File(path, "a") as f:
        actions = f["episode_2"]["actions"][:]
        del f["episode_2"]["actions"]
        f["episode_2"].create_dataset("actions", data=actions[:0])


MINARI_DAMAGE = {
    "no metadata.json": ("metadata.json", _remove, "has no metadata.json"),
    "empty metadata.json": ("metadata.json", lambda p: p.write_text(""), "metadata.json is empty"),
    "broken metadata.json": ("metadata.json", lambda p: p.write_text(p.read_text()[:60]), "metadata.json is not valid JSON"),
    "no data file": ("main_data.hdf5", _remove, "cannot open the Minari dataset in"),
    "empty hdf5": ("main_data.hdf5", lambda p: p.write_bytes(b""), "main_data.hdf5 is unreadable: truncated, empty or not HDF5"),
    "truncated hdf5": ("main_data.hdf5", _truncate, "main_data.hdf5 is unreadable: truncated, empty or not HDF5"),
    "garbage hdf5": ("main_data.hdf5", lambda p: p.write_bytes(b"not hdf5\n" * 100), "main_data.hdf5 is unreadable"),
    "episode without actions": ("main_data.hdf5", _drop_entry("episode_3", "actions"),
                                "episode 3 of {file} is incomplete (Unable to synchronously open object (object 'actions'"),
    "episode without rewards": ("main_data.hdf5", _drop_entry("episode_0", "rewards"), "episode 0 of {file} is incomplete"),
    "episode of other lengths": ("main_data.hdf5", _shorten_actions,
                                 "episode 2 of {file} is inconsistent: 2 observations, 0 actions, 1 rewards"),
}


@pytest.mark.parametrize("damage", list(MINARI_DAMAGE))
def test_a_corrupted_minari_dataset_is_one_line_naming_the_file(damage, small_bandit, tmp_path, monkeypatch):
    import shutil

    name, corrupt, expected = MINARI_DAMAGE[damage]
    copy = tmp_path / "dataset"
    shutil.copytree(small_bandit, copy)
    corrupt(copy / "data" / name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(qam.DatasetError) as caught:
        qam.main(tiny(env_id=str(copy)))
    message = str(caught.value)
    assert "\n" not in message and expected.format(file=copy / "data" / name) in message, message
    assert str(copy / "data") in message  # names the file (or its folder)
    assert not (tmp_path / "runs").exists()


def test_a_corrupted_dataset_on_the_command_line_is_one_line(small_bandit, tmp_path):
    import shutil

    copy = tmp_path / "dataset"
    shutil.copytree(small_bandit, copy)
    _truncate(copy / "data" / "main_data.hdf5")
    result = run_script("qam", "--env-id", str(copy), "--no-cuda", "--horizon-length", "1")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {copy / 'data' / 'main_data.hdf5'} is unreadable")


def _npz_without_actions(path):
    arrays = dict(np.load(path))
    arrays.pop("actions")
    np.savez(path, **arrays)


def _npz_to_dir(path):
    path.unlink()
    path.mkdir()


OGBENCH_DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "truncated": (_truncate, "is not a readable .npz (BadZipFile"),
    "garbage": (lambda p: p.write_bytes(b"x" * 1000), "is not a readable .npz"),
    "no actions": (_npz_without_actions, "has no 'actions'"),
    "a directory": (_npz_to_dir, "is a directory"),
}


@pytest.mark.parametrize("split", ["", "-val"])
@pytest.mark.parametrize("damage", list(OGBENCH_DAMAGE))
def test_a_corrupted_ogbench_file_is_one_line_naming_the_file(damage, split, ogbench_dir, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "ogbench"
    shutil.copytree(ogbench_dir, folder)
    corrupt, expected = OGBENCH_DAMAGE[damage]
    path = folder / f"pointmaze-medium-navigate-v0{split}.npz"
    corrupt(path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(qam.DatasetError) as caught:
        qam.main(tiny(env_id=OGBENCH_TINY, ogbench_dataset_dir=str(folder)))
    assert str(caught.value) == f"OGBench dataset file {path} {expected}" or \
        str(caught.value).startswith(f"OGBench dataset file {path} {expected}"), caught.value
    assert "\n" not in str(caught.value) and not (tmp_path / "runs").exists()


# checkpoints: one trained on the bandit (tiny(): 64x2 networks, 2 critics, H = 1), then damaged or mismatched copies
@pytest.fixture(scope="module")
def bandit_checkpoint(small_bandit, tmp_path_factory) -> "Path":
    import os

    folder = tmp_path_factory.mktemp("qam_checkpoint")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        qam.main(tiny(env_id=str(small_bandit), total_steps=10, eval_freq=10, eval_episodes=1, save_model=True,
                      eval_bc_flow=False))
    finally:
        os.chdir(cwd)
    path = next(folder.glob("runs/*/qam.pt"))
    state = torch.load(path)
    assert state["script"] == "qam" and (state["obs_dim"], state["act_dim"], state["step"]) == (2, 2, 10)
    return path


def _edited(edit):
    def make(src, dst):
        state = torch.load(src)
        edit(state)
        torch.save(state, dst)
    return make


def _resize_critic_weight(state):
    key = next(k for k in state["critic"] if k.endswith("weight"))
    state["critic"][key] = torch.zeros(1)
    del state["obs_dim"], state["act_dim"]


CHECKPOINT_CASES = {  # (make the file from the real checkpoint, Args overrides, expected text)
    "missing": (None, {}, "{path} does not exist"),
    "a directory": (lambda src, dst: dst.mkdir(), {}, "{path} is a directory, not a file"),
    "empty": (lambda src, dst: dst.write_bytes(b""), {}, "{path} is empty"),
    "garbage": (lambda src, dst: dst.write_bytes(b"not a checkpoint\n" * 50), {}, "{path} is not a readable torch file"),
    "truncated": (lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), {},
                  "{path} is not a readable torch file"),
    "another script": (lambda src, dst: torch.save({"script": "fql", "actor": {}, "args": {}, "step": 3}, dst), {},
                       "{path} is not a qam checkpoint: it was saved by fql.py"),
    "a tensor": (lambda src, dst: torch.save(torch.zeros(3), dst), {}, "{path} is not a qam checkpoint: it holds a Tensor"),
    "an unrelated dict": (lambda src, dst: torch.save({"weights": torch.zeros(3)}, dst), {},
                          "{path} is not a qam checkpoint: it has no critic, actor_fast, optimizer, step, args"),
    "other sizes": ("copy", dict(hidden_dim=32, num_critics=3),
                    "{path} holds other networks: --hidden-dim 32 (checkpoint: 64), --num-critics 3 (checkpoint: 2); "
                    "pass the checkpoint's values"),
    "other layers": ("copy", dict(num_layers=3), "--num-layers 3 (checkpoint: 2)"),
    "no chunking": ("copy", dict(action_chunking=False), "--action-chunking False (checkpoint: True)"),
    "other variant": ("copy", dict(fql_alpha=1.0), "--variant qam-fql (checkpoint: qam), --fql-alpha 1.0 (checkpoint: 0.0)"),
    "other dataset": (_edited(lambda s: s.update(obs_dim=5)), {},
                      "{path} was trained on another dataset: --env-id {env_id} has obs_dim 2 (checkpoint: 5)"),
    "entries of other shapes": (_edited(_resize_critic_weight), {}, "{path}: its networks do not load (Error(s) in loading"),
    "past the budget": ("copy", dict(total_steps=5), "{path} is at step 10, past --total-steps 5; pass a larger --total-steps"),
    "past the online budget": ("copy", dict(total_steps=4, online_steps=3),
                               "{path} is at step 10, past --total-steps 4 + --online-steps 3; pass a larger --total-steps "
                               "or --online-steps"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_a_bad_checkpoint_is_one_line_before_any_training(case, bandit_checkpoint, small_bandit, tmp_path, monkeypatch):
    import shutil

    make, overrides, expected = CHECKPOINT_CASES[case]
    path = tmp_path / "checkpoint.pt"
    if make == "copy":
        shutil.copy(bandit_checkpoint, path)
    elif make is not None:
        make(bandit_checkpoint, path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(qam.CheckpointError) as caught:
        qam.main(tiny(**{"env_id": str(small_bandit), "total_steps": 20, "checkpoint": str(path), **overrides}))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--checkpoint {path}"), message
    assert expected.format(path=path, env_id=small_bandit) in message, message
    assert not (tmp_path / "runs").exists()


def test_a_bad_checkpoint_on_the_command_line_is_one_line(small_bandit, tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_text("not a checkpoint")
    result = run_script("qam", "--env-id", str(small_bandit), "--no-cuda", "--horizon-length", "1", "--checkpoint",
                        str(path), "--hidden-dim", "8", "--num-layers", "1", "--num-critics", "2")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0] == f"error: --checkpoint {path} is not a readable torch file (UnpicklingError)"


def test_a_checkpoint_saved_before_the_script_and_dims_were_stored_still_loads(bandit_checkpoint, small_bandit, in_tmp):
    path = in_tmp / "old.pt"
    _edited(lambda s: [s.pop(k) for k in ("script", "obs_dim", "act_dim")])(bandit_checkpoint, path)
    metrics = qam.main(tiny(env_id=str(small_bandit), total_steps=12, eval_freq=12, eval_episodes=1,
                            checkpoint=str(path), eval_bc_flow=False))
    assert np.isfinite(metrics["eval/episodic_return"])
