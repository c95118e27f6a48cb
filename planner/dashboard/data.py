"""What the dashboard plots, as plain rows computed with the planner's APIs.

Simulation functions take specs (frozen dataclasses, which st.cache_data hashes) and return
plain dicts, so app.py can cache them.  Sweeps take the point function as an argument:
app.py passes its cached wrapper, tests the plain one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

from calibration.errors import InputError
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.launch import render_launch_configs
from planner.model import ModelSpec
from planner.memory import memory_check
from planner.plan import make_plan, resolve_microbatches
from planner.capacity import describe, rate_row
from planner.requests import simulate_requests
from planner.search import SearchSpace, search_rates
from planner import metrics
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, Strategy
from planner.sweep import canonical as search_stand_in
from planner.workload import Workload
from planner.dashboard.scenario import LABELS, Scenario

HEAT_POOLS = (2, 4, 8, 16, 24, 32, 48, 56)
_DIGESTS: dict = {}          # id(profile) -> (profile, digest); the profile kept alive


def profile_digest(profile: Profile) -> str:
    """Content hash of a profile, memoised per object: the cache key st.cache_data uses for
    profiles (hash_funcs), instead of walking the whole dataclass on every call."""
    hit = _DIGESTS.get(id(profile))
    if hit is not None and hit[0] is profile:
        return hit[1]
    digest = hashlib.sha1(json.dumps(profile.to_dict(), sort_keys=True, default=str)
                          .encode()).hexdigest()
    if len(_DIGESTS) >= 64:
        _DIGESTS.clear()
    _DIGESTS[id(profile)] = (profile, digest)
    return digest


def _with_pool(fapool: FAPoolStrategy, pool: int, seq_len: int) -> FAPoolStrategy:
    """FA Pool with fapool's base TP, K/V placement and micro-batches and exactly `pool` pool
    GPUs at seq_len (0: attention on the base group): planner.sweep's stand-in, which the
    search shares simulations with in the same way."""
    return dataclasses.replace(
        search_stand_in("fapool", fapool.base_tp, pool, seq_len, fapool.decode_kv),
        microbatches=fapool.microbatches)


def canonical(strategy: Strategy, seq_len: int) -> Strategy:
    """The same configuration with the FA Pool rule resolved for this length, so the cache
    key does not change with parameters that do not change the simulation: at a given length
    only the active pool size matters (pool_size(); layout puts the first P pool ranks on the
    same nodes whatever max_pool is).  Tested equal to the original in test_dashboard_data."""
    if not isinstance(strategy, FAPoolStrategy):
        return strategy
    return _with_pool(strategy, strategy.pool_size(seq_len), seq_len)


def point(model: ModelSpec, cluster: ClusterSpec, profile: Profile, strategy: Strategy,
          workload: Workload, interval_samples: int = 0) -> dict:
    """One configuration's predictions: the `fapool simulate --json` object, plus a TPS
    interval."""
    result = simulate(model, cluster, strategy, workload, profile=profile, record=False,
                      interval_samples=interval_samples)
    out = result.to_json()
    out["tps_interval"] = metrics.tps_interval(workload, result.ttft_interval,
                                               result.tpot_interval)
    return out


def sweep(sc: Scenario, kind: str, point_fn=point, lens=None) -> list:
    """Predictions of one strategy over the curve's sequence lengths."""
    strategy = sc.strategy(kind)
    rows = []
    for seq in lens or sc.curve_lens:
        row = dict(point_fn(*sc.specs, canonical(strategy, seq), sc.workload(seq),
                            sc.interval_samples))
        row["strategy"] = {"name": strategy.describe(), **strategy.to_dict()}
        row["label"] = LABELS[kind]
        rows.append(row)
    return rows


