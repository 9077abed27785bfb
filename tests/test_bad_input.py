"""The bad-input contract, one table per script: every bad flag value, file or checkpoint ends the run before
any training with ONE clear line and a non-zero exit, never a traceback and never a silent wrong run.

In process (fast): `main(tyro.cli(Args, args=argv))` must raise one of the script's `USER_ERRORS` (the
exceptions its `__main__` turns into `error: <message>` and exit 1), with a one-line message that contains the
expected text, within a few seconds. One subprocess per script then checks the real command line: exit 1, no
traceback, exactly one stderr line.

Each script owns its block of TABLES (argv, expected substring of the message).
"""

from __future__ import annotations

import time

import pytest
import tyro

from conftest import import_script, run_script

SCRIPTS = ["fql", "gfp", "qam", "decision_flow", "fpmd", "swfp", "streaming_flow", "flow_opt"]
SECONDS = 10.0  # every bad input must be caught before training starts

TABLES: dict[str, list[tuple[list[str], str]]] = {}


# ----------------------------------------------------------------------------------------------------------
# fql
# ----------------------------------------------------------------------------------------------------------
TABLES["fql"] = [
    # negative budgets (the first row is also run through the real command line; unchecked, it trained 17 of 20 steps)
    (["--total-steps", "20", "--online-steps", "-3"], "--online-steps must be >= 0 (got -3)"),
    (["--total-steps", "-3"], "--total-steps must be >= 0 (got -3)"),
    # counts and sizes below 1
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-layers", "0"], "--num-layers must be >= 1 (got 0)"),
    (["--num-layers", "-1"], "--num-layers must be >= 1 (got -1)"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--num-critics", "0"], "--num-critics must be >= 1 (got 0)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--eval-envs", "0"], "--eval-envs must be >= 1 (got 0)"),
    # zero frequencies
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    # learning rate: nan, inf, negative, 0
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "inf"], "--learning-rate must be finite and > 0 (got inf)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    # discount and Polyak rate outside (0, 1]
    (["--gamma", "2"], "--gamma must be in (0, 1] (got 2.0)"),
    (["--gamma", "0"], "--gamma must be in (0, 1] (got 0.0)"),
    (["--gamma", "nan"], "--gamma must be in (0, 1] (got nan)"),
    (["--tau", "-1"], "--tau must be in (0, 1] (got -1.0)"),
    (["--tau", "0"], "--tau must be in (0, 1] (got 0.0)"),
    (["--tau", "1.5"], "--tau must be in (0, 1] (got 1.5)"),
    # the distillation weight: negative or non-finite
    (["--alpha", "-1"], "--alpha must be finite and >= 0 (0: no distillation) (got -1.0)"),
    (["--alpha", "nan"], "--alpha must be finite and >= 0 (0: no distillation) (got nan)"),
    (["--alpha", "inf"], "--alpha must be finite and >= 0 (0: no distillation) (got inf)"),
    # seed, names and paths
    (["--seed", "-1"], "--seed must be in [0, 2**32) (numpy's seed range) (got -1)"),
    (["--seed", "4294967296"], "--seed must be in [0, 2**32)"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty file name without '/' (got 'a/b')"),
    (["--exp-name", ""], "--exp-name must be a non-empty file name without '/' (got '')"),
    (["--env-id", ""], "--env-id must be a dataset"),
    (["--ogbench-dataset-dir", ""], "--ogbench-dataset-dir must be a folder (got '')"),
    (["--checkpoint", ""], "--checkpoint must be a path (got '')"),  # the files: tests/test_fql.py (after the data)
    # the per-task values are resolved first, then checked (D4RL antmaze's row, offline->online: alpha 3, 1M steps)
    (["--env-id", "D4RL/antmaze/large-play-v1", "--online-steps", "-3"], "--online-steps must be >= 0 (got -3)"),
    (["--env-id", "cube-single-play-singletask-task2-v0", "--alpha", "-300"],
     "--alpha must be finite and >= 0 (0: no distillation) (got -300.0)"),
    # CUDA graphs without a CUDA device (--no-cuda here, so that the row holds on a GPU machine too)
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
]


# ----------------------------------------------------------------------------------------------------------
# gfp
# ----------------------------------------------------------------------------------------------------------
TABLES["gfp"] = [
    # negative budgets (the first row is also run through the real command line)
    (["--total-steps", "-3"], "--total-steps must be >= 0 (got -3)"),
    (["--online-steps", "-1"], "--online-steps must be >= 0 (got -1)"),
    # counts and sizes below 1 (or below what the method needs)
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-layers", "0"], "--num-layers must be >= 1 (got 0)"),
    (["--num-layers", "-1"], "--num-layers must be >= 1 (got -1)"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--num-critics", "0"], "--num-critics must be >= 1 (got 0)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--eval-envs", "0"], "--eval-envs must be >= 1 (got 0)"),
    (["--time-emb-dim", "0"], "--time-emb-dim must be even and >= 4"),
    (["--time-emb-dim", "63"], "--time-emb-dim must be even and >= 4 (sin/cos pairs of at least 2 frequencies) (got 63)"),
    # zero frequencies
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    # learning rate: nan, inf, negative, 0
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "inf"], "--learning-rate must be finite and > 0 (got inf)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    # discount and Polyak rate outside (0, 1]
    (["--gamma", "2"], "--gamma must be in (0, 1] (got 2.0)"),
    (["--gamma", "0"], "--gamma must be in (0, 1] (got 0.0)"),
    (["--gamma", "nan"], "--gamma must be in (0, 1] (got nan)"),
    (["--tau", "-1"], "--tau must be in (0, 1] (got -1.0)"),
    (["--tau", "0"], "--tau must be in (0, 1] (got 0.0)"),
    (["--tau", "1.5"], "--tau must be in (0, 1] (got 1.5)"),
    # weights and temperatures: negative or non-finite
    (["--alpha", "-1"], "--alpha must be finite and >= 0 (got -1.0)"),
    (["--alpha", "nan"], "--alpha must be finite and >= 0 (got nan)"),
    (["--eta", "-1"], "--eta must be finite and >= 0 (0: unweighted BC flow) (got -1.0)"),
    (["--eta", "nan"], "--eta must be finite and >= 0 (0: unweighted BC flow) (got nan)"),
    (["--eta", "inf"], "--eta must be finite and >= 0 (0: unweighted BC flow) (got inf)"),
    (["--eta-online", "-0.1", "--online-steps", "10"], "--eta-online must be finite and >= 0 (0: unweighted BC flow) (got -0.1)"),
    (["--eta-online", "nan", "--online-steps", "10"], "--eta-online must be finite and >= 0 (0: unweighted BC flow) (got nan)"),
    # seed, names and paths
    (["--seed", "-1"], "--seed must be in [0, 2**32) (numpy's seed range) (got -1)"),
    (["--seed", "4294967296"], "--seed must be in [0, 2**32)"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty file name without '/' (got 'a/b')"),
    (["--exp-name", ""], "--exp-name must be a non-empty file name without '/' (got '')"),
    (["--env-id", ""], "--env-id must be a dataset"),
    (["--ogbench-dataset-dir", ""], "--ogbench-dataset-dir must be a folder (got '')"),
    (["--checkpoint", ""], "--checkpoint must be a path (got '')"),
    # flags that have no effect together, named together
    (["--target-use-next"], "--target-use-next and --target-agg actor cannot be used together"),
    (["--eta-online", "0.01"], "--eta-online 0.01 and --online-steps 0 cannot be used together"),
    (["--guidance-fn", "advantage", "--eta", "0"], "--guidance-fn advantage and --eta 0 cannot be used together"),
    (["--guidance-fn", "advantage", "--eta", "0", "--online-steps", "10", "--eta-online", "0"],
     "--guidance-fn advantage, --eta 0 and --eta-online 0 cannot be used together"),
    # the per-task values are resolved first, then checked (antmaze-large-navigate's row: --target-agg actor)
    (["--env-id", "antmaze-large-navigate-singletask-task1-v0", "--target-use-next"],
     "--target-use-next and --target-agg actor cannot be used together"),
    (["--env-id", "cube-double-play-singletask-task1-v0", "--batch-size", "-256"], "--batch-size must be >= 1 (got -256)"),
    # CUDA graphs without a CUDA device (--no-cuda here, so that the row holds on a GPU machine too)
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
]


# ----------------------------------------------------------------------------------------------------------
# qam
# ----------------------------------------------------------------------------------------------------------
TABLES["qam"] = [
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    # generic flags
    (["--exp-name", ""], "--exp-name must be a non-empty file name without '/' (got '')"),
    (["--exp-name", "../elsewhere"], "--exp-name must be a non-empty file name without '/'"),
    (["--seed", "-1"], "--seed must be in [0, 429496]"),
    (["--seed", "500000"], "--seed must be in [0, 429496]"),
    (["--seed", "429496", "--eval-episodes", "10000"], "--seed 429496 and --eval-episodes 10000 cannot be used together"),
    (["--env-id", ""], "--env-id must be a dataset folder"),
    (["--checkpoint", ""], "--checkpoint must be a path (got '')"),
    (["--total-steps", "-3"], "--total-steps must be >= 0 (got -3)"),
    (["--online-steps", "-1"], "--online-steps must be >= 0 (got -1)"),
    (["--start-training", "-1"], "--start-training must be >= 0 (got -1)"),
    (["--online-steps", "10", "--start-training", "20"], "--start-training 20 and --online-steps 10 cannot be used together"),
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "inf"], "--learning-rate must be finite and > 0 (got inf)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    (["--max-grad-norm", "nan"], "--max-grad-norm must be finite (<= 0 disables the clip) (got nan)"),
    (["--gamma", "2"], "--gamma must be in (0, 1] (got 2.0)"),
    (["--gamma", "0"], "--gamma must be in (0, 1] (got 0.0)"),
    (["--gamma", "nan"], "--gamma must be in (0, 1] (got nan)"),
    (["--tau", "-1"], "--tau must be in (0, 1] (got -1.0)"),
    (["--tau", "0"], "--tau must be in (0, 1] (got 0.0)"),
    (["--tau", "1.5"], "--tau must be in (0, 1] (got 1.5)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-layers", "0"], "--num-layers must be >= 1 (got 0)"),
    (["--num-layers", "-1"], "--num-layers must be >= 1 (got -1)"),
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--eval-envs", "0"], "--eval-envs must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    # algorithm flags
    (["--inv-temp", "-1"], "--inv-temp must be finite and >= 0 (0: the BC flow) (got -1.0)"),
    (["--inv-temp", "nan"], "--inv-temp must be finite and >= 0"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--num-critics", "0"], "--num-critics must be >= 1 (got 0)"),
    (["--rho", "-0.5"], "--rho must be finite and >= 0"),
    (["--rho", "inf"], "--rho must be finite and >= 0"),
    (["--horizon-length", "0"], "--horizon-length must be >= 1 (got 0)"),
    (["--best-of-n", "0"], "--best-of-n must be >= 1 (got 0)"),
    (["--fql-alpha", "-1"], "--fql-alpha must be finite and >= 0"),
    (["--fql-alpha", "nan"], "--fql-alpha must be finite and >= 0"),
    (["--edit-scale", "-0.1"], "--edit-scale must be finite and >= 0"),
    (["--edit-target-entropy-multiplier", "nan"], "--edit-target-entropy-multiplier must be finite (got nan)"),
    (["--fql-alpha", "1", "--edit-scale", "0.1"], "--fql-alpha 1.0 and --edit-scale 0.1 cannot both be > 0"),
    (["--variant", "qam", "--fql-alpha", "10"], "--variant qam and --fql-alpha 10.0 cannot both be given"),
    (["--variant", "qam-fql", "--edit-scale", "0.1"], "--variant qam-fql and --edit-scale 0.1 cannot both be given"),
    (["--variant", "qam-edit", "--fql-alpha", "10"], "--variant qam-edit and --fql-alpha 10.0 cannot both be given"),
    # the per-task settings of a paper task are resolved first, then checked with the explicit flags
    (["--env-id", "cube-double-play-singletask-task2-v0", "--gamma", "1.5"], "--gamma must be in (0, 1] (got 1.5)"),
    (["--env-id", "scene-play-singletask-task1-v0", "--variant", "qam-fql", "--edit-scale", "0.1"],
     "--fql-alpha 300.0 and --edit-scale 0.1 cannot both be > 0"),
    # CUDA graphs without a CUDA device (--no-cuda here, so that the row holds on a GPU machine too)
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
]


# ----------------------------------------------------------------------------------------------------------
# decision_flow
# ----------------------------------------------------------------------------------------------------------
TABLES["decision_flow"] = [
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
    (["--exp-name", ""], "--exp-name must be a non-empty file name without '/' (got '')"),
    (["--exp-name", "../elsewhere"], "--exp-name must be a non-empty file name without '/'"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--total-steps", "-3"], "--total-steps must be >= 0 (got -3)"),
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "inf"], "--learning-rate must be finite and > 0 (got inf)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    (["--gamma", "2"], "--gamma must be in (0, 1] (got 2.0)"),
    (["--gamma", "0"], "--gamma must be in (0, 1] (got 0.0)"),
    (["--gamma", "nan"], "--gamma must be in (0, 1] (got nan)"),
    (["--tau", "-1"], "--tau must be in (0, 1] (got -1.0)"),
    (["--tau", "0"], "--tau must be in (0, 1] (got 0.0)"),
    (["--tau", "1.5"], "--tau must be in (0, 1] (got 1.5)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-layers", "0"], "--num-layers must be >= 1 (got 0)"),
    (["--num-layers", "-1"], "--num-layers must be >= 1 (got -1)"),
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--eval-envs", "0"], "--eval-envs must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    (["--checkpoint", ""], "--checkpoint must be a path (got '')"),
    (["--checkpoint", "missing.pt"], "--checkpoint missing.pt does not exist"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--eta", "-1"], "--eta must be finite and >= 0"),
    (["--eta", "nan"], "--eta must be finite and >= 0"),
    (["--beta", "-1"], "--beta must be finite and >= 0 (got -1.0)"),
    (["--beta", "inf"], "--beta must be finite and >= 0 (got inf)"),
    (["--num-critics", "0"], "--num-critics must be >= 1 (got 0)"),
    (["--variant", "div", "--dir-reward", "potential"], "--dir-reward potential and --variant div cannot both be given"),
    (["--variant", "div", "--dir-reward", "align"], "--dir-reward align and --variant div cannot both be given"),
]


# ----------------------------------------------------------------------------------------------------------
# fpmd
# ----------------------------------------------------------------------------------------------------------
TABLES["fpmd"] = [
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--exp-name", ""], "--exp-name must be a non-empty file name"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty file name"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--total-timesteps", "-3"], "--total-timesteps must be >= 0 (got -3)"),
    (["--num-envs", "0"], "--num-envs must be >= 1 (got 0)"),
    (["--updates-per-iteration", "0"], "--updates-per-iteration must be >= 1 (got 0)"),
    (["--learning-starts", "-1"], "--learning-starts must be >= 0 (got -1)"),
    (["--buffer-size", "0"], "--buffer-size must be >= 1 (got 0)"),
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "inf"], "--learning-rate must be finite and > 0 (got inf)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    (["--policy-lr-end", "-1"], "--policy-lr-end must be finite and >= 0 (got -1.0)"),
    (["--policy-lr-end", "nan"], "--policy-lr-end must be finite and >= 0 (got nan)"),
    (["--policy-lr-decay-begin", "-1"], "--policy-lr-decay-begin must be >= 0 (got -1)"),
    (["--policy-lr-decay-steps", "0"], "--policy-lr-decay-steps must be >= 1 (got 0)"),
    (["--gamma", "2"], "--gamma must be in (0, 1] (got 2.0)"),
    (["--gamma", "0"], "--gamma must be in (0, 1] (got 0.0)"),
    (["--gamma", "nan"], "--gamma must be in (0, 1] (got nan)"),
    (["--tau", "-1"], "--tau must be in (0, 1] (got -1.0)"),
    (["--tau", "0"], "--tau must be in (0, 1] (got 0.0)"),
    (["--tau", "2"], "--tau must be in (0, 1] (got 2.0)"),
    (["--policy-freq", "0"], "--policy-freq must be >= 1 (got 0)"),
    (["--reward-scale", "0"], "--reward-scale must be finite and > 0 (got 0.0)"),
    (["--reward-scale", "-1"], "--reward-scale must be finite and > 0 (got -1.0)"),
    (["--reward-scale", "inf"], "--reward-scale must be finite and > 0 (got inf)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-layers", "-1"], "--num-layers must be >= 1 (got -1)"),
    (["--num-layers", "0"], "--num-layers must be >= 1 (got 0)"),
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    (["--checkpoint", ""], "--checkpoint must be a path"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--variant", "mf", "--flow-steps", "-1"], "--flow-steps must be >= 1 (got -1)"),
    (["--num-particles", "0"], "--num-particles must be >= 1 (got 0)"),
    (["--init-noise-scale", "-1"], "--init-noise-scale must be finite and >= 0 (got -1.0)"),
    (["--init-noise-scale", "nan"], "--init-noise-scale must be finite and >= 0 (got nan)"),
    (["--temperature", "0"], "--temperature must be finite and > 0 (got 0.0)"),
    (["--temperature", "-1"], "--temperature must be finite and > 0 (got -1.0)"),
    (["--temperature", "inf"], "--temperature must be finite and > 0 (got inf)"),
    (["--q-std-rate", "-0.1"], "--q-std-rate must be in [0, 1] (got -0.1)"),
    (["--q-std-rate", "2"], "--q-std-rate must be in [0, 1] (got 2.0)"),
    (["--alpha-init", "0"], "--alpha-init must be finite and > 0 (got 0.0)"),
    (["--alpha-init", "-1"], "--alpha-init must be finite and > 0 (got -1.0)"),
    (["--alpha-lr", "0"], "--alpha-lr must be finite and > 0 (got 0.0)"),
    (["--alpha-lr", "nan"], "--alpha-lr must be finite and > 0 (got nan)"),
    (["--alpha-freq", "0"], "--alpha-freq must be >= 1 (got 0)"),
    (["--noise-scale", "0"], "--noise-scale must be finite and > 0 (got 0.0)"),
    (["--noise-scale", "-1"], "--noise-scale must be finite and > 0 (got -1.0)"),
    (["--target-entropy-scale", "nan"], "--target-entropy-scale must be finite (got nan)"),
    (["--variant", "mf", "--mf-equal-prob", "2"], "--mf-equal-prob must be in [0, 1] (got 2.0)"),
    (["--variant", "mf", "--mf-equal-prob", "-0.5"], "--mf-equal-prob must be in [0, 1] (got -0.5)"),
    (["--variant", "mf", "--mf-equal-prob", "nan"], "--mf-equal-prob must be in [0, 1] (got nan)"),
    (["--mf-equal-prob", "0.5"], "--mf-equal-prob 0.5 and --variant rf cannot be used together"),
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
    # runs that would never train (issue item 3): the buffer never reaches --learning-starts, or the budget ends first
    (["--buffer-size", "1000", "--learning-starts", "2000"],
     "--buffer-size must be >= --learning-starts 2000 (got 1000)"),
    (["--total-timesteps", "1000"], "--total-timesteps must be > --learning-starts 30000 (got 1000)"),
    (["--total-timesteps", "30000"], "--total-timesteps must be > --learning-starts 30000 (got 30000)"),
    (["--total-timesteps", "0", "--learning-starts", "0"], "--total-timesteps must be > --learning-starts 0 (got 0)"),
]


