"""Tests for swfp.py: the defining properties of the reconstructed per-block JKO objective (identity optimum
without Q and entropy, proximal point on a quadratic Q, step growing with h, exact log-det), fine-tuning
vs the pretrained policy on the two-mode bandit in the same run, the naive baseline, bad input, NaN
handling, checkpoints and determinism."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (BROKEN_MINARI, BROKEN_TORCH, OGBENCH_TINY, RANDOM_START_STEPS, broken_minari_copy, broken_torch_file,
                      import_script, last_error_line, record_envs, run_script)

swfp = import_script("swfp")


@pytest.fixture(scope="module")
def small_bandit(make_bandit_dataset):
    """The two-mode bandit with 300 episodes: loads ~7x faster than the 2000-episode one, for smoke tests."""
    return make_bandit_dataset("small-bandit", n_episodes=300)


def tiny(**overrides) -> "swfp.Args":
    base = swfp.Args(cuda=False, hidden_dim=64, num_layers=2, batch_size=64, pretrain_steps=200, critic_warmup_steps=50,
                     total_timesteps=50, eval_freq=50, eval_episodes=5, log_freq=25, blocks=4, block_hidden_dim=32)
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------------- losses
def test_bc_flow_loss_of_the_zero_field_is_the_second_moment_of_the_target():
    # v = 0: loss = E||a - x_0||^2 / d = a^2 + 1 per dimension (x_0 ~ N(0, I))
    torch.manual_seed(0)
    actions = torch.full((20000, 2), 0.5)
    zero = lambda obs, x, t: torch.zeros_like(x)  # noqa: E731
    assert swfp.bc_flow_loss(zero, torch.zeros(20000, 1), actions).item() == pytest.approx(1.25, rel=0.02)


def test_euler_sampler_with_a_constant_field_and_zero_blocks_lands_on_x0_plus_v():
    v = torch.tensor([0.25, -0.5])
    field = lambda obs, x, t: v.expand_as(x)  # noqa: E731
    blocks = swfp.FlowBlocks(10, 1, 2, 16, 2)  # zero-initialised last layer: identity refinement
    z = torch.tensor([[0.1, 0.2], [0.9, -0.9]])
    out = swfp.sample_actions(field, blocks, torch.zeros(2, 1), z, num_steps=10)
    assert torch.allclose(out, (z + v).clamp(-1, 1), atol=1e-6)


class ConstantCritic(torch.nn.Module):
    def forward(self, obs, action):
        return torch.full((2,) + action.shape[:-1], 3.0)


class QuadraticCritic(torch.nn.Module):
    """Q(s, a) = -||a - c||^2 / 2 for both ensemble members."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, obs, action):
        q = -0.5 * (action - self.c).pow(2).sum(-1)
        return torch.stack([q, q])


def train_blocks(blocks, flow, critic, obs, z, step_size, entropy_coef=0.0, steps=400, lr=1e-2):
    opt = torch.optim.Adam(blocks.parameters(), lr=lr)
    for _ in range(steps):
        stats = swfp.flow_block_losses(flow, blocks, critic, obs, z, step_size, entropy_coef, normalize_q=False,
                                       with_entropy=entropy_coef > 0, with_stats=False)
        opt.zero_grad()
        stats["loss"].backward()
        opt.step()
    return stats


def make_flow(obs_dim=3, act_dim=2):
    torch.manual_seed(0)
    flow = swfp.VectorField(obs_dim, act_dim, 32, 2)
    flow.requires_grad_(False)
    return flow


def test_without_q_and_entropy_the_optimum_is_the_identity_refinement():
    """Q constant, beta = 0: zero-initialised blocks get zero gradient, and trained random blocks return to the
    pretrained flow (the same actions from the same noise)."""
    K, B = 4, 128
    flow = make_flow()
    obs, z = torch.randn(B, 3), torch.randn(B, 2)
    blocks = swfp.FlowBlocks(K, 3, 2, 32, 2)
    obs_k, z_k = obs.expand(K, -1, -1), z.expand(K, -1, -1)  # every block's chunk: the same states and noise
    stats = swfp.flow_block_losses(flow, blocks, ConstantCritic(), obs_k, z_k, 0.1, 0.0, False, False)
    stats["loss"].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in blocks.parameters())
    assert torch.all(stats["w2_trust"] == 0)

    with torch.no_grad():
        for p in blocks.parameters():
            p.normal_(0.0, 0.3)
    pretrained = swfp.sample_actions(flow, None, obs, z, K)
    assert (swfp.sample_actions(flow, blocks, obs, z, K) - pretrained).abs().max() > 0.05  # perturbed
    train_blocks(blocks, flow, ConstantCritic(), obs_k, z_k, 0.1, steps=300)  # the inputs a_k follow the cascade
    assert (swfp.sample_actions(flow, blocks, obs, z, K) - pretrained).abs().max() < 0.02


