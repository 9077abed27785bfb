"""fql.py trained on an official FQL run's own random numbers: its initial weights, batches and noise (issue 18).

parity_step.py shows that one update of fql.py is the official one to float32 rounding, given the same weights,
batch and noise. Whole runs of the two codes still end apart on scene task1 (docs/parity.md), and each side draws
its own random numbers (numpy and JAX there, torch here), so two runs of one seed share nothing. This tool removes
that difference for a whole run: it recomputes, for a seed, every random number the official `main.py` (run by
benchmarks/parity.py's driver) uses in training, and trains fql.py's own `main` on them:

  * the initial weights: `FQLAgent.create(seed, ...)`, as main.py makes the agent (they depend on the seed only),
    written as an fql.py checkpoint at step 0 (benchmarks/parity_swap.py's conversion, Adam's moments zero);
  * the batch indices: numpy's global RNG after `np.random.seed(seed)`, drawn in main.py's order: the example
    batch `train_dataset.sample(1)`, then per update `sample(batch_size)`, a validation batch at every
    `--log-interval`, one `np.random.randint(0, 2**32)` per evaluation (utils/evaluation.py's key; at step 1
    and every `--eval-interval`);
  * the noise of every update: the agent's PRNG key split as `update` -> `total_loss` -> `critic_loss` /
    `sample_actions` / `actor_loss` do (the order parity_step.py checks), per update.

fql.py's `main` then runs unchanged but for two replaced draws: `ReplayBuffer.sample` returns the official indices
of the update, and `torch.randn` / `torch.rand_like` (without a `generator`) return the update's recorded noise
in fql.py's order of draws. Evaluation keeps fql.py's own seeded episodes. `--own-draws` leaves any of the three
parts (init, batches, noise) to fql.py's own torch generator (seeded by --seed as fql.py seeds it), to find which
part of the random numbers an outcome follows; with all three it is fql.py's own run, bit for bit. With
`--official-train-csv` (the official run of the same seed, with the same settings) it prints, at each logged step,
fql.py's losses beside the official run's and their relative difference.

Usage (after benchmarks/parity.py has made the data and the official venv):
  python benchmarks/parity_stream.py --official-dir /tmp/fql-official --seed 3 --total-steps 60000 \
      --official-train-csv <official run>/train.csv
  python benchmarks/parity_stream.py --official-dir /tmp/fql-official --seed 3 --own-draws batches noise
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the algorithm scripts are top-level files
sys.path.insert(0, str(ROOT / "benchmarks"))
from parity_step import (CheckError, OFFICIAL_NOISE, ONE_THREAD_JAX, add_official_args, add_run_args,  # noqa: E402
                         check_official, load_data, recorded_noise, run_official)
from parity_swap import OFFICIAL_STATE, official_to_checkpoint  # noqa: E402

STREAM_DRIVER = r'''
"""flowrl benchmarks/parity_stream.py driver for the official FQL (not part of it)."""
import json, os, sys
sys.path.insert(0, os.getcwd())
import flax
import jax
import numpy as np
from agents.fql import FQLAgent, get_config
from envs.env_utils import make_env_and_datasets
from utils.datasets import Dataset, get_size

a = json.loads(sys.argv[1])
_, _, train, val = make_env_and_datasets(a["task"])  # main.py's call; ogbench reads $HOME/.ogbench/data
n_train, n_val = get_size(dict(train)), get_size(dict(val))
config = get_config()
config.actor_hidden_dims = config.value_hidden_dims = (a["hidden_dim"],) * a["num_layers"]
np.random.seed(a["seed"])
example = Dataset.create(**dict(train)).sample(1)  # main.py's example batch: the first draw after the seed
agent = FQLAgent.create(a["seed"], example["observations"], example["actions"], config)
''' + OFFICIAL_STATE + r'''
np.savez(os.path.join(a["out"], "init.npz"), **official_state(agent))

steps, batch = a["steps"], a["batch_size"]
idx = np.lib.format.open_memmap(os.path.join(a["out"], "idx.npy"), "w+", np.int64, (steps, batch))
for i in range(1, steps + 1):  # main.py's loop: sample, update, log (validation batch), evaluate
    idx[i - 1] = np.random.randint(n_train, size=batch)
    if i % a["log_interval"] == 0:
        np.random.randint(n_val, size=batch)
    if a["eval_interval"] != 0 and (i == 1 or i % a["eval_interval"] == 0):
        np.random.randint(0, 2**32)
idx.flush()
shape = (batch, train["actions"].shape[-1])
names = ("next_z", "x_0", "t", "z")


''' + OFFICIAL_NOISE + r'''


@jax.jit
def chunk(rng):
    def body(key, _):
        drawn = noise(key, shape)[1]
        return jax.random.split(key)[0], tuple(drawn[n] for n in names)  # update: new_rng, rng = split(self.rng)
    return jax.lax.scan(body, rng, None, length=a["chunk"])


out = {n: np.lib.format.open_memmap(os.path.join(a["out"], f"{n}.npy"), "w+", np.float32,
                                    (steps, batch, 1 if n == "t" else shape[1])) for n in names}
rng = agent.rng
for start in range(0, steps, a["chunk"]):
    rng, drawn = chunk(rng)
    for n, v in zip(names, drawn):
        out[n][start:start + a["chunk"]] = np.asarray(v)[: steps - start]
for v in out.values():
    v.flush()
print("official streams:", steps, "updates,", n_train, "transitions,", n_val, "validation")
'''

NOISE = ("next_z", "x_0", "t", "z")
PARTS = ("init", "batches", "noise")  # what --own-draws can leave to fql.py's own torch generator


class Streams:
    """The recorded draws, served to fql.py's `main`: ReplayBuffer.sample takes update k's indices, and the next
    torch.randn / torch.rand_like calls without a generator take update k's noise, in fql.py's order of draws.
    `serve` names the parts served ("batches", "noise"); a part not served is drawn by fql.py as usual."""

    def __init__(self, folder: Path, serve=("batches", "noise")):
        self.idx = np.load(folder / "idx.npy", mmap_mode="r")
        self.noise = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in NOISE}
        self.serve = set(serve)
        self.k, self.normal, self.uniform, self.real_sample = 0, [], [], None

    def sample(self, buffer, batch_size: int) -> dict:
        if self.normal or self.uniform:
            raise CheckError(f"update {self.k} drew less noise than the official one")
        if self.k >= len(self.idx) or self.idx.shape[1] != batch_size:
            raise CheckError(f"no recorded batch {self.k + 1} of size {batch_size}")
        if "noise" in self.serve:  # refilled in place: recorded_noise reads these lists
            self.normal[:] = [np.array(self.noise[n][self.k]) for n in ("next_z", "x_0", "z")]
            self.uniform[:] = [np.array(self.noise["t"][self.k])]
        k, self.k = self.k, self.k + 1
        if "batches" not in self.serve:
            return self.real_sample(buffer, batch_size)
        idx = torch.as_tensor(np.array(self.idx[k]))
        return {key: tensor[idx] for key, tensor in buffer.data.items()}

    @contextlib.contextmanager
    def served(self, fql):
        """Inside the block, fql.py's ReplayBuffer.sample and torch.randn / torch.rand_like (parity_step.recorded_noise;
        draws with their own generator, as evaluation's, pass through) serve the recorded draws; restored after it."""
        self.real_sample = fql.ReplayBuffer.sample
        noise = recorded_noise(self.normal, self.uniform, CheckError) if "noise" in self.serve else contextlib.nullcontext()
        fql.ReplayBuffer.sample = lambda buffer, batch_size: self.sample(buffer, batch_size)
        try:
            with noise:
                yield self
        finally:
            fql.ReplayBuffer.sample = self.real_sample


