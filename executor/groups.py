"""Process groups, created once at start-up by every rank in the same order.

torch.distributed.new_group must be called by every process of the default group, even
those not in the new group, in the same order; so every rank walks the same list here.
Groups are looked up by their member ranks, as the schedule (planner.schedule) names them:
each TP group (FA Pool's base, each static stage) and, for every pool size the plan can
activate and every base lane i, the broadcast group (base lane i,) + the pool's ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

from planner.layout import RankInfo
from planner.plan import Plan
from planner.strategy import FAPoolStrategy


@dataclass
class Groups:
    rank: int
    info: RankInfo | None            # None: this process is beyond the plan's world size
    world: object                    # ranks [0, plan.world_size)
    by_ranks: dict = field(default_factory=dict)   # member ranks (tuple) -> group

    @property
    def in_plan(self) -> bool:
        return self.info is not None


def group_members(plan: Plan) -> list:
    """Every group the plan's schedules use, in creation order."""
    layout, s = plan.layout, plan.strategy
    if not isinstance(s, FAPoolStrategy):
        return [tuple(layout.stage_ranks(i)) for i in range(s.pp)]
    base, pool = tuple(layout.base_ranks), tuple(layout.pool_ranks)
    out = [base]
    for size in plan.pool_sizes():
        out += [(b,) + pool[:size] for b in base]
    return out


def build_groups(plan: Plan, rank: int) -> Groups:
    """Every rank calls this with the same plan; group creation order is fixed."""
    info = plan.layout.ranks[rank] if rank < plan.world_size else None
    groups = Groups(rank, info, dist.new_group(list(range(plan.world_size))))
    for members in group_members(plan):
        g = dist.new_group(list(members))
        groups.by_ranks.setdefault(members, g)
    return groups
