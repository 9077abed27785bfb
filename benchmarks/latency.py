"""Action latency (ms per action) of every flowrl script's acting policy, as its evaluation loop uses it.

One row per policy type and batch size: batch 1 (one robot) and batch 50 (parallel evaluation envs).
Each script is imported as a module (its training `main` is guarded by `if __name__ == "__main__"`) and
its own network classes and samplers are built at its DEFAULT network size (its `Args` defaults). The
weights are random (torch.manual_seed(0)): latency does not depend on training. Dimensions are those of
the dataset / env each script defaults to: flowrl/reacher/mixed-v0 (obs 10, action 2) for the offline
scripts and swfp, Hopper-v5 (obs 11, action 3) for fpmd, flowrl/pointmaze/demos-v0 (obs 8, action 2,
2 stacked observations) for streaming_flow.

What one call is (what the evaluation loop of the script calls; the noise comes from a torch.Generator
as there). Where the evaluation policy is a closure inside the script's `main` (fql, qam, gfp,
decision_flow, swfp, streaming_flow), the row calls the same module-level network and sampler with
the same arguments as that closure (its body is one line); fpmd's `OneStepActor.act` is called as is.
  fql             one-step policy: clip(mu_omega(s, z)) (the deployed policy, `onestep_policy`), and the
                  BC flow: `fql.sample_bc_flow`, flow_steps Euler steps (`bc_flow_policy`, the paper's
                  multi-step flow, for contrast)
  qam             `policy`: `qam.sample_flow` of the fine field over the whole action chunk (horizon_length
                  actions, executed open-loop), best-of-N by the critic ensemble when best_of_n > 1
  gfp             one-step actor (the deployed policy, `actor_policy`) and the VaBC flow (`flow_policy`,
                  `gfp.sample_flow`), both evaluated by gfp.py
  decision_flow   `flow_policy`: `decision_flow.sample_flow` of u_theta, flow_steps Euler steps
  fpmd            FPMD-R and FPMD-M with one network call (`fpmd.OneStepActor.act`, eval/*_1nfe, as
                  benchmarks/fpmd_latency.py); the best-of-32 x 20 NFE training sampler is timed there
  swfp            `policy`: `swfp.sample_actions`, K Euler steps of the BC flow, each refined by its JKO
                  block (K flow calls + K block calls)
  streaming_flow  SFP (default latent variant) streamed by `streaming_flow.stream_sfp`, and the flow-matching
                  chunk policy (`stream_chunk`), each action passed through `streaming_flow.LatencyMeter.run`
                  (clamp + copy to the host) as in its evaluation (as benchmarks/streaming_flow_latency.py)
flow_opt is not covered: it is not an action policy (a trajectory optimiser whose flow model generates
trajectory coefficients offline, with no environment loop acting step by step).

Timing: numpy observation -> tensor on the device -> policy -> actions back in numpy (what an env loop
pays), under torch.no_grad, time.perf_counter (CUDA synchronised before each call; the copy to the host
synchronises after it). Warm-up calls, then the median over --repeats calls. Columns:
  ms_per_action             (median time of one call, from observation to its last action) / actions per call
                            (1, or qam's chunk of H, or streaming_flow's action_horizon executed actions)
  ms_first_action           median time from the observation to the first action on the host (the whole
                            call, except for SFP, which yields each action as soon as it is integrated)
  network_calls_per_action  network evaluations (NFE) per call / actions per call
Batch 50 times a call for 50 observations at once; ms_per_action is still per call (per env step), not
divided by the batch.

Usage:
  python benchmarks/latency.py                                 # every script, CPU, 1 thread
  python benchmarks/latency.py --scripts fql qam --repeats 500
  python benchmarks/latency.py --cuda                          # CPU, then CUDA when available
Writes docs/results/latency_cpu.csv (and latency_cuda.csv) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the algorithm scripts are top-level files
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import device_name  # noqa: E402

SCRIPTS = ["fql", "qam", "gfp", "decision_flow", "fpmd", "swfp", "streaming_flow"]
REACHER = (10, 2)  # flowrl/reacher/mixed-v0: obs, action dims (the offline scripts' default dataset)
HOPPER = (11, 3)  # Hopper-v5 (fpmd's default env)
POINTMAZE = (8, 2)  # flowrl/pointmaze/demos-v0: achieved_goal 2 + desired_goal 2 + observation 4; action 2
BATCHES = (1, 50)


@dataclass
class Policy:
    name: str
    network: str  # the network(s) called, at the script's default size
    obs_dim: int
    act: Callable  # obs tensor (B, obs_dim) -> actions tensor, or (streaming) -> iterator of (B, act_dim) actions
    network_calls: int  # network evaluations per call
    actions_per_call: int = 1
    streaming: bool = False


def onestep_and_flow(A, obs_dim: int, act_dim: int, device: torch.device, g: torch.Generator, onestep: Callable,
                     onestep_label: str, sample_flow: Callable, flow_label: str) -> list:
    """The two policies of fql and gfp: a one-step policy mu(s, z) (clipped) and a flow sampled with A.flow_steps."""
    net = f"MLP {A.hidden_dim}x{A.num_layers}"

    def noise(obs):
        return torch.randn(obs.shape[0], act_dim, device=device, generator=g)

    return [Policy(onestep_label, net, obs_dim, lambda obs: onestep(obs, noise(obs)).clamp(-1.0, 1.0), 1),
            Policy(f"{flow_label}, {A.flow_steps} Euler steps", net, obs_dim, lambda obs: sample_flow(obs, noise(obs)),
                   A.flow_steps)]


def fql_policies(device: torch.device, g: torch.Generator) -> list:
    fql = importlib.import_module("fql")
    A, (obs_dim, act_dim) = fql.Args, REACHER
    onestep = fql.OneStepPolicy(obs_dim, act_dim, A.hidden_dim, A.num_layers).to(device)
    bc_flow = fql.VectorField(obs_dim, act_dim, A.hidden_dim, A.num_layers).to(device)
    return onestep_and_flow(A, obs_dim, act_dim, device, g, onestep, "one-step policy (deployed)",
                            lambda obs, z: fql.sample_bc_flow(bc_flow, obs, z, A.flow_steps), "BC flow")


def qam_policies(device: torch.device, g: torch.Generator) -> list:
    qam = importlib.import_module("qam")
    A, (obs_dim, act_dim) = qam.resolve_task_settings(qam.Args()), REACHER  # the generic defaults (per-task fields are None)
    H = A.horizon_length
    chunk_dim = act_dim * H if A.action_chunking else act_dim
    if A.fql_alpha > 0 or A.edit_scale > 0:
        raise SystemExit("error: qam's default acting policy changed (QAM-FQL / QAM-EDIT); update benchmarks/latency.py")
    fine = qam.VectorField(obs_dim, chunk_dim, A.hidden_dim, A.num_layers).to(device)
    critic = qam.Critic(obs_dim, chunk_dim, A.hidden_dim, A.num_layers, A.num_critics).to(device) if A.best_of_n > 1 else None
    n = A.best_of_n

    def policy(obs):
        obs_n = obs.repeat_interleave(n, 0) if n > 1 else obs
        z = torch.randn(obs_n.shape[0], chunk_dim, device=device, generator=g)
        actions = qam.sample_flow(fine, obs_n, z, A.flow_steps)
        if n > 1:
            best = critic(obs_n, actions).mean(0).view(-1, n).argmax(1)
            actions = actions.view(-1, n, chunk_dim)[torch.arange(obs.shape[0], device=device), best]
        return actions

    chunk = H if A.action_chunking else 1
    label = f"fine-field flow, {A.flow_steps} Euler steps, chunk of {chunk}" + (f", best-of-{n}" if n > 1 else "")
    return [Policy(label, f"MLP {A.hidden_dim}x{A.num_layers}", obs_dim, policy, A.flow_steps + (1 if n > 1 else 0), chunk)]


def gfp_policies(device: torch.device, g: torch.Generator) -> list:
    gfp = importlib.import_module("gfp")
    A, (obs_dim, act_dim) = gfp.resolve_task_settings(gfp.Args()), REACHER  # the generic defaults (per-task fields are None)
    actor = gfp.OneStepActor(obs_dim, act_dim, A.hidden_dim, A.num_layers).to(device)
    vabc = gfp.VaBCField(obs_dim, act_dim, A.hidden_dim, A.num_layers, A.time_emb_dim).to(device)
    return onestep_and_flow(A, obs_dim, act_dim, device, g, actor, "one-step actor (deployed)",
                            lambda obs, z: gfp.sample_flow(vabc, obs, z, A.flow_steps), "VaBC flow")


def decision_flow_policies(device: torch.device, g: torch.Generator) -> list:
    df = importlib.import_module("decision_flow")
    A, (obs_dim, act_dim) = df.Args, REACHER
    field = df.VectorField(obs_dim, act_dim, A.hidden_dim, A.num_layers).to(device)

    def policy(obs):
        return df.sample_flow(field, obs, torch.randn(obs.shape[0], act_dim, device=device, generator=g), A.flow_steps)

    return [Policy(f"flow policy u_theta, {A.flow_steps} Euler steps (deployed)", f"MLP {A.hidden_dim}x{A.num_layers}",
                   obs_dim, policy, A.flow_steps)]


def fpmd_policies(device: torch.device, g: torch.Generator) -> list:
    fpmd = importlib.import_module("fpmd")
    A, (obs_dim, act_dim) = fpmd.Args, HOPPER
    rows = []
    for variant, num_times, label in (("rf", 1, "FPMD-R"), ("mf", 2, "FPMD-M (MeanFlow)")):
        flow = fpmd.FlowPolicy(obs_dim, act_dim, A.hidden_dim, A.num_layers, num_times).to(device)
        actor = fpmd.OneStepActor(flow, variant, A.init_noise_scale)
        rows.append(Policy(f"{label}, 1 NFE (OneStepActor)", f"Mish MLP {A.hidden_dim}x{A.num_layers}", obs_dim,
                           lambda obs, actor=actor: actor.act(obs, g), 1))
    return rows


def swfp_policies(device: torch.device, g: torch.Generator) -> list:
    swfp = importlib.import_module("swfp")
    A, (obs_dim, act_dim) = swfp.Args, REACHER
    flow = swfp.VectorField(obs_dim, act_dim, A.hidden_dim, A.num_layers).to(device)
    blocks = swfp.FlowBlocks(A.blocks, obs_dim, act_dim, A.block_hidden_dim, A.block_num_layers).to(device)
    refine = None if A.naive_finetune else blocks

    def policy(obs):
        return swfp.sample_actions(flow, refine, obs, torch.randn(obs.shape[0], act_dim, device=device, generator=g), A.blocks)

    net = f"MLP {A.hidden_dim}x{A.num_layers} + {A.blocks} blocks {A.block_hidden_dim}x{A.block_num_layers}"
    return [Policy(f"BC flow + JKO blocks, {A.blocks} Euler steps (deployed)", net, obs_dim, policy, 2 * A.blocks)]


def streaming_flow_policies(device: torch.device, g: torch.Generator) -> list:
    sfp = importlib.import_module("streaming_flow")
    A, (obs_dim, act_dim) = sfp.Args, POINTMAZE
    cond_dim, H, n = A.obs_horizon * obs_dim, A.pred_horizon, A.action_horizon

    def net(x_dim: int) -> torch.nn.Module:
        return sfp.VelocityNet(x_dim, cond_dim, A.hidden_dim, A.num_blocks, A.time_emb_dim, A.time_emb_scale).to(device)

    sfp_net = net(act_dim * (2 if A.variant == "stochastic" else 1))
    chunk_net = net(H * act_dim)
    sigma0 = A.sigma0 if A.sample_start else 0.0

    def stream(obs_cond):  # main's make_stream, policy "sfp"; the episode's previous action starts the flow
        last_action = torch.zeros(obs_cond.shape[0], act_dim, device=device)
        return sfp.stream_sfp(sfp_net, obs_cond, last_action, n, H, A.integration_steps_per_action, A.variant, sigma0, g)

    def chunk(obs_cond):  # main's make_stream, policy "chunk"
        return sfp.stream_chunk(chunk_net, obs_cond, n, H, act_dim, A.flow_steps, g)

    film = f"FiLM MLP {A.hidden_dim}x{A.num_blocks}"
    return [Policy(f"SFP ({A.variant}), streamed, {n} of {H} actions", film, cond_dim, stream,
                   n * A.integration_steps_per_action, n, streaming=True),
            Policy(f"chunk policy, {A.flow_steps} Euler steps, {n} of {H} actions", film, cond_dim, chunk,
                   A.flow_steps, n, streaming=True)]


BUILDERS = {"fql": fql_policies, "qam": qam_policies, "gfp": gfp_policies, "decision_flow": decision_flow_policies,
            "fpmd": fpmd_policies, "swfp": swfp_policies, "streaming_flow": streaming_flow_policies}
assert list(BUILDERS) == SCRIPTS


def one_call(policy: Policy, obs_np: np.ndarray, device: torch.device, meter) -> tuple:
    """Seconds from the numpy observation to the first action and to the call's last action, both on the host."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    obs = torch.as_tensor(obs_np, device=device)
    if not policy.streaming:
        policy.act(obs).cpu().numpy()
        total = time.perf_counter() - t0
        return total, total
    first: Optional[float] = None
    for action in meter.run(policy.act(obs)):  # streaming_flow's evaluation wrapper: clamp + copy to the host
        action.numpy()
        if first is None:
            first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


