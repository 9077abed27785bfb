"""Tests for benchmarks/ogbench_data.py: a generated OGBench dataset loads through fql.py's OGBench path,
its rows are the protocol's (qpos/qvel of the observed state, one terminal row per episode), generation is
deterministic per seed and independent of --workers, and bad input (existing files, unknown names) is
refused with one line before any work."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT, import_script, last_error_line, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))  # spawned workers import the module by this name
import ogbench_data  # noqa: E402

fql = import_script("fql")
STEPS = 50


def generate(out, *flags: str, steps: int = STEPS) -> dict:
    return ogbench_data.main(["--out", str(out), "--episode-length", str(steps), *flags], log=lambda *_: None)


def load_npz(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def cube_single(tmp_path_factory):
    """2 training episodes + 1 validation episode of 50 steps of cube-single-play-v0."""
    out = tmp_path_factory.mktemp("ogbench_generated")
    result = generate(out, "--dataset", "cube-single-play-v0", "--num-episodes", "2", "--val-episodes", "1",
                      "--seed", "3")
    return out, result


def test_files_have_the_ogbench_layout(cube_single):
    out, result = cube_single
    train, val = load_npz(out / "cube-single-play-v0.npz"), load_npz(out / "cube-single-play-v0-val.npz")
    for data, episodes in ((train, 2), (val, 1)):
        rows = episodes * (STEPS + 1)  # each episode: STEPS transitions + its final observation
        assert sorted(data) == ["actions", "observations", "qpos", "qvel", "terminals"]
        assert {k: (v.dtype, v.shape) for k, v in data.items()} == {
            "observations": (np.float32, (rows, 28)), "actions": (np.float32, (rows, 5)),
            "terminals": (np.bool_, (rows,)), "qpos": (np.float32, (rows, 21)), "qvel": (np.float32, (rows, 20))}
        assert np.flatnonzero(data["terminals"]).tolist() == [STEPS + i * (STEPS + 1) for i in range(episodes)]
        assert np.abs(data["actions"]).max() <= 1.0
        # qpos/qvel are the state of the row's observation (what single-task rewards are relabelled from),
        # not of the next one: the arm's joint positions and velocities are the observation's first 12 entries
        np.testing.assert_array_equal(data["observations"][:, :6], data["qpos"][:, :6])
        np.testing.assert_array_equal(data["observations"][:, 6:12], data["qvel"][:, :6])
        assert not np.array_equal(data["observations"][1:, :6], data["qpos"][:-1, :6])
    assert result["train_rows"] == 2 * (STEPS + 1) and result["val_rows"] == STEPS + 1


def test_generated_data_loads_through_fql_ogbench_path(cube_single):
    out, _ = cube_single
    data = fql.load_offline_data("cube-single-play-singletask-task2-v0", str(out))
    t = data.transitions
    raw = load_npz(out / "cube-single-play-v0.npz")
    starts = ~raw["terminals"]  # a terminal row is an episode's final observation, never a transition start
    assert len(t["rewards"]) == 2 * STEPS
    np.testing.assert_array_equal(t["observations"], raw["observations"][starts])
    np.testing.assert_array_equal(t["next_observations"], raw["observations"][np.concatenate([[False], starts[:-1]])])
    np.testing.assert_allclose(t["actions"], raw["actions"][starts], atol=2e-5)  # fql clips to +-(1 - 1e-5)
    np.testing.assert_array_equal(t["next_observations"][:STEPS - 1], t["observations"][1:STEPS])
    assert not np.array_equal(t["next_observations"][STEPS - 1], t["observations"][STEPS])  # episode boundary
    assert set(np.unique(t["masks"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(t["rewards"], -t["masks"])  # one cube: reward 0 where solved (mask 0), else -1


@pytest.mark.parametrize("dataset", ["cube-single-play-v0", "cube-single-noisy-v0"])  # noisy: random actions too
def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, dataset):
    def files(name, seed):
        generate(tmp_path / name, "--dataset", dataset, "--num-episodes", "1", "--val-episodes", "1",
                 "--seed", str(seed), steps=20)
        return [load_npz(tmp_path / name / f"{dataset}{s}.npz") for s in ("", "-val")]

    a, b, c = files("a", 7), files("b", 7), files("c", 8)
    for x, y, z in zip(a, b, c):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
        assert not np.array_equal(x["actions"], z["actions"])
    assert not np.array_equal(a[0]["actions"], a[1]["actions"])  # train and val episodes are seeded apart


def test_files_do_not_depend_on_workers_and_smaller_datasets_are_prefixes(tmp_path, cube_single):
    """3 episodes over 2 worker processes == the fixture's 2 episodes made one after the other in one process."""
    out, _ = cube_single
    generate(tmp_path, "--dataset", "cube-single-play-v0", "--num-episodes", "3", "--val-episodes", "1",
             "--seed", "3", "--workers", "2")
    for suffix in ("", "-val"):
        name = f"cube-single-play-v0{suffix}.npz"
        big, small = load_npz(tmp_path / name), load_npz(out / name)
        for key in small:
            np.testing.assert_array_equal(big[key][: len(small[key])], small[key])
    assert len(load_npz(tmp_path / "cube-single-play-v0.npz")["actions"]) == 3 * (STEPS + 1)


def test_existing_files_are_not_overwritten_without_the_flag(tmp_path, cube_single):
    out, _ = cube_single
    before = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    argv = ["--dataset", "cube-single-play-v0", "--num-episodes", "2", "--val-episodes", "1", "--episode-length", "5",
            "--out", str(out)]
    line = last_error_line(run_script("benchmarks/ogbench_data", *argv))
    assert "already exist" in line and "--overwrite" in line
    with pytest.raises(ogbench_data.UsageError, match="already exist"):
        ogbench_data.main(argv, log=lambda *_: None)
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == before
    # --overwrite replaces them
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, content in before.items():
        (copy / name).write_bytes(content)
    ogbench_data.main([*argv[:-1], str(copy), "--overwrite"], log=lambda *_: None)
    assert len(load_npz(copy / "cube-single-play-v0.npz")["actions"]) == 2 * 6


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "cube-single-v0"], "unknown --dataset"),
    (["--dataset", "visual-cube-single-play-v0"], "visual datasets are not supported"),
    (["--num-episodes", "0"], "--num-episodes must be >= 1"),
    (["--val-episodes", "0"], "--val-episodes must be >= 1"),
    (["--episode-length", "0"], "--episode-length must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--compare-official", "/nonexistent/generate_manipspace.py"], "is not a file"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, flags, message):
    line = last_error_line(run_script("benchmarks/ogbench_data", "--out", str(tmp_path / "out"), *flags))
    assert message in line
    assert not (tmp_path / "out").exists()
