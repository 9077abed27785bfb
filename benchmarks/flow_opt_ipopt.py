"""External centralized baseline for flow_opt.py: IPOPT (through CasADi) on the same problem as the in-repo optimizer.

Same scenarios as `flow_opt.py --evaluate` (seed flow_opt.EVAL_SEED + --seed), same Bernstein parameterisation
(order 10, rest-to-rest boundary conditions as equalities), the same constraints at the same --num-times instants
with the same between-instant margins (flow_opt.sample_margins), the same objective as the in-repo optimizer
(1/2 ||c - c_line||^2 + w_s/2 sum_k ||Pddot c||^2) and the same start (its perturbed straight line, drawn from the
same generator stream). Separations as squared distances, speed and acceleration as squared norms, the workspace as
linear bounds; exact Hessians, MUMPS (bundled with CasADi's wheel). Success is judged by the same continuous-time
certificate (flow_opt.certify, tolerance --tol). One instance at a time (IPOPT is not batched); single thread.

  OMP_NUM_THREADS=1 python benchmarks/flow_opt_ipopt.py --robots 4 8 --scenarios 100 --seed 1
prints one row per N and writes --out (CSV; default /tmp/flow_opt_ipopt.csv): IPOPT's success, median and total
time per instance (wall and process CPU), iterations, and the in-repo optimizer's on the same scenarios.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flow_opt as fo  # noqa: E402
from benchmarks.flow_opt_eval import row_text, write_rows  # noqa: E402

try:
    import casadi as ca
except ImportError:  # optional benchmark dependency
    sys.exit("error: benchmarks/flow_opt_ipopt.py needs CasADi (pip install casadi; its wheel bundles IPOPT)")


def build_nlp(n: int, m: int, args: fo.Args, world: fo.World, max_iter: int):
    """The NLP for n robots and m obstacles, parameterised by (starts, goals, obstacles, c_line); returns the solver
    and the constant bounds of its constraints."""
    P, Pd, Pdd = (x.numpy() for x in fo.bernstein_basis(args.order, args.num_times, args.horizon))
    A = fo.boundary_matrix(*(torch.tensor(x) for x in (P, Pd, Pdd))).numpy()
    nv, margin = args.order + 1, fo.sample_margins(world, args.horizon, args.num_times, args.tol)
    c = ca.SX.sym("c", n * 2 * nv)
    p = ca.SX.sym("p", n * 4 + m * 3 + n * 2 * nv)
    starts, goals = ca.reshape(p[: 2 * n], 2, n).T, ca.reshape(p[2 * n: 4 * n], 2, n).T
    obs = ca.reshape(p[4 * n: 4 * n + 3 * m], 3, m).T if m else None
    c_line = p[4 * n + 3 * m:]
    coef = lambda i, a: c[(i * 2 + a) * nv: (i * 2 + a + 1) * nv]  # noqa: E731  robot i, axis a
    pos = [[ca.mtimes(P, coef(i, a)) for a in range(2)] for i in range(n)]
    vel = [[ca.mtimes(Pd, coef(i, a)) for a in range(2)] for i in range(n)]
    acc = [[ca.mtimes(Pdd, coef(i, a)) for a in range(2)] for i in range(n)]
    cost = 0.5 * ca.sumsqr(c - c_line)
    g, lo, hi = [], [], []

    def add(expr, low, high):
        g.append(expr)
        lo.append(np.full(expr.shape[0], low))
        hi.append(np.full(expr.shape[0], high))

    bound = world.workspace - world.robot_radius - margin["ws"]
    for i in range(n):
        cost += 0.5 * args.opt_smoothness * (ca.sumsqr(acc[i][0]) + ca.sumsqr(acc[i][1]))
        for a in range(2):  # boundary conditions: [start, 0, 0, goal, 0, 0]
            add(ca.mtimes(A, coef(i, a)) - ca.vertcat(starts[i, a], 0, 0, goals[i, a], 0, 0), 0.0, 0.0)
            add(pos[i][a], -bound, bound)
        add(vel[i][0] ** 2 + vel[i][1] ** 2, -ca.inf, world.v_max**2)
        add(acc[i][0] ** 2 + acc[i][1] ** 2, -ca.inf, world.a_max**2)
        for j in range(i + 1, n):
            add((pos[i][0] - pos[j][0]) ** 2 + (pos[i][1] - pos[j][1]) ** 2,
                (2 * world.robot_radius + margin["agent"]) ** 2, ca.inf)
        for k in range(m):  # obstacle radii are parameters: g = d^2 - (r + r_k + margin)^2 >= 0
            reach = world.robot_radius + obs[k, 2] + margin["obs"]
            add((pos[i][0] - obs[k, 0]) ** 2 + (pos[i][1] - obs[k, 1]) ** 2 - reach**2, 0.0, ca.inf)
    # converged: constraint violation <= 1e-3 (m^2 for the squared separations, i.e. < 2 mm; far inside --tol) and
    # scaled KKT error <= 1e-4; the certificate then judges success exactly as for the other methods
    opts = {"ipopt.print_level": 0, "print_time": False, "ipopt.max_iter": max_iter, "ipopt.tol": 1e-4,
            "ipopt.constr_viol_tol": 1e-3, "ipopt.linear_solver": "mumps"}
    solver = ca.nlpsol("flow_opt_ipopt", "ipopt", {"x": c, "p": p, "f": cost, "g": ca.vertcat(*g)}, opts)
    return solver, np.concatenate(lo), np.concatenate(hi)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--robots", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--scenarios", type=int, default=100, help="the evaluation's scenario count (fixes the set)")
    parser.add_argument("--first", type=int, default=0, help="solve only the first this many of them (0: all)")
    parser.add_argument("--seed", type=int, default=1, help="the flow_opt.py --seed whose evaluation scenarios to use")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/flow_opt_ipopt.csv")
    cli = parser.parse_args()
    torch.set_num_threads(1)
    args = fo.Args(seed=cli.seed)
    world, dev = fo.World.from_args(args), torch.device("cpu")
    rows = []
    for n in cli.robots:
        # the scenarios and the optimizer's start exactly as flow_opt.evaluate draws them
        gen = torch.Generator().manual_seed(fo.EVAL_SEED + cli.seed)
        scen = fo.sample_scenarios(cli.scenarios, n, args.num_obstacles, world, args.layouts, gen, dev)
        opt = fo.optimizer_for(n, args.num_obstacles, world, args, dev)
        guess = fo.perturbed_guess(scen, args.order, args.perturb_std, gen)
        k = cli.first or cli.scenarios
        scen, guess = {key: v[:k] for key, v in scen.items()}, guess[:k]
        c0 = opt.equality_projection(guess, fo.boundary_values(scen["starts"], scen["goals"])).double()
        line = fo.straight_line_coefs(scen["starts"], scen["goals"], args.order).double()
        t_build = time.perf_counter()
        solver, lbg, ubg = build_nlp(n, args.num_obstacles, args, world, cli.max_iter)
        t_build = time.perf_counter() - t_build
        wall, cpu, iters, sols = [], [], [], []
        for b in range(k):
            par = np.concatenate([scen["starts"][b].double().numpy().ravel(), scen["goals"][b].double().numpy().ravel(),
                                  scen["obstacles"][b].double().numpy().ravel(), line[b].numpy().ravel()])
            w0, p0 = time.perf_counter(), time.process_time()
            sol = solver(x0=c0[b].numpy().ravel(), p=par, lbg=lbg, ubg=ubg)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - p0)
            iters.append(solver.stats()["iter_count"])
            sols.append(torch.tensor(np.array(sol["x"]).ravel()).view(n, 2, args.order + 1))
        c = torch.stack(sols)
        cert = fo.certify(c, scen, world, args.horizon, args.tol)["violation"]
        ok = cert <= args.tol
        # the in-repo optimizer from the same start on the same scenarios (batched, to tolerance)
        line32 = fo.straight_line_coefs(scen["starts"], scen["goals"], args.order)
        w0, p0 = time.perf_counter(), time.process_time()
        base = opt.solve_to_tolerance(scen, line32, opt.equality_projection(guess, fo.boundary_values(scen["starts"], scen["goals"])),
                                      max_iters=args.opt_max_iters, tol=args.tol, check_every=args.check_every,
                                      **fo.kick_args(args))
        t_opt, cpu_opt = time.perf_counter() - w0, time.process_time() - p0
        base_ok = (base["solved_at"] >= 0) & (fo.certify(base["c"], scen, world, args.horizon, args.tol)["violation"] <= args.tol)
        both = ok & base_ok
        smooth = (opt.smoothness(c.float())[both] / opt.smoothness(base["c"])[both]).mean().item() if both.any() else float("nan")
        row = {"robots": n, "scenarios": k, "seed": cli.seed, "ipopt_success": ok.float().mean().item(),
               "ipopt_median_s": float(np.median(wall)), "ipopt_total_s": float(np.sum(wall)),
               "ipopt_median_cpu_s": float(np.median(cpu)), "ipopt_total_cpu_s": float(np.sum(cpu)),
               "ipopt_median_iters": float(np.median(iters)), "ipopt_build_s": t_build,
               "ipopt_smoothness_ratio_vs_opt": smooth,
               "opt_success": base_ok.float().mean().item(), "opt_batch_s": t_opt, "opt_batch_cpu_s": cpu_opt,
               "opt_median_s": torch.where(base_ok, base["finished_s"] - w0, math.inf).median().item(),
               "ipopt_success_on_opt_solved": ok[base_ok].float().mean().item() if base_ok.any() else math.nan}
        rows.append(row)
        print(row_text(row), flush=True)
    write_rows(Path(cli.out), rows)


if __name__ == "__main__":
    main()
