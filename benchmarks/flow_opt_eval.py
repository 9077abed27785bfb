"""Evaluation harness of flow_opt.py: a checkpoint's evaluation table with the baselines, repeated timings, CPU-time
columns and the offline feasibility certificate (flow_opt.py itself reports the Flow-Opt pipeline only).

For each robot count it runs flow_opt.evaluate on the held-out scenarios of the checkpoint's seed, then on the same
scenarios, in the same process:
  * the centralized optimizer from scratch (the data generator), from the perturbed straight line flow_opt.evaluate
    drew for it, same tolerance, iteration cap, stopping rule and deadlock kick;
  * the SF from the same flow samples with the zero initialisation (no learned init);
  * the SF from perturbed straight lines (no flow model, no learned init);
and, with --certify-restarts > 0, the optimizer from the detour starts and that many random starts on the scenarios
no method solved (not timed), so `solvable` counts instances with a known certified solution. With --repeats k,
every timing is the median over k evaluations (the results are identical across repeats).

  OMP_NUM_THREADS=1 python benchmarks/flow_opt_eval.py --checkpoint runs/<run>/flow_opt.pt --robots 8 --scenarios 100
writes --out/evaluation.csv, evaluation.md and trajectories.png (default --out: /tmp/flow_opt_eval).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flow_opt as fo  # noqa: E402


def smoothness_ratio(out: dict, parts: dict, base: dict, opt: "fo.TrajectorySolver", args: "fo.Args") -> float:
    """Mean smoothness of a method's returned trajectories over the optimizer's, where both are certified."""
    _, ok, smooth = fo.best_sample(out, parts, args)
    both = ok & (base["certified"] <= args.tol)
    return (smooth[both] / opt.smoothness(base["c"])[both]).mean().item() if both.any() else math.nan


@torch.no_grad()
def evaluate_full(model, init_net, norm: dict, n: int, args: "fo.Args", world: "fo.World", device: torch.device,
                  seed: int, certify_restarts: int = 0, certify_iters: int = 3000) -> tuple:
    """flow_opt.evaluate's row plus, on the same scenarios: the centralized optimizer from scratch (from the start
    flow_opt.evaluate drew for it), the two ablations, CPU-time columns and the `solvable` share."""
    row, parts = fo.evaluate(model, init_net, norm, n, args, world, device, seed)
    scen, rep, S, sf, gen, clock = parts["scen"], parts["rep"], parts["S"], parts["sf"], parts["gen"], parts["clock"]
    opt = fo.optimizer_for(n, args.num_obstacles, world, args, device)
    t_opt, c_opt = fo.timed(device), time.process_time()  # the centralized optimizer from scratch (the data generator)
    base = fo.optimize_from_scratch(opt, scen, args, parts["opt_start"], args.opt_max_iters, args.check_every)
    t3, c3 = fo.timed(device), time.process_time()  # the same flow samples, zero initialisation
    zero = sf.solve_to_tolerance(rep, parts["c_gen"], **parts["to_tol"])
    t4 = fo.timed(device)  # the optimizer's perturbed straight lines through the same SF
    line = sf.solve_to_tolerance(rep, fo.perturbed_guess(rep, args.order, args.perturb_std, gen), **parts["to_tol"])
    t5 = fo.timed(device)
    fo.certified(base, scen, world, args)
    for out in (zero, line):
        fo.certified(out, rep, world, args)
    success = fo.best_sample(parts["flt"], parts, args)[1]
    zero_ok, line_ok = fo.best_sample(zero, parts, args)[1], fo.best_sample(line, parts, args)[1]
    base_ok = base["certified"] <= args.tol
    solvable = success | base_ok | zero_ok | line_ok  # a certified solution is known
    if certify_restarts > 0 and not solvable.all():  # offline, not timed
        rest = {k: v[~solvable] for k, v in scen.items()}
        solvable[~solvable] = fo.optimize_multistart(opt, rest, args, gen, certify_iters, certify_restarts)[0]
    t_flow, t_base = row["t_flowopt_s"], t3 - t_opt
    cpu_flow, cpu_opt = clock["end"][1] - clock["flow"][1], c3 - c_opt
    median_opt = fo.ready(base, 1, t_opt, args).median().item()
    on = lambda ok: ok[solvable].float().mean().item() if solvable.any() else math.nan  # noqa: E731
    row.update({
        "smoothness_ratio_vs_opt": smoothness_ratio(parts["flt"], parts, base, opt, args),
        "opt_success": base_ok.float().mean().item(), "opt_iters": base["iters"], "t_opt_s": t_base,
        "time_ratio_opt_over_flowopt": t_base / max(t_flow, 1e-9), "t_median_opt_s": median_opt,
        "median_time_ratio": median_opt / max(row["t_median_flowopt_s"], 1e-9),
        "sf_zero_init_success": zero_ok.float().mean().item(), "sf_zero_init_iters": zero["iters"],
        "sf_zero_init_smoothness_ratio_vs_opt": smoothness_ratio(zero, parts, base, opt, args),
        "t_sf_zero_init_s": t4 - t3 + row["t_sample_s"],
        "t_median_sf_zero_init_s": fo.ready(zero, S, t3, args).median().item() + row["t_sample_s"],
        "line_sf_success": line_ok.float().mean().item(), "line_sf_iters": line["iters"],
        "line_sf_smoothness_ratio_vs_opt": smoothness_ratio(line, parts, base, opt, args), "t_line_sf_s": t5 - t4,
        "t_median_line_sf_s": fo.ready(line, S, t4, args).median().item(),
        "cpu_flowopt_s": cpu_flow, "cpu_opt_s": cpu_opt, "cpu_time_ratio": cpu_opt / max(cpu_flow, 1e-9),
        "solvable": solvable.float().mean().item(), "success_on_solvable": on(success),
        "opt_success_on_solvable": on(base_ok),
    })
    chosen = fo.best_sample(parts["flt"], parts, args)[0]
    example = {"scen": {k: v[0].cpu() for k, v in scen.items()}, "flowopt": chosen(parts["flt"]["c"])[0].cpu(),
               "opt": base["c"][0].cpu()}
    return row, example


def repeated(model, init_net, norm, n, args, world, device, seed, repeats: int, **certificate) -> tuple:
    """evaluate_full `repeats` times (the certificate only the first time); every timing is the median."""
    row, example = evaluate_full(model, init_net, norm, n, args, world, device, seed, **certificate)
    again = [evaluate_full(model, init_net, norm, n, args, world, device, seed)[0] for _ in range(repeats - 1)]
    for k in row:
        if k.startswith(("t_", "cpu_")) or ("ratio" in k and "smoothness" not in k):
            row[k] = float(np.median([row[k]] + [r[k] for r in again]))
    return row, example


def row_text(row: dict) -> str:
    """A result row for the log: 'key value, ...', floats to 4 significant digits."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def write_rows(path: Path, rows: list) -> None:
    """The rows as a CSV (csv.DictWriter, the first row's keys as header); the folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def plot_trajectories(examples: dict, basis: torch.Tensor, world: "fo.World", path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(examples)
    fig, axes = plt.subplots(2, len(keys), figsize=(3.2 * len(keys), 6.4), squeeze=False)
    for j, n in enumerate(keys):
        ex = examples[n]
        for i, (name, c) in enumerate((("Flow-Opt", ex["flowopt"]), ("centralized optimizer", ex["opt"]))):
            ax = axes[i, j]
            pos = torch.einsum("nav,kv->nka", c, basis).numpy()
            for obs in ex["scen"]["obstacles"].numpy():
                ax.add_patch(plt.Circle(obs[:2], obs[2], color="0.6"))
            for k in range(pos.shape[0]):
                line, = ax.plot(pos[k, :, 0], pos[k, :, 1], lw=1)
                ax.plot(*pos[k, 0], "o", ms=3, color=line.get_color())
                ax.plot(*pos[k, -1], "x", ms=4, color=line.get_color())
            ax.set_xlim(-world.workspace, world.workspace)
            ax.set_ylim(-world.workspace, world.workspace)
            ax.set_aspect("equal")
            ax.set_title(f"{name}, N={n}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--robots", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--scenarios", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1, help="evaluations per N; each timing is their median")
    parser.add_argument("--certify-restarts", type=int, default=0, help="random optimizer starts of the certificate")
    parser.add_argument("--certify-iters", type=int, default=3000, help="iteration cap of the certificate")
    parser.add_argument("--scenario-seed", type=int, default=None,
                        help="seed of the held-out scenarios (default: flow_opt.EVAL_SEED + the checkpoint's --seed)")
    parser.add_argument("--out", default="/tmp/flow_opt_eval")
    cli = parser.parse_args()
    if cli.repeats < 1 or cli.certify_restarts < 0 or cli.certify_iters < 1 or cli.scenarios < 1:
        parser.error("--repeats, --certify-iters and --scenarios must be >= 1, --certify-restarts >= 0")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    saved = torch.load(cli.checkpoint, map_location=device)["args"]
    known = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fo.Args.__dataclass_fields__}
    args = replace(fo.Args(**known),
                   eval_scenarios=cli.scenarios, eval_robots=tuple(cli.robots), checkpoint=cli.checkpoint, cuda=False)
    try:
        fo.check_args(args)
        state = fo.load_checkpoint(cli.checkpoint, args, device)
    except fo.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    model, init_net = fo.build_networks(args, device)
    model.load_state_dict(state["model"])
    init_net.load_state_dict(state["init_net"])
    model.eval()
    init_net.eval()
    world, rows, examples = fo.World.from_args(args), [], {}
    for n in cli.robots:
        t0 = time.perf_counter()
        seed = fo.EVAL_SEED + args.seed if cli.scenario_seed is None else cli.scenario_seed
        row, examples[n] = repeated(model, init_net, state["norm"], n, args, world, device, seed,
                                    cli.repeats, certify_restarts=cli.certify_restarts, certify_iters=cli.certify_iters)
        rows.append(row)
        print(f"N={n} ({time.perf_counter() - t0:.0f}s): " + row_text(row), flush=True)
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluation.csv", "w") as f:
        f.write(",".join(rows[0]) + "\n" + "\n".join(",".join(str(v) for v in row.values()) for row in rows) + "\n")
    (out / "evaluation.md").write_text(markdown_table(rows) + "\n")
    P = fo.bernstein_basis(args.order, args.num_times, args.horizon)[0].float()
    plot_trajectories(examples, P, world, out / "trajectories.png")


if __name__ == "__main__":
    main()
