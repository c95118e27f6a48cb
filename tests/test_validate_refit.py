"""What validate refits from: pooled step times, and no executor collectives as links."""

import numpy as np
import pytest

from calibration import load_profile
from calibration.errors import InputError
from calibration.fit import fit_local, without_executor_collectives
from calibration.store import Store
from planner import validate as V


def test_executor_collectives_are_not_link_measurements():
    samples = [{"op": "send_recv", "run_id": 1}, {"op": "broadcast", "run_id": 1},
               {"op": "attention", "run_id": 1}, {"op": "send_recv", "run_id": 2}]
    kept = without_executor_collectives(samples, executor_run_ids=[1])
    assert kept == [{"op": "attention", "run_id": 1}, {"op": "send_recv", "run_id": 2}]


def _compute_samples():
    """Operator samples of one made-up CPU: enough shapes for every curve but no link."""
    out = []
    for t in (16, 64, 256, 1024):
        out.append({"op": "gemm", "params": {"tokens": t, "k": 64, "n": 64, "dtype_bytes": 4},
                    "median_s": 1e-5 + t * 64 * 64 * 2 / 5e10, "run_id": 1})
        out.append({"op": "attention", "params": {
            "batch": 1, "q_len": t, "kv_len": t, "heads": 4, "kv_heads": 4, "head_dim": 16,
            "dtype_bytes": 4, "causal": True}, "median_s": 2e-5 + t * t * 64 / 2e10,
            "run_id": 1})
        out.append({"op": "memory", "params": {"bytes": t * 1024, "kind": "copy"},
                    "median_s": 5e-6 + t * 1024 / 5e9, "run_id": 1})
    return out


def test_refit_without_collectives_keeps_the_given_links_and_says_so():
    base = load_profile("local")
    prof = fit_local(_compute_samples(), "x", "cpu", 8e9, 2, {}, default_links=base.links)
    assert prof.links == base.links
    assert "not refitted" in prof.provenance["links"]
    with pytest.raises(InputError, match="no collective samples"):
        fit_local(_compute_samples(), "x", "cpu", 8e9, 2, {})


def test_measured_value_pools_the_steps_of_every_pass(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    passes = ([1.0] * 6 + [9.0] * 4, [2.0] * 10)     # seconds; each pass's median: 1.0, 2.0
    ids = []
    for times in passes:
        with store.run("executor", world_size=2) as run:
            run.add_sample("e2e_prefill", {"seq_len": 8}, times)
            run.add_sample("e2e_decode", {"seq_len": 8}, [t / 10 for t in times])
        ids.append(run.id)
    m = V.measured_from_store(store, ids)
    store.close()
    pooled = np.median(passes[0] + passes[1]) * 1e3
    assert pooled == pytest.approx(2000.0)
    assert m["ttft_ms"] == pytest.approx(pooled)     # not the lowest pass's 1000 ms
    assert m["ttft_ms_passes"] == [1000.0, 2000.0]
    assert m["ttft_ms_steps"] == 20
    assert m["tpot_ms"] == pytest.approx(pooled / 10)


def test_decode_and_prefill_attention_weigh_alike():
    from calibration.fit import MEASURED_SIGMA, Point, balance_attention_phases

    def pt(q, kv):
        return Point("attention", {"batch": 1, "q_len": q, "kv_len": kv, "heads": 4,
                                   "kv_heads": 4, "head_dim": 16, "dtype_bytes": 4,
                                   "causal": True}, 1e-3)
    points = [pt(1, kv) for kv in range(64, 64 + 9)] + [pt(256, 256)]   # 9 decode, 1 prefill
    out = balance_attention_phases(points)
    weight = [1 / p.sigma ** 2 for p in out]
    assert sum(weight[:9]) == pytest.approx(weight[9])                  # per phase: equal
    assert sum(weight) == pytest.approx(len(points) / MEASURED_SIGMA ** 2)   # total: kept