# ----------------------------------------------------------------------------------------------------------
# swfp
# ----------------------------------------------------------------------------------------------------------
TABLES["swfp"] = [
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
    (["--batch-size", "4", "--blocks", "8"], "--batch-size 4 and --blocks 8 cannot be used together"),
    (["--exp-name", ""], "--exp-name must be a non-empty file name without '/' (got '')"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty file name without '/'"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--pretrain-steps", "-1"], "--pretrain-steps must be >= 0 (got -1)"),
    (["--critic-warmup-steps", "-1"], "--critic-warmup-steps must be >= 0 (got -1)"),
    (["--total-timesteps", "-3"], "--total-timesteps must be >= 0 (got -3)"),
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    (["--gamma", "2"], "--gamma must be in (0, 1] (got 2.0)"),
    (["--gamma", "0"], "--gamma must be in (0, 1] (got 0.0)"),
    (["--tau", "-1"], "--tau must be in (0, 1] (got -1.0)"),
    (["--tau", "0"], "--tau must be in (0, 1] (got 0.0)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-layers", "-1"], "--num-layers must be >= 1 (got -1)"),
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--eval-envs", "0"], "--eval-envs must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    (["--checkpoint", ""], "--checkpoint must be a path (got '')"),
    (["--checkpoint", "missing.pt"], "--checkpoint missing.pt does not exist"),
    (["--blocks", "0"], "--blocks must be >= 1 (got 0)"),
    (["--jko-step-size", "0"], "--jko-step-size must be finite and > 0 (got 0.0)"),
    (["--jko-step-size", "nan"], "--jko-step-size must be finite and > 0 (got nan)"),
    (["--jko-step-size", "inf"], "--jko-step-size must be finite and > 0 (got inf)"),
    (["--entropy-coef", "-1"], "--entropy-coef must be finite and >= 0 (got -1.0)"),
    (["--entropy-coef", "nan"], "--entropy-coef must be finite and >= 0 (got nan)"),
    (["--block-hidden-dim", "0"], "--block-hidden-dim must be >= 1 (got 0)"),
    (["--block-num-layers", "0"], "--block-num-layers must be >= 1 (got 0)"),
    (["--num-critics", "0"], "--num-critics must be >= 1 (got 0)"),
    (["--naive-trust-region"], "--naive-trust-region regularises the naive baseline: it needs --naive-finetune"),
    (["--block-space", "action", "--naive-trust-region"], "--naive-trust-region regularises the naive baseline"),
]


