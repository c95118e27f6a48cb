"""What every rank knows about the run it is part of: plan, groups, device, timer, and the
schedule of each step (planner.schedule), which all ranks derive alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from executor.groups import Groups
from planner.plan import Plan
from planner.schedule import Schedule, build_schedule, microbatch_rows
from planner.strategy import FAPoolStrategy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Runtime:
    plan: Plan
    groups: Groups
    device: torch.device
    timer: object
    record: bool = False                 # keep logits / attention outputs for --verify
    records: dict = field(default_factory=dict)

    @property
    def spec(self):
        return self.plan.model

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.plan.executor.dtype]

    @property
    def decode_steps(self) -> int:
        """The first output token comes from prefill; each further one is a decode step."""
        return self.plan.workload.output_len - 1

    @property
    def rows(self) -> tuple:
        """[start, end) rows of every prefill micro-batch: the plan's count, dealt evenly
        (planner.schedule.microbatch_rows)."""
        return tuple(microbatch_rows(self.plan.workload.batch,
                                     self.plan.strategy.microbatches or 1))

    @property
    def decode_rows(self) -> tuple:
        """The same for decode: the plan's decode count (its prefill one if unset)."""
        s = self.plan.strategy
        return tuple(microbatch_rows(self.plan.workload.batch,
                                     s.decode_microbatches or s.microbatches or 1))

    def rows_at(self, step: int) -> tuple:
        return self.rows if step == 0 else self.decode_rows

    @property
    def pool_size(self) -> int:
        """Pool GPUs activated for this workload's prompt length (paper 1.3); the decode
        steps of the request keep the pool chosen at prefill."""
        s = self.plan.strategy
        return s.pool_size(self.plan.workload.input_len) if isinstance(s, FAPoolStrategy) else 0

    def schedule(self, step: int) -> Schedule:
        """The program of prefill (step 0) or decode step `step` for every rank."""
        return build_schedule(self.plan.layout, self.rows_at(step),
                              self.plan.workload.input_len, step,
                              self.pool_size, self.record)

    def link(self, ranks) -> str:
        c = self.plan.cluster
        nodes = {c.node_of(r) for r in ranks}
        return c.intra_link if len(nodes) <= 1 else c.inter_link

    def keep(self, key: tuple, t: torch.Tensor) -> None:
        """Record a tensor for --verify (list per key, in call order)."""
        if self.record:
            self.records.setdefault(key, []).append(t.detach().float().cpu())
