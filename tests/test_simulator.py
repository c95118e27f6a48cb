"""Simulator behaviour: determinism, monotonicity, pool effects, memory, trace."""

import dataclasses
import json

import pytest

from calibration import load_profile
from calibration.profile import Curve
from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.trace import write_trace
from planner.workload import Workload

A100 = resolve_cluster("dgx-a100")
PAPER = PRESETS["paper-4l"]


def run(strategy, seq, batch=64, out=32, model=PAPER, **kw):
    return simulate(model, A100, strategy, Workload(batch, seq, out), **kw)


def test_deterministic():
    a = run(FAPoolStrategy(), 8192).to_json()
    b = run(FAPoolStrategy(), 8192).to_json()
    assert a == b


@pytest.mark.parametrize("strategy", [StaticStrategy(8, 2), StaticStrategy(8, 1),
                                      FAPoolStrategy(), FAPoolStrategy(pool_gpus=8)])
def test_longer_sequences_are_never_faster(strategy):
    previous = None
    for seq in (512, 1024, 2048, 4096, 8192, 16384):
        r = run(strategy, seq)
        assert r.feasible
        if previous:
            assert r.ttft_s >= previous.ttft_s
            assert r.tpot_s >= previous.tpot_s * (1 - 1e-9)
        previous = r


def test_below_threshold_attention_stays_on_base():
    r = run(FAPoolStrategy(), 2048)
    assert r.pool_gpus == 0 and r.gpus == 8
    assert not any(u.role == "pool" for u in r.units.values())
    assert "pool" not in r.utilization


def test_more_pool_gpus_reduce_pool_attention_or_comm_explains():
    """Pool attention per GPU shrinks with more GPUs; if end-to-end gets slower, the
    communication share in the output must have grown."""
    results = [run(FAPoolStrategy(pool_gpus=p), 16384, batch=8) for p in (2, 4, 8, 16, 32)]
    for small, big in zip(results, results[1:]):
        attn = lambda r: max(e.end - e.start for e in r.events if e.name == "pool_attention")
        assert attn(big) < attn(small)
        if big.ttft_s > small.ttft_s:
            assert big.comm_fraction > small.comm_fraction


def test_pool_attention_follows_causal_blocks():
    r = run(FAPoolStrategy(pool_gpus=4), 8192, batch=1)
    per_gpu = {}
    for e in r.events:
        if e.name == "pool_attention" and e.phase == "prefill" and e.layer == 0:
            per_gpu[e.units[0]] = e.end - e.start
    times = [per_gpu[f"pool{i}"] for i in range(4)]
    assert times == sorted(times)            # later blocks see more keys
    balanced = run(FAPoolStrategy(pool_gpus=4, balanced=True), 8192, batch=1)
    per_gpu_balanced = {}
    for e in balanced.events:             # two segments (head and tail chunk) per GPU
        if e.name == "pool_attention" and e.phase == "prefill" and e.layer == 0:
            per_gpu_balanced[e.units[0]] = per_gpu_balanced.get(e.units[0], 0.0) + e.end - e.start
    spread = list(per_gpu_balanced.values())
    assert max(spread) / min(spread) < max(times) / min(times)


def test_uneven_blocks_and_empty_tail():
    from planner.schedule import query_blocks
    assert query_blocks(10, 3, False) == [[(0, 4)], [(4, 8)], [(8, 10)]]
    assert query_blocks(5, 4, False)[-1] == [(5, 5)]           # ceil(5/4)=2: last is empty
    blocks = query_blocks(10, 2, True)
    assert sorted(b for gpu in blocks for b in gpu) == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_every_simulated_op_respects_its_floor():
    from planner.costs import CostModel
    r = run(FAPoolStrategy(), 8192)
    assert all(e.end - e.start > 0 for e in r.events)
    # the cost objects carry floors; OpCost asserts seconds >= floor on construction, so a
    # violation would have raised while simulating.  Check the decode KV read by hand too:
    cm = CostModel(A100.load_profile(), A100, 2)
    # one decode micro-batch (64 / 2 sequences) dealt over 16 pool GPUs: 2 caches each
    seqs_per_gpu = 64 // r.decode_microbatches // r.pool_gpus
    kv = PAPER.kv_bytes_per_token(1) * seqs_per_gpu * Workload(64, 8192, 32).decode_context
    decode = [e for e in r.events if e.phase == "decode" and e.name == "pool_attention"]
    assert min(e.end - e.start for e in decode) >= kv / cm.device.hbm_bandwidth


