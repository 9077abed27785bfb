"""Repository-level promises: CI runs the README's test command, scripts stay self-contained,
run output stays out of git, the README's run command is valid for its script."""

from __future__ import annotations

import ast
import re
import shlex

import pytest
from conftest import ROOT

SCRIPTS = ["fql", "qam", "gfp", "decision_flow", "fpmd", "swfp", "streaming_flow", "flow_opt"]
REPO_MODULES = set(SCRIPTS) | {"datasets", "tests", "benchmarks", "conftest", "toy_envs", "make_datasets"}


def readme_commands() -> list:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = readme_commands()[1].split("&&")[-1].strip()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert test_cmd == "python -m pytest -q tests"
    assert ci_lines[-1] == test_cmd
    assert "set -euo pipefail" in ci_lines
    assert any("torch==2.13.0" in ln for ln in ci_lines) and any("-r requirements.txt" in ln for ln in ci_lines)


def test_readme_run_command_parses_for_its_script():
    import tyro

    run = shlex.split(readme_commands()[0].split("&&")[-1])
    assert run[0] == "python" and run[1].endswith(".py")
    module = __import__(run[1][: -len(".py")])
    args = tyro.cli(module.Args, args=run[2:])
    assert args.total_steps <= 50_000  # the quick configuration, not paper scale


@pytest.mark.parametrize("script", [s for s in SCRIPTS if (ROOT / f"{s}.py").exists()])
def test_script_is_self_contained(script):
    tree = ast.parse((ROOT / f"{script}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            imported.add("<relative>")
    assert not imported & (REPO_MODULES | {"<relative>"}), f"{script}.py imports repo files: {imported & REPO_MODULES}"
    assert ast.get_docstring(tree) and "arXiv" in ast.get_docstring(tree) or "arxiv" in ast.get_docstring(tree).lower()


def test_run_output_is_ignored():
    ignored = (ROOT / ".gitignore").read_text().split()
    for entry in ("runs/", "videos/", "checkpoints/", "*.pt"):
        assert entry in ignored


def test_embedded_datasets_fit_the_size_budget():
    total = sum(p.stat().st_size for p in (ROOT / "datasets").rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"embedded datasets take {total / 2**20:.1f} MiB > 30 MiB"
