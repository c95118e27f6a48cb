"""Plan search: FA Pool (threshold x pool rule x base TP) and static TP x PP baselines within
a GPU budget, each evaluated on a request workload; Pareto front and the chosen plan.

Two stages.  (1) The full-batch screen below: every layout on full batches of each length
bucket (memory feasibility, the full-batch figures and Pareto front).  (2) The capacity
stage (planner.capacity): replicas and a running-batch limit per layout under the
workload's arrival process, the SLOs judged on the request-level simulation's p99 TTFT and
p99 TPOT (planner.requests); the chosen plan is that stage's.

Aggregation over the workload (stage 1) (planner.workloads buckets, power-of-two input ranges):
each bucket b runs at the largest batch B_b <= ``batch`` whose memory fits at the bucket's
longest input (a server admits no more; planner.memory), and is simulated as one batch of
B_b sequences of its mean input and output length (planner.simulate: TTFT, TPOT of a step,
batch time T_b = TTFT + (out-1) TPOT).  A candidate is infeasible where not even one
sequence fits.  With w_b the fraction of requests in b:
  tpot_ms, ttft_ms      request-weighted means  sum_b w_b x_b
  tpot_p99_ms, ...      request-weighted 99th percentile over the buckets
  tps                   all requests served in batches of B_b (paper 4.4: input + output):
                        sum_b w_b (in_b + out_b) / sum_b w_b T_b / B_b
  gpus                  GPUs the plan launches (its world size: base + max pool, or TP x PP)
  gpus_mean             GPUs in use, time-weighted (time share of b: w_b T_b / B_b)

Speed: a candidate's result on a bucket depends only on (base TP, pool size at that
length) -- the threshold and the pool rule only pick the pool size -- so each distinct
(base TP, pool size, bucket, batch) and (TP, PP, bucket, batch) is simulated once, in a
process pool (planner.sweep).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from calibration.errors import InputError, require
from calibration.profile import Profile
from planner.capacity import CapacityPlanner, plan_capacity, request_front
from planner.cluster import ClusterSpec
from planner.layout import check_tp
from planner.memory import fit_batch
from planner.model import ModelSpec
from planner.pareto import pareto_front, weighted_percentile
from planner.requests import StepCosts
from planner.simulate import simulate
from planner.sweep import canonical, run_tasks, sim_summary, stage_line
from planner.strategy import (DECODE_KV_PLACEMENTS, FAPoolStrategy, StaticStrategy, Strategy,
                              strategy_from_dict)
from planner.workload import PAPER_BATCH, Workload
from planner.workloads import RequestWorkload

THRESHOLDS = tuple(2 ** k for k in range(9, 17))           # 512 .. 65536
TOKENS_PER_POOL_GPU = (256, 512, 1024, 2048, 4096)
MAX_POOLS = (2, 4, 8, 16, 24, 32)
MAX_POOL_LIMIT = 32
PIPELINE_DEGREES = (1, 2, 3, 4, 6, 8)
SLO_PERCENTILE = 99
INTERVAL_DRAWS = 8
OBJECTIVES = ("tps", "gpus")


@dataclass(frozen=True)
class SearchSpace:
    thresholds: tuple | None = None      # None: THRESHOLDS, extended down to the workload's
                                         # shortest bucket (small local models)
    tokens_per_pool_gpu: tuple = TOKENS_PER_POOL_GPU
    max_pools: tuple = MAX_POOLS
    max_base_tp: int = 8
    pipeline_degrees: tuple = PIPELINE_DEGREES
    static: bool = True
    decode_kv: str = "split-batch"

    def __post_init__(self):
        require(self.decode_kv in DECODE_KV_PLACEMENTS, "decode_kv",
                f"must be one of {DECODE_KV_PLACEMENTS}")


@dataclass
class SearchResult:
    candidates: list                 # every candidate (dicts, see _candidate)
    pareto: list                     # feasible, non-dominated (GPUs, TPOT, TPS)
    chosen: dict | None              # best under the SLOs for the objective
    closest: dict | None = None      # when nothing meets the SLOs: the nearest feasible
    reason: str = ""                 # why chosen is None
    objective: str = "tps"
    slo: dict = field(default_factory=dict)
    batch: int = PAPER_BATCH
    buckets: list = field(default_factory=list)
    workload: dict = field(default_factory=dict)
    simulations: int = 0
    seconds: float = 0.0
    served: list = field(default_factory=list)          # request-level plans simulated
    requests_front: list = field(default_factory=list)  # their (GPUs, p99s) Pareto front
    load_rps: float = 0.0
    budget: int = 0
    screen_sims: int = 0
    best_by_kind: dict = field(default_factory=dict)    # "static"/"fapool" -> plan | None
    costs: object = None                                # the StepCosts the stage used

    @property
    def slo_given(self) -> bool:
        return any(self.slo.get(k) is not None for k in ("tpot_ms", "ttft_ms"))

    def strategy(self, candidate: dict) -> Strategy:
        return strategy_from_dict(candidate["strategy"])

    def headline(self) -> str:
        """What was searched, in one line (the CLI's and the dashboard's)."""
        fit = sum(c["feasible"] for c in self.candidates)
        head = (f"searched {len(self.candidates)} layouts ({fit} fit in memory), then "
                f"{len(self.served)} plans (replicas x running-batch limit) under "
                f"{self.load_rps:.3g} requests/s; {self.simulations} simulations, "
                f"{self.seconds:.1f} s")
        if self.slo_given:
            head += f"; {sum(p['meets_slo'] for p in self.served)} meet the SLOs"
        return head

    def to_json(self, all_candidates: bool = False) -> dict:
        return {"objective": self.objective, "slo": self.slo, "batch": self.batch,
                "workload": self.workload, "load_rps": round(self.load_rps, 6),
                "simulations": self.simulations, "seconds": round(self.seconds, 3),
                "candidates": len(self.candidates),
                "feasible": sum(c["feasible"] for c in self.candidates),
                "request_plans": len(self.served),
                **({"meets_slo": sum(p["meets_slo"] for p in self.served)}
                   if self.slo_given else {}),
                "chosen": self.chosen, "closest": self.closest, "reason": self.reason,
                "pareto": self.pareto, "pareto_requests": self.requests_front,
                "best_by_kind": self.best_by_kind,
                **({"all": self.candidates} if all_candidates else {})}


# ------------------------------------------------------------------ the space
def valid_tps(model: ModelSpec, limit: int) -> list:
    out = []
    for tp in range(1, limit + 1):
        try:
            check_tp(model, tp, "tp")
        except InputError:
            continue
        out.append(tp)
    return out


def thresholds_for(space: SearchSpace, buckets: list) -> tuple:
    if space.thresholds is not None:
        return tuple(space.thresholds)
    low = min([b.lo for b in buckets] + [THRESHOLDS[0]])
    return tuple(sorted({*THRESHOLDS, *(2 ** k for k in range(max(low, 1).bit_length() - 1,
                                                             9))}))


def enumerate_strategies(model: ModelSpec, budget: int, space: SearchSpace,
                         thresholds: tuple = THRESHOLDS) -> list:
    """Every FA Pool and static strategy within the GPU budget."""
    out = []
    for base in valid_tps(model, min(space.max_base_tp, budget)):
        room = min(budget - base, MAX_POOL_LIMIT)
        if room < 1:
            continue
        pools = sorted({m for m in space.max_pools if m <= room} | {room})
        for threshold in thresholds:
            for t in space.tokens_per_pool_gpu:
                for m in pools:
                    out.append(FAPoolStrategy(base_tp=base, threshold=threshold,
                                              tokens_per_pool_gpu=t, max_pool=m,
                                              decode_kv=space.decode_kv))
    if space.static:
        for tp in valid_tps(model, budget):
            for pp in space.pipeline_degrees:
                if tp * pp <= budget and pp <= model.layers:
                    out.append(StaticStrategy(tp=tp, pp=pp))
    return out


def _kind(s: Strategy) -> tuple:
    if isinstance(s, StaticStrategy):
        return ("static", s.tp)
    return ("fapool", s.base_tp)


def _second(s: Strategy, seq_len: int) -> int:
    return s.pp if isinstance(s, StaticStrategy) else s.pool_size(seq_len)


def _kv(s: Strategy) -> str:
    return s.decode_kv if isinstance(s, FAPoolStrategy) else "-"


class _Planner:
    """Per-bucket batch and simulation key of every candidate, with shared caches."""

    def __init__(self, model, buckets, batch, capacity):
        self.model, self.buckets, self.batch, self.capacity = model, buckets, batch, capacity
        self.fit_cache: dict = {}

    def bucket(self, s: Strategy, i: int) -> tuple:
        """(batch, memory reasons, sim key or None) of strategy s on bucket i."""
        b = self.buckets[i]
        kind, a = _kind(s)
        at_max = (kind, a, _second(s, b.max_input), i, _kv(s))
        if at_max not in self.fit_cache:
            canon = canonical(kind, a, at_max[2], b.max_input, _kv(s))
            self.fit_cache[at_max] = fit_batch(self.model, canon, Workload(
                self.batch, b.max_input, b.output_len), self.capacity)
        n, reasons = self.fit_cache[at_max]
        if not n:
            return 0, [f"seq {b.max_input} {b.label}: {reasons[0]}"], None
        return n, [], (kind, a, _second(s, b.input_len), i, _kv(s), n)


# ------------------------------------------------------------------ evaluation
def aggregate(strategy: Strategy, buckets: list, per_bucket: list) -> dict:
    """One candidate's full-batch dict from its per-bucket (batch, reasons, sim result)."""
    rows, reasons = [], []
    for b, (n, why, r) in zip(buckets, per_bucket):
        row = {"range": b.label, "seq_len": b.input_len, "max_seq_len": b.max_input,
               "output_len": b.output_len, "weight": round(b.weight, 6), "batch": n,
               "pool_gpus": strategy.pool_size(b.max_input), "gpus": strategy.gpus(b.max_input),
               "feasible": bool(n) and r["feasible"],
               "memory_gb": r["memory_gb"] if r else None}
        if row["feasible"]:
            row.update(ttft_ms=r["ttft_s"] * 1e3, tpot_ms=r["tpot_s"] * 1e3,
                       total_s=r["total_s"], tps=n * (b.input_len + b.output_len) / r["total_s"])
        else:
            reasons += why or [f"seq {b.input_len} {b.label}: {x}" for x in r["reasons"][:1]]
        rows.append(row)
    c = {"kind": _kind(strategy)[0], "name": strategy.describe(),
         "strategy": strategy.to_dict(), "gpus": strategy.max_gpus,
         "gpus_used_max": max(row["gpus"] for row in rows),
         "feasible": not reasons, "reasons": reasons, "buckets": rows}
    if isinstance(strategy, FAPoolStrategy):
        c["pool_gpus_max"] = max(row["pool_gpus"] for row in rows)
    if reasons:
        c.update(tpot_ms=None, ttft_ms=None, tpot_p99_ms=None, ttft_p99_ms=None, tps=None,
                 gpus_mean=None)
        return c
    w = [row["weight"] for row in rows]
    times = [wi * row["total_s"] / row["batch"] for wi, row in zip(w, rows)]
    tokens = sum(wi * (row["seq_len"] + row["output_len"]) for wi, row in zip(w, rows))
    c.update(
        tpot_ms=sum(wi * row["tpot_ms"] for wi, row in zip(w, rows)) / sum(w),
        ttft_ms=sum(wi * row["ttft_ms"] for wi, row in zip(w, rows)) / sum(w),
        tpot_p99_ms=weighted_percentile([r["tpot_ms"] for r in rows], w, SLO_PERCENTILE),
        ttft_p99_ms=weighted_percentile([r["ttft_ms"] for r in rows], w, SLO_PERCENTILE),
        tps=tokens / sum(times),
        gpus_mean=sum(t * row["gpus"] for t, row in zip(times, rows)) / sum(times))
    return c


