"""Tests for decision_flow.py: the flow MDP (deterministic Euler transitions, no backprop through the chain),
the flow critic's TD fixed point, per-flow-step policy improvement on a known Q, the eta = 0 limit (plain
flow matching), both intermediate rewards, the bandit learning curve vs the in-run BC flow, bad input, the
NaN guard and same-seed determinism."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (BROKEN_MINARI, BROKEN_TORCH, OGBENCH_TINY, broken_minari_copy, broken_torch_file, import_script,
                      last_error_line, record_envs, run_script)
from toy_envs import GOOD_MODE

dfm = import_script("decision_flow")


def tiny(**overrides) -> "dfm.Args":
    base = dfm.Args(cuda=False, hidden_dim=64, num_layers=2, batch_size=64, total_steps=200, eval_freq=200,
                    eval_episodes=5, log_freq=100)
    return replace(base, **overrides)


class KnownQ(torch.nn.Module):
    """A parameter-free 'critic ensemble' with Q(s, a) = -||a - c||^2, shaped (K=1, B) like dfm.Critic."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float32))

    def forward(self, obs, action):
        return -(action - self.c).pow(2).sum(-1)[None]


class QOfAction(torch.nn.Module):
    """A parameter-free flow critic that scores a flow state by Q of its intermediate action."""

    def __init__(self, q):
        super().__init__()
        self.q = q

    def forward(self, obs, a_t, t):
        return self.q(obs, a_t.clamp(-1, 1))[0]


# ---------------------------------------------------------------------------------------------- flow MDP
def test_flow_matching_loss_known_answers():
    torch.manual_seed(0)
    actions = torch.full((20000, 2), 0.5)
    zero = lambda obs, x, t: torch.zeros_like(x)  # noqa: E731  # loss = E||a - a_0||^2 / d = 0.25 + 1
    assert dfm.flow_matching_loss(zero, torch.zeros(20000, 1), actions).item() == pytest.approx(1.25, rel=0.02)
    exact = lambda obs, x, t: (actions - x) / (1.0 - t)  # noqa: E731  # the conditional velocity itself
    assert dfm.flow_matching_loss(exact, torch.zeros(20000, 1), actions).item() < 1e-8


def test_rollout_is_the_deterministic_euler_chain_with_detached_states():
    torch.manual_seed(0)
    policy = dfm.VectorField(3, 2, 32, 2)
    obs, z = torch.randn(8, 3), torch.randn(8, 2)
    states, velocities, times = dfm.flow_rollout(policy, obs, z, flow_steps=5)
    assert states.shape == velocities.shape == (5, 8, 2) and times.shape == (5, 8, 1)
    assert torch.allclose(times[:, 0, 0], torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8]))
    assert not states.requires_grad and velocities.requires_grad  # no gradient path through the chain
    assert torch.allclose(states[1:], states[:-1] + 0.2 * velocities[:-1].detach(), atol=1e-6)
    final = states[-1] + 0.2 * velocities[-1].detach()
    assert torch.allclose(final.clamp(-1, 1), dfm.sample_flow(policy, obs, z, 5), atol=1e-6)
    # the gradient of step k's next state reaches the parameters only through u_k: it equals d u_k / d theta * dt
    g_step = torch.autograd.grad((states[2] + 0.2 * velocities[2]).sum(), policy.net[0].weight)[0]
    g_u = torch.autograd.grad(0.2 * policy(obs, states[2], times[2]).sum(), policy.net[0].weight)[0]
    assert torch.allclose(g_step, g_u, atol=1e-6)


def test_sampler_with_a_constant_field_lands_on_z_plus_v():
    v = torch.tensor([0.25, -0.5])
    z = torch.tensor([[0.1, 0.2], [0.9, -0.9]])
    out = dfm.sample_flow(lambda obs, x, t: v.expand_as(x), torch.zeros(2, 1), z, flow_steps=10)
    assert torch.allclose(out, (z + v).clamp(-1, 1), atol=1e-6)


