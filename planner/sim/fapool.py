"""FA Pool: a base TP group runs embedding, norms, projections, FFN and LM head; at
seq >= threshold a pool of P GPUs computes attention (paper sections 1.2-1.5).

Prefill, per layer and micro-batch: base computes Q/K/V -> K/V broadcast to every pool GPU
and Q scattered in blocks of b = ceil(seq / P) (paper 1.4; the last block may be short or
empty) -> each pool GPU runs causal attention of its block against keys [0, block end)
(bottom-right aligned) -> outputs return to the base by a tree gather (paper 1.5) -> base
continues.  While the pool works on micro-batch m the base is free for m+1's projections
and m-1's FFN: the overlap of paper 1.5 falls out of the resources.

Decode (one new token per sequence): the K/V cache stays on the pool.
  split-batch / replicated: the batch's sequences are dealt to pool GPUs; each attends its
      sequences' whole cache; q/k/v scattered, outputs gathered.
  split-seq: every pool GPU holds a 1/P slice of every sequence's cache; q broadcast,
      partial outputs with their log-sum-exp merged by a tree reduce (fp32).
"""

from __future__ import annotations

import math
from functools import lru_cache

from planner.costs import CostModel
from planner.layout import Layout
from planner.sim.engine import Machine, Unit
from planner.sim.ops import embedding_op, layer_ops, lm_head_ops


def fapool_units(layout: Layout, pool: int) -> dict:
    base = layout.base_ranks
    units = {"base": Unit("base", "base", base, layout.nodes_of(base))}
    for i, rank in enumerate(layout.pool_ranks[:pool]):
        units[f"pool{i}"] = Unit(f"pool{i}", "pool", (rank,), layout.nodes_of((rank,)),
                                 port="nvl:pool")
    return units


def query_blocks(seq: int, pool: int, balanced: bool) -> list:
    """Per pool GPU, the list of (q_start, q_end) query rows it owns.

    Plain: P contiguous blocks of ceil(seq / P) (paper 1.4), empty ones at the tail.
    Balanced (head-tail): 2P chunks, GPU i takes chunk i and chunk 2P-1-i, so every GPU
    gets about the same causal work (the zig-zag split of ring-attention implementations).
    """
    if not balanced:
        b = math.ceil(seq / pool)
        return [[(min(i * b, seq), min((i + 1) * b, seq))] for i in range(pool)]
    c = math.ceil(seq / (2 * pool))
    chunk = [(min(j * c, seq), min((j + 1) * c, seq)) for j in range(2 * pool)]
    return [[chunk[i], chunk[2 * pool - 1 - i]] for i in range(pool)]


def deal(total: int, parts: int) -> list:
    """total items dealt to parts as evenly as possible (first ones get the extra)."""
    per, extra = divmod(total, parts)
    return [per + (1 if i < extra else 0) for i in range(parts)]


