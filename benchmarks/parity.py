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
     rule |diff| <= max(0.05, 2 SE), updates/s per side. A pair too costly for one sitting runs a seed or a few
     per invocation (--seeds 0), each writing its CSV and .json; one with fewer than 2 seeds per side prints its
     per-seed finals and no verdict, and a later invocation counts the earlier CSVs with --add-csv.

Supported pairs: fql (seohongpark/fql @719d044), qam (ColinQiyangLi/qam @f93efd2), gfp (the GFP release,
ZhangJL16/FQLbaseline @49f6b17); OFFICIAL holds each one's commit and the files a checkout must have.

What is done to the official FQL, all outside its files (docs/parity.md, "Patches"):
  * it is started through a driver written to the work dir, which imports its main.py and replaces
    `setup_wandb` by `wandb.init(mode='disabled')` (wandb >= 0.19 rejects the official
    Settings(start_method=...); no logging service is reachable anyway);
  * the driver runs the evaluation at step 1 (main.py evaluates at i == 1 as well as every --eval_interval)
    with 1 episode instead of --eval_episodes; that row is not used (the untrained policy; it saved 50
    full-length episodes per run);
  * HOME points at a folder of the work dir whose .ogbench/data is a symlink to the generated data, so that
    the official `ogbench.make_env_and_datasets(env_name)` reads it from its default ~/.ogbench/data.
QAM and GFP get the same HOME; their drivers (QAM_DRIVER, GFP_DRIVER) are listed in docs/parity.md, "QAM and
GFP: wiring": QAM's disables wandb and adds the seconds per update to the rows of offline_agent.csv; GFP's
(wandb is off by its own flag) loads utils/log_utils.py with the quotes of one f-string changed, which Python
< 3.12 cannot parse, and runs main.py unchanged.

Usage:
  git clone https://github.com/seohongpark/fql /tmp/fql-official && git -C /tmp/fql-official checkout 719d044
  OMP_NUM_THREADS=1 python benchmarks/parity.py --official-dir /tmp/fql-official --make-venv
  python benchmarks/parity.py --official-dir /tmp/fql-official --dry-run     # print the commands only
  python benchmarks/parity.py --report-only --work-dir /tmp/parity-work      # table + plot from finished runs
  git clone https://github.com/ColinQiyangLi/qam /tmp/qam-official && git -C /tmp/qam-official checkout f93efd2
  python benchmarks/parity.py --script qam --official-dir /tmp/qam-official        # work dir /tmp/parity-work-qam
  git clone https://github.com/ZhangJL16/FQLbaseline /tmp/gfp-official && git -C /tmp/gfp-official checkout 49f6b17
  python benchmarks/parity.py --script gfp --official-dir /tmp/gfp-official        # work dir /tmp/parity-work-gfp
  python benchmarks/parity.py --all /tmp/official --make-venv   # every pair of docs/parity.md, then FPMD (parity_fpmd.py):
      # /tmp/official holds the clones fql, qam, FQLbaseline, rectified_flow_policy at the pinned commits
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

