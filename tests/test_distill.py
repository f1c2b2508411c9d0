"""Distillation into one-step students (torchcfm_local.distillation) and the sampling presets (torchcfm_local.sampling)."""
import math
import runpy
from pathlib import Path

import pytest
import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl
from conftest import small_mlp, two_gaussians
from torchcfm_local.distillation import (
    DistilledSampler,
    Segment,
    distill,
    distill_plan,
    step_coefficients,
    teacher_pairs,
)
from torchcfm_local.sampling import SAMPLING_PRESETS, preset_options, sample

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAST_DISTILL = dict(n_pairs=3000, n_val=1000, batch_size=256, seed=0, progress=False)


@pytest.fixture(scope="module")
def teachers(trained_2d):
    """The session's 3-block LFM (conftest) and a one-block global flow fitted for ~2 s, on two Gaussians."""
    lfm, _, x = trained_2d
    torch.manual_seed(0)
    glob = tl.LocalFlowMatching(2, tl.OUSchedule.global_flow(), velocity_factory=small_mlp)
    glob.fit(x[:4000], batches_per_block=300, batch_size=256, seed=0, progress=False, encode_final_pool=False)
    return lfm, glob


@pytest.fixture(scope="module")
def lfm_k1(teachers):
    return distill(teachers[0], k=1, batches=400, **FAST_DISTILL)


def held_out_z(n=1000, seed=99):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- plan and coefficients
def test_plan_lfm_and_global_share_one_mechanism():
    assert distill_plan(4, k=2) == [
        (Segment(4, 0.0, 1.0), Segment(3, 0.0, 1.0)),
        (Segment(2, 0.0, 1.0), Segment(1, 0.0, 1.0)),
    ]
    assert distill_plan(1, splits=4) == [(Segment(1, i / 4, (i + 1) / 4),) for i in range(4)]
    assert distill_plan(2, k=2, splits=2) == [
        (Segment(2, 0.0, 0.5), Segment(2, 0.5, 1.0)),
        (Segment(1, 0.0, 0.5), Segment(1, 0.5, 1.0)),
    ]


@pytest.mark.parametrize("k", [0, 3, -1, 2.0, True])
def test_bad_k_names_the_valid_values(k):
    with pytest.raises(ValueError, match=r"valid k: \[1, 2, 4\]"):
        distill_plan(4, k=k)
    untrained = tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 4), velocity_factory=small_mlp)
    with pytest.raises(ValueError, match=r"valid k: \[1, 2, 4\]"):
        distill(untrained, k=k)


def test_untrained_teacher_and_broken_stages_are_refused():
    untrained = tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 2), velocity_factory=small_mlp)
    with pytest.raises(RuntimeError, match="0 of 2 blocks are trained"):
        distill(untrained, k=1)
    with pytest.raises(ValueError, match="does not start where"):
        distill(untrained, stages=[[(2, 0.0, 1.0)], [(1, 0.5, 1.0)]])
    with pytest.raises(ValueError, match="block in 1..2"):
        distill(untrained, stages=[[(3, 0.0, 1.0)]])
    with pytest.raises(ValueError, match="whole teacher path"):
        distill(untrained, stages=[[(2, 0.0, 1.0)], [(1, 0.0, 0.5)]])


