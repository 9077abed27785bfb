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
