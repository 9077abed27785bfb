"""Same seed => same losses: every training script's losses at each of its first 200 updates, recorded at a git
revision and in the working tree, compared bit for bit.

Issue 22 (a reader's shape for every script) moves code around without changing what it computes. This is the check:
each case below runs a script for 200 updates on CPU from a fixed seed with `--log-freq 1`, so that TensorBoard holds
the losses of every update, and its `losses/*` and `eval/*` scalars are compared, value for value, with the same case
run from another revision (a temporary `git worktree`, removed afterwards) or with a saved trace. Timings (`charts/*`,
any name with "time", "sps" or "latency" in it, flow_opt's `t_*_s`) are not compared. TensorBoard stores scalars as
float32, which is what the losses are, so equality of the stored values is equality of the losses.

A rewrite that reorders floating-point operations on purpose changes the losses by rounding; such cases are named in
the change's notes, and `--rtol` shows how far they moved (the default 0 demands identity).

Usage:
  python benchmarks/loss_trace.py --ref main                  # record at `main` and in the working tree, compare
  python benchmarks/loss_trace.py --save /tmp/before.json     # record the working tree only
  python benchmarks/loss_trace.py --against /tmp/before.json  # record the working tree, compare with a saved trace
  python benchmarks/loss_trace.py --ref HEAD~3 --only fql qam_online
  python benchmarks/loss_trace.py --list                      # the cases and their flags
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("fql", "qam", "gfp", "decision_flow", "fpmd", "swfp", "streaming_flow", "flow_opt")

# 200 updates each, small networks, CPU, seed 1, every update logged; the embedded datasets (datasets/), gymnasium's
# Pendulum and flow_opt's own generated data, so that no case needs a download
OFFLINE = ["--env-id", "flowrl/reacher/mixed-v0", "--hidden-dim", "32", "--num-layers", "2", "--batch-size", "64",
           "--eval-episodes", "2", "--eval-envs", "2", "--no-cuda", "--log-freq", "1"]
OFFLINE_200 = [*OFFLINE, "--total-steps", "200", "--eval-freq", "100"]
ONLINE_100 = [*OFFLINE, "--total-steps", "100", "--online-steps", "100", "--eval-freq", "100"]
FPMD = ["--env-id", "Pendulum-v1", "--num-envs", "1", "--learning-starts", "50", "--total-timesteps", "250",
        "--batch-size", "64", "--hidden-dim", "32", "--num-layers", "2", "--num-particles", "4", "--flow-steps", "4",
        "--eval-freq", "125", "--eval-episodes", "1", "--no-cuda", "--log-freq", "1"]
SWFP = ["--env-id", "flowrl/reacher/mixed-v0", "--pretrain-steps", "100", "--critic-warmup-steps", "50",
        "--total-timesteps", "50", "--batch-size", "64", "--hidden-dim", "32", "--num-layers", "2", "--blocks", "2",
        "--block-hidden-dim", "16", "--eval-freq", "25", "--eval-episodes", "2", "--eval-envs", "2", "--no-cuda",
        "--log-freq", "1"]
SFP = ["--env-id", "flowrl/pointmaze/demos-v0", "--total-steps", "200", "--batch-size", "64", "--hidden-dim", "32",
       "--num-blocks", "1", "--lr-warmup-steps", "20", "--eval-freq", "100", "--eval-episodes", "2", "--eval-envs", "2",
       "--no-cuda", "--log-freq", "1"]
FLOW_OPT = ["--train-robots", "4", "--num-obstacles", "2", "--num-scenarios", "64", "--data-iters", "100",
            "--total-steps", "180", "--batch-size", "16", "--hidden-dim", "16", "--depth", "1", "--heads", "2",
            "--init-steps", "20", "--init-batch-size", "4", "--sf-iters", "3", "--eval-robots", "4",
            "--eval-scenarios", "4", "--sf-max-iters", "50", "--no-cuda", "--log-freq", "1", "--no-save-model"]
CASES = {
    "fql": ("fql", [*OFFLINE_200, "--alpha", "0.3"]),
    "fql_online": ("fql", [*ONLINE_100, "--alpha", "0.3"]),
    "qam": ("qam", [*OFFLINE_200, "--inv-temp", "1", "--horizon-length", "2", "--num-critics", "2",
                    "--flow-steps", "4"]),
    "qam_online": ("qam", [*ONLINE_100, "--inv-temp", "1", "--horizon-length", "2", "--num-critics", "2",
                           "--flow-steps", "4", "--start-training", "20"]),
    "qam_fql": ("qam", [*OFFLINE_200, "--variant", "qam-fql", "--inv-temp", "1", "--horizon-length", "1",
                        "--num-critics", "2", "--flow-steps", "4"]),
    "qam_edit": ("qam", [*OFFLINE_200, "--variant", "qam-edit", "--inv-temp", "1", "--horizon-length", "1",
                         "--num-critics", "2", "--flow-steps", "4"]),
    "gfp": ("gfp", [*OFFLINE_200, "--alpha", "0.3", "--eta", "1e-3"]),
    "gfp_online": ("gfp", [*ONLINE_100, "--alpha", "0.3", "--eta", "1e-3"]),
    "decision_flow_dir": ("decision_flow", [*OFFLINE_200, "--variant", "dir", "--flow-steps", "4"]),
    "decision_flow_div": ("decision_flow", [*OFFLINE_200, "--variant", "div", "--flow-steps", "4"]),
    "fpmd_rf": ("fpmd", [*FPMD, "--variant", "rf"]),
    "fpmd_mf": ("fpmd", [*FPMD, "--variant", "mf"]),
    "swfp_flow": ("swfp", [*SWFP, "--block-space", "flow"]),
    "swfp_action": ("swfp", [*SWFP, "--block-space", "action"]),
    "swfp_naive": ("swfp", [*SWFP, "--naive-finetune"]),
    "swfp_naive_trust_region": ("swfp", [*SWFP, "--naive-finetune", "--naive-trust-region"]),
    "streaming_flow_sfp": ("streaming_flow", [*SFP, "--policy", "sfp"]),
    "streaming_flow_chunk": ("streaming_flow", [*SFP, "--policy", "chunk"]),
    "flow_opt": ("flow_opt", FLOW_OPT),
}
SEED = 1


def compared(tag: str) -> bool:
    """The scalars a rewrite must leave unchanged: losses and evaluation results, not timings."""
    last = tag.rsplit("/", 1)[-1]
    timing = (any(w in tag.lower() for w in ("time", "sps", "latency")) or last.endswith("_ms")
              or (last.startswith("t_") and last.endswith("_s")))  # flow_opt's t_<stage>_s
    return tag.startswith(("losses/", "eval/")) and not timing


def read_scalars(run_dir: Path) -> dict:
    """{tag: [[step, value], ...]} of the compared scalars in a run's TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in sorted(acc.Tags()["scalars"])
            if compared(tag)}


