"""Cases (plans) on every rank: build roles, warm up, time K requests (several plans'
requests alternating), gather timings and verify records to rank 0, which verifies."""

from __future__ import annotations

import dataclasses
import os
import time

import torch
import torch.distributed as dist

from executor.groups import build_groups
from executor.measure import COMPUTE, Timer, overlap, wall
from executor.model import make_weights
from executor.program import RankProgram, Recorder
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


def _in_schedule(rt: Runtime) -> bool:
    """Whether this rank runs anything: pool ranks beyond the activated pool idle."""
    info = rt.groups.info
    return info is not None and (info.role != "pool" or info.index < rt.pool_size)


def _assemble(records: dict, layers: int, steps: int) -> dict:
    """{("attn", layer, step): [per micro-batch]} -> {"logits": (b, n, V), "attn": [...]}."""
    def joined(prefix):
        return torch.cat([torch.cat(records[prefix + (t,)], dim=0) for t in range(steps + 1)],
                         dim=1)
    return {"logits": joined(("logits",)), "attn": [joined(("attn", i)) for i in range(layers)]}


class Case:
    """One plan on this rank, built once and then run one request at a time, so several
    cases can alternate request by request (run_cases).  Every launched rank builds the
    same cases in the same order (process groups are created collectively)."""

    def __init__(self, plan: Plan, rank: int, device: torch.device, heartbeat,
                 verify: bool = False, balanced: bool = False, warmup: int = 1,
                 steps: int = 1):
        self.plan, self.rank, self.device, self.heartbeat = plan, rank, device, heartbeat
        self.verify, self.warmup, self.steps = verify, warmup, steps
        if balanced and isinstance(plan.strategy, FAPoolStrategy):
            plan = dataclasses.replace(plan, strategy=dataclasses.replace(plan.strategy,
                                                                          balanced=True))
            self.plan = plan
        self.groups = build_groups(plan, rank)
        self.timer = Timer(device, heartbeat)
        self.recorder = Recorder()
        self.rt = Runtime(plan, self.groups, device, self.timer)
        self.ttft, self.tpot, self.generated = [], [], None
        self.ops: list = []                      # per step: the recorder's rows
        self.spans: list = []                    # per step: the recorder's spans
        if not self.groups.in_plan:
            return
        spec, wl = plan.model, plan.workload
        self.weights = make_weights(spec, plan.executor.seed)
        gen = torch.Generator().manual_seed(plan.executor.seed + 1)
        self.prompt = torch.randint(spec.vocab, (wl.batch, wl.input_len),
                                    generator=gen).to(device)                # (b, n)
        self.role = (RankProgram(self.rt, self.weights, self.groups, self.recorder)
                     if _in_schedule(self.rt) else None)
        info = self.groups.info
        # ranks that embed the tokens: FA Pool's base, static stage 0
        self.holds_tokens = info.role == "base" or (info.role == "stage" and info.stage == 0)

    def _step(self, tokens, step: int):
        """One step of this rank's program; the recorder's rows kept per step."""
        if self.role is None:
            return None
        self.recorder.rows, self.recorder.spans = [], []
        out = self.role.run(self.rt.schedule(step), tokens)
        if self.recorder.enabled:
            self.ops.append(self.recorder.rows)
        if self.recorder.timeline:
            self.spans.append(self.recorder.spans)
        return out

    def request(self, rep: int, record_ops: bool = False, timeline: bool = False) -> None:
        """Request rep (warm-up while rep < warmup): prefill, then decode_steps steps.
        record_ops: the recorder writes down every op of this request (op-sequence test);
        timeline: and when each ran (predicted-vs-measured traces)."""
        if not self.groups.in_plan:
            return
        rt, timer, device = self.rt, self.timer, self.device
        timed = rep >= self.warmup
        timer.enabled = timed
        rt.record = self.verify and rep == self.warmup + self.steps - 1
        self.recorder.enabled, self.recorder.timeline = record_ops, timeline
        if rep == self.warmup:
            maybe_fault(self.rank)
        with timer.op("barrier", comm=True):
            dist.barrier(group=self.groups.world)
        t0 = wall(device)
        tok = self._step(self.prompt if self.holds_tokens else None, 0)
        t1 = prefill_end = wall(device)
        out = [tok]
        decode_times = []
        for t in range(1, rt.decode_steps + 1):
            fed = tok[:, None] if tok is not None and self.holds_tokens else None
            tok = self._step(fed, t)
            t2 = wall(device)
            decode_times.append(t2 - t1)
            t1 = t2
            out.append(tok)
        if timed:
            self.ttft.append(prefill_end - t0)
            self.tpot.extend(decode_times)
        if self.rank == 0:
            self.generated = torch.stack(out, dim=1).cpu()               # (b, output_len)

    def finish(self) -> dict | None:
        """Gather every rank's timings (and verify records) to rank 0, which returns the
        result; the other ranks return None."""
        if not self.groups.in_plan:
            return None
        plan, rt, timer, spec = self.plan, self.rt, self.timer, self.plan.model
        self.heartbeat.set(COMPUTE, "gather results")
        mine = {"timings": timer.records(), "records": rt.records, "trace": timer.trace,
                "role": self.groups.info.role, "ops": self.ops, "spans": self.spans}
        gathered = [None] * plan.world_size if self.rank == 0 else None
        with timer.op("gather_results", comm=True):
            dist.gather_object(mine, gathered, dst=0, group=self.groups.world)
        if self.rank != 0:
            return None
        result = {"ttft_s": self.ttft, "tpot_s": self.tpot,
                  "per_rank_timings": [g["timings"] for g in gathered],
                  "pool_size": rt.pool_size, "microbatch_rows": [b - a for a, b in rt.rows],
                  "decode_microbatch_rows": [b - a for a, b in rt.decode_rows],
                  "balanced": bool(getattr(plan.strategy, "balanced", False)),
                  "ops_per_rank": [g["ops"] for g in gathered],
                  "timeline_per_rank": [g["spans"] for g in gathered]}
        if rt.pool_size and self.device.type == "cpu":
            base = [iv[1:] for g in gathered if g["role"] == "base" for iv in g["trace"]
                    if iv[0] == "ffn"]
            pool = [iv[1:] for g in gathered if g["role"] == "pool" for iv in g["trace"]
                    if iv[0] == "attention"]
            result["overlap"] = overlap(pool, base)
        if self.verify:
            from executor.reference import verify as check
            merged = {}
            for g in gathered:
                merged.update(g["records"])
            got = _assemble(merged, spec.layers, rt.decode_steps)     # fp32, on the CPU
            got = {"logits": got["logits"].to(self.device),
                   "attn": [a.to(self.device) for a in got["attn"]]}
            result["verify"] = check(spec, self.weights, rt.dtype, plan.executor.dtype,
                                     self.prompt, self.generated.to(self.device), got)
        return result


def run_cases(plans: list, rank: int, device: torch.device, heartbeat, steps: int = 1,
              verify: bool = False, balanced: bool = False, warmup: int = 1,
              record_ops: bool = False, timeline: bool = False) -> list:
    """Every launched rank calls this with the same arguments.  The plans' requests
    alternate (request r of every plan, then request r + 1), so a machine that slows down
    for a while slows every plan alike instead of whichever ran then.  Rank 0 returns the
    results in plan order, the other ranks Nones."""
    cases = []
    for plan in plans:
        torch.manual_seed(plan.executor.seed)
        cases.append(Case(plan, rank, device, heartbeat, verify, balanced, warmup, steps))
    for rep in range(warmup + steps):
        for case in cases:       # the recorder writes down the last request
            last = rep == warmup + steps - 1
            case.request(rep, record_ops and last, timeline and last)
    return [case.finish() for case in cases]