def _better(objective: str):
    if objective == "tps":
        return lambda c: (c["tps"], -c["gpus"], -c["tpot_ms"])
    return lambda c: (-c["gpus"], c["tps"], -c["tpot_ms"])


def as_request_workload(workload, batch: int | None = None) -> tuple:
    """(RequestWorkload, batch) from a RequestWorkload, a trace path / mix name (str), or
    a single-shape planner.workload.Workload (its batch becomes the batch)."""
    if isinstance(workload, RequestWorkload):
        return workload, PAPER_BATCH if batch is None else batch
    if isinstance(workload, str):
        from planner.workloads import resolve_workload
        return resolve_workload(workload), PAPER_BATCH if batch is None else batch
    if isinstance(workload, Workload):
        from planner.workloads import Request
        req = Request(0.0, workload.input_len, workload.output_len)
        return (RequestWorkload(f"{workload.batch} x {workload.input_len}", (req,)),
                workload.batch if batch is None else batch)
    raise InputError("workload", f"not a workload: {workload!r}")


def search(model: ModelSpec, cluster: ClusterSpec, gpus: int, workload,
           slo_tpot_ms: float | None = None, slo_ttft_ms: float | None = None,
           objective: str = "tps", progress=None, batch: int | None = None,
           profile: Profile | None = None, space: SearchSpace | None = None,
           workers: int | None = None, intervals: bool = True,
           screen_from: "SearchResult | None" = None) -> SearchResult:
    """Search the plan space for `workload` within `gpus` GPUs (see module docstring).
    workload: RequestWorkload, trace path / mix name, or a Workload (one batch shape).
    screen_from: an earlier result on the same lengths, batch and budget (another arrival
    rate): its full-batch screen and step costs are reused, only the capacity stage runs."""
    t0 = time.perf_counter()
    workload, batch = as_request_workload(workload, batch)
    require(objective in OBJECTIVES, "--objective", f"must be one of {OBJECTIVES}")
    require(isinstance(gpus, int) and gpus > 0, "--gpus", f"must be a positive integer, got {gpus}")
    require(gpus <= cluster.total_gpus, "--gpus",
            f"{gpus} > the {cluster.total_gpus} GPUs of cluster {cluster.name}")
    require(batch > 0, "--batch", f"must be > 0, got {batch}")
    for name, v in (("--slo-tpot", slo_tpot_ms), ("--slo-ttft", slo_ttft_ms)):
        require(v is None or (v > 0 and math.isfinite(v)), name, f"must be > 0 ms, got {v}")
    profile = profile or cluster.load_profile()
    buckets = workload.buckets()
    workers = workers or os.cpu_count() or 1
    slo = {"tpot_ms": slo_tpot_ms, "ttft_ms": slo_ttft_ms, "percentile": SLO_PERCENTILE}
    if (screen_from is not None and screen_from.buckets == buckets
            and screen_from.batch == batch and screen_from.budget == gpus):
        cands, screen_sims = copy.deepcopy(screen_from.candidates), screen_from.screen_sims
        costs = screen_from.costs            # the same buckets: every step cost still holds
    else:
        cands, sims = _screen(model, cluster, profile, gpus, buckets, batch,
                              space or SearchSpace(), workers, progress)
        screen_sims = len(sims)
        costs = StepCosts(model, cluster, profile, buckets)
        for k, v in sims.items():
            costs.add(k, v)
    result = SearchResult(cands, pareto_front(cands), None, objective=objective, slo=slo,
                          batch=batch, buckets=buckets, workload=workload.summary(),
                          simulations=screen_sims, budget=gpus, screen_sims=screen_sims)
    cap = plan_capacity(CapacityPlanner(model, cluster, profile, workload, slo, gpus, batch,
                                        costs), cands, objective, progress,
                        result.pareto, workers)
    result.served, result.requests_front = cap.served, request_front(cap.served)
    result.load_rps, result.simulations = cap.load_rps, screen_sims + cap.simulations
    result.costs, result.best_by_kind = costs, cap.best_by_kind
    _choose(result, cap)
    if intervals and result.chosen is not None and profile.has_uncertainty:
        add_intervals(result.chosen, model, cluster, profile, buckets, workers)
    result.seconds = time.perf_counter() - t0
    return result


