"""simpy machinery: compute units and links as resources, ops as timed holds.

A *unit* is what executes in lockstep: a TP group (all its ranks run the same kernel at the
same time) or a single pool GPU.  Each unit has a compute stream and an NVLink port
("nvl:<unit>"); each node has its NICs ("nic:<node>").  An op holds the resources it uses
for its duration (a link is a resource plus a delay, as in SimPy's examples), so concurrent
transfers on one port or NIC queue behind each other and overlap only where hardware can.
Resources are always requested in sorted order, so ops holding several never deadlock, and
waiting ops are served earliest micro-batch first (the in-order schedule of GPipe-style
inference), so micro-batches finish one after another.
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
    port: str = ""     # its NVLink port resource; pool GPUs share one ("nvl:pool"), as
                       # every transfer to or from the pool involves all of them at once

    @property
    def link(self) -> str:
        return self.port or f"nvl:{self.name}"


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


@dataclass
class Machine:
    env: simpy.Environment
    units: dict                          # name -> Unit
    phase: str = "prefill"
    record: bool = True
    events: list = field(default_factory=list)
    busy: dict = field(default_factory=dict)     # unit -> compute seconds
    comm_time: float = 0.0                       # seconds of comm ops
    op_time: float = 0.0                         # seconds of all ops
    resources: dict = field(default_factory=dict)
    cores_per_node: int = 0      # >0: compute ops of a node share this many CPU cores
    cores: dict = field(default_factory=dict)    # node -> simpy.Container of free cores
    host_s: float = 0.0          # host time per op on its issuing unit (profile.host)

    def __post_init__(self):
        if self.cores_per_node:
            for node in sorted({n for u in self.units.values() for n in u.nodes}):
                self.cores[node] = simpy.Container(self.env, self.cores_per_node,
                                                   init=self.cores_per_node)
        for unit in self.units.values():
            self.resources[unit.name] = simpy.PriorityResource(self.env, capacity=1)
            self.resources.setdefault(unit.link, simpy.PriorityResource(self.env, capacity=1))
            for node in unit.nodes:
                self.resources.setdefault(f"nic:{node}",
                                          simpy.PriorityResource(self.env, capacity=1))

    def link_resources(self, unit_names) -> list:
        """NVLink ports of the units, plus the NICs of their nodes if they span nodes."""
        names = sorted({self.units[u].link for u in unit_names})
        nodes = sorted({n for u in unit_names for n in self.units[u].nodes})
        if len(nodes) > 1:
            names += [f"nic:{n}" for n in nodes]
        return names

    def run(self, op: OpCost, unit_names, mb: int = 0, layer: int = -1):
        """Process: hold the op's resources for op.seconds (compute: the units' streams;
        comm: their links).  Queued requests are served earliest micro-batch first.
        With host time (host_s > 0) a compute op holds its streams host_s longer, and a
        transfer first holds its issuer's stream (unit_names[0]) for host_s to post it."""
        if op.seconds <= 0:
            return
        unit_names = tuple(unit_names)
        if self.host_s > 0 and op.kind == "comm":
            yield from self._host(unit_names[0], mb)
        held = unit_names if op.kind == "compute" else self.link_resources(unit_names)
        requests = []
        for name in sorted(held):
            req = self.resources[name].request(priority=mb)
            yield req
            requests.append((name, req))
        cores = self._cores(unit_names) if op.kind == "compute" and self.cores else {}
        for node, count in cores.items():    # one core per rank, atomically per node
            yield self.cores[node].get(count)
        start = self.env.now
        yield self.env.timeout(op.seconds + (self.host_s if op.kind == "compute" else 0.0))
        for node, count in cores.items():
            yield self.cores[node].put(count)
        for name, req in requests:
            self.resources[name].release(req)
        self._account(op, unit_names, start, mb, layer)

    def _host(self, unit: str, mb: int):
        """Process: the issuing unit's host time for posting a transfer (its stream held)."""
        with self.resources[unit].request(priority=mb) as req:
            yield req
            yield self.env.timeout(self.host_s)
        self.busy[unit] = self.busy.get(unit, 0.0) + self.host_s

    def _cores(self, unit_names) -> dict:
        """node -> cores a compute op on these units occupies (one per rank)."""
        need = {}
        for u in unit_names:
            unit = self.units[u]
            per_node = -(-len(unit.ranks) // len(unit.nodes))   # ranks are packed by node
            for node in unit.nodes:
                need[node] = need.get(node, 0) + per_node
        return {n: min(c, self.cores_per_node) for n, c in sorted(need.items())}

    def run_sequence(self, ops, unit_names, mb: int = 0, layer: int = -1):
        """Process: ops one after the other on the same units."""
        for op in ops:
            yield from self.run(op, unit_names, mb, layer)

    def lock(self, name: str) -> simpy.PriorityResource:
        """A named one-at-a-time section (e.g. a pool serving one request at a time),
        created on first use.  Held only between ops, never while waiting for one, so it
        cannot deadlock with the op resources."""
        if name not in self.resources:
            self.resources[name] = simpy.PriorityResource(self.env, capacity=1)
        return self.resources[name]

    def _account(self, op: OpCost, unit_names: tuple, start: float, mb: int, layer: int):
        self.op_time += op.seconds
        if op.kind == "comm":
            self.comm_time += op.seconds
        else:
            for u in unit_names:   # the op and its host time (Machine.host_s)
                self.busy[u] = self.busy.get(u, 0.0) + self.env.now - start
        if self.record:
            self.events.append(Event(op.name, op.kind, unit_names, start, self.env.now, mb,
                                     layer, self.phase))