def test_potential_reward_is_shaping_and_div_reward_is_the_velocity_gap():
    phi = torch.tensor([[1.0, -2.0], [1.5, -1.0], [0.5, 0.0]])  # Phi_0..Phi_2 for a 2-step chain, 2 samples
    r = dfm.intermediate_rewards("potential", 0.5, 0.5, None, phi=phi)
    assert torch.allclose(r, 0.5 * torch.tensor([[0.5, 1.0], [-1.0, 1.0]]))
    assert torch.allclose(r.sum(0), 0.5 * (phi[-1] - phi[0]))  # telescopes: the optimal flow policy is unchanged
    u = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    ub = torch.zeros_like(u)
    r = dfm.intermediate_rewards("div", 2.0, 0.5, u, behaviour_velocities=ub)
    assert torch.allclose(r, torch.tensor([[-1.0], [-4.0]]))  # -beta * dt * ||u - u_beta||^2
    assert dfm.intermediate_rewards("div", 2.0, 0.5, ub, behaviour_velocities=ub).abs().max() == 0


def test_align_reward_is_grad_q_at_the_predicted_endpoint_along_the_velocity_direction():
    u = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])  # (T=1, B=4, d=2)
    g = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]])
    r = dfm.intermediate_rewards("align", 2.0, 0.1, u, q_grad=g)
    # beta * dt * <u / |u|, g>: aligned (at any speed), orthogonal, 135 degrees
    assert torch.allclose(r, 0.2 * torch.tensor([[2.0, 2.0, 0.0, -2 ** -0.5]]), atol=1e-6)
    # g: grad_a Q at clip(a_tau + (1 - t_tau) u_tau), for Q = -||a - c||^2 that is -2 (clip(endpoint) - c)
    c = torch.tensor([0.6, -0.4])
    states, velocities = torch.tensor([[[0.0, 0.0]], [[0.5, 0.5]]]), torch.tensor([[[0.5, 0.2]], [[2.0, -0.2]]])
    times = torch.tensor([[[0.0]], [[0.5]]])
    grad = dfm.endpoint_q_gradients(lambda o, a: KnownQ(c)(o, a)[0], torch.zeros(1, 1), states, velocities, times)
    endpoints = torch.tensor([[[0.5, 0.2]], [[1.0, 0.4]]])  # [0.5 + 0.5 * 2.0 = 1.5 -> clipped to 1.0, 0.5 - 0.1]
    assert torch.allclose(grad, -2 * (endpoints - c), atol=1e-6) and not grad.requires_grad


def test_flow_critic_td_reproduces_terminal_q_at_every_step_with_zero_rewards():
    """A known deterministic chain (constant velocity v), zero intermediate rewards, terminal Q(a_1):
    flow-step TD (gamma_f = 1) must give V(s, a_tau, t_tau) = Q(s, a_1) at every flow step."""
    torch.manual_seed(0)
    T, v, c = 5, torch.tensor([0.5]), torch.tensor([0.2])
    q = lambda a: -(a - c).pow(2).sum(-1)  # noqa: E731
    field = lambda obs, a, t: v.expand_as(a)  # noqa: E731
    obs = torch.ones(256, 1)  # a constant feature: LayerNorm after the first layer needs one with 1-D inputs

    def td_loss(flow_critic, target):
        z = torch.rand(256, 1) * 1.6 - 1.3
        states, velocities, times = dfm.flow_rollout(field, obs, z, T)
        next_states, next_times = states + velocities / T, times + 1.0 / T
        with torch.no_grad():
            v_next = target(dfm.flat(obs.expand(T - 1, 256, 1)), dfm.flat(next_states[:-1]), dfm.flat(next_times[:-1])).view(T - 1, -1)
        next_values = torch.cat([v_next, q(next_states[-1])[None]])
        return dfm.flow_critic_loss(flow_critic, states, times, obs, torch.zeros(T, 256), next_values)

    exact = lambda obs, a, t: q(a + (1.0 - t) * v)  # noqa: E731  # the true flow value under this chain
    assert td_loss(exact, exact)[0].item() < 1e-10  # the fixed point of the flow Bellman equation

    critic = dfm.FlowCritic(1, 1, 64, 2)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(800):
        loss, _ = td_loss(critic, critic)  # bootstrapping from itself (detached target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.linspace(-1.2, 0.2, 64)[:, None]
    states, _, times = dfm.flow_rollout(field, torch.ones(64, 1), z, T)
    with torch.no_grad():
        values = critic(dfm.flat(torch.ones(T, 64, 1)), dfm.flat(states), dfm.flat(times)).view(T, 64)
    error = (values - q(z + v)).abs()  # Q(s, a_1) ranges over [-0.9, 0]
    assert error.mean(1).max() < 0.05 and error.max() < 0.2, (error.mean(1), error.max(1).values)


