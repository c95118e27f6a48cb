"""One case (a plan) on every rank: build roles, warm up, time K requests, gather
timings and verify records to rank 0, and (rank 0) verify and write the store."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from executor.fapool import BaseRank, PoolRank
from executor.groups import build_groups
from executor.measure import COMPUTE, Timer, overlap, wall
from executor.model import make_weights
from executor.pipeline import StageRank
from executor.runtime import Runtime
from planner.plan import Plan
from planner.strategy import FAPoolStrategy

FAULT_ENV = "FAPOOL_FAULT"   # raise:R | exit:R | hang:R  (testing: rank R fails mid-run)


def maybe_fault(rank: int) -> None:
    """Injected faults for the watchdog tests, at the start of the first timed request."""
    spec = os.environ.get(FAULT_ENV, "")
    if ":" not in spec:
        return
    kind, _, who = spec.partition(":")
    if not who.isdigit() or int(who) != rank:
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")
    if kind == "exit":
        os._exit(3)
    if kind == "hang":
        while True:
            time.sleep(3600)


def _role(rt: Runtime, weights):
    info = rt.groups.info
    if info is None:
        return None
    if isinstance(rt.plan.strategy, FAPoolStrategy):
        if info.role == "base":
            return BaseRank(rt, weights)
        return PoolRank(rt, info.index) if info.index < rt.pool_size else None
    return StageRank(rt, weights)


def _assemble(records: dict, layers: int, steps: int) -> dict:
    """{("attn", layer, step): [per micro-batch]} -> {"logits": (b, n, V), "attn": [...]}."""
    def joined(prefix):
        return torch.cat([torch.cat(records[prefix + (t,)], dim=0) for t in range(steps + 1)],
                         dim=1)
    return {"logits": joined(("logits",)), "attn": [joined(("attn", i)) for i in range(layers)]}


def run_case(plan: Plan, rank: int, device: torch.device, heartbeat, steps: int = 1,
             verify: bool = False, balanced: bool = False, warmup: int = 1) -> dict | None:
    """Every launched rank calls this with the same arguments; rank 0 returns the result."""
    groups = build_groups(plan, rank)
    timer = Timer(device, heartbeat)
    rt = Runtime(plan, groups, device, timer, balanced=balanced or getattr(
        plan.strategy, "balanced", False))
    if not groups.in_plan:
        return None
    spec, wl = plan.model, plan.workload
    weights = make_weights(spec, plan.executor.seed)
    gen = torch.Generator().manual_seed(plan.executor.seed + 1)
    prompt = torch.randint(spec.vocab, (wl.batch, wl.input_len), generator=gen).to(device)
    role = _role(rt, weights)
    holds_tokens = role is not None and (not hasattr(role, "stage") or role.stage == 0)
    ttft, tpot, generated = [], [], None
    for rep in range(warmup + steps):
        timed = rep >= warmup
        timer.enabled = timed
        rt.record = verify and rep == warmup + steps - 1
        if rep == warmup:
            maybe_fault(rank)
        with timer.op("barrier", comm=True):
            dist.barrier(group=groups.world)
        t0 = wall(device)
        tok = role.step(prompt if holds_tokens else None, 0) if role else None
        t1 = prefill_end = wall(device)
        out = [tok]
        decode_times = []
        for t in range(1, rt.decode_steps + 1):
            fed = tok[:, None] if tok is not None and holds_tokens else None
            tok = role.step(fed, t) if role else None
            t2 = wall(device)
            decode_times.append(t2 - t1)
            t1 = t2
            out.append(tok)
        if timed:
            ttft.append(prefill_end - t0)
            tpot.extend(decode_times)
        if rank == 0:
            generated = torch.stack(out, dim=1).cpu()            # (b, output_len)
    heartbeat.set(COMPUTE, "gather results")
    mine = {"timings": timer.records(), "records": rt.records, "trace": timer.trace,
            "role": groups.info.role}
    gathered = [None] * plan.world_size if rank == 0 else None
    with timer.op("gather_results", comm=True):
        dist.gather_object(mine, gathered, dst=0, group=groups.world)
    if rank != 0:
        return None
    result = {"ttft_s": ttft, "tpot_s": tpot,
              "per_rank_timings": [g["timings"] for g in gathered],
              "pool_size": rt.pool_size, "microbatches": len(rt.mb_rows),
              "balanced": rt.balanced}
    if rt.pool_size and device.type == "cpu":
        base = [iv[1:] for g in gathered if g["role"] == "base" for iv in g["trace"]
                if iv[0] == "ffn"]
        pool = [iv[1:] for g in gathered if g["role"] == "pool" for iv in g["trace"]
                if iv[0] == "attention"]
        result["overlap"] = overlap(pool, base)
    if verify:
        from executor.reference import verify as check
        merged = {}
        for g in gathered:
            merged.update(g["records"])
        got = _assemble(merged, spec.layers, rt.decode_steps)     # fp32, on the CPU
        got = {"logits": got["logits"].to(device), "attn": [a.to(device) for a in got["attn"]]}
        result["verify"] = check(spec, weights, rt.dtype, plan.executor.dtype, prompt,
                                 generated.to(device), got)
    return result