class FAPoolProgram:
    def __init__(self, cm: CostModel, layout: Layout, pool: int):
        self.cm, self.layout, self.pool = cm, layout, pool
        self.model = layout.model
        self.strategy = layout.strategy
        self.tp = self.strategy.base_tp
        self.base = layout.base_ranks
        self.pool_ranks = layout.pool_ranks[:pool]
        self._ops = lru_cache(maxsize=None)(self._build)

    def _pool_prefill(self, seqs: int, seq: int):
        m, cm, d = self.model, self.cm, self.model.dtype_bytes
        everyone = self.base + self.pool_ranks
        kv = seqs * seq * 2 * m.kv_width * d
        q = seqs * seq * m.q_width * d
        # the base packs each pool GPU's Q block and K/V into contiguous send buffers, and
        # writes the gathered blocks back in sequence order (read + write each)
        pack = (cm.memory_op("pack_qkv", 2 * (q + kv), "copy"),)
        unpack = (cm.memory_op("unpack_attention", 2 * q, "copy"),)
        send = (cm.collective("kv_broadcast", "broadcast", kv, everyone),
                cm.collective("q_scatter", "scatter", q, everyone))
        attn = [cm.sum_ops("pool_attention", (
            cm.attention("pool_attention", seqs, end - start, end, m.heads, m.kv_heads,
                         m.head_dim, causal=True) for start, end in blocks if end > start))
            for blocks in query_blocks(seq, self.pool, self.strategy.balanced)]
        back = (cm.collective("tree_gather", "gather", q, everyone),)
        return pack, send, attn, back, unpack

    def _pool_decode(self, seqs: int, context: int):
        m, cm, d = self.model, self.cm, self.model.dtype_bytes
        everyone = self.base + self.pool_ranks
        q = seqs * m.q_width * d
        kv_new = seqs * 2 * m.kv_width * d
        pack = (cm.memory_op("pack_qkv", 2 * (q + kv_new), "copy"),)   # new token's q/k/v
        if self.strategy.decode_kv == "split-seq":
            send = (cm.collective("q_broadcast", "broadcast", q, everyone),
                    cm.collective("kv_append", "scatter", kv_new, everyone))
            slices = deal(context, self.pool)
            attn = [cm.attention("pool_attention", seqs, 1, s, m.heads, m.kv_heads, m.head_dim,
                                 causal=False) for s in slices]
            # partial outputs + log-sum-exp per head, fp32, merged up a tree
            merged = seqs * (m.q_width + m.heads) * 4
            back = (cm.collective("lse_merge", "reduce", merged, everyone),)
        else:
            send = (cm.collective("qkv_scatter", "scatter", q + kv_new, everyone),)
            attn = [cm.attention("pool_attention", n, 1, context, m.heads, m.kv_heads,
                                 m.head_dim, causal=False) for n in deal(seqs, self.pool)]
            back = (cm.collective("tree_gather", "gather", q, everyone),)
        return pack, send, attn, back, ()

    def _build(self, seqs: int, q_len: int, kv_len: int):
        m, cm = self.model, self.cm
        layer = layer_ops(cm, m, self.tp, self.base, seqs, q_len, kv_len)
        pool = None
        if self.pool:
            pool = (self._pool_prefill(seqs, q_len) if q_len > 1
                    else self._pool_decode(seqs, kv_len))
        return (embedding_op(cm, m, self.tp, self.base, seqs * q_len), layer, pool,
                lm_head_ops(cm, m, self.tp, self.base, seqs))

    def microbatch(self, machine: Machine, mb: int, seqs: int, q_len: int, kv_len: int,
                   done: list):
        """Process: micro-batch mb through every layer; appends its finish time to done."""
        embed, layer, pool, head = self._ops(seqs, q_len, kv_len)
        env = machine.env
        pool_units = [f"pool{i}" for i in range(self.pool)]

        def run(ops, units, layer=-1):
            return machine.run_sequence(ops, units, mb, layer)

        yield from run(embed, ["base"])
        for index in range(self.model.layers):
            yield from run(layer.pre_attention, ["base"], index)
            if pool is None:
                yield from run((layer.attention,), ["base"], index)
            else:
                pack, send, attn, back, unpack = pool
                yield from run(pack, ["base"], index)
                # The pool serves one (layer, micro-batch) request at a time, in order: its
                # GPUs receive, compute and send back one after the other (blocking p2p,
                # as executor.pool does), so no transfer overlaps a pool GPU's attention.
                with machine.lock("pool").request(priority=mb) as serving:
                    yield serving
                    yield from run(send, ["base"] + pool_units, index)
                    yield env.all_of([env.process(run((op,), [u], index))
                                      for op, u in zip(attn, pool_units)])
                    yield from run(back, ["base"] + pool_units, index)
                yield from run(unpack, ["base"], index)
            yield from run(layer.post_attention, ["base"], index)
        yield from run(head, ["base"])
        done.append(env.now)
