"""fpmd.py against the official FPMD code (tianyyiii/rectified_flow_policy), side by side on one gymnasium MuJoCo
task at a reduced budget (issue 18, FPMD item). Results: docs/results/parity_fpmd_<env>.csv/.png, the table in
docs/parity.md ("FPMD vs the official code").

Both sides run FPMD-R (`--alg rf` / `--variant rf`) with the same budget and hyper-parameters: the official
train_mujoco.py defaults (= fpmd.py's), except what is scaled down on both sides to fit a CPU: `--steps` env steps
after a `--warmup` of uniformly random transitions (official 1M after 30k), `--num-layers` x `--hidden-dim` MLPs
(official 3 x 256), `--num-particles` (32) and `--flow-steps` (20). 5 vector envs, one update per vector step, batch
256 on both sides. The official side is evaluated afterwards by its own evaluator (relax/trainer/evaluator.py, the
noise-free best-of-N sampler of the EMA policy) on the policies its trainer saved every `--eval-every` steps; ours
reports the same sampler (`eval/episodic_return`) at the same env steps.

The official checkout (`--official-dir`, pinned commit OFFICIAL_COMMIT) is never modified: it is copied to
<out-dir>/official_src, patched there (PATCHES, listed in docs/parity.md), and its three C extensions are built
there with the `--official-venv` python (created with PINNED if missing).

  git clone https://github.com/tianyyiii/rectified_flow_policy /tmp/rectified_flow_policy
  git -C /tmp/rectified_flow_policy checkout 78f90a6
  python benchmarks/parity_fpmd.py --official-dir /tmp/rectified_flow_policy --official-venv /tmp/venv-fpmd --throughput
  python benchmarks/parity_fpmd.py --smoke      # our side only, a few seconds (CI; no official code)

`main(argv) -> int` is what benchmarks/parity.py calls.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from parity import seed_difference  # the same parity test as the OGBench pairs (benchmarks/parity.py)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
OFFICIAL_COMMIT = "78f90a6"
# the official environment.yml (diffusion_policy.yml) pins, CPU jaxlib instead of the CUDA one
PINNED = ["numpy==1.26.4", "jax==0.4.27", "jaxlib==0.4.27", "dm-haiku==0.0.13", "optax==0.2.4", "numpyro==0.18.0",
          "gymnasium[mujoco]==1.0.0", "mujoco==2.3.7", "dill==0.3.8", "numba", "tensorboardX", "setproctitle", "tqdm",
          "pyyaml", "scipy<1.14"]
# (file, anchor, replacement): every patch made to the official code, none changes the algorithm
PATCHES = [
    ("scripts/train_mujoco.py",
     '    parser.add_argument("--temperature", type=float, default=3.0)\n',
     '    parser.add_argument("--temperature", type=float, default=3.0)\n'
     '    parser.add_argument("--vec_mode", type=str, default="futex")  # parity patch\n'
     '    parser.add_argument("--save_every", type=int, default=0)  # parity patch: 0 = total_step / 40\n'
     '    parser.add_argument("--eval_episodes", type=int, default=20)  # parity patch\n'),
    ("scripts/train_mujoco.py", 'mode="futex")', 'mode=args.vec_mode)'),
    ("scripts/train_mujoco.py",
     "        save_policy_every=int(args.total_step / 40),\n",
     "        save_policy_every=args.save_every or int(args.total_step / 40),\n"
     "        evaluate_n_episode=args.eval_episodes,\n"),
    ("relax/env/vector/serial.py",
     "        self.single_action_space = self.envs[0].action_space\n",
     "        self.single_action_space = self.envs[0].action_space\n"
     "        self.spec = self.envs[0].unwrapped.spec  # parity patch: the trainer reads env.spec.id\n"),
]
THROUGHPUT_STEPS = (1000, 6000)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


class ParityError(RuntimeError):
    """A setup problem (missing checkout, wrong commit, a patch that does not apply): one line, exit 1."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-dir", type=Path, help="a checkout of tianyyiii/rectified_flow_policy at " + OFFICIAL_COMMIT)
    p.add_argument("--official-venv", type=Path, default=Path("/tmp/venv-fpmd"),
                   help="python environment of the official code (created with the pinned packages if missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=35_000, help="env steps after the warm-up, both sides")
    p.add_argument("--warmup", type=int, default=5_000, help="uniformly random transitions before training")
    p.add_argument("--env-id", default="HalfCheetah-v5")
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-particles", type=int, default=8)
    p.add_argument("--flow-steps", type=int, default=5)
    p.add_argument("--eval-every", type=int, default=5_000, help="env steps between evaluations (after the warm-up)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each one thread)")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/parity_fpmd"), help="runs and logs (not committed)")
    p.add_argument("--results-dir", type=Path, default=None, help="csv and png (default docs/results; --smoke: --out-dir)")
    p.add_argument("--sides", nargs="+", choices=["official", "ours"], default=["official", "ours"])
    p.add_argument("--smoke", action="store_true", help="our side only, a tiny budget on Pendulum-v1 (CI)")
    p.add_argument("--throughput", action="store_true",
                   help="also measure the CPU seconds per env step of training on each side: runs of 1000 and 6000 "
                        "steps after a 1000-step warm-up, no evaluation; the difference cancels start-up and jit")
    p.add_argument("--reuse", action="store_true",
                   help="keep the finished runs and official evaluations found in --out-dir, run only what is missing")
    args = p.parse_args(argv)
    if args.smoke:
        args.sides, args.env_id, args.steps, args.warmup, args.eval_every = ["ours"], "Pendulum-v1", 100, 100, 100
        args.hidden_dim, args.num_layers, args.num_particles, args.flow_steps, args.eval_episodes = 16, 1, 2, 2, 1
    if args.results_dir is None:
        args.results_dir = args.out_dir if args.smoke else RESULTS
    for flag in ("steps", "warmup", "hidden_dim", "num_layers", "num_particles", "flow_steps", "eval_every",
                 "eval_episodes", "jobs"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")
    if args.steps % args.eval_every or args.eval_every % 5:
        p.error(f"--steps ({args.steps}) must be a multiple of --eval-every ({args.eval_every}), itself a multiple of "
                "the 5 vector envs (both sides evaluate at the same env steps)")
    if "official" in args.sides and args.official_dir is None:
        p.error("--official-dir is required for the official side (or pass --sides ours / --smoke)")
    return args


# ------------------------------------------------------------------------------------------------------------
# official side
# ------------------------------------------------------------------------------------------------------------
def prepare_official(args: argparse.Namespace) -> tuple[Path, Path]:
    """The patched copy of the checkout with its C extensions built, and the python of its venv."""
    src = args.official_dir.resolve()
    if not (src / "scripts" / "train_mujoco.py").is_file() or not (src / "relax").is_dir():
        raise ParityError(f"--official-dir {src} is not a rectified_flow_policy checkout (no scripts/train_mujoco.py)")
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        head = "unknown"
    if not head.startswith(OFFICIAL_COMMIT):
        print(f"warning: --official-dir is at {head[:7]}, not the pinned {OFFICIAL_COMMIT}", flush=True)
    python = args.official_venv / "bin" / "python"
    if not python.exists():
        print(f"creating {args.official_venv} with {' '.join(PINNED)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(args.official_venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINNED], check=True)
    work = args.out_dir / "official_src"
    if args.reuse and list(work.glob("relax/futex*.so")):
        return work, python
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("relax", "scripts", "src", "setup.py", "pyproject.toml"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, work / name)
    shutil.rmtree(work / "relax" / "sample_logs", ignore_errors=True)
    apply_patches(work)
    env = {**os.environ, **ONE_THREAD, "CONDA_PREFIX": "/usr"}  # setup.py reads the include dirs from CONDA_PREFIX
    out = subprocess.run([str(python), "setup.py", "build_ext", "--inplace"], cwd=work, env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise ParityError(f"building the official C extensions failed: {out.stderr.strip().splitlines()[-1:]}")
    return work, python


def apply_patches(work: Path) -> None:
    for rel, anchor, new in PATCHES:
        path = work / rel
        text = path.read_text()
        if text.count(anchor) != 1:
            raise ParityError(f"patch does not apply: {rel} has {text.count(anchor)} copies of {anchor.strip()!r}")
        path.write_text(text.replace(anchor, new))


def official_command(args: argparse.Namespace, python: Path, seed: int, steps: int = 0, warmup: int = 0,
                     save_every: int = 0, suffix: str = "parity") -> list[str]:
    steps, warmup, save_every = steps or args.steps, warmup or args.warmup, save_every or args.eval_every
    return [str(python), "scripts/train_mujoco.py", "--alg", "rf", "--env", args.env_id, "--seed", str(seed),
            "--hidden_num", str(args.num_layers), "--hidden_dim", str(args.hidden_dim),
            "--diffusion_hidden_dim", str(args.hidden_dim), "--diffusion_steps", str(args.flow_steps),
            "--diffusion_steps_test", str(args.flow_steps), "--num_particles", str(args.num_particles),
            "--start_step", str(warmup), "--total_step", str(steps), "--save_every", str(save_every),
            "--eval_episodes", "0", "--vec_mode", "serial", "--suffix", suffix]


def official_results(args: argparse.Namespace, work: Path, python: Path, seed: int) -> tuple[list, float]:
    """Evaluate the saved policies with the official evaluator (run afterwards, not beside the trainer as the official
    train_mujoco.py does, so that it takes no CPU from the runs whose throughput is measured); returns [(step after warm-up, mean return)] and env steps/s."""
    dirs = sorted(glob.glob(str(work / "logs" / args.env_id / f"rf_*_s{seed}_parity")))
    if not dirs:
        raise ParityError(f"the official run of seed {seed} left no log directory under {work / 'logs'}")
    run = Path(dirs[-1])
    policies = sorted(run.glob("policy-*-*.pkl"), key=lambda p: int(p.name.split("-")[1]))
    lines = "".join(f"{p.name.split('-')[1]},{p}\n" for p in policies)
    if not (args.reuse and evaluated(run / "log.csv", len(policies))):
        subprocess.run([str(python), "-m", "relax.trainer.evaluator", str(run), "--env", args.env_id,
                        "--num_episodes", str(args.eval_episodes), "--seed", "0"], input=lines, text=True, cwd=work,
                       env={**os.environ, **ONE_THREAD, "PYTHONPATH": str(work)}, check=True)
    with open(run / "log.csv") as f:
        curve = [(int(r["step"]), float(r["avg_ret"])) for r in csv.DictReader(f)]
    return curve, official_sps(run)


def evaluated(log_csv: Path, count: int) -> bool:
    """The official evaluator's log.csv holds a finite mean return for each of the `count` saved policies."""
    if not log_csv.is_file():
        return False
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    return len(rows) == count and all(math.isfinite(float(r["avg_ret"])) for r in rows)


def official_sps(run: Path) -> float:
    """Median env steps/s between the trainer's update logs (every 1000 updates = 5000 env steps), compile excluded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    if "update/q1_loss" not in acc.Tags()["scalars"]:  # a run shorter than 1000 updates
        return float("nan")
    events = acc.Scalars("update/q1_loss")
    rates = [5 * (b.step - a.step) / (b.wall_time - a.wall_time) for a, b in zip(events, events[1:])]
    return float(np.median(rates)) if rates else float("nan")


# ------------------------------------------------------------------------------------------------------------
# our side
# ------------------------------------------------------------------------------------------------------------
def ours_command(args: argparse.Namespace, seed: int, steps: int = 0, warmup: int = 0, eval_every: int = 0,
                 eval_episodes: int = 0) -> list[str]:
    steps, warmup = steps or args.steps, warmup or args.warmup
    eval_every, eval_episodes = eval_every or args.eval_every, eval_episodes or args.eval_episodes
    return [sys.executable, str(ROOT / "fpmd.py"), "--variant", "rf", "--env-id", args.env_id, "--seed", str(seed),
            "--total-timesteps", str(warmup + steps), "--learning-starts", str(warmup),
            "--num-envs", "5", "--batch-size", "256", "--hidden-dim", str(args.hidden_dim),
            "--num-layers", str(args.num_layers), "--flow-steps", str(args.flow_steps),
            "--num-particles", str(args.num_particles), "--eval-freq", str(eval_every),
            "--eval-episodes", str(eval_episodes), "--log-freq", "1000", "--exp-name", "parity", "--no-cuda"]


EVAL_LINE = re.compile(r"^step (\d+): return=(\S+) \(best-of-\d+\), return_1nfe=(\S+)$")
LOG_LINE = re.compile(r"^step (\d+)/\d+ sps=(\S+)")


def parse_ours(log: str, warmup: int) -> tuple[list, list, float]:
    """From fpmd.py's stdout: [(step after warm-up, best-of-N return)], the same for 1 NFE, and the median env
    steps/s of the log windows after the warm-up (the few windows holding an evaluation are outliers)."""
    curve, curve_1nfe, rates = [], [], []
    previous = 0
    for line in log.splitlines():
        if m := EVAL_LINE.match(line.strip()):
            step = int(m.group(1)) - warmup
            if step > 0:
                curve.append((step, float(m.group(2))))
                curve_1nfe.append((step, float(m.group(3))))
        elif m := LOG_LINE.match(line.strip()):
            step = int(m.group(1))
            if previous >= warmup:  # the whole window is after the warm-up
                rates.append(float(m.group(2)))
            previous = step
    return curve, curve_1nfe, float(np.median(rates)) if rates else float("nan")


def random_returns(env_id: str, episodes: int, seed: int = 0, cwd: Path = Path(".")) -> list[float]:
    """Returns of the uniformly random policy (actions uniform in the Box), episode i reset with seed + i; run in
    `cwd` (MuJoCo may write its MUJOCO_LOG.TXT there)."""
    import contextlib

    import gymnasium as gym

    with contextlib.chdir(cwd):
        env = gym.make(env_id)
    rng, returns = np.random.default_rng(seed), []
    low, high = env.action_space.low, env.action_space.high
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return returns


# ------------------------------------------------------------------------------------------------------------
# statistics, table, plot
# ------------------------------------------------------------------------------------------------------------
def compare(official: list[float], ours: list[float]) -> dict:
    """Final returns of each seed -> means, sample stds (ddof 1), the difference ours - official, its standard
    error sqrt(s_o^2/n_o + s_p^2/n_p), and the issue's test |diff| <= max(5% of |official mean|, 2 SE)."""
    s = seed_difference(official, ours, floor=0.05 * abs(sum(official) / len(official)))
    s["pass"] = bool(s.pop("passed"))
    return s


def write_outputs(args: argparse.Namespace, rows: list[dict], sps: dict, random: list[float] | None = None) -> dict:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"parity_fpmd_{args.env_id.replace('/', '_')}"
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["side", "seed", "step", "return", "env_steps_per_s"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "env_steps_per_s": f"{sps[(r['side'], r['seed'])]:.1f}"})
    sides = sorted({r["side"] for r in rows} - {"random"})
    final = {s: [max((r for r in rows if r["side"] == s and r["seed"] == seed), key=lambda r: r["step"])["return"]
                 for seed in args.seeds] for s in sides}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"official": "official (JAX, 78f90a6)", "ours": "fpmd.py", "ours_1nfe": "fpmd.py, 1 NFE"}
    for side in sides:
        steps = sorted({r["step"] for r in rows if r["side"] == side})
        curves = np.array([[next(r["return"] for r in rows if r["side"] == side and r["seed"] == seed
                                 and r["step"] == st) for st in steps] for seed in args.seeds])
        mean, std = curves.mean(0), curves.std(0, ddof=1 if len(curves) > 1 else 0)  # as the table
        ax.plot(steps, mean, label=labels[side], ls="--" if side == "ours_1nfe" else "-")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if random is not None:
        ax.axhline(np.mean(random), color="gray", ls=":", label="uniform random policy")
    ax.set_xlabel("env steps after the warm-up")
    ax.set_ylabel(f"return ({args.eval_episodes} episodes)")
    ax.set_title(f"FPMD-R on {args.env_id}, {len(args.seeds)} seeds, mean ± std")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=120)
    plt.close(fig)
    summary = {"final": final}
    if "official" in final and "ours" in final:
        summary.update(compare(final["official"], final["ours"]))
    return summary


def run_jobs(jobs: list[tuple[str, int, list[str], Path, dict]], parallel: int, out_dir: Path, reuse: bool = False) -> dict:
    """Run (side, seed, command, cwd, env) jobs, `parallel` at a time; their stdout goes to out_dir/<side>_<seed>.log.
    `reuse`: a job whose log shows a finished run is not run again. Returns {(side, seed): (stdout, cpu seconds)}."""
    pending, running, done = [], [], {}
    for job in jobs:
        log = out_dir / f"{job[0]}_{job[1]}.log"
        text = log.read_text() if reuse and log.is_file() else ""
        if found := re.findall(r"cpu_seconds (\S+) (\S+)", text):
            done[job[:2]] = (text, sum(float(x) for x in found[-1]))
            print(f"reusing {log}", flush=True)
        else:
            pending.append(job)
    while pending or running:
        while pending and len(running) < parallel:
            side, seed, cmd, cwd, env = pending.pop(0)
            log = open(out_dir / f"{side}_{seed}.log", "w")
            cmd = ["/usr/bin/time", "-f", "cpu_seconds %U %S", *cmd] if Path("/usr/bin/time").exists() else cmd
            running.append((side, seed, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT),
                            log, time.time()))
            print(f"started {side} seed {seed}: {' '.join(cmd)}", flush=True)
        for item in list(running):
            side, seed, proc, log, t0 = item
            if proc.poll() is None:
                continue
            log.close()
            text = (out_dir / f"{side}_{seed}.log").read_text()
            if proc.returncode != 0:
                raise ParityError(f"{side} seed {seed} failed (exit {proc.returncode}); see {out_dir / f'{side}_{seed}.log'}")
            cpu = sum(float(x) for x in re.findall(r"cpu_seconds (\S+) (\S+)", text)[-1]) if "cpu_seconds" in text else float("nan")
            print(f"finished {side} seed {seed}: {time.time() - t0:.0f} s wall, {cpu:.0f} s cpu", flush=True)
            done[(side, seed)] = (text, cpu)
            running.remove(item)
        time.sleep(1)
    return done


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse already printed its one line
        return int(e.code or 0)
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        t_start = time.time()
        jobs, work, python = [], None, None
        if "official" in args.sides:
            work, python = prepare_official(args)
        ours_dir = args.out_dir / "ours"
        ours_dir.mkdir(exist_ok=True)
        for seed in args.seeds:  # each seed's two runs side by side: same load on both
            if "official" in args.sides:
                jobs.append(("official", seed, official_command(args, python, seed), work,
                             {**os.environ, **ONE_THREAD, "PYTHONPATH": str(work)}))
            if "ours" in args.sides:
                jobs.append(("ours", seed, ours_command(args, seed), ours_dir, {**os.environ, **ONE_THREAD}))
        if args.throughput:  # CPU per env step: two lengths, the difference is training only
            for n in THROUGHPUT_STEPS:
                if "official" in args.sides:
                    jobs.append((f"throughput_official_{n}", 1, official_command(args, python, 1, n, 1000, 10**9, f"tp{n}"),
                                 work, {**os.environ, **ONE_THREAD, "PYTHONPATH": str(work)}))
                if "ours" in args.sides:
                    jobs.append((f"throughput_ours_{n}", 1, ours_command(args, 1, n, 1000, 10**9, 1), ours_dir,
                                 {**os.environ, **ONE_THREAD}))
        done = run_jobs(jobs, args.jobs, args.out_dir, args.reuse)
        cpu_per_step = {side: (done[(f"throughput_{side}_{THROUGHPUT_STEPS[1]}", 1)][1]
                               - done[(f"throughput_{side}_{THROUGHPUT_STEPS[0]}", 1)][1])
                        / (THROUGHPUT_STEPS[1] - THROUGHPUT_STEPS[0]) for side in args.sides if args.throughput}
        done = {k: v for k, v in done.items() if not k[0].startswith("throughput_")}
        rows, sps, cpu = [], {}, {}
        for (side, seed), (text, seconds) in done.items():
            cpu[(side, seed)] = seconds
            if side == "official":
                curve, sps[(side, seed)] = official_results(args, work, python, seed)
                rows += [{"side": side, "seed": seed, "step": s, "return": r} for s, r in curve]
            else:
                curve, curve_1nfe, rate = parse_ours(text, args.warmup)
                sps[("ours", seed)] = sps[("ours_1nfe", seed)] = rate
                rows += [{"side": "ours", "seed": seed, "step": s, "return": r} for s, r in curve]
                rows += [{"side": "ours_1nfe", "seed": seed, "step": s, "return": r} for s, r in curve_1nfe]
        random = random_returns(args.env_id, args.eval_episodes, cwd=args.out_dir)
        rows += [{"side": "random", "seed": 0, "step": 0, "return": r} for r in random]  # one row per episode
        sps[("random", 0)] = float("nan")
        summary = write_outputs(args, rows, sps, random)
    except (ParityError, subprocess.CalledProcessError) as e:  # a failed pip install, build or official evaluation
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\n{args.env_id}: FPMD-R, {len(args.seeds)} seeds, {args.steps} env steps after {args.warmup} random, "
          f"final evaluation {args.eval_episodes} episodes; wall {time.time() - t_start:.0f} s")
    for side, finals in summary["final"].items():
        rates = [sps[(side, s)] for s in args.seeds]
        print(f"  {side:10s} final {np.mean(finals):8.1f} ± {np.std(finals, ddof=1) if len(finals) > 1 else 0:6.1f} "
              f"(seeds: {', '.join(f'{x:.1f}' for x in finals)}); env steps/s {np.mean(rates):.1f} "
              f"(per seed {', '.join(f'{x:.1f}' for x in rates)})")
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"  cpu seconds of the training runs: " + ", ".join(f"{k[0]} {k[1]}: {v:.0f}" for k, v in sorted(cpu.items()))
          + f"; all child processes (setup, runs, official evaluator): {children.ru_utime + children.ru_stime:.0f}")
    print(f"  uniform random policy {np.mean(random):.1f} ± {np.std(random):.1f} (over {len(random)} episodes)")
    for side, seconds in cpu_per_step.items():
        print(f"  {side}: {1000 * seconds:.2f} ms CPU per env step of training ({1 / seconds:.0f} env steps per CPU second)")
    if "diff" in summary:
        print(f"  diff (ours - official) {summary['diff']:.1f} ± {summary['se']:.1f} (SE); tolerance "
              f"max(5% of official, 2 SE) = {summary['tolerance']:.1f}: {'PASS' if summary['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
