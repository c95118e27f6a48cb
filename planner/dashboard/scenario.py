"""Scenario: everything the dashboard's sidebar chose, validated on construction.

One frozen dataclass, so the app builds it once per rerun and every section reads the same
validated specs.  Invalid combinations (a TP that does not divide the heads, more GPUs than
the cluster has, ...) raise InputError from the planner's own validation (build_layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.errors import InputError, positive_int, require
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.costs import check_precision
from planner.layout import build_layout
from planner.model import ModelSpec
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy
from planner.workload import Workload
from planner.serving import Serving
from planner.workloads import DEFAULT_RATE, Request, RequestWorkload

# The sweep of the TPOT / TPS curves: the paper's section 5.1 lengths plus the powers of two
# between them, up to 32K.
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
KINDS = ("fapool", "static")
LABELS = {"fapool": "FA Pool", "static": "static TP x PP"}


def require_links(profile: Profile, cluster: ClusterSpec) -> None:
    """InputError unless the profile has the cluster's links (as ClusterSpec.load_profile
    checks its own profile): intra-node, and inter-node when there are several nodes."""
    for link in {cluster.intra_link} | ({cluster.inter_link} if cluster.nodes > 1 else set()):
        profile.link(link)


@dataclass(frozen=True)
class Scenario:
    model: ModelSpec
    cluster: ClusterSpec
    profile: Profile
    batch: int
    seq_len: int                     # the chosen length: timeline, memory, plan, metrics
    output_len: int
    fapool: FAPoolStrategy
    static: StaticStrategy
    selected: str = "fapool"         # the plan shown in the timeline and downloaded
    seq_lens: tuple = SEQ_LENS
    trace: RequestWorkload | None = None   # an uploaded trace: heatmap and search use it
    slo_tpot_ms: float | None = None
    slo_ttft_ms: float | None = None
    interval_samples: int = 16       # profile draws per curve point (0: no intervals)
    rate: float | None = None        # arrivals, requests/s (None: a trace's own, else
                                     # DEFAULT_RATE)
    replicas: int = 1                # copies of the selected plan serving the arrivals
    requests_per_len: int = 16       # the uniform mix: requests of each sweep length

    def __post_init__(self):
        require(self.selected in KINDS, "strategy", f"must be one of {KINDS}")
        Workload(self.batch, self.seq_len, self.output_len)        # validates the lengths
        require(len(self.seq_lens) > 0, "seq_lens", "empty")
        for seq in self.seq_lens:
            positive_int(seq, "seq_lens")
        require(isinstance(self.interval_samples, int) and self.interval_samples >= 0,
                "interval_samples", "must be an integer >= 0")
        for slo, name in ((self.slo_tpot_ms, "slo_tpot_ms"), (self.slo_ttft_ms, "slo_ttft_ms")):
            require(slo is None or slo > 0, name, "must be > 0 (or unset)")
        require(self.rate is None or 0 < self.rate < float("inf"), "rate",
                "must be > 0 requests/s (or unset)")
        positive_int(self.replicas, "replicas")
        positive_int(self.requests_per_len, "requests_per_len")
        # The planner's own checks: TP divides heads / FFN, GPUs fit in the cluster.
        build_layout(self.model, self.cluster, self.fapool)
        build_layout(self.model, self.cluster, self.static)
        require_links(self.profile, self.cluster)
        check_precision(self.model.weight_bytes, self.profile.device)

    def strategy(self, kind: str | None = None) -> Strategy:
        kind = kind or self.selected
        if kind not in KINDS:
            raise InputError("strategy", f"must be one of {KINDS}, got {kind!r}")
        return self.fapool if kind == "fapool" else self.static

    def workload(self, seq_len: int | None = None) -> Workload:
        return Workload(self.batch, seq_len or self.seq_len, self.output_len)

    @property
    def request_workload(self) -> RequestWorkload:
        """The requests the search and the serving view simulate: the trace (rescaled to
        `rate` when set), or the uniform mix (requests_per_len of each sweep length, in turn)
        arriving as a Poisson process of `rate` (seed 0)."""
        return self.arrivals(self.rate)

    def arrivals(self, rate: float | None) -> RequestWorkload:
        """request_workload at another arrival rate (the same requests)."""
        if self.trace is not None:
            return self.trace.at_rate(rate) if rate else self.trace
        lens = [seq for _ in range(self.requests_per_len) for seq in self.seq_lens]
        gaps = np.random.default_rng(0).exponential(1.0 / (rate or DEFAULT_RATE), len(lens))
        starts = np.round(np.cumsum(gaps) - gaps[0], 6)
        return RequestWorkload(
            f"uniform over {', '.join(map(str, self.seq_lens))} @ {rate or DEFAULT_RATE:g}/s",
            tuple(Request(float(t), seq, self.output_len) for t, seq in zip(starts, lens)))

    @property
    def serving(self) -> Serving:
        """Replicas of the selected plan and its running-batch limit (the batch)."""
        return Serving(replicas=self.replicas, max_batch=self.batch)

    @property
    def workload_mix(self) -> tuple:
        """((input_len, output_len, share), ...): planner.workloads' power-of-two buckets
        (mean lengths, share of the requests) of the trace or the uniform mix."""
        return tuple((b.input_len, b.output_len, b.weight)
                     for b in self.request_workload.buckets())

    @property
    def curve_lens(self) -> tuple:
        """The sweep plus the chosen length, sorted."""
        return tuple(sorted(set(self.seq_lens) | {self.seq_len}))

    @property
    def specs(self) -> tuple:
        """(model, cluster, profile): the arguments every simulation shares."""
        return self.model, self.cluster, self.profile
