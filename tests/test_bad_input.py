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
]


# ----------------------------------------------------------------------------------------------------------
# gfp
# ----------------------------------------------------------------------------------------------------------
TABLES["gfp"] = [
]


# ----------------------------------------------------------------------------------------------------------
# qam
# ----------------------------------------------------------------------------------------------------------
TABLES["qam"] = [
]


# ----------------------------------------------------------------------------------------------------------
# decision_flow
# ----------------------------------------------------------------------------------------------------------
TABLES["decision_flow"] = [
]


# ----------------------------------------------------------------------------------------------------------
# fpmd
# ----------------------------------------------------------------------------------------------------------
TABLES["fpmd"] = [
]


# ----------------------------------------------------------------------------------------------------------
# swfp
# ----------------------------------------------------------------------------------------------------------
TABLES["swfp"] = [
]


# ----------------------------------------------------------------------------------------------------------
# streaming_flow
# ----------------------------------------------------------------------------------------------------------
TABLES["streaming_flow"] = [
    # negative budgets (the first row is also run through the real command line)
    (["--total-steps", "-3"], "--total-steps must be >= 0 (got -3)"),
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
    (["--certify-restarts", "-1"], "--certify-restarts must be >= 0 (0: no certificate) (got -1)"),
    (["--filter-samples", "-1"], "--filter-samples must be >= 0 (0: all samples) (got -1)"),
    (["--threads", "-2"], "--threads must be >= 0 (0: torch's default) (got -2)"),
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
    (["--eval-repeats", "0"], "--eval-repeats must be >= 1 (got 0)"),
    (["--num-times", "1"], "--num-times must be >= 2 (got 1)"),
    (["--order", "4"], "--order must be >= 6"),
    (["--sf-iters", "0"], "--sf-iters must be >= 1 (got 0)"),
    (["--sf-max-iters", "0"], "--sf-max-iters must be >= 1 (got 0)"),
    (["--opt-max-iters", "0"], "--opt-max-iters must be >= 1 (got 0)"),
    (["--data-iters", "0"], "--data-iters must be >= 1 (got 0)"),
    (["--certify-iters", "0"], "--certify-iters must be >= 1 (got 0)"),
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
