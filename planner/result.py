"""SimResult: what one simulation predicts, and its JSON form (DESIGN.md contract)."""

from __future__ import annotations

from planner import metrics
from planner.schedule import microbatch_rows

from dataclasses import dataclass, field

from planner.cluster import ClusterSpec
from planner.model import ModelSpec
from planner.strategy import FAPoolStrategy, Strategy
from planner.workload import Workload


def _ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 4)


@dataclass(frozen=True)
class SimResult:
    model: ModelSpec
    cluster: ClusterSpec
    strategy: Strategy
    workload: Workload
    phase: str
    profile: str
    memory: dict                     # role -> MemoryBreakdown
    microbatches: int
    decode_microbatches: int
    feasible: bool
    infeasible_reasons: tuple = ()
    units: dict = field(default_factory=dict)   # name -> engine.Unit
    prefill: object = None           # simulate.PhaseRun | None
    decode: object = None
    ttft_interval: tuple | None = None
    tpot_interval: tuple | None = None

    # ------------------------------------------------------------ headline metrics
    @property
    def pool_gpus(self) -> int:
        return self.strategy.pool_size(self.workload.input_len)

    @property
    def gpus(self) -> int:
        return self.strategy.gpus(self.workload.input_len)

    @property
    def ttft_s(self):
        return self.prefill.seconds if self.prefill else None

    @property
    def tpot_s(self):
        return self.decode.seconds if self.decode else None

    @property
    def total_s(self):
        """Wall time of the batch: prefill, then output_len - 1 decode steps."""
        if self.prefill is None or self.decode is None:
            return None
        return metrics.request_s(self.workload, self.ttft_s, self.tpot_s)

    @property
    def tps(self):
        return None if self.total_s is None else metrics.tps(self.workload, self.ttft_s,
                                                             self.tpot_s)

    @property
    def decode_tps(self):
        return metrics.decode_tps(self.workload, self.tpot_s)

    def _weighted(self):
        """(weight, PhaseRun) pairs covering one whole batch (or the phases simulated)."""
        decode_steps = max(self.workload.output_len - 1, 1) if self.prefill else 1
        return [(w, run) for w, run in ((1.0, self.prefill), (decode_steps, self.decode)) if run]

    @property
    def utilization(self) -> dict:
        """Per role: the fraction of wall time its GPUs spend computing."""
        if not self.feasible:
            return {}
        runs = self._weighted()
        wall = sum(w * run.seconds for w, run in runs)
        out = {}
        for role in ("base", "pool"):
            names = [u.name for u in self.units.values() if u.role == role]
            if names and wall > 0:
                busy = sum(w * run.busy.get(n, 0.0) for w, run in runs for n in names)
                out[role] = round(busy / (len(names) * wall), 4)
        return out

    @property
    def comm_fraction(self):
        """Communication ops' share of all op time (each op counted once)."""
        runs = self._weighted()
        total = sum(w * run.ops for w, run in runs)
        return None if not total else round(sum(w * run.comm for w, run in runs) / total, 4)

    @property
    def events(self) -> list:
        return [e for _, run in self._weighted() for e in run.events]

    def notes(self) -> list:
        notes = [f"output length {self.workload.output_len} tokens (the paper gives none)",
                 f"TPOT at decode context {self.workload.decode_context} "
                 "(input + output/2: the mean over generation)"]
        s = self.strategy
        if isinstance(s, FAPoolStrategy) and self.pool_gpus:
            how = {"split-batch": "pool GPUs split the batch's sequences, each keeps their "
                                  "whole K/V cache",
                   "split-seq": "pool GPUs hold a slice of every sequence's K/V; partial "
                                "outputs merged by log-sum-exp",
                   "replicated": "every pool GPU keeps the whole K/V cache (paper's reading)"}
            notes.append(f"decode: {how[s.decode_kv]} ({s.decode_kv})")
        elif isinstance(s, FAPoolStrategy):
            notes.append(f"seq {self.workload.input_len} < threshold {s.threshold}: "
                         "attention stays on the base group")
        if self.microbatches > 8:
            notes.append(f"prefill: first 8 of {self.microbatches} micro-batches simulated, "
                         "the rest extended at the steady-state period")
        return notes

    def to_json(self) -> dict:
        s = self.strategy
        out = {
            "model": self.model.name,
            "cluster": self.cluster.name,
            "profile": self.profile,
            "strategy": {"name": s.describe(), **s.to_dict()},
            "phase": self.phase,
            "seq_len": self.workload.input_len,
            "output_len": self.workload.output_len,
            "batch": self.workload.batch,
            "gpus": self.gpus,
            "pool_gpus": self.pool_gpus,
            "microbatches": self.microbatches,
            "decode_microbatches": self.decode_microbatches,
            "microbatch_rows": [b - a for a, b in microbatch_rows(self.workload.batch,
                                                                  self.microbatches)],
            "decode_microbatch_rows": [b - a for a, b in microbatch_rows(
                self.workload.batch, self.decode_microbatches)],
            "feasible": self.feasible,
            "infeasible_reasons": list(self.infeasible_reasons),
            "ttft_ms": _ms(self.ttft_s),
            "tpot_ms": _ms(self.tpot_s),
            "tps": None if self.tps is None else round(self.tps, 2),
            "decode_tps": None if self.decode_tps is None else round(self.decode_tps, 2),
            "memory_gb": {role: round(m.total / 1e9, 3) for role, m in self.memory.items()},
            "memory_breakdown_gb": {role: m.to_gb() for role, m in self.memory.items()},
            "comm_fraction": self.comm_fraction if self.feasible else None,
            "utilization": self.utilization,
            "ttft_ms_interval": ([_ms(x) for x in self.ttft_interval]
                                 if self.ttft_interval else None),
            "tpot_ms_interval": ([_ms(x) for x in self.tpot_interval]
                                 if self.tpot_interval else None),
            "notes": self.notes(),
        }
        out["memory_gb"].setdefault("pool", 0.0)
        return out
