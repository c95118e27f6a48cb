"""fapool validate: error metrics, leave-one-out honesty, bad plans refused."""

import json

import numpy as np

import pytest

import planner.validate as V
from calibration.profile import load_profile
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.plan import make_plan, save_plan
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload


def row(kind, seq, pred, meas, label=None):
    return {"label": label or f"{kind}{seq}", "kind": kind, "seq_len": seq,
            "predicted": {"ttft_ms": pred[0], "tpot_ms": pred[1]},
            "measured": {"ttft_ms": meas[0], "tpot_ms": meas[1]}}


def test_mape_and_ratio_errors():
    rows = [row("static", 64, (1.0, 2.0), (2.0, 2.0)), row("fapool", 64, (3.0, 1.0), (3.0, 2.0))]
    assert V.mape(rows, "predicted", "ttft_ms") == pytest.approx(25.0)      # 50 % and 0 %
    assert V.mape(rows, "predicted", "tpot_ms") == pytest.approx(25.0)
    ratios = {r["metric"]: r for r in V.ratio_errors(rows, "predicted")}
    assert ratios["ttft_ms"]["predicted"] == 3.0 and ratios["ttft_ms"]["measured"] == 1.5
    assert ratios["ttft_ms"]["error_pct"] == pytest.approx(100.0)
    assert ratios["tpot_ms"]["error_pct"] == pytest.approx(-50.0)
    assert V.summarize(rows, "predicted")["ratio"] == pytest.approx(75.0)


def test_e2e_correction_is_one_scale_per_family_and_metric():
    two = [dict(row("static", 64, (0, 0), (2.0, 4.0)),
                predicted_refit={"ttft_ms": 1.0, "tpot_ms": 1.0}),
           dict(row("static", 128, (0, 0), (8.0, 1.0)),
                predicted_refit={"ttft_ms": 1.0, "tpot_ms": 1.0})]
    c = V.e2e_corrections(two)
    assert c[("static", "ttft_ms")] == pytest.approx((0.0, 4.0))       # geometric mean
    assert c[("static", "tpot_ms")] == pytest.approx((0.0, 2.0))
    # measured = 3 x predicted exactly, over three lengths: the factor is 3, no intercept
    three = [dict(row("fapool", n, (0, 0), (3 * p, 3 * p)),
                  predicted_refit={"ttft_ms": p, "tpot_ms": p})
             for n, p in ((64, 1.0), (128, 3.0), (256, 7.0))]
    assert V.e2e_corrections(three)[("fapool", "ttft_ms")] == (0.0, pytest.approx(3.0))


def test_after_refit_never_uses_the_configs_own_measurement(monkeypatch, tmp_path):
    """Leave-one-out: a config's refit prediction (and its bias) must not change when its
    own measurement changes, and its refit must exclude its own store run."""
    configs = V.default_configs(quick=True)
    fitted_without = []

    def fake_run(paths, store, **kw):           # run id = config index + 1
        return [{"store_run_id": int(p.stem.split("_")[1]) + 1} for p in paths]

    def fake_refit(store, run_ids, base, name="x"):
        fitted_without.append(set(range(1, len(configs) + 1)) - set(run_ids))
        return base

    def run(scale_first):
        def fake_measured(store, run_ids):
            (run_id,) = run_ids                 # one pass
            k = 3.0 * (scale_first if run_id == 1 else 1.0) * (1 + 0.1 * run_id)
            return {"ttft_ms": k, "tpot_ms": k / 2}
        monkeypatch.setattr(V, "measured_from_store", fake_measured)
        return V.validate(configs, tmp_path / "s.sqlite", tmp_path, progress=None, calibrate=False,
                          repeats=1)

    monkeypatch.setattr(V, "run_executor", fake_run)
    monkeypatch.setattr(V, "refit_profile", fake_refit)
    a, b = run(1.0), run(10.0)
    for key in ("predicted_refit", "predicted_with_bias"):
        assert a["configs"][0][key] == b["configs"][0][key]
    # ... while the bias of a config of the same family that trains on it does change
    assert a["configs"][2]["family"] == a["configs"][0]["family"]
    assert a["configs"][2]["predicted_with_bias"] != b["configs"][2]["predicted_with_bias"]
    folds = fitted_without[:len(configs)]
    assert folds == [{i} for i in range(1, len(configs) + 1)]
    assert set(a["mape"]) == {"before", "refit"}         # the bias is never inside refit
    for stage in a["mape"].values():
        assert {"ttft", "tpot", "ratio"} <= set(stage)
    assert {"ttft", "tpot", "ratio"} <= set(a["bias"]["mape_with_bias"])
    for c in a["configs"]:
        assert {"predicted", "measured", "predicted_refit", "error_pct"} <= set(c)
        assert set(c["error_pct"]) == {"before", "refit", "with_bias"}


