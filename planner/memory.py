"""Memory per GPU and per role: weights, K/V cache, activations, workspace.

Sizes in bytes.  Weights follow Megatron TP sharding (vocab-parallel embedding and LM head);
K/V heads are split across TP ranks, replicated when TP exceeds the K/V head count.
FA Pool keeps the decode K/V cache on the pool (decode_kv placement) and, during prefill,
holds one micro-batch's K/V of one layer replicated on every pool GPU (paper 1.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.model import ModelSpec
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy
from planner.workload import Workload

GIB = 1024 ** 3
# CUDA context, NCCL buffers, allocator slack: 1 GiB plus 5% of capacity (a rule of thumb;
# vLLM reserves 10% by default with gpu_memory_utilization=0.9).
WORKSPACE_FIXED = 1 * GIB
WORKSPACE_FRACTION = 0.05
MICROBATCHES_IN_FLIGHT = 2   # one computing, one waiting / overlapped


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: float
    kv_cache: float
    activations: float
    workspace: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.workspace

    def to_gb(self) -> dict:
        return {k: round(v / 1e9, 3) for k, v in
                (("weights", self.weights), ("kv_cache", self.kv_cache),
                 ("activations", self.activations), ("workspace", self.workspace),
                 ("total", self.total))}


def workspace(capacity: float) -> float:
    return WORKSPACE_FIXED + WORKSPACE_FRACTION * capacity


def kv_shards(model: ModelSpec, tp: int) -> int:
    """Ways the K/V heads split across TP ranks (replicated beyond kv_heads)."""
    return min(tp, model.kv_heads)


def weights_bytes(model: ModelSpec, tp: int, layers: int, embedding: bool, head: bool) -> float:
    params = layers * model.layer_params / tp
    params += (model.embedding_params / tp if embedding else 0)
    # the LM head: its own matrix, or with tied embeddings a copy only on a stage that does
    # not hold the embedding (Megatron keeps one on the last stage)
    own_head = model.head_params or (0 if embedding else model.embedding_params)
    params += (own_head / tp + model.hidden if head else 0)
    return params * model.weight_bytes


def activation_bytes(model: ModelSpec, tp: int, tokens: int, seqs: int) -> float:
    """Live activations of one micro-batch in one layer on a TP rank: residual, norm output,
    QKV shard, attention output shard, FFN intermediate (and its activation), and fp32
    last-token logits (gpt-fast keeps the same set)."""
    per_token = (3 * model.hidden + (model.q_width + 2 * model.kv_width) / tp
                 + model.q_width / tp + 2 * model.ffn_in_width / tp)
    logits = seqs * model.vocab / tp * 4
    return tokens * per_token * model.dtype_bytes + logits


def pool_kv_bytes(model: ModelSpec, strategy: FAPoolStrategy, wl: Workload, pool: int,
                  context: int | None = None) -> float:
    """K/V cache held by one pool GPU, all layers, at `context` tokens per sequence (by
    default the end of generation)."""
    context = wl.input_len + wl.output_len if context is None else context
    per_token = model.kv_bytes_per_token()
    kept = model.kv_tokens(context)
    if strategy.decode_kv == "split-batch":
        return math.ceil(wl.batch / pool) * kept * per_token
    if strategy.decode_kv == "split-seq":
        return wl.batch * math.ceil(kept / pool) * per_token
    return wl.batch * kept * per_token  # replicated


PHASES = ("prefill", "decode", "both")


def role_memory(model: ModelSpec, strategy: Strategy, wl: Workload, capacity: float,
                microbatches: int, phase: str = "both") -> dict:
    """MemoryBreakdown per role ('base'; 'pool' when a pool is active) for the worst GPU in
    `phase`.  Prefill holds the prompt's K/V and a whole prompt's activations per micro-batch
    in flight; decode the K/V of the full context (input + output) and one token's
    activations per sequence; "both" is the larger of the two, per role."""
    if phase == "both":
        pre = role_memory(model, strategy, wl, capacity, microbatches, "prefill")
        dec = role_memory(model, strategy, wl, capacity, microbatches, "decode")
        return {role: max(pre[role], dec[role], key=lambda m: m.total) for role in pre}
    decoding = phase == "decode"
    if decoding:
        microbatches = decode_microbatches(strategy, wl.batch, wl.input_len)
    mb_seqs = math.ceil(wl.batch / microbatches)
    mb_tokens = mb_seqs * (1 if decoding else wl.input_len)
    context = wl.input_len + wl.output_len if decoding else wl.input_len
    ws = workspace(capacity)
    act = MICROBATCHES_IN_FLIGHT * activation_bytes(model, strategy.tp if isinstance(
        strategy, StaticStrategy) else strategy.base_tp, mb_tokens, mb_seqs)
    if isinstance(strategy, StaticStrategy):
        tp, pp = strategy.tp, strategy.pp
        layers = math.ceil(model.layers / pp)        # the first stages take the extra layer
        worst = max(weights_bytes(model, tp, layers, True, pp == 1),
                    weights_bytes(model, tp, model.layers - (pp - 1) * (model.layers // pp),
                                  pp == 1, True))
        kv = (wl.batch * model.kv_tokens(context) * model.kv_bytes_per_token(layers)
              / kv_shards(model, tp))
        return {"base": MemoryBreakdown(worst, kv, act, ws)}
    tp = strategy.base_tp
    pool = strategy.pool_size(wl.input_len)
    weights = weights_bytes(model, tp, model.layers, True, True)
    if pool == 0:
        kv = (wl.batch * model.kv_tokens(context) * model.kv_bytes_per_token()
              / kv_shards(model, tp))
        return {"base": MemoryBreakdown(weights, kv, act, ws)}
    # Base keeps no K/V cache (the pool does).  A pool GPU: its K/V cache, plus during
    # prefill one layer's replicated K/V of the micro-batches in flight, its Q and O blocks
    # (decode: one query and one output row per sequence).
    block = 1 if decoding else math.ceil(wl.input_len / pool)
    transient = MICROBATCHES_IN_FLIGHT * mb_seqs * (
        (0 if decoding else model.kv_tokens(wl.input_len) * model.kv_bytes_per_token(1))
        + 2 * block * model.q_width * model.dtype_bytes)
    cache = pool_kv_bytes(model, strategy, wl, pool, context)
    pool_mem = MemoryBreakdown(0.0, cache, transient, ws)
    return {"base": MemoryBreakdown(weights, 0.0, act, ws), "pool": pool_mem}


def fits(breakdowns: dict, capacity: float) -> list:
    """Reasons (strings) the plan does not fit; empty when it does."""
    reasons = []
    for role, mem in breakdowns.items():
        if mem.total > capacity:
            reasons.append(
                f"{role} GPU needs {mem.total / 1e9:.1f} GB > {capacity / 1e9:.1f} GB "
                f"(weights {mem.weights / 1e9:.1f}, K/V {mem.kv_cache / 1e9:.1f}, "
                f"activations {mem.activations / 1e9:.1f}, workspace {mem.workspace / 1e9:.1f})")
    return reasons


def choose_microbatches(model: ModelSpec, strategy: Strategy, wl: Workload,
                        capacity: float, phase: str = "both") -> int:
    """The strategy's micro-batch count, or the smallest power of two (at least 2 so that
    pipeline stages / base and pool overlap) whose activations fit; capped at the batch."""
    if strategy.microbatches is not None:
        return min(strategy.microbatches, wl.batch)
    count = min(2 if wl.batch >= 2 else 1, wl.batch)
    if isinstance(strategy, StaticStrategy):
        count = min(max(count, strategy.pp), wl.batch)
    while count < wl.batch:
        if not fits(role_memory(model, strategy, wl, capacity, count, phase), capacity):
            break
        count = min(count * 2, wl.batch)
    return count


def decode_microbatches(strategy: Strategy, batch: int, input_len: int) -> int:
    """Decode's micro-batch count: the strategy's decode_microbatches if set, else one per
    pipeline stage, which is the fewest that keeps every stage busy: each decode
    micro-batch re-reads every weight, so at PP=1 one (the whole batch at once) is the
    fastest.  FA Pool with an active pool: base and pool alternate like two stages, on
    prefill's count (the pool keeps each prefill micro-batch's K/V) or 2."""
    if strategy.decode_microbatches is not None:
        return max(1, min(strategy.decode_microbatches, batch))
    if isinstance(strategy, StaticStrategy):
        stages = strategy.pp
    elif strategy.pool_size(input_len):
        stages = strategy.microbatches or 2
    else:
        stages = 1
    return max(1, min(stages, batch))


def memory_check(model: ModelSpec, strategy: Strategy, wl: Workload, capacity: float,
                 phase: str = "both") -> tuple:
    """(micro-batches, MemoryBreakdown per role, reasons it does not fit) in `phase`: the
    one memory check that simulate, the search and the dashboard share."""
    microbatches = choose_microbatches(model, strategy, wl, capacity, phase)
    breakdowns = role_memory(model, strategy, wl, capacity, microbatches, phase)
    return microbatches, breakdowns, fits(breakdowns, capacity)


def fit_batch(model: ModelSpec, strategy: Strategy, wl: Workload, capacity: float) -> tuple:
    """(largest batch <= wl.batch whose memory fits at wl.input_len, reasons at batch 1)."""
    def reasons(n):
        return memory_check(model, strategy, Workload(n, wl.input_len, wl.output_len),
                            capacity)[2]
    if not reasons(wl.batch):
        return wl.batch, []
    first = reasons(1)
    if first:
        return 0, first
    lo, hi = 1, wl.batch            # fits at lo, not at hi (memory grows with the batch)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if not reasons(mid) else (lo, mid)
    return lo, []
