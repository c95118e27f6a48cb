"""Where the model is wrong (planner.loopview): predicted vs measured per op kind, and the
side-by-side Chrome trace, from a simulated result and a measured timeline."""

import json

from calibration.profile import load_profile
from planner import validate as V
from planner.loopview import op_table, write_comparison_trace
from planner.model import PRESETS
from planner.simulate import decode_step


def _case():
    cfg = V.default_configs(quick=True)[1]                  # FA Pool tp1 pool1, 2 ranks
    result = V.simulate_config(PRESETS["tiny"], cfg, load_profile("local"), record=True)
    steps = [[] for _ in range(decode_step(cfg.workload) + 1)]
    steps[0] = [["gemm", "qkv_proj", 0, 0, 10.0, 10.002]]                # 2 ms prefill GEMM
    steps[-1] = [["attention", "pool_attention", 0, 0, 20.0, 20.001]]    # 1 ms decode
    summary = {"timeline_per_rank": [steps, steps]}
    return result, summary


def test_op_table_puts_both_sides_per_rank_and_kind():
    result, summary = _case()
    table = op_table(result, summary)
    assert set(table) == {"prefill", "decode"}
    assert abs(table["prefill"]["gemm"]["measured_ms"] - 2.0) < 1e-6     # mean per rank
    assert abs(table["decode"]["attention"]["measured_ms"] - 1.0) < 1e-6
    assert table["prefill"]["gemm"]["predicted_ms"] > 0
    assert table["decode"]["comm"]["predicted_ms"] > 0


def test_comparison_trace_has_the_prediction_and_every_ranks_measurement(tmp_path):
    result, summary = _case()
    path = write_comparison_trace(result, summary, tmp_path / "t" / "c.json")
    events = json.loads(path.read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert names[3] == "measured (executor)" and names[1].startswith("predicted")
    measured = [e for e in events if e["ph"] == "X" and e["pid"] == 3]
    assert len(measured) == 4 and {e["tid"] for e in measured} == {1, 2}
    decode = [e for e in measured if e["cat"].startswith("decode")]
    assert decode and all(e["ts"] >= result.ttft_s * 1e6 - 1e-2 for e in decode)  # after prefill
    assert any(e["ph"] == "X" and e["pid"] in (1, 2) for e in events)
