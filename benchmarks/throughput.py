"""Training throughput (updates/s) of the flowrl scripts, measured on the real training loop.

Each measurement runs one script's own `main` in a fresh process (the "child", this file with --child) and reads
the `charts/SPS` values the script logs: updates per second between two log steps, so dataset loading, start-up,
logging and evaluation are excluded. In the child the script's clock (`time.time`, `time.perf_counter`) first waits
for the device (`torch.cuda.synchronize()`), so every interval starts and ends with the GPU idle. The first
interval is the warm-up (torch.compile, CUDA-graph capture, cuBLAS start); the rate is the median of the later ones
and `warmup_s` is the first interval's time minus what the same updates take at that rate. The child stops the run
once `--measure-s` seconds of intervals after the warm-up are in (at least 3 of them), or, with --steps, runs
--steps updates exactly.

Modes (issue 21): `eager` (the default of every script), `compile` (the script's --compile: torch.compile of the
update) and `cudagraphs` (the script's --cudagraphs: the compiled update replayed as a CUDA graph; CUDA only). A
mode whose flag the script does not have in this checkout is reported as such, not measured.

The official JAX FQL (seohongpark/fql @719d044) and QAM (ColinQiyangLi/qam @f93efd2) come from checkouts given
with --fql-official-dir / --qam-official-dir and run in --official-python (default: this Python) through
benchmarks/throughput_official.py: their own jitted `agent.update` on device-resident batches of the shape our run
uses (same observation/action sizes as the dataset below, 512x4 MLPs, batch 256, their configuration otherwise),
timed in intervals that end with `jax.block_until_ready`, warm-up and median as for ours.

What one "step" is, per script, and the paper size each runs at (the script's defaults; `--sizes HxL` overrides the
hidden width x depth of every script, e.g. for a quick CPU check):
  fql             one offline update on flowrl/reacher/mixed-v0 (obs 10, action 2); 512x4 MLPs, 2 critics, batch 256,
                  10 flow steps (official agents/fql.py get_config)
  qam             one offline update on flowrl/reacher/mixed-v0, action chunks of 5; 512x4, 10 critics, batch 256,
                  10 flow steps (QAM paper's manipulation setting; official get_config + experiments/reproduce.py)
  gfp             one offline update on flowrl/reacher/mixed-v0; 512x4, 2 critics, batch 256, 10 flow steps (the
                  script's generic defaults, from the GFP official config)
  decision_flow   one offline update (DF-dir) on flowrl/reacher/mixed-v0; 512x4, 2 critics, batch 256, 10 flow steps
                  (the script's defaults, in the style of the other offline scripts)
  streaming_flow  one imitation update on flowrl/pointmaze/demos-v0; 256-wide, 3 FiLM residual blocks, batch 1024,
                  prediction horizon 16 (the official U-Net replaced by a residual MLP, docs/streaming_flow.md)
  fpmd (online)   one Hopper-v5 env step + one update (1 env, updates from the first step); 256x3, 2 critics, batch 256,
                  20 flow steps (the official scripts/train_mujoco.py defaults)
  swfp (online)   one env step + one critic and one JKO-block update (phase 2) on flowrl/reacher/mixed-v0; 256x3,
                  10 JKO blocks of 64x2, batch 256 (the script's defaults); phase 1 is cut to one step each, not measured
The CSV records the values each run used (its resolved Args), so the table is self-describing.
flow_opt is not covered: its charts/SPS is the flow-matching stage of a trajectory-optimisation pipeline that first
has to generate its training data with the optimiser, so its rate is not comparable with the others.

Usage:
  python benchmarks/throughput.py --cuda --fql-official-dir /tmp/fql-official --qam-official-dir /tmp/qam-official
      # every script x {eager, compile, cudagraphs} + official FQL and QAM, <= 8 min -> docs/results/throughput_gpu.csv
  python benchmarks/throughput.py --cuda --quick ...       # the same with 2 s timing windows, <= 4 min
  python benchmarks/throughput.py --scripts fql qam --modes eager compile --sizes 64x2 --threads 1 --out /tmp/t
      # CPU: throughput_cpu_modes.csv (never mixed with GPU rows)
benchmarks/gpu_throughput.sh is the prepared GPU command (it installs missing packages from wheels first).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# script -> command-line arguments that select an offline/online training run without evaluation noise
# (also the CPU quick suite's configuration: benchmarks/run.py)
SCRIPTS = {
    "fql": ["--env-id", "flowrl/reacher/mixed-v0", "--alpha", "0.3"],
    "qam": ["--env-id", "flowrl/reacher/mixed-v0", "--inv-temp", "1", "--horizon-length", "1"],
    "gfp": ["--env-id", "flowrl/reacher/mixed-v0", "--alpha", "0.3"],
    "decision_flow": ["--env-id", "flowrl/reacher/mixed-v0", "--variant", "dir"],
    "streaming_flow": ["--env-id", "flowrl/pointmaze/demos-v0"],
    "fpmd": ["--env-id", "Hopper-v5", "--num-envs", "1", "--learning-starts", "1"],
    "swfp": ["--env-id", "flowrl/reacher/mixed-v0", "--pretrain-steps", "1", "--critic-warmup-steps", "1"],
}
# the paper-size runs differ in one place: QAM's paper setting chunks actions by 5 (the quick suite uses 1)
PAPER_SCRIPTS = {**SCRIPTS, "qam": ["--env-id", "flowrl/reacher/mixed-v0", "--inv-temp", "1", "--horizon-length", "5"]}
SIZE_FLAGS = ("--hidden-dim", "--num-layers")
# scripts that name a common flag differently: script -> {common flag: the script's flag}
FLAG_NAMES = {
    "fpmd": {"--total-steps": "--total-timesteps"},  # env steps (one update each here)
    "swfp": {"--total-steps": "--total-timesteps"},  # online env steps of phase 2
    "streaming_flow": {"--num-layers": "--num-blocks"},
}
MODES = {"eager": [], "compile": ["--compile"], "cudagraphs": ["--cudagraphs"]}
# the official code this file can time, against which of our scripts (benchmarks/throughput_official.py)
OFFICIAL = {"fql": "seohongpark/fql @719d044", "qam": "ColinQiyangLi/qam @f93efd2"}
# the Args fields recorded per row (whichever the script has), after its own per-task resolution
RECORDED = ("hidden_dim", "num_layers", "num_blocks", "batch_size", "flow_steps", "num_critics", "horizon_length", "blocks")
FIELDS = ["impl", "script", "mode", "status", "updates_per_s", "intervals", "log_freq", "warmup_s", "compile_cold_s",
          "peak_gpu_mem_mb", "config", "device", "threads", "software", "extra"]
# one command on one GPU: the timing window after the warm-up, and the whole command's budget (seconds)
WINDOW = {"full": 5.0, "quick": 2.0}
BUDGET = {"full": 440.0, "quick": 240.0}
COLD_SHARE = 0.45  # at most this share of the budget goes to the parallel cold compilations


def flag(script: str, name: str) -> str:
    return FLAG_NAMES.get(script, {}).get(name, name)


def script_flags(script: str) -> set:
    """The Args fields of a script in this checkout (read from its source, nothing imported)."""
    tree = ast.parse((ROOT / f"{script}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return set()


def dataset_dims(env_id: str):
    """(obs_dim, action_dim) of an embedded dataset (its Minari metadata), for the official agents' batches."""
    meta = json.loads((ROOT / "datasets" / env_id / "data" / "metadata.json").read_text())
    return tuple(json.loads(meta[k])["shape"][0] for k in ("observation_space", "action_space"))


