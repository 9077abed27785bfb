"""`--compile` trains like eager (issue 21, item 2): for every training script, 20 updates eager and 20 with
`compile=True` from the same seed must give the same losses (every `losses/*` value of the dict `main` returns,
the losses of the 20th update, which depend on all 20) within float32 tolerance.

Inductor's C++ codegen makes one script's inductor case cost 35-55 s of CPU here (fql, qam, gfp), too much for CI
times 7 scripts, so the CI test patches
`torch.compile` (here, not in the scripts) to use backend="aot_eager": dynamo capture and AOT autograd
functionalization (graph breaks, in-place optimizer state, RNG ops in the graph) without code generation. The same
comparison with the real inductor backend is `slow` (`python -m pytest -m slow tests/test_compile.py`), and the
CUDA-graph one (`--cudagraphs` on CUDA) runs only where a GPU is; both use inductor's `fallback_random` so that the
compiled update draws the same random numbers as eager.

Each script has one entry in CASES (tiny Args overrides: 20 updates, a log and the only evaluation at step 20,
one evaluation episode) and one in GRAPHS (the most graphs its update may compile to: a graph break in the script's
own code fails the CI test). WALK in an entry is replaced by the path of a small multi-step Minari dataset made here
(episodes of 10 steps, so the TD target bootstraps through the target networks and their Polyak update).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import import_script

WALK = "<the multi-step test dataset>"
TINY = dict(cuda=False, hidden_dim=32, num_layers=1, batch_size=32, total_steps=20, eval_freq=20, log_freq=20,
            eval_episodes=1, eval_envs=1)
CASES = {
    "fql": dict(TINY, env_id=WALK, eval_bc_flow=False, flow_steps=3),
    "qam": dict(TINY, env_id=WALK, eval_bc_flow=False, flow_steps=3, num_critics=2, horizon_length=2, inv_temp=1.0),
    "gfp": dict(TINY, env_id=WALK, eval_flow=False, flow_steps=3),
    # DF-dir: its endpoint Q gradients (torch.autograd.grad) sit inside the update
    "decision_flow": dict(TINY, env_id=WALK, eval_bc_flow=False, flow_steps=2),
    # online: 1 env, 10 random warm-up steps, then one update per env step; policy and alpha updated at every one
    # (the `% freq` branches are Python bools: one set of graphs per combination met)
    "fpmd": dict(cuda=False, env_id="Pendulum-v1", num_envs=1, learning_starts=10, total_timesteps=29, batch_size=32,
                 hidden_dim=16, num_layers=1, num_particles=4, flow_steps=2, policy_freq=1, alpha_freq=1,
                 eval_freq=29, eval_episodes=1, log_freq=29),
    # the crossing toy (no env to evaluate); 5 lr warm-up steps, so that the scheduled lr changes at every update
    "streaming_flow": dict(cuda=False, env_id="toy/crossing", total_steps=20, batch_size=32, hidden_dim=16,
                           num_blocks=1, time_emb_dim=8, lr_warmup_steps=5, eval_freq=20, log_freq=20, toy_samples=4),
    # offline-to-online: 6 BC steps, 4 critic warm-up steps, 10 online updates (each logged, so that the with-stats
    # online update is the only one compiled) on the WALK data and its one-step env
    "swfp": dict(cuda=False, env_id=WALK, pretrain_steps=6, critic_warmup_steps=4, total_timesteps=10, batch_size=32,
                 hidden_dim=16, num_layers=1, blocks=2, block_hidden_dim=8, eval_freq=10, log_freq=1, eval_episodes=1,
                 eval_envs=1),
    # trajectory optimisation, no env: data from the optimizer (4 robots), then 20 flow-matching steps and 2 init-network
    # steps through 1 unrolled safety-filter iteration (its trace is what costs), both compiled
    "flow_opt": dict(cuda=False, train_robots=(4,), num_obstacles=2, num_scenarios=32, data_iters=60, total_steps=20,
                     batch_size=16, hidden_dim=16, depth=1, heads=2, init_steps=2, init_batch_size=4, sf_iters=1,
                     log_freq=20, eval_robots=(4,), eval_scenarios=2, num_samples=1, sf_max_iters=10, opt_max_iters=10,
                     flow_steps=2),
}
RTOL, ATOL = 1e-4, 1e-5  # float32; eager and compiled differ only by the rounding of fused or reordered ops
# graphs dynamo compiles for a script's update: torch breaks it at optimizer.zero_grad, loss.backward and around
# optimizer.step, so the losses, the step and the Polyak update are 3 graphs (qam: 4, its gradient clip sits between
# backward and step); a break in a script's own code (e.g. torch.autograd.grad in qam's adjoint: 11) adds more
GRAPHS = {"fql": 3, "qam": 4, "gfp": 3,
          # measured (aot_eager, these cases): decision_flow also breaks at the torch.autograd.grad of its endpoint Q
          # gradients; fpmd has 3 backward() and 4 optimizer steps (critic twice, policy, alpha); swfp compiles three
          # update steps (BC, critic warm-up, online) around its eager JKO block losses (--entropy-coef > 0: a double
          # backward, which AOT autograd refuses)
          "decision_flow": 9, "swfp": 11, "fpmd": 8, "streaming_flow": 3,
          # flow_opt: 3 for the flow-matching step, 3 for the init step (a second Adam: its step recompiles once)
          "flow_opt": 6}


@pytest.fixture(scope="session")
def walk_dataset(minari_root):
    """40 episodes of 10 steps with random observations and actions; the env it recovers (the one-step bandit of
    toy_envs) makes each evaluation episode one step long."""
    import minari
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(0)
    steps = 10
    buffers = [EpisodeBuffer(id=i, seed=i, observations=rng.normal(size=(steps + 1, 2)).astype(np.float32),
                             actions=rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
                             rewards=rng.uniform(0, 1, steps).astype(np.float32),
                             terminations=np.arange(steps) == steps - 1 if i % 2 else np.zeros(steps, bool),
                             truncations=np.zeros(steps, bool) if i % 2 else np.arange(steps) == steps - 1)
               for i in range(40)]
    spec = gym.envs.registration.EnvSpec(id="TwoModeBandit-v0", entry_point="toy_envs:TwoModeBanditEnv",
                                         max_episode_steps=1)
    minari.create_dataset_from_buffers(
        dataset_id="test/compile-walk-v0", buffer=buffers, env=spec, eval_env=spec, ref_min_score=0.0,
        ref_max_score=1.0, author="flowrl tests", author_email="tests@flowrl", algorithm_name="random walk",
        code_permalink="tests/test_compile.py")
    return minari_root / "test/compile-walk-v0"


def train(script: str, dataset, **overrides) -> dict:
    module = import_script(script)
    case = {k: str(dataset) if v == WALK else v for k, v in {**CASES[script], **overrides}.items()}
    return module.main(module.Args(**case))


def assert_same_losses(eager: dict, compiled: dict, rtol: float = RTOL, atol: float = ATOL) -> None:
    keys = sorted(k for k in eager if k.startswith("losses/"))
    assert keys and keys == sorted(k for k in compiled if k.startswith("losses/")), (eager.keys(), compiled.keys())
    assert all(math.isfinite(eager[k]) for k in keys), eager
    differ = {k: (eager[k], compiled[k]) for k in keys if not math.isclose(compiled[k], eager[k], rel_tol=rtol, abs_tol=atol)}
    assert not differ, f"compiled vs eager losses differ: {differ}"


def compile_with(backend, monkeypatch) -> list:
    """Patch torch.compile so that the scripts' call compiles with `backend` (mode dropped: it selects inductor's
    options); returns the list of the graphs it compiled, to check that compilation happened."""
    graphs, original = [], torch.compile

    def counting(gm, example_inputs):
        graphs.append(gm)
        return backend(gm, example_inputs) if callable(backend) else torch._dynamo.lookup_backend(backend)(gm, example_inputs)

    def patched(fn=None, **kwargs):
        kwargs.pop("mode", None)
        return original(fn, **{**kwargs, "backend": counting})

    monkeypatch.setattr(torch, "compile", patched)
    return graphs


@pytest.mark.parametrize("script", list(CASES))
def test_compile_gives_the_losses_of_eager(script, walk_dataset, in_tmp, monkeypatch):
    eager = train(script, walk_dataset)
    graphs = compile_with("aot_eager", monkeypatch)
    torch._dynamo.reset()
    compiled = train(script, walk_dataset, compile=True)
    assert graphs, f"{script} --compile compiled nothing"
    assert len(graphs) <= GRAPHS[script], f"{script}: the update compiled to {len(graphs)} graphs (graph breaks in it)"
    assert_same_losses(eager, compiled)


@pytest.mark.slow
@pytest.mark.parametrize("script", list(CASES))
def test_inductor_compile_gives_the_losses_of_eager(script, walk_dataset, in_tmp):
    eager = train(script, walk_dataset)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):  # eager's random numbers in compiled code
        compiled = train(script, walk_dataset, compile=True)
    assert_same_losses(eager, compiled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("script", list(CASES))
def test_cudagraphs_give_the_losses_of_eager_on_cuda(script, walk_dataset, in_tmp):
    eager = train(script, walk_dataset, cuda=True)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        captured = train(script, walk_dataset, cuda=True, cudagraphs=True)
    # TF32 matmuls (set_float32_matmul_precision("high") on CUDA) in both runs; inductor's fusions round differently
    assert_same_losses(eager, captured, rtol=1e-3, atol=1e-4)
