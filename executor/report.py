"""Rank 0's summary of a case: TTFT / TPOT / TPS, per-op timings, verify; store samples;
and the human table `fapool run` prints."""

from __future__ import annotations

import statistics
from collections import defaultdict

from executor.measure import summarize_ops
from planner import metrics
from planner.plan import Plan
from planner.strategy import FAPoolStrategy, StaticStrategy

# Ops timed only for the summary (waits, barriers): not microbenchmark-like samples.
NOT_STORED = ("barrier", "gather_results", "wait")


def summary(plan: Plan, res: dict) -> dict:
    wl, s = plan.workload, plan.strategy
    med = (lambda xs: statistics.median(xs) if xs else None)
    measured = metrics.metrics(wl, med(res["ttft_s"]), med(res["tpot_s"]))
    out = {
        "plan_id": plan.plan_id, "strategy": s.describe(), "world_size": plan.world_size,
        "batch": wl.batch, "seq_len": wl.input_len, "output_len": wl.output_len,
        "pool_size": res["pool_size"], "microbatches": len(res["microbatch_rows"]),
        "microbatch_rows": res["microbatch_rows"],
        "decode_microbatches": len(res["decode_microbatch_rows"]),
        "decode_microbatch_rows": res["decode_microbatch_rows"],
        "balanced": res["balanced"], "dtype": plan.executor.dtype,
        "decode_kv": getattr(s, "decode_kv", None),
        "steps": len(res["ttft_s"]),
        **measured,                       # planner.metrics: TTFT, TPOT, TPS, decode TPS
        "ttft_ms_steps": [t * 1e3 for t in res["ttft_s"]],
        "tpot_ms_steps": [t * 1e3 for t in res["tpot_s"]],
        "ops": summarize_ops(res["per_rank_timings"]),
    }
    if "overlap" in res:
        out["overlap"] = res["overlap"]
    if "verify" in res:
        out["verify"] = res["verify"]
    for key in ("ops_per_rank", "timeline_per_rank"):
        if any(res.get(key) or ()):
            out[key] = res[key]
    return out


def write_store(path, plan: Plan, res: dict, summ: dict, backend: str, world: int) -> int:
    """All ranks' op timings (merged per op and parameters) and the e2e steps, tagged with
    the plan id.  Returns the store run id."""
    import torch

    from calibration.store import Store

    s = plan.strategy
    tp = s.base_tp if isinstance(s, FAPoolStrategy) else s.tp
    pp = s.pp if isinstance(s, StaticStrategy) else 1
    merged = defaultdict(list)
    for records in res["per_rank_timings"]:
        for op, params, secs in records:
            if op not in NOT_STORED:
                merged[(op, tuple(sorted(params.items())))].extend(t for t in secs if t > 0)
    e2e = {"strategy": s.kind, "seq_len": plan.workload.input_len,
           "batch": plan.workload.batch, "output_len": plan.workload.output_len,
           "pool_gpus": res["pool_size"], "tp": tp, "pp": pp,
           "microbatches": len(res["microbatch_rows"]),
           "decode_microbatches": len(res["decode_microbatch_rows"]), "balanced": res["balanced"],
           **{k: summ[k] for k in metrics.KEYS}}
    store = Store(path)
    try:
        with store.run(kind="executor", backend=backend, world_size=world,
                       torch_version=torch.__version__, plan_id=plan.plan_id,
                       meta={"strategy": s.describe(), "predictions": plan.predictions,
                             "summary": {k: v for k, v in summ.items() if k != "ops"}}) as run:
            for (op, params), secs in merged.items():
                if secs:
                    run.add_sample(op, dict(params), secs, dtype=plan.executor.dtype)
            run.add_sample("e2e_prefill", e2e, res["ttft_s"], dtype=plan.executor.dtype)
            if res["tpot_s"]:
                run.add_sample("e2e_decode", e2e, res["tpot_s"], dtype=plan.executor.dtype)
            return run.id
    finally:
        store.close()


def finish(plan: Plan, res: dict, backend: str, world: int, store_path) -> dict:
    summ = summary(plan, res)
    if store_path:
        summ["store_run_id"] = write_store(store_path, plan, res, summ, backend, world)
    return summ


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def table(summ: dict) -> str:
    """The human summary `fapool run` prints."""
    lines = [f"plan {summ['plan_id']}: {summ['strategy']}  ({summ['world_size']} ranks, "
             f"{summ['dtype']})",
             f"workload: batch {summ['batch']} x seq {summ['seq_len']}, output "
             f"{summ['output_len']}; pool {summ['pool_size']} GPUs, {summ['microbatches']} "
             f"micro-batch(es){', balanced' if summ['balanced'] else ''}; "
             f"median of {summ['steps']} step(s)",
             f"  TTFT {_fmt(summ['ttft_ms'])} ms   TPOT {_fmt(summ['tpot_ms'])} ms   "
             f"TPS {_fmt(summ['tps'], 1)}   decode TPS {_fmt(summ['decode_tps'], 1)}",
             f"  {'op':<16}{'calls':>7}{'total ms':>11}{'mean ms':>10}{'busiest rank':>14}"]
    for row in summ["ops"][:12]:
        lines.append(f"  {row['op']:<16}{row['calls']:>7}{row['total_ms']:>11.3f}"
                     f"{row['mean_ms']:>10.4f}{row['busiest_rank']:>8} "
                     f"({row['busiest_ms']:.2f})")
    ov = summ.get("overlap")
    if ov:
        lines.append(f"  overlap: {ov['fraction']:.0%} of the pool's attention time "
                     f"({ov['pool_attention_ms']:.2f} ms) ran during the base's FFN")
    v = summ.get("verify")
    if v:
        per_layer = ", ".join(f"{e:.2e}" for e in v["max_abs_err_attn"])
        lines.append(f"verify: max |err| logits {v['max_abs_err_logits']:.2e}; attention "
                     f"output per layer [{per_layer}]; tolerance {v['tolerance']:.1e}: "
                     f"{'PASS' if v['passed'] else 'FAIL'}")
    return "\n".join(lines)
