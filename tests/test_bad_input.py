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
]


# ----------------------------------------------------------------------------------------------------------
# streaming_flow
# ----------------------------------------------------------------------------------------------------------
TABLES["streaming_flow"] = [
]


# ----------------------------------------------------------------------------------------------------------
# flow_opt
# ----------------------------------------------------------------------------------------------------------
TABLES["flow_opt"] = [
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
