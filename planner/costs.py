"""Cost model: what each operator of the transformer costs on a given cluster.

Maps model-level operators (a GEMM of a TP shard, one attention block, a norm, a collective
among a set of ranks) onto calibration's fitted curves, and picks the link the ranks actually
cross: the intra-node link when all ranks share a node, the inter-node link (with as many
NICs in parallel as the thinnest node contributes) otherwise.  Every OpCost carries its
physics floor, max(flops / peak, bytes / bandwidth), and never undercuts it.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration import curves
from calibration.errors import require
from calibration.profile import Profile
from planner.cluster import ClusterSpec


@dataclass(frozen=True)
class OpCost:
    name: str
    seconds: float
    floor: float        # roofline lower bound on the device / link it runs on
    kind: str           # "compute" | "comm"
    flops: float = 0.0
    bytes: float = 0.0

    def __post_init__(self):
        # The invariant every curve guarantees by construction; checked here once more.
        assert self.seconds >= self.floor * (1 - 1e-9), (self.name, self.seconds, self.floor)


def check_precision(weight_bytes: int, device: curves.Device) -> None:
    """FP8 weights need FP8 tensor cores: refused (one line) on a device without them."""
    if weight_bytes == 1:
        require(device.fp8_peak_flops > 0, "dtype",
                f"fp8 on {device.name}: the device has no FP8 tensor cores (A100: none; "
                "H100: 1979 TFLOP/s dense); use bf16 or fp16")


class CostModel:
    """Operator times for one profile on one cluster; dtype from the model."""

    def __init__(self, profile: Profile, cluster: ClusterSpec, dtype_bytes: int,
                 weight_bytes: int = 0, kv_bytes: int = 0):
        self.profile = profile
        self.cluster = cluster
        self.dtype = dtype_bytes
        self.weight_bytes = weight_bytes or dtype_bytes
        self.kv_bytes = kv_bytes or dtype_bytes
        self.device = profile.device
        check_precision(self.weight_bytes, self.device)
        self.gemm_device = self.device.for_fp8() if self.weight_bytes == 1 else self.device
        self.intra = profile.link(cluster.intra_link)
        self.inter = profile.link(cluster.inter_link) if cluster.nodes > 1 else self.intra

    # ------------------------------------------------------------ compute
    def gemm(self, name: str, tokens: int, k: int, n: int) -> OpCost:
        """(tokens, k) @ (k, n) on one GPU."""
        dev, wb = self.gemm_device, self.weight_bytes
        flops, moved = curves.gemm_cost(tokens, k, n, self.dtype, wb)
        t = curves.gemm_time(self.profile.gemm.params, dev, tokens, k, n, self.dtype, wb)
        return OpCost(name, t, curves.floor_compute(dev, flops, moved), "compute",
                      flops, moved)

    def attention(self, name: str, batch: int, q_len: int, kv_len: int, heads: int,
                  kv_heads: int, head_dim: int, causal: bool = True) -> OpCost:
        """One attention forward of `heads` heads on one GPU (bottom-right causal)."""
        if batch == 0 or q_len == 0:
            return OpCost(name, 0.0, 0.0, "compute")
        flops, moved = curves.attention_cost(batch, q_len, kv_len, heads, kv_heads, head_dim,
                                             causal, self.dtype, self.kv_bytes)
        t = curves.attention_time(self.profile.attention.params, self.device, batch, q_len,
                                  kv_len, heads, kv_heads, head_dim, causal, self.dtype,
                                  self.kv_bytes)
        return OpCost(name, t, curves.floor_compute(self.device, flops, moved), "compute",
                      flops, moved)

    def memory_op(self, name: str, moved_bytes: float, kind: str = "copy") -> OpCost:
        """Norm, activation, embedding lookup (a copy): bytes over bandwidth, times the
        profile's slow-down of that kind relative to a copy."""
        t = curves.memory_time(self.profile.memory.params, self.device, moved_bytes, kind)
        return OpCost(name, t, curves.floor_compute(self.device, 0.0, moved_bytes), "compute",
                      0.0, moved_bytes)

    def sum_ops(self, name: str, ops) -> OpCost:
        """Several ops run back to back on one GPU, as one (e.g. two head-tail blocks)."""
        ops = list(ops)
        return OpCost(name, sum(o.seconds for o in ops), sum(o.floor for o in ops), "compute",
                      sum(o.flops for o in ops), sum(o.bytes for o in ops))

    # ------------------------------------------------------------ communication
    def lanes(self, ranks) -> int:
        """Parallel NICs a multi-node collective can use: the thinnest node's GPU count,
        capped by its NICs (NCCL builds one ring per NIC)."""
        per_node = {}
        for r in ranks:
            node = self.cluster.node_of(r)
            per_node[node] = per_node.get(node, 0) + 1
        return max(1, min(min(per_node.values()), self.cluster.nics_per_node))

    def collective(self, name: str, kind: str, payload: float, ranks) -> OpCost:
        """A collective of `payload` bytes among `ranks` (global rank ids).

        Single node: the intra link.  Several nodes: the slower of the inter-node part
        (over `lanes` NICs) and the intra-node part, which NCCL pipelines, so they overlap.
        """
        ranks = tuple(ranks)
        n = len(ranks)
        if n <= 1 or payload <= 0:
            return OpCost(name, 0.0, 0.0, "comm", 0.0, 0.0)
        nodes = {self.cluster.node_of(r) for r in ranks}
        intra_t = self.intra.time(kind, payload, n)
        intra_floor = self.intra.floor(kind, payload, n)
        if len(nodes) == 1:
            return OpCost(name, intra_t, intra_floor, "comm", 0.0, payload)
        lanes = self.lanes(ranks)
        inter_t = self.inter.time(kind, payload, n, lanes)
        inter_floor = self.inter.floor(kind, payload, n, lanes)
        return OpCost(name, max(intra_t, inter_t), max(intra_floor, inter_floor), "comm", 0.0,
                      payload)

    def transfer(self, name: str, payload: float, src, dst) -> OpCost:
        """Point-to-point transfer of payload bytes from group src to group dst, each rank
        sending its share in parallel (Megatron's scatter-gather for stage boundaries)."""
        src, dst = tuple(src), tuple(dst)
        pairs = max(1, min(len(src), len(dst)))
        share = payload / pairs
        same_node = {self.cluster.node_of(r) for r in src + dst}
        link = self.intra if len(same_node) == 1 else self.inter
        t = link.time("send_recv", share, 2)
        return OpCost(name, t, link.floor("send_recv", share, 2), "comm", 0.0, payload)
