"""The closed loop for real: `fapool validate --quick` on this machine (executor runs).

The issue's target, enforced here: MAPE of TTFT and TPOT <= 10 % after the refit (held
out, leave-one-out) and the FA Pool / baseline ratio within 10 %.  Over four runs with
the default 5 passes (requests of all configurations alternating, steps pooled) this
machine reached TTFT 4.2-5.3 %, TPOT 1.1-1.8 %, ratio 1.9-3.7 % (closing note).
"""

import json

import pytest

from planner.cli import main

BOUND_PCT = 10.0  # the target


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    store = tmp_path_factory.mktemp("validate") / "store.sqlite"
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["validate", "--quick", "--store", str(store), "--json"])
    assert code == 0
    return json.loads(buf.getvalue())


@pytest.mark.slow
def test_report_shape(report):
    assert len(report["configs"]) >= 6
    assert {c["kind"] for c in report["configs"]} == {"fapool", "static"}
    for c in report["configs"]:
        for key in ("predicted", "measured", "predicted_after"):
            assert c[key]["ttft_ms"] > 0 and c[key]["tpot_ms"] > 0
        assert set(c["error_before_pct"]) == {"ttft_ms", "tpot_ms"}
        assert c["host_overhead_us"] > 0          # fitted per fold, without this config
    for when in ("before", "after"):
        for key in ("mape_ttft", "mape_tpot", "mape_ratio"):
            assert report[when][key] is not None


@pytest.mark.slow
def test_held_out_error_within_the_target(report):
    after = report["after"]
    assert after["mape_ttft"] <= BOUND_PCT
    assert after["mape_tpot"] <= BOUND_PCT
    assert after["mape_ratio"] <= BOUND_PCT
