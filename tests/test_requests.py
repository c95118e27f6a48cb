"""Request-level simulation: batching, the pool's resource manager, queueing, percentiles."""

import pytest

from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.requests import simulate_requests
from planner.serving import Serving
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload
from planner.workloads import Request, RequestWorkload, synthetic

A100 = resolve_cluster("dgx-a100")
PAPER = PRESETS["paper-4l"]


def workload(*reqs):
    return RequestWorkload("test", tuple(Request(*r) for r in reqs))


def level_at(occupancy, t):
    level = 0
    for when, value in occupancy:
        if when <= t:
            level = value
    return level


def test_single_request_matches_the_batch_simulation():
    """One request alone: TTFT = simulated prefill of batch 1, TPOT = decode step time."""
    s = StaticStrategy(tp=8, pp=1)
    r = simulate_requests(PAPER, A100, s, workload((0.0, 2048, 16)), Serving(max_batch=8))
    (rec,) = r.records
    pre = simulate(PAPER, A100, s, Workload(1, 2048, 16), phase="prefill", record=False,
                   interval_samples=0)
    dec = simulate(PAPER, A100, s, Workload(1, 2048, 16), phase="decode", record=False,
                   interval_samples=0)
    assert rec.ttft_s == pytest.approx(pre.ttft_s, rel=1e-9)
    assert rec.tpot_s == pytest.approx(dec.tpot_s, rel=1e-9)


def test_pool_gpus_are_taken_for_long_requests_and_released():
    s = FAPoolStrategy(base_tp=8, threshold=4096, tokens_per_pool_gpu=512, max_pool=16)
    r = simulate_requests(PAPER, A100, s, workload((0.0, 1000, 8), (0.0, 8192, 8),
                                                   (5.0, 1000, 8)), Serving(max_batch=8))
    short, long_, late = r.records
    assert short.pool_gpus == 0 and late.pool_gpus == 0
    assert long_.pool_gpus == 16                      # min(ceil(8192 / 512), 16)
    assert all(rec.finish_s is not None for rec in r.records)
    assert max(level for _, level in r.occupancy) == 16
    assert r.occupancy[-1][1] == 0                    # released at the end
    assert level_at(r.occupancy, long_.finish_s) == 0
    assert level_at(r.occupancy, long_.start_s) == 16
    s_json = r.summary()
    assert s_json["pool_requests"] == 1 and 0 < s_json["pool_occupancy_mean"] <= 1


def test_requests_queue_when_the_pool_is_busy_and_short_ones_pass():
    """Pool of 8; two long buckets each need all 8: the second waits for the first to
    release them, while a short request arriving later starts at once."""
    s = FAPoolStrategy(base_tp=8, threshold=4096, tokens_per_pool_gpu=512, max_pool=8)
    r = simulate_requests(PAPER, A100, s, workload((0.0, 5000, 32), (0.0, 9000, 32),
                                                   (0.001, 600, 4)), Serving(max_batch=8))
    a, b, short = r.records
    assert a.pool_gpus == b.pool_gpus == 8
    first, second = sorted((a, b), key=lambda x: x.start_s)
    assert second.start_s >= first.finish_s - 1e-12         # waited for the GPUs
    assert second.start_s > second.arrival_s
    assert short.start_s < second.start_s                    # not blocked behind it
    assert max(level for _, level in r.occupancy) <= 8
    assert r.summary()["queue_p99_ms"] > 0


def test_mixed_lengths_in_flight_and_percentiles():
    s = FAPoolStrategy(base_tp=8, threshold=4096, tokens_per_pool_gpu=1024, max_pool=32)
    wl = synthetic("mixed", 120, rate=50.0, output_len=32, seed=4)
    r = simulate_requests(PAPER, A100, s, wl, Serving(max_batch=64))
    out = r.summary()
    assert out["completed"] == 120 and out["rejected"] == 0
    for name in ("ttft", "tpot", "queue"):
        assert out[f"{name}_p50_ms"] <= out[f"{name}_p90_ms"] <= out[f"{name}_p99_ms"]
    # at some moment requests of different buckets ran together
    spans = [(rec.start_s, rec.finish_s, rec.bucket) for rec in r.records]
    overlap = any(b1 != b2 and s1 < f2 and s2 < f1
                  for i, (s1, f1, b1) in enumerate(spans) for (s2, f2, b2) in spans[i + 1:])
    assert overlap
    assert out["throughput_tps"] > 0 and out["makespan_s"] > 0
    assert all(level <= 32 for _, level in r.occupancy)


def test_batching_is_bounded_and_static_uses_no_pool():
    s = StaticStrategy(tp=8, pp=2)
    wl = synthetic("fixed:1024", 40, rate=1e6, output_len=8)      # all arrive at once
    r = simulate_requests(PAPER, A100, s, wl, Serving(max_batch=8))
    starts = sorted(rec.start_s for rec in r.records)
    assert starts[8] > starts[0]                   # the ninth waits for a free slot
    assert r.pool_capacity == 0 and r.summary()["pool_occupancy_mean"] == 0.0


def test_replicas_share_the_arrivals_by_outstanding_tokens():
    """Two replicas, four simultaneous requests: the router alternates by outstanding tokens
    (a long one counts for more), and two replicas serve a burst sooner than one."""
    s = StaticStrategy(tp=8, pp=1)
    wl = workload((0.0, 8000, 64), (0.0, 1000, 64), (0.0, 1000, 64), (0.0, 1000, 64))
    one = simulate_requests(PAPER, A100, s, wl, Serving(replicas=1, max_batch=1))
    two = simulate_requests(PAPER, A100, s, wl, Serving(replicas=2, max_batch=1))
    assert two.summary()["makespan_s"] < one.summary()["makespan_s"]
    long_, a, b, c = two.records
    # replica 0 takes the long request (9,064 tokens); replica 1 then takes a, b and c
    # (3 x 1,064 < 9,064), each starting when the previous one ends
    assert a.start_s == pytest.approx(0.0) and long_.start_s == pytest.approx(0.0)
    assert b.start_s == pytest.approx(a.finish_s) and c.start_s == pytest.approx(b.finish_s)
    assert two.summary()["replicas"] == 2 and two.summary()["router"] == \
        "least-outstanding-tokens"


def test_each_fapool_replica_owns_its_pool():
    """Two long requests that each need the whole pool: one replica runs them one after the
    other, two replicas (a pool each) at once."""
    s = FAPoolStrategy(base_tp=8, threshold=4096, tokens_per_pool_gpu=512, max_pool=8)
    wl = workload((0.0, 5000, 16), (0.0, 9000, 16))
    one = simulate_requests(PAPER, A100, s, wl, Serving(replicas=1, max_batch=8))
    two = simulate_requests(PAPER, A100, s, wl, Serving(replicas=2, max_batch=8))
    x, y = sorted(one.records, key=lambda r: r.start_s)
    assert y.start_s >= x.finish_s - 1e-12
    assert all(r.start_s == pytest.approx(0.0) for r in two.records)
    assert two.pool_capacity == 16 and max(level for _, level in two.occupancy) == 16
