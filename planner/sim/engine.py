"""simpy machinery: units run their schedule programs; links and NICs are resources.

A *unit* (planner.schedule) runs in lockstep: a TP group or one pool GPU.  Each unit runs its
program as one simpy process, op after op, as a rank of the executor does: compute holds
the unit for its time (and, on a CPU cluster, one core per rank); a posted transfer
(isend / irecv / ibroadcast) returns at once and is completed by a later wait; a blocking
one waits for its transfer.  A transfer is ready when every unit it involves has posted its
side (a rendezvous, as NCCL's); it then takes one lane of each endpoint's port (a unit has
as many lanes as ranks) and, between nodes, one NIC of each node it crosses, for its time.
A collective inside a unit takes all of the unit's lanes (and its nodes' NICs).  On a CPU
cluster (cores_per_node > 0) the processes move the bytes themselves (gloo over loopback:
both ends copy through the kernel), so a transfer also holds a core at each end and a
collective one per rank, beside compute: 4 ranks on 2 cores contend for comm as well.  Lanes are
reserved first come, first served in order of readiness: a transfer starts when a lane of
every resource it needs is free (`Lanes.reserve`), so it costs two simpy events however
many resources it holds, and transfers never deadlock one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from planner.costs import OpCost


@dataclass(frozen=True)
class Unit:
    name: str
    role: str          # "base" (TP group / pipeline stage) or "pool"
    ranks: tuple
    nodes: tuple


@dataclass
class Event:
    """One op as it ran: unit(s), start, end (seconds of simulated time)."""

    name: str
    kind: str          # "compute" | "comm"
    units: tuple
    start: float
    end: float
    microbatch: int
    layer: int
    phase: str
    op: str = ""       # the schedule's op kind (gemm, attention, memory, ffn, isend, ...)


class Lanes:
    """Free-from times of a resource's parallel lanes (NVLink ports, NICs)."""

    def __init__(self, count: int):
        self.free = [0.0] * count

    def ready(self, count: int) -> float:
        """When `count` lanes are free at once."""
        return min(self.free) if count == 1 else sorted(self.free)[count - 1]

    def take(self, count: int, start: float, end: float) -> None:
        self.free.sort()
        for i in range(count):
            assert self.free[i] <= start + 1e-15
            self.free[i] = end


def reserve(lanes: dict, need: dict, now: float, seconds: float) -> float:
    """Reserve need[name] lanes of each resource from the earliest time all are free
    (not before now) for `seconds`; returns the start."""
    start = max([now] + [lanes[n].ready(c) for n, c in need.items()])
    for n, c in need.items():
        lanes[n].take(c, start, start + seconds)
    return start


@dataclass
class Transfer:
    """One message (or cross-unit broadcast) between units, as both ends post it."""
    parties: frozenset                   # units that must post before it starts
    done: simpy.Event
    posted: set = field(default_factory=set)


