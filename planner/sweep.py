"""Simulation tasks of the plan search, run once each in a process pool.

A task key names the simplest strategy with a given behaviour on one workload bucket:
("static", tp, pp, bucket, "-", batch) or ("fapool", base_tp, pool_gpus, bucket, decode_kv,
batch).  FA Pool's threshold and pool rule only choose the pool size at a length, so every
candidate that activates the same pool on the same bucket shares one simulation.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy
from planner.workload import Workload

_CTX: dict = {}


def _init(model, cluster, profile, buckets) -> None:
    _CTX.update(model=model, cluster=cluster, profile=profile, buckets=buckets)


def canonical(kind: str, a: int, b: int, seq_len: int, decode_kv: str) -> Strategy:
    """Static TP=a PP=b, or FA Pool with base TP=a and exactly b pool GPUs at seq_len
    (b = 0: attention stays on the base group)."""
    if kind == "static":
        return StaticStrategy(tp=a, pp=b)
    if b == 0:
        return FAPoolStrategy(base_tp=a, threshold=seq_len + 1, max_pool=1, decode_kv=decode_kv)
    return FAPoolStrategy(base_tp=a, threshold=1, max_pool=b, pool_gpus=b, decode_kv=decode_kv)


def sim_task(task) -> dict:
    """task = (key, profile or None): one bucket as one batch through planner.simulate."""
    key, profile = task
    kind, a, b, i, decode_kv, batch = key
    bucket = _CTX["buckets"][i]
    strategy = canonical(kind, a, b, bucket.input_len, decode_kv)
    wl = Workload(batch, bucket.input_len, bucket.output_len)
    return sim_summary(simulate(_CTX["model"], _CTX["cluster"], strategy, wl,
                                profile=profile or _CTX["profile"], record=False,
                                interval_samples=0))


def sim_summary(r) -> dict:
    """What the search keeps of a SimResult: feasibility, reasons, memory per role (GB) and,
    when it fits, TTFT / TPOT / batch time in seconds."""
    out = {"feasible": r.feasible, "reasons": list(r.infeasible_reasons),
           "memory_gb": {role: round(m.total / 1e9, 3) for role, m in r.memory.items()}}
    if r.feasible:
        out.update(ttft_s=r.ttft_s, tpot_s=r.tpot_s, total_s=r.total_s)
    return out


def stage_line(progress, text: str) -> None:
    """One line on stderr when a stage ends (progress None: a terminal or not), so a log
    of a run shows every stage; silent for progress False or a callable."""
    if progress is None:
        sys.stderr.write(f"fapool: {text}\n")
        sys.stderr.flush()


def progress_bar(progress, total: int, desc: str):
    """progress: None -> a tqdm bar on stderr (a terminal only) and a stage line at the
    end; False -> silent; callable(done, total).  Returns tick(n); tick(None) closes."""
    if progress is False:
        return lambda n: None
    if callable(progress):
        state = [0]

        def tick(n):
            if n:
                state[0] += n
                progress(state[0], total)
        return tick
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="sim", leave=False, disable=None)  # off if no TTY

    start = time.perf_counter()

    def tock(n):
        if n is None:
            bar.close()
            stage_line(progress, f"{desc}: {total} simulations in "
                                 f"{time.perf_counter() - start:.1f} s")
        else:
            bar.update(n)
    return tock


def run_tasks(tasks: list, workers: int, init_args: tuple, progress=False,
              desc: str = "simulate") -> list:
    """Results of tasks [(key, profile|None)] in order; a process pool (fork: planner never
    imports torch, so forking is cheap and safe) when there are enough of them."""
    tick = progress_bar(progress, len(tasks), desc)
    out = []
    if workers <= 1 or len(tasks) < 16:
        _init(*init_args)
        for t in tasks:
            out.append(sim_task(t))
            tick(1)
    else:
        out = process_map(sim_task, tasks, workers, _init, init_args, tick)
    tick(None)
    return out


def process_map(fn, items: list, workers: int, init=None, init_args: tuple = (),
                tick=lambda n: None) -> list:
    """[fn(x) for x in items] in a pool of `workers` processes, in order; init(*init_args)
    runs first in each worker.  Fork where there is one: planner never imports torch, so
    forking is cheap and safe."""
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    chunk = max(1, len(items) // (workers * 8))
    out = []
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=init,
                             initargs=init_args) as pool:
        for v in pool.map(fn, items, chunksize=chunk):
            out.append(v)
            tick(1)
    return out
