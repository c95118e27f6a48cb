"""Microbenchmarks: GEMM, attention, memory-bound ops and collectives on this machine.

The only module of calibration that imports torch.  Every point: warm-up, then repeats
until a per-point time budget is spent (between a minimum and a maximum count); the
store keeps all repeat times, their median and IQR.  Timers measure the device: CUDA
events on GPU, time.perf_counter on CPU.

A CPU "device" is one process of a local world: it runs with cores // world_size threads
(torch.set_num_threads), so N processes never oversubscribe the cores and the compute
points describe what one rank of a local `fapool` run gets.

Collectives run among world_size local processes (torch.multiprocessing spawn, gloo on
CPU, NCCL on GPU), initialised with a timeout; the parent waits with a deadline and kills
the workers if one dies or hangs, so a run never hangs.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.nn.functional as F
from tqdm import tqdm

from calibration.fingerprint import cpu_cores
from calibration.store import COLLECTIVE_OPS

MB = 1 << 20


class CollectiveError(RuntimeError):
    """A collective benchmark worker died, failed or did not finish before the deadline."""


@dataclass(frozen=True)
class Sweep:
    """Which points to measure and how often."""

    gemm: tuple            # (tokens, k, n)
    attention: tuple       # (batch, q_len, kv_len, heads, kv_heads, head_dim, causal)
    memory: tuple          # (kind, elements)
    collective_bytes: tuple  # payload per rank
    warmup: int
    min_repeats: int
    max_repeats: int
    budget_s: float        # per point, after warm-up
    # collectives under 2 MB: latency-bound, and on an oversubscribed CPU their times
    # spread over 10x (a peer not scheduled yet), so a median needs many of them
    small_collective_repeats: int = 25

    def __post_init__(self):
        for b in self.collective_bytes:
            if b % 4:
                raise ValueError(f"collective size {b} is not a multiple of 4 bytes")


def sweep(quick: bool, device: str = "cpu") -> Sweep:
    """Transformer-shaped points: decode (few tokens, q_len 1) through prefill.
    A GPU gets shapes large enough to reach its peaks (7B-70B layer sizes)."""
    if device == "cuda":
        return _gpu_sweep(quick)
    if quick:
        return Sweep(
            gemm=tuple((t, k, n) for k, n in ((512, 1536), (1024, 1024), (2048, 512))
                       for t in (1, 8, 64, 256, 512)) + ((1, 64, 192), (8, 64, 192)),
            attention=tuple((1, s, s, 8, 8, d, c) for s in (128, 512) for d in (64, 128)
                            for c in (False, True))
            + ((1, 512, 512, 8, 2, 64, True),                      # GQA
               (1, 128, 1024, 8, 8, 64, False))                   # chunked prefill
            + tuple((4, 1, kv, 8, kvh, 128, False) for kv in (256, 1024, 4096)
                    for kvh in (8, 2)),                                 # decode
            memory=tuple((kind, n) for kind in ("norm", "activation", "copy")
                         for n in (4096, 64 << 10, MB // 4, 8 * MB)),   # one row .. 32 MB
            collective_bytes=(1 << 10, 16 << 10, 256 << 10, 4 * MB, 64 * MB),
            warmup=1, min_repeats=3, max_repeats=7, budget_s=0.05)
    return Sweep(
        gemm=tuple((t, k, n) for k, n in ((1024, 3072), (1024, 1024), (1024, 4096),
                                         (4096, 1024), (2048, 2048), (512, 512))
                   for t in (1, 4, 16, 64, 256, 1024))
        + tuple((t, k, n) for k, n in ((64, 192), (256, 768)) for t in (1, 8, 64)),  # tiny
        # models (executor tests): launch overhead
        attention=tuple((1, s, s, 8, 8, d, c) for s in (128, 512, 1024, 2048)
                        for d in (64, 128) for c in (False, True))
        + tuple((1, s, s, 8, 2, 64, c) for s in (512, 1024) for c in (False, True))  # GQA
        + ((1, 128, 2048, 8, 8, 128, False), (1, 256, 1024, 8, 2, 64, False))   # chunked
        + tuple((8, 1, kv, 8, kvh, 128, False) for kv in (128, 1024, 4096, 16384)
                for kvh in (8, 2))                                             # decode
        + ((1, 32, 32, 4, 4, 16, False), (1, 32, 32, 4, 4, 16, True),
           (2, 1, 64, 4, 2, 16, False)),                                       # tiny
        memory=tuple((kind, n) for kind in ("norm", "activation", "copy")
                     for n in (4096, MB // 64, MB // 16, MB // 4, MB, 4 * MB, 16 * MB)),
        collective_bytes=tuple(1 << p for p in range(10, 27, 2)),  # 1 KB .. 64 MB
        warmup=2, min_repeats=5, max_repeats=30, budget_s=0.3)


def _gpu_sweep(quick: bool) -> Sweep:
    shapes = ((4096, 12288), (8192, 8192), (1024, 8192)) if quick else (
        (4096, 12288), (4096, 4096), (4096, 16384), (16384, 4096), (8192, 8192), (1024, 8192))
    tokens = (1, 64, 512, 4096) if quick else (1, 16, 64, 256, 1024, 4096, 8192)
    seqs = (512, 2048, 8192) if quick else (512, 1024, 2048, 4096, 8192, 16384)
    kvs = (1024, 16384) if quick else (1024, 4096, 16384, 32768)
    return Sweep(
        gemm=tuple((t, k, n) for k, n in shapes for t in tokens),
        attention=tuple((max(1, 16384 // s), s, s, 32, 32, d, c) for s in seqs
                        for d in (64, 128) for c in (False, True))
        + tuple((max(1, 16384 // s), s, s, 32, 8, 128, True) for s in seqs)     # GQA
        + tuple((16, 1, kv, 32, kvh, 128, False) for kv in kvs for kvh in (32, 8)),  # decode
        memory=tuple((kind, n) for kind in ("norm", "activation", "copy")
                     for n in ((4 * MB, 64 * MB) if quick else (MB, 4 * MB, 16 * MB, 64 * MB,
                                                                 256 * MB))),
        collective_bytes=tuple(1 << p for p in range(10, 29 if quick else 31, 3 if quick else 2)),
        warmup=2 if quick else 5, min_repeats=5, max_repeats=10 if quick else 50,
        budget_s=0.02 if quick else 0.2)


def torch_version() -> str:
    return torch.__version__


def device_info() -> tuple[str, str | None, int]:
    """(device type, GPU model or None, GPU count)."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0), torch.cuda.device_count()
    return "cpu", None, 0