# ------------------------------------------------------------------ timeline
def timeline(model: ModelSpec, cluster: ClusterSpec, profile: Profile, strategy: Strategy,
             workload: Workload) -> dict:
    """Gantt rows of one simulated configuration: one row per (event, unit it occupies);
    times in ms from the start of each phase (prefill and decode run on separate clocks)."""
    result = simulate(model, cluster, strategy, workload, profile=profile, record=True,
                      interval_samples=0)
    out = {"feasible": result.feasible, "reasons": list(result.infeasible_reasons),
           "ttft_ms": result.ttft_s and result.ttft_s * 1e3,
           "tpot_ms": result.tpot_s and result.tpot_s * 1e3, "units": [], "rows": []}
    if not result.feasible:
        return out
    order = sorted(result.units.values(), key=lambda u: (u.role != "base", u.ranks))
    out["units"] = [{"name": u.name, "role": u.role,
                     "ranks": f"{u.ranks[0]}-{u.ranks[-1]}" if len(u.ranks) > 1
                     else str(u.ranks[0])} for u in order]
    for ev in result.events:
        for unit in ev.units:
            out["rows"].append({"unit": unit, "role": result.units[unit].role, "kind": ev.kind,
                                "name": ev.name, "phase": ev.phase, "mb": ev.microbatch,
                                "layer": ev.layer, "start_ms": ev.start * 1e3,
                                "end_ms": ev.end * 1e3})
    return out


# ------------------------------------------------------------------ heatmap
def memory_reasons(sc: Scenario, strategy: Strategy, workload: Workload) -> list:
    """Why the configuration does not fit in HBM ([] when it does): simulate's own check."""
    return memory_check(sc.model, strategy, workload, sc.profile.device.hbm_bytes)[2]


def heat_axes(sc: Scenario) -> tuple:
    """(thresholds, pools): powers of two from 512 to twice the longest length of the mix
    (the last column never activates the pool), and pool sizes the cluster can hold."""
    longest = max(length for length, _, _ in sc.workload_mix)
    thresholds = [512]
    while thresholds[-1] <= longest:
        thresholds.append(thresholds[-1] * 2)
    room = sc.cluster.total_gpus - sc.fapool.base_tp
    return tuple(thresholds), tuple(p for p in HEAT_POOLS if p <= room)


def heatmap(sc: Scenario, metric: str = "tpot", point_fn=point, progress=None) -> dict:
    """Mix-weighted TPOT (ms, mean over requests) or TPS (total tokens / total time) of FA
    Pool for each threshold x fixed pool size; each bucket of the mix runs as one batch of
    sc.batch sequences of its mean lengths (planner.search's aggregation, without its
    shrinking of the batch to what fits: here a cell is None when any bucket it needs does
    not fit, its reason in `reasons`)."""
    if metric not in ("tpot", "tps"):
        raise InputError("metric", f"must be 'tpot' or 'tps', got {metric!r}")
    thresholds, pools = heat_axes(sc)
    mix = sc.workload_mix
    cases = {}                                   # (seq, pool) -> (strategy, workload)
    for seq, out, _ in mix:
        for pool in (0,) + pools:
            cases[seq, pool] = (_with_pool(sc.fapool, pool, seq), Workload(sc.batch, seq, out))
    # Memory first (cheap, planner.memory as simulate checks it): only cells whose every
    # bucket fits need simulations.
    misfit = {k: memory_reasons(sc, *v) for k, v in cases.items()}
    cells = {(t, p): [(seq, p if seq >= t else 0, share) for seq, _, share in mix]
             for p in pools for t in thresholds}
    needed = sorted({(seq, p) for runs in cells.values()
                     if not any(misfit[seq, p] for seq, p, _ in runs) for seq, p, _ in runs})
    points = {}
    for i, key in enumerate(needed):
        points[key] = point_fn(*sc.specs, *cases[key], 0)
        if progress:
            progress((i + 1) / len(needed))
    z, reasons = [], []
    for pool in pools:
        z_row, r_row = [], []
        for threshold in thresholds:
            runs = cells[threshold, pool]
            bad = [(seq, misfit[seq, p]) for seq, p, _ in runs if misfit[seq, p]]
            if bad:
                z_row.append(None)
                r_row.append(f"seq {bad[0][0]}: {bad[0][1][0]}")
                continue
            rs = [(share, points[seq, p]) for seq, p, share in runs]
            if metric == "tpot":
                z_row.append(sum(share * r["tpot_ms"] for share, r in rs))
            else:
                tokens = sum(share * sc.batch * (r["seq_len"] + r["output_len"]) for share, r in rs)
                secs = sum(share * (r["ttft_ms"] + (r["output_len"] - 1) * r["tpot_ms"]) / 1e3
                           for share, r in rs)
                z_row.append(tokens / secs)
            r_row.append("")
        z.append(z_row)
        reasons.append(r_row)
    return {"metric": metric, "thresholds": list(thresholds), "pools": list(pools), "z": z,
            "reasons": reasons, "mix": [list(m) for m in mix]}