def policy_improvement_run(variant: str, steps: int = 60) -> tuple:
    torch.manual_seed(0)
    c = torch.tensor([0.6, -0.4])
    critic = KnownQ(c)
    flow_critic = QOfAction(critic)
    policy = dfm.VectorField(2, 2, 64, 2)
    behaviour = dfm.VectorField(2, 2, 64, 2)
    behaviour.load_state_dict(policy.state_dict())
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    obs, z = torch.ones(512, 2), torch.randn(512, 2)
    before = critic(obs, dfm.sample_flow(policy, obs, z, 10))[0].mean().item()
    for _ in range(steps):
        out = dfm.decision_flow_losses(policy, flow_critic, flow_critic, critic, behaviour, obs, torch.zeros(512, 2),
                                       variant, 10, eta=1.0, beta=0.1, normalize=False)
        opt.zero_grad()
        out["policy_loss"].backward()  # the per-flow-step improvement term alone
        opt.step()
    after = critic(obs, dfm.sample_flow(policy, obs, z, 10))[0].mean().item()
    return before, after


@pytest.mark.parametrize("variant", ["dir", "div"])
def test_per_step_policy_gradient_moves_a1_uphill_on_a_known_q(variant):
    before, after = policy_improvement_run(variant)
    assert after > before + 0.5 * abs(before), (before, after)


