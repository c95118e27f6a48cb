"""One set of metric definitions (planner.metrics) for the simulator, the executor's
report and the store; both JSON outputs carry the micro-batch rows they ran."""

import pytest

from planner import metrics
from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.simulate import simulate
from planner.strategy import StaticStrategy
from planner.workload import Workload

WL = Workload(batch=4, input_len=1024, output_len=128)


def test_definitions():
    m = metrics.metrics(WL, 0.5, 0.01)
    request = 0.5 + 127 * 0.01
    assert m["tps"] == pytest.approx(4 * (1024 + 128) / request)      # input + output
    assert m["decode_tps"] == pytest.approx(4 / 0.01)
    assert (m["ttft_ms"], m["tpot_ms"]) == (500.0, 10.0)
    assert metrics.tps(Workload(2, 8, 1), 0.1, None) == pytest.approx(2 * 9 / 0.1)
    assert metrics.tps(WL, 0.1, None) is None                          # decode not run


def test_simulator_and_executor_report_agree_on_the_same_times():
    pytest.importorskip("torch")
    from calibration.profile import load_profile
    from executor.report import summary
    from planner.plan import make_plan

    r = simulate(PRESETS["tiny"], resolve_cluster("local"), StaticStrategy(1, 1, 3), WL,
                 interval_samples=0)
    js = r.to_json()
    assert js["microbatch_rows"] == [2, 1, 1]                         # dealt, never empty
    plan = make_plan(PRESETS["tiny"], resolve_cluster("local"), StaticStrategy(1, 1, 3), WL,
                     load_profile("local"))
    res = {"ttft_s": [r.ttft_s], "tpot_s": [r.tpot_s], "per_rank_timings": [],
           "pool_size": 0, "microbatch_rows": [2, 1, 1], "decode_microbatch_rows": [4],
           "balanced": False}
    summ = summary(plan, res)
    for key in metrics.KEYS:
        assert summ[key] == pytest.approx(js[key], rel=1e-3), key
    assert summ["microbatch_rows"] == js["microbatch_rows"]
    assert summ["decode_microbatch_rows"] == js["decode_microbatch_rows"] == [4]   # PP=1
