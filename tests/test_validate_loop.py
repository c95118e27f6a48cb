"""The closed loop for real, once, as a smoke test: `fapool validate --quick` runs the
executor on this machine, stores, refits and predicts held-out configurations.

It asserts the report's shape and that every figure is a finite, positive number, not an
accuracy: real timings on a shared 2-core machine move with its load, so the accuracy is
a benchmark (benchmarks/validate_loop.py, figures in benchmarks/history.json), and the
loop's logic is tested deterministically with a synthetic executor (test_validate.py).
"""

import io
import json
import math
from contextlib import redirect_stdout

import pytest

from planner.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    store = tmp_path_factory.mktemp("validate") / "store.sqlite"
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["validate", "--quick", "--repeats", "1", "--store", str(store), "--json"])
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