class LinearQ(torch.nn.Module):
    """Q(s, a) = <w, a>, shaped (K=1, B); `grad` is its analytic action gradient."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))

    def forward(self, obs, action):
        return (action * self.w).sum(-1)[None]

    def grad(self, action):
        return self.w.expand_as(action)


class QuadraticQ(KnownQ):
    def grad(self, action):
        return -2.0 * (action - self.c)


class ExactFlowValue(torch.nn.Module):
    """The exact flow value under the current (frozen) policy: from (s, a_t, t) roll the remaining Euler steps, add
    that reward's r_f,k of every step (align: by dfm.intermediate_rewards with the analytic grad of Q, so that the value
    is differentiable in a_t through the whole chain) and the terminal Q(s, clip(a_1))."""

    def __init__(self, policy, q, reward, beta, T):
        super().__init__()
        self.parts = [policy, q]  # not registered: this 'critic' has no parameters of its own
        self.reward, self.beta, self.T = reward, beta, T

    def forward(self, obs, a, t):
        policy, q = self.parts
        field, dt = dfm.frozen(policy), 1.0 / self.T
        first = torch.round(t[:, 0] * self.T)  # the step index of each row's flow state
        value = torch.zeros_like(a[:, 0])
        for i in range(self.T):
            active = (first <= i).float()
            u = field(obs, a, torch.full_like(a[:, :1], i * dt))
            if self.reward == "potential":  # written out: intermediate_rewards detaches Phi(a_tau), V must not
                r = self.beta * (q(obs, (a + dt * u).clamp(-1, 1))[0] - q(obs, a.clamp(-1, 1))[0])
            else:
                g = q.grad((a + (1.0 - i * dt) * u).clamp(-1, 1))
                r = dfm.intermediate_rewards("align", self.beta, dt, u[None], q_grad=g[None])[0]
            value = value + active * r
            a = a + active[:, None] * dt * u
        return value + q(obs, a.clamp(-1, 1))[0]


def exact_v_policy_gradient(q, reward, beta, normalize, T=5):
    """d L_PI / d theta of DF-dir with the flow critic replaced by its exact value (the TD fixed point)."""
    torch.manual_seed(0)
    policy = dfm.VectorField(2, 2, 32, 2)
    with torch.no_grad():
        policy.net[-1].weight.mul_(0.3)  # keep most of the chain inside the action box
    exact = ExactFlowValue(policy, q, reward, beta, T)
    torch.manual_seed(1)
    out = dfm.decision_flow_losses(policy, exact, exact, q, None, torch.ones(64, 2), torch.zeros(64, 2), "dir", T,
                                   eta=1.0, beta=beta, normalize=normalize, dir_reward=reward)
    return torch.cat([g.flatten() for g in torch.autograd.grad(out["policy_loss"], list(policy.parameters()))])


def parallel_part(g, g_ref):
    """(c, residual): the best c with g ~ c * g_ref, and ||g - c * g_ref|| / ||g|| (0: g is a rescaled g_ref)."""
    c = (g @ g_ref / (g_ref @ g_ref)).item()
    return c, ((g - c * g_ref).norm() / g.norm()).item()


@pytest.mark.parametrize("q", [LinearQ([0.7, -0.3]), QuadraticQ([0.6, -0.4])], ids=["linear Q", "quadratic Q"])
@pytest.mark.parametrize("normalize", [False, True])
def test_with_an_exact_flow_critic_the_potential_reward_only_rescales_the_gradient_by_one_plus_beta(q, normalize):
    """Issue 20's known answer: with V exact, r = beta (Q(a_tau+1) - Q(a_tau)) gives lookahead
    (1 + beta) V_0(a_tau+1) - beta Q(a_tau): the actor's gradient is (1 + beta) times terminal-reward DF's."""
    g_0 = exact_v_policy_gradient(q, "potential", 0.0, normalize)
    for beta in (1.0, 3.0):
        c, residual = parallel_part(exact_v_policy_gradient(q, "potential", beta, normalize), g_0)
        assert c == pytest.approx(1.0 + beta, rel=1e-4) and residual < 1e-4, (beta, c, residual)


@pytest.mark.parametrize("q", [LinearQ([0.7, -0.3]), QuadraticQ([0.6, -0.4])], ids=["linear Q", "quadratic Q"])
def test_with_an_exact_flow_critic_the_align_reward_changes_the_gradient_direction(q):
    """DF-dir's reward (R5) is not a potential difference: with V exact its gradient is no rescaling of beta = 0's."""
    g_0 = exact_v_policy_gradient(q, "align", 0.0, False)
    assert torch.allclose(g_0, exact_v_policy_gradient(q, "potential", 0.0, False))  # beta = 0: the same method
    c, residual = parallel_part(exact_v_policy_gradient(q, "align", 1.0, False), g_0)
    assert residual > 0.05, (c, residual)  # measured 0.51 (linear), 0.17 (quadratic); the potential reward: 3e-8


def test_policy_term_trains_the_policy_only():
    torch.manual_seed(0)
    policy, behaviour = dfm.VectorField(3, 2, 32, 2), dfm.VectorField(3, 2, 32, 2)
    flow_critic, target = dfm.FlowCritic(3, 2, 32, 2), dfm.FlowCritic(3, 2, 32, 2)
    critic = dfm.Critic(3, 2, 32, 2, 2)
    for variant in ("dir", "div"):
        out = dfm.decision_flow_losses(policy, flow_critic, target, critic, behaviour, torch.randn(16, 3), torch.rand(16, 2),
                                       variant, 4, eta=1.0, beta=1.0, normalize=True)
        out["policy_loss"].backward()
        assert all(p.grad is None for m in (critic, flow_critic, behaviour, target) for p in m.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
        out["flow_critic_loss"].backward()  # the flow critic's TD trains the flow critic only
        assert all(p.grad is not None for p in flow_critic.parameters())
        assert all(p.grad is None for m in (critic, behaviour) for p in m.parameters())
        policy.zero_grad(set_to_none=True)
        flow_critic.zero_grad(set_to_none=True)


@pytest.mark.parametrize("variant", ["dir", "div"])
def test_with_policy_weight_zero_the_actor_objective_is_flow_matching(variant):
    torch.manual_seed(0)
    policy, behaviour = dfm.VectorField(3, 2, 32, 2), dfm.VectorField(3, 2, 32, 2)
    flow_critic, critic = dfm.FlowCritic(3, 2, 32, 2), dfm.Critic(3, 2, 32, 2, 2)
    obs, actions = torch.randn(32, 3), torch.rand(32, 2) * 2 - 1
    grads = {}
    for eta in (0.0, 1.0):
        torch.manual_seed(1)
        out = dfm.decision_flow_losses(policy, flow_critic, flow_critic, critic, behaviour, obs, actions, variant, 5,
                                       eta=eta, beta=1.0, normalize=True)
        g_actor = torch.autograd.grad(out["actor_loss"], list(policy.parameters()), retain_graph=True)
        g_fm = torch.autograd.grad(out["flow_matching_loss"], list(policy.parameters()))
        grads[eta] = max((a - b).abs().max().item() for a, b in zip(g_actor, g_fm))
        if eta == 0.0:
            assert out["actor_loss"].item() == out["flow_matching_loss"].item()
    assert grads[0.0] == 0.0
    assert grads[1.0] > 1e-4  # the check can fail: with eta > 0 the objective is not flow matching


def constant_critic(critic, values):
    last = critic.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(values, dtype=torch.float32).view(-1, 1, 1))
    return critic


@pytest.mark.parametrize("q_agg, next_q", [("mean", 2.0), ("min", 1.0)])
def test_td_critic_loss_known_answer(q_agg, next_q):
    torch.manual_seed(0)
    policy = dfm.VectorField(3, 2, 32, 2)
    critic = constant_critic(dfm.Critic(3, 2, 32, 2, 2), [0.5, 1.5])
    target = constant_critic(dfm.Critic(3, 2, 32, 2, 2), [1.0, 3.0])
    batch = {"observations": torch.randn(4, 3), "actions": torch.rand(4, 2) * 2 - 1, "next_observations": torch.randn(4, 3),
             "rewards": torch.tensor([0.0, 1.0, -1.0, 2.0]), "masks": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    loss, q = dfm.critic_loss(critic, target, policy, batch, gamma=0.9, flow_steps=10, q_agg=q_agg)
    target_q = batch["rewards"] + 0.9 * batch["masks"] * next_q
    expected = ((torch.tensor([[0.5], [1.5]]) - target_q) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- behaviour
def mode_fraction(actions: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(actions - GOOD_MODE, axis=1) < np.linalg.norm(actions + GOOD_MODE, axis=1)))


@pytest.mark.parametrize("variant", ["dir", "div"])
def test_bandit_flow_policy_picks_the_better_mode_and_beats_the_bc_flow(variant, bandit_dataset, in_tmp):
    """Two-mode bandit: the in-run BC flow keeps both modes; the decision-flow policy moves to the better one."""
    args = tiny(env_id=str(bandit_dataset), variant=variant, total_steps=800, eval_freq=800, eval_episodes=200,
                save_model=True)
    metrics = dfm.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/decision_flow.pt")))
    policy, bc = dfm.VectorField(2, 2, 64, 2), dfm.VectorField(2, 2, 64, 2)
    policy.load_state_dict(state["policy"])
    bc.load_state_dict(state["behaviour"])
    torch.manual_seed(0)
    obs, z = torch.ones(2000, 2), torch.randn(2000, 2)
    bc_share = mode_fraction(dfm.sample_flow(bc, obs, z, 10).numpy())
    share = mode_fraction(dfm.sample_flow(policy, obs, z, 10).numpy())
    assert 0.3 < bc_share < 0.7, bc_share
    assert share > bc_share + 0.2, (share, bc_share)
    assert metrics["eval/normalized_score"] > metrics["eval/bc_flow_normalized_score"] + 5, metrics


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dir", "div"])
def test_learning_curve_on_the_embedded_reacher_dataset_beats_bc(variant, in_tmp):
    args = tiny(env_id="flowrl/reacher/mixed-v0", variant=variant, total_steps=3000, hidden_dim=128, batch_size=256,
                eval_freq=3000, eval_episodes=100)
    metrics = dfm.main(args)
    assert metrics["eval/normalized_score"] > metrics["eval/bc_flow_normalized_score"] + 10, metrics


# ---------------------------------------------------------------------------------------------- runs
def test_same_seed_gives_the_same_networks_on_cpu(bandit_dataset, tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        dfm.main(tiny(env_id=str(bandit_dataset), variant="div", total_steps=40, eval_freq=40, log_freq=20, save_model=True,
                      eval_bc_flow=False))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/decision_flow.pt"))))
    for name in ("policy", "flow_critic", "critic", "behaviour"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)


def test_checkpoint_reloads_and_evaluates(bandit_dataset, in_tmp, capsys, monkeypatch):
    """A checkpoint exactly at --total-steps: a one-line notice, no training, the same evaluation."""
    first = dfm.main(tiny(env_id=str(bandit_dataset), total_steps=40, eval_freq=40, log_freq=20, save_model=True))
    path = next(in_tmp.glob("runs/*/decision_flow.pt"))
    capsys.readouterr()
    monkeypatch.setattr(dfm, "critic_loss", lambda *a, **k: pytest.fail("trained past the budget"))
    again = dfm.main(tiny(env_id=str(bandit_dataset), total_steps=40, checkpoint=str(path)))
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert notices == [f"notice: --checkpoint {path} is at step 40, the --total-steps budget: nothing to train, "
                       "evaluating it only"]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(bandit_dataset, in_tmp, monkeypatch):
    calls = {"n": 0}
    original = dfm.critic_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, q = original(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > 50 else loss), q

    monkeypatch.setattr(dfm, "critic_loss", poisoned)
    with pytest.raises(dfm.NonFiniteLossError, match="non-finite loss"):
        dfm.main(tiny(env_id=str(bandit_dataset), total_steps=100, eval_freq=50, log_freq=50, eval_episodes=1, save_model=True))
    state = torch.load(next(in_tmp.glob("runs/*/decision_flow.pt")))
    assert state["step"] == 50
    assert all(torch.isfinite(v).all() for v in state["policy"].values())


def test_unknown_env_id_exits_with_one_clear_line(in_tmp):
    result = run_script("decision_flow", "--env-id", "nosuch/dataset-v0", "--no-cuda")
    last = last_error_line(result)
    assert last.startswith("error: cannot load --env-id 'nosuch/dataset-v0'") and "minari list remote" in last


def test_unknown_variant_is_rejected_by_the_cli(in_tmp):
    result = run_script("decision_flow", "--variant", "sideways", "--no-cuda")
    assert result.returncode != 0 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------- data / env plumbing
@pytest.mark.parametrize("env_id, shifted", [("D4RL/antmaze/umaze-v1", True), ("D4RL/antmaze/medium-play-v1", True),
                                             ("D4RL/antmaze/large-diverse-v1", True), ("/data/antmaze-umaze-diverse-v2", True),
                                             ("antmaze-large-navigate-singletask-v0", False),  # OGBench: already {-1, 0}
                                             ("mujoco/hopper/medium-v0", False), ("flowrl/reacher/mixed-v0", False)])
def test_reward_transform_shifts_d4rl_antmaze_only(env_id, shifted):
    rewards = np.array([0.0, 1.0], np.float32)
    np.testing.assert_array_equal(dfm.transform_reward(env_id, rewards), rewards - 1.0 if shifted else rewards)


def test_dataset_rewards_go_through_the_reward_transform(make_bandit_dataset):
    """Local copies named like a D4RL AntMaze task are shifted by -1; an 'antmaze' name that the official FQL does not
    treat as D4RL AntMaze (no diverse / play / umaze) is not."""
    reference = dfm.load_offline_data(str(make_bandit_dataset("plain-bandit", n_episodes=50)), "").transitions["rewards"]
    for name, shift in (("df-antmaze-umaze-bandit", -1.0), ("df-antmaze-navigate-bandit", 0.0)):
        rewards = dfm.load_offline_data(str(make_bandit_dataset(name, n_episodes=50)), "").transitions["rewards"]
        np.testing.assert_allclose(rewards, reference + shift)


def test_ogbench_envs_compute_success_after_the_step(ogbench_dir, monkeypatch):
    """Every OGBench singletask env the script builds uses success_timing='post' (ogbench 1.1.0's behaviour, pinned by
    the official FQL): stepping into the goal region gives success 1, reward 0 and termination on that step."""
    import ogbench

    calls = []
    original = ogbench.make_env_and_datasets

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ogbench, "make_env_and_datasets", recording)
    data = dfm.load_offline_data(OGBENCH_TINY, str(ogbench_dir))
    env = data.make_env()
    assert len(calls) == 2 and all(kw.get("success_timing") == "post" for kw in calls), calls
    assert env.unwrapped._success_timing == "post"
    env.reset(seed=0)
    goal = np.array(env.unwrapped.cur_goal_xy)
    env.unwrapped.set_xy(goal + np.array([1.05, 0.0]))  # just outside the goal tolerance (1.0) ...
    _, reward, terminated, _, info = env.step(np.array([-1.0, 0.0], np.float32))  # ... and one step into it
    assert np.linalg.norm(env.unwrapped.get_xy() - goal) < 1.0
    assert (info["success"], reward, terminated) == (1.0, 0.0, True)
    env.close()


def test_eval_envs_sets_the_evaluation_pool_size(bandit_dataset, in_tmp, monkeypatch):
    envs = record_envs(dfm, monkeypatch)
    dfm.main(tiny(env_id=str(bandit_dataset), total_steps=10, eval_freq=10, log_freq=10, eval_episodes=7, eval_envs=3))
    assert len(envs) == 3
    # the flow policy, then the in-run BC flow: episode i is reset with seed 10000 * seed + i in both
    assert sorted(seed for env in envs for seed, _ in env.resets) == sorted(2 * list(range(10_000, 10_007)))


def test_evaluation_does_not_depend_on_the_pool_size(random_start_dataset):
    """Episode i is reset with seed + i whichever env runs it: a deterministic policy gets the same returns."""
    data = dfm.load_offline_data(str(random_start_dataset), "")
    policy = lambda obs: torch.tanh(obs[:, 1:2] - obs[:, 2:3])  # noqa: E731
    results = []
    for pool in (1, 3):
        envs = [data.make_env() for _ in range(pool)]
        results.append(dfm.evaluate(data, envs, policy, 7, 123, torch.device("cpu")))
    assert results[0] == results[1]
    assert results[0]["episodic_return_std"] > 0  # the episodes differ (random starts)


# ---------------------------------------------------------------------------------------------- bad files (issue 23)
# (bad flag values: the decision_flow block of tests/test_bad_input.py)
@pytest.fixture(scope="module")
def small_bandit(make_bandit_dataset):
    return make_bandit_dataset("small-bandit", n_episodes=300)


@pytest.fixture(scope="module")
def checkpoint(small_bandit, tmp_path_factory):
    """A DF-dir checkpoint of `tiny` networks (64 x 2, 2 critics, with the behaviour flow) at step 20."""
    folder, cwd = tmp_path_factory.mktemp("df_checkpoint"), Path.cwd()
    os.chdir(folder)
    try:
        dfm.main(tiny(env_id=str(small_bandit), total_steps=20, eval_freq=20, log_freq=10, eval_episodes=2,
                      save_model=True))
    finally:
        os.chdir(cwd)
    return next(folder.glob("runs/*/decision_flow.pt"))


def no_data(monkeypatch):
    """Fail the test if main gets as far as loading the dataset (bad input must stop it before any work)."""
    monkeypatch.setattr(dfm, "load_offline_data", lambda *a, **k: pytest.fail("the dataset was loaded"))


def checkpoint_error(args, monkeypatch=None) -> str:
    if monkeypatch is not None:
        no_data(monkeypatch)
    with pytest.raises(dfm.CheckpointError) as caught:
        dfm.main(args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("kind, expected", [
    ("empty hdf5", "main_data.hdf5 is empty"),
    ("garbage hdf5", "main_data.hdf5 is truncated or not HDF5"),
    ("truncated hdf5", "main_data.hdf5 is truncated or not HDF5 (OSError: Unable to synchronously open file (truncated"),
    ("episode without actions", "main_data.hdf5 lacks the entry 'actions'"),
    ("episode cut short", "episode 3 has 1 observations, 1 actions, 1 rewards and 1 terminations"),
    ("broken metadata.json", "metadata.json is not valid JSON"),
    ("no metadata.json", "data has no metadata.json"),
])
def test_a_broken_dataset_gives_one_line_naming_the_file(kind, expected, small_bandit, tmp_path):
    assert kind in BROKEN_MINARI
    folder = broken_minari_copy(small_bandit, tmp_path / "broken", kind)
    with pytest.raises(dfm.DatasetError) as caught:
        dfm.load_offline_data(str(folder), "")
    message = str(caught.value)
    assert "\n" not in message and expected in message and str(folder) in message, message


def test_a_truncated_ogbench_file_gives_one_line_naming_it(ogbench_dir, tmp_path):
    import shutil

    folder = Path(shutil.copytree(ogbench_dir, tmp_path / "ogbench"))
    npz = folder / "pointmaze-medium-navigate-v0.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(dfm.DatasetError) as caught:
        dfm.load_offline_data(OGBENCH_TINY, str(folder))
    assert str(caught.value) == (f"OGBench dataset {OGBENCH_TINY!r}: {npz} cannot be read as .npz: it is empty, "
                                 "truncated or not .npz (BadZipFile: File is not a zip file)")


@pytest.mark.parametrize("kind, expected", [
    ("missing", "does not exist"), ("empty", "is empty"), ("garbage", "is not a readable torch file (UnpicklingError)"),
    ("text", "is not a readable torch file ("), ("truncated", "is not a readable torch file ("),
    ("a directory", "is a directory, not a file"),
    ("a tensor", "is not a decision_flow checkpoint: it holds a Tensor")])
def test_a_bad_checkpoint_file_gives_one_line_before_any_work(kind, expected, checkpoint, tmp_path, in_tmp, monkeypatch):
    assert kind in BROKEN_TORCH
    path = broken_torch_file(tmp_path / "bad.pt", kind, valid=checkpoint)
    message = checkpoint_error(tiny(total_steps=40, checkpoint=str(path)), monkeypatch)
    assert message.startswith(f"--checkpoint {path} {expected}"), message


def test_another_scripts_checkpoint_is_refused(tmp_path, in_tmp, monkeypatch):
    path = tmp_path / "swfp.pt"
    torch.save({"script": "swfp", "phase": "pretrained", "step": 0, "args": {"hidden_dim": 64}}, path)
    assert checkpoint_error(tiny(checkpoint=str(path)), monkeypatch) == (
        f"--checkpoint {path} is not a decision_flow checkpoint: it was saved by swfp.py")
    torch.save({"critic": {}, "args": {}}, path)  # no script entry (an older file) and not decision_flow's entries
    assert checkpoint_error(tiny(checkpoint=str(path)), monkeypatch).startswith(
        f"--checkpoint {path} is not a decision_flow checkpoint: it has no step, optimizer, policy, flow_critic")


def test_a_checkpoint_of_other_networks_or_variant_is_refused_listing_each(checkpoint, in_tmp, monkeypatch):
    """The issue's example: a --variant dir checkpoint no longer loads under --variant div; sizes are listed too."""
    message = checkpoint_error(tiny(total_steps=40, checkpoint=str(checkpoint), variant="div", hidden_dim=32,
                                    num_critics=3), monkeypatch)
    assert message == (f"--checkpoint {checkpoint} holds other networks: --hidden-dim 32 (checkpoint: 64), "
                       "--num-critics 3 (checkpoint: 2), --variant div (checkpoint: dir); pass the checkpoint's values")
    message = checkpoint_error(tiny(total_steps=40, checkpoint=str(checkpoint), eval_bc_flow=False))  # no u_beta then
    assert "--eval-bc-flow False (checkpoint: True)" in message