@torch.no_grad()
def measure(policy: Policy, batch: int, device: torch.device, repeats: int, warmup: int, meter) -> tuple:
    obs_np = np.random.default_rng(0).standard_normal((batch, policy.obs_dim)).astype(np.float32)
    for _ in range(warmup):
        one_call(policy, obs_np, device, meter)
    firsts, totals = zip(*(one_call(policy, obs_np, device, meter) for _ in range(repeats)))
    return 1e3 * float(np.median(totals)), 1e3 * float(np.median(firsts))


def run(scripts: list, device: torch.device, repeats: int, threads: int) -> list:
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as the scripts do on CUDA
    name = device_name(device.type == "cuda")
    meter = importlib.import_module("streaming_flow").LatencyMeter() if "streaming_flow" in scripts else None
    warmup = max(3, min(20, repeats // 10))
    rows = []
    for script in scripts:
        torch.manual_seed(0)
        g = torch.Generator(device=device).manual_seed(1)
        with torch.no_grad():
            policies = BUILDERS[script](device, g)
        for policy in policies:
            for batch in BATCHES:
                total_ms, first_ms = measure(policy, batch, device, repeats, warmup, meter)
                rows.append(dict(script=script, policy=policy.name, batch=batch,
                                 ms_per_action=round(total_ms / policy.actions_per_call, 4),
                                 ms_first_action=round(first_ms, 4),
                                 network_calls_per_action=round(policy.network_calls / policy.actions_per_call, 3),
                                 device=name, threads=threads,
                                 actions_per_call=policy.actions_per_call, network=policy.network))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripts", nargs="*", default=SCRIPTS, help=f"a subset of {SCRIPTS}")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per row (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cuda", action="store_true", help="also time on CUDA when available")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    unknown = [s for s in args.scripts if s not in SCRIPTS]
    if unknown:
        why = " (flow_opt is not an action policy)" if "flow_opt" in unknown else ""
        print(f"error: unknown script(s) {unknown}{why}; known: {SCRIPTS}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if args.cuda:
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        else:
            print("note: --cuda given but CUDA is not available; CPU only", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        t0 = time.time()
        rows = run(args.scripts, device, args.repeats, args.threads)
        path = args.out / f"latency_{device.type}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        threads = f", {args.threads} thread(s)" if device.type == "cpu" else ""
        print(f"\n{rows[0]['device']}{threads}, median of {args.repeats} calls ({time.time() - t0:.0f} s)\n")
        print("| script | policy | network | batch | ms / action | ms to first action | NFE / action |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['script']} | {r['policy']} | {r['network']} | {r['batch']} | {r['ms_per_action']:.3f} | "
                  f"{r['ms_first_action']:.3f} | {r['network_calls_per_action']:g} |")
        print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
