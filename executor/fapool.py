"""FA Pool base ranks: embedding, QKV / output projections, FFN and LM head, tensor
parallel over the base group; attention on the base itself below the threshold (heads split
over TP ranks) or on the pool at or above it (executor.pool), and the pool ranks' loop.

Overlap (paper 1.4): with >= 2 micro-batches the root posts every micro-batch's attention
to the pool (isend / async broadcast / irecv) before waiting for the first, so the pool's
attention of micro-batch j+1 runs while the base computes the FFN of micro-batch j; and it
submits micro-batch j's next layer as soon as j's FFN is done (BaseRank.step), which is the
per-micro-batch flow planner.sim.fapool simulates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from executor import attention
from executor.model import lm_head
from executor.parallel import (assemble_kv, embed_timed, ffn_block, out_proj, qkv,
                               residual, shard_layer, tp_shard)
from executor.pool import KVCache, PoolClient, PoolWorker
from executor.runtime import Runtime


class TPRank:
    """A rank of a TP group running a contiguous range of layers (FA Pool base: all of
    them; static: its stage's).  Shared by the FA Pool base and the static baseline."""

    def __init__(self, rt: Runtime, weights, layers: range, ranks: tuple, group):
        self.rt, self.layers, self.ranks, self.group = rt, layers, ranks, group
        self.tp = len(ranks)
        self.shard = tp_shard(rt.spec, self.tp, ranks.index(rt.groups.rank))
        self.weights = weights.to(rt.dtype, rt.device)
        self.lw = {i: shard_layer(self.weights.layers[i], rt.spec, self.shard) for i in layers}
        self.link = rt.link(ranks)
        self.cache = {}

    def attend_local(self, layer: int, j: int, q, k, v, step: int):
        """Attention of this rank's heads with the K/V cache kept here."""
        spec, tm = self.rt.spec, self.rt.timer
        b, s = q.shape[:2]
        params = dict(batch=b, q_len=s, heads=q.shape[2], kv_heads=k.shape[2],
                      head_dim=spec.head_dim, causal=True, dtype_bytes=q.element_size())
        if step == 0:
            if self.rt.decode_steps > 0:
                self.cache[(layer, j)] = KVCache(k, v, s + self.rt.decode_steps)
            with tm.op("attention", kv_len=s, **params):
                return attention.causal_block(q, k, v)
        cache = self.cache[(layer, j)]
        cache.append(k, v)
        with tm.op("attention", kv_len=cache.len, **params):
            return attention.decode_full(q, cache.k, cache.v, cache.len)

    def post_attention(self, layer: int, j: int, x, o, step: int):
        """x + out_proj(o), then the FFN block; o (b, s, h_local, d)."""
        lw = self.lw[layer]
        y = out_proj(o, lw, self.group, self.tp, self.rt.timer, self.link)
        self.rt.keep(("attn", layer, step), y)
        return ffn_block(residual(x, y, self.rt.timer), lw, self.rt.spec, self.group, self.tp,
                         self.rt.timer, self.link)

    def layer_local(self, layer: int, j: int, x, step: int):
        q, k, v = qkv(x, self.lw[layer], self.rt.spec, self.rt.timer)
        return self.post_attention(layer, j, x, self.attend_local(layer, j, q, k, v, step), step)

    def sample(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Greedy next token (b,), identical on every rank of the group (TP index 0's)."""
        self.rt.keep(("logits", step), logits)
        tok = logits[:, -1].argmax(-1)
        if self.tp > 1:
            with self.rt.timer.op("broadcast", comm=True, bytes=tok.numel() * 8,
                                  ranks=self.tp, link=self.link):
                dist.broadcast(tok, src=self.ranks[0], group=self.group)
        return tok


class BaseRank(TPRank):
    def __init__(self, rt: Runtime, weights):
        g = rt.groups
        super().__init__(rt, weights, range(rt.spec.layers), g.tp_ranks, g.tp)
        self.pool = rt.pool_size
        self.root = g.rank == g.tp_ranks[0]
        self.client = PoolClient(rt, self.pool) if self.pool and self.root else None

    def _submit(self, layer: int, j: int, x, step: int):
        """QKV, then attention started: on the pool (async, root posts) or local (done)."""
        spec, tm = self.rt.spec, self.rt.timer
        q, k, v = qkv(x, self.lw[layer], spec, tm)
        if not self.pool:
            out = self.attend_local(layer, j, q, k, v, step)
            return lambda: out
        hl, kvl = q.shape[2], k.shape[2]
        if self.tp > 1:   # the root collects every rank's heads for the pool
            packed = torch.cat([q, k, v], dim=2).contiguous()     # (b, s, hl + 2 kvl, d)
            bufs = [torch.empty_like(packed) for _ in range(self.tp)] if self.root else None
            with tm.op("gather", comm=True, bytes=packed.numel() * packed.element_size(),
                       ranks=self.tp, link=self.link):
                dist.gather(packed, bufs, dst=self.ranks[0], group=self.group)
            if not self.root:
                return None
            parts = [t.split([hl, kvl, kvl], dim=2) for t in bufs]
            q = torch.cat([p[0] for p in parts], dim=2)
            k = assemble_kv([p[1] for p in parts], spec, self.tp)
            v = assemble_kv([p[2] for p in parts], spec, self.tp)
        if step == 0:
            return self.client.prefill(layer, j, q, k, v)
        return self.client.decode(step, layer, j, q, k, v)

    def _finish(self, waiter, x: torch.Tensor):
        """This rank's heads of the attention output, (b, s, h_local, d); x (b, s, hidden)
        is the layer's input."""
        if not self.pool or self.tp == 1:
            return waiter()
        tm = self.rt.timer
        out = x.new_empty(x.shape[0], x.shape[1], self.rt.spec.heads // self.tp,
                          self.rt.spec.head_dim)
        chunks = ([c.contiguous() for c in waiter().chunk(self.tp, dim=2)]
                  if self.root else None)
        with tm.op("scatter", comm=True, bytes=out.numel() * out.element_size(),
                   ranks=self.tp, link=self.link):
            dist.scatter(out, chunks, src=self.ranks[0], group=self.group)
        return out

    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """One prefill (step 0, tokens (b, s)) or decode step (tokens (b, 1)); returns the
        next token of every sequence, (b,)."""
        rt = self.rt
        spec = rt.spec
        xs = [embed_timed(tokens[r.start:r.stop], self.weights, rt.timer)
              for r in rt.mb_rows]
        # Software pipeline over micro-batches: as soon as micro-batch j's FFN of layer L is
        # done, its attention of layer L+1 is submitted, before micro-batch j+1's FFN of
        # layer L, so the pool is not left idle until the whole layer is done.  The pool
        # serves requests in (layer, micro-batch) order, which this order keeps.
        last = self.layers[-1]
        waits = [self._submit(self.layers[0], j, x, step) for j, x in enumerate(xs)]
        for layer in self.layers:
            for j, x in enumerate(xs):
                xs[j] = self.post_attention(layer, j, x, self._finish(waits[j], x), step)
                if layer != last:
                    waits[j] = self._submit(layer + 1, j, xs[j], step)
        x = rt.head_input(torch.cat(xs))                            # (b, s or 1, hidden)
        with rt.timer.op("lm_head", tokens=x.shape[0] * x.shape[1], hidden=spec.hidden,
                         vocab=spec.vocab):
            logits = lm_head(x, self.weights, spec)                 # (b, s or 1, vocab)
        return self.sample(logits, step)


class PoolRank:
    """A pool rank: serves the root's attention requests in the same order it posts them."""

    def __init__(self, rt: Runtime, index: int):
        self.rt, self.index = rt, index
        self.worker = None

    def step(self, tokens, step: int):
        rt = self.rt
        if step == 0:
            self.worker = PoolWorker(rt, rt.pool_size, self.index)
        for layer in range(rt.spec.layers):
            for j in range(len(rt.mb_rows)):
                if step == 0:
                    self.worker.prefill(layer, j)
                else:
                    self.worker.decode(step, layer, j)
        return None