@pytest.mark.parametrize("normalize_q", [False, True])
def test_constant_q_term_has_no_gradient(normalize_q):
    K = 3
    flow = make_flow()
    blocks = swfp.FlowBlocks(K, 3, 2, 16, 2)
    torch.nn.init.normal_(blocks.layers[-1].weight)
    stats = swfp.flow_block_losses(flow, blocks, ConstantCritic(), torch.randn(K, 8, 3), torch.randn(K, 8, 2), 1e9, 0.0,
                                   normalize_q, False)
    assert stats["q_improvement"].abs().max() == 0
    stats["loss"].backward()
    assert max(p.grad.abs().max().item() for p in blocks.parameters() if p.grad is not None) < 1e-6


def test_w2_term_gives_the_proximal_point_of_a_quadratic_q_and_larger_h_moves_further():
    """One block (h_e = 1), constant BC velocity v: a~ = x + v; Q = -||a - c||^2 / 2. The JKO step
    argmin_a ||a - c||^2 / 2 + ||a - a~||^2 / (2h) is (a~ + h c) / (1 + h): displacement h / (1 + h) ||c - a~||."""
    v, c = torch.tensor([0.2, -0.1]), torch.tensor([0.8, 0.6])
    field = lambda obs, x, t: v.expand_as(x)  # noqa: E731
    x = torch.tensor([[[-0.3, 0.1], [0.4, -0.5], [0.0, 0.0]]])  # (K=1, B=3, d=2)
    obs = torch.zeros(1, 3, 1)
    a_ref = x + v
    steps = []
    for h in (0.1, 0.5, 2.0):
        torch.manual_seed(0)
        blocks = swfp.FlowBlocks(1, 1, 2, 32, 2)
        train_blocks(blocks, field, QuadraticCritic(c), obs, x, step_size=h, steps=600)
        with torch.no_grad():
            a_next = a_ref + blocks(torch.cat([obs, x], -1))
        prox = (a_ref + h * c) / (1 + h)
        assert torch.allclose(a_next, prox, atol=1e-2), (h, a_next, prox)
        step = (a_next - a_ref).norm(dim=-1)
        assert torch.all(step <= (c - a_ref).norm(dim=-1) * h / (1 + h) + 1e-2)  # the trust region bounds the step
        steps.append(step)
    assert torch.all(steps[0] < steps[1]) and torch.all(steps[1] < steps[2])


def test_block_log_det_is_the_exact_change_of_variables_term():
    """Linear BC field v = x A and zero blocks: log|det J| = log|det(I + dt A^T)|; random blocks: matches autograd."""
    K, B, dt = 2, 5, 0.5
    A = torch.tensor([[1.0, 0.3], [-0.2, 0.5]])
    field = lambda obs, x, t: x @ A  # noqa: E731
    a = torch.randn(K, B, 2, requires_grad=True)
    obs = torch.randn(K, B, 3)
    blocks = swfp.FlowBlocks(K, 3, 2, 16, 2)
    u = blocks(torch.cat([obs, a], -1))
    logdet = swfp.block_log_det(field(obs, a, None), u, a, dt, create_graph=False)
    expected = torch.linalg.slogdet(torch.eye(2) + dt * A.T).logabsdet
    assert torch.allclose(logdet, expected.expand(K, B), atol=1e-6)

    torch.nn.init.normal_(blocks.layers[-1].weight)
    u = blocks(torch.cat([obs, a], -1))
    logdet = swfp.block_log_det(field(obs, a, None), u, a, dt, create_graph=False)
    jac = torch.autograd.functional.jacobian(
        lambda y: y + dt * (y @ A + blocks.step(1, torch.cat([obs[1, 2:3], y[None]], -1))[0]), a[1, 2].detach())
    assert logdet[1, 2].item() == pytest.approx(torch.linalg.slogdet(jac).logabsdet.item(), abs=1e-5)


