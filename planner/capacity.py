"""Capacity planning: the request-level stage of the plan search.

The full-batch screen (planner.search) gives every layout's figures on full batches of each
length bucket.  This stage decides, for the workload's arrival process, how many replicas
of a layout to run and how many requests each may hold in flight (planner.serving), and
judges the SLOs on the request-level simulation (planner.requests): p99 TTFT and p99 TPOT
over the requests as they arrive, queue included.

Per layout L (one per distinct request-level behaviour: kind, TP, pool size per bucket,
max pool) and running-batch limit b (LIMITS: --batch and powers of 4 below it):
  capacity_rps(L, b)  = 1 / sum_k w_k T_k / n_k          (requests/s one replica sustains)
      n_k = min(b, what fits in memory for bucket k), T_k = prefill(n_k) + (out_k - 1)
      decode(n_k), w_k the bucket's share of requests: full running batches of each bucket
      one after another; FA Pool's pool contention between buckets is not in it, so it is
      an upper bound the simulation then checks.
  replicas R          >= ceil(load_rps / capacity_rps(L, b)) (a plan must keep up with the
      arrivals, SLO or not: load_rps = requests / arrival span); up to the GPU budget.
      The simulation then checks it: a plan whose backlog outlasts the arrivals (DRAIN_LIMIT)
      does not keep up, SLO or not.
  GPUs                = R x strategy.max_gpus (a replica's pool GPUs counted at the pool's
      full size, the peak it can take).

Objective gpus: the fewest GPUs meeting the SLOs.  Layouts are taken in the order of a lower
bound from the screen (GPUs per replica x ceil(load tokens/s / full-batch TPS)); for each,
R grows from that bound and, per R, b falls from the largest that keeps up; the first (R, b)
meeting the SLOs is the layout's plan.  Layouts whose bound cannot beat the best plan found
are not simulated (branch and bound).
Objective tps: the highest sustainable throughput (R x capacity, tokens/s) within the
budget meeting the SLOs: R = budget // GPUs per replica; layouts in the order of an upper
bound from the screen (R x full-batch TPS); per layout b falls from --batch until the SLOs
are met; layouts that cannot beat the best found are skipped.
Without SLOs every plan that keeps up meets them.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
from dataclasses import dataclass, field

from planner.pareto import dominates_min
from planner.requests import StepCosts, simulate_requests
from planner.serving import Serving
from planner.strategy import FAPoolStrategy, strategy_from_dict
from planner.sweep import process_map, stage_line

KINDS = ("static", "fapool")
DRAIN_LIMIT = 2.0          # a plan keeps up when, after the last arrival, it drains within
                           # 2 x the longest time a request spends admitted (no backlog left
                           # beyond the requests in flight); else its queue grew
SLO_KEYS = (("ttft", "ttft_p99_ms"), ("tpot", "tpot_p99_ms"))
SLO_PERCENTILE = 99
REQUEST_FIGURES = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p90_ms",
                   "tpot_p99_ms", "queue_p50_ms", "queue_p99_ms", "throughput_rps",
                   "throughput_tps", "pool_occupancy_mean", "completed", "requests")


def limits_for(batch: int) -> list:
    """Running-batch limits tried, largest first: batch, then powers of 4 below it."""
    out = {batch}
    k = 1
    while k < batch:
        out.add(k)
        k *= 4
    return sorted(out, reverse=True)


def load_of(workload) -> tuple:
    """(requests/s, tokens/s) the workload offers: requests over their arrival span (0 for
    a single request or simultaneous arrivals: no rate to keep up with)."""
    span = workload.duration_s
    if span <= 0:
        return 0.0, 0.0
    n = len(workload.requests)
    tokens = sum(r.input_len + r.output_len for r in workload.requests)
    return (n - 1) / span, tokens * (n - 1) / n / span


@dataclass
class CapacityResult:
    served: list = field(default_factory=list)   # every (layout, R, b) simulated
    chosen: dict | None = None
    closest: dict | None = None
    reason: str = ""
    load_rps: float = 0.0
    simulations: int = 0
    request_sims: int = 0
    seconds: float = 0.0
    best_by_kind: dict = field(default_factory=dict)


class CapacityPlanner:
    """Request-level evaluation of layouts (full-batch candidates of planner.search)."""

    def __init__(self, model, cluster, profile, workload, slo: dict, budget: int,
                 batch: int, costs: StepCosts | None = None):
        self.model, self.cluster, self.profile = model, cluster, profile
        self.workload, self.slo, self.budget, self.batch = workload, slo, budget, batch
        self.buckets = workload.buckets()
        self.costs = costs or StepCosts(model, cluster, profile, self.buckets)
        self.load_rps, self.load_tps = load_of(workload)
        self.tokens_per_request = (sum(r.input_len + r.output_len for r in workload.requests)
                                   / len(workload.requests))
        self.request_sims = 0
        self.last_sim = None              # the RequestSimResult of the last serve()
        self.pruned: list = []            # [(layout, SLOs it misses even alone)]
        self.request_buckets = [next(i for i, b in enumerate(self.buckets)
                                     if b.lo <= r.input_len < b.hi) for r in workload.requests]

    # ------------------------------------------------------------ one plan
    def capacity_rps(self, strategy, b: int) -> float:
        """Requests/s one replica sustains at running-batch limit b (module docstring)."""
        per_request = 0.0
        for i, bucket in enumerate(self.buckets):
            stand = self.costs.stand_in(strategy, i)
            n = self.costs.cap(stand, b)
            if n == 0:
                return 0.0
            t = (self.costs.time("prefill", stand, n, n)
                 + (bucket.output_len - 1) * self.costs.time("decode", stand, n, n))
            per_request += bucket.weight * t / n
        return 1.0 / per_request if per_request > 0 and math.isfinite(per_request) else 0.0

    def floor(self, strategy) -> dict:
        """Lower bounds of the request-level p99 TTFT and TPOT (ms) of any plan of this
        layout: every request alone on its replica (prefill and decode of batch 1 of its
        bucket; a step never takes less with more requests in it, and queueing only adds).
        Each request's figure is at least its bound, so the sorted figures are, one by
        one, and so is their percentile."""
        per = []
        for i in range(len(self.buckets)):
            stand = self.costs.stand_in(strategy, i)
            per.append((self.costs.time("prefill", stand, 1, 1),
                        self.costs.time("decode", stand, 1, 1)))
        ttft = [per[i][0] for i in self.request_buckets]
        tpot = [per[i][1] for i, r in zip(self.request_buckets, self.workload.requests)
                if r.output_len > 1]
        return {"ttft_p99_ms": float(np.percentile(ttft, SLO_PERCENTILE)) * 1e3,
                "tpot_p99_ms": float(np.percentile(tpot, SLO_PERCENTILE)) * 1e3
                if tpot else None}

    def misses_alone(self, strategy) -> list:
        """The SLOs this layout misses even serving one request at a time (floor)."""
        floor = self.floor(strategy)
        return [f"request p99 {name.upper()} >= {floor[key]:,.1f} ms even one request at a "
                f"time > SLO {self.slo[f'{name}_ms']:g} ms" for name, key in SLO_KEYS
                if self.slo.get(f"{name}_ms") is not None and floor[key] is not None
                and floor[key] > self.slo[f"{name}_ms"]]

    def replicas_needed(self, capacity_rps: float) -> int:
        if self.load_rps <= 0:
            return 1
        return max(1, math.ceil(self.load_rps / capacity_rps)) if capacity_rps > 0 else 0

    def serve(self, cand: dict, replicas: int, b: int) -> dict:
        """The request-level simulation of candidate cand with R replicas and limit b."""
        strategy = strategy_from_dict(cand["strategy"])
        sim = simulate_requests(self.model, self.cluster, strategy, self.workload,
                                Serving(replicas=replicas, max_batch=b), self.profile,
                                self.costs)
        self.request_sims += 1
        self.last_sim = sim
        figures = sim.summary()
        cap = self.capacity_rps(strategy, b)
        plan = {"id": cand["id"], "name": cand["name"], "kind": cand["kind"],
                "strategy": cand["strategy"], "replicas": replicas, "max_batch": b,
                "gpus_per_replica": cand["gpus"], "gpus": replicas * cand["gpus"],
                "capacity_rps": round(replicas * cap, 6),
                "capacity_tps": round(replicas * cap * self.tokens_per_request, 3),
                "utilisation": round(self.load_rps / (replicas * cap), 4) if cap else None,
                "requests": {k: figures.get(k) for k in REQUEST_FIGURES},
                "slo_reasons": []}
        if figures["completed"] < figures["requests"]:
            plan["slo_reasons"].append(f"{figures['requests'] - figures['completed']} "
                                       f"requests never fit in memory")
        drain, service = figures.get("drain_s"), figures.get("service_max_s")
        behind = drain is not None and self.load_rps > 0 and drain > DRAIN_LIMIT * service
        plan["keeps_up"] = figures["completed"] == figures["requests"] and not behind
        if behind:
            plan["slo_reasons"].append(
                f"falls behind the arrivals (serves {figures['throughput_rps']:.3g} of "
                f"{self.load_rps:.3g} requests/s; drains {drain:,.1f} s after the last "
                f"arrival, > {DRAIN_LIMIT:g} x the longest service {service:,.1f} s)")
        for name, key in SLO_KEYS:
            limit, value = self.slo.get(f"{name}_ms"), figures.get(key)
            if limit is not None and value is not None and value > limit:
                plan["slo_reasons"].append(f"request p99 {name.upper()} {value:,.1f} ms > "
                                           f"SLO {limit:g} ms")
        plan["meets_slo"] = not plan["slo_reasons"]
        return plan

    # ------------------------------------------------------------ the search
    def _limits(self, strategy, first: bool = False) -> list:
        """(b, capacity_rps) for every limit, largest first, dropping a limit whose cap in
        memory equals a larger one's (the same plan).  first: the largest limit only (its
        capacity costs step simulations at the full running batch; every smaller limit's
        at its own, which a plan at the largest limit never needs)."""
        out, seen = [], set()
        for b in limits_for(self.batch):
            caps = tuple(self.costs.cap(self.costs.stand_in(strategy, i), b)
                         for i in range(len(self.buckets)))
            if caps in seen or 0 in caps:
                continue
            seen.add(caps)
            out.append((b, self.capacity_rps(strategy, b)))
            if first:
                break
        return out

    def best_for_gpus(self, cand: dict, best_gpus: float) -> list:
        """Plans of one layout tried on the way to its fewest replicas meeting the SLOs:
        R grows from the fewest that keep up (1, 2, 3, 4, then x1.5, the last step cut to
        the most the budget allows) until one meets them,
        then a bisection finds the smallest such R; never past the budget or best_gpus."""
        strategy = strategy_from_dict(cand["strategy"])
        limits = self._limits(strategy)
        tried: list = []
        need = [self.replicas_needed(cap) for _, cap in limits]
        if not any(need):
            return tried

        stands = [self.costs.stand_in(strategy, i) for i in range(len(self.buckets))]

        def attempt(r):
            last = None
            for (b, _), n in zip(limits, need):
                if not n or n > r or (last is not None
                                      and last.same_under(self.costs, stands, b)):
                    continue         # cannot keep up, or the same simulation as a larger b
                plan = self.serve(cand, r, b)
                last = self.last_sim
                tried.append(plan)
                if plan["meets_slo"]:
                    return plan
            return None

        def allowed(r):
            return r * cand["gpus"] <= self.budget and r * cand["gpus"] < best_gpus

        failed, r, found = min(n for n in need if n) - 1, min(n for n in need if n), None
        while allowed(r):
            found = attempt(r)
            if found:
                break
            grown = r + 1 if r < 4 else math.ceil(r * 1.5)
            top = next(k for k in range(grown, r, -1) if allowed(k) or k == r + 1)
            failed, r = r, top     # the most the budget allows when the step overshoots
        if found is None:
            return tried
        hi = r
        while hi - failed > 1:
            mid = (failed + hi) // 2
            if attempt(mid):
                hi = mid
            else:
                failed = mid
        best = min((p for p in tried if p["meets_slo"]), key=lambda p: (p["gpus"],
                                                                          -p["capacity_tps"]))
        tried.remove(best)
        return tried + [best]            # the layout's plan last

    def best_for_tps(self, cand: dict) -> list:
        strategy = strategy_from_dict(cand["strategy"])
        r = self.budget // cand["gpus"]
        stands = [self.costs.stand_in(strategy, i) for i in range(len(self.buckets))]
        tried, last = [], None
        for b, cap in self._limits(strategy):
            if not self.replicas_needed(cap) or self.replicas_needed(cap) > r:
                break                       # smaller limits sustain less
            if last is not None and last.same_under(self.costs, stands, b):
                continue                    # the same simulation as a larger limit
            plan = self.serve(cand, r, b)
            last = self.last_sim
            tried.append(plan)
            if plan["meets_slo"]:
                break
        return tried


def signature(cand: dict, buckets: list) -> tuple:
    """What the request simulation of a candidate depends on."""
    s = strategy_from_dict(cand["strategy"])
    if isinstance(s, FAPoolStrategy):
        return ("fapool", s.base_tp, s.decode_kv, s.max_pool_size,
                tuple(s.pool_size(b.max_input) for b in buckets))
    return ("static", s.tp, s.pp)


def _search_kind(planner: CapacityPlanner, layouts: list, objective: str) -> list:
    """Branch and bound over the layouts of one kind (module docstring); every plan tried.
    A layout that misses an SLO even serving one request at a time is not simulated
    (planner.pruned)."""
    served = []

    def hopeless(c):
        why = planner.misses_alone(strategy_from_dict(c["strategy"]))
        if why:
            planner.pruned.append((c, why))
        return bool(why)

    if objective == "gpus":
        def bound(c):
            need = max(1, math.ceil(planner.load_tps / c["tps"])) if planner.load_tps else 1
            return c["gpus"] * need
        best = math.inf
        for c in sorted(layouts, key=lambda c: (bound(c), -c["tps"])):
            if bound(c) >= best or bound(c) > planner.budget or hopeless(c):
                continue
            tried = planner.best_for_gpus(c, best)
            served += tried
            if tried and tried[-1]["meets_slo"]:
                best = tried[-1]["gpus"]
    else:
        def upper(c):
            return (planner.budget // c["gpus"]) * c["tps"]
        best = -math.inf
        for c in sorted(layouts, key=lambda c: -upper(c)):
            if upper(c) <= best or hopeless(c):
                continue
            tried = planner.best_for_tps(c)
            served += tried
            if tried and tried[-1]["meets_slo"]:
                best = max(best, tried[-1]["capacity_tps"])
    return served


def plan_capacity(planner: CapacityPlanner, candidates: list, objective: str,
                  progress=None, front: list = (), workers: int = 1) -> CapacityResult:
    """Choose replicas and running-batch limit for the feasible candidates (module
    docstring); candidates are the full-batch screen's dicts.  Each layout of `front` (the
    full-batch Pareto front) gets its request-level plan as c["serving_plan"]; those the
    search did not simulate run in `workers` processes."""
    t0 = time.perf_counter()
    sims0 = planner.costs.simulations
    out = CapacityResult(load_rps=planner.load_rps)
    layouts, seen = [], set()
    for c in candidates:
        if c["feasible"]:
            key = signature(c, planner.buckets)
            if key not in seen:
                seen.add(key)
                layouts.append(c)
    for kind in KINDS:       # each strategy's best on its own, then the best of them
        plans = _search_kind(planner, [c for c in layouts if c["kind"] == kind], objective)
        out.served += plans
        ok = [p for p in plans if p["meets_slo"]]
        out.best_by_kind[kind] = max(ok, key=_key(objective)) if ok else None
    _choose(out, objective, planner.slo)
    if out.chosen is None and not out.served and planner.pruned:
        _closest_alone(out, planner)
    _attach_front(planner, out, front, objective, workers)
    out.simulations = planner.costs.simulations - sims0
    out.request_sims = planner.request_sims
    out.seconds = time.perf_counter() - t0
    stage_line(progress, f"requests: {len(out.served)} plans simulated under the arrival process "
                          f"({out.simulations} step simulations) in {out.seconds:.1f} s")
    return out


def _attach_front(planner: CapacityPlanner, out: CapacityResult, front: list,
                  objective: str, workers: int = 1) -> None:
    """Every full-batch Pareto layout's request-level plan: its best plan the search
    simulated (meeting the SLOs if one does), else one simulated now with the fewest
    replicas that keep up at the largest running-batch limit (None: not within budget);
    those run in `workers` processes (serve_all)."""
    by_layout: dict = {}
    for p in out.served:
        by_layout.setdefault(signature(p, planner.buckets), []).append(p)
    chosen, jobs = {}, []                 # front index -> plan; [(index, (c, R, b))]
    for i, c in enumerate(front):
        plans = by_layout.get(signature(c, planner.buckets), [])
        ok = [p for p in plans if p["meets_slo"]]
        if ok:
            chosen[i] = max(ok, key=_key(objective))
        elif plans:
            chosen[i] = plans[-1]
        else:
            limits = planner._limits(strategy_from_dict(c["strategy"]), first=True)
            need = planner.replicas_needed(limits[0][1]) if limits else 0
            if need and need * c["gpus"] <= planner.budget:
                jobs.append((i, (c, need, limits[0][0])))
    for (i, _), plan in zip(jobs, serve_all(planner, [job for _, job in jobs], workers)):
        chosen[i] = plan
        out.served.append(plan)
    for i, c in enumerate(front):
        plan = chosen.get(i)
        c["serving_plan"] = plan and {k: plan[k] for k in (
            "replicas", "max_batch", "gpus", "meets_slo", "slo_reasons", "requests")}


# The planner of a serve_all worker (its step simulations so far come with it).
_WORKER: dict = {}


def _worker_init(planner: CapacityPlanner) -> None:
    _WORKER["planner"] = planner


def _serve_job(job: tuple) -> tuple:
    """(plan, step costs it added) of one serve() in a serve_all worker."""
    planner = _WORKER["planner"]
    before = set(planner.costs.steps)
    plan = planner.serve(*job)
    return plan, {k: v for k, v in planner.costs.steps.items() if k not in before}


def serve_all(planner: CapacityPlanner, jobs: list, workers: int = 1) -> list:
    """planner.serve(c, replicas, b) of every job, in order.  With workers > 1 (and fork)
    they run in a process pool (planner.sweep.process_map); each worker's new step
    simulations are merged back, so the plans are the same as one after another (a step's
    time depends on its key only) and later stages reuse the steps."""
    if workers <= 1 or len(jobs) < 4 or os.name != "posix":
        return [planner.serve(*job) for job in jobs]
    results = process_map(_serve_job, jobs, workers, _worker_init, (planner,))
    for _, steps in results:
        for key, value in steps.items():
            planner.costs.steps.setdefault(key, value)
    planner.costs.simulations += sum(len(steps) for _, steps in results)
    planner.request_sims += len(jobs)
    planner.last_sim = None
    return [plan for plan, _ in results]


def _key(objective: str):
    if objective == "gpus":
        return lambda p: (-p["gpus"], p["capacity_tps"])
    return lambda p: (p["capacity_tps"], -p["gpus"])


def _choose(out: CapacityResult, objective: str, slo: dict) -> None:
    ok = [p for p in out.served if p["meets_slo"]]
    if ok:
        out.chosen = max(ok, key=_key(objective))
        return
    if not out.served:
        out.reason = ("no layout keeps up with the arrivals within the GPU budget "
                      f"({out.load_rps:.3g} requests/s)")
        return

    def excess(p):
        ratios = [p["requests"][key] / slo[f"{name}_ms"] for name, key in SLO_KEYS
                  if slo.get(f"{name}_ms") and p["requests"].get(key) is not None]
        return max(ratios, default=math.inf)
    out.closest = min(out.served, key=lambda p: (excess(p), p["gpus"]))
    out.reason = (f"no plan meets the SLOs within the budget; the closest, {describe(out.closest)}"
                  f", has {'; '.join(out.closest['slo_reasons'])}")


def _closest_alone(out: CapacityResult, planner: CapacityPlanner) -> None:
    """Every layout misses an SLO even one request at a time: the closest is the one whose
    bound is nearest the SLOs, simulated once (its fewest replicas that keep up)."""
    def excess(item):
        floor = planner.floor(strategy_from_dict(item[0]["strategy"]))
        return max(floor[key] / planner.slo[f"{name}_ms"] for name, key in SLO_KEYS
                   if planner.slo.get(f"{name}_ms") and floor[key] is not None)
    cand, why = min(planner.pruned, key=lambda item: (excess(item), item[0]["gpus"]))
    limits = planner._limits(strategy_from_dict(cand["strategy"]), first=True)
    b, cap = limits[0] if limits else (planner.batch, 0.0)
    replicas = max(1, planner.replicas_needed(cap))
    if replicas * cand["gpus"] <= planner.budget:
        out.closest = planner.serve(cand, replicas, b)
        out.served.append(out.closest)
    out.reason = (f"no layout meets the SLOs within the budget even serving one request at a "
                  f"time; the closest, {cand['name']}, has {'; '.join(why)}")


def describe(p: dict) -> str:
    return (f"{p['replicas']} x {p['name']} (running batch <= {p['max_batch']}, "
            f"{p['gpus']} GPUs)")


def request_front(served: list) -> list:
    """Plans that keep up with the arrivals and that no other dominates on (GPUs, request
    p99 TTFT, request p99 TPOT), all lower-better."""
    pts = [p for p in served if p["keeps_up"]]

    def axes(p):
        return (p["gpus"], p["requests"]["ttft_p99_ms"], p["requests"].get("tpot_p99_ms") or 0)
    front = [p for p in pts if not any(dominates_min(axes(o), axes(p)) for o in pts)]
    return sorted(front, key=axes)


def brief(p: dict | None) -> dict | None:
    """A request-level plan in a line of a GPUs-vs-rate table."""
    if p is None:
        return None
    return {"name": p["name"], "kind": p["kind"], "replicas": p["replicas"],
            "max_batch": p["max_batch"], "gpus": p["gpus"], "requests": p["requests"]}


def rate_row(rate, workload, result) -> dict:
    """One line of the GPUs-vs-rate table from a planner.search result at that rate (rate:
    the one asked, else the workload's own): the chosen plan and the best of each kind."""
    return {"rate": rate if rate is not None else round(workload.rate, 6),
            "load_rps": round(result.load_rps, 6), "chosen": brief(result.chosen),
            "best_by_kind": {k: brief(p) for k, p in result.best_by_kind.items()},
            "reason": result.reason}