# ----------------------------------------------------------------------------------------------------------
# streaming_flow
# ----------------------------------------------------------------------------------------------------------
TABLES["streaming_flow"] = [
    # negative budgets (the first row is also run through the real command line)
    (["--total-steps", "-3"], "--total-steps must be >= 0 (got -3)"),
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
    (["--lr-warmup-steps", "-1"], "--lr-warmup-steps must be >= 0 (got -1)"),
    (["--ema-update-after-step", "-5"], "--ema-update-after-step must be >= 0 (got -5)"),
    # counts and sizes 0 (or below what the method needs)
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--hidden-dim", "0"], "--hidden-dim must be >= 1 (got 0)"),
    (["--num-blocks", "0"], "--num-blocks must be >= 1"),
    (["--time-emb-dim", "0"], "--time-emb-dim must be even and >= 2 (sin/cos pairs) (got 0)"),
    (["--time-emb-dim", "33"], "--time-emb-dim must be even and >= 2 (sin/cos pairs) (got 33)"),
    (["--obs-horizon", "0"], "--obs-horizon must be >= 1 (got 0)"),
    (["--pred-horizon", "1"], "--pred-horizon must be >= 2 (the chunk's first knot is its start) (got 1)"),
    (["--action-horizon", "0"], "--action-horizon must be >= 1 (got 0)"),
    (["--integration-steps-per-action", "0"], "--integration-steps-per-action must be >= 1 (got 0)"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--policy", "chunk", "--flow-steps", "-2"], "--flow-steps must be >= 1 (got -2)"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1 (got 0)"),
    (["--eval-envs", "0"], "--eval-envs must be >= 1 (got 0)"),
    (["--env-id", "toy/crossing", "--toy-samples", "0"], "--toy-samples must be >= 1 (got 0)"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty file name without '/' (got 'a/b')"),
    (["--exp-name", ""], "--exp-name must be a non-empty file name without '/' (got '')"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--env-id", ""], "--env-id must be a toy task, a dataset dir or a Minari id (got '')"),
    (["--checkpoint", ""], "--checkpoint must be a path (got '')"),
    # zero frequencies
    (["--eval-freq", "0"], "--eval-freq must be >= 1 (got 0)"),
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    # learning rate and weight decay: nan, inf, negative, 0
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "-1"], "--learning-rate must be finite and > 0 (got -1.0)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    (["--learning-rate", "inf"], "--learning-rate must be finite and > 0 (got inf)"),
    (["--weight-decay", "-1e-6"], "--weight-decay must be finite and >= 0 (got -1e-06)"),
    (["--weight-decay", "nan"], "--weight-decay must be finite and >= 0 (got nan)"),
    # EMA decays (probabilities) outside [0, 1], its warm-up's divisor and exponent
    (["--ema-max-decay", "1.5"], "--ema-max-decay must be in [0, 1] (got 1.5)"),
    (["--ema-max-decay", "nan"], "--ema-max-decay must be in [0, 1] (got nan)"),
    (["--ema-min-decay", "-0.1"], "--ema-min-decay must be in [0, 1] (got -0.1)"),
    (["--ema-inv-gamma", "0"], "--ema-inv-gamma must be finite and > 0"),
    (["--ema-warmup", "--ema-power", "-1"], "--ema-power must be finite and > 0"),
    (["--ema-power", "0"], "--ema-power must be finite and > 0"),
    # network: the time embedding's scale
    (["--time-emb-scale", "0"], "--time-emb-scale must be finite and > 0 (0: no flow time) (got 0.0)"),
    (["--time-emb-scale", "inf"], "--time-emb-scale must be finite and > 0 (0: no flow time) (got inf)"),
    # the flows: std, the stabilizing gain (negative: a destabilizing flow), both variants and the toys
    (["--sigma0", "-1"], "--sigma0 must be finite and >= 0 (got -1.0)"),
    (["--sigma0", "nan"], "--sigma0 must be finite and >= 0 (got nan)"),
    (["--variant", "stochastic", "--sigma1", "-0.5"], "--sigma1 must be finite and >= 0 (got -0.5)"),
    (["--sigma1", "inf"], "--sigma1 must be finite and >= 0 (got inf)"),
    (["--k", "-1"], "--k must be finite and >= 0 (0: the non-stabilizing flow) (got -1.0)"),
    (["--env-id", "toy/wine-glass", "--k", "nan"], "--k must be finite and >= 0 (0: the non-stabilizing flow) (got nan)"),
    # conflicting flags, named together
    (["--action-horizon", "16", "--pred-horizon", "16"],
     "--action-horizon 16 and --pred-horizon 16 cannot be used together (at most --pred-horizon - 1 actions"),
    (["--ema-min-decay", "0.5", "--ema-max-decay", "0.4"], "--ema-min-decay 0.5 and --ema-max-decay 0.4 cannot be used together"),
    (["--variant", "stochastic", "--sigma0", "0.5", "--sigma1", "0.1", "--k", "0"],
     "--sigma0 0.5, --sigma1 0.1 and --k 0.0 cannot be used together with --variant stochastic (the latent SFP needs "
     "sigma0 e^-k <= sigma1)"),
    (["--env-id", "toy/crossing", "--variant", "stochastic", "--sigma0", "0.2", "--sigma1", "0.05", "--k", "1"],
     "--sigma0 0.2, --sigma1 0.05 and --k 1.0 cannot be used together with --variant stochastic"),
    # next-state targets: indices, and against the dataset's observation space (read from its metadata, no episode read)
    (["--target-dims", "-1", "7"], "--target-dims must be distinct observation indices >= 0 (got (-1, 7))"),
    (["--target-dims", "6", "6"], "--target-dims must be distinct observation indices >= 0 (got (6, 6))"),
    (["--target-dims"], "--target-dims must be distinct observation indices >= 0 (got ())"),
    (["--target-dims", "6", "7", "9"], "--target-dims [6, 7, 9] must name 2 of the 8 observation dims of "
     "'flowrl/pointmaze/demos-v0', one per action dim"),
    (["--target-dims", "6", "8"], "--target-dims [6, 8] must name 2 of the 8 observation dims of "
     "'flowrl/pointmaze/demos-v0', one per action dim (the default 6 7 is PointMaze's velocity)"),
    (["--env-id", "flowrl/reacher/mixed-v0", "--target-dims", "6", "10"],
     "--target-dims [6, 10] must name 2 of the 10 observation dims of 'flowrl/reacher/mixed-v0', one per action dim"),
]


# ----------------------------------------------------------------------------------------------------------
# flow_opt
# ----------------------------------------------------------------------------------------------------------
TABLES["flow_opt"] = [
    # negative budgets (the first row is also run through the real command line)
    (["--total-steps", "-1"], "--total-steps must be >= 0 (got -1)"),
    (["--init-steps", "-5"], "--init-steps must be >= 0 (got -5)"),
    (["--kick-every", "-5"], "--kick-every must be >= 0 (0: no kick) (got -5)"),
    (["--filter-samples", "-1"], "--filter-samples must be >= 0 (0: all samples) (got -1)"),
    (["--threads", "-2"], "--threads must be >= 0 (0: torch's default) (got -2)"),
    (["--cudagraphs", "--no-cuda"], "--cudagraphs needs a CUDA device (--no-cuda was given)"),
    # counts and sizes 0 (or below what the method needs)
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--init-batch-size", "0"], "--init-batch-size must be >= 1 (got 0)"),
    (["--hidden-dim", "0"], "--hidden-dim must be even and >= 2"),
    (["--hidden-dim", "33", "--heads", "1"], "--hidden-dim must be even and >= 2 (the time embedding is sin/cos pairs) (got 33)"),
    (["--depth", "0"], "--depth must be >= 1 (got 0)"),
    (["--heads", "0"], "--heads must be >= 1 (got 0)"),
    (["--flow-steps", "0"], "--flow-steps must be >= 1 (got 0)"),
    (["--num-scenarios", "0"], "--num-scenarios must be >= 1 (got 0)"),
    (["--eval-scenarios", "0"], "--eval-scenarios must be >= 1 (got 0)"),
    (["--num-samples", "0"], "--num-samples must be >= 1 (got 0)"),
    (["--num-times", "1"], "--num-times must be >= 2 (got 1)"),
    (["--num-times", "50"], "--num-times must be at least 55 for robot-robot separation to hold between the instants (got 50)"),
    (["--order", "4"], "--order must be >= 6"),
    (["--sf-iters", "0"], "--sf-iters must be >= 1 (got 0)"),
    (["--sf-max-iters", "0"], "--sf-max-iters must be >= 1 (got 0)"),
    (["--opt-max-iters", "0"], "--opt-max-iters must be >= 1 (got 0)"),
    (["--data-iters", "0"], "--data-iters must be >= 1 (got 0)"),
    (["--kick-patience", "0"], "--kick-patience must be >= 1 (got 0)"),
    (["--num-obstacles", "-1"], "--num-obstacles must be >= 0 (got -1)"),
    (["--train-robots", "1"], "--train-robots must be robot counts >= 2 (got (1,))"),
    (["--train-robots"], "--train-robots must be at least one robot count (or pass --evaluate) (got ())"),
    (["--eval-robots", "4", "0"], "--eval-robots must be robot counts >= 2 (got (4, 0))"),
    (["--layouts", "spiral"], "--layouts must be one or more of random, antipodal, swap (got ('spiral',))"),
    (["--layouts"], "--layouts must be one or more of random, antipodal, swap (got ())"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty file name without '/' (got 'a/b')"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--data-path", ""], "--data-path must be a path (got '')"),
    # zero frequencies
    (["--log-freq", "0"], "--log-freq must be >= 1 (got 0)"),
    (["--check-every", "0"], "--check-every must be >= 1 (got 0)"),
    # learning rates: nan, inf, negative, 0
    (["--learning-rate", "nan"], "--learning-rate must be finite and > 0 (got nan)"),
    (["--learning-rate", "-0.001"], "--learning-rate must be finite and > 0 (got -0.001)"),
    (["--learning-rate", "0"], "--learning-rate must be finite and > 0 (got 0.0)"),
    (["--init-learning-rate", "inf"], "--init-learning-rate must be finite and > 0 (got inf)"),
    (["--init-learning-rate", "0"], "--init-learning-rate must be finite and > 0 (got 0.0)"),
    # sizes, radii, bounds, weights, temperatures-like scales: negative, 0 or non-finite
    (["--robot-radius", "-0.2"], "--robot-radius must be finite and > 0 (got -0.2)"),
    (["--robot-radius", "nan"], "--robot-radius must be finite and > 0 (got nan)"),
    (["--workspace", "0"], "--workspace must be finite and > 0 (got 0.0)"),
    (["--obstacle-radius", "-0.1", "0.3"], "--obstacle-radius must be finite, with 0 < low <= high (got (-0.1, 0.3))"),
    (["--obstacle-radius", "0.5", "0.2"], "--obstacle-radius must be finite, with 0 < low <= high (got (0.5, 0.2))"),
    (["--horizon", "-10"], "--horizon must be finite and > 0 (got -10.0)"),
    (["--v-max", "0"], "--v-max must be finite and > 0 (got 0.0)"),
    (["--a-max", "inf"], "--a-max must be finite and > 0 (got inf)"),
    (["--tol", "-0.01"], "--tol must be finite and >= 0 (got -0.01)"),
    (["--rho-agent", "0"], "--rho-agent must be finite and > 0 (got 0.0)"),
    (["--rho-obs", "-3"], "--rho-obs must be finite and > 0 (got -3.0)"),
    (["--rho-ws", "nan"], "--rho-ws must be finite and > 0 (got nan)"),
    (["--rho-vel", "-1"], "--rho-vel must be finite and > 0 (got -1.0)"),
    (["--rho-acc", "inf"], "--rho-acc must be finite and > 0 (got inf)"),
    (["--opt-smoothness", "-10"], "--opt-smoothness must be finite and >= 0 (got -10.0)"),
    (["--perturb-std", "-0.3"], "--perturb-std must be finite and >= 0 (got -0.3)"),
    (["--detour-scales", "1", "nan"], "--detour-scales must be finite (got (1.0, nan))"),
    (["--kick-bend", "0"], "--kick-bend must be finite and > 0"),
    (["--init-w-fp", "-1"], "--init-w-fp must be finite and >= 0 (got -1.0)"),
    (["--init-w-dist", "nan"], "--init-w-dist must be finite and >= 0 (got nan)"),
    (["--init-w-viol", "-0.5"], "--init-w-viol must be finite and >= 0 (got -0.5)"),
    (["--init-loss", "fast"], "--init-loss must be one of swarmgen, iterations (got 'fast')"),
    # shares (probabilities) outside their range
    (["--kick-progress", "0"], "--kick-progress must be in (0, 1] (got 0.0)"),
    (["--kick-progress", "1.5"], "--kick-progress must be in (0, 1] (got 1.5)"),
    (["--kick-robots", "-0.1"], "--kick-robots must be in [0, 1] (got -0.1)"),
    (["--kick-robots", "2"], "--kick-robots must be in [0, 1] (got 2.0)"),
    # conflicting flags, named together
    (["--evaluate"], "--evaluate needs --checkpoint (the networks to evaluate)"),
    (["--evaluate", "--checkpoint", "c.pt", "--data-path", "d.pt"], "--evaluate and --data-path cannot both be given"),
    (["--evaluate", "--checkpoint", "c.pt", "--eval-robots"], "--evaluate and an empty --eval-robots cannot both be given"),
    (["--hidden-dim", "32", "--heads", "3"], "--hidden-dim 32 and --heads 3 cannot be used together"),
    (["--num-samples", "2", "--filter-samples", "3"], "--filter-samples 3 and --num-samples 2 cannot be used together"),
    (["--init-w-fp", "0", "--init-w-dist", "0", "--init-w-viol", "0"],
     "--init-w-fp, --init-w-dist and --init-w-viol cannot all be 0 with --init-steps > 0"),
    # scenario geometry that cannot be built (ScenarioError)
    (["--num-obstacles", "500"], "500 obstacles do not fit a 10 m workspace"),
    (["--obstacle-radius", "20", "20"], "could not place 4 obstacles of radius 20-20 m clear of the starts and goals of 4 robots"),
]


