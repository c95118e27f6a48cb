"""Megatron-style tensor parallel shards (Shoeybi et al. 2019, section 3): QKV
column-parallel by heads, output projection row-parallel, FFN up/gate column-parallel and
down row-parallel.  Where the all-reduces go, and everything else a rank runs, is the
schedule's (planner.schedule, run by executor.program).

K/V heads under GQA: split when tp divides kv_heads; otherwise (kv_heads divides tp) each
rank keeps the one K/V head its query heads share (replicated across tp / kv_heads ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.model import LayerWeights
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
