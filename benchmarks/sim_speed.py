"""Simulator speed: one configuration (prefill + decode), and the whole `fapool paper` table.

    .venv/bin/python benchmarks/sim_speed.py [--repeats 5]

Prints medians over repeats (time.perf_counter) side by side and the ratio to the 50 ms
per-configuration target.  A configuration = prefill of the batch + the decode steps that
give TPOT, without prediction intervals; the interval column adds the profile draws.
"""

from __future__ import annotations

import argparse
import statistics
import time

from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.paper import paper_report
from planner.simulate import INTERVAL_SAMPLES, simulate
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload

TARGET_S = 0.050
CASES = [("static TP8 PP2", StaticStrategy(8, 2), 2048),
         ("static TP8 PP2", StaticStrategy(8, 2), 16384),
         ("FA Pool", FAPoolStrategy(), 2048),
         ("FA Pool", FAPoolStrategy(), 8192),
         ("FA Pool", FAPoolStrategy(), 16384),
         ("FA Pool", FAPoolStrategy(), 32768)]


def median_time(fn, repeats: int) -> float:
    fn()  # warm caches / imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, cluster = PRESETS["paper-4l"], resolve_cluster("dgx-a100")
    profile = cluster.load_profile()
    print(f"{'configuration':<28} {'seq':>6} {'sim ms':>8} {'/target':>8} "
          f"{'with ' + str(INTERVAL_SAMPLES) + ' draws ms':>20}")
    for name, strategy, seq in CASES:
        wl = Workload(1024, seq, 128)
        plain = median_time(lambda: simulate(model, cluster, strategy, wl, profile=profile,
                                             record=False, interval_samples=0), args.repeats)
        full = median_time(lambda: simulate(model, cluster, strategy, wl, profile=profile),
                           max(1, args.repeats // 2))
        print(f"{name:<28} {seq:>6} {plain * 1e3:>8.1f} {plain / TARGET_S:>8.2f} "
              f"{full * 1e3:>20.1f}")
    table = median_time(paper_report, max(1, args.repeats // 2))
    print(f"whole `fapool paper` table (20 configurations + 4 for section 5.4): "
          f"{table * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
