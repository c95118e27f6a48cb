"""plan.json: the versioned, self-contained contract between planner and executor.

    {
      "schema": 1, "plan_id": "<sha1 of the content>", "created": "<ISO time>",
      "model": {ModelSpec}, "cluster": {ClusterSpec}, "strategy": {Static|FAPoolStrategy},
      "workload": {Workload},
      "threshold": int | null, "pool_rule": {tokens_per_pool_gpu, max_pool, pool_gpus} | null,
      "ranks": [{rank, role, node, local_rank, stage, index}, ...],
      "groups": {"base": [...], "pool": [...], "stages": [[...], ...], "pool_sizes": [...]},
      "profile": {the calibration profile the predictions used},
      "predictions": {the `fapool simulate --json` object} | null,
      "executor": {"seed": 0, "dtype": "float32" | "bfloat16" | "float16", "timeout_s": 300},
      "serving": {"replicas": R, "max_batch": b, "router": "least-outstanding-tokens",
                  "pool": "per-replica"}   (planner.serving; ranks and groups are one replica's)
    }

The strategy's micro-batch count is always explicit (resolve_microbatches): the executor
cuts both phases into it, and the predictions were made with it.

load_plan validates every field and checks that ranks and groups are what the strategy
implies (a plan edited into inconsistency is refused with the field named).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from calibration.errors import InputError, read_json, require
from calibration.profile import Profile
from planner.cluster import ClusterSpec
from planner.layout import Layout, build_layout
from planner.model import ModelSpec
from planner.serving import Serving
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy, strategy_from_dict
from planner.workload import Workload

SCHEMA = 1
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ExecutorSettings:
    seed: int = 0
    dtype: str = "bfloat16"
    timeout_s: float = 300.0

    def __post_init__(self):
        require(isinstance(self.seed, int) and self.seed >= 0, "executor.seed",
                "must be an integer >= 0")
        require(self.dtype in DTYPES, "executor.dtype", f"must be one of {DTYPES}")
        require(isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0,
                "executor.timeout_s", "must be > 0")


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    cluster: ClusterSpec
    strategy: Strategy
    workload: Workload
    profile: dict
    predictions: dict | None = None
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    created: str = ""
    serving: Serving = field(default_factory=Serving)

    @property
    def layout(self) -> Layout:
        return build_layout(self.model, self.cluster, self.strategy)

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    def pool_sizes(self) -> list:
        """Every pool size this plan can activate (the executor builds a group for each)."""
        s = self.strategy
        if not isinstance(s, FAPoolStrategy):
            return []
        if s.pool_gpus is not None:
            return [s.pool_gpus]
        smallest = min(math.ceil(s.threshold / s.tokens_per_pool_gpu), s.max_pool)
        return list(range(smallest, s.max_pool + 1))

    def body(self) -> dict:
        layout = self.layout
        s = self.strategy
        fapool = isinstance(s, FAPoolStrategy)
        stages = ([list(layout.stage_ranks(i)) for i in range(s.pp)]
                  if isinstance(s, StaticStrategy) else [])
        return {
            "schema": SCHEMA,
            "created": self.created,
            "model": self.model.to_dict(),
            "cluster": self.cluster.to_dict(),
            "strategy": s.to_dict(),
            "workload": self.workload.to_dict(),
            "threshold": s.threshold if fapool else None,
            "pool_rule": ({"tokens_per_pool_gpu": s.tokens_per_pool_gpu, "max_pool": s.max_pool,
                           "pool_gpus": s.pool_gpus} if fapool else None),
            "ranks": [r.__dict__ for r in layout.ranks],
            "groups": {"base": list(layout.base_ranks), "pool": list(layout.pool_ranks),
                       "stages": stages, "pool_sizes": self.pool_sizes()},
            "profile": self.profile,
            "predictions": self.predictions,
            "executor": self.executor.__dict__,
            "serving": self.serving.to_dict(),
        }

    @property
    def plan_id(self) -> str:
        body = self.body()
        body.pop("created")
        body.pop("predictions")
        digest = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return digest[:12]

    def to_dict(self) -> dict:
        return {"plan_id": self.plan_id, **self.body()}


def resolve_microbatches(model: ModelSpec, strategy: Strategy, workload: Workload,
                         profile: Profile) -> Strategy:
    """The strategy with both micro-batch counts made explicit: the simulator's choice for
    an unset one (planner.memory.choose_microbatches for prefill,
    planner.simulate.decode_microbatches for decode).  The executor cuts each phase into
    its count, so a plan states them; predict with the resolved strategy."""
    from planner.memory import choose_microbatches, decode_microbatches
    if strategy.microbatches is None:
        count = choose_microbatches(model, strategy, workload, profile.device.hbm_bytes)
        strategy = dataclasses.replace(strategy, microbatches=count)
    if strategy.decode_microbatches is None:
        strategy = dataclasses.replace(strategy, decode_microbatches=decode_microbatches(
            strategy, workload.batch, workload.input_len))
    return strategy


def make_plan(model: ModelSpec, cluster: ClusterSpec, strategy: Strategy, workload: Workload,
              profile: Profile, predictions: dict | None = None,
              executor: ExecutorSettings | None = None,
              serving: Serving | None = None) -> Plan:
    """A plan of the strategy with its micro-batch count resolved (resolve_microbatches);
    predictions, if given, must be of the resolved strategy."""
    resolved = resolve_microbatches(model, strategy, workload, profile)
    if predictions is not None and resolved != strategy:
        raise ValueError("predictions of a strategy without a micro-batch count: "
                         "resolve_microbatches first, then simulate")
    strategy = resolved
    build_layout(model, cluster, strategy)  # validates
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    serving = serving or Serving(max_batch=workload.batch)
    require(serving.replicas * strategy.max_gpus <= cluster.total_gpus, "serving.replicas",
            f"{serving.replicas} replicas of {strategy.max_gpus} GPUs exceed the "
            f"{cluster.total_gpus} GPUs of cluster {cluster.name}")
    return Plan(model, cluster, strategy, workload, profile.to_dict(), predictions,
                executor or ExecutorSettings(), now, serving)


def save_plan(plan: Plan, path: str | Path) -> None:
    """Atomic write: a temp file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def plan_from_dict(raw: dict) -> Plan:
    require(isinstance(raw, dict), "plan", "must be a JSON object")
    require(raw.get("schema") == SCHEMA, "plan.schema",
            f"must be {SCHEMA}, got {raw.get('schema')!r}")
    for key in ("model", "cluster", "strategy", "workload", "ranks", "groups", "profile"):
        require(key in raw, f"plan.{key}", "missing")
    try:
        model = ModelSpec.from_dict(raw["model"])
        cluster = ClusterSpec.from_dict(raw["cluster"])
        strategy = strategy_from_dict(raw["strategy"])
        wl = raw["workload"]
        require(isinstance(wl, dict), "plan.workload", "must be a mapping")
        workload = Workload(**wl)
        Profile.from_dict(raw["profile"])
        executor = ExecutorSettings(**(raw.get("executor") or {}))
        serving = (Serving.from_dict(raw["serving"]) if "serving" in raw
                   else Serving(max_batch=workload.batch))
    except TypeError as err:
        raise InputError("plan", f"malformed section ({err})") from None
    plan = Plan(model, cluster, strategy, workload, raw["profile"], raw.get("predictions"),
                executor, str(raw.get("created", "")), serving)
    require(serving.replicas * strategy.max_gpus <= cluster.total_gpus, "plan.serving.replicas",
            f"{serving.replicas} replicas of {strategy.max_gpus} GPUs exceed the cluster's "
            f"{cluster.total_gpus} GPUs")
    expected = plan.body()
    for key in ("ranks", "groups", "threshold", "pool_rule"):
        require(raw.get(key) == expected[key], f"plan.{key}",
                f"does not match what the strategy implies ({expected[key]!r})")
    if "plan_id" in raw:
        require(raw["plan_id"] == plan.plan_id, "plan.plan_id",
                "does not match the plan's content (edited by hand?)")
    return plan


def load_plan(path: str | Path) -> Plan:
    return plan_from_dict(read_json(path, "plan"))


