"""Microbenchmark pieces: sweeps, timing, and collectives that fail or hang end bounded."""

import time

import pytest

torch = pytest.importorskip("torch")

from calibration import microbench  # noqa: E402


def test_sweeps_cover_what_the_issue_asks():
    for quick, device in ((True, "cpu"), (False, "cpu"), (True, "cuda"), (False, "cuda")):
        sw = microbench.sweep(quick, device)
        tokens = {t for t, _, _ in sw.gemm}
        assert min(tokens) == 1 and max(tokens) >= 512            # decode .. prefill
        att = sw.attention
        assert any(a[1] == 1 for a in att)                        # decode (q_len 1)
        assert any(a[3] != a[4] for a in att)                     # GQA
        assert {a[6] for a in att} == {False, True}               # causal or not
        assert len({a[5] for a in att}) >= 2                      # head dims
        assert all(a[1] == a[2] for a in att if a[6])             # SDPA causal: q == kv
        assert {kind for kind, _ in sw.memory} == {"norm", "activation", "copy"}
        assert min(sw.collective_bytes) <= 1024 and max(sw.collective_bytes) >= 64 << 20


def test_time_point_repeats_within_bounds():
    sw = microbench.sweep(True)
    calls = []
    times = microbench.time_point(lambda: calls.append(1), "cpu", sw)
    assert sw.min_repeats <= len(times) <= sw.max_repeats
    assert len(calls) == len(times) + sw.warmup
    assert all(t >= 0 for t in times)


def test_compute_points_are_timed_with_store_conventions():
    sw = microbench.Sweep(gemm=((4, 32, 48),), attention=((1, 16, 16, 4, 2, 8, True),),
                          memory=(("norm", 8192),), collective_bytes=(1024,), warmup=1,
                          min_repeats=2, max_repeats=3, budget_s=0.0)
    got = []
    microbench.run_compute(sw, "cpu", 1, lambda *a: got.append(a))
    ops = [g[0] for g in got]
    assert ops == ["gemm", "attention", "memory"]
    assert got[0][1] == {"tokens": 4, "k": 32, "n": 48, "dtype_bytes": 4}
    assert got[2][1] == {"bytes": 2 * 8192 * 4, "kind": "norm"}
    assert all(2 <= len(g[2]) <= 3 for g in got)


@pytest.mark.slow
def test_failing_collective_worker_ends_with_a_clear_error():
    sw = microbench.sweep(True)
    start = time.monotonic()
    with pytest.raises(microbench.CollectiveError, match="worker failed"):
        # nccl on a CPU-only machine: every worker fails at init
        if torch.cuda.is_available():
            pytest.skip("nccl would work here")
        microbench.run_collectives(sw, "nccl", 2, "loopback", lambda *a: None, deadline_s=60)
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_collectives_past_their_deadline_are_killed():
    sw = microbench.sweep(True)
    start = time.monotonic()
    with pytest.raises(microbench.CollectiveError, match="did not finish"):
        microbench.run_collectives(sw, "gloo", 2, "loopback", lambda *a: None, deadline_s=0.5)
    assert time.monotonic() - start < 20


@pytest.mark.slow
def test_collectives_are_timed_among_every_group_size_up_to_the_world():
    """A plan's collectives run in groups smaller than the world (a TP group of 2 among 3
    processes): every collective is timed among 2 .. world ranks, a send between 2."""
    sw = microbench.Sweep(gemm=(), attention=(), memory=(), collective_bytes=(1024, 4096),
                          warmup=1, min_repeats=2, max_repeats=2, budget_s=0.0,
                          small_collective_repeats=2)
    got = []
    microbench.run_collectives(sw, "gloo", 3, "loopback-3", lambda *a: got.append(a),
                               deadline_s=120)
    seen = {(op, p["ranks"], p["bytes"]) for op, p, *_ in got if "ranks" in p}
    for op in ("all_reduce", "all_gather", "broadcast", "gather"):
        assert {(op, g, b) for g in (2, 3) for b in (1024, 4096)} <= seen, op
    assert {r for op, r, _ in seen if op == "send_recv"} == {2}
    repeats = microbench.collective_repeats(sw, 1024)[1]
    assert all(len(t) == repeats and min(t) > 0 for op, p, t, *_ in got if "ranks" in p)
