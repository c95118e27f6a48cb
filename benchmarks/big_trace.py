"""Planning a 1,000,000-request trace: wall time and peak memory of `fapool plan` on a CSV
and a JSONL trace of that many rows (not a test: the figures move with the machine's load).

    .venv/bin/python benchmarks/big_trace.py [--rows 1000000] [--no-history]

The trace: Poisson arrivals at 200 requests/s, prompts log-uniform in 128..32768 tokens,
outputs uniform in 16..511, seeded.  `fapool plan` streams it (planner.workloads.load_trace:
buckets and a bounded uniform sample, never the whole file in memory) and plans the
default model and cluster on the sample.  Peak memory is the child's maximum resident set
(getrusage), read after each run; the target is 60 s and 1 GB per trace.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import append  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_traces(folder: Path, rows: int) -> dict:
    rng = np.random.default_rng(1)
    arrival = np.cumsum(rng.exponential(1 / 200.0, rows)).round(6)
    prompt = np.exp(rng.uniform(np.log(128), np.log(32768), rows)).astype(int)
    output = rng.integers(16, 512, rows)
    csv_path, jsonl_path = folder / "trace.csv", folder / "trace.jsonl"
    with csv_path.open("w") as fh:
        fh.write("arrival_s,input_len,output_len\n")
        fh.writelines(f"{a},{i},{o}\n" for a, i, o in zip(arrival, prompt, output))
    with jsonl_path.open("w") as fh:
        fh.writelines(f'{{"arrival_s": {a}, "input_len": {i}, "output_len": {o}}}\n'
                      for a, i, o in zip(arrival, prompt, output))
    return {"csv": csv_path, "jsonl": jsonl_path}


def plan_once(trace: Path, out: Path) -> dict:
    """One `fapool plan` in a child process: wall seconds, its peak RSS (MB), first line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "plan", "--workload",
                           str(trace), "--out", str(out)], capture_output=True, text=True,
                          cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"fapool plan failed: {proc.stderr.strip().splitlines()[-1:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: report it only if this
    # run raised it, else it is at most the earlier peak
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
            "peak_is_this_run": peak_kb > before, "workload": proc.stdout.splitlines()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--no-history", action="store_true")
    args = p.parse_args()
    figures = {"rows": args.rows, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="fapool-big-trace-") as tmp:
        traces = write_traces(Path(tmp), args.rows)
        for kind, path in traces.items():
            r = plan_once(path, Path(tmp) / f"out-{kind}")
            size_mb = path.stat().st_size / 2**20
            print(f"{kind}: {args.rows:,} rows ({size_mb:.0f} MB): fapool plan {r['seconds']} s, "
                  f"peak RSS <= {r['peak_rss_mb']} MB; {r['workload']}")
            figures[kind] = {**r, "file_mb": round(size_mb, 1)}
    figures["load_average"] = round(os.getloadavg()[0], 2)
    if not args.no_history:
        append("big_trace", figures, "benchmarks/big_trace.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