@pytest.mark.parametrize("matcher", [ConditionalFlowMatcher(sigma=0.0), VariancePreservingConditionalFlowMatcher(sigma=0.0)])
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (0.25, 0.75), (0.5, 1.0)])
def test_step_coefficients_are_exact_on_the_conditional_path(matcher, t0, t1):
    """With f = the conditional velocity of one pair (x0, x1), the student lands exactly on x_{t1}."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    if isinstance(matcher, VariancePreservingConditionalFlowMatcher):
        path = lambda t: math.cos(math.pi * t / 2) * x0 + math.sin(math.pi * t / 2) * x1  # noqa: E731
        u0 = math.pi / 2 * (math.cos(math.pi * t0 / 2) * x1 - math.sin(math.pi * t0 / 2) * x0)
    else:
        path = lambda t: (1 - t) * x0 + t * x1  # noqa: E731
        u0 = x1 - x0
    a, b = step_coefficients(matcher, [Segment(1, t0, t1)])
    torch.testing.assert_close(a * path(t0) + b * u0, path(t1), rtol=0, atol=1e-12)
    # several blocks: a residual map x + L f
    assert step_coefficients(matcher, [Segment(2, 0.0, 1.0), Segment(1, 0.0, 1.0)]) == (1.0, 2.0)


def test_segments_of_a_block_reproduce_the_whole_block_solve(teachers):
    """Cutting a block into 4 fixed-step segments is the same RK4 grid as the whole-block solve."""
    _, glob = teachers
    z = held_out_z(500)
    ode = tl.ODEOptions(solver="rk4", steps=16)
    states, nfe = teacher_pairs(glob, distill_plan(1, splits=4), z, ode=ode)
    assert states.shape == (5, 500, 2) and torch.equal(states[0], z)
    assert nfe == [16.0] * 4  # 4 RK4 steps of 4 evaluations per segment
    torch.testing.assert_close(states[-1], glob.decode(z, ode=ode), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- students reproduce the teacher
def test_single_block_student_reproduces_the_teacher_block(teachers, lfm_k1):
    lfm, _ = teachers
    rep = lfm_k1.report
    assert [st.segments for st in rep.stages] == [[(3, 0.0, 1.0)], [(2, 0.0, 1.0)], [(1, 0.0, 1.0)]]
    assert all(st.warm_started and st.batches == 400 and len(st.losses) == 400 for st in rep.stages)
    assert all(st.student_params == sum(p.numel() for p in small_mlp(1).parameters()) for st in rep.stages)
    # held-out inputs never seen in distillation: block 1's data-side input from fresh z
    z = held_out_z()
    ode = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
    mid = lfm.decode(z, blocks=[3, 2], ode=ode)
    out = lfm.decode(mid, blocks=[1], ode=ode)
    with torch.no_grad():
        mse_top = torch.mean((lfm_k1.students[0](z) - lfm.decode(z, blocks=[3], ode=ode)) ** 2).item()
        mse_low = torch.mean((lfm_k1.students[2](mid) - out) ** 2).item()
    identity_low = torch.mean((mid - out) ** 2).item()
    # measured: top 0.0033, low 0.0064 against doing nothing 0.24
    assert mse_top < 0.01, mse_top
    assert mse_low < 0.03 and mse_low < 0.15 * identity_low, (mse_low, identity_low)
    for st in rep.stages:
        assert st.val_mse < st.init_mse and st.val_mse < 0.2 * st.identity_mse, st  # measured ratios 0.10, 0.03, 0.03
    assert rep.end_mse < 0.05  # measured: 0.018
    # and the samples look like the data
    test = two_gaussians(2000, seed=123)
    ed_student = tl.energy_distance(lfm_k1.sample(2000, generator=torch.Generator().manual_seed(0)), test)
    ed_noise = tl.energy_distance(held_out_z(2000), test)
    assert ed_student < 0.1 * ed_noise, (ed_student, ed_noise)  # measured: 0.016 vs 0.51


def test_nfe_equals_the_number_of_students(teachers, lfm_k1):
    lfm, _ = teachers
    k3 = distill(lfm, k=3, batches=20, **FAST_DISTILL)
    for sampler, expected in ((lfm_k1, 3), (k3, 1)):
        assert sampler.nfe == expected == len(sampler.students)
        for st in sampler.students:
            st.field.nfe = 0
        x = sampler.sample(300, generator=torch.Generator().manual_seed(0))
        assert x.shape == (300, 2)
        assert sampler.last_stats.nfe == expected
        assert sum(st.field.nfe for st in sampler.students) == expected  # one call per student per chunk
    # a student replacing 3 MLP(64) blocks is an MLP of width round(64 sqrt 3) = 111, not warm-started
    assert k3.students[0].net.config["width"] == 111 and not k3.report.stages[0].warm_started
    assert k3.students[0].alpha == 1.0 and k3.students[0].beta == 3.0


def test_save_load_round_trip(tmp_path, teachers, lfm_k1):
    path = tmp_path / "distilled.pt"
    lfm_k1.save(path)
    loaded = DistilledSampler.load(path)
    z = held_out_z(400)
    assert torch.equal(loaded.decode(z), lfm_k1.decode(z))
    assert loaded.stages == lfm_k1.stages and loaded.nfe == 3 and loaded.teacher_blocks == 3
    # part of the chain
    torch.testing.assert_close(loaded.decode(lfm_k1.decode(z, stages=[1]), stages=[2, 3]), lfm_k1.decode(z), rtol=0, atol=0)
    # errors: another kind of file, a damaged file, custom nets without their factory
    teachers[0].save(tmp_path / "teacher.pt")
    with pytest.raises(tl.CheckpointError, match="'model' file, expected 'distilled'"):
        DistilledSampler.load(tmp_path / "teacher.pt")
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(tl.CheckpointError, match="not a readable checkpoint"):
        DistilledSampler.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        DistilledSampler.load(tmp_path / "missing.pt")

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, t, x):
            return self.lin(torch.cat([x, t[:, None]], 1))

    custom = distill(teachers[0], k=3, batches=5, student_factory=lambda s, k: Custom(), **FAST_DISTILL)
    custom.save(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="pass the student_factory"):
        DistilledSampler.load(tmp_path / "custom.pt")
    again = DistilledSampler.load(tmp_path / "custom.pt", student_factory=lambda s, k: Custom())
    assert torch.equal(again.decode(z), custom.decode(z))


def test_decode_checks_its_input(lfm_k1):
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        lfm_k1.decode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        lfm_k1.decode(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="consecutive stage numbers in 1..3"):
        lfm_k1.decode(torch.zeros(2, 2), stages=[1, 3])
    with pytest.raises(ValueError, match="unknown sampling preset"):
        lfm_k1.sample(2, preset="turbo")


# ---------------------------------------------------------------- the global flow distilled the same way
@pytest.mark.parametrize("m", [1, 2, 4])
def test_global_m_step_distillation(teachers, m):
    _, glob = teachers
    sampler = distill(glob, splits=m, batches=400 if m == 1 else 30, **FAST_DISTILL)
    assert sampler.nfe == m and len(sampler.report.stages) == m
    assert [st.segments for st in sampler.report.stages] == [[(1, i / m, (i + 1) / m)] for i in range(m)]
    assert all(st.warm_started for st in sampler.report.stages)
    assert [st.t0 for st in sampler.students] == [i / m for i in range(m)]
    if m == 1:
        # the one-step student maps held-out z to the teacher's samples of the same z
        z = held_out_z()
        target = glob.decode(z, ode=tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5))
        mse = torch.mean((sampler.decode(z) - target) ** 2).item()
        spread = target.var(0).sum().item() / 2
        # measured: 0.034 vs 2.2 with the default MLP (0.0016 with the earlier SiLU default); a student
        # that has not learned the map is off by about the spread
        assert mse < 0.05 * spread, (mse, spread)


# ---------------------------------------------------------------- presets
def test_presets_for_every_sampler(teachers, lfm_k1):
    lfm, glob = teachers
    assert preset_options("quality").solver == "dopri5"
    assert preset_options("fast") == tl.ODEOptions(solver="midpoint", steps=4)
    x, stats = sample(lfm, 50, preset="fast", generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 2) and stats.nfe == 3 * 4 * 2  # 3 blocks x 4 midpoint steps x 2 evaluations
    _, stats = sample(glob, 50, preset="fast")
    assert stats.nfe == 8
    _, stats = sample(lfm, 50, preset=tl.ODEOptions(solver="euler", steps=3))
    assert stats.nfe == 9
    for preset in ("fast", "quality"):
        x, stats = sample(lfm_k1, 50, preset=preset, generator=torch.Generator().manual_seed(0))
        assert stats.nfe == 3
    with pytest.raises(ValueError, match="unknown sampling preset"):
        preset_options("turbo")


# ---------------------------------------------------------------- re-entrancy, the one training loop, checks
SMALL_DISTILL = dict(n_pairs=300, n_val=100, batch_size=64, seed=0, progress=False)


def test_pairs_count_their_own_evaluations(teachers):
    """Partial segments integrate a bound view: the teacher's shared field counter is neither reset nor read."""
    _, glob = teachers
    shared = glob.field(1)
    shared.nfe = 1000
    _, nfe = teacher_pairs(glob, distill_plan(1, splits=2), held_out_z(100), ode=tl.ODEOptions(solver="rk4", steps=8))
    assert nfe == [16.0, 16.0]  # 4 RK4 steps of 4 evaluations per half block
    assert shared.nfe == 1000