# ------------------------------------------------------------------ search
def search_key(sc: Scenario, gpus: int, objective: str, rates: tuple = ()) -> str:
    """Identifies the inputs a search result belongs to (a stale result is not shown)."""
    return repr((sc.model, sc.cluster, sc.profile.name, sc.profile.device, sc.batch,
                 sc.request_workload.summary(), sc.slo_tpot_ms, sc.slo_ttft_ms, gpus,
                 objective, sc.fapool.decode_kv, tuple(rates)))


def _slim(c: dict) -> dict:
    """A full-batch candidate (or the chosen plan, which adds its serving figures)."""
    out = {"label": c["name"], "kind": c["kind"], "gpus": c["gpus"], "tpot_ms": c["tpot_ms"],
           "ttft_ms": c["ttft_ms"], "tps": c["tps"], "feasible": c["feasible"],
           "strategy": c["strategy"], "tpot_ms_interval": c.get("tpot_ms_interval")}
    if "replicas" in c:
        out.update(_served(c), tpot_ms=c["tpot_ms"], gpus=c["gpus"])
    return out


def _served(p: dict) -> dict:
    """A request-level plan (planner.capacity): replicas x layout, running-batch limit."""
    r = p["requests"]
    return {"label": f"{p['replicas']} x {p['name']}, batch <= {p['max_batch']}",
            "kind": p["kind"], "gpus": p["gpus"], "replicas": p["replicas"],
            "max_batch": p["max_batch"], "meets_slo": p["meets_slo"],
            "ttft_p99_ms": r.get("ttft_p99_ms"), "tpot_p99_ms": r.get("tpot_p99_ms"),
            "queue_p99_ms": r.get("queue_p99_ms"), "throughput_rps": r.get("throughput_rps")}


def front_2d(candidates: list) -> list:
    """The feasible candidates no other beats on both GPUs and TPOT (the search's own front
    is over GPUs, TPOT and TPS together, so it holds points this plane shows as dominated)."""
    best, out = math.inf, []
    for c in sorted((c for c in candidates if c["feasible"]),
                    key=lambda c: (c["gpus"], c["tpot_ms"])):
        if c["tpot_ms"] < best:
            best = c["tpot_ms"]
            out.append(c)
    return out


def run_search(sc: Scenario, gpus: int, objective: str = "tps", rates: tuple = (),
               progress=None) -> dict:
    """planner.search over the scenario's request stream at its rate, or at each of `rates`
    (the plan of the largest rate shown, and the GPUs-vs-rate table); progress(fraction)
    is called as the full-batch screen's simulations finish."""
    tick = (lambda done, total: progress(done / max(total, 1))) if progress else False
    runs = search_rates(sc.model, sc.cluster, gpus,
                        [(r, sc.arrivals(r)) for r in rates] or [(None, sc.request_workload)],
                        sc.slo_tpot_ms, sc.slo_ttft_ms, objective, progress=tick,
                        batch=sc.batch, profile=sc.profile,
                        space=SearchSpace(decode_kv=sc.fapool.decode_kv))
    res = runs[-1][2]
    chosen = res.chosen or res.closest
    summary = f"{res.headline()}; workload {res.workload['name']}.  "
    if res.chosen:
        r = res.chosen["requests"]
        summary += (f"Chosen ({objective}): {describe(res.chosen)}, request p99 TTFT "
                    f"{fmt(r.get('ttft_p99_ms'))} ms, p99 TPOT {fmt(r.get('tpot_p99_ms'))} ms"
                    + (", meets the SLOs." if res.slo_given else "."))
    else:
        summary += res.reason
    return {"candidates": [_slim(c) for c in res.candidates],
            "pareto": [_slim(c) for c in res.pareto],
            "front": [_slim(c) for c in front_2d(res.candidates)],
            "chosen": _slim(chosen) if chosen else None,
            "served": [_served(p) for p in res.served],
            "requests_front": [_served(p) for p in res.requests_front],
            "rates": [rate_row(r, w, x) for r, w, x in runs], "summary": summary}


