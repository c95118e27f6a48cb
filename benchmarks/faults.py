"""Faults from outside, ten tries each (not a test: times move with the machine's load;
tests/test_faults.py runs each once): kill -9 of a rank, of torchrun, SIGINT of
`fapool run`; kill -9 of a store writer mid-run; two writers at once; a locked store.

    .venv/bin/python benchmarks/faults.py [--tries 10] [--no-history]

Prints per fault: seconds from the fault to the end (min / median / max), exit statuses,
runs that left a process or a temp dir, and for the store the integrity check and what
was counted; appends the figures to benchmarks/history.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fault_scenarios as F  # noqa: E402
from history import append  # noqa: E402


def spread(xs) -> dict:
    return {"min": min(xs), "median": round(statistics.median(xs), 2), "max": max(xs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=10)
    p.add_argument("--no-history", action="store_true")
    args = p.parse_args()
    figures: dict = {"tries": args.tries, "cores": os.cpu_count()}
    rng = random.Random(0)
    for kind in F.KINDS:
        rows = []
        for i in range(args.tries):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(F.executor_fault(kind, Path(tmp), timeout_s=60.0))
        figures[kind] = {"seconds": spread([r["seconds"] for r in rows]),
                         "codes": sorted({r["code"] for r in rows}),
                         "one_line": all(len(r["stderr"]) == 1 for r in rows),
                         "left_behind": sum(bool(r["left_processes"] or r["left_in_tmp"])
                                            for r in rows),
                         "example": rows[-1]["stderr"][-1][:160]}
        print(kind, figures[kind])
    kills = []
    for i in range(args.tries):
        with tempfile.TemporaryDirectory() as tmp:
            kills.append(F.writer_killed(Path(tmp) / "s.sqlite", rng))
    figures["writer_killed"] = {
        "integrity_ok": sum(k["integrity"] == "ok" for k in kills),
        "earlier_runs_whole": sum(k["complete_runs_whole"] for k in kills),
        "interrupted_uncounted": sum(k["counted_only_complete"]
                                     and k["samples_of_incomplete"] == 0 for k in kills)}
    print("writer killed", figures["writer_killed"])
    with tempfile.TemporaryDirectory() as tmp:
        figures["two_writers"] = F.two_writers(Path(tmp) / "s.sqlite")
    print("two writers", figures["two_writers"])
    locks = []
    for i in range(args.tries):
        with tempfile.TemporaryDirectory() as tmp:
            locks.append(F.locked_store(Path(tmp) / "s.sqlite", wait_s=1.0))
    figures["locked_store"] = {"seconds": spread([r["seconds"] for r in locks]),
                               "codes": sorted({r["code"] for r in locks}),
                               "example": locks[-1]["stderr"][-1][:160]}
    print("locked store", figures["locked_store"])
    figures["load_average"] = round(os.getloadavg()[0], 2)
    if not args.no_history:
        append("faults", figures, "benchmarks/faults.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