def search_rates(model: ModelSpec, cluster: ClusterSpec, gpus: int, workloads: list,
                 slo_tpot_ms: float | None = None, slo_ttft_ms: float | None = None,
                 objective: str = "tps", progress=None, **kw) -> list:
    """search() at each arrival rate: workloads [(rate or None, RequestWorkload)], the same
    requests at several rates; the first rate's full-batch screen serves them all.
    Returns [(rate, workload, SearchResult)]."""
    out, prev = [], None
    for rate, workload in workloads:
        if rate is not None and len(workloads) > 1:
            stage_line(progress, f"rate {rate:g} requests/s")
        prev = search(model, cluster, gpus, workload, slo_tpot_ms, slo_ttft_ms, objective,
                      progress, screen_from=prev, **kw)
        out.append((rate, workload, prev))
    return out


def _screen(model, cluster, profile, gpus, buckets, batch, space, workers, progress) -> tuple:
    """Stage 1: (full-batch candidate dicts, {simulation key: sim_summary})."""
    # FA Pool plans whose pool this workload never activates are static TP=base PP=1 with
    # idle GPUs reserved: dropped (the static candidate stands for them).
    strategies = [s for s in enumerate_strategies(model, gpus, space,
                                                  thresholds_for(space, buckets))
                  if not isinstance(s, FAPoolStrategy)
                  or any(s.pool_size(b.max_input) for b in buckets)]
    require(bool(strategies), "--gpus", f"{gpus} GPUs admit no valid TP degree of {model.name}")
    planner = _Planner(model, buckets, batch, profile.device.hbm_bytes)
    plans = [[planner.bucket(s, i) for i in range(len(buckets))] for s in strategies]
    keys = sorted({k for p in plans for _, _, k in p if k},
                  key=lambda k: (-buckets[k[3]].input_len, k))      # long (slow) ones first
    init = (model, cluster, profile, buckets)
    sims = dict(zip(keys, run_tasks([(k, None) for k in keys], workers, init, progress,
                                    "screen")))
    cands = []
    for idx, (s, p) in enumerate(zip(strategies, plans)):
        c = aggregate(s, buckets, [(n, why, sims.get(k)) for n, why, k in p])
        c["id"] = idx
        cands.append(c)
    return cands, sims


