"""Request-level simulation: a workload's requests arrive, queue, are batched and served.

One server process (simpy) loops over iterations, as an iteration-level scheduler does
(Orca, OSDI '22; vLLM): it admits waiting requests (first come, first served; a request
that cannot start now is skipped, so short requests pass a long one waiting for the pool),
runs the prefill of the newly admitted ones, else one decode step of everything running.

Resource manager (paper 1.3): requests are grouped by length bucket (planner.workloads).
A bucket at or above the threshold needs a pool of pool_size(longest input) GPUs; the first
request of the bucket takes them from the pool (a simpy Container of max_pool GPUs), later
ones of the same bucket join that lease, and the GPUs go back when its last request ends.
When the pool lacks the GPUs the request waits.  Requests of several buckets (several
leases) are in flight together.

Costs come from planner.simulate on equal-length batches: an iteration runs each bucket's
requests as one micro-batch after another (the simulator's model of a batch), so its time
is the sum over buckets of the simulated prefill (TTFT) or decode step (TPOT) of that many
sequences of the bucket's mean length.  Batch sizes are simulated on a power-of-two grid
and interpolated linearly between.  Memory: a bucket admits at most the batch that fits at
its longest input (search.fit_batch), and at most max_batch requests run in all.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.model import ModelSpec
from planner.search import fit_batch
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, Strategy
from planner.sweep import canonical
from planner.workload import PAPER_BATCH, Workload
from planner.workloads import RequestWorkload

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    index: int
    arrival_s: float
    input_len: int
    output_len: int
    bucket: int
    pool_gpus: int = 0
    start_s: float | None = None          # admitted
    first_token_s: float | None = None
    finish_s: float | None = None
    generated: int = 0
    rejected: str = ""

    @property
    def ttft_s(self):
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self):
        if self.finish_s is None or self.output_len < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)


class StepCosts:
    """Simulated time of one prefill / decode iteration of n requests of a bucket."""

    def __init__(self, model, cluster, strategies, buckets, profile, caps):
        self.model, self.cluster, self.profile = model, cluster, profile
        self.caps = caps                  # largest batch that fits, per bucket
        self.strategies = strategies      # what each bucket runs (its pool size fixed)
        self.buckets = buckets
        self.cache: dict = {}
        self.simulations = 0

    def _at(self, phase: str, i: int, n: int) -> float:
        key = (phase, i, n)
        if key not in self.cache:
            b = self.buckets[i]
            r = simulate(self.model, self.cluster, self.strategies[i],
                         Workload(n, b.input_len, b.output_len),
                         phase=phase, profile=self.profile, record=False, interval_samples=0)
            self.simulations += 1
            self.cache[key] = (r.ttft_s if phase == "prefill" else r.tpot_s) if r.feasible \
                else math.inf
        return self.cache[key]

    def time(self, phase: str, i: int, n: int) -> float:
        """Linear interpolation between the powers of two around n."""
        if n <= 0:
            return 0.0
        lo = 2 ** int(math.floor(math.log2(n)))
        if lo == n:
            return self._at(phase, i, n)
        hi = min(lo * 2, max(self.caps[i], n))
        t_lo, t_hi = self._at(phase, i, lo), self._at(phase, i, hi)
        return t_lo + (t_hi - t_lo) * (n - lo) / (hi - lo)


@dataclass
class RequestSimResult:
    strategy: str
    records: list
    occupancy: list                         # [(t_s, pool GPUs in use)]
    pool_capacity: int
    simulations: int = 0
    notes: list = field(default_factory=list)

    def _done(self):
        return [r for r in self.records if r.finish_s is not None]

    def summary(self) -> dict:
        done = self._done()
        out = {"strategy": self.strategy, "requests": len(self.records),
               "completed": len(done), "rejected": sum(bool(r.rejected) for r in self.records),
               "pool_capacity": self.pool_capacity, "simulations": self.simulations}
        if not done:
            return out
        start = min(r.arrival_s for r in self.records)
        end = max(r.finish_s for r in done)
        span = max(end - start, 1e-12)
        for name in ("ttft", "tpot"):
            vals = [getattr(r, f"{name}_s") for r in done if getattr(r, f"{name}_s") is not None]
            if vals:
                out[f"{name}_ms"] = {f"p{q}": round(float(np.percentile(vals, q)) * 1e3, 4)
                                     for q in PERCENTILES}
                out[f"{name}_ms"]["mean"] = round(float(np.mean(vals)) * 1e3, 4)
        queued = [r.start_s - r.arrival_s for r in done]
        out.update(
            makespan_s=round(span, 6),
            throughput_tps=round(sum(r.input_len + r.output_len for r in done) / span, 3),
            output_tps=round(sum(r.output_len for r in done) / span, 3),
            queue_ms={f"p{q}": round(float(np.percentile(queued, q)) * 1e3, 4)
                      for q in PERCENTILES},
            pool_occupancy_mean=round(self.mean_occupancy(end), 4) if self.pool_capacity else 0.0,
            pool_requests=sum(1 for r in done if r.pool_gpus))
        return out

    def mean_occupancy(self, end: float) -> float:
        """Time-weighted mean of pool GPUs in use, as a fraction of the pool."""
        if not self.occupancy or not self.pool_capacity:
            return 0.0
        area = 0.0
        for (t0, level), (t1, _) in zip(self.occupancy, self.occupancy[1:] + [(end, 0)]):
            area += level * max(0.0, min(t1, end) - t0)
        span = end - self.occupancy[0][0]
        return area / (span * self.pool_capacity) if span > 0 else 0.0


class _Lease:
    def __init__(self, gpus: int):
        self.gpus = gpus
        self.members = 0


def simulate_requests(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy,
                      workload: RequestWorkload, max_batch: int = PAPER_BATCH,
                      profile: Profile | None = None) -> RequestSimResult:
    """Serve every request of the workload; see the module docstring for the model."""
    profile = profile or cluster.load_profile()
    buckets = workload.buckets()
    edges = [(b.lo, b.hi) for b in buckets]
    capacity = profile.device.hbm_bytes
    fapool = isinstance(strategy, FAPoolStrategy)
    pool_cap = strategy.max_pool_size if fapool else 0
    pools = [strategy.pool_size(b.max_input) if fapool else 0 for b in buckets]
    # Each bucket runs with the pool its longest input takes (pool 0: the stand-in's
    # threshold is above every input of the bucket).
    stand_ins = [canonical("fapool", strategy.base_tp, p, b.max_input, strategy.decode_kv)
                 if fapool else strategy for b, p in zip(buckets, pools)]
    caps = [fit_batch(model, s, Workload(max_batch, b.max_input, b.output_len), capacity)[0]
            for s, b in zip(stand_ins, buckets)]
    costs = StepCosts(model, cluster, stand_ins, buckets, profile, caps)
    records = []
    for idx, r in enumerate(workload.requests):
        i = next(k for k, (lo, hi) in enumerate(edges) if lo <= r.input_len < hi)
        rec = RequestRecord(idx, r.arrival_s, r.input_len, r.output_len, i, pools[i])
        if caps[i] == 0:
            rec.rejected = "does not fit in memory even alone"
        records.append(rec)

    env = simpy.Environment()
    pool = simpy.Container(env, capacity=max(pool_cap, 1), init=max(pool_cap, 1))
    occupancy = [(0.0, 0)]
    waiting: deque = deque()
    running: list = []
    leases: dict = {}
    state = {"arrived": 0, "wake": env.event()}

    def arrivals(env):
        t0 = records[0].arrival_s if records else 0.0
        for rec in records:
            yield env.timeout(max(0.0, rec.arrival_s - t0 - env.now))
            state["arrived"] += 1
            if not rec.rejected:
                waiting.append(rec)
            if not state["wake"].triggered:
                state["wake"].succeed()

    def admit():
        new = []
        per_bucket = {}
        for rec in running:
            per_bucket[rec.bucket] = per_bucket.get(rec.bucket, 0) + 1
        for rec in list(waiting):
            if len(running) + len(new) >= max_batch:
                break
            i = rec.bucket
            if per_bucket.get(i, 0) >= caps[i]:
                continue
            if rec.pool_gpus:
                lease = leases.get(i)
                if lease is None:
                    if pool.level < rec.pool_gpus:
                        continue          # the pool is busy: wait for GPUs to come back
                    pool.get(rec.pool_gpus)
                    leases[i] = lease = _Lease(rec.pool_gpus)
                    occupancy.append((env.now, pool_cap - pool.level))
                lease.members += 1
            waiting.remove(rec)
            rec.start_s = env.now
            per_bucket[i] = per_bucket.get(i, 0) + 1
            new.append(rec)
        return new

    def release(rec):
        lease = leases.get(rec.bucket)
        if rec.pool_gpus and lease is not None:
            lease.members -= 1
            if lease.members == 0:
                del leases[rec.bucket]
                pool.put(lease.gpus)
                occupancy.append((env.now, pool_cap - pool.level))

    def iteration_time(phase, recs):
        counts = {}
        for rec in recs:
            counts[rec.bucket] = counts.get(rec.bucket, 0) + 1
        return sum(costs.time(phase, i, n) for i, n in sorted(counts.items()))

    def server(env):
        while True:
            new = admit()
            if new:
                yield env.timeout(iteration_time("prefill", new))
                for rec in new:
                    rec.first_token_s = env.now + records[0].arrival_s
                    rec.generated = 1
                    if rec.generated >= rec.output_len:
                        rec.finish_s = rec.first_token_s
                        release(rec)
                    else:
                        running.append(rec)
            elif running:
                yield env.timeout(iteration_time("decode", running))
                for rec in list(running):
                    rec.generated += 1
                    if rec.generated >= rec.output_len:
                        rec.finish_s = env.now + records[0].arrival_s
                        running.remove(rec)
                        release(rec)
            elif state["arrived"] < len(records) or waiting:
                if waiting and not running:
                    raise RuntimeError("requests wait but nothing runs")   # pragma: no cover
                state["wake"] = env.event()
                yield state["wake"]
            else:
                return

    env.process(arrivals(env))
    env.process(server(env))
    env.run()
    t0 = records[0].arrival_s if records else 0.0
    for rec in records:
        if rec.start_s is not None:
            rec.start_s += t0
    occupancy = [(t + t0, level) for t, level in occupancy]
    result = RequestSimResult(strategy.describe(), records, occupancy, pool_cap,
                              costs.simulations)
    if any(math.isinf(v) for v in costs.cache.values()):
        result.notes.append("some batch sizes do not fit in memory at the bucket's mean length")
    return result
