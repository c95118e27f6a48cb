"""Cost curves: the small physical models that profiles fit and the planner evaluates.

Each family has a fixed parameter list (order matters: the covariance matrices in a
profile follow it) and a pure function ``time = f(params, device, shape)`` in seconds.
Every curve is bounded below by the roofline of its device:
``max(flops / peak_flops, bytes / hbm_bandwidth)`` (compute) or
``factor * bytes / peak_link_bandwidth`` (collectives), because every efficiency
parameter is validated to lie in (0, 1].  ``floor_*`` functions give those bounds.

Units: seconds, bytes, FLOP, FLOP/s, bytes/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Parameter names per family, in covariance order.
GEMM_PARAMS = ("efficiency_max", "half_tokens", "read_efficiency", "launch_s")
ATTENTION_PARAMS = (
    "efficiency_max", "half_seq", "half_seq_causal", "half_head_dim", "read_efficiency", "launch_s",
)
MEMORY_PARAMS = ("read_efficiency", "launch_s", "norm_factor", "activation_factor")
LINK_PARAMS = ("latency_s", "efficiency")
FAMILY_PARAMS = {
    "gemm": GEMM_PARAMS,
    "attention": ATTENTION_PARAMS,
    "memory": MEMORY_PARAMS,
    "link": LINK_PARAMS,
}
# Parameters that are fractions of a peak: must lie in (0, 1] so no curve beats physics.
FRACTION_PARAMS = {"efficiency_max", "read_efficiency", "efficiency"}
# Slow-downs relative to a plain copy (>= 1, so no curve beats physics either): a norm or an
# activation moves the same bytes as a copy but may cost more per byte (reductions,
# transcendentals; on a CPU thread they are far from bandwidth-bound).
FACTOR_PARAMS = {"norm_factor", "activation_factor"}
MEMORY_KINDS = ("copy", "norm", "activation")
# Older profiles lack the factors: they read as 1 (every memory op bandwidth-bound).
PARAM_DEFAULTS = {"norm_factor": 1.0, "activation_factor": 1.0}

# Bus-bandwidth factors (nccl-tests PERFORMANCE.md): bytes each rank moves per payload byte.
COLLECTIVE_FACTORS = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "gather": lambda n: (n - 1) / n,
    "scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
    "send_recv": lambda n: 1.0,
}


@dataclass(frozen=True)
class Device:
    """Peaks of one accelerator (or one CPU process) for the profile's dtype."""

    name: str
    peak_flops: float      # FLOP/s, dense, profile dtype
    hbm_bytes: float       # memory capacity, bytes
    hbm_bandwidth: float   # bytes/s
    fp8_peak_flops: float = 0.0    # FLOP/s, dense FP8 tensor cores; 0: the device has none

    def for_fp8(self) -> "Device":
        """The device as an FP8 GEMM sees it: the FP8 peak (the fitted efficiencies are
        taken to hold at it: a stated assumption, no FP8 microbenchmark yet)."""
        return Device(self.name, self.fp8_peak_flops, self.hbm_bytes, self.hbm_bandwidth,
                      self.fp8_peak_flops)


# ---------------------------------------------------------------- GEMM
def gemm_cost(tokens: int, k: int, n: int, dtype_bytes: int,
              weight_bytes: int = 0) -> tuple[float, float]:
    """FLOPs and bytes of (tokens, k) @ (k, n): 2*t*k*n FLOP; reads A, W, writes C (W at
    weight_bytes per element when given: FP8 weights beside 16-bit activations)."""
    flops = 2.0 * tokens * k * n
    moved = float(tokens * k + tokens * n) * dtype_bytes + float(k * n) * (
        weight_bytes or dtype_bytes)
    return flops, moved


def gemm_time(p: dict, dev: Device, tokens: int, k: int, n: int, dtype_bytes: int,
              weight_bytes: int = 0) -> float:
    """Efficiency saturates with the token count (Michaelis-Menten in tokens);
    small token counts are bound by reading the weights (hardware.md: flat until T~64)."""
    flops, moved = gemm_cost(tokens, k, n, dtype_bytes, weight_bytes)
    efficiency = p["efficiency_max"] * tokens / (tokens + p["half_tokens"])
    compute = flops / (dev.peak_flops * efficiency)
    memory = moved / (dev.hbm_bandwidth * p["read_efficiency"])
    return max(compute, memory) + p["launch_s"]


