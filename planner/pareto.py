"""Pareto front over (GPUs down, TPOT down, TPS up), and a request-weighted percentile."""

from __future__ import annotations

AXES = (("gpus", -1), ("tpot_ms", -1), ("tps", +1))     # -1: lower is better


def _key(c: dict) -> tuple:
    return tuple(sign * c[name] for name, sign in AXES)   # higher is better on every axis


def dominates(a: dict, b: dict) -> bool:
    """a is no worse than b on every axis and better on one."""
    ka, kb = _key(a), _key(b)
    return all(x >= y for x, y in zip(ka, kb)) and ka != kb


def dominates_min(a: tuple, b: tuple) -> bool:
    """Point a is no worse than b on every axis (all lower-is-better) and better on one."""
    return all(x <= y for x, y in zip(a, b)) and tuple(a) != tuple(b)


def pareto_front(candidates: list) -> list:
    """The non-dominated candidates (feasible ones only), one per distinct point (the first
    in input order), sorted by GPUs then TPOT.  O(n^2) over the distinct points: a few
    thousand at most."""
    points: dict = {}
    for c in candidates:
        if c["feasible"]:
            points.setdefault((c["gpus"], round(c["tpot_ms"], 6), round(c["tps"], 3)), c)
    distinct = list(points.values())
    front = [c for c in distinct if not any(dominates(o, c) for o in distinct if o is not c)]
    return sorted(front, key=lambda c: (c["gpus"], c["tpot_ms"], -c["tps"]))


def weighted_percentile(values, weights, q: float) -> float:
    """The smallest value whose cumulative weight reaches q percent (inverted CDF)."""
    pairs = sorted(zip(values, weights))
    total = sum(w for _, w in pairs)
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= total * q / 100.0 - 1e-12:
            return v
    return pairs[-1][0]
