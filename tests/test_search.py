"""Plan search: shared simulations equal direct ones, Pareto front, SLO / budget handling."""

import json

import pytest

from planner.capacity import CapacityPlanner
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.pareto import dominates, pareto_front, weighted_percentile
from planner.search import SearchSpace, enumerate_strategies, evaluate_strategy, search
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy
from planner.workload import Workload
from planner.workloads import synthetic

A100 = resolve_cluster("dgx-a100")
PAPER = PRESETS["paper-4l"]
SMALL = SearchSpace(thresholds=(1024, 4096, 16384), tokens_per_pool_gpu=(512, 2048),
                    max_pools=(4, 8), max_base_tp=8, pipeline_degrees=(1, 2))
WL = synthetic("mixed", 64, seed=0)


@pytest.fixture(scope="module")
def result():
    return search(PAPER, A100, 24, WL, batch=64, space=SMALL, workers=1, progress=False)


def test_space_respects_the_budget_and_valid_tp():
    for s in enumerate_strategies(PAPER, 24, SearchSpace()):
        assert s.max_gpus <= 24
        tp = s.base_tp if isinstance(s, FAPoolStrategy) else s.tp
        assert PAPER.heads % tp == 0
        if isinstance(s, FAPoolStrategy):
            assert s.max_pool <= 32 and s.base_tp <= 8


def test_shared_simulations_equal_direct_simulation_of_each_candidate(result):
    """Candidates share (base TP, pool size, bucket) simulations; check a spread of them
    against simulate() of the candidate's own strategy at each bucket's batch."""
    feasible = [c for c in result.candidates if c["feasible"]]
    assert len(feasible) > 10
    for c in feasible[::7]:
        s = result.strategy(c)
        for row in c["buckets"]:
            r = simulate(PAPER, A100, s, Workload(row["batch"], row["seq_len"],
                                                  row["output_len"]),
                         record=False, interval_samples=0)
            assert r.feasible
            assert row["tpot_ms"] == pytest.approx(r.tpot_s * 1e3, rel=1e-9)
            assert row["ttft_ms"] == pytest.approx(r.ttft_s * 1e3, rel=1e-9)
            assert row["pool_gpus"] == s.pool_size(row["max_seq_len"])


def test_aggregate_matches_evaluate_strategy(result):
    c = next(c for c in result.candidates if c["feasible"] and c["kind"] == "fapool")
    direct = evaluate_strategy(PAPER, A100, result.strategy(c), WL, batch=64)
    for key in ("tpot_ms", "ttft_ms", "tps", "tpot_p99_ms", "gpus"):
        assert direct[key] == pytest.approx(c[key], rel=1e-9)


def test_tps_is_tokens_over_time_of_all_requests(result):
    c = next(c for c in result.candidates if c["feasible"])
    tokens = sum(r.input_len + r.output_len for r in WL.requests)
    # every request of bucket b served in batches of B_b taking T_b each
    seconds = sum(row["weight"] * len(WL.requests) * row["total_s"] / row["batch"]
                  for row in c["buckets"])
    approx_tokens = sum(row["weight"] * len(WL.requests) * (row["seq_len"] + row["output_len"])
                        for row in c["buckets"])
    assert c["tps"] == pytest.approx(approx_tokens / seconds, rel=1e-9)
    assert approx_tokens == pytest.approx(tokens, rel=0.02)     # bucket means round up


def test_pareto_front_is_exactly_the_non_dominated_set(result):
    front = result.pareto
    feasible = [c for c in result.candidates if c["feasible"]]
    assert front
    for f in front:
        assert not any(dominates(c, f) for c in feasible)
    for c in feasible:
        assert any(dominates(f, c) or (f["gpus"], f["tpot_ms"], f["tps"]) ==
                   pytest.approx((c["gpus"], c["tpot_ms"], c["tps"])) for f in front)


def test_chosen_maximises_sustainable_tps_and_gpus_objective_minimises_gpus(result):
    """tps: the chosen plan has the highest capacity (tokens/s) of the plans simulated;
    gpus: the fewest GPUs of the plans that meet the request-level SLO."""
    assert result.chosen["capacity_tps"] == max(p["capacity_tps"] for p in result.served)
    assert result.chosen["gpus"] <= 24
    slo = result.chosen["requests"]["tpot_p99_ms"] * 2
    r = search(PAPER, A100, 24, WL, batch=64, space=SMALL, objective="gpus", workers=1,
               progress=False, slo_tpot_ms=slo)
    ok = [p for p in r.served if p["meets_slo"]]
    assert r.chosen["gpus"] == min(p["gpus"] for p in ok)
    assert r.chosen["requests"]["tpot_p99_ms"] <= slo


