"""Side-by-side runs of a flowrl script and the official JAX implementation on the same OGBench data.

Issue 18. For one (script, task) pair this
  1. generates the OGBench dataset locally (benchmarks/ogbench_data.py) unless it is already there;
  2. makes (or reuses) a Python venv for the official code, outside the repo, with pinned versions
     (OFFICIAL_VENV_PINS: the versions the runs of docs/parity.md used);
  3. runs the official code (a checkout the user points to with --official-dir, at the pinned commit) and
     our script for each seed, same data, same hyper-parameters (the paper's for the task; network size and
     steps as given), same evaluation schedule and episodes, one thread each; an official run and ours of
     the same seed run at the same time (--jobs 2), so both see the same machine load;
  4. writes docs/results/parity_<script>_<task>.csv (every evaluation of every run, and the throughput and
     CPU time of every run) and .png (both curves, mean +- std over seeds), and prints the table of
     docs/parity.md: final success mean +- std per side, the difference with its standard error, the pass
     rule |diff| <= max(0.05, 2 SE), updates/s per side.

Supported pairs: fql (seohongpark/fql). qam and gfp are not wired yet (docs/parity.md says why).

What is done to the official code, all outside its files (docs/parity.md, "Patches"):
  * it is started through a driver written to the work dir, which imports its main.py and replaces
    `setup_wandb` by `wandb.init(mode='disabled')` (wandb >= 0.19 rejects the official
    Settings(start_method=...); no logging service is reachable anyway);
  * the driver runs the evaluation at step 1 (main.py evaluates at i == 1 as well as every --eval_interval)
    with 1 episode instead of --eval_episodes; that row is not used (the untrained policy; it saved 50
    full-length episodes per run);
  * HOME points at a folder of the work dir whose .ogbench/data is a symlink to the generated data, so that
    the official `ogbench.make_env_and_datasets(env_name)` reads it from its default ~/.ogbench/data.

Usage:
  git clone https://github.com/seohongpark/fql /tmp/fql-official && git -C /tmp/fql-official checkout 719d044
  OMP_NUM_THREADS=1 python benchmarks/parity.py --official-dir /tmp/fql-official --make-venv
  python benchmarks/parity.py --official-dir /tmp/fql-official --dry-run     # print the commands only
  python benchmarks/parity.py --report-only --work-dir /tmp/parity-work      # table + plot from finished runs
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# The official implementation of each script: repository, pinned commit, its agent config file.
OFFICIAL = {
    "fql": dict(repo="https://github.com/seohongpark/fql", commit="719d04417cb0b206deddbc7d761b3e710c3d750c",
                agent_config="agents/fql.py"),
}
# The official venv: the versions the runs in docs/parity.md used (jax/flax/distrax/ml_collections as the
# official requirements.txt asks, ogbench 1.1.0 and gymnasium 0.29.1 and numpy 1.26.4 pinned there; mujoco
# the same version as in requirements.txt of this repo, so that both sides simulate with the same physics).
OFFICIAL_VENV_PINS = [
    "jax==0.5.0", "jaxlib==0.5.0", "flax==0.10.2", "optax==0.2.4", "distrax==0.1.5", "chex==0.1.90",
    "tensorflow-probability==0.25.0", "ml_collections==1.1.0", "absl-py==2.5.1", "ogbench==1.1.0",
    "gymnasium==0.29.1", "mujoco==4.0.0", "numpy==1.26.4", "wandb==0.31.0", "tqdm", "matplotlib", "pillow",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
              "MUJOCO_GL": "egl", "WANDB_MODE": "disabled"}

# Written to the work dir and run with the official checkout as the working directory (see the docstring).
DRIVER = '''"""flowrl benchmarks/parity.py driver for the official code (not part of it): no wandb, 1-episode eval at step 1."""
import os, sys, time
sys.path.insert(0, os.getcwd())
import main as official_main
import wandb
from absl import app

official_main.setup_wandb = lambda project="project", group=None, name=None, **kwargs: wandb.init(
    mode="disabled", project=project, group=group, name=name)
_evaluate, _calls = official_main.evaluate, [0]


def evaluate(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] == 1:  # main.py's evaluation at i == 1, of the untrained policy: 1 episode (row not used)
        kwargs["num_eval_episodes"] = 1
    return _evaluate(*args, **kwargs)


official_main.evaluate = evaluate
if __name__ == "__main__":
    app.run(official_main.main)
'''


class ArgumentError(ValueError):
    """Bad input: one line, exit 1."""


def paper_settings(script: str, task: str) -> dict:
    """The paper's per-task hyper-parameters (alpha, discount, q_agg), from the script's own table."""
    sys.path.insert(0, str(ROOT))
    module = __import__(script)
    resolved = module.resolve_task_settings(module.Args(env_id=task))
    return dict(alpha=resolved.alpha, gamma=resolved.gamma, q_agg=resolved.q_agg)


def dataset_of(task: str) -> str:
    """cube-single-play-singletask-task2-v0 -> cube-single-play-v0 (the file the singletask names read)."""
    m = re.fullmatch(r"(.+)-singletask(?:-task\d)?-(v\d+)", task)
    if not m:
        raise ArgumentError(f"--task {task!r} is not an OGBench singletask name (e.g. cube-single-play-singletask-task2-v0)")
    return f"{m.group(1)}-{m.group(2)}"


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def official_command(a, seed: int, settings: dict, python: str, driver: Path, save_dir: Path) -> list:
    dims = "(" + ",".join([str(a.hidden_dim)] * a.num_layers) + ")"
    return [python, str(driver), f"--env_name={a.task}", f"--seed={seed}", f"--save_dir={save_dir}",
            f"--run_group=parity", f"--offline_steps={a.total_steps}", f"--log_interval={a.log_every}",
            f"--eval_interval={a.eval_every}", f"--eval_episodes={a.eval_episodes}", "--video_episodes=0",
            f"--agent={official_dir(a) / OFFICIAL[a.script]['agent_config']}",
            f"--agent.actor_hidden_dims={dims}", f"--agent.value_hidden_dims={dims}",
            f"--agent.alpha={settings['alpha']}", f"--agent.discount={settings['gamma']}",
            f"--agent.q_agg={settings['q_agg']}"]


def ours_command(a, seed: int, settings: dict) -> list:
    return [sys.executable, str(ROOT / f"{a.script}.py"), "--env-id", a.task, "--ogbench-dataset-dir", str(a.data_dir),
            "--seed", str(seed), "--total-steps", str(a.total_steps), "--hidden-dim", str(a.hidden_dim),
            "--num-layers", str(a.num_layers), "--eval-freq", str(a.eval_every), "--eval-episodes", str(a.eval_episodes),
            "--log-freq", str(a.log_every), "--no-eval-bc-flow", "--no-cuda", "--alpha", str(settings["alpha"]),
            "--gamma", str(settings["gamma"]), "--q-agg", settings["q_agg"]]


def official_dir(a) -> Path:
    """The checkout (a placeholder where only finished runs or the CSV are read)."""
    return Path(a.official_dir or "OFFICIAL_DIR")


def jobs_for(a, settings: dict) -> list:
    """One dict per run; official and ours of a seed next to each other (they run at the same time)."""
    work = Path(a.work_dir)
    driver = work / "official_driver.py"
    jobs = []
    for seed in a.seeds:
        for side in ("official", "ours"):
            run_dir = work / f"{side}_seed{seed}"
            if side == "official":
                cmd = official_command(a, seed, settings, str(Path(a.official_venv) / "bin" / "python"), driver, run_dir)
                env = dict(ONE_THREAD, HOME=str(work / "home"), PYTHONNOUSERSITE="1")
                cwd = official_dir(a)
            else:
                cmd, env, cwd = ours_command(a, seed, settings), dict(ONE_THREAD), run_dir
            jobs.append(dict(side=side, seed=seed, cmd=cmd, env=env, cwd=cwd, run_dir=run_dir))
    return jobs


# ---------------------------------------------------------------------------------------------
# Parsing the runs' output
# ---------------------------------------------------------------------------------------------
def interval_rates(log_steps: list, seconds_per_update: list, eval_steps: set) -> list:
    """Updates/s of each logging interval, without the first (jit compile, warm-up) and without those that
    follow an evaluation (both codes log, then evaluate, at a step that is a multiple of both intervals)."""
    rates, previous = [], None
    for step, spu in zip(log_steps, seconds_per_update):
        if previous is not None and previous not in eval_steps and spu > 0:
            rates.append(1.0 / spu)
        previous = step
    return rates


def parse_official(run_dir: Path) -> dict:
    """eval.csv and train.csv that the official main.py writes under save_dir/<project>/<group>/<exp>/."""
    evals = glob.glob(str(run_dir / "**" / "eval.csv"), recursive=True)
    if len(evals) != 1:
        raise RuntimeError(f"expected one eval.csv under {run_dir}, found {len(evals)}")
    folder = Path(evals[0]).parent
    with open(folder / "eval.csv") as f:
        curve = [(int(float(r["step"])), float(r["evaluation/success"])) for r in csv.DictReader(f)]
    curve = [(s, v) for s, v in curve if s != 1]  # the 1-episode evaluation of the untrained policy
    with open(folder / "train.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(float(r["step"])) for r in rows]
    spu = [float(r["time/epoch_time"]) for r in rows]
    return dict(curve=curve, rates=interval_rates(steps, spu, {s for s, _ in curve}))


EVAL_LINE = re.compile(r"^step (\d+): (.*)$")
LOG_LINE = re.compile(r"^step (\d+)/\d+ sps=([0-9.eE+-]+)")


def parse_ours(log_text: str) -> dict:
    """The plain-text log of fql.py (stdout not a terminal): 'step N/T sps=...' and 'step N: success=...'."""
    curve, steps, spu = [], [], []
    for line in log_text.splitlines():
        m = EVAL_LINE.match(line.strip())
        if m:
            fields = dict(kv.split("=") for kv in m.group(2).split(", "))
            curve.append((int(m.group(1)), float(fields["success"])))
            continue
        m = LOG_LINE.match(line.strip())
        if m:
            steps.append(int(m.group(1)))
            spu.append(1.0 / float(m.group(2)) if float(m.group(2)) > 0 else 0.0)
    if not curve:
        raise RuntimeError("no evaluation line in the log")
    return dict(curve=curve, rates=interval_rates(steps, spu, {s for s, _ in curve}))


# ---------------------------------------------------------------------------------------------
# Statistics and outputs
# ---------------------------------------------------------------------------------------------
def mean_std(values: list) -> tuple:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def seed_difference(official: list, ours: list, floor: float) -> dict:
    """The parity test of two sides' final scores (one per seed): means, stds over seeds (ddof 1), the difference
    ours - official, its standard error sqrt(s_o^2/n_o + s_u^2/n_u), and pass when |diff| <= max(floor, 2 SE).
    Shared by this file (floor 0.05 success) and parity_fpmd.py (floor 5% of the official mean return)."""
    (mo, so), (mu, su) = mean_std(official), mean_std(ours)
    diff = mu - mo
    se = math.sqrt(so ** 2 / len(official) + su ** 2 / len(ours))
    tolerance = max(floor, 2 * se)
    return dict(official_mean=mo, official_std=so, ours_mean=mu, ours_std=su, diff=diff, se=se, tolerance=tolerance,
                passed=abs(diff) <= tolerance)


def summarize(final: dict, rates: dict) -> dict:
    """final/rates: side -> list over seeds: seed_difference with the floor 0.05, plus each side's updates/s."""
    if len(final["official"]) < 2 or len(final["ours"]) < 2:
        raise ValueError("at least 2 seeds per side are needed for a standard error")
    out = seed_difference(final["official"], final["ours"], 0.05)
    out.update(n_official=len(final["official"]), n_ours=len(final["ours"]))
    for side in ("official", "ours"):
        out[f"{side}_ups_mean"], out[f"{side}_ups_std"] = mean_std(rates[side]) if rates[side] else (float("nan"),) * 2
    return out


