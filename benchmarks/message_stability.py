"""How stable is one small gloo message on this machine?  The closed loop (issue 11) prices
every executor message from microbenchmarks of the same machine; this measures how much the
same microbenchmark moves from one process group to the next.

Each round starts a fresh 2-process gloo group (the executor's backend on CPU) and times,
back to back with no barrier in between (as the executor's messages flow):
  ping-pong  rank 0 send + recv of 1 KB, rank 1 recv + send; the one-way time is half the
             round trip (the OSU latency benchmark's method);
  all_reduce of 1 KB between the 2 ranks (a TP group's message in decode).
It prints every round's median and mean (µs) and the fraction of messages over 1 ms (a
stall: the median says what a message costs, the mean what a step of many messages pays),
the spread max / min across rounds side by side, and appends the figures to
benchmarks/history.json.

    .venv/bin/python benchmarks/message_stability.py [--rounds 5] [--iters 200] [--no-history]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration.microbench import free_port  # noqa: E402
from history import append  # noqa: E402

NBYTES = 1024
STALL_S = 1e-3           # a message this slow waited on the scheduler, not the copy


def _worker(rank: int, port: int, iters: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))
    x = torch.zeros(NBYTES // 4)                     # (elements,) float32
    results = {}
    try:
        for name in ("pingpong", "all_reduce"):
            for _ in range(10):                      # warm-up
                dist.all_reduce(x)
            dist.barrier()
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                if name == "all_reduce":
                    dist.all_reduce(x)
                elif rank == 0:
                    dist.send(x, 1)
                    dist.recv(x, 1)
                else:
                    dist.recv(x, 0)
                    dist.send(x, 0)
                times.append((time.perf_counter() - t0) / (2 if name == "pingpong" else 1))
            results[name] = (statistics.median(times) * 1e6, statistics.fmean(times) * 1e6,
                             sum(t > STALL_S for t in times) / len(times))
        if rank == 0:
            Path(out).write_text(" ".join(f"{v:.6f}" for k in results for v in results[k]))
    finally:
        dist.destroy_process_group()


def one_round(iters: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.txt")
        mp.start_processes(_worker, args=(free_port(), iters, out), nprocs=2,
                           start_method="spawn", join=True)
        v = [float(x) for x in Path(out).read_text().split()]
    out = {}
    for i, name in enumerate(("pingpong_one_way", "all_reduce")):
        median, mean, stalls = v[3 * i:3 * i + 3]
        out[name] = {"median_us": round(median, 1), "mean_us": round(mean, 1),
                     "stalled_fraction": round(stalls, 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--no-history", action="store_true", help="do not append to history.json")
    a = p.parse_args()
    rounds = []
    for i in range(a.rounds):
        r = one_round(a.iters)
        rounds.append(r)
        print(f"round {i + 1}: " + "; ".join(
            f"{name} median {f['median_us']:7.1f} us, mean {f['mean_us']:7.1f} us, "
            f"{100 * f['stalled_fraction']:4.1f} % over 1 ms" for name, f in r.items()),
            flush=True)
    spread = {f"{name} {stat}": round(max(r[name][stat] for r in rounds)
                                      / max(1e-9, min(r[name][stat] for r in rounds)), 2)
              for name in rounds[0] for stat in ("median_us", "mean_us")}
    print(f"max / min over {a.rounds} rounds: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in spread.items()))
    if not a.no_history:
        append("message_stability", {"rounds": rounds, "spread_max_over_min": spread,
                                     "iters": a.iters, "bytes": NBYTES,
                                     "load_average": round(os.getloadavg()[0], 2)},
               f"benchmarks/message_stability.py --rounds {a.rounds} --iters {a.iters}")


if __name__ == "__main__":
    main()
