"""Chrome trace export of a simulated timeline (opens in Perfetto / chrome://tracing).

Format: the Trace Event Format's complete events ("ph": "X", ts and dur in microseconds).
One process per role (base, pool), one thread per unit and stream (compute, comm).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from calibration.errors import InputError
from planner.result import SimResult


def trace_events(result: SimResult) -> list:
    roles = {"base": 1, "pool": 2}
    tids = {}
    events = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": role}}
              for role, pid in roles.items()]
    offset = {"prefill": 0.0, "decode": result.ttft_s or 0.0}
    for ev in result.events:
        streams = ev.units if ev.kind == "compute" else ev.units[:1]
        for unit_name in streams:
            unit = result.units[unit_name]
            key = (unit_name, ev.kind)
            if key not in tids:
                tids[key] = len(tids) + 1
                events.append({"ph": "M", "name": "thread_name", "pid": roles[unit.role],
                               "tid": tids[key], "args": {"name": f"{unit_name} {ev.kind}"}})
            start = offset[ev.phase] + ev.start
            events.append({
                "name": ev.name, "cat": f"{ev.phase},{ev.kind}", "ph": "X",
                "ts": round(start * 1e6, 3), "dur": round((ev.end - ev.start) * 1e6, 3),
                "pid": roles[unit.role], "tid": tids[key],
                "args": {"microbatch": ev.microbatch, "layer": ev.layer, "phase": ev.phase,
                         "units": list(ev.units)},
            })
    return events


def write_trace(result: SimResult, path: str | Path) -> int:
    """Write the trace JSON atomically; returns the number of op events."""
    events = trace_events(result)
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        tmp.replace(path)
    except OSError as err:
        with contextlib.suppress(OSError):     # the temp file may not be creatable at all
            tmp.unlink(missing_ok=True)
        raise InputError("--trace", f"cannot write {path}: {err.strerror or err}") from None
    return sum(1 for e in events if e["ph"] == "X")
