"""Inference latency per action of fpmd.py's policies vs a Gaussian MLP policy (docs/studies/fpmd_latency.csv).

Batch 1, observation in numpy -> action in numpy (what an environment loop pays), Hopper-v5 sizes
(obs 11, action 3), the paper's 3x256 Mish MLPs. Rows:
  * Gaussian MLP policy, same width/depth/activation: tanh(mean + std * eps), one network call (SAC-style);
  * FPMD-R / FPMD-M 1 NFE: fpmd.OneStepActor (one flow step, no best-of-N: the paper's inference claim);
  * FPMD-R 20 NFE: 20 Euler steps of the same network (the official training-time step count), no best-of-N;
  * FPMD-R training-time sampler: best-of-32 particles x 20 Euler steps + twin critics (what acts while training).
The policies are timed round-robin (each round times `--calls` consecutive calls of every policy), and
the median over rounds is reported, so a background load hits all rows alike.

  python benchmarks/fpmd_latency.py                 # CPU, 1 thread
  python benchmarks/fpmd_latency.py --device cuda   # GPU, when available
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fpmd  # noqa: E402

OBS_DIM, ACT_DIM, HIDDEN, LAYERS = 11, 3, 256, 3


class GaussianPolicy(nn.Module):
    """SAC-style Gaussian MLP of the same width, depth and activation: a = tanh(mu + sigma * eps)."""

    def __init__(self):
        super().__init__()
        self.net = fpmd.mlp(OBS_DIM, HIDDEN, LAYERS, 2 * ACT_DIM)

    @torch.inference_mode()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return torch.randn_like(mean).mul_(log_std.clamp_(-5.0, 2.0).exp_()).add_(mean).tanh_()


def make_policies(device: torch.device) -> dict:
    torch.manual_seed(0)
    rf = fpmd.FlowPolicy(OBS_DIM, ACT_DIM, HIDDEN, LAYERS, 1).to(device)
    mf = fpmd.FlowPolicy(OBS_DIM, ACT_DIM, HIDDEN, LAYERS, 2).to(device)
    critic = fpmd.Critic(OBS_DIM, ACT_DIM, HIDDEN, LAYERS).to(device)
    gaussian = GaussianPolicy().to(device)
    rf_1nfe, mf_1nfe = fpmd.OneStepActor(rf, "rf", 0.5), fpmd.OneStepActor(mf, "mf", 0.5)

    @torch.inference_mode()
    def rf_20nfe(obs):
        z = torch.randn(obs.shape[0], ACT_DIM, device=device).mul_(0.5)
        return fpmd.rf_sample(rf, obs, z, 20).clamp_(-1.0, 1.0)

    @torch.inference_mode()
    def rf_training_sampler(obs):
        return fpmd.best_of_n_action(rf, critic, obs, "rf", 20, 32, 0.5, None)

    return {"Gaussian MLP policy (1 network call)": (gaussian.act, 1),
            "FPMD-R, 1 NFE (OneStepActor)": (rf_1nfe.act, 1),
            "FPMD-M, 1 NFE (OneStepActor)": (mf_1nfe.act, 1),
            "FPMD-R, 20 NFE (Euler, no best-of-N)": (rf_20nfe, 20),
            "FPMD-R training sampler (best-of-32 x 20 NFE + critics)": (rf_training_sampler, 20)}


def timed(fn, obs_np: np.ndarray, device: torch.device, calls: int) -> float:
    """Mean seconds per action over `calls` calls: numpy obs -> tensor -> policy -> numpy action."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(torch.as_tensor(obs_np, device=device)).cpu().numpy()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200, help="calls per policy per round (20 NFE rows: calls // 10)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "studies" / "fpmd_latency.csv"))
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    device = torch.device(cli.device)
    policies = make_policies(device)
    obs = np.random.default_rng(0).standard_normal((1, OBS_DIM)).astype(np.float32)
    for fn, _ in policies.values():  # warm-up
        timed(fn, obs, device, 20)
    samples = {name: [] for name in policies}
    for _ in range(cli.rounds):
        for name, (fn, nfe) in policies.items():
            samples[name].append(timed(fn, obs, device, max(cli.calls // (10 if nfe > 1 else 1), 5)))
    median = {name: float(np.median(s)) for name, s in samples.items()}
    base = median["Gaussian MLP policy (1 network call)"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {cli.threads} thread(s)"
    rows = [(name, policies[name][1], median[name] * 1e6, median[name] / base) for name in policies]
    print(f"| policy ({device_name}, batch 1) | NFE | us / action | x Gaussian |\n|---|---|---|---|")
    for name, nfe, us, ratio in rows:
        print(f"| {name} | {nfe} | {us:.0f} | {ratio:.2f} |")
    Path(cli.out).parent.mkdir(parents=True, exist_ok=True)
    with open(cli.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device", "policy", "nfe", "us_per_action", "ratio_to_gaussian"])
        for name, nfe, us, ratio in rows:
            w.writerow([device_name, name, nfe, round(us, 1), round(ratio, 3)])


if __name__ == "__main__":
    main()