def test_a_checkpoint_past_the_budget_is_refused(checkpoint, in_tmp, monkeypatch):
    assert checkpoint_error(tiny(total_steps=10, checkpoint=str(checkpoint)), monkeypatch) == (
        f"--checkpoint {checkpoint} is at step 20, past --total-steps 10; pass a larger --total-steps")


def test_a_checkpoint_below_the_budget_trains_the_remaining_steps_at_the_new_learning_rate(checkpoint, small_bandit,
                                                                                          in_tmp, monkeypatch):
    calls, lrs = [], []
    original_loss, original_restore = dfm.critic_loss, dfm.restore_checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original_loss(*args, **kwargs)

    def restore(state, args, modules, optimizer, *rest):
        original_restore(state, args, modules, optimizer, *rest)
        lrs.extend(group["lr"] for group in optimizer.param_groups)

    monkeypatch.setattr(dfm, "critic_loss", counted)
    monkeypatch.setattr(dfm, "restore_checkpoint", restore)
    dfm.main(tiny(env_id=str(small_bandit), total_steps=25, eval_freq=25, eval_episodes=1, checkpoint=str(checkpoint),
                  learning_rate=1e-4, save_model=True))
    assert len(calls) == 5  # steps 21..25
    assert lrs == [1e-4]  # the checkpoint's Adam moments, this run's --learning-rate (not the saved 3e-4)
    assert torch.load(next(in_tmp.glob("runs/*/decision_flow.pt")))["step"] == 25