def test_entropic_term_spreads_the_iterate_when_q_is_flat():
    K = 2
    flow = make_flow()
    obs, z = torch.randn(K, 64, 3), torch.randn(K, 64, 2)
    torch.manual_seed(1)
    blocks = swfp.FlowBlocks(K, 3, 2, 32, 2)
    stats = train_blocks(blocks, flow, ConstantCritic(), obs, z, step_size=0.1, entropy_coef=0.05, steps=200)
    without = swfp.flow_block_losses(flow, swfp.FlowBlocks(K, 3, 2, 32, 2), ConstantCritic(), obs, z, 0.1, 0.05, False, True)
    assert torch.all(stats["log_det"] > without["log_det"] + 0.01), (stats["log_det"], without["log_det"])
    assert torch.all(stats["w2_trust"] > 0)


def test_naive_finetune_loss_reaches_every_flow_parameter_and_no_critic_parameter():
    flow = swfp.VectorField(3, 2, 16, 2)
    critic = swfp.Critic(3, 2, 16, 2, 2)
    params = {n: p.detach() for n, p in critic.named_parameters()}
    frozen = lambda *x: torch.func.functional_call(critic, params, x)  # noqa: E731
    swfp.naive_finetune_loss(flow, frozen, torch.randn(8, 3), torch.randn(8, 2), 4, True)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    assert all(p.grad is None for p in critic.parameters())


class RecordingCritic(torch.nn.Module):
    """Q(s, a) = <g, a> for both ensemble members; keeps every action it is evaluated at."""

    def __init__(self, g=(0.0, 0.0)):
        super().__init__()
        self.g, self.actions = torch.tensor(g), []

    def forward(self, obs, action):
        self.actions.append(action.detach().clone())
        q = (action * self.g).sum(-1)
        return torch.stack([q, q])


def random_blocks(K, upto=None, scale=0.3):
    torch.manual_seed(2)
    blocks = swfp.FlowBlocks(K, 3, 2, 16, 2)
    with torch.no_grad():
        for layer in blocks.layers:
            layer.weight[:upto].normal_(0.0, scale)
    return blocks


def test_flow_blocks_evaluate_q_only_at_the_final_actions_of_the_cascade():
    """--block-space flow: every action the critic sees in the block losses is a final action of the current
    cascade (the action the iterate a_{k+1} leads to), never the iterate itself; with the statistics on, also the
    final action reached from the pretrained step a~_{k+1}, inside [-1, 1]."""
    K, n = 4, 16
    flow, blocks = make_flow(), random_blocks(4)
    obs, z = torch.randn(K, n, 3), torch.randn(K, n, 2)
    critic = RecordingCritic()
    swfp.flow_block_losses(flow, blocks, critic, obs, z, 1.0, 0.0, False, False, with_stats=False)
    (seen,) = critic.actions
    final = torch.stack([swfp.sample_actions(flow, blocks, obs[k], z[k], K) for k in range(K)])
    assert torch.allclose(seen, final, atol=1e-5)
    iterates = torch.stack([swfp.flow_rollout(flow, blocks, obs[k], z[k], K)[k + 1] for k in range(K - 1)])
    assert (seen[: K - 1] - iterates).abs().amax(dim=(1, 2)).min() > 0.1  # the intermediate iterates differ from it
    critic.actions.clear()
    swfp.flow_block_losses(flow, blocks, critic, obs, z, 1.0, 0.0, False, True, with_stats=True)
    assert torch.allclose(critic.actions[0][:, :n], final, atol=1e-5) and critic.actions[0].abs().max() <= 1.0


@pytest.mark.parametrize("block", [0, 2])
def test_action_blocks_evaluate_q_at_actions_and_train_only_their_block(block):
    """--block-space action: block k sees a_k from the BC sample and the trained blocks before it; the critic sees the
    current policy's action a_{k+1} (the later blocks are still the identity) and a_k, and only block k gets a gradient."""
    K, B = 4, 32
    flow, blocks = make_flow(), random_blocks(4, upto=block + 1)
    obs, z = torch.randn(B, 3), torch.randn(B, 2)
    critic = RecordingCritic(g=(1.0, -1.0))
    stats = swfp.action_block_loss(flow, blocks, critic, obs, z, block, 1.0, 0.01, False, True)
    (seen,) = critic.actions
    iterates = swfp.action_rollout(flow, blocks, obs, z, K)
    assert torch.allclose(seen[:B], swfp.sample_actions(flow, blocks, obs, z, K, "action"), atol=1e-6)
    assert torch.allclose(seen[B:], iterates[block].clamp(-1, 1), atol=1e-6)
    assert torch.allclose(iterates[0], swfp.sample_actions(flow, None, obs, z, K))  # a_0: the BC policy's action
    stats["loss"].backward()
    for layer in blocks.layers:
        grads = layer.weight.grad.abs().sum(dim=(1, 2))
        assert grads[block] > 0 and torch.all(grads[torch.arange(K) != block] == 0), grads


