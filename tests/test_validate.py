"""fapool validate: error metrics, leave-one-out honesty, bad plans refused."""

import json

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
            return {"ttft_ms": k, "tpot_ms": k / 2, "ttft_ms_median": k, "tpot_ms_median": k}
        monkeypatch.setattr(V, "measured_from_store", fake_measured)
        return V.validate(configs, tmp_path / "s.sqlite", tmp_path, progress=None,
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
    V.validate(configs, tmp_path / "s.sqlite", tmp_path, repeats=1)
    for i in range(3):
        written = json.loads((tmp_path / f"plan_{i}.json").read_text())
        assert written["strategy"]["microbatches"] == 2