def test_gqa_needs_less_kv_memory_and_decode_time():
    mha = PRESETS["llama-2-7b"].with_overrides(layers=4)
    gqa = mha.with_overrides(kv_heads=8)
    a = run(StaticStrategy(8, 1), 8192, model=mha)
    b = run(StaticStrategy(8, 1), 8192, model=gqa)
    assert b.memory["base"].kv_cache == pytest.approx(a.memory["base"].kv_cache / 4)
    assert b.tpot_s < a.tpot_s


def test_infeasible_plan_has_reasons_and_no_times():
    r = simulate(PAPER, A100, StaticStrategy(8, 2), Workload(1024, 32768, 128))
    j = r.to_json()
    assert j["feasible"] is False
    assert any("K/V" in reason for reason in j["infeasible_reasons"])
    assert j["ttft_ms"] is None and j["tpot_ms"] is None and j["tps"] is None
    replicated = simulate(PAPER, A100, FAPoolStrategy(decode_kv="replicated"),
                          Workload(1024, 16384, 128))
    assert not replicated.feasible
    split = simulate(PAPER, A100, FAPoolStrategy(), Workload(1024, 16384, 128))
    assert split.feasible


def test_pipeline_bubble_and_stage_transfer():
    one = run(StaticStrategy(8, 2, microbatches=1), 4096, batch=8)
    many = run(StaticStrategy(8, 2, microbatches=8), 4096, batch=8)
    assert many.ttft_s < one.ttft_s                 # micro-batches fill the bubble
    assert any(e.name == "act" and e.kind == "comm" for e in one.events)


def test_metrics_relations():
    r = run(FAPoolStrategy(), 8192)
    wl = r.workload
    assert r.tps == pytest.approx(wl.batch * (wl.input_len + wl.output_len)
                                  / (r.ttft_s + (wl.output_len - 1) * r.tpot_s))
    assert r.decode_tps == pytest.approx(wl.batch / r.tpot_s)
    assert 0 < r.comm_fraction < 1
    assert all(0 < u <= 1 for u in r.utilization.values())


def test_phase_selection():
    pre = run(FAPoolStrategy(), 8192, phase="prefill").to_json()
    dec = run(FAPoolStrategy(), 8192, phase="decode").to_json()
    assert pre["tpot_ms"] is None and pre["ttft_ms"] > 0
    assert dec["ttft_ms"] is None and dec["tpot_ms"] > 0


def test_intervals_from_profile_uncertainty():
    profile = load_profile("dgx-a100")

    def certain(curve, **std):
        return dataclasses.replace(curve, cov=None, std=std, draws=())

    exact = dataclasses.replace(
        profile, gemm=certain(profile.gemm), attention=certain(profile.attention),
        memory=certain(profile.memory),
        links={n: dataclasses.replace(l, curve=certain(l.curve))
               for n, l in profile.links.items()})
    assert not exact.has_uncertainty
    assert run(FAPoolStrategy(), 8192, profile=exact).tpot_interval is None
    noisy = dataclasses.replace(
        exact, gemm=certain(profile.gemm, efficiency_max=0.05, read_efficiency=0.05),
        attention=certain(profile.attention, efficiency_max=0.05, read_efficiency=0.05))
    r = run(FAPoolStrategy(), 8192, profile=noisy)
    low, high = r.tpot_interval
    assert low < high
    j = r.to_json()
    assert j["tpot_ms_interval"][0] <= j["tpot_ms_interval"][1]
    assert isinstance(profile.gemm, Curve)


def test_chrome_trace(tmp_path):
    r = run(FAPoolStrategy(), 8192, batch=8)
    path = tmp_path / "trace.json"
    count = write_trace(r, path)
    data = json.loads(path.read_text())
    ops = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert count == len(ops) > 0
    assert {"pid", "tid", "ts", "dur", "name"} <= set(ops[0])
    assert any(e["name"] == "pool_attention" for e in ops)
    decode = [e for e in ops if e["args"]["phase"] == "decode"]
    assert min(e["ts"] for e in decode) >= r.ttft_s * 1e6 - 1e-3


def test_cpu_processes_share_cores():
    """On a CPU cluster, 4 ranks on 2 cores cannot all compute at once: the pool's
    attention of 4 GPUs takes about twice as long as with 4 free cores."""
    tiny = PRESETS["tiny"]
    local = resolve_cluster("local", profile="dgx-a100")
    local = dataclasses.replace(local, intra_link="nvlink", inter_link="nvlink")
    wl = Workload(1, 4096, 2)
    strategy = FAPoolStrategy(base_tp=1, threshold=64, pool_gpus=4, balanced=True)
    two = simulate(tiny, dataclasses.replace(local, gpus_per_node=8, cores_per_node=2),
                   strategy, wl, phase="prefill", interval_samples=0)
    free = simulate(tiny, dataclasses.replace(local, gpus_per_node=8, cores_per_node=0),
                    strategy, wl, phase="prefill", interval_samples=0)

    def pool_span(r):
        ev = [e for e in r.events if e.name == "pool_attention" and e.layer == 0]
        return max(e.end for e in ev) - min(e.start for e in ev)

    assert pool_span(two) == pytest.approx(2 * pool_span(free), rel=0.15)