def test_students_train_through_the_step_loop(teachers):
    lfm, _ = teachers
    calls = []
    sampler = distill(lfm, k=1, batches=[3, 1, 2], lr_decay=None, callback=lambda *a: calls.append(a), **SMALL_DISTILL)
    assert [(s, b) for s, b, _ in calls] == [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (3, 2)]
    assert [loss for *_, loss in calls] == [loss for st in sampler.report.stages for loss in st.losses]
    assert [st.batches for st in sampler.report.stages] == [3, 1, 2]
    # every evaluation inside distill went through a view: the students' own counters are untouched
    assert all(st.field.nfe == 0 for st in sampler.students)
    with pytest.raises(FloatingPointError, match=r"distill stage 1/3: loss became .* at batch \d+; lower lr"):
        distill(lfm, k=1, batches=50, lr=1e30, lr_decay=None, **SMALL_DISTILL)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr must be a positive finite number"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(lr_decay="linear"), "lr_decay must be None or 'cosine'"),
    (dict(batches=[5, 5]), r"batches must be a positive int or one int per stage \(3 values\)"),
    (dict(batches=[5, 0, 5]), r"batches must be a positive int or one int per stage \(3 values\)"),
    (dict(n_val=1), "n_val must be an int >= 2"),
    (dict(n_pairs=0), "n_pairs must be a positive int"),
    (dict(batch_size=True), "batch_size must be a positive int"),
])
def test_bad_settings_are_refused_before_any_pairs(teachers, monkeypatch, kwargs, match):
    import torchcfm_local.distillation.orchestrator as orchestrator

    def no_pairs(*args, **kw):
        raise AssertionError("pairs were generated before the settings were checked")

    monkeypatch.setattr(orchestrator, "teacher_pairs", no_pairs)
    with pytest.raises(ValueError, match=match):
        distill(teachers[0], k=1, **{**SMALL_DISTILL, **kwargs})