@pytest.mark.parametrize("space, K", [("flow", 2), ("flow", 4), ("action", 2), ("action", 4)])
def test_the_cascade_is_a_jko_step_of_time_h_whatever_k(space, K):
    """Linear Q = <g, a>, constant BC field, beta = 0: each block is a JKO step of size h / K (trust region
    K ||.||^2 / (2h)), so the optimum moves every final action by h g in total, the same for every K (the old
    per-block ||.||^2 / (2h) moved it by K h g)."""
    g, h, v = (0.3, -0.2), 1.0, torch.tensor([0.1, 0.1])
    field = lambda obs, x, t: v.expand_as(x)  # noqa: E731
    torch.manual_seed(0)
    obs, z = torch.randn(K, 32, 3), 0.2 * torch.randn(K, 32, 2)
    blocks = swfp.FlowBlocks(K, 3, 2, 16, 2)
    critic = RecordingCritic(g)
    if space == "flow":
        train_blocks(blocks, field, critic, obs, z, h, steps=200, lr=5e-3)
    else:
        for block in range(K):  # one after another, as main trains them
            opt = torch.optim.Adam(blocks.parameters(), lr=5e-3)
            for _ in range(200):
                loss = swfp.action_block_loss(field, blocks, critic, obs[0], z[0], block, h, 0.0, False, False)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
    with torch.no_grad():
        moved = swfp.sample_actions(field, blocks, obs[0], z[0], K, space) - swfp.sample_actions(field, None, obs[0], z[0], K)
    assert torch.allclose(moved.mean(0), h * torch.tensor(g), atol=0.01), moved.mean(0)  # the mean step: h g
    assert torch.allclose(moved, h * torch.tensor(g).expand_as(moved), atol=0.05), moved  # and every action's


