"""Where the model is wrong: a configuration's predicted and measured time per op kind,
and a Chrome trace with both timelines side by side.

predicted: a SimResult recorded with events (planner.simulate, record=True);
measured: the executor's summary of the same plan with `timeline_per_rank` (`fapool run
--timeline`): per rank, per step, [kind, label, layer, micro-batch, start s, end s] of
every op of the last request.  Prefill is step 0; the decode step compared is the one the
simulator predicts TPOT with (planner.simulate.decode_step).
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.schedule import COMPUTE
from planner.simulate import decode_step
from planner.trace import trace_events as predicted_events

MEASURED_PID = 3                 # planner.trace uses 1 (base) and 2 (pool)


def _kind(op_kind: str) -> str:
    return op_kind if op_kind in COMPUTE else "comm"


def _steps(result) -> dict:
    return {"prefill": 0, "decode": decode_step(result.workload)}


def op_table(result, summary: dict) -> dict:
    """{phase: {op kind: {predicted_ms, measured_ms}}}: time per rank (summed over the
    ranks, divided by their count) of each kind in one prefill and one decode step."""
    spans = summary.get("timeline_per_rank") or []
    ranks = [r for r in spans if r]
    out = {}
    for phase, run in (("prefill", result.prefill), ("decode", result.decode)):
        if run is None or not ranks:
            continue
        table: dict = {}
        for ev in run.events:
            n = sum(len(result.units[u].ranks) for u in ev.units)
            row = table.setdefault(_kind(ev.op), {"predicted_ms": 0.0, "measured_ms": 0.0})
            row["predicted_ms"] += (ev.end - ev.start) * n * 1e3 / len(ranks)
        step = _steps(result)[phase]
        for per_step in ranks:
            if step >= len(per_step):
                continue
            for kind, _label, _layer, _mb, t0, t1 in per_step[step]:
                row = table.setdefault(_kind(kind), {"predicted_ms": 0.0, "measured_ms": 0.0})
                row["measured_ms"] += (t1 - t0) * 1e3 / len(ranks)
        out[phase] = {k: {m: round(v, 4) for m, v in row.items()}
                      for k, row in sorted(table.items())}
    return out


def trace_events(result, summary: dict) -> list:
    """Chrome trace events: the prediction as `fapool simulate --trace` draws it
    (planner.trace: processes "base" and "pool", a thread per unit and stream), beside the
    measurement (process "measured", a thread per rank); prefill from 0, the decode step
    from the predicted TTFT on, each measured step aligned at its first op."""
    events = predicted_events(result)
    for e in events:                     # name the prediction's processes as such
        if e["ph"] == "M" and e["name"] == "process_name":
            e["args"]["name"] = f"predicted {e['args']['name']} (simulator, refit)"
    pid = MEASURED_PID
    events.append({"ph": "M", "name": "process_name", "pid": pid,
                   "args": {"name": "measured (executor)"}})
    offset = {"prefill": 0.0, "decode": result.ttft_s or 0.0}
    spans = summary.get("timeline_per_rank") or []
    for rank, per_step in enumerate(spans):
        if per_step:
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": rank + 1,
                           "args": {"name": f"rank {rank}"}})
    for phase, step in _steps(result).items():
        starts = [s[4] for rank in spans if rank and step < len(rank) for s in rank[step]]
        if not starts:
            continue
        t_zero = min(starts)
        for rank, per_step in enumerate(spans):
            if not per_step or step >= len(per_step):
                continue
            for kind, label, layer, mb, t0, t1 in per_step[step]:
                events.append({"name": label, "cat": f"{phase},measured", "ph": "X",
                               "pid": pid, "tid": rank + 1,
                               "ts": round((offset[phase] + t0 - t_zero) * 1e6, 3),
                               "dur": round(max(0.0, t1 - t0) * 1e6, 3),
                               "args": {"op": kind, "layer": layer, "microbatch": mb}})
    return events


def write_comparison_trace(result, summary: dict, path: Path) -> Path:
    """Write the trace (opens in Perfetto / chrome://tracing) atomically; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"traceEvents": trace_events(result, summary),
                               "displayTimeUnit": "ms"}))
    tmp.replace(path)
    return path
