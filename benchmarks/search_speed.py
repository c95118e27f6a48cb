"""Plan-search speed over the paper's space, serial vs all cores, side by side.

The space: paper-4l on dgx-a100 within 40 GPUs; FA Pool thresholds 512..65536 (powers of
two) x tokens per pool GPU 256..4096 x max pool 2..32 x base TP 1..8, plus static TP x PP;
workload: the `paper` mix (512 requests), batch 1024.

    .venv/bin/python benchmarks/search_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.search import search
from planner.workloads import synthetic


def timed(workers: int, repeats: int) -> tuple:
    model, cluster = PRESETS["paper-4l"], resolve_cluster("dgx-a100")
    wl = synthetic("paper", 512)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = search(model, cluster, 40, wl, workers=workers, progress=False)
        times.append(time.perf_counter() - t0)
    return times, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    par, result = timed(cores, args.repeats)
    ser, _ = timed(1, args.repeats)
    naive = len(result.candidates) * len(result.buckets)
    print(f"candidates {len(result.candidates)} x buckets {len(result.buckets)} = {naive} "
          f"candidate-bucket evaluations; distinct simulations {result.simulations} "
          f"({naive / result.simulations:.1f}x fewer)")
    print(f"search, {cores} workers: median {statistics.median(par):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in par)})")
    print(f"search, 1 worker:  median {statistics.median(ser):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in ser)})")
    print(f"speed-up from {cores} workers: {statistics.median(ser) / statistics.median(par):.2f}x; "
          f"chosen: {result.chosen['name'] if result.chosen else result.reason}")
    print(f"load average during the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
