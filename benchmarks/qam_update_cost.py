"""Update cost of qam.py relative to fql.py at the same network size, measured in the same run.

Each configuration runs the script's real training loop (`main`) on the embedded Reacher dataset for
`--steps` gradient steps with losses logged twice; the updates/s of the second half (after warm-up) is
parsed from the plain-text progress line. Configurations are interleaved `--repeats` times (fql, qam,
fql, qam, and back in reverse order: A B B A ...) so that a drift in background CPU load hits all of
them alike; the median is reported.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/qam_update_cost.py --sizes 512x4 256x3 --steps 60 --repeats 2
Writes docs/studies/qam_update_cost.csv (one row per configuration and size).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fql  # noqa: E402
import qam  # noqa: E402

CONFIGS = {
    "fql (2 critics)": (fql, dict(alpha=0.3)),
    "fql (10 critics)": (fql, dict(alpha=0.3, num_critics=10)),
    "qam H=1": (qam, dict(horizon_length=1, inv_temp=1.0)),
    "qam H=5 chunked": (qam, dict(horizon_length=5, action_chunking=True, inv_temp=1.0)),
}


def updates_per_second(module, overrides: dict, hidden: int, layers: int, steps: int, batch: int) -> float:
    half = steps // 2
    args = replace(module.Args(), cuda=torch.cuda.is_available(), env_id="flowrl/reacher/mixed-v0", total_steps=steps,
                   hidden_dim=hidden, num_layers=layers, batch_size=batch, log_freq=half, eval_freq=10**9,
                   eval_episodes=1, eval_bc_flow=False, **overrides)
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(out):
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            module.main(args)
        finally:
            os.chdir(cwd)
    rates = [float(x) for x in re.findall(r"sps=([0-9.e+-]+)", out.getvalue())]
    return rates[-1]  # the second window: after warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512x4", "256x3"], help="hidden width x layers")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "docs" / "studies" / "qam_update_cost.csv"))
    opts = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for size in opts.sizes:
        hidden, layers = (int(v) for v in size.split("x"))
        rates = {name: [] for name in CONFIGS}
        for repeat in range(opts.repeats):
            order = list(CONFIGS.items())
            for name, (module, overrides) in (order if repeat % 2 == 0 else order[::-1]):  # ABBA: cancels load drift
                rates[name].append(updates_per_second(module, overrides, hidden, layers, opts.steps, opts.batch_size))
                print(f"{size} {name}: {rates[name][-1]:.2f} updates/s", flush=True)
        ref = statistics.median(rates["fql (2 critics)"])
        for name, values in rates.items():
            med = statistics.median(values)
            rows.append(dict(size=size, config=name, updates_per_s=round(med, 3), relative_to_fql=round(med / ref, 3),
                             runs=" ".join(f"{v:.2f}" for v in values), device=device, load_avg_1min=round(load, 2)))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    with open(opts.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
