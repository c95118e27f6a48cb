"""The operators of one transformer layer (and embedding / LM head) as costed ops.

Megatron-style TP on a group of `tp` ranks (Shoeybi et al. 2019, section 3): QKV and FFN-up
are column parallel (no communication), output projection and FFN-down are row parallel and
end in an all-reduce of the (tokens, hidden) activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costs import CostModel, OpCost
from planner.memory import kv_shards
from planner.model import ModelSpec


@dataclass(frozen=True)
class LayerOps:
    pre_attention: tuple      # norm, QKV projection            (TP group compute)
    attention: OpCost         # attention on the TP group, heads / tp per rank
    post_attention: tuple     # out proj, all-reduce, residual add, norm, FFN up, act,
                              # FFN down, all-reduce, residual add


def layer_ops(cm: CostModel, model: ModelSpec, tp: int, ranks: tuple, seqs: int, q_len: int,
              kv_len: int) -> LayerOps:
    """Ops of one layer for `seqs` sequences of q_len new tokens attending kv_len keys.
    Prefill: q_len == kv_len (causal).  Decode: q_len == 1 (sees the whole cache)."""
    d = model.dtype_bytes
    tokens = seqs * q_len
    h = model.hidden
    act_bytes = tokens * h * d
    heads = model.heads // tp
    kv_heads = max(1, model.kv_heads // kv_shards(model, tp))
    qkv_cols = (model.q_width + 2 * model.kv_width) // tp if tp <= model.kv_heads else (
        model.q_width // tp + 2 * model.head_dim)
    ffn_in = model.ffn_in_width // tp
    ffn = model.ffn // tp
    act_reads = 3 if model.activation == "swiglu" else 2   # read gate+up, write / read, write
    pre = (
        cm.memory_op("norm1", 2 * act_bytes, "norm"),
        cm.gemm("qkv_proj", tokens, h, qkv_cols),
    )
    attention = cm.attention("attention", seqs, q_len, kv_len, heads, kv_heads, model.head_dim,
                             causal=q_len > 1)
    post = (
        cm.gemm("out_proj", tokens, model.q_width // tp, h),
        cm.collective("all_reduce_attn", "all_reduce", act_bytes, ranks),
        residual_op(cm, "residual_attn", act_bytes),
        cm.memory_op("norm2", 2 * act_bytes, "norm"),
        cm.gemm("ffn_up", tokens, h, ffn_in),
        cm.memory_op("activation", act_reads * tokens * ffn * d, "activation"),
        cm.gemm("ffn_down", tokens, ffn, h),
        cm.collective("all_reduce_ffn", "all_reduce", act_bytes, ranks),
        residual_op(cm, "residual_ffn", act_bytes),
    )
    return LayerOps(pre, attention, post)


def residual_op(cm: CostModel, name: str, act_bytes: float) -> OpCost:
    """x + y of two (tokens, hidden) activations: reads both, writes one (3 x act bytes),
    an elementwise op moving bytes like a copy (pre-norm residual, nanoGPT Block)."""
    return cm.memory_op(name, 3 * act_bytes, "copy")


def embedding_op(cm: CostModel, model: ModelSpec, tp: int, ranks: tuple, tokens: int) -> tuple:
    """Vocab-parallel embedding lookup (rows gathered) + all-reduce to combine shards."""
    act = tokens * model.hidden * model.dtype_bytes
    return (cm.memory_op("embedding", 2 * act),
            cm.collective("all_reduce_embed", "all_reduce", act, ranks))


def lm_head_ops(cm: CostModel, model: ModelSpec, tp: int, ranks: tuple, seqs: int) -> tuple:
    """Final norm + vocab-parallel LM head on the last token of each sequence + all-gather
    of the logits (fp32) to sample the next token."""
    d = model.dtype_bytes
    return (cm.memory_op("final_norm", 2 * seqs * model.hidden * d, "norm"),
            cm.gemm("lm_head", seqs, model.hidden, -(-model.vocab // tp)),
            cm.collective("all_gather_logits", "all_gather", seqs * model.vocab * 4, ranks))