# ---------------------------------------------------------------------------------------------- child process
class _Stop(BaseException):
    """Raised from the script's logging once enough intervals are timed: ends its main() early (a BaseException, so
    that no `except Exception` of a script swallows it)."""


class _SyncedClock:
    """Stands in for the script's `time` module: time() and perf_counter() read the clock only once the device has
    finished the work queued so far, so an interval between two reads is the device's time, not the launch time."""

    def __init__(self, sync):
        self._sync = sync

    def __getattr__(self, name):
        return getattr(time, name)

    def time(self):
        self._sync()
        return time.time()

    def perf_counter(self):
        self._sync()
        return time.perf_counter()


def instrument(mod, sync, measure_s, min_intervals: int) -> list:
    """Patch a script module: its clock waits for the device first (when `sync` is given), and its SummaryWriter
    records every charts/SPS as (step, value) in the returned list and raises _Stop once `min_intervals` intervals
    after the first are in and `measure_s` seconds have passed since the first (never when measure_s is None)."""
    if sync is not None:
        mod.time = _SyncedClock(sync)
    points, warm = [], []

    class Recorder(mod.SummaryWriter):
        def add_scalar(self, tag, value, global_step=None, *a, **k):
            super().add_scalar(tag, value, global_step, *a, **k)
            if tag != "charts/SPS":
                return
            points.append((int(global_step), float(value)))
            if not warm:
                warm.append(time.perf_counter())
            if measure_s is not None and len(points) - 1 >= min_intervals and time.perf_counter() - warm[0] >= measure_s:
                raise _Stop

    mod.SummaryWriter = Recorder
    return points