def compute_dtype(device: str) -> torch.dtype:
    """bf16 on GPU (tensor cores), fp32 on CPU (the dtype CPU kernels are fast in)."""
    return torch.bfloat16 if device == "cuda" else torch.float32


# ---------------------------------------------------------------- timing
def _timer(device: str):
    """A function timing fn() once on the device, in seconds."""
    if device == "cuda":
        def once(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # elapsed_time is in ms
        return once

    def once(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return once


def time_point(fn, device: str, sw: Sweep) -> list[float]:
    """Warm up, then repeat until the budget is spent (min..max repeats)."""
    once = _timer(device)
    for _ in range(sw.warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times: list[float] = []
    while len(times) < sw.max_repeats:
        times.append(once(fn))
        if len(times) >= sw.min_repeats and sum(times) >= sw.budget_s:
            break
    return times


# ---------------------------------------------------------------- compute ops
def _attention_fn(device, dtype, batch, q_len, kv_len, heads, kv_heads, head_dim, causal):
    """flash_attn_func on CUDA when installed (bottom-right causal), else torch SDPA.
    SDPA's is_causal is top-left aligned, so the sweep only uses causal with q_len == kv_len
    there (both conventions agree then)."""
    if device == "cuda":
        try:
            from flash_attn import flash_attn_func
        except ImportError:
            flash_attn_func = None
        if flash_attn_func is not None:
            q = torch.randn(batch, q_len, heads, head_dim, device=device, dtype=dtype)
            k = torch.randn(batch, kv_len, kv_heads, head_dim, device=device, dtype=dtype)
            v = torch.randn_like(k)  # (batch, seq, heads, head_dim): flash-attn layout
            return lambda: flash_attn_func(q, k, v, causal=causal), "flash_attn"
    if causal and q_len != kv_len:
        raise ValueError("SDPA causal masks are top-left aligned: use q_len == kv_len")
    q = torch.randn(batch, heads, q_len, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)  # (batch, heads, seq, head_dim): SDPA layout
    return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                   enable_gqa=heads != kv_heads)), "sdpa"


def _memory_fn(device, dtype, kind, elements):
    x = torch.randn(elements // 4096, 4096, device=device, dtype=dtype)  # (rows, hidden)
    if kind == "norm":
        weight = torch.ones(4096, device=device, dtype=dtype)
        return (lambda: F.rms_norm(x, (4096,), weight, 1e-6)), kind
    if kind == "activation":
        return (lambda: F.gelu(x)), kind
    out = torch.empty_like(x)
    return (lambda: out.copy_(x)), kind


def compute_points(sw: Sweep, device: str, kernels=None):
    """(op, params, builder) for every compute point of the sweep.  kernels: a module with
    attention_fn and memory_fn (the executor's, executor.kernels, when `fapool calibrate`
    runs them), else this module's plain torch ones."""
    attention_fn = kernels.attention_fn if kernels else _attention_fn
    memory_fn = kernels.memory_fn if kernels else _memory_fn
    dtype = compute_dtype(device)
    b = torch.tensor([], dtype=dtype).element_size()
    for t, k, n in sw.gemm:
        def build(t=t, k=k, n=n):
            a = torch.randn(t, k, device=device, dtype=dtype)   # (tokens, in)
            w = torch.randn(k, n, device=device, dtype=dtype)   # (in, out)
            return (lambda: a @ w), "matmul"
        yield "gemm", {"tokens": t, "k": k, "n": n, "dtype_bytes": b}, build
    for batch, q, kv, h, kvh, d, causal in sw.attention:
        params = {"batch": batch, "q_len": q, "kv_len": kv, "heads": h, "kv_heads": kvh,
                  "head_dim": d, "causal": causal, "dtype_bytes": b}
        yield "attention", params, (lambda p=params: attention_fn(
            device, dtype, p["batch"], p["q_len"], p["kv_len"], p["heads"], p["kv_heads"],
            p["head_dim"], p["causal"]))
    for kind, elements in sw.memory:
        # bytes = read input + write output (the minimum traffic; the norm's weight is tiny)
        params = {"bytes": 2 * elements * b, "kind": kind}
        yield "memory", params, (lambda kind=kind, e=elements: memory_fn(device, dtype, kind, e))


def run_compute(sw: Sweep, device: str, threads: int, on_sample, kernels=None) -> None:
    """Time every compute point; on_sample(op, params, times_s, dtype, impl) stores it.
    With kernels (executor.kernels), also the executor's host time per op ("host_op")."""
    if device == "cpu":
        torch.set_num_threads(threads)
    dtype_name = str(compute_dtype(device)).replace("torch.", "")
    points = list(compute_points(sw, device, kernels))
    with torch.inference_mode():
        for op, params, build in tqdm(points, desc="compute", unit="pt",
                                      dynamic_ncols=True):
            fn, impl = build()
            on_sample(op, params, time_point(fn, device, sw), dtype_name, impl)
            del fn
    if kernels is not None:
        on_sample("host_op", {}, kernels.host_overhead(), dtype_name, "executor.program")


# ---------------------------------------------------------------- collectives
def collective_repeats(sw: Sweep, size: int) -> tuple[int, int]:
    """(warm-up, repeats) by size: every rank must run the same count, so it is fixed, not
    timed.  Large messages get fewer repeats (the quick sweep times 64 MB twice)."""
    if size >= 32 * MB:
        return 1, max(2, sw.min_repeats // 2)
    if size >= 2 * MB:
        return 1, sw.min_repeats
    return sw.warmup + 1, max(sw.small_collective_repeats, sw.max_repeats // 2 + 2)


def group_sizes(world: int) -> list:
    """Group sizes every collective is timed at: 2 .. world.  A plan's collectives run in
    groups smaller than the world (a TP group of 2 among 4 processes), so the link's one
    alpha-beta fit sees them all: timed among the world only, a 4-process gloo all_reduce
    on 2 cores (20x a 2-process one) set every message's latency.  (Separate curves per
    group size fit the microbenchmarks better and the executor worse: held-out refit MAPE
    22/16/15 % against 10/17/13 % for TTFT/TPOT/ratio, one validate run each, 4 Dec.)"""
    return list(range(2, world + 1))


def _collective_fn(op, rank, world, tensor, gathered, group=None, size=None):
    """The op among ranks 0 .. size-1 (group; None: the world); a no-op on other ranks."""
    import torch.distributed as dist

    size = size or world
    if rank >= size:
        return lambda: None
    if op == "all_reduce":
        return lambda: dist.all_reduce(tensor, group=group)
    if op == "all_gather":
        return lambda: dist.all_gather(gathered[:size], tensor, group=group)
    if op == "broadcast":
        return lambda: dist.broadcast(tensor, src=0, group=group)
    if op == "gather":
        return lambda: dist.gather(tensor, gathered[:size] if rank == 0 else None, dst=0,
                                   group=group)
    if op == "send_recv":  # ping-pong between ranks 0 and 1; time / 2 is one transfer
        if rank == 0:
            return lambda: (dist.send(tensor, 1), dist.recv(tensor, 1))
        if rank == 1:
            return lambda: (dist.recv(tensor, 0), dist.send(tensor, 0))
        return lambda: None
    raise ValueError(op)


def _collective_worker(rank, world, port, backend, sw, timeout_s, out_path):
    """One rank: time every (op, size); rank 0 writes the results to out_path as JSON."""
    import torch.distributed as dist

    torch.set_num_threads(max(1, cpu_cores() // world))  # as the compute points (cli)
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        # every rank creates every group, in the same order (torch.distributed's rule)
        groups = {g: (None if g == world else dist.new_group(list(range(g))))
                  for g in group_sizes(world)}
        points = [(op, size, g) for op in COLLECTIVE_OPS for size in sw.collective_bytes
                  for g in ((2,) if op == "send_recv" else group_sizes(world))]
        bar = tqdm(points, desc=f"collectives x{world}", unit="pt", disable=rank != 0,
                   dynamic_ncols=True)
        results = []
        for op, size, g in bar:
            tensor = torch.ones(size // 4, dtype=torch.float32, device=device)  # (elements,)
            gathered = [torch.empty_like(tensor) for _ in range(world)]
            fn = _collective_fn(op, rank, world, tensor, gathered, groups.get(g), g)
            warmup, repeats = collective_repeats(sw, size)
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(repeats):
                dist.barrier()
                if backend == "nccl":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if backend == "nccl":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            # a collective takes as long as its slowest rank
            slowest = torch.tensor(times, dtype=torch.float64, device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            scale = 0.5 if op == "send_recv" else 1.0
            results.append({"op": op, "bytes": size, "ranks": g,
                            "times_s": [scale * float(t) for t in slowest.cpu()]})
            del tensor, gathered, fn
        posts = _post_overhead(rank, device, min(sw.collective_bytes), 20 * sw.max_repeats)
        wakes = _wake_penalty(rank, device, 4 * sw.max_repeats)
        if rank == 0:
            results.append({"op": "host_post", "bytes": min(sw.collective_bytes),
                            "ranks": 2, "times_s": posts})
            results.append({"op": "host_wake", "bytes": 0, "ranks": 2, "times_s": wakes})
            with open(out_path, "w") as fh:
                json.dump(results, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _post_overhead(rank: int, device: str, size: int, repeats: int) -> list:
    """Per-call overhead of posting a message: the time rank 0 spends inside dist.isend
    of `size` bytes to rank 1, which already waits in recv (the case of an executor rank
    handing work to a waiting peer); the transfer itself is waited for apart.  Every
    rank runs the same loop; ranks above 1 only meet the barriers."""
    import torch.distributed as dist

    tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
    times = []
    for _ in range(repeats):
        dist.barrier()
        if rank == 0:
            t0 = time.perf_counter()
            work = dist.isend(tensor, dst=1)
            times.append(time.perf_counter() - t0)
            work.wait()
        elif rank == 1:
            dist.recv(tensor, src=0)
    return times


def _wake_penalty(rank: int, device: str, repeats: int) -> list:
    """What a rank loses when a message wakes it: rank 1 sleeps in recv while rank 0 waits
    2 ms, then runs a burst of small ops (GEMM, activation, norm: ~0.1-0.3 ms, like an
    executor's layer on a small shard) twice; the first burst's extra time over the second
    is the penalty (caches and the core refilled after the sleep).  Rank 0 returns rank
    1's penalties; every rank meets the same barriers."""
    import torch.distributed as dist

    x = torch.randn(8, 64, device=device)                 # (tokens, hidden)
    w = torch.randn(64, 192, device=device)               # (hidden, out)
    flag = torch.zeros(1, device=device)

    def burst() -> float:
        t0 = time.perf_counter()
        for _ in range(4):
            F.gelu(x @ w)
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        return time.perf_counter() - t0

    penalties = []
    for _ in range(repeats):
        dist.barrier()
        if rank == 0:
            time.sleep(0.002)
            dist.send(flag, dst=1)
        elif rank == 1:
            dist.recv(flag, src=0)
            cold = burst()
            penalties.append(max(1e-9, cold - burst()))     # the store keeps times > 0
    out = torch.tensor(penalties or [0.0] * repeats, dtype=torch.float64)
    if rank == 1:
        dist.send(out, dst=0)
    elif rank == 0:
        dist.recv(out, src=1)
    return [float(t) for t in out]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_collectives(sw: Sweep, backend: str, world: int, link: str, on_sample,
                    deadline_s: float, timeout_s: float = 60.0) -> None:
    """Spawn world processes, time the collectives, call on_sample for each point.
    Raises CollectiveError if a worker fails or the whole does not end by deadline_s."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="fapool-coll-") as tmp:
        out_path = os.path.join(tmp, "results.json")
        ctx = mp.start_processes(_collective_worker, nprocs=world, join=False,
                                 start_method="spawn",
                                 args=(world, free_port(), backend, sw, timeout_s, out_path))
        end = time.monotonic() + deadline_s
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > end:
                    raise CollectiveError(f"collective benchmark did not finish within "
                                          f"{deadline_s:g} s (a rank is stuck or dead); workers killed")
        except mp.ProcessRaisedException as err:
            last = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
            raise CollectiveError(f"a collective worker failed: {last}") from None
        except mp.ProcessExitedException as err:
            raise CollectiveError(f"a collective worker died ({err})") from None
        finally:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        with open(out_path) as fh:
            results = json.load(fh)
    for item in results:
        if item["op"] in ("host_post", "host_wake"):
            on_sample(item["op"], {"bytes": item["bytes"], "link": link}, item["times_s"],
                      "float32", backend)
            continue
        on_sample(item["op"], {"bytes": item["bytes"], "ranks": item["ranks"], "link": link},
                  item["times_s"], "float32", backend)