def record_case(name: str, tree: Path, work: Path) -> dict:
    """Run one case with the scripts of `tree` in a fresh folder; its compared scalars."""
    script, argv = CASES[name]
    cwd = work / name
    cwd.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    cmd = [sys.executable, str(tree / f"{script}.py"), *argv, "--seed", str(SEED)]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    (cwd / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{name}: {script}.py exited with {done.returncode}: {tail[0]} (log: {cwd / 'log.txt'})")
    runs = [p for p in (cwd / "runs").iterdir() if p.is_dir()]
    if len(runs) != 1:
        raise RuntimeError(f"{name}: expected one run directory under {cwd / 'runs'}, found {len(runs)}")
    return read_scalars(runs[0])


def record(tree: Path, names: list, jobs: int) -> dict:
    """{case: scalars} for the scripts of `tree`."""
    with tempfile.TemporaryDirectory(prefix="loss_trace_") as tmp, ThreadPoolExecutor(jobs) as pool:
        futures = {name: pool.submit(record_case, name, tree, Path(tmp)) for name in names}
        return {name: future.result() for name, future in futures.items()}


def compare(before: dict, after: dict, rtol: float = 0.0) -> list:
    """One line per case: `same` (every compared scalar identical, or within rtol), or what differs first."""
    lines = []
    for name in before:
        if name not in after:
            lines.append(f"{name}: missing in the second trace")
            continue
        a, b = before[name], after[name]
        if set(a) != set(b):
            lines.append(f"{name}: different tags: only before {sorted(set(a) - set(b))}, "
                         f"only after {sorted(set(b) - set(a))}")
            continue
        first, worst, values = None, 0.0, 0
        for tag in a:
            if [s for s, _ in a[tag]] != [s for s, _ in b[tag]]:
                first = first or f"{tag}: logged at other steps"
                continue
            for (step, x), (_, y) in zip(a[tag], b[tag]):
                values += 1
                same = x == y or (math.isnan(x) and math.isnan(y))
                if not same:
                    rel = abs(x - y) / max(abs(x), abs(y), 1e-30)
                    worst = max(worst, rel)
                    if rel > rtol and first is None:
                        first = f"{tag} at step {step}: {x!r} vs {y!r}"
        if first:
            lines.append(f"{name}: DIFFERS ({first}; largest relative difference {worst:.3g})")
        else:
            lines.append(f"{name}: same ({values} values of {len(a)} tags"
                         + (f", largest relative difference {worst:.3g}" if worst else ", bit for bit") + ")")
    return lines


def worktree_at(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)
    return where


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ref", help="a git revision to compare the working tree with (run in a temporary worktree)")
    p.add_argument("--save", help="write the working tree's trace to this JSON file")
    p.add_argument("--against", help="compare the working tree with this saved trace")
    p.add_argument("--only", nargs="+", default=None, help="these cases (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="cases at a time (each runs on one thread)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative difference accepted (default 0: identity)")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    a = p.parse_args(argv)
    if a.list:
        for name, (script, args) in CASES.items():
            print(f"{name}: python {script}.py {' '.join(args)} --seed {SEED}")
        return 0
    names = a.only or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; --list shows them")
    if a.jobs < 1 or not math.isfinite(a.rtol) or a.rtol < 0:
        p.error("--jobs must be >= 1 and --rtol finite and >= 0")
    if not (a.ref or a.save or a.against):
        p.error("give --ref, --save or --against (what to compare with, or where to write the trace)")
    if a.against and not Path(a.against).is_file():
        p.error(f"--against {a.against} is not a file")
    if a.save and Path(a.save).exists():
        p.error(f"--save {a.save} exists; give a new path")
    before = None
    if a.ref:
        with tempfile.TemporaryDirectory(prefix="loss_trace_ref_") as tmp:
            tree = worktree_at(a.ref, Path(tmp) / "tree")
            try:
                before = record(tree, names, a.jobs)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                               capture_output=True)
    elif a.against:
        saved = json.loads(Path(a.against).read_text())
        before = {n: saved[n] for n in names if n in saved}
        missing = [n for n in names if n not in saved]
        if missing:
            p.error(f"--against {a.against} has no trace of {missing}")
    after = record(ROOT, names, a.jobs)
    if a.save:
        Path(a.save).write_text(json.dumps(after))
        print(f"wrote {a.save}: {len(after)} cases")
    if before is None:
        return 0
    lines = compare(before, after, a.rtol)
    print("\n".join(lines))
    return 0 if all(": same" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
