"""Process groups, created once at start-up by every rank in the same order.

torch.distributed.new_group must be called by every process of the default group, even
those not in the new group, in the same order; so every rank walks the same list here.
Roles come from the plan's layout (planner.layout), never from guesses.
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
    tp: object | None = None         # this rank's TP group (FA Pool base or its static stage)
    tp_ranks: tuple = ()
    pool: dict = field(default_factory=dict)   # pool size P -> group [base root] + P pool ranks
    pool_members: dict = field(default_factory=dict)   # P -> tuple of global ranks
    stage_ranks: list = field(default_factory=list)    # static: TP ranks of every stage

    @property
    def in_plan(self) -> bool:
        return self.info is not None


def build_groups(plan: Plan, rank: int) -> Groups:
    """Every rank calls this with the same plan; group creation order is fixed."""
    layout = plan.layout
    world_ranks = list(range(plan.world_size))
    info = layout.ranks[rank] if rank < plan.world_size else None
    groups = Groups(rank, info, dist.new_group(world_ranks))
    if isinstance(plan.strategy, FAPoolStrategy):
        base = tuple(layout.base_ranks)
        g = dist.new_group(list(base))
        if rank in base:
            groups.tp, groups.tp_ranks = g, base
        pool = layout.pool_ranks
        for size in plan.pool_sizes():
            members = (base[0],) + tuple(pool[:size])
            groups.pool[size] = dist.new_group(list(members))
            groups.pool_members[size] = members
    else:
        for stage in range(plan.strategy.pp):
            ranks = tuple(layout.stage_ranks(stage))
            groups.stage_ranks.append(ranks)
            g = dist.new_group(list(ranks))
            if rank in ranks:
                groups.tp, groups.tp_ranks = g, ranks
    return groups
