"""simulate(): one configuration through prefill and decode on the simpy machine.

TTFT: the prefill of the whole batch (all micro-batches) until every sequence has its first
token.  TPOT: one synchronous decode step of the whole batch at the middle of generation
(context input + output/2).  TPS (paper 4.4: "input and output sequences"):
batch * (input + output) / (TTFT + (output - 1) * TPOT).  decode_tps: batch / TPOT.

Long batches are cut into many micro-batches; the simulator runs the first
SIM_MICROBATCHES of them and extends the finish time by the measured steady-state period
(finish of the last minus finish of the middle one, over the micro-batches between), which
is exact once the pipeline is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calibration.errors import InputError
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.costs import CostModel, check_precision
from planner.layout import Layout, build_layout
from planner.memory import decode_microbatches, memory_check
from planner.model import ModelSpec
from planner.result import SimResult
from planner.schedule import build_schedule, microbatch_rows, plan_units
from planner.sim.run import run_schedule, sim_units, steady_period
from planner.strategy import Strategy
from planner.workload import Workload

PHASES = ("prefill", "decode", "both")
SIM_MICROBATCHES = 8          # micro-batches simulated explicitly per phase
INTERVAL_SAMPLES = 16         # profile draws for prediction intervals
INTERVAL_PERCENTILES = (5, 95)


@dataclass
class PhaseRun:
    seconds: float                                # TTFT (prefill) or TPOT (decode)
    busy: dict = field(default_factory=dict)      # unit -> compute seconds per phase instance
    comm: float = 0.0                             # comm-op seconds per phase instance
    ops: float = 0.0                              # all-op seconds per phase instance
    events: list = field(default_factory=list)


def _prefill(cm: CostModel, layout: Layout, wl: Workload, microbatches: int,
             record: bool) -> PhaseRun:
    rows = microbatch_rows(wl.batch, microbatches)
    simulated = tuple(rows[:SIM_MICROBATCHES])
    machine, ttft, finishes = run_schedule(cm, build_schedule(layout, simulated, wl.input_len),
                                           record)
    scale = 1.0
    if len(simulated) < len(rows):
        ttft += (len(rows) - len(simulated)) * steady_period(finishes)
        scale = len(rows) / len(simulated)
    busy = {u: t * scale for u, t in machine.busy.items()}
    return PhaseRun(ttft, busy, machine.comm_time * scale, machine.op_time * scale,
                    machine.events)


def decode_step(wl: Workload) -> int:
    """The decode step simulated for TPOT: the middle of generation, so its context
    (input + step keys) gives the average TPOT (K/V reads grow linearly with context)."""
    return max(1, wl.output_len // 2)


def _decode(cm: CostModel, layout: Layout, wl: Workload, microbatches: int,
            record: bool) -> PhaseRun:
    """One decode step of the whole batch.  Steps are synchronous, as the executor runs
    them: every sequence's next token is sampled before the next step starts, so a step's
    makespan (pipeline fill and drain included) is the TPOT."""
    rows = tuple(microbatch_rows(wl.batch, microbatches))
    schedule = build_schedule(layout, rows, wl.input_len, decode_step(wl))
    machine, tpot, _ = run_schedule(cm, schedule, record)
    return PhaseRun(tpot, machine.busy, machine.comm_time, machine.op_time, machine.events)


def _run(profile: Profile, layout: Layout, wl: Workload, phase: str, microbatches: int,
         record: bool) -> tuple:
    m = layout.model
    cm = CostModel(profile, layout.cluster, m.dtype_bytes, m.weight_bytes, m.kv_bytes)
    prefill = _prefill(cm, layout, wl, microbatches, record) if phase != "decode" else None
    decode = (_decode(cm, layout, wl, decode_microbatches(layout.strategy, wl.batch,
                                                          wl.input_len),
                      record) if phase != "prefill" else None)
    units = sim_units(layout, plan_units(layout, layout.strategy.pool_size(wl.input_len)))
    return units, prefill, decode


def simulate(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy, workload: Workload,
             phase: str = "both", profile: Profile | None = None, record: bool = True,
             interval_samples: int = INTERVAL_SAMPLES, seed: int = 0) -> SimResult:
    """Predict one configuration.  Raises InputError for an impossible request (e.g. more
    GPUs than the cluster has); returns feasible=False with reasons when it does not fit."""
    if phase not in PHASES:
        raise InputError("phase", f"must be one of {PHASES}, got {phase!r}")
    layout = build_layout(model, cluster, strategy)
    profile = profile or cluster.load_profile()
    check_precision(model.weight_bytes, profile.device)
    capacity = profile.device.hbm_bytes
    microbatches, memory, reasons = memory_check(model, strategy, workload, capacity, phase)
    base = dict(model=model, cluster=cluster, strategy=strategy, workload=workload, phase=phase,
                profile=profile.name, memory=memory, microbatches=microbatches,
                decode_microbatches=decode_microbatches(strategy, workload.batch,
                                                        workload.input_len))
    if reasons:
        return SimResult(feasible=False, infeasible_reasons=tuple(reasons), **base)
    units, prefill, decode = _run(profile, layout, workload, phase, microbatches, record)
    intervals = {}
    if interval_samples and profile.has_uncertainty:
        points = {"ttft": prefill.seconds if prefill else None,
                  "tpot": decode.seconds if decode else None}
        intervals = _intervals(profile, layout, workload, phase, microbatches,
                               interval_samples, seed, points)
    return SimResult(feasible=True, units=units, prefill=prefill, decode=decode,
                     ttft_interval=intervals.get("ttft"), tpot_interval=intervals.get("tpot"),
                     **base)


def _intervals(profile: Profile, layout: Layout, wl: Workload, phase: str, microbatches: int,
               samples: int, seed: int, points: dict) -> dict:
    """Percentile interval of TTFT / TPOT over draws of the profile's fitted parameters
    (bootstrap refits where the profile has them), widened to hold the point prediction
    if a skewed spread left it outside: the interval is never one the point contradicts."""
    rng = np.random.default_rng(seed)
    ttft, tpot = [], []
    for _ in range(samples):
        _, prefill, decode = _run(profile.sample(rng), layout, wl, phase, microbatches, False)
        if prefill:
            ttft.append(prefill.seconds)
        if decode:
            tpot.append(decode.seconds)
    out = {}
    for name, values in (("ttft", ttft), ("tpot", tpot)):
        if values:
            low, high = np.percentile(values, INTERVAL_PERCENTILES)
            out[name] = (min(float(low), points[name]), max(float(high), points[name]))
    return out