OFFICIAL_KEYS = {"critic_loss": "training/critic/critic_loss", "bc_flow_loss": "training/actor/bc_flow_loss",
                 "distill_loss": "training/actor/distill_loss", "q_loss": "training/actor/q_loss",
                 "q_mean": "training/critic/q_mean"}


def official_log(path: Path) -> dict:
    """step -> {loss name: value} from the official run's train.csv."""
    with open(path) as f:
        return {int(float(r["step"])): {k: float(r[v]) for k, v in OFFICIAL_KEYS.items()} for r in csv.DictReader(f)}


def ours_log(run_dir: Path) -> dict:
    """step -> {loss name: value} from fql.py's TensorBoard file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    out: dict = {}
    for name in OFFICIAL_KEYS:
        for e in ea.Scalars(f"losses/{name}"):
            out.setdefault(e.step, {})[name] = e.value
    return out


def side_by_side(ours: dict, official: dict) -> list:
    """One line per logged step both runs have: each loss of both and the relative difference."""
    lines = ["step   " + "  ".join(f"{n:>30s}" for n in OFFICIAL_KEYS)]
    for step in sorted(set(ours) & set(official)):
        cells = []
        for n in OFFICIAL_KEYS:
            o, u = official[step][n], ours[step][n]
            cells.append(f"{u:9.4g} {o:9.4g} {abs(u - o) / max(abs(o), 1e-12):9.2e}")
        lines.append(f"{step:6d} " + "  ".join(cells))
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(p)
    p.add_argument("--seed", type=int, required=True, help="the official run's --seed")
    p.add_argument("--total-steps", type=int, default=60000, help="the official run's --offline_steps")
    p.add_argument("--log-interval", type=int, default=1000, help="the official run's --log_interval (fql.py logs at it too)")
    p.add_argument("--eval-interval", type=int, default=20000, help="the official run's --eval_interval (fql.py evaluates at it)")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--eval-freq", type=int, help="fql.py's evaluations (default: --eval-interval; the official "
                   "draws follow --eval-interval whatever this is)")
    add_run_args(p)
    p.add_argument("--work-dir", default="/tmp/parity-stream", help="the streams (about 17 kB per update) and fql.py's run")
    p.add_argument("--official-train-csv", help="the official run of this seed (same settings): its losses beside ours")
    p.add_argument("--own-draws", nargs="*", default=[], choices=PARTS,
                   help="parts fql.py draws itself from torch (seeded by --seed) instead of the official run's: the "
                        "initial weights, the batch indices, the update noise")
    a = p.parse_args(argv)
    if min(a.total_steps, a.log_interval, a.batch_size, a.hidden_dim, a.num_layers, a.eval_episodes) < 1 or a.eval_interval < 0:
        raise CheckError("--total-steps, --log-interval, --batch-size, --hidden-dim, --num-layers and --eval-episodes "
                         "must be >= 1, --eval-interval >= 0")
    if a.eval_freq is not None and a.eval_freq < 1:
        raise CheckError("--eval-freq must be >= 1")
    if a.official_train_csv and not Path(a.official_train_csv).is_file():
        raise CheckError(f"--official-train-csv {a.official_train_csv} is not a file")
    check_official(a, "agents/fql.py")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    import fql
    from parity import ogbench_home

    data = load_data(fql, a)
    obs_dim, act_dim = data.transitions["observations"].shape[1], data.transitions["actions"].shape[1]
    work = Path(a.work_dir) / (f"seed{a.seed}" + "".join(f"-own-{part}" for part in PARTS if part in a.own_draws))
    if work.exists():
        raise CheckError(f"{work} exists; give a new --work-dir")
    work.mkdir(parents=True)
    settings = dict(task=a.task, out=str(work.resolve()), seed=a.seed, steps=a.total_steps, batch_size=a.batch_size,
                    hidden_dim=a.hidden_dim, num_layers=a.num_layers, log_interval=a.log_interval,
                    eval_interval=a.eval_interval, chunk=min(a.total_steps, 5000))
    run_official(a, STREAM_DRIVER, "stream_driver.py", settings,
                 dict(ONE_THREAD_JAX, HOME=str(ogbench_home(work, a.data_dir)), MUJOCO_GL="egl"))
    with np.load(work / "init.npz") as f:
        official_to_checkpoint(fql, dict(f), a.task, a.hidden_dim, a.num_layers, obs_dim, act_dim, work / "init.pt")
    streams = Streams(work, [part for part in ("batches", "noise") if part not in a.own_draws])
    os.chdir(work)  # fql.py writes runs/<run> under the working directory
    args = fql.Args(env_id=a.task, ogbench_dataset_dir=a.data_dir, seed=a.seed, total_steps=a.total_steps,
                    batch_size=a.batch_size, hidden_dim=a.hidden_dim, num_layers=a.num_layers, alpha=a.alpha, gamma=a.gamma,
                    q_agg=a.q_agg, log_freq=a.log_interval, eval_freq=a.eval_freq or a.eval_interval or a.total_steps,
                    eval_episodes=a.eval_episodes, eval_bc_flow=False, cuda=False,
                    checkpoint=None if "init" in a.own_draws else str(work / "init.pt"))
    with streams.served(fql):
        result = fql.main(args)
    if streams.k != a.total_steps:
        raise CheckError(f"fql.py took {streams.k} recorded batches, not {a.total_steps}")
    if a.official_train_csv:
        run_dir = next((work / "runs").iterdir())
        print("\n".join(side_by_side(ours_log(run_dir), official_log(Path(a.official_train_csv)))))
    own = f" (its own {', '.join(a.own_draws)})" if a.own_draws else ""
    print(f"fql.py on the official seed-{a.seed} streams{own}, {a.total_steps} updates: "
          + ", ".join(f"{k}={v:.3f}" for k, v in result.items() if isinstance(v, float) and math.isfinite(v)))
    return result


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
