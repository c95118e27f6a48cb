"""The transformer of a ModelSpec as plain tensors and functions (no nn.Module state).

Weights are drawn from one seeded generator in a fixed order, in fp32 on the CPU, on every
rank in full; each rank then slices its shard (executor.parallel).  So any layout (any TP,
PP or pool size) computes with bit-identical weights and results compare across layouts.

Pre-norm block (GPT-2 / LLaMA):  x = x + Attn(Norm1(x));  x = x + FFN(Norm2(x)).
No positional encoding: the spec gives none, and causal masking alone orders tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from calibration.errors import require
from planner.model import GATED, ModelSpec

NORM_EPS = 1e-5


@dataclass(frozen=True)
class LayerWeights:
    norm1: torch.Tensor        # (hidden,)
    wq: torch.Tensor           # (hidden, heads * head_dim)      x @ wq
    wk: torch.Tensor           # (hidden, kv_heads * head_dim)
    wv: torch.Tensor           # (hidden, kv_heads * head_dim)
    wo: torch.Tensor           # (heads * head_dim, hidden)
    norm2: torch.Tensor        # (hidden,)
    w_up: torch.Tensor         # (hidden, ffn)
    w_gate: torch.Tensor | None  # (hidden, ffn) gated FFNs (SwiGLU, GeGLU) only
    w_down: torch.Tensor       # (ffn, hidden)


@dataclass(frozen=True)
class Weights:
    embed: torch.Tensor        # (vocab, hidden)
    layers: tuple              # LayerWeights per layer
    norm_f: torch.Tensor       # (hidden,)
    lm_head: torch.Tensor      # (hidden, vocab)

    def to(self, dtype: torch.dtype, device) -> "Weights":
        def cast(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        layers = tuple(LayerWeights(**{k: cast(v) for k, v in lw.__dict__.items()})
                       for lw in self.layers)
        return replace(self, embed=cast(self.embed), layers=layers, norm_f=cast(self.norm_f),
                       lm_head=cast(self.lm_head))


def make_weights(spec: ModelSpec, seed: int) -> Weights:
    """Full fp32 CPU weights, same values for a given (spec, seed) on any rank.

    Projections ~ N(0, 1/fan_in) so activations stay O(1) (LeCun init); norm scales
    1 + N(0, 0.1^2) so a wrong norm shard would show; embedding ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

    def proj(fan_in, fan_out):
        return randn(fan_in, fan_out, std=fan_in ** -0.5)

    h, q, kv = spec.hidden, spec.q_width, spec.kv_width
    embed = randn(spec.vocab, h)
    layers = []
    for _ in range(spec.layers):
        layers.append(LayerWeights(
            norm1=1 + randn(h, std=0.1), wq=proj(h, q), wk=proj(h, kv), wv=proj(h, kv),
            wo=proj(q, h), norm2=1 + randn(h, std=0.1), w_up=proj(h, spec.ffn),
            w_gate=proj(h, spec.ffn) if spec.activation in GATED else None,
            w_down=proj(spec.ffn, h)))
    return Weights(embed, tuple(layers), 1 + randn(h, std=0.1), proj(h, spec.vocab))


def norm(x: torch.Tensor, weight: torch.Tensor, kind: str) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * w) or LayerNorm without
    bias; computed in fp32, returned in x's dtype."""
    xf = x.float()
    if kind == "rmsnorm":
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS)
        return (y * weight.float()).to(x.dtype)
    return F.layer_norm(xf, (x.shape[-1],), weight.float(), None, NORM_EPS).to(x.dtype)


def ffn_partial(x: torch.Tensor, w_up, w_gate, w_down, activation: str) -> torch.Tensor:
    """FFN on a column shard of up/gate and the matching row shard of down (Megatron):
    the sum over shards of the results is the full FFN.  GELU: gelu(x W_up) W_down;
    SwiGLU (Shazeer 2020, LLaMA): (silu(x W_gate) * x W_up) W_down; GeGLU (Shazeer 2020,
    Gemma): (gelu_tanh(x W_gate) * x W_up) W_down."""
    up = x @ w_up                                    # (..., ffn_shard)
    if activation == "swiglu":
        act = F.silu(x @ w_gate) * up
    elif activation == "geglu":
        act = F.gelu(x @ w_gate, approximate="tanh") * up
    else:
        act = F.gelu(up)
    return act @ w_down                              # (..., hidden) partial sum


def require_runnable(plan) -> None:
    """The executor runs dense models with full causal attention, in fp32 / bf16 / fp16; an
    active pool keeps each prefill micro-batch's K/V where the schedule put it, so decode
    runs on prefill's micro-batch count there.  It refuses (one line naming the field)
    what it would otherwise run as something else."""
    require_runnable_model(plan.model)
    s = plan.strategy
    if s.pool_size(plan.workload.input_len) and s.decode_microbatches is not None:
        require(s.decode_microbatches == s.microbatches, "plan.strategy.decode_microbatches",
                f"{s.decode_microbatches} != prefill's {s.microbatches}: with an active pool "
                "the executor decodes on prefill's micro-batches")


def require_runnable_model(spec: ModelSpec, where: str = "plan.model") -> None:
    """The model half of require_runnable."""
    require(not spec.is_moe, f"{where}.experts", f"{spec.name} is a Mixture-of-Experts "
            f"({spec.experts} experts): the executor runs dense FFNs only (plan it, do not "
            "run it)")
    require(not spec.sliding_window, f"{where}.sliding_window",
            f"{spec.name} attends a {spec.sliding_window}-token window: the executor's "
            "attention is full causal only (plan it, do not run it)")
    require(spec.weight_bytes != 1 and spec.kv_bytes != 1, f"{where}.weight_dtype_bytes"
            if spec.weight_bytes == 1 else f"{where}.kv_dtype_bytes",
            "fp8: the executor computes in fp32 / bf16 / fp16 (plan it, do not run it)")


def embed(tokens: torch.Tensor, weights: Weights) -> torch.Tensor:
    return weights.embed[tokens]                     # (batch, seq, hidden)


def lm_head(x: torch.Tensor, weights: Weights, spec: ModelSpec) -> torch.Tensor:
    return norm(x, weights.norm_f, spec.norm) @ weights.lm_head   # (batch, seq, vocab)
