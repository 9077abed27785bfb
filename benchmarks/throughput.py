"""Training throughput (updates/s) of the flowrl scripts, measured on the real training loop.

Each configuration runs the script itself for a few thousand updates on the embedded dataset and
reads the `charts/SPS` scalars it logs (updates per second between two log steps, so dataset
loading, start-up and evaluation are excluded). The first logged interval is dropped as warm-up
(it includes torch.compile when `--compile` is on).

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
}
SIZE_FLAGS = ("--hidden-dim", "--num-layers")


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
        cmd = [sys.executable, str(ROOT / f"{script}.py"), *SCRIPTS[script], SIZE_FLAGS[0], hidden, SIZE_FLAGS[1], layers,
               "--total-steps", str(steps), "--log-freq", str(log_freq), "--eval-freq", str(10 * steps),
               "--eval-episodes", "1", "--cuda" if cuda else "--no-cuda", *extra]
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