def test_a_checkpoint_without_the_script_entry_still_loads(checkpoint, small_bandit, tmp_path, in_tmp):
    state = torch.load(checkpoint)
    del state["script"]
    torch.save(state, tmp_path / "old.pt")
    metrics = dfm.main(tiny(env_id=str(small_bandit), total_steps=20, eval_episodes=2, checkpoint=str(tmp_path / "old.pt")))
    assert np.isfinite(metrics["eval/episodic_return"])


def test_a_checkpoint_of_another_datasets_sizes_is_refused_in_one_line(checkpoint, random_start_dataset, in_tmp):
    message = checkpoint_error(tiny(env_id=str(random_start_dataset), total_steps=40, checkpoint=str(checkpoint)))
    assert message.startswith(f"--checkpoint {checkpoint}: its networks do not load into this dataset's (observation "
                              "dim 3, action dim 1; RuntimeError: Error(s) in loading state_dict for VectorField")


def test_two_runs_in_the_same_second_get_their_own_directories(in_tmp):
    """main names its run directory runs/<env>__<exp>__<seed>__<unix second>: a second run of that name gets another."""
    first, second = dfm.fresh_run_dir("same"), dfm.fresh_run_dir("same")
    assert first != second and first.is_dir() and second.is_dir() and second.name == "same_1"
