"""Smoke checks of benchmarks/parity.py that need no official code (the runs themselves are in docs/parity.md)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shlex
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
                 "--eval-every", "300", "--log-every", "100", "--hidden-dim", "64", "--num-layers", "3",
                 "--eval-episodes", "50"])
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


# the headers the official QAM (ColinQiyangLi/qam@f93efd2, through parity's driver, which adds time/epoch_time) and the
# GFP release (ZhangJL16/FQLbaseline@49f6b17) write (copied from the plumbing runs' files; GFP's train.csv shortened)
QAM_EVAL_HEADER = ("avg_gripper_contact_length,num_gripper_contacts,prev_qpos,prev_qvel,qpos,qvel,control,time,success,"
                   "total.timesteps,episode.final_reward,episode.return,episode.length,episode.duration,step")
QAM_TRAIN_HEADER = ("actor/adj_loss,actor/adj_max,actor/adj_mean,actor/adj_std,actor/fast_loss,actor/flow_loss,"
                    "critic/critic_loss,critic/q_max,critic/q_mean,critic/q_min,grad/max,grad/min,grad/norm,time/epoch_time,step")
GFP_EVAL_HEADER = ("Actor/prev_qpos,Actor/prev_qvel,Actor/qpos,Actor/qvel,Actor/control,Actor/time,Actor/success,"
                   "Actor/total.timesteps,Actor/episode.final_reward,Actor/episode.return,Actor/episode.length,"
                   "Actor/episode.duration,Actor/acc_reward,step")
GFP_TRAIN_HEADER = "training/actor/VaBC_loss,training/critic/critic_loss,validation/critic/critic_loss,time/total_time,step"


def test_official_qam_and_gfp_files_are_read(tmp_path):
    qam = tmp_path / "qam" / "qam-reproduce" / "parity" / "cube-single-play-singletask-task2-v0" / "d63fd3"
    qam.mkdir(parents=True)
    (qam / "eval.csv").write_text(QAM_EVAL_HEADER + "\n" + "\n".join(
        f"0.0,0.0,-0.06,-0.1,-0.06,0.08,21.1,10.1,{succ},200.0,-1.0,-200.0,200.0,3.7,{step}"
        for step, succ in ((200, 0.25), (400, 0.5))) + "\n")
    (qam / "offline_agent.csv").write_text(QAM_TRAIN_HEADER + "\n" + "\n".join(
        ",".join(["0.1"] * 13) + f",{spu},{step}" for step, spu in ((100, 1.0), (200, 0.1), (300, 0.5), (400, 0.05), (500, 0.5))) + "\n")
    parsed = parity.parse_official(tmp_path / "qam", "qam")
    assert parsed["curve"] == [(200, 0.25), (400, 0.5)] and parsed["rates"] == [10.0, 20.0]
    gfp = tmp_path / "gfp" / "gfp_OGBench_Env_cube_single_play_singletask_task2_v0" / "date_20261202_032420_seed_0"
    gfp.mkdir(parents=True)
    (gfp / "eval.csv").write_text(GFP_EVAL_HEADER + "\n" + "\n".join(
        f"-0.2,0.0,-0.2,-0.01,5.0,10.1,{succ},200.0,-1.0,-200.0,200.0,2.3,0.0,{step}" for step, succ in ((200, 0.1), (400, 0.3))) + "\n")
    # wall seconds since the start: the intervals take 100 s (compile), 10, 50 (after the evaluation at 200), 5, 50
    (gfp / "train.csv").write_text(GFP_TRAIN_HEADER + "\n" + "\n".join(
        f"0.1,0.1,0.1,{total},{step}" for step, total in ((100, 100.0), (200, 110.0), (300, 160.0), (400, 165.0), (500, 215.0))) + "\n")
    parsed = parity.parse_official(tmp_path / "gfp", "gfp")
    assert parsed["curve"] == [(200, 0.1), (400, 0.3)] and parsed["rates"] == [pytest.approx(10.0), pytest.approx(20.0)]


def test_gfp_log_is_read_by_its_actor_success():
    log = "\n".join(["step 100/200 sps=5 critic=0.1", "step 200/200 sps=10 critic=0.1",
                     "step 200: actor_success=0.300, actor_episodic_return=-150.000, flow_success=0.900"])
    assert parity.parse_ours(log, parity.OFFICIAL["gfp"]["success_key"])["curve"] == [(200, 0.3)]


def fake_checkout(tmp_path, script):
    official = tmp_path / script
    for f in parity.OFFICIAL[script]["files"]:
        (official / f).parent.mkdir(parents=True, exist_ok=True)
        (official / f).write_text("")
    return official


def dry_run(capsys, script, official, *flags):
    parity.main(["--script", script, "--official-dir", str(official), "--dry-run", "--seeds", "3", "4", "--total-steps", "600",
                 "--eval-every", "300", "--log-every", "100", "--hidden-dim", "64", "--num-layers", "3",
                 "--eval-episodes", "50", *flags])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("/", sys.executable))]
    assert len(lines) == 4  # 2 seeds x 2 sides
    return lines[0], lines[1]


def test_qam_dry_run_gives_both_sides_the_same_settings(tmp_path, capsys):
    official_cmd, ours_cmd = dry_run(capsys, "qam", fake_checkout(tmp_path, "qam"))
    # cube-single has no row in the QAM paper: qam.py's generic values = the official get_config() / main.py defaults
    for flag in ("--seed=3", "--offline_steps=600", "--online_steps=0", "--eval_interval=300", "--eval_episodes=50",
                 "--agent.actor_hidden_dims=(64,64,64)", "--agent.value_hidden_dims=(64,64,64)", "--agent.inv_temp=0.3",
                 "--agent.discount=0.99", "--agent.rho=0.5", "--horizon_length=5", "--sparse=False",
                 "--agent.action_chunking=True", "--agent.num_qs=10", "--agent.fql_alpha=0.0", "--agent.edit_scale=0.0",
                 "--save_interval=0", f"--agent={tmp_path / 'qam' / 'agents' / 'qam.py'}", "official_driver_qam.py"):
        assert flag in official_cmd
    for flag in ("--seed 3", "--total-steps 600", "--eval-freq 300", "--eval-episodes 50", "--hidden-dim 64",
                 "--num-layers 3", "--inv-temp 0.3", "--gamma 0.99", "--rho 0.5", "--horizon-length 5", "--sparse False",
                 "--num-critics 10", "--variant qam", "--no-eval-bc-flow", "--action-chunking"):
        assert flag in ours_cmd


def test_gfp_dry_run_gives_both_sides_the_same_settings(tmp_path, capsys):
    official_cmd, ours_cmd = dry_run(capsys, "gfp", fake_checkout(tmp_path, "gfp"))
    # gfp_params.csv's cube_single_play row: alpha 10, eta 0.1, target_agg mean
    for flag in ("seed=3", "offline_steps=600", "eval_interval=300", "eval_episodes=50", "log_interval=100",
                 "agent.actor_hidden_dims=[64,64,64]", "agent.value_hidden_dims=[64,64,64]", "agent.alpha=10.0",
                 "agent.eta_temperature=0.1", "agent.discount=0.99", "agent.q_agg=mean", "agent.target_agg=mean",
                 "agent.guidance_agg=actor", "agent.flow_steps=10", "agent.batch_size=256", "log_on_wandb=false",
                 "n_eval_envs=1", "eval_flow_policy=false", "env_name=cube-single-play-singletask-task2-v0"):
        assert flag in shlex.split(official_cmd)
    for flag in ("--seed 3", "--total-steps 600", "--eval-freq 300", "--hidden-dim 64", "--num-layers 3", "--alpha 10.0",
                 "--eta 0.1", "--gamma 0.99", "--q-agg mean", "--target-agg mean", "--guidance-agg actor",
                 "--flow-steps 10", "--batch-size 256", "--no-eval-flow"):
        assert flag in ours_cmd


def test_gfp_driver_loads_the_python_312_fstring_and_runs_main(tmp_path):
    """The driver's one change, on a stand-in checkout: utils/log_utils.py with the release's f-string (a
    SyntaxError before Python 3.12) is loaded, and main.py runs as __main__ with its own path in argv[0]."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("")
    (tmp_path / "utils" / "log_utils.py").write_text(
        "from datetime import datetime\ndef stamp():\n    return f\"date_{datetime(2026, 1, 2).strftime(\"%Y%m%d_%H%M%S\")}\"\n")
    (tmp_path / "main.py").write_text("import sys\nfrom utils import log_utils\nprint(log_utils.stamp(), sys.argv[0], sys.argv[1:])\n")
    (tmp_path / "driver.py").write_text(parity.GFP_DRIVER)
    out = subprocess.run([sys.executable, str(tmp_path / "driver.py"), "seed=1"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["date_20260102_000000", str(tmp_path / "main.py"), "['seed=1']"]
    (tmp_path / "utils" / "log_utils.py").write_text("def stamp():\n    return 'other'\n")  # not the release's file
    out = subprocess.run([sys.executable, str(tmp_path / "driver.py")], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "not the one of the pinned GFP release" in out.stderr


@pytest.mark.parametrize("flags, message", [
    (["--official-dir", "/nonexistent"], "is not a checkout of"),
    (["--script", "qam", "--official-dir", "/nonexistent"], "agents/qam.py"),
    (["--script", "sac", "--dry-run"], "only fql, qam, gfp are wired"),
    (["--script", "gfp", "--total-steps", "300", "--eval-every", "150", "--log-every", "50", "--dry-run"], "multiple of 4"),
    (["--task", "cube-single-play-v0", "--dry-run"], "is not an OGBench singletask name"),
    (["--seeds", "1", "1", "--dry-run"], "must be distinct"),
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


@pytest.mark.parametrize("script", ["fql", "gfp"])  # qam: test_report_only_reads_finished_runs_of_the_work_dir
def test_plot_only_redraws_the_table_and_plot_from_the_csv(tmp_path, capsys, script):
    results = [dict(side=side, seed=seed, curve=[(5000, 0.0), (10000, value)], rates=[20.0], cpu_s=200.0)
               for side, values in (("official", (0.2, 0.3, 0.4)), ("ours", (0.3, 0.4, 0.5)))
               for seed, value in enumerate(values)]
    parity.write_csv(tmp_path / f"parity_{script}_cube-single-play-singletask-task2-v0.csv", results)
    summary = parity.main(["--script", script, "--plot-only", "--results-dir", str(tmp_path)])  # no --official-dir needed
    assert summary["official_mean"] == pytest.approx(0.3) and summary["diff"] == pytest.approx(0.1)
    assert (tmp_path / f"parity_{script}_cube-single-play-singletask-task2-v0.png").stat().st_size > 1000
    assert f"| {script} | cube-single-play-singletask-task2-v0 | 0.300 ± 0.100 | 0.400 ± 0.100 |" in capsys.readouterr().out


def test_a_run_without_throughput_is_left_out_of_the_rate_after_a_csv_round_trip(tmp_path):
    """write_csv writes nan for a run with no rate measured; read_csv must not turn it into a rate of nan."""
    results = [dict(side="official", seed=0, curve=[(10, 0.5)], rates=[], cpu_s=1.0),
               dict(side="official", seed=1, curve=[(10, 0.5)], rates=[20.0, 30.0], cpu_s=1.0)]
    parity.write_csv(tmp_path / "r.csv", results)
    back = {r["seed"]: r for r in parity.read_csv(tmp_path / "r.csv")}
    assert back[0]["rates"] == [] and back[1]["rates"] == [pytest.approx(25.0)]


def test_report_only_reads_finished_runs_of_the_work_dir(tmp_path, capsys):
    """--report-only: the done.json of every run (as run_jobs writes them), no official checkout needed."""
    for side, values in (("official", (0.1, 0.2)), ("ours", (0.2, 0.3))):
        for seed, value in zip((0, 1), values):
            (tmp_path / f"{side}_seed{seed}").mkdir()
            (tmp_path / f"{side}_seed{seed}" / "done.json").write_text(json.dumps(
                dict(side=side, seed=seed, curve=[[300, value]], rates=[8.0], cpu_s=60.0)))
    summary = parity.main(["--script", "qam", "--report-only", "--work-dir", str(tmp_path), "--seeds", "0", "1",
                           "--total-steps", "300", "--eval-every", "300", "--log-every", "100", "--results-dir", str(tmp_path)])
    assert summary["diff"] == pytest.approx(0.1) and summary["n_official"] == 2
    assert (tmp_path / "parity_qam_cube-single-play-singletask-task2-v0.csv").is_file()
    assert "| qam |" in capsys.readouterr().out


def test_the_venv_probe_asks_hydra_of_gfp_only(tmp_path):
    """An existing official venv without Hydra still serves fql and qam; for gfp it is refused (one line)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text('#!/bin/sh\ncase "$2" in *hydra*) exit 1;; esac\nexit 0\n')  # no hydra
    (tmp_path / "bin" / "python").chmod(0o755)
    for script in ("fql", "qam"):
        parity.ensure_venv(parity.parse_args(["--script", script, "--official-venv", str(tmp_path)]))
    with pytest.raises(parity.ArgumentError, match="not a working venv"):
        parity.ensure_venv(parity.parse_args(["--script", "gfp", "--official-venv", str(tmp_path)]))


def test_the_critics_mean_q_is_read_from_both_sides_and_survives_the_csv(tmp_path, capsys):
    """The second comparison (success near 0 says little): each side's critic mean Q at every logged step."""
    log = "\n".join(["step 100/200 sps=5 critic=0.1 q=-4.5 w=0.5", "step 200/200 sps=10 critic=0.1 q=-9.25",
                     "step 200: success=0.100"])
    assert parity.parse_ours(log)["q"] == [(100, -4.5), (200, -9.25)]
    rows = [{"critic/q_mean": "-3.0", "step": "100"}, {"critic/q_mean": "-8.0", "step": "200"}]
    assert parity.q_curve(rows) == [(100, -3.0), (200, -8.0)]  # QAM's column; FQL/GFP: training/critic/q_mean
    assert parity.q_curve([{"step": "100", "time/epoch_time": "0.1"}]) == []
    results = [dict(side=side, seed=seed, curve=[(200, 0.1)], rates=[10.0], cpu_s=6.0,
                    q=[(100, -4.0 - seed), (200, (-9.0 if side == "ours" else -8.0) - seed)])
               for side in ("official", "ours") for seed in (0, 1, 2)]
    parity.write_csv(tmp_path / "q.csv", results)
    back = {(r["side"], r["seed"]): r for r in parity.read_csv(tmp_path / "q.csv")}
    assert back[("ours", 2)]["q"] == [(100, -6.0), (200, -11.0)]
    s = parity.q_summary(list(back.values()))
    assert s["q_step"] == 200 and s["official_q_mean"] == pytest.approx(-9.0) and s["ours_q_mean"] == pytest.approx(-10.0)
    parity.plot(tmp_path / "q.png", list(back.values()), "title")
    assert (tmp_path / "q.png").stat().st_size > 1000
    results[0]["q"] = []  # one run without a Q curve (e.g. a CSV written before they were recorded): no Q comparison
    assert parity.q_steps(results) == [] and parity.q_summary(results) == {}


def test_all_runs_every_pair_from_one_root_of_clones(tmp_path, capsys):
    """--all ROOT: one command for every pair of docs/parity.md (dry run: the commands of each, then FPMD's)."""
    for folder, files in (("fql", ("main.py", "agents/fql.py")), ("qam", ("main.py", "agents/qam.py")),
                          ("FQLbaseline", ("main.py", "agents/gfp.py", "config/agent/gfp.yaml"))):
        for f in files:
            (tmp_path / folder / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / folder / f).write_text("")
    with pytest.raises(parity.ArgumentError, match="rectified_flow_policy"):
        parity.main(["--all", str(tmp_path), "--dry-run"])
    (tmp_path / "rectified_flow_policy").mkdir()
    summaries = parity.main(["--all", str(tmp_path), "--dry-run", "--results-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert set(summaries) == {(s, t) for s, t, _ in parity.ALL_PAIRS}
    for script, _, folder in parity.ALL_PAIRS:
        assert f"== {script} on cube-single-play-singletask-task2-v0" in out
        assert f"cwd {tmp_path / folder})" in out  # the official side runs in its clone under ROOT
    assert f"== fpmd: python benchmarks/parity_fpmd.py --official-dir {tmp_path / 'rectified_flow_policy'}" in out
    assert f"--results-dir {tmp_path / 'out'}" in out.split("== fpmd:")[1]  # FPMD writes where the pairs write


def test_seeds_run_apart_are_merged_only_at_the_same_settings(tmp_path, capsys):
    """--add-csv: seed 0 of a pair from one invocation (say, one session: one seed gives its runs and no verdict),
    seeds 1 and 2 from another; the table counts all three. Another CSV without its .json, with other settings, or
    counting a seed twice is one clear error."""
    stem = "parity_qam_cube-single-play-singletask-task2-v0"
    flags = ["--script", "qam", "--total-steps", "300", "--eval-every", "300", "--log-every", "100"]
    a = parity.parse_args(flags)
    config = parity.run_config(a, parity.paper_settings("qam", a.task))
    earlier, later = tmp_path / "earlier", tmp_path / "later"
    for work, seeds, values in ((earlier, (0,), dict(official=(0.1,), ours=(0.2,))),
                                (later, (1, 2), dict(official=(0.2, 0.3), ours=(0.3, 0.4)))):
        for side in ("official", "ours"):
            for seed, value in zip(seeds, values[side]):
                (work / f"{side}_seed{seed}").mkdir(parents=True)
                (work / f"{side}_seed{seed}" / "done.json").write_text(json.dumps(
                    dict(side=side, seed=seed, curve=[[300, value]], rates=[8.0], cpu_s=60.0)))
    alone = parity.main(flags + ["--report-only", "--work-dir", str(earlier), "--seeds", "0", "--results-dir", str(earlier)])
    assert alone == dict(official_final=[0.1], ours_final=[0.2]) and "no verdict" in capsys.readouterr().out
    assert (earlier / f"{stem}.csv").is_file() and json.loads((earlier / f"{stem}.json").read_text())["seeds"] == [0]
    seed0 = parity.read_csv(earlier / f"{stem}.csv")
    run = flags + ["--report-only", "--work-dir", str(later), "--seeds", "1", "2", "--results-dir", str(later)]
    summary = parity.main(run + ["--add-csv", str(earlier / f"{stem}.csv")])
    assert summary["n_official"] == summary["n_ours"] == 3
    assert summary["official_mean"] == pytest.approx(0.2) and summary["diff"] == pytest.approx(0.1)
    assert {r["seed"] for r in parity.read_csv(later / f"{stem}.csv")} == {0, 1, 2}
    assert json.loads((later / f"{stem}.json").read_text())["seeds"] == [0, 1, 2]
    with pytest.raises(parity.ArgumentError, match="already counted"):  # seed 0 is now in later's CSV too
        parity.main(run + ["--add-csv", str(earlier / f"{stem}.csv"), str(later / f"{stem}.csv")])
    parity.write_config(earlier / f"{stem}.json", dict(config, total_steps=600), seed0)
    with pytest.raises(parity.ArgumentError, match="total_steps: 600 here 300"):
        parity.main(run + ["--add-csv", str(earlier / f"{stem}.csv")])
    (earlier / f"{stem}.json").unlink()
    with pytest.raises(parity.ArgumentError, match="needs the CSV and the .json"):
        parity.main(run + ["--add-csv", str(earlier / f"{stem}.csv")])
