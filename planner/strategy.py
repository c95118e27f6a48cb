"""Parallel strategies: static TP x PP, and FA Pool (base TP group + attention pool)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from calibration.errors import InputError, positive_int, require

DECODE_KV_PLACEMENTS = ("split-batch", "split-seq", "replicated")


@dataclass(frozen=True)
class StaticStrategy:
    """Megatron-style tensor parallel (tp) x pipeline parallel (pp) over micro-batches.

    microbatches: number of micro-batches prefill cuts the batch into (None: chosen so
    activations fit and the pipeline stays full; see planner.memory.choose_microbatches).
    decode_microbatches: decode's (None: planner.simulate.decode_microbatches; every
    decode micro-batch re-reads all weights, so more than the stages only costs).
    """

    tp: int = 8
    pp: int = 2
    microbatches: int | None = None
    decode_microbatches: int | None = None
    kind: str = "static"

    def __post_init__(self):
        positive_int(self.tp, "strategy.tp")
        positive_int(self.pp, "strategy.pp")
        check_microbatches(self)

    def gpus(self, seq_len: int) -> int:
        return self.tp * self.pp

    def pool_size(self, seq_len: int) -> int:
        return 0

    @property
    def max_gpus(self) -> int:
        return self.tp * self.pp

    def describe(self) -> str:
        return f"static TP={self.tp} PP={self.pp}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FAPoolStrategy:
    """FA Pool (paper section 1.2-1.4): a base TP group runs everything but attention;
    at seq_len >= threshold a pool of GPUs computes attention, Q split along the sequence in
    blocks of ceil(seq / pool), K/V replicated to every pool GPU, outputs tree-gathered.

    Pool rule (paper 1.3): pool = 0 if seq < threshold else min(ceil(seq / tokens_per_pool_gpu),
    max_pool), unless pool_gpus fixes it.  decode_kv: where the pool keeps the K/V cache for
    decode: split-batch (each pool GPU owns whole sequences), split-seq (each owns a slice of
    every sequence; partial outputs merged by log-sum-exp), replicated (every pool GPU keeps it
    all, as the paper's "KV cache sharing: replicated" reads).
    balanced: head-tail causal load balancing of the Q blocks (the executor measures both).
    microbatches / decode_microbatches: prefill's and decode's micro-batch counts (None:
    chosen; see StaticStrategy).
    """

    base_tp: int = 8
    threshold: int = 4096
    tokens_per_pool_gpu: int = 512
    max_pool: int = 32
    pool_gpus: int | None = None
    decode_kv: str = "split-batch"
    microbatches: int | None = None
    decode_microbatches: int | None = None
    balanced: bool = False
    kind: str = "fapool"

    def __post_init__(self):
        positive_int(self.base_tp, "strategy.base_tp")
        positive_int(self.threshold, "strategy.threshold")
        positive_int(self.tokens_per_pool_gpu, "strategy.tokens_per_pool_gpu")
        positive_int(self.max_pool, "strategy.max_pool")
        if self.pool_gpus is not None:
            positive_int(self.pool_gpus, "strategy.pool_gpus")
        check_microbatches(self)
        require(self.decode_kv in DECODE_KV_PLACEMENTS, "strategy.decode_kv",
                f"must be one of {DECODE_KV_PLACEMENTS}, got {self.decode_kv!r}")

    def pool_size(self, seq_len: int) -> int:
        """GPUs the resource manager activates for this sequence length (paper 1.3)."""
        if seq_len < self.threshold:
            return 0
        if self.pool_gpus is not None:
            return self.pool_gpus
        return min(math.ceil(seq_len / self.tokens_per_pool_gpu), self.max_pool)

    @property
    def max_pool_size(self) -> int:
        return self.pool_gpus if self.pool_gpus is not None else self.max_pool

    def gpus(self, seq_len: int) -> int:
        return self.base_tp + self.pool_size(seq_len)

    @property
    def max_gpus(self) -> int:
        return self.base_tp + self.max_pool_size

    def describe(self) -> str:
        rule = (f"pool={self.pool_gpus}" if self.pool_gpus is not None
                else f"pool=min(ceil(seq/{self.tokens_per_pool_gpu}),{self.max_pool})")
        return f"FA Pool base TP={self.base_tp} threshold={self.threshold} {rule}"

    def to_dict(self) -> dict:
        return asdict(self)


Strategy = StaticStrategy | FAPoolStrategy


def check_microbatches(s) -> None:
    for name in ("microbatches", "decode_microbatches"):
        if getattr(s, name) is not None:
            positive_int(getattr(s, name), f"strategy.{name}")


def strategy_from_dict(raw: dict) -> Strategy:
    require(isinstance(raw, dict), "strategy", "must be a mapping")
    kind = raw.get("kind")
    cls = {"static": StaticStrategy, "fapool": FAPoolStrategy}.get(kind)
    if cls is None:
        raise InputError("strategy.kind", f"must be 'static' or 'fapool', got {kind!r}")
    extra = set(raw) - set(cls.__dataclass_fields__)
    require(not extra, "strategy", f"unknown fields {sorted(extra)}")
    return cls(**raw)
