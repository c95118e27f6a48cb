"""Cost model: hand-computed values and the physics invariant."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from calibration import curves
from planner.cluster import resolve_cluster
from planner.costs import CostModel

A100 = resolve_cluster("dgx-a100")
PROFILE = A100.load_profile()
CM = CostModel(PROFILE, A100, 2)


def test_gemm_large_is_compute_bound_by_hand():
    p = PROFILE.gemm.params
    tokens, k, n = 4096, 4096, 12288
    eff = p["efficiency_max"] * tokens / (tokens + p["half_tokens"])
    expected = 2 * tokens * k * n / (312e12 * eff) + p["launch_s"]
    assert CM.gemm("g", tokens, k, n).seconds == pytest.approx(expected, rel=1e-12)


def test_gemm_single_token_is_weight_read_bound_by_hand():
    p = PROFILE.gemm.params
    moved = (1 * 4096 + 4096 * 12288 + 12288) * 2
    expected = moved / (2.039e12 * p["read_efficiency"]) + p["launch_s"]
    assert CM.gemm("g", 1, 4096, 12288).seconds == pytest.approx(expected, rel=1e-12)
    # hardware.md: 65 us measured on A100 (vidur); our curve is within 10 %
    assert CM.gemm("g", 1, 4096, 12288).seconds == pytest.approx(65e-6, rel=0.1)


def test_attention_flops_causal_bottom_right():
    # q 4 rows against 10 keys, bottom-right: rows see 7, 8, 9, 10 keys
    assert curves.causal_pairs(4, 10) == 7 + 8 + 9 + 10
    flops, _ = curves.attention_cost(1, 4, 10, 2, 2, 8, True, 2)
    assert flops == 4 * 2 * 8 * 34


def test_decode_attention_is_memory_bound():
    op = CM.attention("a", 32, 1, 16384, 32, 32, 128, causal=False)
    kv_bytes = 32 * 16384 * 2 * 32 * 128 * 2
    assert op.seconds >= kv_bytes / 2.039e12
    assert op.bytes >= kv_bytes


def test_all_reduce_by_hand():
    link = PROFILE.links["nvlink"].curve.params
    payload, n = 64e6, 8
    hops = 3                                         # ceil(log2(8))
    expected = (link["latency_s"] * hops
                + 2 * (n - 1) / n * payload / (300e9 * link["efficiency"]))
    op = CM.collective("ar", "all_reduce", payload, range(n))
    assert op.seconds == pytest.approx(expected, rel=1e-12)


def test_crossing_nodes_uses_infiniband():
    inside = CM.collective("x", "all_reduce", 256e6, range(8))
    across = CM.collective("x", "all_reduce", 256e6, range(16))
    one_per_node = CM.collective("x", "all_reduce", 256e6, (0, 8))
    assert across.seconds > inside.seconds
    # one GPU per node has one NIC (25 GB/s): far slower than 8 NICs in parallel
    assert one_per_node.seconds > 4 * across.seconds


@settings(max_examples=300, deadline=None)
@given(tokens=st.integers(1, 1 << 16), k=st.integers(1, 1 << 15), n=st.integers(1, 1 << 15),
       q=st.integers(1, 1 << 15), kv=st.integers(1, 1 << 15), b=st.integers(1, 64),
       hd=st.sampled_from([32, 64, 128, 256]), causal=st.booleans(),
       payload=st.floats(1, 1e10), ranks=st.integers(2, 64), profile=st.sampled_from(
           ["dgx-a100", "dgx-h100"]),
       kind=st.sampled_from(sorted(curves.COLLECTIVE_FACTORS)))
def test_no_operator_beats_physics(tokens, k, n, q, kv, b, hd, causal, payload, ranks,
                                   profile, kind):
    """Every op takes at least max(flops / peak, bytes / bandwidth) of its hardware."""
    cluster = resolve_cluster(profile)
    cm = CostModel(cluster.load_profile(), cluster, 2)
    dev = cm.device
    g = cm.gemm("g", tokens, k, n)
    flops, moved = curves.gemm_cost(tokens, k, n, 2)
    assert g.seconds >= max(flops / dev.peak_flops, moved / dev.hbm_bandwidth)
    q = min(q, kv)
    a = cm.attention("a", b, q, kv, 8, 8, hd, causal)
    flops, moved = curves.attention_cost(b, q, kv, 8, 8, hd, causal, 2)
    assert a.seconds >= max(flops / dev.peak_flops, moved / dev.hbm_bandwidth)
    m = cm.memory_op("m", payload)
    assert m.seconds >= payload / dev.hbm_bandwidth
    c = cm.collective("c", kind, payload, range(ranks))
    bus = curves.collective_bytes(kind, payload, ranks)
    nodes = math.ceil(ranks / cluster.gpus_per_node)
    # the link crossed: NVLink inside a node, the node's NICs in parallel between nodes
    peak = (cm.intra.peak_bandwidth if nodes == 1
            else cm.inter.peak_bandwidth * cm.lanes(range(ranks)))
    assert c.seconds >= bus / peak * (1 - 1e-12)
    assert c.seconds >= c.floor > 0
