"""What every rank knows about the run it is part of: plan, groups, device, timer, and the
deterministic schedule (micro-batch rows, pool size, message tags) all ranks derive alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from executor.groups import Groups
from planner.plan import Plan
from planner.strategy import FAPoolStrategy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def row_ranges(n: int, parts: int) -> list:
    """n rows cut into `parts` ranges of ceil(n / parts); trailing ranges may be short/empty."""
    c = math.ceil(n / parts)
    return [range(min(i * c, n), min((i + 1) * c, n)) for i in range(parts)]


@dataclass
class Runtime:
    plan: Plan
    groups: Groups
    device: torch.device
    timer: object
    balanced: bool = False
    record: bool = False                 # keep logits / attention outputs for --verify
    records: dict = field(default_factory=dict)

    @property
    def spec(self):
        return self.plan.model

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.plan.executor.dtype]

    @property
    def batch(self) -> int:
        return self.plan.workload.batch

    @property
    def seq_len(self) -> int:
        return self.plan.workload.input_len

    @property
    def decode_steps(self) -> int:
        """The first output token comes from prefill; each further one is a decode step."""
        return self.plan.workload.output_len - 1

    @property
    def microbatches(self) -> int:
        m = self.plan.strategy.microbatches or 1
        return min(m, self.batch)

    @cached_property
    def mb_rows(self) -> list:
        """Rows of each non-empty micro-batch; fixed for the run, read per message (tag)."""
        return [r for r in row_ranges(self.batch, self.microbatches) if len(r)]

    @cached_property
    def pool_size(self) -> int:
        """Pool GPUs activated for this workload's prompt length (paper 1.3); the decode
        steps of the request keep the pool (and K/V placement) chosen at prefill."""
        s = self.plan.strategy
        return s.pool_size(self.seq_len) if isinstance(s, FAPoolStrategy) else 0

    def link(self, ranks) -> str:
        c = self.plan.cluster
        nodes = {c.node_of(r) for r in ranks}
        return c.intra_link if len(nodes) <= 1 else c.inter_link

    def tag(self, step: int, layer: int, mb: int, kind: int) -> int:
        """Unique p2p tag per message: (step, layer, micro-batch, kind)."""
        return ((step * self.spec.layers + layer) * len(self.mb_rows) + mb) * 4 + kind

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s, hidden) -> what the LM head needs: every position when --verify compares
        all logits, else only the last one, which samples the next token (gpt-fast)."""
        return x if self.record else x[:, -1:]

    def keep(self, key: tuple, t: torch.Tensor) -> None:
        """Record a tensor for --verify (list per key, in call order)."""
        if self.record:
            self.records.setdefault(key, []).append(t.detach().float().cpu())