# ----------------------------------------------------------------------------------------------------------
# The contract
# ----------------------------------------------------------------------------------------------------------
CASES = [(script, argv, expected) for script in SCRIPTS for argv, expected in TABLES[script]]


def user_error(script: str, argv: list[str]) -> Exception:
    """Run main() on the parsed argv; return the user error it raised (fails if it raised nothing else)."""
    module = import_script(script)
    args = tyro.cli(module.Args, args=argv)
    start = time.perf_counter()
    with pytest.raises(module.USER_ERRORS) as caught:
        module.main(args)
    assert time.perf_counter() - start < SECONDS, f"{script} {argv}: caught only after training started"
    return caught.value


@pytest.mark.parametrize("script,argv,expected", CASES, ids=[f"{s}:{' '.join(a)}" for s, a, _ in CASES])
def test_bad_flag_gives_one_clear_line(script, argv, expected, in_tmp):
    message = str(user_error(script, argv))
    assert "\n" not in message, message
    assert expected in message, message


@pytest.mark.parametrize("script", [s for s in SCRIPTS if TABLES[s]])
def test_command_line_exits_with_one_line(script, in_tmp):
    argv, expected = TABLES[script][0]
    start = time.perf_counter()
    result = run_script(script, *argv)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert time.perf_counter() - start < 60.0  # the interpreter and torch import included


# A Minari id that is not local, with the Hugging Face hub unreachable (a closed local port, HF_HUB_OFFLINE unset):
# one line within seconds, not huggingface_hub's ~25 s of retries. streaming_flow has its own probe and test.
HUB_SCRIPTS = ["fql", "gfp", "qam", "decision_flow", "swfp"]


@pytest.mark.parametrize("script", HUB_SCRIPTS)
def test_minari_id_with_the_hub_unreachable_fails_fast_in_one_line(script, tmp_path):
    start = time.perf_counter()
    result = run_script(script, "--env-id", "D4RL/antmaze/large-play-v1", "--no-cuda",
                        env={"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9",
                             "MINARI_DATASETS_PATH": str(tmp_path / "empty")})
    wall = time.perf_counter() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert "'D4RL/antmaze/large-play-v1'" in lines[0] and "unreachable" in lines[0], lines[0]
    assert "point --env-id at a local Minari dataset folder" in lines[0], lines[0]
    assert wall < 10, wall
