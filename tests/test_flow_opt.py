"""Tests for flow_opt.py: Bernstein basis and boundary conditions (known answers), the safety filter (KKT
optimality of its c-step, a known-answer polar step, feasibility on a colliding crossing, gradcheck through the
unrolled solver), permutation equivariance of the networks, the flow-matching loss, the learned init vs the
zero init on held-out scenarios, the trained flow model vs the untrained one, bad input, NaN guard, determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from importlib import import_module
from pathlib import Path

import pytest
import torch

from conftest import import_script, run_script

fo = import_script("flow_opt")
harness = import_module("benchmarks.flow_opt_eval")
CPU = torch.device("cpu")


def tiny(**overrides) -> "fo.Args":
    base = fo.Args(cuda=False, train_robots=(4,), num_obstacles=2, num_scenarios=96, data_iters=150, total_steps=60,
                   batch_size=32, hidden_dim=32, depth=2, heads=2, init_steps=10, init_batch_size=8, sf_iters=5,
                   log_freq=30, eval_robots=(4,), eval_scenarios=6, num_samples=2, sf_max_iters=40, opt_max_iters=60,
                   flow_steps=4)
    return replace(base, **overrides)


def world_of(args: "fo.Args") -> "fo.World":
    return fo.World.from_args(args)


# ---------------------------------------------------------------------------------------------- Bernstein basis
def test_bernstein_basis_reproduces_constants_lines_and_degree_10_polynomials():
    T = 4.0
    P, Pd, Pdd = fo.bernstein_basis(10, 30, T)
    t = torch.linspace(0, T, 30, dtype=torch.float64)
    ones = torch.ones(11, dtype=torch.float64)
    assert torch.allclose(P @ ones, torch.ones(30, dtype=torch.float64), atol=1e-12)  # partition of unity
    assert torch.allclose(Pd @ ones, torch.zeros(30, dtype=torch.float64), atol=1e-12)
    line = T * torch.arange(11, dtype=torch.float64) / 10  # Bernstein coefficients of p(t) = t
    assert torch.allclose(P @ line, t, atol=1e-12) and torch.allclose(Pd @ line, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(Pdd @ line, torch.zeros_like(t), atol=1e-10)
    # a random degree-10 polynomial: fit coefficients on the samples, derivatives then match analytically
    torch.manual_seed(0)
    a = torch.randn(11, dtype=torch.float64)
    powers = torch.arange(11, dtype=torch.float64)
    value = (a * t[:, None] ** powers).sum(1)
    deriv = (a[1:] * powers[1:] * t[:, None] ** (powers[1:] - 1)).sum(1)
    second = (a[2:] * powers[2:] * (powers[2:] - 1) * t[:, None] ** (powers[2:] - 2)).sum(1)
    c = torch.linalg.lstsq(P, value[:, None]).solution[:, 0]
    assert torch.allclose(P @ c, value, atol=1e-8)
    assert torch.allclose(Pd @ c, deriv, rtol=1e-6, atol=1e-6)
    assert torch.allclose(Pdd @ c, second, rtol=1e-6, atol=1e-6)


def test_straight_line_and_equality_projection_meet_the_boundary_conditions_exactly():
    args = tiny()
    solver = fo.TrajectorySolver(3, 0, world_of(args), args, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    starts, goals = torch.randn(5, 3, 2, generator=g, dtype=torch.float64), torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    b = fo.boundary_values(starts, goals)
    line = fo.straight_line_coefs(starts, goals, args.order)
    assert torch.allclose(line @ solver.A.T, b, atol=1e-12)
    c = solver.equality_projection(torch.randn(5, 3, 2, 11, generator=g, dtype=torch.float64), b)
    assert torch.allclose(c @ solver.A.T, b, atol=1e-10)


# ---------------------------------------------------------------------------------------------- safety filter
def test_c_step_is_the_minimiser_of_the_augmented_lagrangian_subproblem():
    """KKT optimality checked with an independent, naive objective (explicit pair loop) and autograd."""
    args = tiny()
    n, m = 3, 2
    solver = fo.TrajectorySolver(n, m, world_of(args), args, w_prox=0.7, w_smooth=0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, n, 2, 11, generator=g, dtype=torch.float64)
    b = fo.boundary_values(torch.randn(2, n, 2, generator=g, dtype=torch.float64), torch.randn(2, n, 2, generator=g, dtype=torch.float64))
    c = solver.c_step(q, b).requires_grad_(True)
    rho = solver.rho
    pos, vel, acc = (torch.einsum("bnav,kv->bnka", c, M) for M in (solver.P, solver.Pd, solver.Pdd))
    J = 0.5 * 0.7 * c.square().sum() + 0.5 * 0.3 * acc.square().sum() - (q * c).sum()
    for i in range(n):
        for j in range(i + 1, n):
            J = J + 0.5 * rho["agent"] * (pos[:, i] - pos[:, j]).square().sum()
    J = J + 0.5 * (rho["obs"] * m + rho["ws"]) * pos.square().sum() + 0.5 * rho["vel"] * vel.square().sum() \
        + 0.5 * rho["acc"] * acc.square().sum()
    (grad,) = torch.autograd.grad(J, c)
    A = solver.A.double()
    tangent = grad - grad @ A.T @ torch.linalg.solve(A @ A.T, A)  # gradient projected on {A dc = 0}
    assert torch.allclose(c @ A.T, b, atol=1e-9)
    assert tangent.abs().max() < 1e-8 * grad.abs().max().clamp(min=1.0)


def test_polar_step_known_answer_for_two_overlapping_robots():
    """Two robots at rest 0.3 m apart (D = 2r + the between-instants margin): s = Delta * D/0.3, residual -(D - 0.3)
    m along x for robot 0."""
    args = tiny()
    solver = fo.TrajectorySolver(2, 0, world_of(args), args, dtype=torch.float64)
    gap = 2 * args.robot_radius + solver.margin["agent"] - 0.3
    starts = torch.tensor([[[0.15, 0.0], [-0.15, 0.0]]], dtype=torch.float64)
    c = fo.straight_line_coefs(starts, starts, args.order)
    q_s, f_res, violation, collision = solver.project(c, torch.zeros(1, 0, 3, dtype=torch.float64))
    colsum = solver.P.sum(0)  # F^T of a constant residual per time sample
    expected0 = torch.stack([-gap * colsum, torch.zeros_like(colsum)]) * args.rho_agent
    assert torch.allclose(f_res[0, 0], expected0, atol=1e-9) and torch.allclose(f_res[0, 1], -expected0, atol=1e-9)
    assert violation.item() == pytest.approx(gap) and collision.item() == pytest.approx(gap)


def test_safety_filter_makes_a_colliding_crossing_feasible():
    args = tiny()
    n = 4
    angle = torch.arange(n, dtype=torch.float32) * (2 * torch.pi / n) + 0.1
    starts = 3.0 * torch.stack([angle.cos(), angle.sin()], -1)[None]
    scen = {"starts": starts, "goals": -starts, "obstacles": torch.tensor([[[1.5, -1.0, 0.4]]])}
    solver = fo.TrajectorySolver(n, 1, world_of(args), args)
    c_in = fo.perturbed_guess(scen, args.order, 0.05, torch.Generator().manual_seed(0))
    before = solver.project(solver.equality_projection(c_in, fo.boundary_values(starts, -starts)), scen["obstacles"])
    assert before[3].item() > 0.2  # the straight lines collide near the centre
    out = solver.solve_to_tolerance(scen, c_in, max_iters=400, tol=args.tol)
    assert out["solved_at"].item() > 0 and out["violation"].item() <= args.tol
    assert torch.allclose(out["c"] @ solver.A.T, fo.boundary_values(starts, -starts), atol=1e-4)
    # the inflated constraints at the instants (sample_margins) make it collision-free in continuous time too
    assert fo.certify(out["c"], scen, world_of(args), args.horizon, args.tol)["violation"].item() <= args.tol


def test_detour_starts_bend_every_robot_to_the_same_side_and_keep_the_boundary():
    scen = {"starts": torch.tensor([[[0.0, 0.0], [2.0, 1.0]]]), "goals": torch.tensor([[[3.0, 0.0], [2.0, 4.0]]])}
    c = fo.detour_starts(scen, 10, (1.0, -0.5))  # (2 starts, 2 robots, 2 axes, 11)
    line = fo.straight_line_coefs(scen["starts"], scen["goals"], 10)[0]
    assert c.shape == (2, 2, 2, 11)
    assert torch.equal(c[:, ..., :3], line[None, ..., :3].expand(2, -1, -1, -1))
    assert torch.equal(c[:, ..., -3:], line[None, ..., -3:].expand(2, -1, -1, -1))
    bend = c - line  # robot 0 heads +x: right is -y; robot 1 heads +y: right is +x
    assert torch.allclose(bend[:, 0, 0], torch.zeros(2, 11)) and torch.allclose(bend[:, 1, 1], torch.zeros(2, 11))
    assert bend[0, 0, 1, 5] == pytest.approx(-1.0) and bend[0, 1, 0, 5] == pytest.approx(1.0)  # peak of the bump
    assert torch.allclose(bend[1], -0.5 * bend[0])


def test_deadlock_kick_bends_a_symmetry_locked_head_on_swap_and_spares_progressing_samples():
    """Two robots swap places head-on from exact straight lines: every iterate stays on the line (the polar step
    pushes along it); only the sampled-time violation shrinks, by about a third per 100 iterations, as the robots
    learn to 'tunnel' between time samples. A kick that asks for more progress than that per window (halving), with
    patience 1, bends both robots to their right at the end of the second window (the first has nothing to compare
    with), and they pass each other; one that counts any decrease as progress never fires."""
    args = tiny()
    starts = torch.tensor([[[-3.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)
    scen = {"starts": starts, "goals": starts.flip(1), "obstacles": torch.zeros(1, 0, 3, dtype=torch.float64)}
    solver = fo.TrajectorySolver(2, 0, world_of(args), args, dtype=torch.float64)
    line = fo.straight_line_coefs(scen["starts"], scen["goals"], args.order)
    kw = dict(max_iters=300, tol=args.tol, kick_every=100, kick_bend=1.0, kick_patience=1)
    for out in (solver.solve_to_tolerance(scen, line, max_iters=300, tol=args.tol),
                solver.solve_to_tolerance(scen, line, **kw, kick_progress=1.0)):
        assert out["solved_at"].item() == -1 and out["c"][0, :, 1].abs().max() < 1e-9  # still on the line
    kicked = solver.solve_to_tolerance(scen, line, **kw, kick_progress=0.5)
    assert 200 <= kicked["solved_at"].item() <= 300 and kicked["violation"].item() <= args.tol
    mid = (kicked["c"] @ solver.P.T)[0, :, :, args.num_times // 2]  # (robot, axis) halfway: each passed on its right
    assert mid[0, 1] < -0.1 and mid[1, 1] > 0.1  # robot 0 heads +x (right: -y), robot 1 heads -x (right: +y)
    assert torch.allclose(kicked["c"] @ solver.A.T, fo.boundary_values(scen["starts"], scen["goals"]), atol=1e-9)


def test_compaction_leaves_each_scenarios_result_unchanged():
    """solve_to_tolerance drops finished scenarios from the batch: every scenario must get exactly the result it gets
    when solved alone, and a scenario's samples leave together (group)."""
    args = tiny()
    n, world = 4, world_of(args)
    g = torch.Generator().manual_seed(3)
    scen = fo.sample_scenarios(6, n, 1, world, ("random", "antipodal"), g, torch.device("cpu"))
    rep = fo.repeat_scenarios(scen, 2)
    solver = fo.TrajectorySolver(n, 1, world, args, dtype=torch.float64)
    c_in = fo.perturbed_guess(rep, args.order, 0.3, g).double()
    rep = {k: v.double() for k, v in rep.items()}
    kw = dict(max_iters=300, tol=args.tol, group=2, check_every=5, kick_every=10, kick_bend=2.0, kick_progress=0.5,
              kick_patience=1)
    batch = solver.solve_to_tolerance(rep, c_in, **kw)
    unkicked = solver.solve_to_tolerance(rep, c_in, **{**kw, "kick_every": 0})
    assert not torch.equal(batch["solved_at"], unkicked["solved_at"])  # kicks acted
    assert (batch["solved_at"] >= 0).view(6, 2).any(1).all()
    finished = batch["finished_s"].view(6, 2)
    assert torch.equal(finished[:, 0], finished[:, 1]) and finished.unique().numel() > 1  # scenarios left at different checks
    for i in range(6):
        one = {k: v[2 * i:2 * i + 2] for k, v in rep.items()}
        alone = solver.solve_to_tolerance(one, c_in[2 * i:2 * i + 2], **kw)
        assert torch.equal(alone["solved_at"], batch["solved_at"][2 * i:2 * i + 2])
        assert torch.allclose(alone["c"], batch["c"][2 * i:2 * i + 2], atol=1e-9)