def table_row(script: str, task: str, s: dict) -> str:
    verdict = "pass" if s["passed"] else "FAIL"
    return (f"| {script} | {task} | {s['official_mean']:.3f} ± {s['official_std']:.3f} | {s['ours_mean']:.3f} ± "
            f"{s['ours_std']:.3f} | {s['diff']:+.3f} ± {s['se']:.3f} | {verdict} (tol. {s['tolerance']:.3f}) | "
            f"{s['official_ups_mean']:.1f} ± {s['official_ups_std']:.1f} | {s['ours_ups_mean']:.1f} ± {s['ours_ups_std']:.1f} |")


TABLE_HEADER = ("| script | task | official success | ours success | ours − official ± SE | |diff| ≤ max(0.05, 2 SE) "
                "| official updates/s | ours updates/s |\n|---|---|---|---|---|---|---|---|")


def write_csv(path: Path, results: list) -> None:
    """One row per evaluation of every run, then one 'run' row per run (updates/s, CPU seconds)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "side", "seed", "step", "success", "updates_per_s", "cpu_s"])
        for r in results:
            for step, success in r["curve"]:
                w.writerow(["eval", r["side"], r["seed"], step, f"{success:.4f}", "", ""])
        for r in results:
            ups = sum(r["rates"]) / len(r["rates"]) if r["rates"] else float("nan")
            w.writerow(["run", r["side"], r["seed"], r["curve"][-1][0], "", f"{ups:.2f}", f"{r.get('cpu_s', float('nan')):.1f}"])


def read_csv(path: Path) -> list:
    runs = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            r = runs.setdefault((row["side"], int(row["seed"])), dict(side=row["side"], seed=int(row["seed"]), curve=[], rates=[]))
            if row["kind"] == "eval":
                r["curve"].append((int(row["step"]), float(row["success"])))
            else:
                r["rates"], r["cpu_s"] = [float(row["updates_per_s"])], float(row["cpu_s"])
    return list(runs.values())


def plot(path: Path, results: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for side, color, label in (("official", "tab:blue", "official (JAX)"), ("ours", "tab:orange", "flowrl (PyTorch)")):
        runs = [r for r in results if r["side"] == side]
        steps = sorted({s for r in runs for s, _ in r["curve"]})
        values = np.array([[dict(r["curve"])[s] for s in steps] for r in runs])
        mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
        ax.plot(steps, mean, "o-", color=color, label=f"{label}, {len(runs)} seeds")
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(a, results: list) -> str:
    seeds = len({r["seed"] for r in results})
    return (f"{a.script}.py vs official, {a.task}\n{a.hidden_dim}x{a.num_layers} MLPs, {a.num_episodes} train episodes, "
            f"{a.eval_episodes} eval episodes, mean ± std over {seeds} seeds")


def report(a, results: list) -> dict:
    final = {side: [r["curve"][-1][1] for r in results if r["side"] == side] for side in ("official", "ours")}
    rates = {side: [sum(r["rates"]) / len(r["rates"]) for r in results if r["side"] == side and r["rates"]]
             for side in ("official", "ours")}
    s = summarize(final, rates)
    print(TABLE_HEADER)
    print(table_row(a.script, a.task, s))
    return s


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def check_args(a) -> None:
    if a.script not in OFFICIAL:
        raise ArgumentError(f"--script {a.script}: only {', '.join(OFFICIAL)} is wired to its official code (docs/parity.md)")
    dataset_of(a.task)
    for name in ("total_steps", "hidden_dim", "num_layers", "eval_every", "eval_episodes", "log_every", "jobs",
                 "num_episodes", "val_episodes"):
        if getattr(a, name) < 1:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if len(a.seeds) < 2 or len(set(a.seeds)) != len(a.seeds):
        raise ArgumentError(f"--seeds needs at least 2 distinct seeds (3 for a claim), got {a.seeds}")
    if a.total_steps % a.eval_every or a.eval_every % a.log_every:
        raise ArgumentError("--total-steps must be a multiple of --eval-every, and --eval-every of --log-every "
                            "(both codes then evaluate at the same steps)")
    if a.report_only or a.plot_only:
        return
    official = Path(a.official_dir) if a.official_dir else None
    if official is None or not (official / "main.py").is_file() or not (official / OFFICIAL[a.script]["agent_config"]).is_file():
        raise ArgumentError(f"--official-dir {a.official_dir!r} is not a checkout of {OFFICIAL[a.script]['repo']} "
                            f"(no main.py / {OFFICIAL[a.script]['agent_config']}); clone it as in docs/parity.md")


def checkout_commit(official_dir: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(official_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ensure_venv(a) -> None:
    python = Path(a.official_venv) / "bin" / "python"
    probe = "import jax, flax, distrax, optax, ml_collections, ogbench, wandb, absl"
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return
    if not a.make_venv:
        raise ArgumentError(f"--official-venv {a.official_venv} is not a working venv for the official code; "
                            f"add --make-venv to create it (pip, {len(OFFICIAL_VENV_PINS)} pinned packages)")
    print(f"creating {a.official_venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", a.official_venv], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *OFFICIAL_VENV_PINS], check=True)
    subprocess.run([str(python), "-c", probe], check=True)


def ensure_data(a) -> None:
    name = dataset_of(a.task)
    train, val = Path(a.data_dir) / f"{name}.npz", Path(a.data_dir) / f"{name}-val.npz"
    if train.exists() and val.exists():
        import numpy as np

        episodes = int(np.load(train)["terminals"].sum())
        if episodes != a.num_episodes:
            raise ArgumentError(f"{train} holds {episodes} episodes, not --num-episodes {a.num_episodes}; "
                                "point --data-dir elsewhere")
        return
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ogbench_data.py"), "--dataset", name,
                    "--num-episodes", str(a.num_episodes), "--val-episodes", str(a.val_episodes), "--seed", str(a.data_seed),
                    "--out", str(a.data_dir), "--workers", str(a.jobs)], check=True)


def run_config(a, settings: dict) -> dict:
    """Everything a finished run depends on; a work dir holds runs of one configuration only."""
    keys = ("script", "task", "total_steps", "hidden_dim", "num_layers", "eval_every", "eval_episodes", "log_every",
            "num_episodes", "val_episodes", "data_seed", "data_dir")
    return dict({k: getattr(a, k) for k in keys}, **settings)


def check_work_dir(work: Path, config: dict) -> None:
    """Finished runs are reused (resume); refuse a work dir whose runs had other settings."""
    path = work / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != config:
            changed = ", ".join(f"{k}: {old.get(k)} -> {config.get(k)}" for k in sorted(set(old) | set(config))
                                if old.get(k) != config.get(k))
            raise ArgumentError(f"--work-dir {work} holds runs made with other settings ({changed}); use another one")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))


def result_of(job: dict) -> dict:
    if job["side"] == "official":
        parsed = parse_official(job["run_dir"])
    else:
        parsed = parse_ours((job["run_dir"] / "log.txt").read_text())
    return dict(side=job["side"], seed=job["seed"], **parsed)


def run_jobs(jobs: list, n_parallel: int) -> None:
    """At most n_parallel runs at a time, in the order given; a run whose done.json exists is skipped (resume)."""
    pending = [j for j in jobs if not (j["run_dir"] / "done.json").exists()]
    running = {}
    while pending or running:
        while pending and len(running) < n_parallel:
            job = pending.pop(0)
            job["run_dir"].mkdir(parents=True, exist_ok=True)
            log = open(job["run_dir"] / "log.txt", "w")
            env = dict(os.environ, **job["env"])
            print(f"[{time.strftime('%H:%M:%S')}] start {job['side']} seed {job['seed']}: {shlex.join(job['cmd'])}", flush=True)
            proc = subprocess.Popen(job["cmd"], cwd=job["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (proc, job, log, time.time())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        proc, job, log, t0 = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if proc.returncode != 0:
            raise RuntimeError(f"{job['side']} seed {job['seed']} exited {proc.returncode}; see {job['run_dir'] / 'log.txt'}")
        result = result_of(job)
        result.update(cpu_s=usage.ru_utime + usage.ru_stime, wall_s=time.time() - t0)
        (job["run_dir"] / "done.json").write_text(json.dumps(result))
        print(f"[{time.strftime('%H:%M:%S')}] done {job['side']} seed {job['seed']}: final success "
              f"{result['curve'][-1][1]:.3f}, cpu {result['cpu_s']:.0f} s, wall {result['wall_s']:.0f} s", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--script", default="fql", help="the flowrl script (only fql is wired so far)")
    p.add_argument("--task", default="cube-single-play-singletask-task2-v0", help="OGBench singletask name")
    p.add_argument("--official-dir", default=None, help="a checkout of the official code at the pinned commit")
    p.add_argument("--official-venv", default=os.path.expanduser("~/.cache/flowrl/parity-venv"),
                   help="the official code's venv (outside the repo); reused when it works")
    p.add_argument("--make-venv", action="store_true", help="create --official-venv with the pinned versions if needed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, the same on both sides")
    p.add_argument("--total-steps", type=int, default=10_000, help="offline gradient steps of every run (paper: 1M)")
    p.add_argument("--hidden-dim", type=int, default=128, help="width of every MLP, both sides (paper: 512)")
    p.add_argument("--num-layers", type=int, default=2, help="hidden layers of every MLP, both sides (paper: 4)")
    p.add_argument("--eval-every", type=int, default=5_000, help="evaluate every this many steps (and at the end)")
    p.add_argument("--eval-episodes", type=int, default=50, help="episodes per evaluation, both sides")
    p.add_argument("--log-every", type=int, default=1000, help="throughput/loss logging interval, both sides")
    p.add_argument("--num-episodes", type=int, default=200, help="training episodes of the generated dataset")
    p.add_argument("--val-episodes", type=int, default=10, help="validation episodes of the generated dataset")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    p.add_argument("--data-dir", default="/tmp/parity-data", help="where the generated dataset is (made when missing)")
    p.add_argument("--work-dir", default="/tmp/parity-work", help="runs, logs, the official code's HOME")
    p.add_argument("--results-dir", default=str(RESULTS), help="where the CSV and PNG are written")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (an official run and ours of one seed)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report-only", action="store_true", help="table and plot from the finished runs in --work-dir")
    p.add_argument("--plot-only", action="store_true", help="table and plot from the CSV in --results-dir (no runs needed)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    check_args(a)
    a.data_dir, a.work_dir = os.path.abspath(os.path.expanduser(a.data_dir)), os.path.abspath(os.path.expanduser(a.work_dir))
    settings = paper_settings(a.script, a.task)
    jobs = jobs_for(a, settings)
    stem = f"parity_{a.script}_{a.task}"
    if a.dry_run:
        for job in jobs:
            print(f"# {job['side']} seed {job['seed']} (cwd {job['cwd']})\n{shlex.join(job['cmd'])}")
        return {}
    out = Path(a.results_dir)
    if a.plot_only:
        if not (out / f"{stem}.csv").is_file():
            raise ArgumentError(f"no {out / stem}.csv to plot; run without --plot-only first")
        results = read_csv(out / f"{stem}.csv")
        plot(out / f"{stem}.png", results, plot_title(a, results))
        return report(a, results)
    if not a.report_only:
        commit = checkout_commit(Path(a.official_dir))
        if commit != OFFICIAL[a.script]["commit"]:
            print(f"warning: {a.official_dir} is at {commit}, not the pinned {OFFICIAL[a.script]['commit'][:7]}", flush=True)
        ensure_venv(a)
        ensure_data(a)
        work = Path(a.work_dir)
        check_work_dir(work, run_config(a, settings))
        (work / "home" / ".ogbench").mkdir(parents=True, exist_ok=True)
        link = work / "home" / ".ogbench" / "data"
        if link.is_symlink() and os.readlink(link) != a.data_dir:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(a.data_dir, target_is_directory=True)
        (work / "official_driver.py").write_text(DRIVER)
        t0 = time.time()
        run_jobs(jobs, a.jobs)
        print(f"all runs done in {time.time() - t0:.0f} s of wall time", flush=True)
    missing = [str(j["run_dir"]) for j in jobs if not (j["run_dir"] / "done.json").exists()]
    if missing:
        raise ArgumentError(f"no finished run in {', '.join(missing)}")
    results = [json.loads((j["run_dir"] / "done.json").read_text()) for j in jobs]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{stem}.csv", results)
    plot(out / f"{stem}.png", results, plot_title(a, results))
    summary = report(a, results)
    cpu = sum(r.get("cpu_s", 0.0) for r in results)
    print(f"CPU time of the runs: {cpu / 60:.1f} core-minutes; wrote {out / stem}.csv and .png")
    return summary


if __name__ == "__main__":
    try:
        main()
    except ArgumentError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