def child(script: str, argv: list, result: Path, measure_s, min_intervals: int) -> None:
    """Run `script`'s main on argv (its command line), record every charts/SPS and stop as the module docstring says."""
    import torch
    import tyro

    sys.path.insert(0, str(ROOT))
    mod = __import__(script)
    args = tyro.cli(mod.Args, args=argv)
    cuda = torch.cuda.is_available() and args.cuda
    points = instrument(mod, torch.cuda.synchronize if cuda else None, measure_s, min_intervals)
    resolve = getattr(mod, "resolve_task_settings", lambda a: a)
    with open(os.devnull, "w") as quiet:  # the per-task resolution prints its values; the run itself prints them too
        stdout, sys.stdout = sys.stdout, quiet
        try:
            resolved = resolve(args)
        finally:
            sys.stdout = stdout
    config = {k: getattr(resolved, k) for k in RECORDED if hasattr(resolved, k)}
    try:
        mod.main(args)
    except _Stop:
        pass
    out = dict(points=points, config=config, cuda=cuda,
               peak_gpu_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
               device=torch.cuda.get_device_name(0) if cuda else None, software=f"torch {torch.__version__}")
    result.write_text(json.dumps(out))


def summarize(points: list, first_steps=None) -> dict:
    """Median rate of the intervals after the first and the warm-up excess of the first (see the module docstring).
    points: [(step, updates/s of the interval ending at step)] in logging order; first_steps: the updates of the
    first interval (default: its end step, i.e. a run that starts at step 0)."""
    if len(points) < 2:
        return dict(updates_per_s=None, intervals=0, warmup_s=None)
    rate = statistics.median(sps for _, sps in points[1:])
    first_steps = points[0][0] if first_steps is None else first_steps
    return dict(updates_per_s=rate, intervals=len(points) - 1, warmup_s=first_steps / points[0][1] - first_steps / rate)