def _choose(result: SearchResult, cap) -> None:
    """The chosen plan: the capacity stage's, merged onto its layout's full-batch dict
    (gpus, meets_slo become the plan's: replicas x GPUs per replica, request-level SLOs)."""
    feasible = [c for c in result.candidates if c["feasible"]]
    if not feasible:
        reasons = sorted({r.split(": ", 1)[-1] for c in result.candidates for r in c["reasons"]},
                         key=len)
        result.reason = ("no plan fits in memory within the GPU budget; e.g. "
                         + (reasons[0] if reasons else "every candidate is infeasible"))
        return
    result.reason = cap.reason
    for attr in ("chosen", "closest"):
        plan = getattr(cap, attr)
        if plan is not None:
            setattr(result, attr, {**result.candidates[plan["id"]], **plan,
                                   "full_batch_gpus": result.candidates[plan["id"]]["gpus"]})
    if result.chosen is not None:
        result.chosen["chosen"] = True


def evaluate_strategy(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy,
                      workload: RequestWorkload, batch: int = PAPER_BATCH,
                      profile: Profile | None = None) -> dict:
    """One strategy on a workload, aggregated as the search aggregates its candidates,
    simulating the strategy itself (not its canonical stand-in)."""
    profile = profile or cluster.load_profile()
    buckets = workload.buckets()
    planner = _Planner(model, buckets, batch, profile.device.hbm_bytes)
    per_bucket = []
    for i, b in enumerate(buckets):
        n, why, key = planner.bucket(strategy, i)
        r = sim_summary(simulate(model, cluster, strategy, Workload(n, b.input_len,
                                                                    b.output_len),
                                 profile=profile, record=False, interval_samples=0)) \
            if key else None
        per_bucket.append((n, why, r))
    return aggregate(strategy, buckets, per_bucket)


