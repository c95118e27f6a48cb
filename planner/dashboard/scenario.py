"""Scenario: everything the dashboard's sidebar chose, validated on construction.

One frozen dataclass, so the app builds it once per rerun and every section reads the same
validated specs.  Invalid combinations (a TP that does not divide the heads, more GPUs than
the cluster has, ...) raise InputError from the planner's own validation (build_layout).
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.errors import InputError, positive_int, require
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.costs import check_precision
from planner.layout import build_layout
from planner.model import ModelSpec
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy
from planner.workload import Workload
from planner.workloads import Request, RequestWorkload

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
        """The trace, or one request per length of the sweep (a uniform mix)."""
        if self.trace is not None:
            return self.trace
        return RequestWorkload(
            f"uniform over {', '.join(map(str, self.seq_lens))}",
            tuple(Request(0.0, seq, self.output_len) for seq in self.seq_lens))

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
