"""Plan-search speed over the paper's space: the full-batch screen alone vs the whole search
with the request-level capacity stage, side by side in one run; and one plan's request
simulation of a 1,000-request workload.

The space: paper-4l on dgx-a100 within 40 GPUs; FA Pool thresholds 512..65536 (powers of
two) x tokens per pool GPU 256..4096 x max pool 2..32 x base TP 1..8, plus static TP x PP;
workload: the `paper` mix (512 requests, 4 requests/s), batch 1024.  Settings of the whole
search: objective and request-level p99 SLOs (ms) as `fapool plan` takes them.

    .venv/bin/python benchmarks/search_speed.py [--repeats 3] [--no-history]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import append  # noqa: E402
from planner.capacity import describe  # noqa: E402
from planner.cluster import resolve_cluster  # noqa: E402
from planner.model import PRESETS  # noqa: E402
from planner.requests import StepCosts, simulate_requests  # noqa: E402
from planner.search import _screen, SearchSpace, search  # noqa: E402
from planner.serving import Serving  # noqa: E402
from planner.strategy import FAPoolStrategy  # noqa: E402
from planner.workloads import synthetic  # noqa: E402

MODEL, CLUSTER, BUDGET, BATCH = PRESETS["paper-4l"], resolve_cluster("dgx-a100"), 40, 1024
SETTINGS = (("tps", None, None), ("gpus", None, None), ("gpus", 30.0, None),
            ("gpus", None, 2000.0), ("tps", 10.0, 2000.0), ("gpus", 5.0, 1000.0))


def median_of(fn, repeats: int) -> tuple:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def label(objective, tpot, ttft) -> str:
    slo = ", ".join(f"{n} <= {v:g} ms" for n, v in (("TPOT", tpot), ("TTFT", ttft)) if v)
    return f"--objective {objective}" + (f", p99 {slo}" if slo else ", no SLO")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-history", action="store_true", help="do not append to history.json")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    wl = synthetic("paper", 512)
    profile = CLUSTER.load_profile()
    buckets = wl.buckets()

    def screen():
        return _screen(MODEL, CLUSTER, profile, BUDGET, buckets, BATCH, SearchSpace(), cores,
                       False)
    screen_s, screen_runs, (cands, sims) = median_of(screen, args.repeats)
    print(f"full-batch screen only: {len(cands)} layouts, {len(sims)} simulations, median "
          f"{screen_s:.2f} s (runs {', '.join(f'{t:.2f}' for t in screen_runs)})")
    figures = {"screen_s": round(screen_s, 3), "layouts": len(cands), "cores": cores,
               "searches": []}
    for objective, tpot, ttft in SETTINGS:
        s, runs, res = median_of(lambda: search(MODEL, CLUSTER, BUDGET, wl, tpot, ttft,
                                                objective, progress=False, batch=BATCH,
                                                profile=profile, intervals=False),
                                 args.repeats)
        chosen = describe(res.chosen) if res.chosen else f"no plan ({res.reason})"
        print(f"whole search, {label(objective, tpot, ttft)}: median {s:.2f} s = "
              f"{s / screen_s:.2f}x the screen alone; {len(res.served)} plans simulated under "
              f"the arrivals; chosen {chosen}")
        figures["searches"].append({"objective": objective, "slo_tpot_ms": tpot,
                                    "slo_ttft_ms": ttft, "median_s": round(s, 3),
                                    "ratio_to_screen": round(s / screen_s, 3),
                                    "plans": len(res.served), "chosen": chosen})

    big = synthetic("paper", 1000)
    strategy = FAPoolStrategy(base_tp=8, threshold=4096, tokens_per_pool_gpu=1024, max_pool=32)
    costs = StepCosts(MODEL, CLUSTER, profile, big.buckets())
    cold, _, _ = median_of(lambda: simulate_requests(MODEL, CLUSTER, strategy, big,
                                                     Serving(max_batch=BATCH), profile,
                                                     StepCosts(MODEL, CLUSTER, profile,
                                                               big.buckets())), 1)
    simulate_requests(MODEL, CLUSTER, strategy, big, Serving(max_batch=BATCH), profile, costs)
    warm, warm_runs, _ = median_of(lambda: simulate_requests(
        MODEL, CLUSTER, strategy, big, Serving(max_batch=BATCH), profile, costs), args.repeats)
    print(f"request simulation of one plan ({strategy.describe()}), 1,000 requests: "
          f"{cold:.2f} s with its step simulations, median {warm:.3f} s with them shared "
          f"(as in the search)")
    figures.update(request_sim_1000_cold_s=round(cold, 3), request_sim_1000_s=round(warm, 3))
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.2f}")
    figures["load_average"] = round(load, 2)
    if not args.no_history:
        append("search_speed", figures, "benchmarks/search_speed.py")


if __name__ == "__main__":
    main()
