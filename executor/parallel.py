"""Megatron-style tensor parallelism (Shoeybi et al. 2019, section 3), one short function
per module kind: QKV column-parallel by heads, output projection row-parallel + all-reduce,
FFN up/gate column-parallel and down row-parallel + all-reduce.

K/V heads under GQA: split when tp divides kv_heads; otherwise (kv_heads divides tp) each
rank keeps the one K/V head its query heads share (replicated across tp / kv_heads ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from executor.model import LayerWeights, embed, ffn_partial, norm
from planner.model import ModelSpec


@dataclass(frozen=True)
class Shard:
    tp: int
    index: int
    heads: range       # query heads of this rank
    kv_heads: range    # K/V heads those query heads use


def tp_shard(spec: ModelSpec, tp: int, index: int) -> Shard:
    per = spec.heads // tp
    group = spec.heads // spec.kv_heads              # query heads per K/V head
    first, last = index * per, (index + 1) * per - 1
    return Shard(tp, index, range(first, last + 1), range(first // group, last // group + 1))


def _cols(w: torch.Tensor, heads: range, d: int) -> torch.Tensor:
    return w[:, heads.start * d:heads.stop * d].contiguous()


def shard_layer(lw: LayerWeights, spec: ModelSpec, s: Shard) -> LayerWeights:
    d, f = spec.head_dim, spec.ffn // s.tp
    cols = slice(s.index * f, (s.index + 1) * f)
    return LayerWeights(
        norm1=lw.norm1, wq=_cols(lw.wq, s.heads, d), wk=_cols(lw.wk, s.kv_heads, d),
        wv=_cols(lw.wv, s.kv_heads, d),
        wo=lw.wo[s.heads.start * d:s.heads.stop * d].contiguous(), norm2=lw.norm2,
        w_up=lw.w_up[:, cols].contiguous(),
        w_gate=None if lw.w_gate is None else lw.w_gate[:, cols].contiguous(),
        w_down=lw.w_down[cols].contiguous())


def assemble_kv(shards: list, spec: ModelSpec, tp: int) -> torch.Tensor:
    """Full K (or V) (b, s, KV, d) from every TP rank's (b, s, kv_local, d), each head once."""
    parts, have = [], set()
    for i, t in enumerate(shards):
        for j, h in enumerate(tp_shard(spec, tp, i).kv_heads):
            if h not in have:
                have.add(h)
                parts.append(t[:, :, j:j + 1])
    return torch.cat(parts, dim=2)


def all_reduce(t: torch.Tensor, group, size: int, timer, link: str) -> torch.Tensor:
    if size > 1:
        with timer.op("all_reduce", comm=True, bytes=t.numel() * t.element_size(),
                      ranks=size, link=link):
            dist.all_reduce(t, group=group)
    return t


def qkv(x: torch.Tensor, lw: LayerWeights, spec: ModelSpec, timer) -> tuple:
    """Pre-norm and the column-parallel QKV projection of this rank's heads.
    x (b, s, hidden) -> q (b, s, h_local, d), k, v (b, s, kv_local, d)."""
    b, s, _ = x.shape
    d = spec.head_dim
    with timer.op("memory", bytes=2 * x.numel() * x.element_size(), kind="norm"):
        h = norm(x, lw.norm1, spec.norm)
    n = lw.wq.shape[1] + 2 * lw.wk.shape[1]
    with timer.op("gemm", tokens=b * s, k=spec.hidden, n=n, dtype_bytes=x.element_size()):
        q, k, v = h @ lw.wq, h @ lw.wk, h @ lw.wv
    return q.view(b, s, -1, d), k.view(b, s, -1, d), v.view(b, s, -1, d)


def out_proj(o: torch.Tensor, lw: LayerWeights, group, size: int, timer, link: str):
    """Row-parallel output projection: o (b, s, h_local, d) -> (b, s, hidden), summed."""
    b, s = o.shape[:2]
    with timer.op("gemm", tokens=b * s, k=lw.wo.shape[0], n=lw.wo.shape[1],
                  dtype_bytes=o.element_size()):
        y = o.reshape(b, s, -1) @ lw.wo
    return all_reduce(y, group, size, timer, link)


def ffn_block(x: torch.Tensor, lw: LayerWeights, spec: ModelSpec, group, size: int, timer,
              link: str) -> torch.Tensor:
    """x + FFN(Norm2(x)) with the FFN split over the TP group."""
    b, s, _ = x.shape
    with timer.op("memory", bytes=2 * x.numel() * x.element_size(), kind="norm"):
        h = norm(x, lw.norm2, spec.norm)
    # Up (+gate) and down GEMMs timed together: op "ffn" (free parameters in the store).
    with timer.op("ffn", tokens=b * s, hidden=spec.hidden, ffn_shard=lw.w_up.shape[1],
                  activation=spec.activation, dtype_bytes=x.element_size()):
        y = ffn_partial(h, lw.w_up, lw.w_gate, lw.w_down, spec.activation)
    return residual(x, all_reduce(y, group, size, timer, link), timer)


def embed_timed(tokens: torch.Tensor, weights, timer) -> torch.Tensor:
    """Embedding lookup (b, s) -> (b, s, hidden), timed as a memory op (rows read, written:
    planner.sim.ops.embedding_op)."""
    table = weights.embed                                    # (vocab, hidden)
    with timer.op("memory", bytes=2 * tokens.numel() * table.shape[1] * table.element_size(),
                  kind="copy"):
        return embed(tokens, weights)


def residual(x: torch.Tensor, y: torch.Tensor, timer) -> torch.Tensor:
    """x + y, timed as a memory op (reads both, writes one: planner.sim.ops.residual_op)."""
    with timer.op("memory", bytes=3 * x.numel() * x.element_size(), kind="copy"):
        return x + y