# ---------------------------------------------------------------- attention
def causal_pairs(q_len: int, kv_len: int) -> float:
    """Query-key pairs of a bottom-right aligned causal mask (flash-attn convention):
    query i (0-based) of q_len sees keys [0, kv_len - q_len + i]."""
    if q_len > kv_len:  # queries past the first kv_len rows see nothing extra: clamp
        q_len = kv_len
    return q_len * kv_len - q_len * (q_len - 1) / 2.0


def attention_cost(batch: int, q_len: int, kv_len: int, heads: int, kv_heads: int,
                   head_dim: int, causal: bool, dtype_bytes: int,
                   kv_bytes: int = 0) -> tuple[float, float]:
    """FLOPs (4 * pairs * head_dim per head, FlashAttention paper) and bytes
    (read Q, K, V once, write O; K and V at kv_bytes per element when given: an FP8 cache)."""
    pairs = causal_pairs(q_len, kv_len) if causal else float(q_len * kv_len)
    flops = 4.0 * batch * heads * head_dim * pairs
    moved = float(batch) * head_dim * (2 * q_len * heads * dtype_bytes
                                       + 2 * kv_len * kv_heads * (kv_bytes or dtype_bytes))
    return flops, moved


def attention_time(p: dict, dev: Device, batch: int, q_len: int, kv_len: int, heads: int,
                   kv_heads: int, head_dim: int, causal: bool, dtype_bytes: int,
                   kv_bytes: int = 0) -> float:
    """Efficiency grows with key length and head dim (FlashAttention-2 benchmark shape);
    decode (q_len 1) ends up bound by reading the K/V cache."""
    flops, moved = attention_cost(batch, q_len, kv_len, heads, kv_heads, head_dim, causal,
                                  dtype_bytes, kv_bytes)
    half = p["half_seq_causal"] if causal else p["half_seq"]
    efficiency = (p["efficiency_max"] * kv_len / (kv_len + half)
                  * head_dim / (head_dim + p["half_head_dim"]))
    compute = flops / (dev.peak_flops * efficiency)
    memory = moved / (dev.hbm_bandwidth * p["read_efficiency"])
    return max(compute, memory) + p["launch_s"]


# ---------------------------------------------------------------- memory-bound ops
def memory_time(p: dict, dev: Device, moved_bytes: float, kind: str = "copy") -> float:
    """Norms, activations, copies: (launch + bytes moved over achieved HBM bandwidth) times
    the kind's slow-down relative to a copy (1 where the op is bandwidth-bound, as on GPUs).
    The factor scales the launch too: an eager fp32 RMSNorm is several kernels (square,
    mean, rsqrt, two multiplies, casts), each launched and each reading the tensor."""
    factor = 1.0 if kind == "copy" else p[f"{kind}_factor"]
    return factor * (moved_bytes / (dev.hbm_bandwidth * p["read_efficiency"]) + p["launch_s"])


# ---------------------------------------------------------------- collectives
def collective_bytes(kind: str, payload: float, ranks: int) -> float:
    """Bytes each rank moves on the wire for a collective of payload bytes (bus bytes)."""
    if kind not in COLLECTIVE_FACTORS:
        raise ValueError(f"unknown collective {kind!r}")
    if ranks <= 1:
        return 0.0
    return COLLECTIVE_FACTORS[kind](ranks) * payload


def collective_time(p: dict, peak_bandwidth: float, kind: str, payload: float,
                    ranks: int) -> float:
    """latency + bus bytes / (peak * efficiency): the alpha-beta model nccl-tests reports."""
    if ranks <= 1 or payload <= 0:
        return 0.0
    hops = math.ceil(math.log2(ranks))
    return (p["latency_s"] * hops
            + collective_bytes(kind, payload, ranks) / (peak_bandwidth * p["efficiency"]))


# ---------------------------------------------------------------- physics floors
def floor_compute(dev: Device, flops: float, moved: float) -> float:
    """No op is faster than max(flops / peak, bytes / bandwidth) of its device."""
    return max(flops / dev.peak_flops, moved / dev.hbm_bandwidth)


def floor_collective(peak_bandwidth: float, kind: str, payload: float, ranks: int) -> float:
    """No collective is faster than its bus bytes over the link's peak bandwidth."""
    return collective_bytes(kind, payload, ranks) / peak_bandwidth
