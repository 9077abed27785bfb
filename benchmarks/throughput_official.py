"""Updates/s of the official JAX FQL or QAM agent, timed the way benchmarks/throughput.py times our scripts.

Run by benchmarks/throughput.py in the official code's Python (its `--official-python`), never imported by it:
this file needs jax, flax, optax, ml_collections and distrax (+ tensorflow-probability for QAM), not torch.

What is timed: the official agent's own jitted `agent.update(batch)` (agents/fql.py FQLAgent.update of
seohongpark/fql @719d044; agents/qam.py QAMAgent.update of ColinQiyangLi/qam @f93efd2), built by the agent's own
`create` from its own `get_config()`, with only the network size, the batch size and (QAM) the action chunk changed
on the command line. It is called on batches of the shape the official main.py feeds it (FQL: `Dataset.sample`,
QAM: `Dataset.sample_sequence` with the chunk length), filled with random numbers: 8 batches made once on the
device and cycled, so host-side sampling is not in the time (our scripts' figures include their on-device
sampling). Updates run in intervals of --log-freq; each interval ends with `jax.block_until_ready` on the agent
and the returned info, as our figures end each interval with a device sync. The first interval (it holds the jit
compilation) is the warm-up; the rate is the median of the later ones.

Output: one JSON object written to --result (rates per interval, warm-up, peak device memory, versions).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path

AGENTS = {"fql": ("agents.fql", "FQLAgent"), "qam": ("agents.qam", "QAMAgent")}


def load_agent(official_dir: Path, name: str):
    """The agent class and get_config of the official checkout. agents/__init__.py imports every agent of the
    repository (and their extra dependencies), so the package is registered without running it and only the one
    module is imported; the official files themselves are used unchanged."""
    sys.path.insert(0, str(official_dir))
    package = types.ModuleType("agents")
    package.__path__ = [str(official_dir / "agents")]
    sys.modules["agents"] = package
    module_name, class_name = AGENTS[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name), module.get_config


def make_batch(rng, name: str, config, obs_dim: int, action_dim: int):
    """One batch of the shape the official main.py passes to agent.update (random contents)."""
    import numpy as np

    b = config["batch_size"]
    f32 = np.float32
    if name == "fql":  # utils/datasets.py Dataset.sample(batch_size)
        return dict(observations=rng.standard_normal((b, obs_dim), dtype=f32),
                    actions=rng.uniform(-1, 1, (b, action_dim)).astype(f32),
                    rewards=rng.standard_normal(b, dtype=f32), masks=np.ones(b, f32), terminals=np.zeros(b, f32),
                    next_observations=rng.standard_normal((b, obs_dim), dtype=f32))
    h = config["horizon_length"]  # utils/datasets.py Dataset.sample_sequence(batch_size, sequence_length=h, ...)
    return dict(observations=rng.standard_normal((b, obs_dim), dtype=f32),
                actions=rng.uniform(-1, 1, (b, h, action_dim)).astype(f32),
                rewards=rng.standard_normal((b, h), dtype=f32), masks=np.ones((b, h), f32),
                terminals=np.zeros((b, h), f32), valid=np.ones((b, h), f32),
                next_observations=rng.standard_normal((b, h, obs_dim), dtype=f32))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agent", choices=list(AGENTS), required=True)
    p.add_argument("--official-dir", type=Path, required=True, help="checkout of seohongpark/fql (fql) or ColinQiyangLi/qam (qam)")
    p.add_argument("--obs-dim", type=int, required=True)
    p.add_argument("--action-dim", type=int, required=True)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--horizon-length", type=int, default=5, help="QAM: action chunk length (main.py's --horizon_length)")
    p.add_argument("--log-freq", type=int, default=50, help="updates per timed interval")
    p.add_argument("--measure-s", type=float, default=8.0, help="time the intervals after the warm-up for this long")
    p.add_argument("--min-intervals", type=int, default=3)
    p.add_argument("--max-intervals", type=int, default=1000)
    p.add_argument("--result", type=Path, required=True)
    a = p.parse_args()
    if not (a.official_dir / "agents" / f"{a.agent}.py").is_file():
        print(f"error: --official-dir {a.official_dir} has no agents/{a.agent}.py (a checkout of the official code?)", file=sys.stderr)
        return 1

    import jax
    import numpy as np

    agent_class, get_config = load_agent(a.official_dir.resolve(), a.agent)
    config = get_config()
    dims = (a.hidden_dim,) * a.num_layers
    config["actor_hidden_dims"], config["value_hidden_dims"], config["batch_size"] = dims, dims, a.batch_size
    if a.agent == "qam":  # as experiments/reproduce.py runs QAM on the manipulation tasks: chunks of 5, 10 critics
        config["horizon_length"], config["action_chunking"] = a.horizon_length, True
    rng = np.random.default_rng(0)
    example = make_batch(rng, a.agent, config, a.obs_dim, a.action_dim)
    if a.agent == "fql":  # main.py: train_dataset.sample(1)
        ex_obs, ex_act = example["observations"][:1], example["actions"][:1]
    else:  # main.py: train_dataset.sample(()), one unbatched transition
        ex_obs, ex_act = example["observations"][0], example["actions"][0, 0]
    agent = agent_class.create(0, ex_obs, ex_act, config)
    batches = [jax.device_put(make_batch(rng, a.agent, config, a.obs_dim, a.action_dim)) for _ in range(8)]

    rates, seconds, i = [], [], 0
    t_first = None
    measure_start = None
    while True:
        t0 = time.perf_counter()
        for _ in range(a.log_freq):
            agent, info = agent.update(batches[i % len(batches)])
            i += 1
            if t_first is None:
                jax.block_until_ready((agent, info))
                t_first = time.perf_counter() - t0
        jax.block_until_ready((agent, info))
        dt = time.perf_counter() - t0
        rates.append(a.log_freq / dt)
        seconds.append(dt)
        if measure_start is None:
            measure_start = time.perf_counter()
        n = len(rates) - 1
        if n >= a.max_intervals or (n >= a.min_intervals and time.perf_counter() - measure_start >= a.measure_s):
            break
    losses = {k: float(v) for k, v in info.items() if "loss" in k}
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    peak = (stats or {}).get("peak_bytes_in_use")
    import flax
    import optax

    result = dict(rates=rates, seconds=seconds, log_freq=a.log_freq, first_update_s=t_first,
                  peak_device_mem_mb=None if peak is None else peak / 2**20, finite=bool(np.all(np.isfinite(list(losses.values())))),
                  device=getattr(device, "device_kind", str(device)), platform=device.platform,
                  versions=f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}",
                  config=dict(hidden=f"{a.hidden_dim}x{a.num_layers}", batch_size=config["batch_size"],
                              flow_steps=config["flow_steps"], critics=config.get("num_qs", 2),
                              horizon=config.get("horizon_length") if a.agent == "qam" else 1,
                              obs_dim=a.obs_dim, action_dim=a.action_dim))
    a.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