@dataclass
class Machine:
    env: simpy.Environment
    units: dict                          # name -> Unit
    phase: str = "prefill"
    record: bool = True
    cores_per_node: int = 0              # >0: compute ops of a node share this many cores
    nics_per_node: int = 1
    host_s: float = 0.0                  # host time per issued op (profile.host)
    post_s: float = 0.0                  # and per message posted or entered
    wake_s: float = 0.0                  # on the first compute after waiting for a message
    events: list = field(default_factory=list)
    busy: dict = field(default_factory=dict)     # unit -> compute (+ host) seconds
    comm_time: float = 0.0                       # seconds of transfers and collectives
    op_time: float = 0.0                         # seconds of all ops
    pools: dict = field(default_factory=dict)    # "cores:<node>" -> simpy.Container
    lanes: dict = field(default_factory=dict)    # "port:<unit>" / "nic:<node>" -> Lanes
    transfers: dict = field(default_factory=dict)
    link_needs: dict = field(default_factory=dict)   # (units, lanes each) -> _links()

    def __post_init__(self):
        for unit in self.units.values():
            self.lanes[f"port:{unit.name}"] = Lanes(len(unit.ranks))
            for node in unit.nodes:
                self.lanes.setdefault(f"nic:{node}", Lanes(self.nics_per_node))
                if self.cores_per_node:
                    self.pools.setdefault(f"cores:{node}", simpy.Container(
                        self.env, self.cores_per_node, init=self.cores_per_node))

    # ------------------------------------------------------------ resources
    def _hold(self, need: dict, seconds: float):
        """Process: take `need` cores (resource -> count) in sorted order, hold, give
        back (CPU clusters: compute ops of a node share its cores)."""
        for name in sorted(need):
            yield self.pools[name].get(need[name])
        yield self.env.timeout(seconds)
        for name in sorted(need):
            yield self.pools[name].put(need[name])

    def _cores(self, unit: Unit) -> dict:
        if not self.cores_per_node:
            return {}
        per_node = -(-len(unit.ranks) // len(unit.nodes))     # ranks are packed by node
        return {f"cores:{n}": min(per_node, self.cores_per_node) for n in unit.nodes}

    def _links(self, unit_names: tuple, lanes_each: int = 1) -> dict:
        """One lane of each unit's port (or lanes_each), plus NICs if nodes differ (the
        same units always need the same: kept per machine)."""
        key = (unit_names, lanes_each)
        need = self.link_needs.get(key)
        if need is None:
            need = {f"port:{u}": min(lanes_each, len(self.units[u].ranks))
                    for u in unit_names}
            nodes = sorted({n for u in unit_names for n in self.units[u].nodes})
            if len(nodes) > 1:
                for n in nodes:
                    need[f"nic:{n}"] = min(lanes_each, self.nics_per_node)
            self.link_needs[key] = need
        return need

    # ------------------------------------------------------------ ops
    def host(self, unit: str, ops: int, posts: int = 0):
        """Process: host time of `ops` issued operations on the unit (Python, dispatch),
        `posts` of which post or enter a message."""
        seconds = self.host_s * ops + self.post_s * posts
        if seconds > 0:
            yield self.env.timeout(seconds)
            self.busy[unit] = self.busy.get(unit, 0.0) + seconds

    def compute(self, cost: OpCost, unit: str, mb: int, layer: int, op_kind: str = ""):
        """Process: a compute op on the unit (its cores held on a CPU cluster)."""
        start = self.env.now
        yield from self._hold(self._cores(self.units[unit]), cost.seconds)
        self.busy[unit] = self.busy.get(unit, 0.0) + cost.seconds
        self._account(cost, (unit,), start, mb, layer, op_kind=op_kind)

    def compute_run(self, run: list, unit: str):
        """Process: consecutive compute ops [(op, OpCost)] of a unit with no cores to
        share, as one hold (each op's host time included); events recorded per op."""
        start = self.env.now
        total = sum(c.seconds for _, c in run) + self.host_s * len(run)
        yield self.env.timeout(total)
        self.busy[unit] = self.busy.get(unit, 0.0) + total
        at = start
        for op, cost in run:
            at += self.host_s
            self.op_time += cost.seconds
            if self.record and cost.seconds > 0:
                self.events.append(Event(cost.name, "compute", (unit,), at, at + cost.seconds,
                                         op.mb, op.layer, self.phase, op.kind))
            at += cost.seconds

    def collective(self, cost: OpCost, unit: str, mb: int, layer: int, op_kind: str = ""):
        """Process: a collective among the unit's own ranks (all its lanes taken)."""
        u = self.units[unit]
        start = reserve(self.lanes, self._links((unit,), len(u.ranks)), self.env.now,
                        cost.seconds)
        if self.cores_per_node:         # a CPU rank moves the bytes itself: hold its cores
            yield self.env.timeout(start - self.env.now)
            start = self.env.now
            yield from self._hold(self._cores(u), cost.seconds)
        else:
            yield self.env.timeout(start + cost.seconds - self.env.now)
        self._account(cost, (unit,), start, mb, layer, op_kind=op_kind)

    def post(self, key: tuple, parties, me: str, cost: OpCost, mb: int, layer: int,
             op_kind: str = ""):
        """Post this unit's side of transfer `key`; returns its done event.  The transfer
        runs once every party has posted."""
        t = self.transfers.get(key)
        if t is None:
            t = self.transfers[key] = Transfer(frozenset(parties), self.env.event())
        t.posted.add(me)
        if t.posted == t.parties:            # ready: reserve its lanes, done at its end
            units = tuple(sorted(t.parties))
            start = reserve(self.lanes, self._links(units), self.env.now, cost.seconds)
            if self.cores_per_node:     # CPU ranks copy the bytes: one core per party
                self.env.process(self._cpu_transfer(t, cost, units, start, mb, layer,
                                                    op_kind))
                return t.done
            self.env.timeout(start + cost.seconds - self.env.now).callbacks.append(
                lambda _: t.done.succeed())
            self._account(cost, units, start, mb, layer, start + cost.seconds, op_kind)
        return t.done

    def _cpu_transfer(self, t, cost: OpCost, units: tuple, start: float, mb: int,
                      layer: int, op_kind: str):
        """Process: a transfer between CPU ranks, a core of every party's node held (gloo
        on loopback: the sender's and the receiver's CPU copy the bytes)."""
        yield self.env.timeout(start - self.env.now)
        need: dict = {}
        for u in units:
            node = self.units[u].nodes[0]
            need[f"cores:{node}"] = min(need.get(f"cores:{node}", 0) + 1, self.cores_per_node)
        began = self.env.now
        yield from self._hold(need, cost.seconds)
        self._account(cost, units, began, mb, layer, op_kind=op_kind)
        t.done.succeed()

    def _account(self, cost: OpCost, units: tuple, start: float, mb: int, layer: int,
                 end: float | None = None, op_kind: str = ""):
        self.op_time += cost.seconds
        if cost.kind == "comm":
            self.comm_time += cost.seconds
        if self.record and cost.seconds > 0:
            self.events.append(Event(cost.name, cost.kind, units, start,
                                     self.env.now if end is None else end, mb, layer,
                                     self.phase, op_kind))
