"""Layout: all parallel-degree bookkeeping in one validated place (cf. torchtitan ParallelDims).

Ranks are numbered 0..N-1 and packed onto nodes in order (rank r on node r // gpus_per_node).
Static: stage s owns ranks [s*tp, (s+1)*tp) as its TP group.
FA Pool: base ranks [0, base_tp), pool ranks [base_tp, base_tp + max_pool); a pool of P
activated GPUs is the first P pool ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.errors import InputError, require
from planner.cluster import ClusterSpec
from planner.model import ModelSpec
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy


@dataclass(frozen=True)
class RankInfo:
    rank: int
    role: str          # "base" | "pool" | "stage"
    node: int
    local_rank: int
    stage: int = 0     # pipeline stage (static), 0 for FA Pool
    index: int = 0     # rank within its group (TP rank or pool index)


@dataclass(frozen=True)
class Layout:
    model: ModelSpec
    cluster: ClusterSpec
    strategy: Strategy
    ranks: tuple       # RankInfo for every rank the plan may use (FA Pool: largest pool)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def group(self, role: str, stage: int = 0) -> tuple:
        return tuple(r.rank for r in self.ranks if r.role == role and r.stage == stage)

    def stage_ranks(self, stage: int) -> tuple:
        return self.group("stage", stage)

    @property
    def base_ranks(self) -> tuple:
        return self.group("base")

    @property
    def pool_ranks(self) -> tuple:
        return self.group("pool")

    def nodes_of(self, ranks) -> tuple:
        return tuple(sorted({self.cluster.node_of(r) for r in ranks}))

    def stage_layers(self, stage: int) -> range:
        """Layers of a pipeline stage: as even as possible, earlier stages take the extra."""
        pp = self.strategy.pp if isinstance(self.strategy, StaticStrategy) else 1
        per, extra = divmod(self.model.layers, pp)
        start = stage * per + min(stage, extra)
        return range(start, start + per + (1 if stage < extra else 0))


def check_tp(model: ModelSpec, tp: int, field: str) -> None:
    """Megatron TP: heads and the FFN split evenly; K/V heads split or are replicated."""
    require(model.heads % tp == 0, field, f"{tp} does not divide heads ({model.heads})")
    require(model.ffn % tp == 0, field, f"{tp} does not divide ffn ({model.ffn})")
    require(model.kv_heads % tp == 0 or tp % model.kv_heads == 0, field,
            f"{tp} and kv_heads ({model.kv_heads}) must divide one another")


def build_layout(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy) -> Layout:
    """Validate the strategy against model and cluster and assign every rank its role."""
    gpn = cluster.gpus_per_node
    # before any rank is built: a strategy wider than the cluster is refused in bounded time
    require(strategy.max_gpus <= cluster.total_gpus, "gpus",
            f"{strategy.describe()} needs {strategy.max_gpus} GPUs, cluster {cluster.name} "
            f"has {cluster.total_gpus} ({cluster.nodes} nodes x {gpn})")
    ranks = []

    def add(role, stage, index):
        rank = len(ranks)
        ranks.append(RankInfo(rank, role, rank // gpn, rank % gpn, stage, index))

    if isinstance(strategy, StaticStrategy):
        check_tp(model, strategy.tp, "strategy.tp")
        require(strategy.pp <= model.layers, "strategy.pp",
                f"{strategy.pp} stages for {model.layers} layers")
        for stage in range(strategy.pp):
            for index in range(strategy.tp):
                add("stage", stage, index)
    elif isinstance(strategy, FAPoolStrategy):
        check_tp(model, strategy.base_tp, "strategy.base_tp")
        for index in range(strategy.base_tp):
            add("base", 0, index)
        for index in range(strategy.max_pool_size):
            add("pool", 0, index)
    else:  # pragma: no cover - strategy_from_dict rejects unknown kinds
        raise InputError("strategy", f"unknown strategy {strategy!r}")
    return Layout(model, cluster, strategy, tuple(ranks))