def add_intervals(cand: dict, model, cluster, profile: Profile, buckets: list,
                  workers: int = 1, draws: int = INTERVAL_DRAWS, seed: int = 0) -> None:
    """5-95% intervals of the aggregated TPOT / TTFT / TPS over draws of the profile's
    fitted parameters (the same draw for every bucket, aggregated per draw)."""
    s = strategy_from_dict(cand["strategy"])
    rows = cand["buckets"]
    keys = [(*_kind(s), _second(s, b.input_len), i, _kv(s), row["batch"])
            for i, (b, row) in enumerate(zip(buckets, rows))]
    rng = np.random.default_rng(seed)
    profiles = [profile.sample(rng) for _ in range(draws)]
    values = run_tasks([(k, p) for p in profiles for k in keys], workers,
                       (model, cluster, profile, buckets), False, "intervals")
    per_draw = {"tpot_ms": [], "ttft_ms": [], "tps": []}
    for d in range(draws):
        rs = values[d * len(keys):(d + 1) * len(keys)]
        drawn = aggregate(s, buckets, [(row["batch"], [], r) for row, r in zip(rows, rs)])
        if drawn["feasible"]:
            for name, vals in per_draw.items():
                vals.append(drawn[name])
    for name, vals in per_draw.items():
        if vals:
            lo, hi = np.percentile(vals, (5, 95))
            cand[f"{name}_interval"] = [float(lo), float(hi)]