def run_child(script: str, argv: list, threads: int, measure_s, min_intervals: int = 3, timeout=None) -> dict:
    """One child process (in a temporary working directory, so its runs/ folder goes away); its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", script, "--result", str(result),
               "--min-intervals", str(min_intervals), *(["--measure-s", str(measure_s)] if measure_s is not None else []),
               "--", *argv]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        proc = subprocess.run(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{script} {' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads(result.read_text())


def measure(script: str, size: str, steps: int, threads: int, cuda: bool, extra: list) -> float:
    """Median updates/s of `steps` updates (4 log intervals, the first dropped) at `size` (used by benchmarks/run.py)."""
    hidden, layers = size.split("x")
    common = [SIZE_FLAGS[0], hidden, SIZE_FLAGS[1], layers, "--total-steps", str(steps), "--log-freq", str(steps // 4),
              "--eval-freq", str(10 * steps), "--eval-episodes", "1"]
    argv = [*SCRIPTS[script], *[flag(script, a) if a.startswith("--") else a for a in common],
            "--cuda" if cuda else "--no-cuda", *extra]
    return summarize(run_child(script, argv, threads, measure_s=None)["points"])["updates_per_s"]


def ours_argv(script: str, mode: str, size: str, cuda: bool, log_freq: int, steps, extra: list) -> list:
    """The command line of one paper-size (or --sizes) run of our script in one mode."""
    argv = [*PAPER_SCRIPTS[script], "--log-freq", str(log_freq),
            "--eval-freq", str(10**9), "--eval-episodes", "1", "--cuda" if cuda else "--no-cuda", *MODES[mode], *extra]
    if size != "paper":
        hidden, layers = size.split("x")
        argv += [SIZE_FLAGS[0], hidden, flag(script, SIZE_FLAGS[1]), layers]
    if steps is not None:  # else the script's own (paper) budget, ended by the child's timing window
        argv += [flag(script, "--total-steps"), str(steps)]
    return argv


def official_argv(agent: str, official_dir: Path, size: str, log_freq: int, measure_s, result: Path) -> list:
    hidden, layers = ("512", "4") if size == "paper" else size.split("x")
    obs_dim, action_dim = dataset_dims(PAPER_SCRIPTS[agent][1])
    argv = [str(ROOT / "benchmarks" / "throughput_official.py"), "--agent", agent, "--official-dir", str(official_dir),
            "--obs-dim", str(obs_dim), "--action-dim", str(action_dim), "--hidden-dim", hidden, "--num-layers", layers,
            "--log-freq", str(log_freq), "--measure-s", str(measure_s if measure_s is not None else 0),
            "--result", str(result)]
    if agent == "qam":
        argv += ["--horizon-length", PAPER_SCRIPTS["qam"][PAPER_SCRIPTS["qam"].index("--horizon-length") + 1]]
    return argv


def run_official(agent: str, official_dir: Path, python: str, size: str, threads: int, cuda: bool, log_freq: int,
                 measure_s, timeout) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if not cuda:  # XLA on the CPU: as many threads as our side gets (one intra-op thread when --threads 1)
            env["JAX_PLATFORMS"] = "cpu"
            if threads == 1:
                env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        proc = subprocess.run([python, *official_argv(agent, official_dir, size, log_freq, measure_s, result)], cwd=tmp,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"official {agent} failed: {proc.stderr.strip().splitlines()[-1:]}")
        out = json.loads(result.read_text())
    log = out["log_freq"]
    points = [(log * (i + 1), r) for i, r in enumerate(out["rates"])]
    return dict(out, **summarize(points, first_steps=log))


def cold_compile(jobs: list, parallel: int, threads: int, deadline: float) -> dict:
    """Compile every (script, argv) of `jobs` once, `parallel` processes at a time, each stopped at its first log
    step: torch.compile's caches (TORCHINDUCTOR_CACHE_DIR, fresh for this command) then hold every update graph, so
    the timed runs after it start warm and 7 scripts x 2 compiled modes fit the command's budget. Returns
    {key: seconds of the first interval} (the cold compilation and the first --log-freq updates, measured with
    `parallel` compilations sharing the CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        key, script, argv = job
        left = deadline - time.time()
        if left < 20:
            return key, None
        try:
            points = run_child(script, argv, threads, measure_s=0.0, min_intervals=0, timeout=left)["points"]
        except (subprocess.TimeoutExpired, RuntimeError):
            return key, None
        return key, points[0][0] / points[0][1] if points else None

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return {k: v for k, v in pool.map(one, jobs) if v is not None}


def config_text(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


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


def plan(scripts: list, modes: list, officials: list) -> list:
    """The order of the runs: what the issue's ratios need first (official FQL, fql's modes, official QAM, qam's
    modes), then every other script's eager run, then their cudagraphs and compile runs, so that a budget cut
    drops the least needed runs."""
    order = []
    for pair in ("fql", "qam"):
        if pair in officials:
            order.append(("official", pair, "jit"))
        if pair in scripts:
            order += [("ours", pair, m) for m in ("eager", "cudagraphs", "compile") if m in modes]
    rest = [s for s in scripts if s not in ("fql", "qam")]
    for m in ("eager", "cudagraphs", "compile"):
        order += [("ours", s, m) for s in rest if m in modes]
    return order


def ratio_lines(rows: list) -> list:
    """fql-fastest / official FQL and qam-fastest / official QAM, from the measured rows."""
    lines = []
    for s in OFFICIAL:
        official = [r for r in rows if r["impl"] == "official" and r["script"] == s and r["updates_per_s"]]
        ours = [r for r in rows if r["impl"] == "ours" and r["script"] == s and r["updates_per_s"]]
        if official and ours:
            best = max(ours, key=lambda r: r["updates_per_s"])
            lines.append(f"{s}-fastest ({best['mode']}) / official {s.upper()}: {best['updates_per_s']:.1f} / "
                         f"{official[0]['updates_per_s']:.1f} = {best['updates_per_s'] / official[0]['updates_per_s']:.2f}x")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripts", nargs="*", default=list(SCRIPTS))
    parser.add_argument("--modes", nargs="*", default=None, choices=list(MODES),
                        help="default: all three with --cuda, eager and compile on the CPU")
    parser.add_argument("--sizes", nargs="*", default=["paper"], help="'paper' (each script's defaults) or HxL")
    parser.add_argument("--cuda", action="store_true", help="measure on the GPU (an error if torch sees none)")
    parser.add_argument("--quick", action="store_true", help=f"timing windows of {WINDOW['quick']:.0f} s instead of "
                        f"{WINDOW['full']:.0f} s, budget {BUDGET['quick']:.0f} s")
    parser.add_argument("--measure-s", type=float, default=None, help="timing window after the warm-up (s) per run")
    parser.add_argument("--budget-s", type=float, default=None, help="the whole command's time; runs that would "
                        "start after it are reported as skipped and a run is cut at it")
    parser.add_argument("--steps", type=int, default=None, help="run exactly this many updates instead of a timing window")
    parser.add_argument("--log-freq", type=int, default=50, help="updates per timed interval (both sides)")
    parser.add_argument("--cold-compile", type=int, default=None, help="compile the compiled modes first, this many "
                        "processes at a time, so the timed runs start with warm caches (default: 4 with --cuda, else 0)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run (OMP/MKL; XLA on the CPU: 1 or all)")
    parser.add_argument("--extra", nargs="*", default=[], help="extra flags passed to every script of ours")
    parser.add_argument("--fql-official-dir", type=Path, default=None, help="a checkout of seohongpark/fql @719d044")
    parser.add_argument("--qam-official-dir", type=Path, default=None, help="a checkout of ColinQiyangLi/qam @f93efd2")
    parser.add_argument("--official-python", default=sys.executable, help="the Python with jax/flax/optax/distrax "
                        "(+ ml_collections, tensorflow-probability) for the official code")
    parser.add_argument("--tag", default="modes", help="CPU file name: throughput_cpu_<tag>.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--min-intervals", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.rest, args.result, args.measure_s, args.min_intervals)
        return 0

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 1

    unknown = [s for s in args.scripts if s not in SCRIPTS]
    if unknown:
        return fail(f"no throughput configuration for {unknown}; known: {list(SCRIPTS)}")
    bad_sizes = [s for s in args.sizes if s != "paper" and not (len(s.split("x")) == 2 and all(p.isdigit() and int(p) > 0 for p in s.split("x")))]
    if bad_sizes:
        return fail(f"--sizes must be 'paper' or HIDDENxLAYERS like 512x4 (got {' '.join(bad_sizes)})")
    officials = {}
    for agent, folder in (("fql", args.fql_official_dir), ("qam", args.qam_official_dir)):
        if folder is not None:
            if not (folder / "agents" / f"{agent}.py").is_file():
                return fail(f"--{agent}-official-dir {folder} has no agents/{agent}.py (a checkout of {OFFICIAL[agent]}?)")
            officials[agent] = folder.resolve()
    if args.cuda:
        import torch

        if not torch.cuda.is_available():
            return fail("--cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); drop --cuda for CPU rows")
    modes = args.modes if args.modes is not None else (list(MODES) if args.cuda else ["eager", "compile"])
    kind = "quick" if args.quick else "full"
    window = args.measure_s if args.measure_s is not None else (None if args.steps else WINDOW[kind])
    budget = args.budget_s if args.budget_s is not None else BUDGET[kind]
    device, start = device_name(args.cuda), time.time()
    cache = tempfile.TemporaryDirectory(prefix="flowrl-throughput-")  # torch.compile's caches: cold at the start
    os.environ.update(TORCHINDUCTOR_CACHE_DIR=f"{cache.name}/inductor", TRITON_CACHE_DIR=f"{cache.name}/triton")

    def runnable(impl: str, script: str, mode: str) -> str:
        """'' when the run can be made, else why not."""
        if impl == "ours" and mode != "eager" and mode not in script_flags(script):
            return f"no --{mode} in {script}.py of this checkout"
        if mode == "cudagraphs" and not args.cuda:
            return "needs CUDA"
        return ""

    runs = [(size, *r) for size in args.sizes for r in plan(args.scripts, modes, list(officials))]
    parallel = args.cold_compile if args.cold_compile is not None else (4 if args.cuda else 0)
    cold = {}
    if parallel > 0:
        jobs = [((size, script, mode), script, ours_argv(script, mode, size, args.cuda, args.log_freq, args.steps, args.extra))
                for size, impl, script, mode in runs if impl == "ours" and mode != "eager" and not runnable(impl, script, mode)]
        cold = cold_compile(jobs, parallel, args.threads, start + COLD_SHARE * budget)
        print(f"cold compilation of {len(cold)}/{len(jobs)} compiled runs, {parallel} at a time: {time.time() - start:.0f} s", flush=True)
    rows = []
    for size, impl, script, mode in runs:
        row = dict(impl=impl, script=script, mode=mode, status="ok", updates_per_s=None, intervals=0, log_freq=args.log_freq,
                   warmup_s=None, compile_cold_s=None, peak_gpu_mem_mb=None, config="", device=device, threads=args.threads,
                   software="", extra=" ".join(args.extra) if impl == "ours" else "")
        left = budget - (time.time() - start)
        why = runnable(impl, script, mode)
        if why:
            row["status"] = why
        elif left < 20:
            row["status"] = "skipped: budget"
        else:
            t0 = time.time()
            try:
                if impl == "official":
                    out = run_official(script, officials[script], args.official_python, size, args.threads, args.cuda,
                                       args.log_freq, window, timeout=left)
                    row.update(config=config_text(out["config"]), software=out["versions"],
                               peak_gpu_mem_mb=out["peak_device_mem_mb"] if args.cuda else None)
                    if args.cuda and out["platform"] != "gpu":
                        row["status"] = f"official code ran on {out['platform']}, not the GPU"
                else:
                    out = run_child(script, ours_argv(script, mode, size, args.cuda, args.log_freq, args.steps, args.extra),
                                    args.threads, window, timeout=left)
                    out.update(summarize(out["points"], first_steps=args.log_freq))
                    row.update(config=config_text(out["config"]), software=out["software"], peak_gpu_mem_mb=out["peak_gpu_mem_mb"])
                row.update(updates_per_s=out["updates_per_s"], intervals=out["intervals"], warmup_s=out["warmup_s"])
                first = cold.get((size, script, mode))
                if first is not None and row["updates_per_s"]:  # the cold first interval minus its updates' time
                    row["compile_cold_s"] = first - args.log_freq / row["updates_per_s"]
                elif impl == "official" or mode != "eager":  # not compiled before: this run compiled cold itself
                    row["compile_cold_s"] = row["warmup_s"]
            except subprocess.TimeoutExpired:
                row["status"] = "cut: budget"
            except RuntimeError as e:
                row["status"] = f"failed: {e}"[:300]
            print(f"{impl:8s} {script:15s} {mode:10s} {size:6s} " + (f"{row['updates_per_s']:9.1f} updates/s" if row["updates_per_s"]
                  else f"{row['status']}") + f"  ({time.time() - t0:.0f} s)", flush=True)
        for k in ("updates_per_s", "warmup_s", "compile_cold_s", "peak_gpu_mem_mb"):
            row[k] = None if row[k] is None else round(row[k], 1 if k == "peak_gpu_mem_mb" or k == "updates_per_s" else 2)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "throughput_gpu" if args.cuda else f"throughput_cpu_{args.tag}"
    path = args.out / f"{name}{'_' + '_'.join(e.strip('-') for e in args.extra) if args.extra else ''}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    blank = lambda v: "" if v is None else v  # noqa: E731
    print("\n| impl | script | mode | updates/s | warm-up (s) | cold compile (s) | peak GPU MB | config | status |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['script']} | {r['mode']} | {blank(r['updates_per_s'])} | {blank(r['warmup_s'])} | "
              f"{blank(r['compile_cold_s'])} | {blank(r['peak_gpu_mem_mb'])} | {r['config']} | {r['status']} |")
    print()
    for line in ratio_lines(rows):
        print(line)
    print(f"\ndevice: {device}; {time.time() - start:.0f} s; written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