def _local_plan(tmp_path, strategy=None):
    cluster = V.local_cluster(3)
    plan = make_plan(PRESETS["tiny"], cluster, strategy or FAPoolStrategy(
        base_tp=1, threshold=16, pool_gpus=2, max_pool=2), Workload(2, 64, 8),
        load_profile("dgx-a100"))
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    return path


@pytest.mark.parametrize("command", ["validate", "run"])
def test_edited_plan_is_refused_with_one_line(tmp_path, capsys, command):
    path = _local_plan(tmp_path)
    raw = json.loads(path.read_text())
    raw["groups"]["pool"] = [1]                      # no longer what the strategy implies
    path.write_text(json.dumps(raw))
    assert main([command, "--plan", str(path), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan.groups" in err[0]


def test_validate_refuses_a_plan_for_another_cluster(tmp_path, capsys):
    plan = make_plan(PRESETS["paper-4l"], resolve_cluster("dgx-a100"), StaticStrategy(8, 2),
                     Workload(8, 1024, 8), load_profile("dgx-a100"))
    save_plan(plan, tmp_path / "p.json")
    assert main(["validate", "--plan", str(tmp_path / "p.json"),
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "plan.cluster" in capsys.readouterr().err


def test_plan_configs_pair_the_plan_with_a_baseline(tmp_path):
    from planner.plan import load_plan
    cfgs = V.plan_configs(load_plan(_local_plan(tmp_path)))
    kinds = [c.kind for c in cfgs]
    assert kinds.count("fapool") == kinds.count("static") == 2
    assert sorted(c.workload.input_len for c in cfgs) == [16, 16, 64, 64]


def test_configs_without_a_micro_batch_count_run_with_the_simulators(monkeypatch, tmp_path):
    """An older plan.json leaves strategy.microbatches unset; validate states the count the
    simulator uses in the plans it runs (the executor would otherwise cut by 1)."""
    configs = [V.Config(f"c{n}", StaticStrategy(1, 1), Workload(4, n, 4)) for n in (16, 32, 64)]
    monkeypatch.setattr(V, "run_executor", lambda paths, store, **kw: [
        {"store_run_id": i + 1} for i, _ in enumerate(paths)])
    monkeypatch.setattr(V, "measured_from_store", lambda store, ids: {
        "ttft_ms": 1.0 + ids[0], "tpot_ms": 1.0})
    monkeypatch.setattr(V, "refit_profile", lambda store, ids, base, name="x": base)
    V.validate(configs, tmp_path / "s.sqlite", tmp_path, repeats=1, calibrate=False)
    for i in range(3):
        written = json.loads((tmp_path / f"plan_{i}.json").read_text())
        assert written["strategy"]["microbatches"] == 2


# ------------------------------------------------------------------ the loop, synthetic
NOISE = 0.02          # lognormal sigma of every synthetic timing


def _truth():
    """A known 'machine': the shipped local profile with GEMMs 1.6x and memory ops 1.3x
    slower, attention 0.8x, and 60 us of host time per op."""
    import dataclasses as dc

    from calibration.profile import Host
    local = load_profile("local")

    def scaled(curve, key, factor):
        return dc.replace(curve, params={**curve.params, key: curve.params[key] / factor},
                          cov=None, std={})
    return dc.replace(local, name="truth",
                      gemm=scaled(local.gemm, "efficiency_max", 1.6),
                      attention=scaled(local.attention, "efficiency_max", 0.8),
                      memory=scaled(local.memory, "read_efficiency", 1.3),
                      host=Host(6e-5))


def synthetic_runner(truth, rng):
    """A stand-in for the executor: for each plan, every compute op of every rank's
    schedule timed at its cost under `truth` times lognormal noise, the e2e steps at the
    simulator's TTFT / TPOT under truth times noise; written to the store as an executor
    run.  A host_op microbenchmark of truth's host time comes first, as calibrate does."""
    from calibration.store import Store
    from planner.costs import CostModel
    from planner.plan import load_plan
    from planner.schedule import COMPUTE, build_schedule, microbatch_rows
    from planner.sim.run import Coster
    from planner.simulate import decode_step

    def noisy(t, n):
        return list(t * np.exp(NOISE * rng.standard_normal(n)))

    def run(paths, store_path, timeout=None):
        store = Store(store_path)
        out = []
        try:
            if not store.runs(kind="microbench"):
                with store.run(kind="microbench", backend="gloo", world_size=2,
                               torch_version="synthetic", meta={"device": "cpu"}) as r:
                    r.add_sample("host_op", {}, noisy(truth.host.op_overhead_s, 5))
            for path in paths:
                plan = load_plan(path)
                wl, s = plan.workload, plan.strategy
                cm = CostModel(truth, plan.cluster, plan.model.dtype_bytes)
                rows = tuple(microbatch_rows(wl.batch, s.microbatches))
                samples = {}
                for step in (0, decode_step(wl)):
                    sch = build_schedule(plan.layout, rows, wl.input_len, step)
                    coster = Coster(cm, sch)
                    for unit, prog in sch.programs.items():
                        for op, cost in coster.program(unit):
                            if op.kind in COMPUTE:
                                samples.setdefault((op.kind, op.params), []).extend(
                                    noisy(cost.seconds, 3))
                r = V.simulate_config(plan.model, V.Config("x", s, wl, plan.model), truth)
                with store.run(kind="executor", backend="gloo", world_size=plan.world_size,
                               torch_version="synthetic", plan_id=plan.plan_id) as run_:
                    for (op, params), times in samples.items():
                        run_.add_sample(op, dict(params), times)
                    run_.add_sample("e2e_prefill", {"seq_len": wl.input_len},
                                    noisy(r.ttft_s, V.STEPS))
                    run_.add_sample("e2e_decode", {"seq_len": wl.input_len},
                                    noisy(r.tpot_s, V.STEPS * (wl.output_len - 1)))
                out.append({"store_run_id": run_.id})
        finally:
            store.close()
        return out
    return run


@pytest.mark.slow
def test_loop_recovers_a_known_profile_from_synthetic_timings(tmp_path):
    """store -> refit -> predict, deterministically: the refit (no per-family factor) must
    recover the known profile: its host time as measured, its op costs and every held-out
    configuration within a bound from the noise.  The shipped profile starts far off."""
    from planner.costs import CostModel
    from planner.schedule import COMPUTE, build_schedule, microbatch_rows
    from planner.sim.run import Coster

    truth = _truth()
    configs = V.default_configs(quick=True)
    report = V.validate(configs, tmp_path / "s.sqlite", tmp_path, repeats=1,
                        runner=synthetic_runner(truth, np.random.default_rng(0)),
                        calibrate=False, refit_all=True)
    bound = 100 * 5 * NOISE            # 5 sigma, in %: 10 %
    assert report["mape"]["before"]["ttft"] > 2 * bound        # the start is far off
    for stage in ("ttft", "tpot", "ratio"):
        assert report["mape"]["refit"][stage] <= bound, (stage, report["mape"]["refit"])
    refit = report["refit_profile"]
    assert refit.host.op_overhead_s == pytest.approx(truth.host.op_overhead_s, rel=0.05)
    worst = 0.0
    for cfg in configs:                 # the refit prices every op as the truth does
        model = cfg.spec(PRESETS["tiny"])
        layout = V.make_plan(model, V.local_cluster(cfg.strategy.max_gpus), cfg.strategy,
                             cfg.workload, truth).layout
        rows = tuple(microbatch_rows(cfg.workload.batch, cfg.strategy.microbatches or 1))
        sch = build_schedule(layout, rows, cfg.workload.input_len)
        got = Coster(CostModel(refit, layout.cluster, model.dtype_bytes), sch)
        want = Coster(CostModel(truth, layout.cluster, model.dtype_bytes), sch)
        for unit in sch.programs:
            for (op, a), (_, b) in zip(got.program(unit), want.program(unit)):
                if op.kind in COMPUTE and b.seconds > 0:
                    worst = max(worst, abs(a.seconds / b.seconds - 1))
    assert worst * 100 <= 3 * bound, worst