def test_unmeetable_slo_gives_no_plan_and_the_closest(result):
    """A TPOT SLO no layout meets even serving one request at a time: no plan; the closest
    is the layout whose one-at-a-time p99 TPOT (the lower bound) is the least."""
    r = search(PAPER, A100, 24, WL, batch=64, space=SMALL, workers=1, progress=False,
               slo_tpot_ms=1e-6)
    assert r.chosen is None and r.closest is not None
    assert "no layout meets the SLOs" in r.reason and "p99 TPOT" in r.reason
    planner = CapacityPlanner(PAPER, A100, A100.load_profile(), WL, r.slo, 24, 64, r.costs)
    floors = {c["name"]: planner.floor(r.strategy(c))["tpot_p99_ms"]
              for c in r.candidates if c["feasible"]}
    assert floors[r.closest["name"]] == min(floors.values())
    assert r.closest["requests"]["tpot_p99_ms"] >= floors[r.closest["name"]]


def test_budget_below_memory_needs():
    r = search(PRESETS["llama-2-70b"], A100, 1, synthetic("fixed:4096", 4), batch=8,
               workers=1, progress=False)
    assert r.chosen is None and r.closest is None
    assert "no plan fits in memory" in r.reason and "GB" in r.reason
    assert all(not c["feasible"] and c["reasons"] for c in r.candidates)


def test_parallel_search_equals_serial_and_reports_progress(monkeypatch):
    import planner.capacity as capacity
    calls, pooled = [], []
    serve_all = capacity.serve_all

    def spy(planner, jobs, workers=1):
        pooled.append((len(jobs), workers))
        return serve_all(planner, jobs, workers)
    monkeypatch.setattr(capacity, "serve_all", spy)
    a = search(PAPER, A100, 16, WL, batch=64, space=SMALL, workers=1, progress=False)
    b = search(PAPER, A100, 16, WL, batch=64, space=SMALL, workers=2,
               progress=lambda done, total: calls.append((done, total)))
    strip = lambda r: [{k: v for k, v in c.items() if not k.endswith("interval")}  # noqa
                       for c in r.candidates]
    assert strip(a) == strip(b)
    assert calls and calls[-1][0] == calls[-1][1] == b.screen_sims
    assert a.chosen == b.chosen
    # the request stage too: the front's plans run in 2 processes, the same plans
    assert a.served == b.served
    assert [c.get("serving_plan") for c in a.pareto] == [c.get("serving_plan") for c in b.pareto]
    assert pooled[-1][1] == 2 and pooled[-1][0] >= 4       # enough of them for a pool


def test_weighted_percentile_and_pareto_helpers():
    assert weighted_percentile([1, 2, 3], [0.5, 0.4, 0.1], 50) == 1
    assert weighted_percentile([1, 2, 3], [0.5, 0.4, 0.1], 90) == 2
    assert weighted_percentile([1, 2, 3], [0.5, 0.4, 0.1], 99) == 3
    a = {"gpus": 8, "tpot_ms": 10.0, "tps": 100.0, "feasible": True}
    b = {"gpus": 16, "tpot_ms": 10.0, "tps": 90.0, "feasible": True}
    c = {"gpus": 16, "tpot_ms": 5.0, "tps": 90.0, "feasible": True}
    assert dominates(a, b) and not dominates(a, c) and not dominates(c, a)
    assert pareto_front([a, b, c]) == [a, c]


def test_plan_cli_slo_unmeetable_exit_3_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["plan", "--gpus", "16", "--workload", "fixed:2048", "--requests", "8",
                 "--batch", "16", "--slo-tpot", "0.000001", "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 3 and not out.exists()
    err = [ln for ln in cap.err.splitlines() if not ln.startswith("fapool: ")]
    assert len(err) == 1 and "no layout meets the SLOs" in err[0]
    assert "closest" in err[0] and "p99 TPOT" in err[0] and "SLO 1e-06 ms" in err[0]
    assert "closest" in cap.out


def test_plan_cli_budget_too_small(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["plan", "--model", "llama-2-70b", "--gpus", "1", "--workload", "fixed:4096",
                 "--requests", "4", "--batch", "8", "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert code == 3 and not out.exists()
    assert "no plan fits in memory" in json.loads(cap.out)["reason"]
    assert len([ln for ln in cap.err.splitlines() if not ln.startswith("fapool: ")]) == 1


def test_search_accepts_a_single_batch_shape_and_a_mix_name():
    r = search(PAPER, A100, 16, Workload(32, 4096, 16), space=SMALL, workers=1,
               progress=False)
    assert r.batch == 32 and len(r.buckets) == 1 and r.buckets[0].input_len == 4096
    direct = simulate(PAPER, A100, r.strategy(r.chosen),
                      Workload(r.chosen["buckets"][0]["batch"], 4096, 16),
                      record=False, interval_samples=0)
    assert r.chosen["tpot_ms"] == pytest.approx(direct.tpot_s * 1e3)
    r2 = search(PAPER, A100, 16, "fixed:1024", batch=8, space=SMALL, workers=1,
                progress=False)
    assert r2.workload["name"] == "fixed:1024" and r2.batch == 8