def serve(model, cluster, profile, strategy, workload, serving) -> dict:
    """A plan's request-level figures on a request stream (planner.requests summary);
    app.py caches it (plain specs in, a dict out)."""
    return simulate_requests(model, cluster, strategy, workload, serving, profile).summary()


def serve_selected(sc: Scenario, serve_fn=serve) -> dict:
    """The selected plan, sc.replicas replicas of it, serving sc.request_workload."""
    return serve_fn(*sc.specs, sc.strategy(), sc.request_workload, sc.serving)


# ------------------------------------------------------------------ measured vs predicted
def store_comparison(path: str | Path) -> dict:
    """Executor runs in the store at path: predicted (the plan's predictions, kept in the
    run's meta) vs measured (median of e2e_prefill / e2e_decode samples), in ms.
    Never creates or writes a store: a missing file gives no rows and says so; any other
    file opens read-only and must be an fa-pool store (InputError otherwise)."""
    from calibration.store import Store

    path = Path(path)
    if not path.exists():
        return {"rows": [], "runs": 0, "note": f"no measurement store at {path}"}
    store = Store(path, readonly=True)
    try:
        runs = store.runs(kind="executor", status="complete")
        rows, unpredicted = [], 0
        for run in runs:
            pred = run["meta"].get("predictions") or {}
            if not pred:
                unpredicted += 1
                continue
            for sample in store.samples(run_id=run["id"]):
                metric = {"e2e_prefill": "ttft_ms", "e2e_decode": "tpot_ms"}.get(sample["op"])
                if metric and pred.get(metric):
                    p = sample["params"]
                    rows.append({"run_id": run["id"], "plan_id": run["plan_id"],
                                 "metric": metric.split("_")[0].upper(),
                                 "strategy": run["meta"].get("strategy", p.get("strategy")),
                                 "seq_len": p.get("seq_len"), "backend": run["backend"],
                                 "predicted_ms": float(pred[metric]),
                                 "measured_ms": sample["median_s"] * 1e3})
    finally:
        store.close()
    note = (f"{len(runs)} executor run(s) in {path}"
            + (f"; {unpredicted} without predictions in their plan (not shown)"
               if unpredicted else ""))
    return {"rows": rows, "runs": len(runs), "note": note}


# ------------------------------------------------------------------ downloads
def selected_plan(sc: Scenario):
    """The selected strategy at the chosen length as a Plan, with the simulator's full
    predictions (intervals included) computed for exactly this strategy (its micro-batch
    count made explicit, as plan.json states it)."""
    wl = sc.workload()
    strategy = resolve_microbatches(sc.model, sc.strategy(), wl, sc.profile)
    result = simulate(sc.model, sc.cluster, strategy, wl, profile=sc.profile, record=False,
                      interval_samples=sc.interval_samples)
    return make_plan(sc.model, sc.cluster, strategy, wl, sc.profile,
                     predictions=result.to_json())


def _plan_text(plan) -> str:
    """plan.json's text, as planner.plan.save_plan writes it."""
    return json.dumps(plan.to_dict(), indent=2) + "\n"


def plan_json(sc: Scenario) -> bytes:
    return _plan_text(selected_plan(sc)).encode()


def launch_zip(sc: Scenario) -> bytes:
    """plan.json and planner.launch's launch configs of the selected plan, zipped."""
    plan = selected_plan(sc)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("plan.json", _plan_text(plan))
        for name, text in sorted(render_launch_configs(plan).items()):
            zf.writestr(str(name), text)
    return buf.getvalue()


def fmt(value: float) -> str:
    """A duration in ms for a headline: 4 significant digits, thousands separated."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
