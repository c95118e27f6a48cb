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
import simpy

from calibration.errors import InputError
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.costs import CostModel
from planner.layout import Layout, build_layout
from planner.memory import memory_check
from planner.model import ModelSpec
from planner.result import SimResult
from planner.sim.engine import Machine
from planner.sim.fapool import FAPoolProgram, deal, fapool_units
from planner.sim.static import StaticProgram, static_units
from planner.strategy import StaticStrategy, Strategy
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


def _program(cm: CostModel, layout: Layout, pool: int):
    if isinstance(layout.strategy, StaticStrategy):
        return StaticProgram(cm, layout), static_units(layout)
    return FAPoolProgram(cm, layout, pool), fapool_units(layout, pool)


def _run_phase(program, units, phase: str, sizes: list, q_len: int, kv_len: int,
               record: bool) -> tuple:
    """(machine, finish time of each micro-batch) of one pass of sizes[i]-sequence
    micro-batches with q_len new tokens against kv_len keys."""
    env = simpy.Environment()
    machine = Machine(env, units, phase, record,
                      cores_per_node=program.layout.cluster.cores_per_node,
                      host_s=program.cm.profile.host.op_overhead_s)
    done = []
    for mb, seqs in enumerate(sizes):
        env.process(program.microbatch(machine, mb, seqs, q_len, kv_len, done))
    env.run()
    return machine, done


def _prefill(program, units, wl: Workload, microbatches: int, record: bool) -> PhaseRun:
    sizes = deal(wl.batch, microbatches)
    simulated = sizes[:SIM_MICROBATCHES]
    machine, done = _run_phase(program, units, "prefill", simulated, wl.input_len,
                               wl.input_len, record)
    finishes = sorted(done)
    ttft = finishes[-1]
    scale = 1.0
    if len(simulated) < len(sizes):
        k = len(finishes) // 2      # the second half of the run is past the pipeline fill
        period = (finishes[-1] - finishes[-1 - k]) / k
        ttft += (len(sizes) - len(simulated)) * period
        scale = len(sizes) / len(simulated)
    busy = {u: t * scale for u, t in machine.busy.items()}
    return PhaseRun(ttft, busy, machine.comm_time * scale, machine.op_time * scale,
                    machine.events)


def _decode(program, units, wl: Workload, microbatches: int, record: bool) -> PhaseRun:
    """One decode step of the whole batch.  Steps are synchronous, as the executor runs
    them: every sequence's next token is sampled before the next step starts, so a step's
    makespan (pipeline fill and drain included) is the TPOT."""
    sizes = deal(wl.batch, microbatches)
    machine, done = _run_phase(program, units, "decode", sizes, 1, wl.decode_context, record)
    return PhaseRun(max(done), machine.busy, machine.comm_time, machine.op_time,
                    machine.events)


def decode_microbatches(strategy: Strategy, batch: int) -> int:
    """The strategy's micro-batch count (the executor uses it in both phases), else enough
    to keep every pipeline stage (or base and pool) busy."""
    if strategy.microbatches is not None:
        return min(strategy.microbatches, batch)
    stages = strategy.pp if isinstance(strategy, StaticStrategy) else 2
    return max(1, min(max(stages, 2), batch))


def _run(profile: Profile, layout: Layout, wl: Workload, phase: str, microbatches: int,
         record: bool) -> tuple:
    cm = CostModel(profile, layout.cluster, layout.model.dtype_bytes)
    program, units = _program(cm, layout, layout.strategy.pool_size(wl.input_len))
    prefill = _prefill(program, units, wl, microbatches, record) if phase != "decode" else None
    decode = (_decode(program, units, wl, decode_microbatches(layout.strategy, wl.batch),
                      record) if phase != "prefill" else None)
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
    capacity = profile.device.hbm_bytes
    microbatches, memory, reasons = memory_check(model, strategy, workload, capacity)
    base = dict(model=model, cluster=cluster, strategy=strategy, workload=workload, phase=phase,
                profile=profile.name, memory=memory, microbatches=microbatches,
                decode_microbatches=decode_microbatches(strategy, workload.batch))
    if reasons:
        return SimResult(feasible=False, infeasible_reasons=tuple(reasons), **base)
    units, prefill, decode = _run(profile, layout, workload, phase, microbatches, record)
    intervals = {}
    if interval_samples and profile.has_uncertainty:
        intervals = _intervals(profile, layout, workload, phase, microbatches,
                               interval_samples, seed)
    return SimResult(feasible=True, units=units, prefill=prefill, decode=decode,
                     ttft_interval=intervals.get("ttft"), tpot_interval=intervals.get("tpot"),
                     **base)


def _intervals(profile: Profile, layout: Layout, wl: Workload, phase: str, microbatches: int,
               samples: int, seed: int) -> dict:
    """Percentile interval of TTFT / TPOT over draws of the profile's fitted parameters."""
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
            out[name] = (float(low), float(high))
    return out
