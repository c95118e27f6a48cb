"""How a plan serves a request stream: replicas of its layout, a running-batch limit per
replica, and the router that sends each arriving request to a replica.

    replicas    copies of the layout (data parallelism); each is a whole plan of
                strategy.max_gpus GPUs (base + its own pool, or TP x PP)
    max_batch   the most requests one replica has in flight (admitted, not finished)
    router      least-outstanding-tokens: an arriving request goes to the replica whose
                routed, unfinished requests hold the fewest tokens (input + output), the
                lowest index on a tie.  A replica's load is known to the router without
                any message from it (the router counts what it sent and what finished).

FA Pool replicas each own their pool (planner.layout puts a replica's pool GPUs beside its
base, on its NVLink domain; the pool's K/V copies and Q blocks never cross replicas, and a
replica's resource manager needs no global lock).  A shared pool would need every lease to
cross the replicas' interconnect, so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.errors import InputError, require

ROUTERS = ("least-outstanding-tokens",)
POOL_SHARING = "per-replica"
MAX_REPLICAS = 4096


@dataclass(frozen=True)
class Serving:
    replicas: int = 1
    max_batch: int = 1024
    router: str = ROUTERS[0]

    def __post_init__(self):
        for name in ("replicas", "max_batch"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"serving.{name}", f"must be an integer >= 1, got {v!r}")
        require(self.replicas <= MAX_REPLICAS, "serving.replicas",
                f"must be <= {MAX_REPLICAS}, got {self.replicas}")
        require(self.router in ROUTERS, "serving.router", f"must be one of {ROUTERS}")

    def to_dict(self) -> dict:
        return {"replicas": self.replicas, "max_batch": self.max_batch, "router": self.router,
                "pool": POOL_SHARING}

    @classmethod
    def from_dict(cls, raw) -> "Serving":
        require(isinstance(raw, dict), "plan.serving", "must be a mapping")
        unknown = set(raw) - {"replicas", "max_batch", "router", "pool"}
        require(not unknown, "plan.serving", f"unknown key(s) {sorted(unknown)}")
        require(raw.get("pool", POOL_SHARING) == POOL_SHARING, "plan.serving.pool",
                f"must be {POOL_SHARING!r}")
        try:
            return cls(**{k: v for k, v in raw.items() if k != "pool"})
        except TypeError as err:
            raise InputError("plan.serving", f"malformed ({err})") from None
