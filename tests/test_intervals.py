"""Prediction intervals: bootstrap refits (calibration.fit.bootstrap_draws) give intervals
that hold the truth about as often as they claim on synthetic data, stay about as wide
from a quick sweep as from a full one, and always hold the point prediction."""

import dataclasses

import numpy as np
from calibration import curves
from calibration.fit import Point, fit_curve

DEV = curves.Device("synthetic", peak_flops=1e13, hbm_bytes=1e10, hbm_bandwidth=50e9)
TRUE = {"efficiency_max": 0.8, "half_tokens": 40.0, "read_efficiency": 0.7, "launch_s": 5e-6}
NOISE = 0.05
FULL = [(k, n, t) for k, n in ((512, 1536), (1024, 1024), (1024, 4096), (4096, 1024),
                               (2048, 2048)) for t in (1, 4, 16, 64, 256, 1024, 4096)]
QUICK = [(k, n, t) for k, n in ((1024, 1024), (2048, 2048)) for t in (1, 16, 256, 4096)]
HELD_OUT = {"tokens": 128, "k": 2048, "n": 4096, "dtype_bytes": 2}     # not a measured shape


def _points(rng, shapes, repeats=1):
    out = []
    for k, n, t in shapes:
        shape = {"tokens": t, "k": k, "n": n, "dtype_bytes": 2}
        for _ in range(repeats):
            noisy = curves.gemm_time(TRUE, DEV, **shape) * float(
                np.exp(NOISE * rng.standard_normal()))
            out.append(Point("gemm", shape, noisy, sigma=NOISE))
    return out


def _interval(curve, shape) -> tuple:
    times = [curves.gemm_time(dict(zip(curve.names, d)), DEV, **shape) for d in curve.draws]
    return tuple(np.percentile(times, (5, 95)))


def test_bootstrap_intervals_hold_the_truth_about_as_often_as_they_claim():
    truth = curves.gemm_time(TRUE, DEV, **HELD_OUT)
    hits = 0
    seeds = range(30)
    for seed in seeds:
        curve = fit_curve("gemm", _points(np.random.default_rng(seed), FULL), DEV).curve
        assert len(curve.draws) >= 20
        low, high = _interval(curve, HELD_OUT)
        hits += low <= truth <= high
    assert 0.7 <= hits / len(seeds) <= 1.0, f"coverage {hits / len(seeds):.2f} of a 90 % interval"


def test_a_quick_sweep_interval_is_within_3x_of_a_full_ones_width():
    """The GEMM shapes of `fapool calibrate --quick` and of the full sweep (this machine's,
    calibration.microbench.sweep), timed on a synthetic device with the same noise: the
    width ratio per shape, the median of 6 noise draws (one draw's 24-refit percentiles
    move by ~30 %)."""
    from calibration.microbench import sweep
    shapes = ({"tokens": 128, "k": 1024, "n": 2048, "dtype_bytes": 2},
              {"tokens": 1, "k": 1024, "n": 1024, "dtype_bytes": 2},
              {"tokens": 512, "k": 2048, "n": 512, "dtype_bytes": 2})
    ratios = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        full, quick = (fit_curve("gemm", _points(rng, [(k, n, t) for t, k, n in
                                                       sweep(q).gemm]), DEV).curve
                       for q in (False, True))
        ratios.append([np.subtract(*_interval(quick, s)[::-1])
                       / np.subtract(*_interval(full, s)[::-1]) for s in shapes])
    for shape, r in zip(shapes, np.median(ratios, axis=0)):
        assert 0 < r <= 3, (shape, r)


def test_the_point_prediction_is_always_inside_its_interval():
    from calibration.profile import load_profile
    from planner.cluster import resolve_cluster
    from planner.model import PRESETS
    from planner.simulate import simulate
    from planner.strategy import FAPoolStrategy, StaticStrategy
    from planner.workload import Workload

    a100 = resolve_cluster("dgx-a100")
    shipped = load_profile("dgx-a100")
    # a profile with no bootstrap draws and a wide, skewed covariance (an older profile)
    skewed = dataclasses.replace(shipped, gemm=dataclasses.replace(
        shipped.gemm, draws=(), cov=tuple(tuple(4.0 * c for c in row)
                                          for row in shipped.gemm.cov)))
    for profile in (shipped, skewed):
        for strategy, wl in ((StaticStrategy(8, 2), Workload(8, 2048, 32)),
                             (FAPoolStrategy(), Workload(4, 16384, 8))):
            r = simulate(PRESETS["paper-4l"], a100, strategy, wl, profile=profile,
                         interval_samples=16)
            for point, (low, high) in ((r.ttft_s, r.ttft_interval), (r.tpot_s, r.tpot_interval)):
                assert low <= point <= high, (profile.name, strategy, point, low, high)


def test_draws_round_trip_through_the_profile_yaml(tmp_path):
    import yaml

    from calibration.profile import Profile, load_profile
    p = load_profile("dgx-h100")
    assert p.gemm.draws and p.links["nvlink"].curve.draws
    again = Profile.from_dict(yaml.safe_load(yaml.safe_dump(p.to_dict())))
    assert np.allclose(again.gemm.draws, p.gemm.draws)