# The official implementation of each script: repository, pinned commit, its agent config file, the files a
# checkout must have, the key of the success rate in our script's evaluation line.
OFFICIAL = {
    "fql": dict(repo="https://github.com/seohongpark/fql", commit="719d04417cb0b206deddbc7d761b3e710c3d750c",
                agent_config="agents/fql.py", files=("main.py", "agents/fql.py"), success_key="success"),
    "qam": dict(repo="https://github.com/ColinQiyangLi/qam", commit="f93efd22520a79f6819f458dffe9c075eacc786f",
                agent_config="agents/qam.py", files=("main.py", "agents/qam.py"), success_key="success"),
    # GFP: the release commit, kept in the fork ZhangJL16/FQLbaseline; main.py is a Hydra app
    "gfp": dict(repo="https://github.com/ZhangJL16/FQLbaseline", commit="49f6b171f30e70d8289f63b9c88a474bf64a9e81",
                agent_config="config/agent/gfp.yaml", files=("main.py", "agents/gfp.py", "config/agent/gfp.yaml"),
                success_key="actor_success"),
}
GFP_FUSED_STEPS = 4  # the release's main.py does n_steps_fused (config/main.yaml: 4) updates per jit call and skips
# logging and evaluation at the steps in between, so steps, logging and evaluation must be multiples of it
# The official venv: the versions the runs in docs/parity.md used (jax/flax/distrax/ml_collections as the
# official requirements.txt asks, ogbench 1.1.0 and gymnasium 0.29.1 and numpy 1.26.4 pinned there; mujoco
# the same version as in requirements.txt of this repo, so that both sides simulate with the same physics).
# The GFP release's main.py is a Hydra app: hydra-core (its requirements.txt, unpinned there) and its omegaconf.
# One venv serves the three official codes (GFP's requirements.txt asks jax >= 0.6.2; it runs on 0.5.0).
OFFICIAL_VENV_PINS = [
    "jax==0.5.0", "jaxlib==0.5.0", "flax==0.10.2", "optax==0.2.4", "distrax==0.1.5", "chex==0.1.90",
    "tensorflow-probability==0.25.0", "ml_collections==1.1.0", "absl-py==2.5.1", "ogbench==1.1.0",
    "gymnasium==0.29.1", "mujoco==4.0.0", "numpy==1.26.4", "wandb==0.31.0", "tqdm", "matplotlib", "pillow",
    "hydra-core==1.3.8", "omegaconf==2.3.1",
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

# QAM (ColinQiyangLi/qam): run with the checkout as the working directory, its main.py unchanged.
QAM_DRIVER = '''"""flowrl benchmarks/parity.py driver for the official QAM (not part of it): no wandb, seconds per update logged."""
import os, sys, time, types
sys.path.insert(0, os.getcwd())
import main as official_main
import wandb
from absl import app, flags


def setup_wandb(project="project", group=None, name=None, **kwargs):
    wandb.init(mode="disabled", project=project, group=group, name=name)  # main.py reads wandb.run.project
    return types.SimpleNamespace(url="wandb disabled")  # main.py writes run.url to token.tk (None when disabled)


class LoggingHelper(official_main.LoggingHelper):
    """Adds time/epoch_time (wall seconds per update since the previous log, as FQL's main.py logs it)."""

    def log(self, data, prefix, step):
        if prefix == "offline_agent":
            now = time.time()
            data = dict(data, **{"time/epoch_time": (now - self.last_time) / flags.FLAGS.log_interval})
            self.last_time = now
        return super().log(data, prefix, step)


official_main.setup_wandb = setup_wandb
official_main.LoggingHelper = LoggingHelper
if __name__ == "__main__":
    app.run(official_main.main)
'''

# GFP (the release, a Hydra app): wandb is off by its own flag (log_on_wandb=false); its main.py runs unchanged.
GFP_DRIVER = '''"""flowrl benchmarks/parity.py driver for the official GFP release (not part of it): Python 3.11."""
import importlib.util, os, runpy, sys
sys.path.insert(0, os.getcwd())
# utils/log_utils.py:36 nests double quotes in a double-quoted f-string (PEP 701, Python >= 3.12; the release's
# README uses 3.12): load the module with those inner quotes single, nothing else changed
path, old = os.path.join(os.getcwd(), "utils", "log_utils.py"), \'strftime("%Y%m%d_%H%M%S")\'
source = open(path).read()
if source.count(old) != 1:
    sys.exit("parity driver: utils/log_utils.py is not the one of the pinned GFP release")
import utils
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("utils.log_utils", loader=None, origin=path))
module.__file__ = path
exec(compile(source.replace(old, "strftime(\'%Y%m%d_%H%M%S\')"), path, "exec"), module.__dict__)
sys.modules["utils.log_utils"] = utils.log_utils = module
sys.argv[0] = os.path.join(os.getcwd(), "main.py")
runpy.run_path(sys.argv[0], run_name="__main__")  # as `python main.py ...`: Hydra finds config/ next to it
'''
DRIVERS = {"fql": DRIVER, "qam": QAM_DRIVER, "gfp": GFP_DRIVER}


class ArgumentError(ValueError):
    """Bad input: one line, exit 1."""


# The per-task hyper-parameters passed explicitly to both sides, as the script resolves them for --task.
SETTING_FIELDS = {
    "fql": ("alpha", "gamma", "q_agg"),
    # QAM: the paper has no cube-single row; qam.py then takes the official get_config()/main.py defaults
    "qam": ("inv_temp", "gamma", "rho", "horizon_length", "sparse"),
    "gfp": ("batch_size", "gamma", "flow_steps", "q_agg", "target_agg", "guidance_agg", "alpha", "eta"),
}


def paper_settings(script: str, task: str) -> dict:
    """The paper's per-task hyper-parameters (SETTING_FIELDS), from the script's own table."""
    sys.path.insert(0, str(ROOT))
    module = __import__(script)
    args = module.Args(env_id=task, variant="qam") if script == "qam" else module.Args(env_id=task)
    resolved = module.resolve_task_settings(args)
    return {k: getattr(resolved, k) for k in SETTING_FIELDS[script]}


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
    if a.script == "qam":
        return official_command_qam(a, seed, settings, python, driver, save_dir)
    if a.script == "gfp":
        return official_command_gfp(a, seed, settings, python, driver, save_dir)
    dims = "(" + ",".join([str(a.hidden_dim)] * a.num_layers) + ")"
    return [python, str(driver), f"--env_name={a.task}", f"--seed={seed}", f"--save_dir={save_dir}",
            f"--run_group=parity", f"--offline_steps={a.total_steps}", f"--log_interval={a.log_every}",
            f"--eval_interval={a.eval_every}", f"--eval_episodes={a.eval_episodes}", "--video_episodes=0",
            f"--agent={official_dir(a) / OFFICIAL[a.script]['agent_config']}",
            f"--agent.actor_hidden_dims={dims}", f"--agent.value_hidden_dims={dims}",
            f"--agent.alpha={settings['alpha']}", f"--agent.discount={settings['gamma']}",
            f"--agent.q_agg={settings['q_agg']}"]


QAM_FIXED = dict(num_qs=10, batch_size=256, flow_steps=10, best_of_n=1)  # reproduce.py's base_kwargs / get_config()


def official_command_qam(a, seed: int, settings: dict, python: str, driver: Path, save_dir: Path) -> list:
    """ColinQiyangLi/qam main.py (absl flags): offline only, no checkpoints, plain QAM (fql_alpha = edit_scale = 0)."""
    dims = "(" + ",".join([str(a.hidden_dim)] * a.num_layers) + ")"
    return [python, str(driver), f"--env_name={a.task}", f"--seed={seed}", f"--save_dir={save_dir}",
            "--run_group=parity", f"--offline_steps={a.total_steps}", "--online_steps=0", f"--log_interval={a.log_every}",
            f"--eval_interval={a.eval_every}", f"--eval_episodes={a.eval_episodes}", "--video_episodes=0",
            "--save_interval=0", f"--horizon_length={settings['horizon_length']}", f"--sparse={settings['sparse']}",
            f"--agent={official_dir(a) / OFFICIAL['qam']['agent_config']}",
            f"--agent.actor_hidden_dims={dims}", f"--agent.value_hidden_dims={dims}", "--agent.action_chunking=True",
            f"--agent.inv_temp={settings['inv_temp']}", f"--agent.discount={settings['gamma']}",
            f"--agent.rho={settings['rho']}", "--agent.fql_alpha=0.0", "--agent.edit_scale=0.0",
            *(f"--agent.{k}={v}" for k, v in QAM_FIXED.items())]


def official_command_gfp(a, seed: int, settings: dict, python: str, driver: Path, save_dir: Path) -> list:
    """The GFP release's main.py (Hydra overrides): wandb off, serial evaluation of the actor only, no checkpoints.
    Every agent.* value is given, so none comes from its hyperparams/gfp_params.csv (main.py keeps CLI values)."""
    dims = "[" + ",".join([str(a.hidden_dim)] * a.num_layers) + "]"
    return [python, str(driver), f"env_name={a.task}", "agent=gfp", f"seed={seed}", f"save_dir={save_dir}",
            f"hydra.run.dir={save_dir}/hydra", "hydra.output_subdir=null", "is_final=false",
            f"offline_steps={a.total_steps}", "online_steps=0", f"log_interval={a.log_every}",
            f"eval_interval={a.eval_every}", f"eval_episodes={a.eval_episodes}", "video_episodes=0", "n_eval_envs=1",
            "eval_flow_policy=false", "log_on_wandb=false", "log_locally=true", "save_interval=0",
            "dataset_on_gpu=true", f"n_steps_fused={GFP_FUSED_STEPS}",
            f"agent.actor_hidden_dims={dims}", f"agent.value_hidden_dims={dims}",
            f"agent.batch_size={settings['batch_size']}", f"agent.discount={settings['gamma']}",
            f"agent.flow_steps={settings['flow_steps']}", f"agent.q_agg={settings['q_agg']}",
            f"agent.target_agg={settings['target_agg']}", f"agent.guidance_agg={settings['guidance_agg']}",
            f"agent.alpha={settings['alpha']}", f"agent.eta_temperature={settings['eta']}"]


def ours_command(a, seed: int, settings: dict) -> list:
    common = [sys.executable, str(ROOT / f"{a.script}.py"), "--env-id", a.task, "--ogbench-dataset-dir", str(a.data_dir),
              "--seed", str(seed), "--total-steps", str(a.total_steps), "--hidden-dim", str(a.hidden_dim),
              "--num-layers", str(a.num_layers), "--eval-freq", str(a.eval_every), "--eval-episodes", str(a.eval_episodes),
              "--log-freq", str(a.log_every), "--no-cuda", "--gamma", str(settings["gamma"])]
    if a.script == "qam":
        return common + ["--no-eval-bc-flow", "--variant", "qam", "--inv-temp", str(settings["inv_temp"]),
                         "--rho", str(settings["rho"]), "--horizon-length", str(settings["horizon_length"]),
                         "--sparse", str(settings["sparse"]), "--action-chunking", "--num-critics", str(QAM_FIXED["num_qs"]),
                         "--batch-size", str(QAM_FIXED["batch_size"]), "--flow-steps", str(QAM_FIXED["flow_steps"]),
                         "--best-of-n", str(QAM_FIXED["best_of_n"])]
    if a.script == "gfp":
        return common + ["--no-eval-flow", "--batch-size", str(settings["batch_size"]), "--flow-steps",
                         str(settings["flow_steps"]), "--q-agg", settings["q_agg"], "--target-agg", settings["target_agg"],
                         "--guidance-agg", settings["guidance_agg"], "--alpha", str(settings["alpha"]),
                         "--eta", str(settings["eta"])]
    return common + ["--no-eval-bc-flow", "--alpha", str(settings["alpha"]), "--q-agg", settings["q_agg"]]


def official_dir(a) -> Path:
    """The checkout (a placeholder where only finished runs or the CSV are read)."""
    return Path(a.official_dir or "OFFICIAL_DIR")


def driver_path(a) -> Path:
    return Path(a.work_dir) / ("official_driver.py" if a.script == "fql" else f"official_driver_{a.script}.py")


def jobs_for(a, settings: dict) -> list:
    """One dict per run; official and ours of a seed next to each other (they run at the same time)."""
    work = Path(a.work_dir)
    driver = driver_path(a)
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
            jobs.append(dict(side=side, seed=seed, cmd=cmd, env=env, cwd=cwd, run_dir=run_dir, script=a.script))
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


def official_folder(run_dir: Path) -> Path:
    """The folder of the one eval.csv that the official main.py wrote somewhere under its save_dir."""
    evals = glob.glob(str(run_dir / "**" / "eval.csv"), recursive=True)
    if len(evals) != 1:
        raise RuntimeError(f"expected one eval.csv under {run_dir}, found {len(evals)}")
    return Path(evals[0]).parent


def parse_official(run_dir: Path, script: str = "fql") -> dict:
    """The official run's files: FQL's eval.csv and train.csv under save_dir/<project>/<group>/<exp>/ (QAM, GFP:
    parse_official_qam, parse_official_gfp)."""
    if script == "qam":
        return parse_official_qam(run_dir)
    if script == "gfp":
        return parse_official_gfp(run_dir)
    # the 1-episode evaluation at step 1 is of the untrained policy (DRIVER)
    return parse_epoch_logs(run_dir, "evaluation/success", "train.csv", skip_steps={1})


def parse_official_qam(run_dir: Path) -> dict:
    """QAM main.py: save_dir/qam-reproduce/<group>/<env>/<hash>/eval.csv ('success', 'step'; evaluations every
    --eval_interval and at the end only) and offline_agent.csv, whose time/epoch_time the driver adds."""
    return parse_epoch_logs(run_dir, "success", "offline_agent.csv")


def parse_epoch_logs(run_dir: Path, success_key: str, train_file: str, skip_steps: frozenset = frozenset()) -> dict:
    """eval.csv (success per step, without skip_steps) and a training csv with 'step' and 'time/epoch_time' (seconds
    per update of each logging interval), both in the one output folder under run_dir (official FQL and QAM)."""
    folder = official_folder(run_dir)
    with open(folder / "eval.csv") as f:
        curve = [(int(float(r["step"])), float(r[success_key])) for r in csv.DictReader(f)]
    curve = [(s, v) for s, v in curve if s not in skip_steps]
    with open(folder / train_file) as f:
        rows = list(csv.DictReader(f))
    steps = [int(float(r["step"])) for r in rows]
    spu = [float(r["time/epoch_time"]) for r in rows]
    return dict(curve=curve, rates=interval_rates(steps, spu, {s for s, _ in curve}), q=q_curve(rows))


# the critic's mean Q on the training batch of each logged step: FQL's and GFP's train.csv, QAM's offline_agent.csv
Q_COLUMNS = ("training/critic/q_mean", "critic/q_mean")


def q_curve(rows: list) -> list:
    """(step, mean Q of the critic on that step's batch) of an official training csv; [] without such a column."""
    column = next((c for c in Q_COLUMNS if rows and c in rows[0]), None)
    return [(int(float(r["step"])), float(r[column])) for r in rows] if column else []


def parse_official_gfp(run_dir: Path) -> dict:
    """GFP main.py: save_dir/gfp_<env>/date_<time>_seed_<seed>/eval.csv ('Actor/success', 'step'; its success.csv
    has no step column) and train.csv, whose time/total_time (wall seconds since the start of the loop) gives the
    seconds per update of each logging interval."""
    folder = official_folder(run_dir)
    with open(folder / "eval.csv") as f:
        curve = [(int(float(r["step"])), float(r["Actor/success"])) for r in csv.DictReader(f)]
    with open(folder / "train.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(float(r["step"])) for r in rows]
    total = [float(r["time/total_time"]) for r in rows]
    spu = [(t - t0) / (s - s0) for (s0, t0), (s, t) in zip([(0, 0.0)] + list(zip(steps, total)), zip(steps, total))]
    return dict(curve=curve, rates=interval_rates(steps, spu, {s for s, _ in curve}), q=q_curve(rows))


EVAL_LINE = re.compile(r"^step (\d+): (.*)$")
LOG_LINE = re.compile(r"^step (\d+)/\d+ sps=([0-9.eE+-]+)")
Q_FIELD = re.compile(r" q=([-0-9.eE+]+|nan|inf)")  # the critic's mean Q on the step's batch, in every script's log line


def parse_ours(log_text: str, success_key: str = "success") -> dict:
    """The plain-text log of our script (stdout not a terminal): 'step N/T sps=...' and 'step N: success=...'
    (gfp.py: 'step N: actor_success=...'); the log line's q= is the critic's mean Q on that step's batch."""
    curve, steps, spu, q = [], [], [], []
    for line in log_text.splitlines():
        m = EVAL_LINE.match(line.strip())
        if m:
            fields = dict(kv.split("=") for kv in m.group(2).split(", "))
            curve.append((int(m.group(1)), float(fields[success_key])))
            continue
        m = LOG_LINE.match(line.strip())
        if m:
            steps.append(int(m.group(1)))
            spu.append(1.0 / float(m.group(2)) if float(m.group(2)) > 0 else 0.0)
            mq = Q_FIELD.search(line)
            if mq:
                q.append((steps[-1], float(mq.group(1))))
    if not curve:
        raise RuntimeError("no evaluation line in the log")
    return dict(curve=curve, rates=interval_rates(steps, spu, {s for s, _ in curve}), q=q)


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
    """One row per evaluation of every run, then one 'run' row per run (updates/s, CPU seconds), then one 'q' row per
    logged step of every run (the critic's mean Q on that step's batch)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "side", "seed", "step", "success", "updates_per_s", "cpu_s", "q_mean"])
        for r in results:
            for step, success in r["curve"]:
                w.writerow(["eval", r["side"], r["seed"], step, f"{success:.4f}", "", "", ""])
        for r in results:
            ups = sum(r["rates"]) / len(r["rates"]) if r["rates"] else float("nan")
            w.writerow(["run", r["side"], r["seed"], r["curve"][-1][0], "", f"{ups:.2f}",
                        f"{r.get('cpu_s', float('nan')):.1f}", ""])
        for r in results:
            for step, q in r.get("q", []):
                w.writerow(["q", r["side"], r["seed"], step, "", "", "", f"{q:.6g}"])


def read_csv(path: Path) -> list:
    runs = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            r = runs.setdefault((row["side"], int(row["seed"])),
                                dict(side=row["side"], seed=int(row["seed"]), curve=[], rates=[], q=[]))
            if row["kind"] == "eval":
                r["curve"].append((int(row["step"]), float(row["success"])))
            elif row["kind"] == "q":  # CSVs written before the q rows existed have none
                r["q"].append((int(row["step"]), float(row["q_mean"])))
            else:
                ups = float(row["updates_per_s"])  # nan: a run without a throughput measurement (write_csv)
                r["rates"], r["cpu_s"] = ([] if math.isnan(ups) else [ups]), float(row["cpu_s"])
    return list(runs.values())


def write_config(path: Path, config: dict, results: list) -> None:
    """The settings a CSV's runs were made with, beside it (<stem>.json), so that --add-csv can check them."""
    seeds = sorted({r["seed"] for r in results})
    path.write_text(json.dumps(dict(comparable(config), seeds=seeds), indent=1))


def comparable(config: dict) -> dict:
    """run_config without where the data is: the generated dataset is a function of its name, sizes and seed."""
    return {k: v for k, v in config.items() if k != "data_dir"}


def added_runs(a, config: dict, results: list) -> list:
    """--add-csv: the runs of earlier CSVs of the same pair and settings. A CSV without its .json, with other settings,
    or with a (side, seed) already counted, is refused: seeds run apart are only comparable at equal settings."""
    added, have, config = [], {(r["side"], r["seed"]) for r in results}, comparable(config)
    for name in a.add_csv:
        path = Path(os.path.expanduser(name))
        meta = path.with_suffix(".json")
        if not path.is_file() or not meta.is_file():
            raise ArgumentError(f"--add-csv {name}: needs the CSV and the .json beside it that parity.py writes")
        old = {k: v for k, v in json.loads(meta.read_text()).items() if k != "seeds"}
        if old != config:
            raise ArgumentError(f"--add-csv {name} was made with other settings ({changes(old, config, 'here')})")
        for r in read_csv(path):
            if (r["side"], r["seed"]) in have:
                raise ArgumentError(f"--add-csv {name}: {r['side']} seed {r['seed']} is already counted")
            have.add((r["side"], r["seed"]))
            added.append(r)
    return added


def plot(path: Path, results: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with_q = q_steps(results)  # a second panel: the critic's mean Q, where both sides logged it
    fig, axes = plt.subplots(1, 2 if with_q else 1, figsize=(11, 3.8) if with_q else (5.5, 3.6), squeeze=False)
    panels = [(axes[0, 0], "curve", "success rate", "o-")] + ([(axes[0, 1], "q", "critic mean Q (training batch)", "-")]
                                                              if with_q else [])
    for ax, key, ylabel, style in panels:
        for side, color, label in (("official", "tab:blue", "official (JAX)"), ("ours", "tab:orange", "flowrl (PyTorch)")):
            runs = [r for r in results if r["side"] == side]
            steps = sorted({s for r in runs for s, _ in r["curve"]}) if key == "curve" else with_q
            values = np.array([[dict(r[key])[s] for s in steps] for r in runs])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, style, color=color, label=f"{label}, {len(runs)} seeds")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylim(-0.02, 1.02)
    fig.suptitle(title, fontsize=9) if with_q else axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(a, results: list) -> str:
    seeds = len({r["seed"] for r in results})
    return (f"{a.script}.py vs official, {a.task}\n{a.hidden_dim}x{a.num_layers} MLPs, {a.num_episodes} train episodes, "
            f"{a.eval_episodes} eval episodes, mean ± std over {seeds} seeds")


def q_steps(results: list) -> list:
    """The steps at which every run of both sides logged its critic's mean Q ([] when a run has none)."""
    if not results or not all(r.get("q") for r in results):
        return []
    return sorted(set.intersection(*[{s for s, _ in r["q"]} for r in results]))


def q_summary(results: list) -> dict:
    """The critic's mean Q on the training batch at the last step logged by every run: mean +- std over seeds per
    side. Success near 0 or 1 says little; the value the critics learn is a second, denser comparison."""
    steps = q_steps(results)
    if not steps:
        return {}
    out = dict(q_step=steps[-1])
    for side in ("official", "ours"):
        out[f"{side}_q_mean"], out[f"{side}_q_std"] = mean_std([dict(r["q"])[steps[-1]] for r in results
                                                                if r["side"] == side])
    return out


def report(a, results: list) -> dict:
    final = {side: [r["curve"][-1][1] for r in results if r["side"] == side] for side in ("official", "ours")}
    rates = {side: [sum(r["rates"]) / len(r["rates"]) for r in results if r["side"] == side and r["rates"]]
             for side in ("official", "ours")}
    if min(len(final["official"]), len(final["ours"])) < 2:  # no standard error yet: the runs, no verdict
        print(f"{a.script} on {a.task}, final success per seed: official {final['official']}, ours {final['ours']}; no "
              f"verdict: the test needs >= 2 seeds per side (3 for a claim): run more and count these with --add-csv")
        return dict(official_final=final["official"], ours_final=final["ours"])
    s = summarize(final, rates)
    print(TABLE_HEADER)
    print(table_row(a.script, a.task, s))
    s.update(q_summary(results))
    if "q_step" in s:
        print(f"critic mean Q on the training batch at step {s['q_step']}: official {s['official_q_mean']:.2f} ± "
              f"{s['official_q_std']:.2f}, ours {s['ours_q_mean']:.2f} ± {s['ours_q_std']:.2f}")
    return s


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def check_args(a) -> None:
    if a.script not in OFFICIAL:
        raise ArgumentError(f"--script {a.script}: only {', '.join(OFFICIAL)} are wired to their official code (docs/parity.md)")
    dataset_of(a.task)
    for name in ("total_steps", "hidden_dim", "num_layers", "eval_every", "eval_episodes", "log_every", "jobs",
                 "num_episodes", "val_episodes"):
        if getattr(a, name) < 1:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if len(set(a.seeds)) != len(a.seeds):  # one seed runs (a session's share of a pair); the verdict waits for 2+ per side
        raise ArgumentError(f"--seeds must be distinct, got {a.seeds}")
    if a.total_steps % a.eval_every or a.eval_every % a.log_every:
        raise ArgumentError("--total-steps must be a multiple of --eval-every, and --eval-every of --log-every "
                            "(both codes then evaluate at the same steps)")
    if a.script == "gfp" and a.log_every % GFP_FUSED_STEPS:
        raise ArgumentError(f"--log-every must be a multiple of {GFP_FUSED_STEPS} for gfp (the official main.py does "
                            f"{GFP_FUSED_STEPS} updates per call and logs and evaluates only between calls)")
    if a.report_only or a.plot_only:
        return
    official = Path(a.official_dir) if a.official_dir else None
    files = OFFICIAL[a.script]["files"]
    if official is None or not all((official / f).is_file() for f in files):
        raise ArgumentError(f"--official-dir {a.official_dir!r} is not a checkout of {OFFICIAL[a.script]['repo']} "
                            f"(no {' / '.join(files)}); clone it as in docs/parity.md")


def checkout_commit(official_dir: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(official_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ensure_venv(a) -> None:
    python = Path(a.official_venv) / "bin" / "python"
    probe = "import jax, flax, distrax, optax, ml_collections, ogbench, wandb, absl" + (", hydra, omegaconf" if a.script == "gfp" else "")
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return
    if not a.make_venv:
        raise ArgumentError(f"--official-venv {a.official_venv} is not a working venv for the official code; "
                            f"add --make-venv to create it (pip, {len(OFFICIAL_VENV_PINS)} pinned packages)")
    print(f"creating {a.official_venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", a.official_venv], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *OFFICIAL_VENV_PINS], check=True)
    subprocess.run([str(python), "-c", probe], check=True)


def ogbench_home(work: Path, data_dir: str) -> Path:
    """<work>/home, whose .ogbench/data is a symlink to `data_dir`: the official codes' HOME, so that ogbench's default
    ~/.ogbench/data is the generated data (also used by parity_step.py)."""
    link = work / "home" / ".ogbench" / "data"
    link.parent.mkdir(parents=True, exist_ok=True)
    target = str(Path(data_dir).expanduser().resolve())
    if link.is_symlink() and os.readlink(link) != target:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    return work / "home"


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


def changes(old: dict, new: dict, sep: str) -> str:
    """The settings that differ, as `key: old <sep> new, ...` (for the one-line refusals)."""
    return ", ".join(f"{k}: {old.get(k)} {sep} {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def check_work_dir(work: Path, config: dict) -> None:
    """Finished runs are reused (resume); refuse a work dir whose runs had other settings."""
    path = work / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != config:
            raise ArgumentError(f"--work-dir {work} holds runs made with other settings ({changes(old, config, '->')}); "
                                "use another one")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))


def result_of(job: dict) -> dict:
    if job["side"] == "official":
        parsed = parse_official(job["run_dir"], job["script"])
    else:
        parsed = parse_ours((job["run_dir"] / "log.txt").read_text(), OFFICIAL[job["script"]]["success_key"])
    return dict(side=job["side"], seed=job["seed"], **parsed)


def finished_run(job: dict) -> dict:
    """A run's done.json; one written before the Q curves were recorded gets its Q curve from the run's own files."""
    result = json.loads((job["run_dir"] / "done.json").read_text())
    if "q" not in result:
        try:
            result["q"] = result_of(job)["q"]
        except (OSError, RuntimeError, KeyError, ValueError):  # the run's logs are gone: no Q curve
            result["q"] = []
    return result


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


# Every pair of docs/parity.md, for --all ROOT: (script, task, the clone's folder name under ROOT, as the clone commands
# of docs/parity.md name it), each at this file's defaults; then FPMD (parity_fpmd.py, its own official code and venv).
ALL_PAIRS = [("fql", "cube-single-play-singletask-task2-v0", "fql"),
             ("qam", "cube-single-play-singletask-task2-v0", "qam"),
             ("gfp", "cube-single-play-singletask-task2-v0", "FQLbaseline")]
FPMD_CLONE = "rectified_flow_policy"
FPMD_FLAGS = ["--seeds", "1", "2", "3", "4", "--steps", "35000", "--throughput", "--reuse"]  # the runs of docs/parity.md


def run_all(a) -> dict:
    """--all ROOT: every pair of ALL_PAIRS at the defaults (each in its own default work dir), then FPMD."""
    root = Path(os.path.expanduser(a.all)).resolve()
    clones = [root / folder for _, _, folder in ALL_PAIRS] + [root / FPMD_CLONE]
    missing = [str(c) for c in clones if not c.is_dir()]
    if missing:
        raise ArgumentError(f"--all {a.all}: no checkout {', '.join(missing)}; clone them there as in docs/parity.md")
    passed = (["--make-venv"] if a.make_venv else []) + ["--official-venv", a.official_venv, "--jobs", str(a.jobs),
                                                         "--data-dir", a.data_dir, "--results-dir", a.results_dir]
    summaries, t0 = {}, time.time()
    for script, task, folder in ALL_PAIRS:
        print(f"== {script} on {task}", flush=True)
        summaries[(script, task)] = main(["--script", script, "--task", task, "--official-dir", str(root / folder),
                                          *passed, *(["--dry-run"] if a.dry_run else [])])
    fpmd = ["--official-dir", str(root / FPMD_CLONE), *FPMD_FLAGS, "--jobs", str(a.jobs), "--results-dir", a.results_dir]
    print(f"== fpmd: python benchmarks/parity_fpmd.py {shlex.join(fpmd)}", flush=True)
    if not a.dry_run:
        import parity_fpmd  # noqa: PLC0415  (it imports this file; only --all needs it)

        if parity_fpmd.main(fpmd) != 0:
            raise ArgumentError("parity_fpmd.py failed (its error is printed above)")
        print(f"--all done in {time.time() - t0:.0f} s of wall time", flush=True)
    return summaries


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--all", metavar="ROOT", default=None,
                   help="every pair of docs/parity.md at the defaults, then FPMD: ROOT holds the clones "
                        f"{', '.join(f for _, _, f in ALL_PAIRS)} and {FPMD_CLONE} made as docs/parity.md says")
    p.add_argument("--script", default="fql", help="the flowrl script: fql, qam or gfp")
    p.add_argument("--task", default="cube-single-play-singletask-task2-v0", help="OGBench singletask name")
    p.add_argument("--official-dir", default=None, help="a checkout of the official code at the pinned commit")
    p.add_argument("--official-venv", default=os.path.expanduser("~/.cache/flowrl/parity-venv"),
                   help="the official code's venv (outside the repo); reused when it works")
    p.add_argument("--make-venv", action="store_true", help="create --official-venv with the pinned versions if needed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, the same on both sides")
    p.add_argument("--total-steps", type=int, default=40_000, help="offline gradient steps of every run (paper: 1M)")
    p.add_argument("--hidden-dim", type=int, default=128, help="width of every MLP, both sides (paper: 512)")
    p.add_argument("--num-layers", type=int, default=2, help="hidden layers of every MLP, both sides (paper: 4)")
    p.add_argument("--eval-every", type=int, default=20_000, help="evaluate every this many steps (and at the end)")
    p.add_argument("--eval-episodes", type=int, default=100, help="episodes per evaluation, both sides")
    p.add_argument("--log-every", type=int, default=1000, help="throughput/loss logging interval, both sides")
    p.add_argument("--num-episodes", type=int, default=200, help="training episodes of the generated dataset")
    p.add_argument("--val-episodes", type=int, default=10, help="validation episodes of the generated dataset")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    p.add_argument("--data-dir", default="/tmp/parity-data", help="where the generated dataset is (made when missing)")
    p.add_argument("--work-dir", default=None,
                   help="runs, logs, the official code's HOME (default /tmp/parity-work for fql, /tmp/parity-work-<script> else)")
    p.add_argument("--results-dir", default=str(RESULTS), help="where the CSV and PNG are written")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (an official run and ours of one seed)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report-only", action="store_true", help="table and plot from the finished runs in --work-dir")
    p.add_argument("--plot-only", action="store_true", help="table and plot from the CSV in --results-dir (no runs needed)")
    p.add_argument("--add-csv", nargs="+", default=[], metavar="CSV",
                   help="also count the runs of these earlier CSVs of this pair (other seeds, e.g. run in another session "
                        "or on another machine); each must have been written with the same settings (its .json beside it)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.all is not None:
        return run_all(a)
    if a.work_dir is None:
        a.work_dir = "/tmp/parity-work" if a.script == "fql" else f"/tmp/parity-work-{a.script}"
    check_args(a)
    a.data_dir, a.work_dir = os.path.abspath(os.path.expanduser(a.data_dir)), os.path.abspath(os.path.expanduser(a.work_dir))
    settings = paper_settings(a.script, a.task)
    config = run_config(a, settings)
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
        results += added_runs(a, config, results)
        plot(out / f"{stem}.png", results, plot_title(a, results))
        return report(a, results)
    if not a.report_only:
        commit = checkout_commit(Path(a.official_dir))
        if commit != OFFICIAL[a.script]["commit"]:
            print(f"warning: {a.official_dir} is at {commit}, not the pinned {OFFICIAL[a.script]['commit'][:7]}", flush=True)
        ensure_venv(a)
        ensure_data(a)
        work = Path(a.work_dir)
        check_work_dir(work, config)
        ogbench_home(work, a.data_dir)
        driver_path(a).write_text(DRIVERS[a.script])
        t0 = time.time()
        run_jobs(jobs, a.jobs)
        print(f"all runs done in {time.time() - t0:.0f} s of wall time", flush=True)
    missing = [str(j["run_dir"]) for j in jobs if not (j["run_dir"] / "done.json").exists()]
    if missing:
        raise ArgumentError(f"no finished run in {', '.join(missing)}")
    results = [finished_run(j) for j in jobs]
    results += added_runs(a, config, results)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{stem}.csv", results)
    write_config(out / f"{stem}.json", config, results)
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
