"""--compile and --cudagraphs (issue 21): the compiled update gives the losses of the eager one.

One parametrized test over the training scripts. CASES holds, per script, tiny Args overrides for 20 updates, losses
logged at the last one and almost no evaluation. Each case runs `main` eager and with compile=True; every `losses/*`
value of the returned metrics (the final update's, so it depends on all 20) must agree within rtol 1e-4 / atol 1e-5.

- CI: torch.compile is patched here (never in the scripts) to backend="aot_eager": dynamo capture and AOT autograd
  functionalization (graph breaks, in-place optimizer state, RNG) without inductor's C++ codegen (which costs
  40-85 s of CPU per script even at these sizes, 2-core machine).
- `-m slow`: the same with the real inductor backend. Both use aten's RNG in the compiled graph (inductor's
  fallback_random) so that eager and compiled draw the same random numbers.
- CUDA graphs (--cudagraphs, torch.compile mode="reduce-overhead") only where a CUDA device exists; skipped otherwise.
  Its tolerance is wider: the scripts use TF32 matmuls on CUDA (float32_matmul_precision "high"), and inductor's
  kernels round differently from eager's. Not run yet: no GPU in the session that wrote it.
- The compiled run fails when dynamo hits its recompile limit (a value that changes every update compiled in as a
  constant would otherwise fall back to eager silently). A script's data loader is called once for both runs.
"""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import import_script

# 20 updates each; evaluation only at the end, the smallest the script allows
CASES = {
    # online: 1 env, 10 random warm-up steps, then one update per env step for 20 steps; policy and alpha updated at
    # every one, so that one compiled graph set holds the whole update
    "fpmd": dict(env_id="Pendulum-v1", num_envs=1, learning_starts=10, total_timesteps=29, batch_size=32,
                 hidden_dim=16, num_layers=1, num_particles=4, flow_steps=2, policy_freq=1, alpha_freq=1, eval_freq=29,
                 eval_episodes=1, log_freq=29),
    # offline, the embedded reacher dataset; DF-dir (its endpoint Q gradients: torch.autograd.grad in the update)
    "decision_flow": dict(total_steps=20, batch_size=32, hidden_dim=16, num_layers=1, flow_steps=2, eval_freq=20,
                          log_freq=20, eval_episodes=1, eval_envs=1, eval_bc_flow=False),
    # imitation, the crossing toy (no env to evaluate); 5 warm-up steps so that the scheduled lr changes at every update
    "streaming_flow": dict(env_id="toy/crossing", total_steps=20, batch_size=32, hidden_dim=16, num_blocks=1,
                           time_emb_dim=8, lr_warmup_steps=5, eval_freq=20, log_freq=20, toy_samples=4),
    # offline-to-online on the embedded reacher dataset: 6 BC steps, 4 critic warm-up steps, 10 online updates (each
    # logged, so that the with-stats update is the only one compiled)
    "swfp": dict(pretrain_steps=6, critic_warmup_steps=4, total_timesteps=10, batch_size=32, hidden_dim=16,
                 num_layers=1, blocks=2, block_hidden_dim=8, eval_freq=10, log_freq=1, eval_episodes=1, eval_envs=1),
}


def loss_values(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("losses/")}


def run(script: str, **flags) -> dict:
    module = import_script(script)
    torch._dynamo.reset()  # no graph cached from another case or mode
    return loss_values(module.main(module.Args(**CASES[script], **flags)))


def compiled_matches_eager(script: str, monkeypatch, backend: str, device: str = "cpu", rel: float = 1e-4,
                           abs_: float = 1e-5) -> None:
    cuda = device == "cuda"
    module = import_script(script)
    for loader in ("load_offline_data", "load_task"):  # the same data for both runs: read it once (seconds of h5py)
        if hasattr(module, loader):
            monkeypatch.setattr(module, loader, functools.cache(getattr(module, loader)))
    eager = run(script, cuda=cuda)
    assert eager, f"{script}.main returned no losses/* values"
    real_compile, calls = torch.compile, []

    def compile_with_backend(fn, **kwargs):
        calls.append(kwargs)
        if kwargs.get("mode") is None:  # a mode picks its own backend (reduce-overhead: inductor + CUDA graphs)
            kwargs["backend"] = backend
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_with_backend)
    # aten's RNG stream in compiled graphs, as eager; a value that changes every update (a float lr under a scheduler,
    # a step count) must not be a graph constant: recompiled at every update, the 20 updates pass torch's recompile
    # limit (8), which then fails instead of silently running eager from there on
    with torch._inductor.config.patch(fallback_random=True), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled = run(script, cuda=cuda, **({"cudagraphs": True} if cuda else {"compile": True}))
    assert calls, f"{script} with --compile never called torch.compile"
    assert compiled.keys() == eager.keys()
    for key, value in eager.items():
        assert compiled[key] == pytest.approx(value, rel=rel, abs=abs_), (key, compiled[key], value)


@pytest.mark.parametrize("script", CASES)
def test_compile_gives_the_eager_losses(script, monkeypatch, in_tmp):
    compiled_matches_eager(script, monkeypatch, backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("script", CASES)
def test_compile_with_inductor_gives_the_eager_losses(script, monkeypatch, in_tmp):
    compiled_matches_eager(script, monkeypatch, backend="inductor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("script", CASES)
def test_cudagraphs_gives_the_eager_losses(script, monkeypatch, in_tmp):
    compiled_matches_eager(script, monkeypatch, backend="inductor", device="cuda", rel=1e-2, abs_=1e-3)