def test_cpu_transfers_hold_a_core_at_each_end():
    """On a CPU cluster the ranks copy a message's bytes themselves (gloo on loopback), so
    a transfer between two ranks holds a core of each: on a 2-core node a third rank's
    compute waits for it; with no cores modelled it runs beside the transfer."""
    import simpy

    from planner.costs import OpCost
    from planner.sim.engine import Machine, Unit

    def third_rank_compute_start(cores: int) -> float:
        env = simpy.Environment()
        units = {n: Unit(n, "pool", (i,), ("node0",)) for i, n in enumerate("abc")}
        m = Machine(env, units, cores_per_node=cores)
        msg = OpCost("msg", 1.0, 0.0, "comm")
        starts = {}

        def sender(me):
            yield m.post(("msg",), ("a", "b"), me, msg, 0, 0)

        def computer():
            yield env.timeout(0.1)             # after the transfer began
            starts["c"] = env.now
            yield from m.compute(OpCost("gemm", 0.5, 0.0, "compute"), "c", 0, 0)
            starts["c_end"] = env.now

        for u in ("a", "b"):
            env.process(sender(u))
        env.process(computer())
        env.run()
        return starts["c_end"] - 0.5

    assert third_rank_compute_start(2) == pytest.approx(1.0)     # after the transfer
    assert third_rank_compute_start(3) == pytest.approx(0.1)     # a core was free
    assert third_rank_compute_start(0) == pytest.approx(0.1)     # GPUs: no cores shared


def test_decode_runs_one_microbatch_per_pipeline_stage_unless_asked():
    """Llama-2-70B TP 4, batch 16, 128 in / 2048 out: at PP=1 decode is one micro-batch
    (each decode micro-batch re-reads every weight), whatever prefill's count; the user's
    --decode-microbatches is honoured; FA Pool with a pool keeps prefill's count."""
    m70 = PRESETS["llama-2-70b"]
    wl = Workload(16, 128, 2048)
    auto = simulate(m70, A100, StaticStrategy(4, 1), wl, interval_samples=0, record=False)
    one = simulate(m70, A100, StaticStrategy(4, 1, microbatches=1), wl, interval_samples=0,
                   record=False)
    two = simulate(m70, A100, StaticStrategy(4, 1, decode_microbatches=2), wl,
                   interval_samples=0, record=False)
    assert auto.microbatches >= 2 and auto.decode_microbatches == 1
    assert auto.tpot_s == pytest.approx(one.tpot_s)
    assert two.decode_microbatches == 2 and two.tpot_s > 1.5 * auto.tpot_s
    j = auto.to_json()
    assert j["decode_microbatch_rows"] == [16] and sum(j["microbatch_rows"]) == 16
    pp4 = simulate(m70, A100, StaticStrategy(4, 4), wl, interval_samples=0, record=False)
    assert pp4.decode_microbatches == 4
    fa = simulate(PAPER, A100, FAPoolStrategy(microbatches=3), Workload(6, 8192, 8),
                  interval_samples=0, record=False)
    assert fa.decode_microbatches == 3
    short = simulate(PAPER, A100, FAPoolStrategy(), Workload(6, 1024, 8), interval_samples=0,
                     record=False)
    assert short.decode_microbatches == 1            # no pool: the base alone, like PP=1


def test_the_executor_refuses_another_decode_count_with_an_active_pool():
    from calibration.errors import InputError
    from executor.model import require_runnable
    from planner.plan import make_plan
    tiny = PRESETS["tiny"]
    local = resolve_cluster("local", profile="dgx-a100")
    s = FAPoolStrategy(base_tp=1, threshold=8, pool_gpus=1, max_pool=1, microbatches=2,
                       decode_microbatches=1)
    plan = make_plan(tiny, local, s, Workload(2, 16, 3), load_profile("dgx-a100"))
    with pytest.raises(InputError) as err:
        require_runnable(plan)
    assert err.value.field == "plan.strategy.decode_microbatches"
    require_runnable(make_plan(tiny, local, dataclasses.replace(s, threshold=64),
                               Workload(2, 16, 3), load_profile("dgx-a100")))   # no pool
