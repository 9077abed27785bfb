"""Training throughput (updates/s) of the flowrl scripts, measured on the real training loop.

Each configuration runs the script itself for a few thousand updates on the embedded dataset and
reads the `charts/SPS` scalars it logs (updates per second between two log steps, so dataset
loading, start-up and evaluation are excluded). The first logged interval is dropped as warm-up
(it includes torch.compile when `--compile` is on).

What one "step" is, per script (all at the given hidden-dim x num-layers, default batch and flow steps):
  fql, qam, gfp, decision_flow   one offline gradient update on flowrl/reacher/mixed-v0 (the documented
                                 Reacher hyper-parameters; qam with H = 1 as in docs/qam.md)
  streaming_flow                 one imitation gradient update on flowrl/pointmaze/demos-v0 (--num-layers is
                                 its --num-blocks of FiLM residual blocks)
  fpmd (online)                  one env step + one update on Hopper-v5, 1 env, --learning-starts 1 so updates
                                 start at once (the policy's action sampling and the env step are included)
  swfp (online)                  one env step + one critic and one JKO-block update (phase 2) on
                                 flowrl/reacher/mixed-v0; phase 1 (BC pretraining, critic warm-up) is cut to one
                                 step each and is not measured (it logs charts/pretrain_SPS, not charts/SPS)
flow_opt is not covered: its charts/SPS is the flow-matching stage of a trajectory-optimisation pipeline (a DiT
over Bernstein coefficients, no env, no RL update) that first has to generate its training data with the
optimiser and has no --eval-freq / --eval-episodes / --num-layers, so its rate is not comparable with the others.

Usage:
  python benchmarks/throughput.py                            # every script, quick + paper sizes, CPU
  python benchmarks/throughput.py --scripts fql --sizes 256x3 512x4 --threads 2
  python benchmarks/throughput.py --scripts fql --extra=--compile --cuda
Writes docs/results/throughput_<device>.csv and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# script -> command-line arguments that select an offline/online training run without evaluation noise
SCRIPTS = {
    "fql": ["--env-id", "flowrl/reacher/mixed-v0", "--alpha", "0.3"],
    "qam": ["--env-id", "flowrl/reacher/mixed-v0", "--inv-temp", "1", "--horizon-length", "1"],
    "gfp": ["--env-id", "flowrl/reacher/mixed-v0", "--alpha", "0.3"],
    "decision_flow": ["--env-id", "flowrl/reacher/mixed-v0", "--variant", "dir"],
    "streaming_flow": ["--env-id", "flowrl/pointmaze/demos-v0"],
    "fpmd": ["--env-id", "Hopper-v5", "--num-envs", "1", "--learning-starts", "1"],
    "swfp": ["--env-id", "flowrl/reacher/mixed-v0", "--pretrain-steps", "1", "--critic-warmup-steps", "1"],
}
SIZE_FLAGS = ("--hidden-dim", "--num-layers")
# scripts that name a common flag differently: script -> {common flag: the script's flag}
FLAG_NAMES = {
    "fpmd": {"--total-steps": "--total-timesteps"},  # env steps (one update each here)
    "swfp": {"--total-steps": "--total-timesteps"},  # online env steps of phase 2
    "streaming_flow": {"--num-layers": "--num-blocks"},
}


def flag(script: str, name: str) -> str:
    return FLAG_NAMES.get(script, {}).get(name, name)


def read_sps(run_root: Path) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = [p for p in run_root.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("charts/SPS")]


def measure(script: str, size: str, steps: int, threads: int, cuda: bool, extra: list) -> float:
    hidden, layers = size.split("x")
    log_freq = steps // 4
    with tempfile.TemporaryDirectory() as tmp:
        common = [SIZE_FLAGS[0], hidden, SIZE_FLAGS[1], layers, "--total-steps", str(steps), "--log-freq", str(log_freq),
                  "--eval-freq", str(10 * steps), "--eval-episodes", "1"]
        cmd = [sys.executable, str(ROOT / f"{script}.py"), *SCRIPTS[script],
               *[flag(script, a) if a.startswith("--") else a for a in common], "--cuda" if cuda else "--no-cuda", *extra]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        subprocess.run(cmd, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        sps = read_sps(Path(tmp) / "runs")
    return float(sorted(sps[1:])[len(sps[1:]) // 2])  # median of the intervals after warm-up


def device_name(cuda: bool) -> str:
    if cuda:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripts", nargs="*", default=list(SCRIPTS))
    parser.add_argument("--sizes", nargs="*", default=["256x3", "512x4"], help="hidden_dim x num_layers")
    parser.add_argument("--steps", type=int, default=2000, help="updates per measurement (4 log intervals)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="extra flags passed to every script (e.g. --compile)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    unknown = [s for s in args.scripts if s not in SCRIPTS]
    if unknown:
        print(f"error: no throughput configuration for {unknown}; known: {list(SCRIPTS)}", file=sys.stderr)
        return 2
    device = device_name(args.cuda)
    rows = []
    for script in args.scripts:
        for size in args.sizes:
            t0 = time.time()
            ups = measure(script, size, args.steps, args.threads, args.cuda, args.extra)
            rows.append(dict(script=script, size=size, updates_per_s=round(ups, 1), device=device, threads=args.threads,
                             extra=" ".join(args.extra)))
            print(f"{script:16s} {size:6s} {ups:8.1f} updates/s  ({time.time() - t0:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.cuda else "cpu"
    path = args.out / f"throughput_{tag}{'_' + '_'.join(e.strip('-') for e in args.extra) if args.extra else ''}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n| script | size | updates/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['script']} | {r['size']} | {r['updates_per_s']} |")
    print(f"\ndevice: {device}; written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