def test_sample_resolves_presets_per_sampler(teachers, lfm_k1):
    lfm, _ = teachers
    assert set(SAMPLING_PRESETS) == {"fast", "quality"}
    _, stats = sample(lfm, 20, preset="euler")  # a solver name is ODE options, not a preset
    assert stats.nfe == 3 * lfm.ode.steps
    with pytest.raises(ValueError, match="unknown sampling preset 'turbo'"):
        sample(lfm, 5, preset="turbo")
    with pytest.raises(ValueError, match="unknown sampling preset 'euler'"):
        sample(lfm_k1, 5, preset="euler")
    with pytest.raises(TypeError, match="it has no ODE"):
        sample(lfm_k1, 5, preset=tl.ODEOptions(solver="euler", steps=1))
    # a one-step map has nothing for a preset to choose: decode takes none
    with pytest.raises(TypeError, match="preset"):
        lfm_k1.decode(held_out_z(4), preset="fast")


def test_docstrings_keep_their_latex():
    """The maths in the docstrings is raw text: ``\\theta`` is not a tab followed by "heta"."""
    import torchcfm_local.distillation as distillation
    from torchcfm_local.distillation import OneStepMap, orchestrator, plan, students

    for obj in (distillation, plan, students, orchestrator, step_coefficients, OneStepMap, OneStepMap.apply, distill):
        assert not any(c in obj.__doc__ for c in "\t\a\b\v\f"), obj
    assert r"\theta" in step_coefficients.__doc__ and r"\tfrac{\pi}{2}" in step_coefficients.__doc__
    assert r"\theta" in distill.__doc__ and r"\mathcal{L}(\theta)" in orchestrator.__doc__


# ---------------------------------------------------------------- the example
def test_distill_example_runs_small():
    main = runpy.run_path(str(EXAMPLES / "distill_2d.py"))["main"]
    res = main(size="tiny")
    rows = {r["name"]: r for r in res}
    assert rows["teacher (quality)"]["nfe"] > 4
    assert rows["distilled k=1"]["nfe"] == 4 and rows["distilled k=2"]["nfe"] == 2
    noise = rows["N(0, I) noise"]["energy_distance"]
    for name in ("teacher (quality)", "distilled k=1", "distilled k=2"):
        assert rows[name]["energy_distance"] < 0.5 * noise, (name, rows[name], noise)


@pytest.mark.parametrize("splits", [1, 2])
def test_standardized_teacher_distills_in_data_units(tmp_path, splits):
    """Students work in the blocks' space; the sampler maps its last stage back to data units,
    whether block 1 is one segment or cut into pieces."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 2, generator=g) * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -4.0])
    torch.manual_seed(0)
    teacher = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.0, 2), velocity_factory=small_mlp)
    teacher.fit(x, batches_per_block=60, batch_size=256, seed=0, progress=False, standardize="diagonal")
    z = held_out_z(500)
    plan = distill_plan(teacher.n_blocks, k=1, splits=splits)
    states, _ = teacher_pairs(teacher, plan, z)
    ode = teacher.ode
    assert torch.allclose(teacher.standardizer.invert(states[-1]), teacher.decode(z, ode=ode), atol=1e-4)
    assert states[-1].std(0).sub(1).abs().max() < 0.5  # the teacher's states stay standardized

    sampler = distill(teacher, k=1, splits=splits, batches=100, **FAST_DISTILL)
    raw = z
    for student in sampler.students:
        raw = student(raw)
    out = sampler.decode(z)
    assert torch.allclose(out, teacher.standardizer.invert(raw), atol=1e-5)
    assert torch.allclose(sampler(z), out, atol=1e-5)
    assert (out.mean(0) - torch.tensor([10.0, -4.0])).abs().max() < 1.0  # data units, not standardized ones
    assert torch.equal(sampler.decode(z, stages=[1]), sampler.students[0](z))  # not the last stage: no map
    sampler.save(tmp_path / "s.pt")
    loaded = DistilledSampler.load(tmp_path / "s.pt")
    assert loaded.standardizer == teacher.standardizer and torch.equal(loaded.decode(z), out)
