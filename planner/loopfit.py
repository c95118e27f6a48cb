"""The closed loop's refit and its error figures (planner.validate runs the loop).

Refit: one point per operator shape from this machine's microbenchmarks and the executor
runs given (the median of every run's repeats pooled: typical_s), curves fitted by
calibration.fit.fit_local; host time per op from its direct measurement in the store
(microbench "host_op"), else the starting profile's.  Errors: MAPE of TTFT / TPOT and of
the FA Pool / static ratio between pairs of configurations.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from calibration.profile import Host, Profile

METRICS = ("ttft_ms", "tpot_ms")
# report stage -> the prediction key of a row: the shipped profile, the refit (curves, host
# time per op measured; leave-one-out), and the refit times a per-family bias (apart)
STAGES = {"before": "predicted", "refit": "predicted_refit",
          "with_bias": "predicted_with_bias"}


def typical_s(times_s) -> float:
    """The one statistic the loop compares: the median of the repeats, for an op's samples
    (the refit's points) and for a step's end-to-end time (the measured TTFT / TPOT) alike,
    so a prediction (a sum of op times) and a measurement are the same statistic.  A low
    quantile is not: the sum of every op's fast tail is faster than any whole step."""
    return float(np.median(np.asarray(times_s, dtype=float)))


# ------------------------------------------------------------------ refitting
def robust_samples(samples: list) -> list:
    """One sample per distinct (op, params): the repeats of every run that timed that shape
    pooled, median_s replaced by their typical_s (run_id: the first
    run's).  Pooling gives the fit one point per shape, each from more repeats."""
    merged: dict = {}
    for s in samples:
        key = (s["op"], json.dumps(s["params"], sort_keys=True))
        if key not in merged:
            merged[key] = dict(s, times_s=list(s.get("times_s") or []))
        else:
            merged[key]["times_s"].extend(s.get("times_s") or [])
    out = []
    for s in merged.values():
        if s["times_s"]:
            s["median_s"] = typical_s(s["times_s"])
        out.append(s)
    return out


def microbench_samples(store) -> tuple:
    """(samples, smallest world size, fingerprint) of every microbenchmark run of this
    store's newest machine (each world size measures its own loopback link), or
    ([], None, None) when there are none."""
    runs = [r for r in store.runs(status="complete") if r["kind"] == "microbench"]
    if not runs:
        return [], None, None
    key = runs[-1]["fingerprint"].get("hostname_sha256")
    chosen = [r for r in runs if r["fingerprint"].get("hostname_sha256") == key]
    samples = [s for r in chosen for s in store.samples(run_id=r["id"])]
    return samples, min(r["world_size"] for r in chosen), chosen[-1]["fingerprint"]


@dataclass(frozen=True)
class RefitInputs:
    """What every fold's refit reads, read from the store once: this machine's
    microbenchmark samples (microbench_samples) and each executor run's operator samples
    (its collectives dropped: calibration.fit.without_executor_collectives)."""
    bench: list
    world: int | None
    fingerprint: dict | None
    by_run: dict                   # executor run id -> [sample]


def refit_inputs(store, executor_run_ids: list) -> RefitInputs:
    from calibration.fit import without_executor_collectives
    by_run = {rid: without_executor_collectives(
        [s for s in store.samples(run_id=rid) if not s["op"].startswith("e2e_")], [rid])
        for rid in executor_run_ids}
    return RefitInputs(*microbench_samples(store), by_run)


def refit_profile(inputs: RefitInputs, executor_run_ids: list, base: Profile,
                  name: str = "local-refit") -> Profile:
    """Profile refitted from microbenchmark samples (if any) + the given executor runs'
    operator samples (calibration.fit.fit_local)."""
    from calibration.fit import fit_local
    bench = inputs.bench
    ex = [s for rid in executor_run_ids for s in inputs.by_run[rid]]
    world = inputs.world or 2
    ram = float((inputs.fingerprint or {}).get("ram_bytes") or base.device.hbm_bytes * world)
    provenance = {"runs": sorted({s["run_id"] for s in bench + ex}),
                  "method": "planner.validate: calibration.fit.fit_local on microbenchmark "
                            "+ executor operator samples (one point per shape: "
                            "the median of the repeats of every run)"}
    samples = robust_samples(bench + ex)
    refit = fit_local(samples, name, base.device.name, ram, world, provenance,
                      default_links=base.links, balance=True)
    if refit.host == Host():        # no host measurement in the store: the base's stands
        refit = dataclasses.replace(refit, host=base.host)
    return refit


def e2e_corrections(rows: list) -> dict:
    """{(family, metric): (0, b)} with measured ~ b * predicted_refit over rows of that
    family (Config.family; the kind when rows carry none): b the geometric mean of m / p."""
    acc: dict = {}
    for r in rows:
        for m in METRICS:
            acc.setdefault((r.get("family", r["kind"]), m), []).append((r["predicted_refit"][m],
                                                       r["measured"][m]))
    out = {}
    for key, pts in acc.items():
        p = np.array([x for x, _ in pts])
        meas = np.array([y for _, y in pts])
        out[key] = (0.0, float(math.exp(np.mean(np.log(meas / p)))))
    return out


# ------------------------------------------------------------------ errors
def _err(pred: float, meas: float) -> float:
    return (pred - meas) / meas * 100.0


def mape(rows: list, key: str, metric: str) -> float:
    return float(np.mean([abs(_err(r[key][metric], r["measured"][metric])) for r in rows]))


def ratio_errors(rows: list, key: str) -> list:
    """|predicted FA Pool / baseline ratio / measured ratio - 1| in percent, per pair (same
    model, batch and length: Config.pair) where both strategies ran, per metric."""
    out = []
    by_pair: dict = {}
    for r in rows:
        pair = tuple(r.get("pair") or (r["seq_len"],))
        by_pair.setdefault(pair, {}).setdefault(r["kind"], []).append(r)
    for _, kinds in sorted(by_pair.items()):
        if "static" not in kinds or "fapool" not in kinds:
            continue
        base, n = kinds["static"][0], kinds["static"][0]["seq_len"]
        for fa in kinds["fapool"]:
            for m in METRICS:
                pred = fa[key][m] / base[key][m]
                meas = fa["measured"][m] / base["measured"][m]
                out.append({"seq_len": n, "config": fa["label"], "metric": m,
                            "predicted": round(pred, 4), "measured": round(meas, 4),
                            "error_pct": round(_err(pred, meas), 2)})
    return out


def summarize(rows: list, key: str) -> dict:
    """MAPE in % of TTFT, TPOT and the FA Pool / static ratio, for the prediction `key`."""
    ratios = ratio_errors(rows, key)
    return {"ttft": round(mape(rows, key, "ttft_ms"), 2),
            "tpot": round(mape(rows, key, "tpot_ms"), 2),
            "ratio": round(float(np.mean([abs(r["error_pct"]) for r in ratios])), 2)
            if ratios else None,
            "ratios": ratios}
