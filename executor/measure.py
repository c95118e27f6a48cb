"""Timing of operators and steps, and the heartbeat the launcher's watchdog reads.

Timer: perf_counter on CPU; CUDA events on GPU (resolved once at the end, one sync).
Every timed op carries its store parameters (calibration.store conventions), so rank 0
can write them as samples.  Ops marked ``comm=True`` also flip the heartbeat to
"waiting on peers", which is how a stalled rank is told from the ranks it blocks.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

# Heartbeat slot per rank: state (int32), pad, wall time (float64), label (48 bytes).
SLOT = struct.Struct("<i4xd48s")
STATES = {0: "starting", 1: "computing", 2: "waiting on peers", 3: "done"}
STARTING, COMPUTE, COMM, DONE = 0, 1, 2, 3
TRACED = ("attention", "ffn")      # intervals kept to measure compute overlap (CPU only)


class Heartbeat:
    """One mmap'ed file shared by all local ranks; each rank writes only its own slot."""

    def __init__(self, path: str | None, rank: int):
        self.rank = rank
        self._map = None
        if path and os.path.exists(path):
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, 0)
            finally:
                os.close(fd)

    def set(self, state: int, label: str = "") -> None:
        if self._map is not None:
            off = self.rank * SLOT.size
            self._map[off:off + SLOT.size] = SLOT.pack(state, time.time(),
                                                      label.encode()[:48])

    def get(self) -> tuple:
        return read_heartbeat_slot(self._map, self.rank) if self._map else (STARTING, 0.0, "")


def create_heartbeat(path: str | Path, world_size: int) -> None:
    Path(path).write_bytes(b"\0" * SLOT.size * world_size)


def read_heartbeat_slot(buf, rank: int) -> tuple:
    state, at, label = SLOT.unpack_from(buf, rank * SLOT.size)
    return state, at, label.rstrip(b"\0").decode(errors="replace")


def read_heartbeats(path: str | Path, world_size: int) -> list:
    data = Path(path).read_bytes()
    return [read_heartbeat_slot(data, r) for r in range(world_size)]


class Timer:
    """Accumulates durations per (op, params).  Disabled timers still drive the heartbeat."""

    def __init__(self, device: torch.device, heartbeat: Heartbeat | None = None):
        self.cuda = device.type == "cuda"
        self.heartbeat = heartbeat or Heartbeat(None, 0)
        self.enabled = False
        self._times = defaultdict(list)      # key -> [seconds | (start_event, end_event)]
        self.trace = []                      # (op, start, end) perf_counter, TRACED ops only

    @contextmanager
    def op(self, name: str, comm: bool = False, **params):
        """Time the block.  An exception inside leaves the heartbeat as it was (a rank that
        fails while waiting on peers is then not blamed for the failure)."""
        if comm:
            self.heartbeat.set(COMM, name)
        if not self.enabled:
            yield
        elif self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self._times[(name, tuple(sorted(params.items())))].append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            t1 = time.perf_counter()
            self._times[(name, tuple(sorted(params.items())))].append(t1 - t0)
            if name in TRACED:   # CLOCK_MONOTONIC: comparable across local processes
                self.trace.append((name, t0, t1))
        if comm:
            self.heartbeat.set(COMPUTE, name)

    def records(self) -> list:
        """[(op, params, [seconds...])], CUDA events resolved after one synchronize."""
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        for (name, params), times in self._times.items():
            secs = [t if isinstance(t, float) else t[0].elapsed_time(t[1]) / 1e3 for t in times]
            out.append((name, dict(params), secs))
        return out


def _union(intervals: list) -> list:
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def overlap(pool_intervals: list, base_intervals: list) -> dict:
    """How much of the pool's attention time ran while the base computed its FFN:
    |union(pool) & union(base)| / |union(pool)|, both sets of (start, end) seconds."""
    pool, base = _union(pool_intervals), _union(base_intervals)
    total = sum(b - a for a, b in pool)
    both, i, j = 0.0, 0, 0
    while i < len(pool) and j < len(base):
        lo, hi = max(pool[i][0], base[j][0]), min(pool[i][1], base[j][1])
        both += max(0.0, hi - lo)
        if pool[i][1] < base[j][1]:
            i += 1
        else:
            j += 1
    return {"pool_attention_ms": total * 1e3, "overlapped_ms": both * 1e3,
            "fraction": both / total if total else 0.0}


def wall(device: torch.device) -> float:
    """A step boundary: device work finished, then perf_counter."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def summarize_ops(per_rank: list) -> list:
    """Merge timings of all ranks: per op name, total and mean time per call, calls, and
    the busiest rank's share, sorted by total time (descending)."""
    by_op = defaultdict(lambda: {"calls": 0, "total_s": 0.0, "per_rank": defaultdict(float)})
    for rank, records in enumerate(per_rank):
        for name, _params, secs in records or []:
            e = by_op[name]
            e["calls"] += len(secs)
            e["total_s"] += sum(secs)
            e["per_rank"][rank] += sum(secs)
    rows = []
    for name, e in by_op.items():
        busiest = max(e["per_rank"].items(), key=lambda kv: kv[1])
        rows.append({"op": name, "calls": e["calls"], "total_ms": e["total_s"] * 1e3,
                     "mean_ms": e["total_s"] * 1e3 / max(e["calls"], 1),
                     "busiest_rank": busiest[0], "busiest_ms": busiest[1] * 1e3})
    return sorted(rows, key=lambda r: -r["total_ms"])
