"""Cluster spec: nodes of GPUs joined by an intra-node link and an inter-node link."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from calibration.errors import InputError, positive_int, require, safe_name
from calibration.profile import Profile, load_profile


MAX_NODES = 16384              # 131,072 GPUs at 8 per node: beyond any cluster built today
MAX_GPUS_PER_NODE = 64


@dataclass(frozen=True)
class ClusterSpec:
    """nodes x gpus_per_node devices of one profile.  Rank r lives on node r // gpus_per_node.

    intra_link: link name (in the profile) between GPUs of a node (NVLink, loopback).
    inter_link: link name between nodes (InfiniBand); each node has nics_per_node NICs,
    which a collective spanning nodes uses in parallel (NCCL rings over all NICs).
    """

    name: str
    nodes: int
    gpus_per_node: int
    profile: str                 # profile name or path (calibration.load_profile)
    intra_link: str = "nvlink"
    inter_link: str = "ib"
    nics_per_node: int = 8
    cores_per_node: int = 0      # >0: ranks are CPU processes sharing this many cores, so at
                                 # most this many compute ops of a node run at once

    def __post_init__(self):
        safe_name(self.name, "cluster.name")
        safe_name(self.intra_link, "cluster.intra_link")
        safe_name(self.inter_link, "cluster.inter_link")
        require(isinstance(self.profile, str) and self.profile and self.profile.isprintable(),
                "cluster.profile", "must be a profile name or a path (no control "
                "characters)")
        require(isinstance(self.cores_per_node, int) and self.cores_per_node >= 0,
                "cluster.cores_per_node", "must be an integer >= 0")
        positive_int(self.nodes, "cluster.nodes")
        positive_int(self.gpus_per_node, "cluster.gpus_per_node")
        positive_int(self.nics_per_node, "cluster.nics_per_node")
        for name, most in (("nodes", MAX_NODES), ("gpus_per_node", MAX_GPUS_PER_NODE),
                           ("nics_per_node", MAX_GPUS_PER_NODE)):
            require(getattr(self, name) <= most, f"cluster.{name}",
                    f"{getattr(self, name)} is more than {most} (the largest cluster "
                    "fa-pool plans)")

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def load_profile(self) -> Profile:
        profile = load_profile(self.profile)
        for link in {self.intra_link} | ({self.inter_link} if self.nodes > 1 else set()):
            profile.link(link)  # raises InputError if the profile lacks it
        return profile

    def with_nodes(self, nodes: int | None) -> "ClusterSpec":
        return self if nodes is None else replace(self, nodes=nodes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ClusterSpec":
        require(isinstance(raw, dict), "cluster", "must be a mapping")
        extra = set(raw) - set(cls.__dataclass_fields__)
        require(not extra, "cluster", f"unknown fields {sorted(extra)}")
        return cls(**raw)


PRESETS = {
    # DGX A100: 8x A100 80GB SXM, NVSwitch (NVLink 3), 8x HDR 200 Gb/s NICs.  8 nodes = 64 GPUs,
    # enough for the paper's 40 and its TP=16 x PP=2 comparison.
    "dgx-a100": ClusterSpec("dgx-a100", 8, 8, "dgx-a100"),
    "dgx-h100": ClusterSpec("dgx-h100", 8, 8, "dgx-h100"),
    # This machine: local processes (one thread each, as the executor runs them) sharing its
    # cores, joined by loopback (profile from `fapool calibrate`).
    "local": ClusterSpec("local", 1, 4, "local", intra_link="loopback", inter_link="loopback",
                         nics_per_node=1, cores_per_node=os.cpu_count() or 1),
}


def resolve_cluster(name: str, nodes: int | None = None, profile: str | None = None
                    ) -> ClusterSpec:
    """A preset by name, optionally with a node count and a profile (name or path) swapped in."""
    if name not in PRESETS:
        raise InputError("cluster", f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    cluster = PRESETS[name].with_nodes(nodes)
    return replace(cluster, profile=profile) if profile else cluster
