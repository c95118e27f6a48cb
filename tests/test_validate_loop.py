"""The closed loop for real, once, as a smoke test: `fapool validate --quick` runs the
executor on this machine, stores, refits and predicts held-out configurations.

It asserts the report's shape and that every figure is a finite, positive number, not an
accuracy: real timings on a shared 2-core machine move with its load, so the accuracy is
a benchmark (benchmarks/validate_loop.py, figures in benchmarks/history.json), and the
loop's logic is tested deterministically with a synthetic executor (test_validate.py).

It validates a small plan (FA Pool, base TP 1 + pool 1, 2 ranks: the plan, 1/4 and 1/16 of its
length, each beside static TP 1 x PP 2) with 5 timed steps, so the smoke costs one world
size's microbenchmarks and six short runs (~1 minute), not `--quick`'s three world sizes and
twelve configurations (~4 minutes); `--quick` itself is what benchmarks/validate_loop.py runs.
"""

import io
import json
import math
from contextlib import redirect_stdout

import pytest

from calibration.profile import load_profile
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.plan import ExecutorSettings, make_plan, save_plan
from planner.strategy import FAPoolStrategy
from planner.workload import Workload


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    plan = make_plan(PRESETS["tiny"], resolve_cluster("local"),
                     FAPoolStrategy(base_tp=1, threshold=16, pool_gpus=1, max_pool=1,
                                    microbatches=2),
                     Workload(batch=2, input_len=256, output_len=8), load_profile("local"),
                     executor=ExecutorSettings(0, "float32", 120.0))
    save_plan(plan, d / "plan.json")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["validate", "--plan", str(d / "plan.json"), "--repeats", "1",
                     "--steps", "5", "--store", str(d / "store.sqlite"), "--json"])
    assert code == 0
    return json.loads(buf.getvalue())


@pytest.mark.slow
def test_report_shape(report):
    assert len(report["configs"]) >= 6
    assert {c["kind"] for c in report["configs"]} == {"fapool", "static"}
    for c in report["configs"]:
        for key in ("predicted", "measured", "predicted_refit"):
            assert c[key]["ttft_ms"] > 0 and c[key]["tpot_ms"] > 0
        assert set(c["error_pct"]) == {"before", "refit", "with_bias"}
        assert c["host_overhead_us"] >= 0          # fitted per fold, without this config
    assert set(report["mape"]) == {"before", "refit"}
    for stage in list(report["mape"].values()) + [report["bias"]["mape_with_bias"]]:
        for key in ("ttft", "tpot", "ratio"):
            assert math.isfinite(stage[key]) and stage[key] >= 0