def test_the_regularised_naive_loss_adds_the_w2_bound_to_the_pretrained_actions():
    """--naive-trust-region: the naive loss plus ||a_K - a_K^BC||^2 / (2h) from the same noise; zero (and no pull) at
    the pretrained flow; after a perturbation it equals the displacement, and descent on it returns towards the BC flow."""
    K, h = 4, 0.5
    flow = swfp.VectorField(3, 2, 16, 2)
    bc = swfp.VectorField(3, 2, 16, 2)
    bc.load_state_dict(flow.state_dict())
    bc.requires_grad_(False)
    obs, z = torch.randn(64, 3), torch.randn(64, 2)
    critic = lambda obs, a: torch.zeros(2, a.shape[0]) + 0.0 * a.sum(-1)  # noqa: E731  flat Q: only the W2 term acts
    loss, disp = swfp.naive_finetune_loss(flow, critic, obs, z, K, False, bc, h)
    assert disp == 0 and loss.item() == 0
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss, disp = swfp.naive_finetune_loss(flow, critic, obs, z, K, False, bc, h)
    gap = (swfp.flow_rollout(flow, None, obs, z, K)[-1] - swfp.flow_rollout(bc, None, obs, z, K)[-1]).pow(2).sum(-1).mean()
    assert disp.item() == pytest.approx(gap.item(), rel=1e-5) and loss.item() == pytest.approx(gap.item() / (2 * h), rel=1e-5)
    opt = torch.optim.SGD(flow.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        swfp.naive_finetune_loss(flow, critic, obs, z, K, False, bc, h)[0].backward()
        opt.step()
    assert swfp.naive_finetune_loss(flow, critic, obs, z, K, False, bc, h)[1] < 0.5 * disp


@pytest.mark.parametrize("space", ["flow", "action"])
def test_in_a_run_the_critic_sees_only_actions_and_action_blocks_train_in_order(space, small_bandit, in_tmp, monkeypatch):
    """Every action any critic is evaluated at during a run (TD targets, warm-up, block losses) lies in [-1, 1]: the
    critic is never asked about a noisy iterate (the old block loss fed it a_1 = a_0 + ..., a_0 ~ N(0, I)). With
    --block-space action, block k trains during the k-th quarter of the online phase."""
    seen, trained = [], []

    class Recording(swfp.Critic):
        def forward(self, obs, action):
            seen.append(action.detach().abs().max().item())
            return super().forward(obs, action)

    monkeypatch.setattr(swfp, "Critic", Recording)
    loss = swfp.action_block_loss
    monkeypatch.setattr(swfp, "action_block_loss", lambda *a, **k: trained.append(a[5]) or loss(*a, **k))
    swfp.main(tiny(env_id=str(small_bandit), block_space=space, pretrain_steps=40, critic_warmup_steps=10,
                   total_timesteps=12, eval_freq=12, eval_episodes=2, log_freq=6))
    assert len(seen) > 40 and max(seen) <= 1.0, max(seen)
    assert trained == ([0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 if space == "action" else [])


# ---------------------------------------------------------------------------------------------- behaviour
def test_online_finetuning_beats_the_pretrained_policy_on_the_bandit(bandit_dataset, in_tmp):
    """Same run: the pretrained BC flow (evaluated before the first online step) vs after SWFP fine-tuning."""
    args = tiny(env_id=str(bandit_dataset), pretrain_steps=800, critic_warmup_steps=200, total_timesteps=200,
                hidden_dim=128, learning_rate=1e-3, jko_step_size=0.5, eval_freq=200, eval_episodes=200, log_freq=100)
    metrics = swfp.main(args)
    assert metrics["eval/normalized_score"] > metrics["eval/pretrained_normalized_score"] + 10, metrics


def test_naive_finetune_runs_with_the_same_budget_and_logs(small_bandit, in_tmp):
    metrics = swfp.main(tiny(env_id=str(small_bandit), naive_finetune=True))
    assert np.isfinite(metrics["eval/episodic_return"]) and "eval/pretrained_episodic_return" in metrics
    assert list(in_tmp.glob("runs/*/events.out.tfevents.*"))


def test_same_seed_gives_the_same_networks_on_cpu(small_bandit, tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        swfp.main(tiny(env_id=str(small_bandit), pretrain_steps=60, critic_warmup_steps=20, total_timesteps=30,
                       eval_freq=30, log_freq=15, save_model=True))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/swfp.pt"))))
    for name in ("flow", "blocks", "critic"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)
    assert any(v.abs().sum() > 0 for v in states[0]["blocks"].values())


def test_phase1_checkpoint_reloads_as_the_same_pretrained_policy(small_bandit, in_tmp, capsys):
    first = swfp.main(tiny(env_id=str(small_bandit), total_timesteps=0, save_model=True, exp_name="pre"))
    path = next(in_tmp.glob("runs/*/pre.pt"))
    capsys.readouterr()
    again = swfp.main(tiny(env_id=str(small_bandit), total_timesteps=0, checkpoint=str(path)))
    assert again["eval/episodic_return"] == pytest.approx(first["eval/episodic_return"])
    assert again["eval/pretrained_episodic_return"] == pytest.approx(first["eval/episodic_return"])
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert notices == [f"notice: --checkpoint {path} is at env step 0, the --total-timesteps budget: nothing to "
                       "fine-tune, evaluating it only"]


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_env_id_exits_with_one_clear_line(in_tmp):
    result = run_script("swfp", "--env-id", "nosuch/dataset-v0", "--no-cuda")
    last = last_error_line(result)
    assert last.startswith("error: cannot load --env-id 'nosuch/dataset-v0'") and "minari list remote" in last


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(make_bandit_dataset, in_tmp):
    # the env returns NaN rewards online from its 20th step: the online phase puts them in the buffer
    dataset = make_bandit_dataset("nan-bandit", n_episodes=200, nan_reward_after=20)
    args = tiny(env_id=str(dataset), eval_episodes=1, total_timesteps=300, eval_freq=300, log_freq=50, save_model=True)
    with pytest.raises(swfp.NonFiniteLossError, match="non-finite loss"):
        swfp.main(args)
    state = torch.load(next(in_tmp.glob("runs/*/swfp.pt")))
    assert state["phase"] == "pretrained"
    assert all(torch.isfinite(v).all() for v in state["critic"].values())


# ---------------------------------------------------------------------------------------------- data / env plumbing
def test_online_env_is_seeded_once_and_episodes_start_from_different_states(random_start_dataset, in_tmp, monkeypatch):
    """The online env is reset with --seed once, then unseeded (its RNG continues): consecutive online episodes of the
    random-start task start from different states, and no online reset reuses a seed (e.g. an evaluation seed)."""
    envs = record_envs(swfp, monkeypatch)
    swfp.main(tiny(env_id=str(random_start_dataset), pretrain_steps=20, critic_warmup_steps=5, eval_episodes=2,
                   total_timesteps=4 * RANDOM_START_STEPS, eval_freq=4 * RANDOM_START_STEPS, log_freq=10, seed=3))
    online = envs[-1]  # built after the evaluation envs
    seeds = [seed for seed, _ in online.resets]
    assert len(seeds) == 4 and seeds[0] == 3 and all(seed is None for seed in seeds[1:]), seeds
    starts = [obs for _, obs in online.resets]
    assert all(np.abs(a - b).max() > 1e-3 for i, a in enumerate(starts) for b in starts[i + 1:]), starts


@pytest.mark.parametrize("env_id, shifted", [("D4RL/antmaze/umaze-v1", True), ("D4RL/antmaze/medium-play-v1", True),
                                             ("D4RL/antmaze/large-diverse-v1", True), ("/data/antmaze-umaze-diverse-v2", True),
                                             ("antmaze-large-navigate-singletask-v0", False),  # OGBench: already {-1, 0}
                                             ("mujoco/hopper/medium-v0", False), ("flowrl/reacher/mixed-v0", False)])
def test_reward_transform_shifts_d4rl_antmaze_only(env_id, shifted):
    rewards = np.array([0.0, 1.0], np.float32)
    np.testing.assert_array_equal(swfp.transform_reward(env_id, rewards), rewards - 1.0 if shifted else rewards)
    assert swfp.transform_reward(env_id, 1.0) == (0.0 if shifted else 1.0)


def test_antmaze_rewards_are_shifted_the_same_way_offline_and_online(make_bandit_dataset, in_tmp, monkeypatch):
    """A dataset whose --env-id names a D4RL antmaze task: the replay buffer holds dataset and online rewards both
    shifted by -1 (one transform), while the logged online return stays the env's own."""
    import minari

    dataset = make_bandit_dataset("antmaze-umaze-bandit", n_episodes=200)
    envs = record_envs(swfp, monkeypatch)
    buffers = []

    class RecordingBuffer(swfp.ReplayBuffer):
        def __init__(self, transitions, capacity, device):
            super().__init__(transitions, capacity, device)
            self.offline_rewards, self.added = np.array(transitions["rewards"]), []
            buffers.append(self)

        def add(self, **transition):
            self.added.append(float(transition["rewards"]))
            super().add(**transition)

    monkeypatch.setattr(swfp, "ReplayBuffer", RecordingBuffer)
    swfp.main(tiny(env_id=str(dataset), pretrain_steps=20, critic_warmup_steps=5, total_timesteps=20, eval_episodes=2,
                   eval_freq=20, log_freq=10))
    raw = swfp.load_minari(minari.MinariDataset(dataset / "data"), "bandit")  # the same data under an unshifted id
    np.testing.assert_allclose(buffers[0].offline_rewards, raw.transitions["rewards"] - 1.0)
    online = envs[-1]
    assert len(online.rewards) == 20 and max(online.rewards) > 0  # the bandit pays in [0, 1.5]
    np.testing.assert_allclose(buffers[0].added, np.array(online.rewards) - 1.0, atol=1e-6)


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
    data = swfp.load_offline_data(OGBENCH_TINY, str(ogbench_dir))
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


def test_eval_envs_sets_the_evaluation_pool_size(small_bandit, in_tmp, monkeypatch):
    envs = record_envs(swfp, monkeypatch)
    swfp.main(tiny(env_id=str(small_bandit), pretrain_steps=20, critic_warmup_steps=5, total_timesteps=5, eval_freq=5,
                   eval_episodes=7, eval_envs=3))
    assert len(envs) == 3 + 1  # 3 evaluation envs, then the online env
    assert sorted(seed for env in envs[:3] for seed, _ in env.resets) == sorted(2 * list(range(10_000, 10_007)))


def test_evaluation_does_not_depend_on_the_pool_size(random_start_dataset):
    """Episode i is reset with seed + i whichever env runs it: a deterministic policy gets the same returns."""
    data = swfp.load_offline_data(str(random_start_dataset), "")
    policy = lambda obs: torch.tanh(obs[:, 1:2] - obs[:, 2:3])  # noqa: E731
    results = []
    for pool in (1, 3):
        envs = [data.make_env() for _ in range(pool)]
        results.append(swfp.evaluate(data, envs, policy, 7, 123, torch.device("cpu")))
    assert results[0] == results[1]
    assert results[0]["episodic_return_std"] > 0  # the episodes differ (random starts)


# ---------------------------------------------------------------------------------------------- bad files (issue 23)
# (bad flag values: the swfp block of tests/test_bad_input.py)
def run_in(folder: Path, args) -> dict:
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        return swfp.main(args)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def pretrained(small_bandit, tmp_path_factory):
    """The end of phase 1 of `tiny` networks (64 x 2 flow and critics, 4 blocks of 32 x 2), as --save-model writes it."""
    folder = tmp_path_factory.mktemp("swfp_pretrained")
    run_in(folder, tiny(env_id=str(small_bandit), total_timesteps=0, eval_episodes=2, save_model=True, exp_name="pre"))
    return next(folder.glob("runs/*/pre.pt"))


@pytest.fixture(scope="module")
def online(pretrained, small_bandit, tmp_path_factory):
    """An online checkpoint at env step 10, fine-tuned (SWFP) from `pretrained` with another phase-1 budget."""
    folder = tmp_path_factory.mktemp("swfp_online")
    run_in(folder, tiny(env_id=str(small_bandit), checkpoint=str(pretrained), pretrain_steps=7, critic_warmup_steps=3,
                        total_timesteps=10, eval_freq=10, log_freq=5, eval_episodes=2, save_model=True, exp_name="online"))
    return next(folder.glob("runs/*/online.pt"))


def checkpoint_error(args, monkeypatch=None) -> str:
    if monkeypatch is not None:  # bad input must stop main before any work: the dataset is never loaded
        monkeypatch.setattr(swfp, "load_offline_data", lambda *a, **k: pytest.fail("the dataset was loaded"))
    with pytest.raises(swfp.CheckpointError) as caught:
        swfp.main(args)
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
    with pytest.raises(swfp.DatasetError) as caught:
        swfp.load_offline_data(str(folder), "")
    message = str(caught.value)
    assert "\n" not in message and expected in message and str(folder) in message, message


def test_an_empty_ogbench_file_gives_one_line_naming_it(ogbench_dir, tmp_path):
    import shutil

    folder = Path(shutil.copytree(ogbench_dir, tmp_path / "ogbench"))
    npz = folder / "pointmaze-medium-navigate-v0-val.npz"
    npz.write_bytes(b"")
    with pytest.raises(swfp.DatasetError) as caught:
        swfp.load_offline_data(OGBENCH_TINY, str(folder))
    assert str(caught.value).startswith(f"OGBench dataset {OGBENCH_TINY!r}: {npz} cannot be read as .npz: it is empty, "
                                        "truncated or not .npz (EOFError")


@pytest.mark.parametrize("kind, expected", [
    ("missing", "does not exist"), ("empty", "is empty"), ("garbage", "is not a readable torch file (UnpicklingError)"),
    ("text", "is not a readable torch file ("), ("truncated", "is not a readable torch file ("),
    ("a directory", "is a directory, not a file"), ("a tensor", "is not an swfp checkpoint: it holds a Tensor")])
def test_a_bad_checkpoint_file_gives_one_line_before_any_work(kind, expected, pretrained, tmp_path, in_tmp, monkeypatch):
    assert kind in BROKEN_TORCH
    path = broken_torch_file(tmp_path / "bad.pt", kind, valid=pretrained)
    message = checkpoint_error(tiny(checkpoint=str(path)), monkeypatch)
    assert message.startswith(f"--checkpoint {path} {expected}"), message


def test_another_scripts_checkpoint_is_refused(tmp_path, in_tmp, monkeypatch):
    path = tmp_path / "df.pt"
    torch.save({"script": "decision_flow", "step": 20, "args": {"hidden_dim": 64}}, path)
    assert checkpoint_error(tiny(checkpoint=str(path)), monkeypatch) == (
        f"--checkpoint {path} is not an swfp checkpoint: it was saved by decision_flow.py")
    torch.save({"policy": {}, "step": 20, "args": {}}, path)  # no script entry (an older file) and not swfp's entries
    assert checkpoint_error(tiny(checkpoint=str(path)), monkeypatch) == (
        f"--checkpoint {path} is not an swfp checkpoint: it has no phase, flow, blocks, critic, target_critic "
        "(it is an unrelated torch file)")


def test_the_end_of_phase1_fine_tunes_at_any_phase1_budget_with_either_method(pretrained, small_bandit, in_tmp,
                                                                             monkeypatch):
    """Pretrain once, fine-tune from it: another --pretrain-steps / --critic-warmup-steps and either method are fine;
    phase 1 is skipped and phase 2 runs its full --total-timesteps, evaluated against the pretrained policy."""
    monkeypatch.setattr(swfp, "bc_flow_loss", lambda *a, **k: pytest.fail("phase 1 ran again"))
    envs = record_envs(swfp, monkeypatch)
    for naive in (False, True):
        envs.clear()
        metrics = swfp.main(tiny(env_id=str(small_bandit), checkpoint=str(pretrained), pretrain_steps=100_000,
                                 critic_warmup_steps=0, total_timesteps=6, eval_freq=6, eval_episodes=2,
                                 naive_finetune=naive))
        assert len(envs[-1].rewards) == 6  # the online env: 6 env steps
        assert "eval/pretrained_episodic_return" in metrics and np.isfinite(metrics["eval/episodic_return"])


def test_a_checkpoint_of_other_networks_is_refused_listing_each(pretrained, in_tmp, monkeypatch):
    message = checkpoint_error(tiny(checkpoint=str(pretrained), blocks=2, block_hidden_dim=16), monkeypatch)
    assert message == (f"--checkpoint {pretrained} holds other networks: --blocks 2 (checkpoint: 4), "
                       "--block-hidden-dim 16 (checkpoint: 32); pass the checkpoint's values")


def test_an_online_checkpoint_of_the_other_method_is_refused(online, in_tmp, monkeypatch):
    message = checkpoint_error(tiny(checkpoint=str(online), total_timesteps=20, naive_finetune=True), monkeypatch)
    assert message == (f"--checkpoint {online} holds other networks: --naive-finetune True (checkpoint: False); pass "
                       "the checkpoint's values")


def test_an_online_checkpoint_past_the_budget_is_refused(online, in_tmp, monkeypatch):
    assert checkpoint_error(tiny(checkpoint=str(online), total_timesteps=5), monkeypatch) == (
        f"--checkpoint {online} is at env step 10 of online fine-tuning, past --total-timesteps 5; pass a larger "
        "--total-timesteps")


def test_an_online_checkpoint_at_the_budget_is_evaluated_only(online, small_bandit, in_tmp, capsys, monkeypatch):
    monkeypatch.setattr(swfp, "flow_block_losses", lambda *a, **k: pytest.fail("fine-tuned past the budget"))
    capsys.readouterr()
    metrics = swfp.main(tiny(env_id=str(small_bandit), checkpoint=str(online), total_timesteps=10, eval_episodes=2))
    assert np.isfinite(metrics["eval/episodic_return"])
    assert "eval/pretrained_episodic_return" not in metrics  # the checkpoint's policy is a fine-tuned one
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert notices == [f"notice: --checkpoint {online} is at env step 10, the --total-timesteps budget: nothing to "
                       "fine-tune, evaluating it only"]


def test_an_online_checkpoint_below_the_budget_runs_the_remaining_env_steps(online, small_bandit, in_tmp, monkeypatch):
    envs = record_envs(swfp, monkeypatch)
    metrics = swfp.main(tiny(env_id=str(small_bandit), checkpoint=str(online), total_timesteps=14, eval_freq=14,
                             eval_episodes=2, save_model=True))
    assert len(envs[-1].rewards) == 4  # env steps 11..14
    assert "eval/pretrained_episodic_return" not in metrics
    state = torch.load(next(in_tmp.glob("runs/*/swfp.pt")))
    assert (state["phase"], state["step"], state["script"]) == ("online", 14, "swfp")


def test_a_checkpoint_of_another_datasets_sizes_is_refused_in_one_line(pretrained, random_start_dataset, in_tmp):
    message = checkpoint_error(tiny(env_id=str(random_start_dataset), checkpoint=str(pretrained)))
    assert message.startswith(f"--checkpoint {pretrained}: its networks do not load into this dataset's (observation "
                              "dim 3, action dim 1; RuntimeError: Error(s) in loading state_dict for VectorField")
