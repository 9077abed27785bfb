"""How Flow-Opt's stages scale with the number of robots N and the batch size (flow_opt.py).

Times one pass of each stage on random scenarios with networks of the configured size (the weights do not change
the cost of a stage, so untrained networks are used): flow sampling (--flow-steps Euler steps of the DiT), the
init network, one safety-filter iteration and one centralized-optimizer iteration (same solver, same cost per
iteration). Reports wall-clock and process CPU time (the latter is meaningful on a shared machine); single thread.

  OMP_NUM_THREADS=1 python benchmarks/flow_opt_scaling.py --robots 4 8 16 32 --batches 1 8 32 128
writes docs/studies/flow_opt_scaling.csv and docs/studies/flow_opt_scaling.png.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flow_opt as fo  # noqa: E402


def clock(fn, repeats: int) -> tuple:
    fn()  # warm-up
    w, c = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - w) / repeats, (time.process_time() - c) / repeats


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--robots", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "studies" / "flow_opt_scaling"))
    cli = parser.parse_args()
    torch.set_num_threads(1)
    args = fo.Args(cuda=False)
    world = fo.World.from_args(args)
    model = fo.FlowDiT(args.order + 1, args.hidden_dim, args.depth, args.heads, args.workspace).eval()
    init_net = fo.InitNet(args.order + 1, args.hidden_dim, args.heads, args.workspace).eval()
    rows = []
    for n in cli.robots:
        solver = fo.TrajectorySolver(n, args.num_obstacles, world, args)
        for b in cli.batches:
            g = torch.Generator().manual_seed(0)
            scen = fo.sample_scenarios(b, n, args.num_obstacles, world, args.layouts, g, torch.device("cpu"))
            residual = fo.residual_input(solver, scen, args.order, 1.0)  # the DiT's constraint-residual input
            x = fo.sample_flow(model, scen, args.flow_steps, g, residual)
            c = fo.perturbed_guess(scen, args.order, args.perturb_std, g)
            b_eq = fo.boundary_values(scen["starts"], scen["goals"])
            q_s = solver.project(c, scen["obstacles"])[0]
            c_gen = fo.from_tokens(x, scen, args.order, 1.0)

            def one_iteration():
                c_new = solver.c_step(c + q_s, b_eq)
                solver.project(c_new, scen["obstacles"])

            row = {"robots": n, "batch": b}
            for name, fn in (("sample", lambda: fo.sample_flow(model, scen, args.flow_steps, g, residual)),
                             ("init", lambda: fo.init_from_net(init_net, solver, scen, x, c_gen, 1.0, 1.0)), ("solver_iteration", one_iteration)):
                row[f"{name}_wall_s"], row[f"{name}_cpu_s"] = clock(fn, cli.repeats)
            rows.append(row)
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    out = Path(cli.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, name in zip(axes, ("sample", "init", "solver_iteration")):
        for n in cli.robots:
            sel = [r for r in rows if r["robots"] == n]
            ax.loglog([r["batch"] for r in sel], [1e3 * r[f"{name}_cpu_s"] for r in sel], "o-", label=f"N={n}")
        ax.set_xlabel("batch (trajectories)")
        ax.set_ylabel("CPU ms")
        ax.set_title(name.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
