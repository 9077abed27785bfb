"""Latency of the streaming flow policy vs the flow-matching chunk policy (same network, same horizon).

For one robot (batch 1) and a batch of 50 (the evaluation's parallel envs), both policies are built with
the same VelocityNet (width, depth, FiLM conditioning); only the input/output size differs (one action,
or (a, z), for SFP; the flattened 16-action chunk for the chunk policy). Each replan draws a fresh
observation history, then we time (a) the time to the first action, i.e. the first `next()` of the
policy's action generator including the copy to the host, and (b) the time of each later action of the
`--action-horizon` executed ones. The weights are random: latency does not depend on training.

Usage:
  python benchmarks/streaming_flow_latency.py                       # CPU (and CUDA when available)
  python benchmarks/streaming_flow_latency.py --replans 200 --csv docs/studies/streaming_flow_latency.csv
  python benchmarks/streaming_flow_latency.py --clock cpu    # CPU time of the thread: for a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import streaming_flow as sfp  # noqa: E402


def time_policy(make_stream, obs_dim: int, batch: int, replans: int, device: torch.device, clock) -> tuple:
    firsts, rests = [], []
    for i in range(replans + 5):
        obs_cond = torch.randn(batch, obs_dim, device=device)
        last_action = torch.zeros(batch, 2, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        gen = make_stream(obs_cond, last_action)
        j = 0
        while True:
            t0 = clock()
            try:
                action = next(gen).cpu()  # the action reaches the robot
            except StopIteration:
                break
            dt = clock() - t0
            if i >= 5:  # warm-up replans are not counted
                (firsts if j == 0 else rests).append(dt)
            j += 1
        del action
    return 1e3 * float(np.median(firsts)), 1e3 * float(np.median(rests))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-dim", type=int, default=sfp.Args.hidden_dim)
    parser.add_argument("--num-blocks", type=int, default=sfp.Args.num_blocks)
    parser.add_argument("--pred-horizon", type=int, default=sfp.Args.pred_horizon)
    parser.add_argument("--action-horizon", type=int, default=sfp.Args.action_horizon)
    parser.add_argument("--obs-horizon", type=int, default=sfp.Args.obs_horizon)
    parser.add_argument("--flow-steps", type=int, default=sfp.Args.flow_steps, help="chunk policy Euler steps")
    parser.add_argument("--replans", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 50])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: this thread's CPU time (robust on a loaded machine, CPU only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    obs_dim, act_dim, H = args.obs_horizon * 8, 2, args.pred_horizon  # PointMaze: 8-D flattened observation
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({args.threads} thread)"
        def net(x_dim: int) -> torch.nn.Module:
            return sfp.VelocityNet(x_dim, obs_dim, args.hidden_dim, args.num_blocks, sfp.Args.time_emb_dim,
                                   sfp.Args.time_emb_scale).to(device).eval()

        policies = {
            "SFP deterministic": (net(act_dim), lambda n: lambda o, a: sfp.stream_sfp(
                n, o, a, args.action_horizon, H, 1, "deterministic", 0.1)),
            "SFP stochastic": (net(2 * act_dim), lambda n: lambda o, a: sfp.stream_sfp(
                n, o, a, args.action_horizon, H, 1, "stochastic", 0.1)),
            f"chunk ({args.flow_steps} steps)": (net(H * act_dim), lambda n: lambda o, a: sfp.stream_chunk(
                n, o, args.action_horizon, H, act_dim, args.flow_steps)),
        }
        for batch in args.batches:
            results = {}
            for label, (module, factory) in policies.items():
                clock = time.thread_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
                results[label] = time_policy(factory(module), obs_dim, batch, args.replans, device, clock)
            chunk_first = results[f"chunk ({args.flow_steps} steps)"][0]
            for label, (first, rest) in results.items():
                rows.append(dict(device=name, clock=args.clock if device.type == "cpu" else "wall", batch=batch, policy=label, time_to_first_action_ms=round(first, 4),
                                 per_action_ms=round(rest, 4), first_action_speedup_vs_chunk=round(chunk_first / first, 2),
                                 hidden_dim=args.hidden_dim, num_blocks=args.num_blocks, pred_horizon=H,
                                 action_horizon=args.action_horizon))
    print("| device | clock | batch | policy | time to first action (ms) | per later action (ms) | first-action speed-up vs chunk |")
    print("|-|-|-|-|-|-|-|")
    for r in rows:
        print(f"| {r['device']} | {r['clock']} | {r['batch']} | {r['policy']} | {r['time_to_first_action_ms']:.3f} | "
              f"{r['per_action_ms']:.3f} | {r['first_action_speedup_vs_chunk']:.1f}x |")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        new = not args.csv.exists()
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
