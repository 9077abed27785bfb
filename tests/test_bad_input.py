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
