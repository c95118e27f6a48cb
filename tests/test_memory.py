"""Memory per phase: decode holds the whole context's K/V and one token's activations per
sequence, never a prompt's activations; prefill the prompt's K/V and its activations."""

import pytest

from planner.cluster import resolve_cluster
from planner.memory import activation_bytes, memory_check, role_memory
from planner.model import PRESETS
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload

M70 = PRESETS["llama-2-70b"]
WL = Workload(batch=64, input_len=2048, output_len=128)
TP8 = StaticStrategy(tp=8, pp=1, microbatches=1)
A100 = 80e9


def test_decode_counts_no_prompt_activations():
    pre = role_memory(M70, TP8, WL, A100, 1, "prefill")["base"]
    dec = role_memory(M70, TP8, WL, A100, 1, "decode")["base"]
    assert pre.activations == pytest.approx(2 * activation_bytes(M70, 8, 64 * 2048, 64))
    assert dec.activations == pytest.approx(2 * activation_bytes(M70, 8, 64, 64))
    assert dec.activations < pre.activations / 1000
    # K/V: the prompt at the end of prefill, the whole context at the end of decode
    assert dec.kv_cache / pre.kv_cache == pytest.approx((2048 + 128) / 2048)


def test_both_is_the_larger_phase_per_role():
    both = role_memory(M70, TP8, WL, A100, 1, "both")["base"]
    pre = role_memory(M70, TP8, WL, A100, 1, "prefill")["base"]
    dec = role_memory(M70, TP8, WL, A100, 1, "decode")["base"]
    assert both.total == pytest.approx(max(pre.total, dec.total))


def test_a_batch_only_prefill_cannot_hold_is_planned_for_decode():
    """Llama-2-70B TP 8, one micro-batch of 64 x 8192 tokens: the prompt's activations do
    not fit an A100 in prefill; decode holds only the K/V cache and fits."""
    wl = Workload(batch=64, input_len=8192, output_len=16)
    cluster = resolve_cluster("dgx-a100")
    pre = simulate(M70, cluster, TP8, wl, phase="prefill", interval_samples=0, record=False)
    dec = simulate(M70, cluster, TP8, wl, phase="decode", interval_samples=0, record=False)
    assert not pre.feasible and "activations" in pre.infeasible_reasons[0]
    assert dec.feasible, dec.infeasible_reasons


def test_pool_decode_holds_no_replicated_prompt_kv():
    s = FAPoolStrategy(base_tp=1, threshold=1024, pool_gpus=4, max_pool=4)
    wl = Workload(batch=4, input_len=16384, output_len=64)
    pre = role_memory(M70, s, wl, A100, 2, "prefill")["pool"]
    dec = role_memory(M70, s, wl, A100, 2, "decode")["pool"]
    assert dec.activations < pre.activations / 100
    mb, both, _ = memory_check(M70, s, wl, A100, "both")
    pre, dec = (role_memory(M70, s, wl, A100, mb, ph)["pool"] for ph in ("prefill", "decode"))
    assert both["pool"].total == pytest.approx(max(pre.total, dec.total))
