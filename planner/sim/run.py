"""Cost a schedule (planner.schedule) and run its unit programs on the simpy machine.

Each op of a unit's program becomes an OpCost (planner.costs, physics floor included):
gemm, attention and memory ops map to their curves; "ffn" is its up (+ gate) GEMM, the
activation and the down GEMM; a collective inside a unit costs the unit's ranks on their
link; a message between units costs its bottleneck end: the bytes one rank sends or
receives (a pool GPU receives every base lane's message; a TP rank sends its own lane's).
"""

from __future__ import annotations

import simpy

from planner.costs import CostModel, OpCost
from planner.model import GATED
from planner.schedule import BLOCKING, COLLECTIVES, COMPUTE, POSTS, Op, Schedule
from planner.sim.engine import Machine, Unit

ROLE = {"base": "base", "stage": "base", "pool": "pool"}    # result / trace roles


def sim_units(layout, units: dict) -> dict:
    """Schedule units (planner.schedule.plan_units) as the machine's, with their nodes."""
    return {name: Unit(name, ROLE[u.role], u.ranks, layout.nodes_of(u.ranks))
            for name, u in units.items()}


class Coster:
    """OpCost of every cost class of a schedule (Schedule.cost_classes), for one profile."""

    def __init__(self, cm: CostModel, schedule: Schedule):
        self.cm, self.schedule = cm, schedule
        self.model = schedule.layout.model
        reps, self.index = schedule.cost_classes
        self.costs = [self._cost(op, unit) for op, unit in reps]

    def program(self, unit: str) -> list:
        """[(op, OpCost)] of the unit's program, in order."""
        return [(op, self.costs[c]) for op, c in zip(self.schedule.programs[unit],
                                                   self.index[unit])]

    def _cost(self, op: Op, unit: str) -> OpCost:
        cm, p = self.cm, dict(op.params)
        if op.kind == "gemm":
            return cm.gemm(op.label, p["tokens"], p["k"], p["n"])
        if op.kind == "attention":
            return self._attention(op.label, p)
        if op.kind == "memory":
            return cm.memory_op(op.label, p["bytes"], p["kind"])
        if op.kind == "ffn":
            return self._ffn(op, p)
        if op.kind == "wait":
            return OpCost(op.label, 0.0, 0.0, "comm")
        units = self.schedule.units
        if op.kind in COLLECTIVES:
            ranks = units[unit].ranks
            payload = op.bytes * (len(ranks) if op.kind == "all_gather" else 1)
            return cm.collective(op.label, op.kind, payload, ranks)
        if op.group:                                   # broadcast root unit -> members
            lanes = len(op.lanes)
            ranks = [units[op.group[0]].ranks[ln] for ln in op.lanes] + [
                r for u in op.group[1:] for r in units[u].ranks]
            return cm.collective(op.label, "broadcast", op.bytes * lanes, ranks)
        src, dst = (unit, op.peer) if op.kind in ("isend", "send") else (op.peer, unit)
        return self._message(op, src, dst)

    def _attention(self, name: str, p: dict) -> OpCost:
        """The block's queries are the last q_len of kv_len positions.  With a sliding
        window W (Mistral) a query at position >= W attends W keys: those form a band
        (non-causal, W keys each); the rest a causal block over the first W keys."""
        cm, w = self.cm, self.model.sliding_window
        b, q, kv, h, kvh, hd, causal = (p[k] for k in ("batch", "q_len", "kv_len", "heads",
                                                      "kv_heads", "head_dim", "causal"))
        if not w or kv <= w:
            return cm.attention(name, b, q, kv, h, kvh, hd, causal)
        band = min(q, kv - w)
        return cm.sum_ops(name, (cm.attention(name, b, q - band, w, h, kvh, hd, causal),
                                 cm.attention(name, b, band, w, h, kvh, hd, False)))

    def _ffn(self, op: Op, p: dict) -> OpCost:
        """Up (+ gate for SwiGLU / GeGLU) GEMM, activation, down GEMM (Megatron column /
        row).  A MoE: the router GEMM, then every expert the tokens reach runs its FFN on
        its share of the tokens x experts_per_token routed (balanced routing: each of
        min(experts, routed) experts reads its weights once)."""
        cm, m = self.cm, self.model
        tokens, f, d = p["tokens"], p["ffn_shard"], p["dtype_bytes"]
        gated = p["activation"] in GATED
        reads = 3 if gated else 2          # read gate + up, write / read, write
        if not m.is_moe:
            return cm.sum_ops(op.label, self._expert(tokens, f, gated, reads, d))
        routed = tokens * m.experts_per_token
        reached = min(m.experts, routed)
        share = -(-routed // reached)
        shared = (self._expert(tokens, m.shared_ffn // (m.ffn // f), gated, reads, d)
                  if m.shared_ffn else ())           # sharded like the experts
        return cm.sum_ops(op.label, (cm.gemm("router", tokens, m.hidden, m.experts),)
                          + self._expert(share, f, gated, reads, d) * reached + shared)

    def _expert(self, tokens: int, f: int, gated: bool, reads: int, d: int) -> tuple:
        cm, m = self.cm, self.model
        return (cm.gemm("ffn_up", tokens, m.hidden, f * (2 if gated else 1)),
                cm.memory_op("activation", reads * tokens * f * d, "activation"),
                cm.gemm("ffn_down", tokens, f, m.hidden))

    def _message(self, op: Op, src: str, dst: str) -> OpCost:
        units = self.schedule.units
        lanes = len(op.lanes)
        per_rank = max(op.bytes * (lanes if len(units[u].ranks) == 1 else 1)
                       for u in (src, dst))
        ends = (units[src].ranks[0], units[dst].ranks[0])
        return self.cm.transfer(op.label, per_rank, ends[:1], ends[1:])


def unit_process(machine: Machine, coster: Coster, schedule: Schedule, unit: str,
                 finishes: dict):
    """Process: one unit's program, op after op.  finishes[mb]: when micro-batch mb's last
    layer ended (its final residual add).  Where no CPU cores are shared, a run of
    consecutive compute ops is one timeout (same times, fewer events).  A unit that had to
    wait for a message pays the profile's wake time (host.wake_s) on its next compute."""
    env = machine.env
    single = len(schedule.units[unit].ranks) == 1
    pending = {}                                   # (label, layer, mb, peer) -> done event
    last = schedule.layout.model.layers - 1
    merge = not machine.cores_per_node
    run = []                                       # pending compute ops (merge mode)
    woken = False                                  # waited for a message since last compute
    for op, cost in coster.program(unit) + [(None, None)]:
        if op is not None and op.kind in COMPUTE:
            if woken and machine.wake_s:          # the rank slept in a wait: refill
                yield env.timeout(machine.wake_s)
                machine.busy[unit] = machine.busy.get(unit, 0.0) + machine.wake_s
            woken = False
            if merge:
                run.append((op, cost))
            else:
                yield from machine.host(unit, 1)
                yield from machine.compute(cost, unit, op.mb, op.layer, op.kind)
                _finished(op, last, env.now, finishes)
            continue
        if run:
            yield from machine.compute_run(run, unit)
            for o, _ in run:
                _finished(o, last, env.now, finishes)
            run = []
        if op is None:
            break
        issued = len(op.lanes) if single and op.lanes else 1
        if machine.host_s or machine.post_s:      # no process per op where there is none
            yield from machine.host(unit, issued, issued if op.kind in POSTS + BLOCKING else 0)
        if op.kind in COLLECTIVES:
            yield from machine.collective(cost, unit, op.mb, op.layer, op.kind)
        elif op.kind == "wait":
            done = pending.pop(op.key + (op.peer,))
            woken = woken or not done.triggered
            yield done
        else:
            sending = op.kind in ("isend", "send") or (op.group and op.group[0] == unit)
            key = op.key + ((op.group[0], "*") if op.group else
                            (unit, op.peer) if sending else (op.peer, unit))
            done = machine.post(key, op.group or (unit, op.peer), unit, cost, op.mb,
                                op.layer, op.kind)
            if op.kind in POSTS:
                pending[op.key + (op.peer,)] = done
            elif op.kind in BLOCKING:
                woken = woken or not done.triggered
                yield done


def _finished(op: Op, last: int, now: float, finishes: dict) -> None:
    if op.label == "residual_ffn" and op.layer == last:
        finishes[op.mb] = max(finishes.get(op.mb, 0.0), now)


def run_schedule(cm: CostModel, schedule: Schedule, record: bool) -> tuple:
    """(machine, makespan, finish time of each micro-batch's last layer) of one pass."""
    env = simpy.Environment()
    cluster = schedule.layout.cluster
    units = sim_units(schedule.layout, schedule.units)
    machine = Machine(env, units, schedule.phase, record,
                      cores_per_node=cluster.cores_per_node,
                      nics_per_node=cluster.nics_per_node,
                      host_s=cm.profile.host.op_overhead_s,
                      post_s=cm.profile.host.post_overhead_s,
                      wake_s=cm.profile.host.wake_s)
    coster = Coster(cm, schedule)
    finishes: dict = {}
    for name in units:
        env.process(unit_process(machine, coster, schedule, name, finishes))
    env.run()
    stuck = [k for k, t in machine.transfers.items() if not t.done.triggered]
    assert not stuck, f"schedule deadlock: transfers never completed: {stuck[:3]}"
    return machine, env.now, [finishes[mb] for mb in sorted(finishes)] or [env.now]


def steady_period(finishes: list) -> float:
    """Seconds per micro-batch once the pipeline is full: over the second half's finishes."""
    k = len(finishes) // 2
    return (finishes[-1] - finishes[-1 - k]) / k if k else 0.0
