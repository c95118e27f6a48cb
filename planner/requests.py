"""Request-level simulation: a workload's requests arrive, are routed, queue, are batched
and served.

Replicas (planner.serving): each arriving request goes to one replica by the plan's router
(least outstanding tokens); each replica runs its own server process (simpy) that loops
over iterations, as an iteration-level scheduler does (Orca, OSDI '22; vLLM): it admits
waiting requests (first come, first served; a request that cannot start now is skipped, so
short requests pass a long one waiting for the pool) up to the running-batch limit
(serving.max_batch), runs the prefill of the newly admitted ones, else decode steps of
everything running.  Decode steps between two events (a request finishing, the step
boundary after an arrival) have the same batch and so the same time; they are taken in
one jump, so a simulation costs O(requests) events, not O(tokens).

Resource manager (paper 1.3), per replica (each owns its pool): requests are grouped by
length bucket (planner.workloads).  A bucket at or above the threshold needs a pool of
pool_size(longest input) GPUs; the first request of the bucket takes them from the
replica's pool (a simpy Container of max_pool GPUs), later ones of the same bucket join
that lease, and the GPUs go back when its last request ends.  When the pool lacks the GPUs
the request waits.  Requests of several buckets (several leases) are in flight together.

Costs (StepCosts) come from planner.simulate on equal-length batches: an iteration runs
each bucket's requests as one micro-batch after another (the simulator's model of a
batch), so its time is the sum over buckets of the simulated prefill (TTFT) or decode step
(TPOT) of that many sequences of the bucket's mean length.  Memory: a bucket admits at
most the batch that fits at its longest input (planner.memory.fit_batch).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from calibration.errors import require
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.memory import fit_batch
from planner.model import ModelSpec
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, Strategy
from planner.serving import Serving
from planner.sweep import canonical
from planner.workload import Workload
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
    """Simulated time of one prefill / decode iteration of n requests of a bucket, shared by
    every request simulation of one workload's buckets (the search's replicas, batch limits
    and rates reuse it).

    A step is simulated by planner.simulate on n sequences of the bucket's mean length with
    the stand-in strategy of planner.sweep.canonical: static TP x PP, or FA Pool's base TP
    with the pool its longest input leases (each step's micro-batch counts are the
    simulator's default for that batch).  Keys are the search's simulation keys
    (kind, a, b, bucket, decode_kv, n); n is simulated on a power-of-two grid and
    interpolated linearly between."""

    def __init__(self, model, cluster, profile, buckets):
        self.model, self.cluster, self.profile, self.buckets = model, cluster, profile, buckets
        self.steps: dict = {}             # key -> (prefill s, decode s); inf: does not fit
        self.caps: dict = {}              # (kind, a, b, bucket, kv, max_batch) -> batch cap
        self.simulations = 0

    def stand_in(self, strategy: Strategy, i: int) -> tuple:
        """(kind, a, b, bucket, decode_kv) of strategy on bucket i."""
        b = self.buckets[i]
        if isinstance(strategy, FAPoolStrategy):
            return ("fapool", strategy.base_tp, strategy.pool_size(b.max_input), i,
                    strategy.decode_kv)
        return ("static", strategy.tp, strategy.pp, i, "-")

    def cap(self, stand: tuple, max_batch: int) -> int:
        """Largest batch <= max_batch that fits in memory at the bucket's longest input."""
        key = (*stand, max_batch)
        if key not in self.caps:
            kind, a, b, i, kv = stand
            bucket = self.buckets[i]
            self.caps[key] = fit_batch(self.model, canonical(kind, a, b, bucket.max_input, kv),
                                       Workload(max_batch, bucket.max_input,
                                                bucket.output_len),
                                       self.profile.device.hbm_bytes)[0]
        return self.caps[key]

    def grid(self, n: int, cap: int) -> tuple:
        """The simulated batch sizes around n (lo <= n <= hi) for a bucket capped at cap."""
        lo = 2 ** int(math.floor(math.log2(n)))
        return lo, max(n, min(lo * 2, cap))

    def add(self, key: tuple, summary: dict) -> None:
        """Store a planner.sweep.sim_summary of key (computed elsewhere, e.g. in a pool)."""
        self.steps[key] = ((summary["ttft_s"], summary["tpot_s"]) if summary["feasible"]
                           else (math.inf, math.inf))

    def _at(self, key: tuple) -> tuple:
        if key not in self.steps:
            kind, a, b, i, kv, n = key
            bucket = self.buckets[i]
            r = simulate(self.model, self.cluster, canonical(kind, a, b, bucket.input_len, kv),
                         Workload(n, bucket.input_len, bucket.output_len),
                         profile=self.profile, record=False, interval_samples=0)
            self.simulations += 1
            self.steps[key] = (r.ttft_s, r.tpot_s) if r.feasible else (math.inf, math.inf)
        return self.steps[key]

    def time(self, phase: str, stand: tuple, n: int, cap: int) -> float:
        """Seconds of one prefill (TTFT) or decode step (TPOT) of n requests."""
        if n <= 0:
            return 0.0
        k = 0 if phase == "prefill" else 1
        lo, hi = self.grid(n, cap)
        t_lo = self._at((*stand, lo))[k]
        if lo == n:
            return t_lo
        t_hi = self._at((*stand, hi))[k]
        return t_lo + (t_hi - t_lo) * (n - lo) / (hi - lo)


@dataclass
class RequestSimResult:
    strategy: str
    records: list
    occupancy: list                         # [(t_s, pool GPUs in use, all replicas)]
    pool_capacity: int                      # pool GPUs of all replicas together
    serving: Serving = field(default_factory=Serving)
    simulations: int = 0
    notes: list = field(default_factory=list)
    peak_batch: int = 0                     # most requests in flight on one replica
    peak_per_bucket: list = field(default_factory=list)   # most of a bucket in an iteration
    caps: list = field(default_factory=list)              # per-bucket admission caps used

    def same_under(self, costs: "StepCosts", stands: list, max_batch: int) -> bool:
        """Whether a running-batch limit of max_batch (<= this one's) gives exactly this
        simulation: the limit never bound (peak_batch <= it), no bucket's cap bound, and
        every step time it used is interpolated between the same simulated batch sizes."""
        if self.peak_batch > max_batch:
            return False
        for stand, peak, cap in zip(stands, self.peak_per_bucket, self.caps):
            new = costs.cap(stand, max_batch)
            if peak and new != cap and (peak > new or 2 * 2 ** int(math.log2(max(peak, 1))) > new):
                return False
        return True

    def _done(self):
        return [r for r in self.records if r.finish_s is not None]

    def summary(self) -> dict:
        """Request-level figures: p50/p90/p99 and mean of TTFT, TPOT and queue delay (ms),
        throughput (requests/s, tokens/s over the makespan), pool occupancy."""
        done = self._done()
        out = {"strategy": self.strategy, **self.serving.to_dict(),
               "requests": len(self.records), "completed": len(done),
               "rejected": sum(bool(r.rejected) for r in self.records),
               "pool_capacity": self.pool_capacity}
        if not done:
            return out
        start = min(r.arrival_s for r in self.records)
        end = max(r.finish_s for r in done)
        span = max(end - start, 1e-12)
        series = {"ttft": [r.ttft_s for r in done],
                  "tpot": [r.tpot_s for r in done if r.tpot_s is not None],
                  "queue": [r.start_s - r.arrival_s for r in done]}
        for name, vals in series.items():
            if vals:
                for q in PERCENTILES:
                    out[f"{name}_p{q}_ms"] = round(float(np.percentile(vals, q)) * 1e3, 4)
                out[f"{name}_mean_ms"] = round(float(np.mean(vals)) * 1e3, 4)
        out.update(
            makespan_s=round(span, 6),
            throughput_rps=round(len(done) / span, 6),
            throughput_tps=round(sum(r.input_len + r.output_len for r in done) / span, 3),
            output_tps=round(sum(r.output_len for r in done) / span, 3),
            pool_occupancy_mean=round(self.mean_occupancy(end), 4) if self.pool_capacity else 0.0,
            pool_requests=sum(1 for r in done if r.pool_gpus),
            # after the last arrival: how long until all is served, and the longest any
            # request took once admitted (a plan that keeps up drains in about that long)
            drain_s=round(end - max(r.arrival_s for r in self.records), 6),
            service_max_s=round(max(r.finish_s - r.start_s for r in done), 6))
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


class _Replica:
    """One copy of the layout: its queue, its running batch, its own pool."""

    def __init__(self, env, index: int, pool_cap: int):
        self.index = index
        self.pool = simpy.Container(env, capacity=max(pool_cap, 1), init=max(pool_cap, 1))
        self.pool_cap = pool_cap
        self.waiting: deque = deque()
        self.running: list = []
        self.counts: dict = {}            # bucket -> requests running (decoding)
        self.leases: dict = {}
        self.outstanding = 0              # tokens of routed, unfinished requests
        self.wake = env.event()


def simulate_requests(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy,
                      workload: RequestWorkload, serving: Serving | None = None,
                      profile: Profile | None = None,
                      costs: StepCosts | None = None) -> RequestSimResult:
    """Serve every request of the workload; see the module docstring for the model.
    costs: a StepCosts of this workload's buckets to share between calls."""
    serving = serving or Serving()
    profile = profile or cluster.load_profile()
    buckets = workload.buckets()
    costs = costs or StepCosts(model, cluster, profile, buckets)
    require(costs.buckets == buckets, "costs", "StepCosts of another workload's buckets")
    sims_before = costs.simulations
    edges = [(b.lo, b.hi) for b in buckets]
    fapool = isinstance(strategy, FAPoolStrategy)
    pool_cap = strategy.max_pool_size if fapool else 0
    stands = [costs.stand_in(strategy, i) for i in range(len(buckets))]
    pools = [st[2] if fapool else 0 for st in stands]
    caps = [costs.cap(st, serving.max_batch) for st in stands]
    records = []
    for idx, r in enumerate(workload.requests):
        i = next(k for k, (lo, hi) in enumerate(edges) if lo <= r.input_len < hi)
        rec = RequestRecord(idx, r.arrival_s, r.input_len, r.output_len, i, pools[i])
        if caps[i] == 0:
            rec.rejected = "does not fit in memory even alone"
        records.append(rec)

    env = simpy.Environment()
    replicas = [_Replica(env, k, pool_cap) for k in range(serving.replicas)]
    t0 = records[0].arrival_s
    arrival_times = [rec.arrival_s - t0 for rec in records]
    occupancy = [(0.0, 0)]
    state = {"arrived": 0, "peak": 0}
    peaks = [0] * len(buckets)            # most requests of a bucket in one iteration

    def pool_level():
        return sum(rep.pool_cap - rep.pool.level for rep in replicas)

    def route(rec) -> _Replica:
        return min(replicas, key=lambda rep: (rep.outstanding, rep.index))

    def arrivals(env):
        for rec, at in zip(records, arrival_times):
            yield env.timeout(max(0.0, at - env.now))
            state["arrived"] += 1
            if rec.rejected:
                continue
            rep = route(rec)
            rep.waiting.append(rec)
            rep.outstanding += rec.input_len + rec.output_len
            if not rep.wake.triggered:
                rep.wake.succeed()

    def admit(rep):
        """Waiting requests in arrival order into the running batch until it is full; one
        whose bucket is at its cap, or whose pool is busy, keeps its place in the queue.
        Only the requests looked at are touched (a long queue is not copied per step)."""
        new, passed = [], []
        room = serving.max_batch - len(rep.running)
        per_bucket = dict(rep.counts)
        while rep.waiting and len(new) < room:
            rec = rep.waiting.popleft()
            i = rec.bucket
            if per_bucket.get(i, 0) >= caps[i]:
                passed.append(rec)
                continue
            if rec.pool_gpus:
                lease = rep.leases.get(i)
                if lease is None:
                    if rep.pool.level < rec.pool_gpus:
                        passed.append(rec)     # the pool is busy: wait for GPUs to return
                        continue
                    rep.pool.get(rec.pool_gpus)
                    rep.leases[i] = lease = _Lease(rec.pool_gpus)
                    occupancy.append((env.now, pool_level()))
                lease.members += 1
            rec.start_s = env.now
            per_bucket[i] = per_bucket.get(i, 0) + 1
            new.append(rec)
        rep.waiting.extendleft(reversed(passed))
        return new

    def finish(rep, rec):
        rec.finish_s = env.now
        rep.outstanding -= rec.input_len + rec.output_len
        lease = rep.leases.get(rec.bucket)
        if rec.pool_gpus and lease is not None:
            lease.members -= 1
            if lease.members == 0:
                del rep.leases[rec.bucket]
                rep.pool.put(lease.gpus)
                occupancy.append((env.now, pool_level()))

    memo: dict = {}                       # (phase, ((bucket, n), ...)) -> seconds

    def iteration_time(phase, counts: dict):
        """One iteration over counts {bucket: requests}: the buckets one after another."""
        key = (phase, tuple(sorted(counts.items())))
        if key not in memo:
            for i, n in counts.items():
                peaks[i] = max(peaks[i], n)
            memo[key] = sum(costs.time(phase, stands[i], n, caps[i]) for i, n in key[1])
        return memo[key]

    def tally(recs) -> dict:
        counts: dict = {}
        for rec in recs:
            counts[rec.bucket] = counts.get(rec.bucket, 0) + 1
        return counts

    def decode_steps(rep, step: float) -> int:
        """Decode steps until the next event that can change the running batch: a request
        finishing, or the first step boundary at or after the next arrival (admission
        happens between steps).  Jumping them at once gives the same times as stepping."""
        k = min(rec.output_len - rec.generated for rec in rep.running)
        if state["arrived"] < len(records) and step > 0:
            gap = arrival_times[state["arrived"]] - env.now
            k = min(k, max(1, math.ceil(gap / step)))
        return max(k, 1)

    def server(env, rep):
        while True:
            new = admit(rep)
            state["peak"] = max(state["peak"], len(rep.running) + len(new))
            if new:
                yield env.timeout(iteration_time("prefill", tally(new)))
                for rec in new:
                    rec.first_token_s = env.now
                    rec.generated = 1
                    if rec.generated >= rec.output_len:
                        finish(rep, rec)
                    else:
                        rep.running.append(rec)
                        rep.counts[rec.bucket] = rep.counts.get(rec.bucket, 0) + 1
            elif rep.running:
                step = iteration_time("decode", rep.counts)
                k = decode_steps(rep, step)
                yield env.timeout(k * step)
                still = []
                for rec in rep.running:
                    rec.generated += k
                    if rec.generated >= rec.output_len:
                        rep.counts[rec.bucket] -= 1
                        if not rep.counts[rec.bucket]:
                            del rep.counts[rec.bucket]
                        finish(rep, rec)
                    else:
                        still.append(rec)
                rep.running = still
            elif state["arrived"] < len(records) or rep.waiting:
                if rep.waiting and not rep.running:
                    raise RuntimeError("requests wait but nothing runs")   # pragma: no cover
                rep.wake = env.event()
                yield rep.wake
            else:
                return

    env.process(arrivals(env))
    for rep in replicas:
        env.process(server(env, rep))
    env.run()
    for rec in records:
        for name in ("start_s", "first_token_s", "finish_s"):
            if getattr(rec, name) is not None:
                setattr(rec, name, getattr(rec, name) + t0)
    occupancy = [(t + t0, level) for t, level in occupancy]
    result = RequestSimResult(strategy.describe(), records, occupancy,
                              pool_cap * serving.replicas, serving,
                              costs.simulations - sims_before, peak_batch=state["peak"],
                              peak_per_bucket=peaks, caps=caps)
    if any(math.isinf(v) for step in costs.steps.values() for v in step):
        result.notes.append("some batch sizes do not fit in memory at the bucket's mean length")
    return result
