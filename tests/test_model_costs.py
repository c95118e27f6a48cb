"""What the models people run cost: a sliding window bounds attention and the K/V cache;
a MoE keeps every expert in memory and computes with the ones its tokens reach; every op
stays at or above its physics floor (OpCost refuses less on construction)."""

import pytest

from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload

A100 = resolve_cluster("dgx-a100")
MISTRAL = PRESETS["mistral-7b"].with_overrides(layers=4)
FULL = MISTRAL.with_overrides(sliding_window=0)


def _sim(model, strategy, wl, phase="both"):
    r = simulate(model, A100, strategy, wl, phase=phase, interval_samples=0)
    assert r.feasible, r.infeasible_reasons
    return r


@pytest.mark.parametrize("strategy", [StaticStrategy(tp=8, pp=1),
                                      FAPoolStrategy(base_tp=8, threshold=4096, pool_gpus=4,
                                                     max_pool=4)])
def test_a_sliding_window_bounds_attention_and_kv(strategy):
    wl = Workload(batch=2, input_len=32768, output_len=16)
    win, full = _sim(MISTRAL, strategy, wl), _sim(FULL, strategy, wl)
    assert win.ttft_s < full.ttft_s and win.tpot_s < full.tpot_s
    role = "pool" if isinstance(strategy, FAPoolStrategy) else "base"
    assert win.memory[role].kv_cache < full.memory[role].kv_cache / 7   # 4096 of 32784 kept
    # below the window the two are the same model
    short = Workload(batch=2, input_len=2048, output_len=16)
    assert _sim(MISTRAL, strategy, short).ttft_s == pytest.approx(
        _sim(FULL, strategy, short).ttft_s)


def test_windowed_attention_costs_its_flops():
    """The band of queries past the window attends W keys each: prefill attention FLOPs of
    N queries are those of a causal W block plus (N - W) x W, not N^2 / 2."""
    from planner.costs import CostModel
    from planner.sim.run import Coster

    class _Sched:                       # the least a Coster reads
        layout = type("L", (), {"model": MISTRAL})()
        cost_classes = ([], {})

    cm = CostModel(A100.load_profile(), A100, 2)
    coster = Coster(cm, _Sched())
    n, w, d, h = 32768, 4096, 128, 32
    p = dict(batch=1, q_len=n, kv_len=n, heads=h, kv_heads=8, head_dim=d, causal=True)
    win = coster._attention("attention", p)
    full = cm.attention("attention", 1, n, n, h, 8, d, True)
    band = 4.0 * (n - w) * w * d * h              # QK^T and PV, 2 FLOPs per multiply-add
    assert win.flops == pytest.approx(cm.attention("a", 1, w, w, h, 8, d, True).flops + band)
    assert win.flops < full.flops / 3
    assert win.seconds >= win.floor


def test_a_moe_holds_every_expert_and_computes_with_the_reached_ones():
    mixtral = PRESETS["mixtral-8x7b"].with_overrides(layers=4)
    dense = mixtral.with_overrides(experts=0, experts_per_token=0)       # one expert's size
    tp8 = StaticStrategy(tp=8, pp=1, microbatches=1)
    one = Workload(batch=1, input_len=512, output_len=16)
    moe, base = _sim(mixtral, tp8, one), _sim(dense, tp8, one)
    extra = 4 * (7 * mixtral.expert_params + mixtral.hidden * 8) / 8 * 2   # 4 layers, TP 8
    assert moe.memory["base"].weights - base.memory["base"].weights == pytest.approx(extra)
    # decode of one sequence reads 2 experts' weights: about twice the dense FFN's time,
    # far below reading all 8
    assert 1.3 * base.tpot_s < moe.tpot_s < 4 * base.tpot_s
    # a big batch reaches every expert; its prefill computes 2 experts' FLOPs per token
    big = Workload(batch=8, input_len=4096, output_len=16)
    def ffn_s(model):
        return sum(e.end - e.start for e in _sim(model, tp8, big, "prefill").events
                   if e.name == "ffn")
    assert ffn_s(mixtral) / ffn_s(dense) == pytest.approx(2.0, rel=0.1)


def test_the_executor_refuses_what_it_would_run_as_something_else():
    from calibration.errors import InputError
    from executor.model import require_runnable_model as require_runnable
    with pytest.raises(InputError) as err:
        require_runnable(PRESETS["mixtral-8x7b"])
    assert err.value.field == "plan.model.experts"
    with pytest.raises(InputError) as err:
        require_runnable(MISTRAL)
    assert err.value.field == "plan.model.sliding_window"
    with pytest.raises(InputError) as err:
        require_runnable(PRESETS["tiny"].with_precision("fp8"))
    assert err.value.field == "plan.model.weight_dtype_bytes"
    require_runnable(PRESETS["gemma-7b"])          # a gated GELU it runs


H100 = resolve_cluster("dgx-h100")
L70 = PRESETS["llama-2-70b"].with_overrides(layers=8)


def _h100(model, wl=Workload(batch=16, input_len=1024, output_len=128)):
    r = simulate(model, H100, StaticStrategy(tp=8, pp=1), wl, interval_samples=0)
    assert r.feasible, r.infeasible_reasons
    return r


def test_fp8_weights_halve_weight_memory_and_run_gemms_on_fp8_tensor_cores():
    bf16, fp8 = _h100(L70.with_precision("bf16")), _h100(L70.with_precision("fp8"))
    assert fp8.memory["base"].weights == pytest.approx(bf16.memory["base"].weights / 2,
                                                       rel=1e-6)
    assert fp8.memory["base"].kv_cache == bf16.memory["base"].kv_cache     # K/V stays 16-bit
    assert fp8.ttft_s < bf16.ttft_s and fp8.tpot_s < bf16.tpot_s
    # the physics floor is the FP8 one: a GEMM at FP8 speed, never faster than 1979 TFLOP/s
    from planner.costs import CostModel
    cm = CostModel(H100.load_profile(), H100, 2, weight_bytes=1)
    g = cm.gemm("g", 4096, 8192, 8192)
    assert g.seconds >= g.flops / 1979e12 and g.seconds >= g.floor


def test_an_fp8_kv_cache_halves_the_cache_and_its_decode_reads():
    wl = Workload(batch=16, input_len=8192, output_len=128)
    bf16, fp8 = _h100(L70, wl), _h100(L70.with_precision(kv_dtype="fp8"), wl)
    assert fp8.memory["base"].kv_cache == pytest.approx(bf16.memory["base"].kv_cache / 2)
    assert fp8.tpot_s < bf16.tpot_s
    assert fp8.ttft_s == pytest.approx(bf16.ttft_s, rel=0.02)


def test_fp8_is_refused_where_there_are_no_fp8_tensor_cores():
    from calibration.errors import InputError
    with pytest.raises(InputError) as err:
        simulate(L70.with_precision("fp8"), A100, StaticStrategy(tp=8, pp=1),
                 Workload(1, 128, 8), interval_samples=0)
    assert err.value.field == "dtype" and "A100" in str(err.value)
