"""Checks of benchmarks/parity_step.py, parity_crosseval.py, parity_swap.py and parity_stream.py that need no official code
(their runs: docs/parity.md)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import parity_step  # noqa: E402

import fql  # noqa: E402


def randomized(modules: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules.values():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return modules


def test_weights_map_to_the_official_layout_and_back_exactly():
    obs_dim, act_dim, hidden, layers = 7, 3, 16, 2
    ours = randomized(parity_step.fql_modules(fql, obs_dim, act_dim, hidden, layers), 1)
    flat = parity_step.ours_as_official(fql, ours)
    # flax layouts: Dense kernels (in, out); the critic ensemble's vmapped parameters with the member axis first
    assert flat["modules_actor_onestep_flow/mlp/Dense_0/kernel"].shape == (obs_dim + act_dim, hidden)
    assert flat["modules_actor_bc_flow/mlp/Dense_0/kernel"].shape == (obs_dim + act_dim + 1, hidden)
    assert flat["modules_critic/value_net/Dense_0/kernel"].shape == (2, obs_dim + act_dim, hidden)
    assert flat["modules_critic/value_net/Dense_2/bias"].shape == (2, 1)
    assert flat["modules_target_critic/value_net/LayerNorm_1/scale"].shape == (2, hidden)
    assert len(flat) == 2 * 2 * (layers + 1) + 2 * (2 * (layers + 1) + 2 * layers)
    other = randomized(parity_step.fql_modules(fql, obs_dim, act_dim, hidden, layers), 2)
    parity_step.official_to_ours({f"init/{k}": v for k, v in flat.items()}, "init/", fql, other, layers)
    for name in ours:
        for (key, a), b in zip(ours[name].state_dict().items(), other[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    flat["modules_critic/value_net/Dense_0/bias"][1, 0] += 1.0  # the copy is not a view of the weights
    assert not np.array_equal(flat["modules_critic/value_net/Dense_0/bias"],
                              parity_step.ours_as_official(fql, ours)["modules_critic/value_net/Dense_0/bias"])


def test_recorded_noise_is_what_fql_update_draws_in_its_order():
    """critic_loss, bc_flow_loss and onestep_losses, as fql.py's update calls them, draw exactly the official update's
    noise: normal next_z, x_0, z and uniform t (a change of fql.py's draws fails here, not silently in the check)."""
    b, obs_dim, act_dim, hidden = 5, 4, 2, 8
    m = randomized(parity_step.fql_modules(fql, obs_dim, act_dim, hidden, 2), 0)
    g = torch.Generator().manual_seed(0)
    batch = {"observations": torch.randn(b, obs_dim, generator=g), "actions": torch.rand(b, act_dim, generator=g) * 2 - 1,
             "rewards": -torch.ones(b), "masks": torch.ones(b), "next_observations": torch.randn(b, obs_dim, generator=g)}
    normal = [np.full((b, act_dim), v, np.float32) for v in (0.1, 0.2, 0.3)]
    uniform = [np.full((b, 1), 0.5, np.float32)]
    with parity_step.recorded_noise(list(normal), list(uniform)):
        fql.critic_loss(m["critic"], m["target_critic"], m["actor_onestep_flow"], batch, 0.99, "mean")
        fql.bc_flow_loss(m["actor_bc_flow"], batch["observations"], batch["actions"])
        fql.onestep_losses(m["actor_onestep_flow"], m["actor_bc_flow"], m["critic"], batch["observations"], act_dim, 10, False)
    with pytest.raises(AssertionError, match="drew less noise"):
        with parity_step.recorded_noise(list(normal), list(uniform)):
            fql.critic_loss(m["critic"], m["target_critic"], m["actor_onestep_flow"], batch, 0.99, "mean")
    with pytest.raises(AssertionError, match="drew more normal noise"):
        with parity_step.recorded_noise([], []):
            torch.randn(b, act_dim)
    with pytest.raises(AssertionError, match="of shape"):
        with parity_step.recorded_noise([np.zeros((3, 3), np.float32)], []):
            torch.randn(b, act_dim)
    assert torch.randn(2).shape == (2,)  # restored after the block, also after an error


def test_summary_names_the_worst_tensor_of_each_order():
    result = {"losses": {"critic_loss": {"worst_rel": 1e-6, "at_step": 3}},
              "grad": {"a": 1e-7, "b": 2e-7},
              "after1": {"modules_critic/x": 1e-6, "modules_target_critic/x": 0.0},
              "after_last": {"modules_critic/x": 3e-3, "modules_target_critic/x": 5e-2}}
    lines = "\n".join(parity_step.summary({"fql.py before 2026-12-03": result, "agents/fql.py and fql.py": result}, 20))
    assert "after Adam's step (as fql.py before 2026-12-03)" in lines and "before Adam's step (as agents/fql.py and fql.py)" in lines
    assert "2.00e-07 (b; 2 tensors)" in lines and "5.00e-02 (modules_target_critic/x; 1 tensors)" in lines


def test_data_comparison_counts_what_differs():
    ours = {k: np.zeros((4, 3), np.float32) for k in parity_step.DATA_KEYS}
    official = {k: v.copy() for k, v in ours.items()}
    official["actions"][1, 2] = 6e-8
    official["masks"] = np.zeros((5, 3), np.float32)
    result = parity_step.compare_data(ours, official)
    assert result["observations"] == {"shape": [4, 3], "max_abs": 0.0, "differ": 0}
    assert result["actions"]["differ"] == 1 and abs(result["actions"]["max_abs"] - 6e-8) < 1e-12
    lines = "\n".join(parity_step.data_lines(result))
    assert "observations      (4, 3): identical" in lines and "1 of 12 entries differ, largest |difference| 6.00e-08" in lines
    assert "masks             SHAPES DIFFER: ours [4, 3], official [5, 3]" in lines


def test_official_drivers_are_valid_python():
    import parity_crosseval
    import parity_stream
    import parity_swap

    compile(parity_step.OFFICIAL_DRIVER, "parity_step_driver", "exec")
    compile(parity_step.DATA_DRIVER, "parity_step_data_driver", "exec")
    compile(parity_crosseval.OFFICIAL_DRIVER, "parity_crosseval_driver", "exec")
    compile(parity_swap.OFFICIAL_DRIVER, "parity_swap_driver", "exec")
    compile(parity_stream.STREAM_DRIVER, "parity_stream_driver", "exec")


def test_swap_moves_weights_and_adam_state_to_the_official_layout_and_back_exactly(tmp_path):
    """An fql.py checkpoint after a few Adam steps -> the official state (params, mu, nu, count) -> a checkpoint that
    fql.py loads: the same weights and Adam state, bit for bit, and the moments under the weights' official names."""
    import parity_swap

    obs_dim, act_dim, hidden, layers = 6, 2, 8, 2
    modules = randomized(parity_step.fql_modules(fql, obs_dim, act_dim, hidden, layers), 3)
    params = parity_swap.trained(modules)
    optimizer = torch.optim.Adam(params, lr=1e-2, foreach=True)
    for k in range(3):
        optimizer.zero_grad()
        sum(((p - k) ** 2).sum() for p in params).backward()
        optimizer.step()
    args = fql.Args(env_id="x", hidden_dim=hidden, num_layers=layers, cuda=False)
    fql.save_checkpoint(tmp_path / "a.pt", modules, optimizer, 3, args, obs_dim, act_dim)
    flat, h, n = parity_swap.checkpoint_to_official(fql, tmp_path / "a.pt", obs_dim, act_dim)
    assert (h, n, int(flat["count"]), int(flat["step"])) == (hidden, layers, 3, 4)  # TrainState counts from 1
    key = "modules_critic/value_net/Dense_0/kernel"
    assert flat[f"mu/{key}"].shape == flat[f"params/{key}"].shape == (2, obs_dim + act_dim, hidden)
    assert np.array_equal(flat[f"nu/{key}"], optimizer.state[modules["critic"].net[0].weight]["exp_avg_sq"].numpy())
    assert not flat[f"mu/modules_target_critic/value_net/Dense_0/kernel"].any()  # no gradient reaches it
    parity_swap.official_to_checkpoint(fql, flat, "x", hidden, layers, obs_dim, act_dim, tmp_path / "b.pt")
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt"))
    assert b["step"] == 3
    for name in ("actor_bc_flow", "actor_onestep_flow", "critic", "target_critic"):
        for key, tensor in a[name].items():
            assert torch.equal(tensor, b[name][key]), f"{name}.{key}"
    for i, state in a["optimizer"]["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], b["optimizer"]["state"][i][key]), f"{i}.{key}"
    other = parity_swap.trained(randomized(parity_step.fql_modules(fql, obs_dim, act_dim, hidden, layers), 4))
    loaded = torch.optim.Adam(other, lr=1e-2, foreach=True)
    loaded.load_state_dict(b["optimizer"])  # fql.py's load_checkpoint does this


def test_stream_serves_fql_main_the_recorded_batch_and_noise_in_its_order(tmp_path, monkeypatch):
    """fql.py's own main, one update on recorded streams (parity_stream.py): its logged losses are those of fql.py's loss
    functions on the recorded batch, with next_z, x_0, t and z where the official update draws them; a stream that is
    too short is one CheckError; torch and the buffer are restored after the block."""
    import parity_stream
    import parity_swap

    env_id, hidden, layers, b = "flowrl/reacher/mixed-v0", 8, 2, 16
    data = fql.load_offline_data(env_id, "")
    n, obs_dim = len(data.transitions["rewards"]), data.transitions["observations"].shape[1]
    act_dim = data.transitions["actions"].shape[1]
    g = np.random.default_rng(0)
    streams = {"idx": g.integers(0, n, (1, b)), "t": g.random((1, b, 1), np.float32),
               **{name: g.standard_normal((1, b, act_dim), np.float32) for name in ("next_z", "x_0", "z")}}
    for name, v in streams.items():
        np.save(tmp_path / f"{name}.npy", v)
    modules = randomized(parity_step.fql_modules(fql, obs_dim, act_dim, hidden, layers), 5)
    modules["target_critic"].load_state_dict(modules["critic"].state_dict())
    args = fql.Args(env_id=env_id, hidden_dim=hidden, num_layers=layers, total_steps=1, batch_size=b, log_freq=1, eval_freq=1,
                    eval_episodes=1, eval_envs=1, eval_bc_flow=False, cuda=False, checkpoint=str(tmp_path / "init.pt"))
    fql.save_checkpoint(tmp_path / "init.pt", modules, torch.optim.Adam(parity_swap.trained(modules)), 0, args, obs_dim, act_dim)
    monkeypatch.chdir(tmp_path)
    served = parity_stream.Streams(tmp_path)
    with served.served(fql):
        result = fql.main(args)
    assert served.k == 1 and not served.normal and not served.uniform
    batch = {k: torch.as_tensor(v[streams["idx"][0]], dtype=torch.float32) for k, v in data.transitions.items()}
    with parity_step.recorded_noise([streams[k][0] for k in ("next_z", "x_0", "z")], [streams["t"][0]]):
        critic, _ = fql.critic_loss(modules["critic"], modules["target_critic"], modules["actor_onestep_flow"], batch,
                                    args.gamma or 0.99, "mean")
        bc_flow = fql.bc_flow_loss(modules["actor_bc_flow"], batch["observations"], batch["actions"])
        distill, q = fql.onestep_losses(modules["actor_onestep_flow"], modules["actor_bc_flow"], modules["critic"],
                                        batch["observations"], act_dim, 10, False)
    for name, value in (("critic_loss", critic), ("bc_flow_loss", bc_flow), ("distill_loss", distill), ("q_loss", q)):
        assert result[f"losses/{name}"] == pytest.approx(value.item(), rel=1e-6), name
    assert fql.ReplayBuffer.sample is not None and torch.randn(3).shape == (3,)  # restored
    # --own-draws batches noise: fql.py's own draws, so the same update as fql.py's main alone, bit for bit
    torch.manual_seed(args.seed)
    alone = fql.main(args)
    with parity_stream.Streams(tmp_path, serve=()).served(fql) as own:
        mixed = fql.main(args)
    assert own.k == 1 and all(alone[f"losses/{k}"] == mixed[f"losses/{k}"] for k in ("critic_loss", "bc_flow_loss", "q_loss"))
    assert alone["losses/critic_loss"] != result["losses/critic_loss"]
    buffer = fql.ReplayBuffer(data.transitions, n, torch.device("cpu"))
    assert buffer.sample(4)["rewards"].shape == (4,)
    with pytest.raises(parity_stream.CheckError, match="no recorded batch 2"):
        with parity_stream.Streams(tmp_path).served(fql) as again:
            buffer.sample(b)
            again.normal.clear(), again.uniform.clear()  # in place: the lists recorded_noise serves from
            buffer.sample(b)
    with pytest.raises(parity_stream.CheckError, match="drew more normal noise"):
        with parity_stream.Streams(tmp_path).served(fql) as again:
            buffer.sample(b)
            again.normal.clear()
            torch.randn(b, act_dim)


def test_stream_prints_both_runs_losses_side_by_side(tmp_path):
    import parity_stream

    path = tmp_path / "train.csv"
    keys = list(parity_stream.OFFICIAL_KEYS.values())
    path.write_text(",".join(keys + ["step"]) + "\n" + ",".join(["2.0"] * len(keys) + ["1000.0"]) + "\n")
    official = parity_stream.official_log(path)
    assert official == {1000: {k: 2.0 for k in parity_stream.OFFICIAL_KEYS}}
    ours = {1000: {k: 2.002 for k in parity_stream.OFFICIAL_KEYS}, 2000: {k: 1.0 for k in parity_stream.OFFICIAL_KEYS}}
    lines = parity_stream.side_by_side(ours, official)
    assert len(lines) == 2 and lines[1].startswith("  1000") and lines[1].count("1.00e-03") == 5


@pytest.mark.parametrize("script,argv,message", [
    ("parity_step.py", ["--official-dir", "/nonexistent"], "has no agents/fql.py"),
    ("parity_step.py", ["--official-dir", str(ROOT), "--steps", "0"], "must be >= 1"),
    ("parity_crosseval.py", ["--official-dir", str(ROOT)], "give --official-params, --ours-checkpoint or both"),
    ("parity_crosseval.py", ["--official-dir", str(ROOT), "--ours-checkpoint", "/nonexistent.pt"], "is not a file"),
    ("parity_swap.py", ["--official-dir", str(ROOT)], "give one of --official-params or --ours-checkpoint"),
    ("parity_swap.py", ["--official-dir", str(ROOT), "--ours-checkpoint", "/nonexistent.pt", "--out-official-dir", "/tmp/x"],
     "is not a file"),
    ("parity_swap.py", ["--official-dir", str(ROOT), "--official-params", __file__], "needs --out-checkpoint"),
    ("parity_stream.py", ["--official-dir", "/nonexistent", "--seed", "0"], "has no agents/fql.py"),
    ("parity_stream.py", ["--official-dir", str(ROOT), "--seed", "0", "--total-steps", "0"], "must be >= 1"),
    ("parity_stream.py", ["--official-dir", str(ROOT), "--seed", "0", "--official-train-csv", "/nonexistent.csv"],
     "is not a file"),
])
def test_bad_input_is_one_clear_line(script, argv, message):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
