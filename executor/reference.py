"""Single-process reference with the same weights, and the --verify comparison.

The reference is written independently of the distributed path: full heads, naive
attention (softmax(q k^T / sqrt(d) + causal mask) v, in fp32), no K/V cache (every decode
step recomputes the whole prefix).  It runs in fp32 (weights rounded to the run's dtype first).  Decode is teacher-forced with the tokens the
distributed run generated, so both see identical inputs even if an argmax is a near tie.
"""

from __future__ import annotations

import math

import torch

from executor.model import Weights, embed, ffn_partial, lm_head, norm
from planner.model import ModelSpec

# Largest absolute error allowed (the tolerances): fp32 on CPU is far tighter in
# practice (~1e-6); half precision accumulates rounding per layer.
TOLERANCE = {"float32": 1e-4, "bfloat16": 2.5e-2, "float16": 2.5e-2}
TOLERANCE_GQA = {"float32": 1e-4, "bfloat16": 3.5e-2, "float16": 3.5e-2}


def naive_attention(q, k, v) -> torch.Tensor:
    """q/k/v (b, n, H|KV, d) over a whole prefix, causal.  Returns (b, n, H, d)."""
    heads, d, n = q.shape[2], q.shape[3], q.shape[1]
    rep = heads // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(d)
    mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    p = torch.softmax(s.masked_fill(~mask, -math.inf), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.float()).to(q.dtype)


def forward(spec: ModelSpec, w: Weights, tokens: torch.Tensor) -> tuple:
    """tokens (b, n) -> logits (b, n, vocab), [attention sublayer output (b, n, hidden)]."""
    x = embed(tokens, w)
    b, n, _ = x.shape
    attn_out = []
    for lw in w.layers:
        h = norm(x, lw.norm1, spec.norm)
        q = (h @ lw.wq).view(b, n, spec.heads, spec.head_dim)
        k = (h @ lw.wk).view(b, n, spec.kv_heads, spec.head_dim)
        v = (h @ lw.wv).view(b, n, spec.kv_heads, spec.head_dim)
        y = naive_attention(q, k, v).reshape(b, n, -1) @ lw.wo
        attn_out.append(y)
        x = x + y
        x = x + ffn_partial(norm(x, lw.norm2, spec.norm), lw.w_up, lw.w_gate, lw.w_down,
                            spec.activation)
    return lm_head(x, w, spec), attn_out


def verify(spec: ModelSpec, weights: Weights, dtype: torch.dtype, dtype_name: str,
           prompt: torch.Tensor, generated: torch.Tensor, got: dict) -> dict:
    """Compare the run's records with the reference.  got: {"logits": (b, n, V),
    "attn": [(b, n, hidden) per layer]} where n = prompt + decode steps (the tokens fed).
    Returns {max_abs_err_logits, max_abs_err_attn: [per layer], tolerance, passed}."""
    # The reference computes in fp32 on the weights rounded to the run's dtype: its error
    # is then (almost) only the run's own rounding, not the sum of two half-precision runs.
    w = weights.to(dtype, prompt.device).to(torch.float32, prompt.device)
    steps = got["logits"].shape[1] - prompt.shape[1]
    fed = torch.cat([prompt, generated[:, :steps]], dim=1)
    logits, attn = forward(spec, w, fed)
    err_logits = (logits.float() - got["logits"]).abs().max().item()
    err_attn = [(a.float() - g).abs().max().item() for a, g in zip(attn, got["attn"])]
    tol = (TOLERANCE_GQA if spec.kv_heads < spec.heads else TOLERANCE)[dtype_name]
    worst = max([err_logits] + err_attn)
    return {"max_abs_err_logits": err_logits, "max_abs_err_attn": err_attn,
            "tolerance": tol, "passed": bool(worst <= tol),
            "greedy_tokens_match": bool(torch.equal(logits[:, prompt.shape[1] - 1:].argmax(-1)
                                                    [:, :generated.shape[1]], generated))}
