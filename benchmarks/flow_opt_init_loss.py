"""What the learned initialisation buys, per init loss: flow_opt.py --init-loss swarmgen vs iterations vs zero init.

For each training seed's checkpoint (its flow model) and data cache (data.pt next to it), two fresh init networks
start from the same weights and are trained on the same batches and flow samples (the same generator seed), one
per --init-loss, with the checkpoint's settings; then they are frozen and evaluated with flow_opt.evaluate on fresh
held-out scenarios (seed --scenario-seed + the training seed; flow_opt.py's own evaluation uses 20000 + seed), so
every init sees the same scenarios and the same flow samples. The zero init is an untrained init network (its
output layer is zero: c_0 = eqproj(c_gen), lambda_0 = 0); the checkpoint's own init network is reported too.
Per (seed, init): certified success, SF iterations to tolerance per scenario (median, mean; a scenario the SF did
not solve counts as --sf-max-iters), SF wall/CPU time, and the paired per-scenario iteration difference to the zero
init and to swarmgen.

  OMP_NUM_THREADS=1 python benchmarks/flow_opt_init_loss.py --checkpoints s1/flow_opt.pt s2/flow_opt.pt s3/flow_opt.pt
writes --out (CSV, one row per seed and init; default /tmp/flow_opt_init_loss.csv).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import flow_opt as fo  # noqa: E402
from benchmarks.flow_opt_eval import row_text, write_rows  # noqa: E402


def load(path: str, device: torch.device) -> tuple:
    """(args, model, its init network, norm, data) of a checkpoint and the data cache next to it."""
    state = torch.load(path, map_location=device)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["args"].items()
             if k in fo.Args.__dataclass_fields__}
    args = replace(fo.Args(**saved), cuda=False, checkpoint=path)
    model, init_net = fo.build_networks(args, device)
    model.load_state_dict(state["model"])
    init_net.load_state_dict(state["init_net"])
    data = torch.load(Path(path).parent / "data.pt", map_location=device)["data"]
    return args, model.eval(), init_net.eval(), state["norm"], data


def iterations(out: dict, k: int, cap: int) -> torch.Tensor:
    """Per scenario: the first SF iteration at which one of its k samples was within tolerance (cap: never)."""
    at = torch.where(out["solved_at"] >= 0, out["solved_at"], cap).view(-1, k)
    return at.amin(1).float()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", nargs="+", required=True, help="flow_opt.pt of each training seed")
    parser.add_argument("--robots", type=int, nargs="+", default=[8])
    parser.add_argument("--scenarios", type=int, default=100)
    parser.add_argument("--scenario-seed", type=int, default=30_000, help="held-out scenarios: this + training seed")
    parser.add_argument("--init-seed", type=int, default=0, help="the fresh init networks' weights: this + seed")
    parser.add_argument("--out", default="/tmp/flow_opt_init_loss.csv")
    cli = parser.parse_args()
    torch.set_num_threads(1)
    device, rows = torch.device("cpu"), []
    for path in cli.checkpoints:
        args, model, own, norm, data = load(path, device)
        world = fo.World.from_args(args)
        solvers = {n: fo.TrajectorySolver(n, args.num_obstacles, world, args) for n in args.train_robots}
        nets, train_cpu, final = {}, {}, {}
        torch.manual_seed(cli.init_seed + args.seed)
        nets["zero"] = fo.InitNet(args.order + 1, args.hidden_dim, args.heads, args.workspace).eval()
        for loss in ("swarmgen", "iterations"):
            torch.manual_seed(cli.init_seed + args.seed)  # the same initial weights for both losses
            net = fo.InitNet(args.order + 1, args.hidden_dim, args.heads, args.workspace)
            gen = torch.Generator().manual_seed(args.seed + 1_000)  # the same batches and flow samples
            c0 = time.process_time()
            keep = lambda step, losses, bad: final.update({loss: {k: v.item() for k, v in losses.items()}})  # noqa
            fo.train_init_net(net, model, data, solvers, norm, replace(args, init_loss=loss), gen, keep)
            train_cpu[loss], nets[loss] = time.process_time() - c0, net.eval()
            print(f"seed {args.seed}: {loss} init network trained in {train_cpu[loss]:.0f}s CPU; last losses "
                  f"{final[loss]}", flush=True)
        nets["checkpoint"] = own
        for n in cli.robots:
            ev = replace(args, eval_scenarios=cli.scenarios)
            its = {}
            for name, net in nets.items():
                row, parts = fo.evaluate(model, net, norm, n, ev, world, device, seed=cli.scenario_seed + args.seed)
                clock = parts["clock"]
                its[name] = iterations(parts["flt"], parts["S"], args.sf_max_iters)
                rows.append({"seed": args.seed, "robots": n, "scenarios": cli.scenarios, "init": name,
                             "success": row["success"], "success_at_instants": row["success_at_instants"],
                             "median_iters": its[name].median().item(), "mean_iters": its[name].mean().item(),
                             "unsolved": int((parts["flt"]["solved_at"].view(-1, parts["S"]) < 0).all(1).sum()),
                             "smoothness": row["smoothness"], "t_sf_s": row["t_sf_s"],
                             "cpu_sf_s": clock["end"][1] - clock["sf"][1],
                             "t_median_flowopt_s": row["t_median_flowopt_s"],
                             "train_cpu_s": train_cpu.get(name, float("nan"))})
            for row in rows[-len(nets):]:
                for ref in ("zero", "swarmgen"):
                    d = its[row["init"]] - its[ref]
                    row[f"iters_minus_{ref}_mean"] = d.mean().item()
                    row[f"iters_minus_{ref}_se"] = (d.std() / np.sqrt(d.numel())).item()
                print(row_text(row), flush=True)
    write_rows(Path(cli.out), rows)


if __name__ == "__main__":
    main()
