"""Smoke checks of benchmarks/parity.py that need no official code (the runs themselves are in docs/parity.md)."""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("parity", ROOT / "benchmarks" / "parity.py")
parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity)

# the header main.py of seohongpark/fql@719d044 writes (copied from a run's files; values shortened)
EVAL_HEADER = ("evaluation/prev_qpos,evaluation/prev_qvel,evaluation/qpos,evaluation/qvel,evaluation/control,evaluation/time,"
               "evaluation/success,evaluation/total.timesteps,evaluation/episode.final_reward,evaluation/episode.return,"
               "evaluation/episode.length,evaluation/episode.duration,step")
TRAIN_HEADER = "training/critic/critic_loss,validation/critic/critic_loss,time/epoch_time,time/total_time,step"


def run_parity(*argv):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parity.py"), *argv], capture_output=True, text=True,
                          timeout=120)


def test_summary_has_the_known_answer_and_the_rule_can_fail():
    final = {"official": [0.2, 0.3, 0.4], "ours": [0.3, 0.4, 0.5]}
    s = parity.summarize(final, {"official": [10.0, 12.0], "ours": [20.0, 22.0]})
    assert s["official_mean"] == pytest.approx(0.3) and s["official_std"] == pytest.approx(0.1)  # ddof=1
    assert s["diff"] == pytest.approx(0.1)
    assert s["se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.01 / 3))
    assert s["tolerance"] == pytest.approx(2 * s["se"]) and s["passed"]  # 0.1 <= 0.163
    far = parity.summarize({"official": [0.2, 0.21, 0.22], "ours": [0.5, 0.51, 0.52]}, {"official": [], "ours": []})
    assert not far["passed"] and far["tolerance"] == pytest.approx(0.05)  # SE tiny: the 0.05 floor applies
    assert "FAIL" in parity.table_row("fql", "t", far) and "pass" in parity.table_row("fql", "t", s)


def test_throughput_leaves_out_the_first_interval_and_those_after_an_evaluation():
    # logged every 100 steps; evaluations at 200 and 400: the intervals (200, 300] and (400, 500] hold one
    assert parity.interval_rates([100, 200, 300, 400, 500], [1.0, 0.1, 0.5, 0.1, 0.5], {200, 400}) == [10.0, 10.0]


def test_official_files_are_read(tmp_path):
    folder = tmp_path / "fql" / "parity" / "sd000_x"
    folder.mkdir(parents=True)
    (folder / "eval.csv").write_text(EVAL_HEADER + "\n" + "\n".join(
        f"0,0,0,0,0,10.1,{succ},0,-1,-200,200,4.3,{step}" for step, succ in ((1, 0.0), (200, 0.25), (400, 0.5))) + "\n")
    (folder / "train.csv").write_text(TRAIN_HEADER + "\n" + "\n".join(
        f"0.1,0.1,{spu},0,{step}" for step, spu in ((100, 1.0), (200, 0.1), (300, 0.5), (400, 0.05), (500, 0.5))) + "\n")
    parsed = parity.parse_official(tmp_path)
    assert parsed["curve"] == [(200, 0.25), (400, 0.5)]  # the 1-episode evaluation at step 1 is dropped
    assert parsed["rates"] == [10.0, 20.0]


def test_our_log_is_read():
    log = "\n".join(["task settings ...", "step 100/400 sps=3.0 critic=0.1 q=-1", "step 200/400 sps=10 critic=0.1 q=-1",
                     "step 200: episodic_return=-180.000, episodic_return_std=20.000, success=0.100",
                     "step 300/400 sps=4 critic=0.1 q=-1", "step 400/400 sps=20 critic=0.1 q=-1",
                     "step 400: episodic_return=-150.000, episodic_return_std=30.000, success=0.400"])
    parsed = parity.parse_ours(log)
    assert parsed["curve"] == [(200, 0.1), (400, 0.4)]
    assert parsed["rates"] == [pytest.approx(10.0), pytest.approx(20.0)]


def test_csv_round_trip_and_plot(tmp_path):
    results = [dict(side=side, seed=seed, curve=[(200, 0.1 * seed), (400, 0.2 * seed)], rates=[10.0 + seed], cpu_s=60.0)
               for side in ("official", "ours") for seed in (0, 1, 2)]
    parity.write_csv(tmp_path / "p.csv", results)
    back = {(r["side"], r["seed"]): r for r in parity.read_csv(tmp_path / "p.csv")}
    assert back[("ours", 2)]["curve"] == [(200, 0.2), (400, 0.4)] and back[("ours", 2)]["rates"] == [12.0]
    assert {r["kind"] for r in csv.DictReader(open(tmp_path / "p.csv"))} == {"eval", "run"}
    parity.plot(tmp_path / "p.png", results, "title")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_dry_run_gives_both_sides_the_same_settings(tmp_path, capsys):
    official = tmp_path / "fql"
    (official / "agents").mkdir(parents=True)
    (official / "main.py").write_text("")
    (official / "agents" / "fql.py").write_text("")
    parity.main(["--official-dir", str(official), "--dry-run", "--seeds", "3", "4", "--total-steps", "600",
                 "--eval-every", "300", "--log-every", "100", "--hidden-dim", "64", "--num-layers", "3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("/", sys.executable))]
    assert len(lines) == 4  # 2 seeds x 2 sides
    official_cmd, ours_cmd = lines[0], lines[1]
    for flag in ("--seed=3", "--offline_steps=600", "--eval_interval=300", "--eval_episodes=50",
                 "--agent.actor_hidden_dims=(64,64,64)", "--agent.value_hidden_dims=(64,64,64)", "--agent.alpha=300.0",
                 "--agent.discount=0.99", "--agent.q_agg=mean", "--env_name=cube-single-play-singletask-task2-v0"):
        assert flag in official_cmd
    for flag in ("--seed 3", "--total-steps 600", "--eval-freq 300", "--eval-episodes 50", "--hidden-dim 64",
                 "--num-layers 3", "--alpha 300.0", "--gamma 0.99", "--q-agg mean", "--no-eval-bc-flow"):
        assert flag in ours_cmd


@pytest.mark.parametrize("flags, message", [
    (["--official-dir", "/nonexistent"], "is not a checkout of"),
    (["--script", "qam", "--dry-run"], "only fql is wired"),
    (["--task", "cube-single-play-v0", "--dry-run"], "is not an OGBench singletask name"),
    (["--seeds", "1", "--dry-run"], "at least 2 distinct seeds"),
    (["--total-steps", "1000", "--eval-every", "300", "--dry-run"], "must be a multiple of"),
])
def test_bad_input_is_one_line(flags, message):
    out = run_parity(*flags)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert message in out.stderr.strip().splitlines()[-1]


def test_a_work_dir_with_runs_of_other_settings_is_refused(tmp_path):
    parity.check_work_dir(tmp_path, {"total_steps": 10, "alpha": 300.0})
    parity.check_work_dir(tmp_path, {"total_steps": 10, "alpha": 300.0})  # same settings: resumes
    with pytest.raises(parity.ArgumentError, match="total_steps: 10 -> 20"):
        parity.check_work_dir(tmp_path, {"total_steps": 20, "alpha": 300.0})


def test_plot_only_redraws_the_table_and_plot_from_the_csv(tmp_path, capsys):
    results = [dict(side=side, seed=seed, curve=[(5000, 0.0), (10000, value)], rates=[20.0], cpu_s=200.0)
               for side, values in (("official", (0.2, 0.3, 0.4)), ("ours", (0.3, 0.4, 0.5)))
               for seed, value in enumerate(values)]
    parity.write_csv(tmp_path / "parity_fql_cube-single-play-singletask-task2-v0.csv", results)
    summary = parity.main(["--plot-only", "--results-dir", str(tmp_path)])  # no --official-dir needed
    assert summary["official_mean"] == pytest.approx(0.3) and summary["diff"] == pytest.approx(0.1)
    assert (tmp_path / "parity_fql_cube-single-play-singletask-task2-v0.png").stat().st_size > 1000
    assert "| fql | cube-single-play-singletask-task2-v0 | 0.300 ± 0.100 | 0.400 ± 0.100 |" in capsys.readouterr().out
