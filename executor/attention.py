"""Attention kernels: flash-attn on CUDA when importable, torch SDPA elsewhere.

Layout everywhere: (batch, seq, heads, head_dim), flash-attn's native layout.

Causal blocks: a query block holding positions [q_end - q_len, q_end) attends to keys
[0, q_end).  That is the *bottom-right* aligned causal mask (query i sees keys
j <= i + kv_len - q_len), which flash-attn's ``causal=True`` uses when seqlen_q != seqlen_k
(flash-attn >= 2.1 changelog); torch SDPA's ``is_causal`` is top-left aligned, so on the
SDPA path the mask is built explicitly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # flash-attn cannot be installed on CPU-only machines; guard the import.
    from flash_attn import flash_attn_func, flash_attn_with_kvcache
except Exception:  # pragma: no cover - depends on the machine
    flash_attn_func = flash_attn_with_kvcache = None


def use_flash(t: torch.Tensor) -> bool:
    return (flash_attn_func is not None and t.is_cuda
            and t.dtype in (torch.float16, torch.bfloat16))


def bottom_right_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    """(q_len, kv_len) bool, True = may attend: key j <= query i + (kv_len - q_len)."""
    i = torch.arange(q_len, device=device).unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    return j <= i + (kv_len - q_len)


def _expand_kv(k: torch.Tensor, heads: int) -> torch.Tensor:
    """GQA: repeat each K/V head for the heads//kv_heads query heads that share it."""
    rep = heads // k.shape[2]
    return k if rep == 1 else k.repeat_interleave(rep, dim=2)


def causal_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (b, q_len, H, d) are the last q_len positions of k/v (b, kv_len, KV, d), causal.
    Returns (b, q_len, H, d)."""
    if q.shape[1] == 0:
        return q.new_zeros(q.shape)
    if use_flash(q):
        return flash_attn_func(q, k, v, causal=True)
    # Square block: top-left == bottom-right, and is_causal lets the kernel skip the masked
    # half; otherwise the explicit bottom-right mask.
    square = q.shape[1] == k.shape[1]
    mask = None if square else bottom_right_mask(q.shape[1], k.shape[1], q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=square, enable_gqa=q.shape[2] != k.shape[2])    # (b, H, q_len, d)
    return out.transpose(1, 2)


def decode_full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                cache_len: int | None = None) -> torch.Tensor:
    """One new query per sequence against all cached keys (it may see every one).
    q (b, 1, H, d); k/v (b, capacity, KV, d) of which the first cache_len are valid."""
    n = k.shape[1] if cache_len is None else cache_len
    if use_flash(q):
        return flash_attn_with_kvcache(q, k, v, cache_seqlens=n, causal=True)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k[:, :n].transpose(1, 2), v[:, :n].transpose(1, 2),
        enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def decode_partial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cache_len: int) -> tuple:
    """Attention of q (b, 1, H, d) over a *shard* of the keys, with its log-sum-exp so
    shards can be merged (merge_partials).  Returns out (b, 1, H, d) fp32 and
    lse (b, H) fp32; an empty shard gives out = 0, lse = -inf."""
    b, _, heads, d = q.shape
    if cache_len == 0:
        return (q.new_zeros(q.shape, dtype=torch.float32),
                torch.full((b, heads), -math.inf, device=q.device))
    if use_flash(q):
        out, lse = flash_attn_with_kvcache(q, k, v, cache_seqlens=cache_len, causal=True,
                                           return_softmax_lse=True)   # lse (b, H, 1)
        return out.float(), lse.reshape(b, heads).float()
    kk = _expand_kv(k[:, :cache_len], heads).transpose(1, 2)      # (b, H, n, d)
    vv = _expand_kv(v[:, :cache_len], heads).transpose(1, 2)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), kk, vv, 0.0, False)                # (b, H, 1, d), (b, H, 1)
    else:  # plain math: lse = logsumexp(q k^T / sqrt(d))
        s = (q.transpose(1, 2).float() @ kk.float().transpose(-1, -2)) / math.sqrt(d)
        lse = torch.logsumexp(s, dim=-1)
        out = torch.softmax(s, dim=-1) @ vv.float()
    return out.transpose(1, 2).float(), lse.reshape(b, heads).float()


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """Merge shard results (FlashDecoding / ring attention):
    out = sum_i exp(lse_i - m) out_i / sum_i exp(lse_i - m), m = max_i lse_i, in fp32.
    outs (P, b, 1, H, d), lses (P, b, H); empty shards (lse = -inf) weigh 0."""
    m = lses.max(dim=0).values                                    # (b, H)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lses - m)                                       # (P, b, H), 0 if -inf
    num = (w[:, :, None, :, None] * outs).sum(dim=0)              # (b, 1, H, d)
    den = w.sum(dim=0)[:, None, :, None]
    return num / den