def test_unrolled_safety_filter_passes_gradcheck():
    args = tiny(num_times=9, order=7, v_max=0.1)  # the midpoint, where the two robots meet, is a sample (a slow v_max
    # lets 9 instants cover the motion between them, see sample_margins)
    solver = fo.TrajectorySolver(2, 1, world_of(args), args, dtype=torch.float64)
    starts = torch.tensor([[[1.0, 0.05], [-1.0, -0.05]]], dtype=torch.float64)
    scen = {"starts": starts, "goals": -starts, "obstacles": torch.tensor([[[0.0, 1.2, 0.3]]], dtype=torch.float64)}
    c_bar = fo.perturbed_guess(scen, args.order, 0.1, torch.Generator().manual_seed(0)).requires_grad_(True)
    lam0 = (0.01 * torch.randn(c_bar.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).requires_grad_(True)

    def f(c_bar, lam0):
        out = solver.solve(scen, c_bar, lam0=lam0, iters=4)
        return out["c"], out["fixed_point"]

    assert solver.project(c_bar.detach(), scen["obstacles"])[3].item() > 0  # the constraints are active
    assert torch.autograd.gradcheck(f, (c_bar, lam0), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------- continuous time
def test_bernstein_split_and_product_reproduce_the_polynomial():
    m, c = 10, torch.randn(11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.randn(11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    value = lambda coef, t: sum(float(coef[k]) * math.comb(len(coef) - 1, k) * t**k * (1 - t) ** (len(coef) - 1 - k)  # noqa: E731
                                for k in range(len(coef)))
    pieces = (fo.split_matrix(m, 4) @ c).view(4, m + 1)
    for s in range(4):
        for x in (0.0, 0.37, 1.0):
            assert value(pieces[s], x) == pytest.approx(value(c, (s + x) / 4), abs=1e-10)
    w = fo.bernstein_product(c, u)
    for t in (0.1, 0.5, 0.9):
        assert value(w, t) == pytest.approx(value(c, t) * value(u, t), abs=1e-10)


def passing_pair(offset: float) -> tuple:
    """Two robots passing each other head-on, `offset` m apart sideways; they meet at t = T/2, which falls halfway
    between two of 50 instants (t_k = k T / 49)."""
    args = tiny(num_obstacles=0)
    starts = torch.tensor([[[-4.5, offset / 2], [4.5, -offset / 2]]], dtype=torch.float64)
    scen = {"starts": starts, "goals": starts * torch.tensor([-1.0, 1.0], dtype=torch.float64),
            "obstacles": torch.zeros(1, 0, 3, dtype=torch.float64)}
    return args, scen, fo.straight_line_coefs(scen["starts"], scen["goals"], args.order)


def test_certificate_catches_a_collision_between_the_50_instants_that_the_instants_miss():
    args, scen, c = passing_pair(0.3)  # 0.3 m apart at t = T/2: 10 cm inside 2r = 0.4 m
    P = fo.bernstein_basis(args.order, 50, args.horizon)[0].double()
    pos = c @ P.T  # (1, 2 robots, 2 axes, 50)
    at_instants = (pos[0, 0] - pos[0, 1]).norm(dim=0).min().item()
    assert at_instants >= 2 * args.robot_radius - args.tol  # the 50-instant check passes ...
    cert = fo.certify(c, scen, world_of(args), args.horizon, args.tol)
    assert cert["agent"].item() >= 0.1 - 1e-6 and cert["violation"].item() > args.tol  # ... the certificate does not
    dense = fo.bernstein_basis(args.order, 10001, args.horizon)[0].double()
    true_gap = (c[0, 0] @ dense.T - c[0, 1] @ dense.T).norm(dim=0).min().item()
    assert true_gap == pytest.approx(0.3, abs=1e-6)


def test_certificate_is_an_upper_bound_that_is_tight_where_it_matters():
    args, scen, c = passing_pair(0.42)  # clear by 2 cm: feasible in continuous time
    world = world_of(args)
    cert = fo.certify(c, scen, world, args.horizon, args.tol)
    assert cert["violation"].item() <= args.tol
    dense = fo.bernstein_basis(args.order, 20001, args.horizon)
    gap = (c[0, 0] @ dense[0].T.double() - c[0, 1] @ dense[0].T.double()).norm(dim=0).min().item()
    speed = (c[0] @ dense[1].T.double()).norm(dim=1).max().item()
    assert 2 * args.robot_radius - gap - 1e-9 <= cert["agent"].item() <= 2 * args.robot_radius - gap + 1e-3
    assert speed - args.v_max - 1e-9 <= cert["vel"].item() <= speed - args.v_max + 1e-3


def test_too_few_instants_for_the_margins_are_refused():
    world = world_of(tiny())
    with pytest.raises(fo.ArgumentError, match="--num-times must be at least"):
        fo.sample_margins(world, 10.0, 50, 0.02)
    m = fo.sample_margins(world, 10.0, 100, 0.02)
    assert 0 < m["ws"] < m["obs"] < m["agent"] < 0.1


# ---------------------------------------------------------------------------------------------- scenarios
@pytest.mark.parametrize("n", [5, 32])
def test_scenarios_are_collision_free_inside_and_follow_their_layout(n):
    args = tiny()
    world = world_of(args)
    r = world.robot_radius
    for layout in fo.LAYOUTS:
        scen = fo.sample_scenarios(40, n, 4, world, (layout,), torch.Generator().manual_seed(0), CPU)
        for key in ("starts", "goals"):
            p = scen[key]
            d = torch.cdist(p, p) + 1e9 * torch.eye(n)
            assert d.min() >= 2 * r + 0.05 and p.abs().max() <= world.workspace - r
        ends = torch.cat([scen["starts"], scen["goals"]], 1)
        obs = scen["obstacles"]
        assert (torch.cdist(obs[..., :2], ends) >= (r + obs[..., 2:3])).all()
        if layout == "antipodal":
            assert torch.allclose(scen["goals"], -scen["starts"])
        if layout == "swap":
            sorted_s = scen["starts"].sort(1).values
            assert torch.allclose(scen["goals"].sort(1).values, sorted_s) and not torch.allclose(scen["goals"], scen["starts"])


# ---------------------------------------------------------------------------------------------- networks
def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_dit_and_init_net_are_robot_permutation_equivariant_and_obstacle_permutation_invariant():
    args = tiny()
    scen = fo.sample_scenarios(3, 6, 3, world_of(args), args.layouts, torch.Generator().manual_seed(0), CPU)
    x = torch.randn(3, 6, 22)
    t = torch.rand(3)
    model, init_net = fo.FlowDiT(11, 32, 2, 4, 5.0), fo.InitNet(11, 32, 4, 5.0)
    randomise(model, 0)
    randomise(init_net, 1)
    perm, operm = torch.randperm(6), torch.randperm(3)
    pscen = {"starts": scen["starts"][:, perm], "goals": scen["goals"][:, perm], "obstacles": scen["obstacles"][:, operm]}
    solver = fo.TrajectorySolver(6, 3, world_of(args), args)
    res, pres = fo.residual_input(solver, scen, args.order, 1.0), fo.residual_input(solver, pscen, args.order, 1.0)
    assert res(x).abs().mean() > 1e-3  # the residual input is live, and permutes with the robots too
    v, vp = model(x, t, model.encode(scen), res), model(x[:, perm], t, model.encode(pscen), pres)
    assert v.abs().mean() > 1e-2 and torch.allclose(v[:, perm], vp, atol=1e-4)
    r = torch.randn(3, 6, 22)
    (dc, lam), (dcp, lamp) = init_net(scen, x, r), init_net(pscen, x[:, perm], r[:, perm])
    assert torch.allclose(dc[:, perm], dcp, atol=1e-4) and torch.allclose(lam[:, perm], lamp, atol=1e-4)


class ExactField(torch.nn.Module):
    """The exact conditional velocity towards a fixed target x1: v(x_t, t) = (x1 - x_t) / (1 - t)."""

    def __init__(self, x1):
        super().__init__()
        self.x1 = x1

    def encode(self, scen):
        return None

    def forward(self, x, t, enc, residual=None):
        return (self.x1 - x) / (1 - t[:, None, None])


def test_flow_matching_loss_known_answers():
    torch.manual_seed(0)
    x1 = torch.tensor([0.3, -0.7]).expand(4096, 3, 2).double()
    assert fo.flow_matching_loss(ExactField(x1), x1, {}).item() < 1e-12
    zero = ExactField(None)
    zero.forward = lambda x, t, enc, residual=None: torch.zeros_like(x)
    x1 = torch.full((20000, 2, 2), 0.5)
    assert fo.flow_matching_loss(zero, x1, {}).item() == pytest.approx(1.25, rel=0.02)  # E||x1 - x0||^2 / d


def test_euler_sampler_with_a_constant_field_moves_noise_by_the_field():
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(1, 4)

        def encode(self, scen):
            return None

        def forward(self, x, t, enc, residual=None):
            return torch.full_like(x, 0.5)

    scen = {"starts": torch.zeros(3, 2, 2)}
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = fo.sample_flow(Constant(), scen, 7, g1)
    assert torch.allclose(x, torch.randn(3, 2, 4, generator=g2) + 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny end-to-end run (N = 4), shared by the tests below."""
    import os

    cwd = os.getcwd()
    path = tmp_path_factory.mktemp("flow_opt_run")
    os.chdir(path)
    try:
        args = tiny(total_steps=200, init_steps=100, init_batch_size=16, init_learning_rate=3e-3, num_scenarios=128,
                    hidden_dim=64, save_model=True)
        metrics = fo.main(args)
    finally:
        os.chdir(cwd)
    ckpt = next(path.glob("runs/*/flow_opt.pt"))
    return args, metrics, ckpt, torch.load(next(path.glob("runs/*/data.pt")))["data"]


def load_networks(args, ckpt):
    state = torch.load(ckpt)
    model = fo.FlowDiT(args.order + 1, args.hidden_dim, args.depth, args.heads, args.workspace)
    init_net = fo.InitNet(args.order + 1, args.hidden_dim, args.heads, args.workspace)
    model.load_state_dict(state["model"])
    init_net.load_state_dict(state["init_net"])
    return model, init_net, state["norm"]


def test_main_runs_end_to_end_and_writes_the_table(trained):
    args, metrics, ckpt, data = trained
    run = ckpt.parent
    assert (run / "evaluation.csv").exists()
    for key in ("success", "success_at_instants", "collision_before_sf", "collision_after_sf", "t_flowopt_s",
                "t_median_flowopt_s"):
        assert f"eval/N4/{key}" in metrics
    assert data[4]["coefs"].shape[0] > 0.8 * args.num_scenarios  # the optimizer solved most training scenarios


@torch.no_grad()
def test_learned_init_reduces_the_sf_residual_vs_zero_init_on_held_out_scenarios(trained):
    args, _, ckpt, _ = trained
    model, init_net, norm = load_networks(args, ckpt)
    g = torch.Generator().manual_seed(12345)  # never used by training
    scen = fo.sample_scenarios(64, 4, args.num_obstacles, world_of(args), args.layouts, g, CPU)
    solver = fo.TrajectorySolver(4, args.num_obstacles, world_of(args), args)
    x = fo.sample_flow(model, scen, args.flow_steps, g, fo.residual_input(solver, scen, args.order, norm["coef_scale"]))
    c_gen = fo.from_tokens(x, scen, args.order, norm["coef_scale"])
    c0, lam0 = fo.init_from_net(init_net, solver, scen, x, c_gen, norm["coef_scale"], norm["lam_scale"])
    learned = solver.solve(scen, c_gen, c0, lam0, iters=args.sf_iters)
    zero = solver.solve(scen, c_gen, iters=args.sf_iters)
    assert learned["fixed_point"][:, -1].mean() < 0.9 * zero["fixed_point"][:, -1].mean()
    assert learned["fixed_point"].mean() < zero["fixed_point"].mean()


def test_iterations_loss_known_answer_and_the_violations_it_reads():
    """The loss is the mean excess over --tol of the start's and every unrolled iterate's violation, + the distance."""
    args = tiny(tol=0.02, init_w_dist=2.0)
    out = {"violations": torch.tensor([[0.52, 0.01, 0.05]]), "violation": torch.tensor([0.05]),
           "c": torch.ones(1, 1, 2, 2), "fixed_point": torch.zeros(1, 2)}
    losses = fo.iterations_loss(out, torch.zeros(1, 1, 2, 2), args)
    assert losses["init_excess"].item() == pytest.approx((0.5 + 0.0 + 0.03) / 3)
    assert losses["init_loss"].item() == pytest.approx((0.5 + 0.03) / 3 + 2.0 * 1.0)
    scen = fo.sample_scenarios(3, 4, args.num_obstacles, world_of(args), args.layouts, torch.Generator().manual_seed(3),
                               CPU)
    solver = fo.TrajectorySolver(4, args.num_obstacles, world_of(args), args)
    c = fo.perturbed_guess(scen, args.order, 0.5, torch.Generator().manual_seed(4))
    run = solver.solve(scen, c, iters=3)
    start = solver.start(scen, c, None, None)[4]
    assert run["violations"].shape == (3, 4) and torch.equal(run["violations"][:, 0], start)
    assert torch.equal(run["violations"][:, -1], run["violation"])


def test_init_net_trained_on_iterations_loss_lowers_what_it_targets_vs_zero_init(trained):
    """--init-loss iterations: a fresh init network trained briefly (same flow model and training data) lowers the
    mean excess violation over the unrolled SF iterates on held-out scenarios below the zero init's (seen: 0.75x)."""
    args, _, ckpt, data = trained
    model, _, norm = load_networks(args, ckpt)
    solver = fo.TrajectorySolver(4, args.num_obstacles, world_of(args), args)
    torch.manual_seed(0)
    net = fo.InitNet(args.order + 1, args.hidden_dim, args.heads, args.workspace)
    fo.train_init_net(net, model, data, {4: solver}, norm, replace(args, init_loss="iterations", init_steps=40,
                      init_batch_size=16), torch.Generator().manual_seed(5), lambda *a: None)
    g = torch.Generator().manual_seed(2468)  # never used by training
    scen = fo.sample_scenarios(64, 4, args.num_obstacles, world_of(args), args.layouts, g, CPU)
    with torch.no_grad():
        residual = fo.residual_input(solver, scen, args.order, norm["coef_scale"])
        x = fo.sample_flow(model, scen, args.flow_steps, g, residual)
        c_gen = fo.from_tokens(x, scen, args.order, norm["coef_scale"])
        c0, lam0 = fo.init_from_net(net, solver, scen, x, c_gen, norm["coef_scale"], norm["lam_scale"])
        excess = lambda out: fo.iterations_loss(out, c_gen, args)["init_excess"].item()  # noqa: E731
        learned = excess(solver.solve(scen, c_gen, c0, lam0, iters=args.sf_iters))
        zero = excess(solver.solve(scen, c_gen, iters=args.sf_iters))
    assert learned < 0.85 * zero, (learned, zero)


@torch.no_grad()
def test_trained_flow_model_beats_the_untrained_one_on_held_out_data(trained):
    """Learning curve: held-out flow-matching loss and distance to the optimizer's solutions, trained vs step 0."""
    args, _, ckpt, _ = trained
    model, _, norm = load_networks(args, ckpt)
    untrained = fo.FlowDiT(args.order + 1, args.hidden_dim, args.depth, args.heads, args.workspace)
    held = fo.generate_data(4, replace(args, num_scenarios=64), world_of(args), torch.Generator().manual_seed(777), CPU)
    x1 = fo.to_tokens(held["coefs"], held, args.order, norm["coef_scale"])
    scen = {k: held[k] for k in ("starts", "goals", "obstacles")}
    residual = fo.residual_input(fo.TrajectorySolver(4, args.num_obstacles, world_of(args), args), scen, args.order, norm["coef_scale"])
    losses = {}
    for name, net in (("trained", model), ("untrained", untrained)):
        torch.manual_seed(0)
        losses[name] = torch.stack([fo.flow_matching_loss(net, x1, scen, residual) for _ in range(8)]).mean().item()
    assert losses["trained"] < 0.8 * losses["untrained"], losses


def test_feasibility_certificate_only_adds_solvable_instances(trained):
    """The harness's --certify-restarts runs after everything timed: the methods' results (flow_opt.evaluate's and the
    ablations') are unchanged, and the solvable share can only grow."""
    args, _, ckpt, _ = trained
    model, init_net, norm = load_networks(args, ckpt)
    plain, _ = harness.evaluate_full(model, init_net, norm, 4, args, world_of(args), CPU, seed=99)
    cert, _ = harness.evaluate_full(model, init_net, norm, 4, args, world_of(args), CPU, seed=99, certify_restarts=3,
                                    certify_iters=100)
    lean, _ = fo.evaluate(model, init_net, norm, 4, args, world_of(args), CPU, seed=99)
    for key in ("success", "opt_success", "line_sf_success", "sf_zero_init_success", "smoothness"):
        assert cert[key] == plain[key], key
    assert all(plain[k] == lean[k] for k in lean if not k.startswith("t_"))  # the harness changes none of flow_opt's
    assert cert["solvable"] >= plain["solvable"] >= max(plain["success"], plain["opt_success"], plain["line_sf_success"])


def test_only_the_least_violating_samples_go_through_the_filter(trained):
    args, _, ckpt, _ = trained
    model, init_net, norm = load_networks(args, ckpt)
    picked = replace(args, num_samples=4, filter_samples=1)
    row, parts = fo.evaluate(model, init_net, norm, 4, picked, world_of(args), CPU, seed=4321)
    assert row["samples"] == 4 and row["filtered"] == 1 and row["batch"] == args.eval_scenarios
    assert parts["c_gen"].shape[0] == args.eval_scenarios
    # the kept sample of each scenario is the least violating of the 4 drawn with the same generator state
    g = torch.Generator().manual_seed(4321)
    scen = fo.sample_scenarios(args.eval_scenarios, 4, args.num_obstacles, world_of(args), args.layouts, g, CPU)
    fo.perturbed_guess(scen, args.order, args.perturb_std, g)
    drawn = fo.repeat_scenarios(scen, 4)
    solver = fo.TrajectorySolver(4, args.num_obstacles, world_of(args), args)
    x = fo.sample_flow(model, drawn, args.flow_steps, g, fo.residual_input(solver, drawn, args.order, norm["coef_scale"]))
    c = fo.from_tokens(x, drawn, args.order, norm["coef_scale"])
    viol = solver.project(solver.equality_projection(c, fo.boundary_values(drawn["starts"], drawn["goals"])), drawn["obstacles"])[2]
    kept = [i for i in range(4) if torch.allclose(parts["c_gen"][0], c[i])]
    assert len(kept) == 1 and viol[kept[0]] == viol[:4].min()  # (ties at zero violation are possible)


# ---------------------------------------------------------------------------------------------- robustness
def test_same_seed_gives_the_same_networks_on_cpu(tmp_path, monkeypatch):
    states = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        monkeypatch.chdir(tmp_path / str(run))
        fo.main(tiny(num_scenarios=40, data_iters=60, total_steps=20, init_steps=4, eval_robots=()))
        states.append(torch.load(next((tmp_path / str(run)).glob("runs/*/flow_opt.pt"))))
    for name in ("model", "init_net"):
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)


def test_checkpoint_evaluates_without_training(trained, tmp_path, monkeypatch):
    args, metrics, ckpt, _ = trained
    monkeypatch.chdir(tmp_path)
    again = fo.main(replace(args, evaluate=True, checkpoint=str(ckpt)))
    for key in ("success", "collision_before_sf", "collision_after_sf", "smoothness"):
        assert again[f"eval/N4/{key}"] == pytest.approx(metrics[f"eval/N4/{key}"]), key


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(in_tmp, monkeypatch):
    original, calls = fo.flow_matching_loss, {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = original(*a, **k)
        return loss * float("nan") if calls["n"] > 30 else loss

    monkeypatch.setattr(fo, "flow_matching_loss", poisoned)
    with pytest.raises(fo.NonFiniteLossError, match="non-finite flow-matching loss"):
        fo.main(tiny(num_scenarios=40, data_iters=60, total_steps=60, log_freq=30, eval_robots=()))
    state = torch.load(next(in_tmp.glob("runs/*/flow_opt.pt")))
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ---------------------------------------------------------------------------------------------- bad input
# (every flag range is in tests/test_bad_input.py; here: scenario geometry, the data cache, checkpoints)
@pytest.mark.parametrize("overrides, message", [
    (dict(eval_robots=(200,)), "200 robots do not fit a 10 m workspace"),
    (dict(train_robots=(6,), obstacle_radius=(20.0, 20.0)), "could not place 2 obstacles of radius 20-20 m clear of the starts and goals of 4 robots"),
    (dict(num_obstacles=200), "200 obstacles do not fit a 10 m workspace (at most 81 grid cells)"),
])
def test_impossible_scenario_geometry_raises_a_scenario_error_before_any_work(overrides, message, in_tmp):
    with pytest.raises(fo.ScenarioError) as caught:
        fo.main(tiny(**overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (in_tmp / "runs").exists()  # refused before the run directory was made


def test_check_args_has_a_rule_for_every_field():
    """Every Args field is named in check_args (a rule, or a comment saying why any value is fine)."""
    import dataclasses
    import inspect

    source = inspect.getsource(fo.check_args)
    assert [f.name for f in dataclasses.fields(fo.Args) if f.name not in source] == []


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A training-free run (data for N = 4, untrained networks): a real data cache and a real checkpoint."""
    import os

    cwd, path = os.getcwd(), tmp_path_factory.mktemp("flow_opt_small")
    os.chdir(path)
    try:
        args = tiny(num_scenarios=16, data_iters=60, total_steps=0, init_steps=0, eval_robots=(),
                    data_path=str(path / "fresh" / "dir" / "data.pt"))  # a fresh path in folders that do not exist
        fo.main(args)
    finally:
        os.chdir(cwd)
    return args, Path(args.data_path), next(path.glob("runs/*/flow_opt.pt"))


def digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_file(kind: str, path: Path, checkpoint: Path, cache: Path) -> Path:
    """A file that is not what flow_opt expects, written at `path`."""
    if kind == "checkpoint":
        path.write_bytes(checkpoint.read_bytes())
    elif kind == "data cache":
        path.write_bytes(cache.read_bytes())
    elif kind == "unrelated torch file":
        torch.save({"weights": torch.ones(3)}, path)
    elif kind == "other script":
        torch.save({"script": "fql", "actor": {"w": torch.ones(2)}, "args": {}}, path)
    elif kind == "old-format cache":  # what flow_opt wrote before its cache recorded its parameters
        torch.save({4: {k: v for k, v in torch.load(cache)["data"][4].items()}}, path)
    elif kind == "text":
        path.write_text("my notes\n")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, message", [
    ("checkpoint", "is not a flow_opt data cache (it is a flow_opt checkpoint)"),
    ("unrelated torch file", "is not a flow_opt data cache (it is an unrelated torch file)"),
    ("other script", "is not a flow_opt data cache (it was saved by fql.py)"),
    ("old-format cache", "is not a flow_opt data cache (it is an old-format flow_opt data cache"),
    ("text", "is not a readable torch file"),
    ("garbage", "is not a readable torch file"),
    ("empty", "is empty"),
])
def test_data_path_that_is_not_a_data_cache_is_refused_and_left_byte_identical(kind, message, small_run, in_tmp):
    """The data-loss bug: --data-path pointing at a model checkpoint rewrote that checkpoint with a data entry."""
    args, cache, checkpoint = small_run
    target = foreign_file(kind, in_tmp / "mine.pt", checkpoint, cache)
    before = digest(target)
    with pytest.raises(fo.DatasetError) as caught:
        fo.main(replace(args, data_path=str(target)))
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert digest(target) == before
    assert not (in_tmp / "runs").exists()  # refused before any work


def test_data_path_pointing_at_a_checkpoint_through_the_command_line(small_run, in_tmp):
    _, _, checkpoint = small_run
    target = foreign_file("checkpoint", in_tmp / "model.pt", checkpoint, checkpoint)
    before = digest(target)
    result = run_script("flow_opt", "--no-cuda", "--data-path", str(target))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --data-path {target} is not a flow_opt data cache")
    assert digest(target) == before


def test_data_cache_made_with_other_parameters_is_refused_naming_each_of_them(small_run, in_tmp):
    args, cache, _ = small_run
    mine = in_tmp / "data.pt"
    mine.write_bytes(cache.read_bytes())
    before = digest(mine)
    with pytest.raises(fo.DatasetError) as caught:
        fo.main(replace(args, data_path=str(mine), num_obstacles=3, order=8, layouts=("swap",)))
    message = str(caught.value)
    assert "\n" not in message and "was made with other data parameters" in message
    for part in ("--num-obstacles 3 (cache: 2)", "--order 8 (cache: 10)", "--layouts swap (cache: random antipodal swap)"):
        assert part in message, message
    assert "--seed" not in message and "--hidden-dim" not in message  # only what shapes the data is compared
    assert digest(mine) == before and not (in_tmp / "runs").exists()


def test_data_cache_is_reused_and_extended_only_with_the_same_parameters(small_run, in_tmp, monkeypatch):
    args, cache, _ = small_run
    mine = in_tmp / "data.pt"
    mine.write_bytes(cache.read_bytes())
    before = digest(mine)
    made, original = [], fo.generate_data
    monkeypatch.setattr(fo, "generate_data", lambda n, *a, **k: made.append(n) or original(n, *a, **k))
    fo.main(replace(args, data_path=str(mine), seed=2))  # another seed: the same data distribution, reused
    assert made == [] and digest(mine) == before  # nothing generated, the file not rewritten
    fo.main(replace(args, data_path=str(mine), train_robots=(4, 5)))
    assert made == [5]  # only the robot count it lacked
    saved = torch.load(mine)
    assert saved["script"] == "flow_opt" and sorted(saved["data"]) == [4, 5]
    assert torch.equal(saved["data"][4]["coefs"], torch.load(cache)["data"][4]["coefs"])
    assert [p.name for p in in_tmp.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("directory", "is a directory, not a file"),
    ("empty", "is empty"),
    ("garbage", "is not a readable torch file (UnpicklingError)"),
    ("text", "is not a readable torch file"),
    ("other script", "is not a flow_opt checkpoint: it was saved by fql.py"),
    ("unrelated torch file", "is not a flow_opt checkpoint: it has no model, init_net, norm, args"),
    ("data cache", "is not a flow_opt checkpoint: it is a flow_opt data cache (--data-path)"),
    ("other sizes", "holds other networks: --hidden-dim 64 (checkpoint: 32), --depth 3 (checkpoint: 2); pass the checkpoint's values"),
    ("other order", "holds other networks: --order 8 (checkpoint: 10)"),
    ("broken entries", "its networks do not load (Error(s) in loading state_dict for FlowDiT:"),
])
def test_bad_checkpoint_gives_one_line(kind, message, small_run, in_tmp):
    args, cache, checkpoint = small_run
    path = in_tmp / "ckpt.pt"
    overrides = {}
    if kind == "directory":
        path.mkdir()
    elif kind == "other sizes":
        path.write_bytes(checkpoint.read_bytes())
        overrides = dict(hidden_dim=64, depth=3)
    elif kind == "other order":
        path.write_bytes(checkpoint.read_bytes())
        overrides = dict(order=8)
    elif kind == "broken entries":
        state = torch.load(checkpoint)
        state["model"].pop("x_in.weight")
        torch.save(state, path)
    elif kind != "missing":
        foreign_file(kind, path, checkpoint, cache)
    with pytest.raises(fo.CheckpointError) as caught:
        fo.main(replace(args, evaluate=True, checkpoint=str(path), data_path=None, eval_robots=(4,), **overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert not (in_tmp / "runs").exists()


def test_checkpoint_records_its_script_and_warm_starts_training(small_run, in_tmp):
    args, _, checkpoint = small_run
    assert torch.load(checkpoint)["script"] == "flow_opt"
    fo.main(replace(args, checkpoint=str(checkpoint), data_path=None, num_scenarios=8, total_steps=2, log_freq=1))
    assert next(in_tmp.glob("runs/*/flow_opt.pt")).exists()


def test_a_run_never_reuses_another_runs_directory(in_tmp):
    first = fo.fresh_run_dir("same_name")
    (first / "flow_opt.pt").write_text("the first run's checkpoint")
    second = fo.fresh_run_dir("same_name")
    assert second != first and second.parent == first.parent
    assert (first / "flow_opt.pt").read_text() == "the first run's checkpoint"
