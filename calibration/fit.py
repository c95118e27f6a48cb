"""Fit the cost curves of calibration.curves to timed points, with parameter covariance.

Method: weighted least squares in log-time space (scipy.optimize.least_squares, trust
region reflective, with bounds that keep fractions of a peak in (0, 1] and the rest >= 0):

    r_i = (log model(params, shape_i) - log t_i) / sigma_i

sigma_i is the relative uncertainty of point i (log-space); a point measured here gets a
floor of 2 %, a public figure the uncertainty of its tag (M 3 %, D 5 %, C 10 %).  The
covariance is the Gauss-Newton one, cov = (J^T J)^-1 * max(1, chi2 / dof) (curve_fit's
pcov, scaled up when the model fits worse than the points' own noise, never down).
Several starts (a small grid) guard against local minima of the max(compute, memory) kink.

A parameter the points do not constrain (its Jacobian column is zero, e.g. read_efficiency
when every point is compute bound) is not invented: it is held at a stated prior (value,
std, reason) or, for a fraction, centred in the interval the points allow; either way the
curve's sources say so.  Where the cost is flatter than the linearisation claims (the
max(compute, memory) kink), the std is widened by a scan (_widen_flat_directions).

rmse_rel = sqrt(mean((predicted / measured - 1)^2)) over the points.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

from calibration import curves
from calibration.errors import InputError
from calibration.profile import Curve, Host, Link, Profile

MEASURED_SIGMA = 0.02
TAG_SIGMA = {"M": 0.03, "D": 0.05, "C": 0.10, "S": 0.05}

# Bounds per parameter (fractions of a peak in (0, 1]; lengths and times >= 0).
BOUNDS = {
    "efficiency_max": (1e-4, 1.0), "read_efficiency": (1e-4, 1.0), "efficiency": (1e-4, 1.0),
    "half_tokens": (0.0, 1e6), "half_seq": (0.0, 1e7), "half_seq_causal": (0.0, 1e7),
    "half_head_dim": (0.0, 1e4), "launch_s": (0.0, 1.0), "latency_s": (0.0, 10.0),
    "norm_factor": (1.0, 1e4), "activation_factor": (1.0, 1e4),
}
# Starting grid per parameter ("T" = a fraction of the smallest measured time).
STARTS = {
    "efficiency_max": (0.3, 0.9), "read_efficiency": (0.3, 0.9), "efficiency": (0.3, 0.9),
    "half_tokens": (2.0, 30.0, 300.0), "half_seq": (20.0, 500.0),
    "half_seq_causal": (20.0, 500.0, 5000.0), "half_head_dim": (8.0, 64.0),
    "launch_s": ("T0.01", "T0.5"), "latency_s": ("T0.01", "T0.5"),
    "norm_factor": (1.0, 5.0), "activation_factor": (1.0, 5.0),
}
# Parameters in seconds: their natural scale is the smallest measured time, not 1.
TIME_PARAMS = ("launch_s", "latency_s")


@dataclass(frozen=True)
class Point:
    """One timed shape of a family.  shape: the keyword arguments of the curve function
    (gemm: tokens, k, n, dtype_bytes; attention: batch, q_len, ...; memory: moved_bytes;
    link: kind, payload (nccl-tests size), ranks, lanes)."""

    family: str
    shape: dict
    time_s: float
    sigma: float = MEASURED_SIGMA
    source: str = ""
    note: str = ""           # shown in residual labels (e.g. which memory op)

    def __post_init__(self):
        if self.family not in curves.FAMILY_PARAMS:
            raise ValueError(f"unknown family {self.family!r}")
        if not (self.time_s > 0 and math.isfinite(self.time_s)):
            raise ValueError(f"time must be positive and finite, got {self.time_s}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


@dataclass(frozen=True)
class Fixed:
    """A parameter held at a value (not fitted), with its uncertainty and the reason."""

    value: float
    std: float
    reason: str


@dataclass(frozen=True)
class FitResult:
    curve: Curve              # its sources end with the fit's notes (held parameters, ...)
    residuals: tuple          # (label, measured_s, predicted / measured - 1) per point


def predict(family: str, params: dict, point: Point, device: curves.Device | None = None,
            peak_bandwidth: float | None = None) -> float:
    """The curve's time for the point's shape."""
    s = point.shape
    if family == "gemm":
        return curves.gemm_time(params, device, s["tokens"], s["k"], s["n"], s["dtype_bytes"])
    if family == "attention":
        return curves.attention_time(params, device, s["batch"], s["q_len"], s["kv_len"],
                                     s["heads"], s["kv_heads"], s["head_dim"],
                                     bool(s["causal"]), s["dtype_bytes"])
    if family == "memory":
        return curves.memory_time(params, device, s["moved_bytes"], s.get("kind", "copy"))
    return curves.collective_time(params, peak_bandwidth * s.get("lanes", 1), s["kind"],
                                  s["payload"], s["ranks"])


def label(point: Point) -> str:
    """A short human label of a point's shape (for residual listings)."""
    text = " ".join(f"{k}={v}" for k, v in point.shape.items())
    return f"{point.note} {text}" if point.note else text


def _starts(names, tmin: float):
    grids = []
    for name in names:
        values = STARTS[name]
        grids.append([tmin * float(v[1:]) if isinstance(v, str) else v for v in values])
    combos = list(itertools.product(*grids))
    if len(combos) > 64:  # keep the multi-start cheap: an even subsample of the grid
        combos = combos[:: math.ceil(len(combos) / 64)]
    return combos


BOOTSTRAP_DRAWS = 24      # refits on resampled points per curve (prediction intervals)


def fit_curve(family: str, points: list[Point], device: curves.Device | None = None,
              peak_bandwidth: float | None = None, fixed: dict | None = None,
              priors: dict | None = None, sources: tuple = (),
              bootstrap: int = BOOTSTRAP_DRAWS) -> FitResult:
    """Fit one family (family 'link' needs peak_bandwidth; the others need device).

    fixed: name -> Fixed, held from the start.  priors: name -> Fixed, used only for a
    parameter the points turn out not to constrain (a zero Jacobian column).  Without a
    prior such a parameter is, if a fraction, centred in the interval the points allow
    (see _widen_flat_directions), else held at its start value with a 100 % std.
    Raises ValueError with no points.
    """
    if not points:
        raise ValueError(f"no points to fit the {family} curve")
    names = curves.FAMILY_PARAMS[family]
    fixed = dict(fixed or {})
    priors = dict(priors or {})
    times = np.array([p.time_s for p in points])
    sigma = np.array([p.sigma for p in points])
    notes = [f"{name} held at {f.value:.4g} +- {f.std:.2g}: {f.reason}"
             for name, f in fixed.items()]

    for _attempt in range(len(names) + 1):
        free = [n for n in names if n not in fixed]
        x, jac = _solve(family, points, device, peak_bandwidth, free, fixed, times, sigma)
        # a free parameter with a (numerically) zero Jacobian column is unconstrained
        col = np.linalg.norm(jac, axis=0) if free else np.array([])
        typical = [float(times.min()) if n in TIME_PARAMS else 1.0 for n in free]
        weak = [n for n, c, s in zip(free, col, typical) if c * s < 1e-6]
        # fractions stay free: the scan below finds the interval the points allow
        hold = [n for n in weak if n in priors or n not in curves.FRACTION_PARAMS]
        if not hold:
            break
        for name in hold:
            value = dict(zip(free, x))[name]
            prior = priors.get(name) or Fixed(
                value, abs(value), "not constrained by these points; 100 % uncertainty")
            fixed[name] = prior
            notes.append(f"{name} held at {prior.value:.4g} +- {prior.std:.2g}: "
                         f"{prior.reason}")
    dof = len(points) - len(free)
    chi2 = _cost(family, points, device, peak_bandwidth, free, fixed, x, sigma)
    inflate = max(1.0, chi2 / dof) if dof > 0 else 1.0
    cov = np.zeros((len(names), len(names)))
    if free:
        # columns scaled to each parameter's size first: launch_s (~1e-6) next to
        # half_tokens (~1e2) would otherwise make J^T J too ill-conditioned to invert
        d = np.array([max(abs(v), float(times.min()) if n in TIME_PARAMS else 1.0)
                      for n, v in zip(free, x)])
        js = jac * d
        cov_free = np.linalg.pinv(js.T @ js) * np.outer(d, d) * inflate
        idx = [names.index(n) for n in free]
        cov[np.ix_(idx, idx)] = cov_free
    for name, f in fixed.items():
        i = names.index(name)
        cov[i, i] = f.std ** 2
    if free:
        x = _widen_flat_directions(cov, names, free, x, float(times.min()), notes, lambda xs: _cost(
            family, points, device, peak_bandwidth, free, fixed, xs, sigma) / inflate)
    params = _params(fixed, free, (float(v) for v in x))
    resid = _residuals(family, points, device, peak_bandwidth, params)
    if dof <= 0:
        notes.append(f"{len(points)} points for {len(free)} free parameters: an exact fit, so "
                     "rmse_rel says nothing; the std comes from the points' own uncertainty")
    std = {n: float(math.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(names)}
    rmse = float(math.sqrt(np.mean(resid ** 2)))
    draws = bootstrap_draws(family, points, device, peak_bandwidth, free, fixed, x, sigma,
                            bootstrap) if free and dof > 0 else ()
    curve = Curve(family=family, params={n: float(params[n]) for n in names}, std=std,
                  cov=tuple(tuple(float(v) for v in row) for row in cov), rmse_rel=rmse,
                  points=len(points), sources=tuple(sources) + tuple(notes), draws=draws)
    residuals = tuple((label(p), p.time_s, float(e)) for p, e in zip(points, resid))
    return FitResult(curve, residuals)


def bootstrap_draws(family, points, device, peak_bandwidth, free, fixed, x, sigma,
                    count: int) -> tuple:
    """Parameter tuples (family order) of `count` refits, each on the points resampled
    with replacement (Efron's bootstrap), started at the fit x, the held parameters held.
    The spread is what the points support: a parameter they do not constrain does not
    move, where a linearised covariance would give it any width.  Seeded: a profile's
    draws are reproducible."""
    names = curves.FAMILY_PARAMS[family]
    rng = np.random.default_rng(len(points))
    lower = np.array([BOUNDS[n][0] for n in free])
    upper = np.array([BOUNDS[n][1] for n in free])
    out = []
    for _ in range(count):
        idx = rng.integers(0, len(points), len(points))
        pts, sig = [points[i] for i in idx], sigma[idx]
        log_t = np.log(np.array([p.time_s for p in pts]))

        def residual(xs, pts=pts, sig=sig, log_t=log_t):
            params = _params(fixed, free, xs)
            model = np.array([predict(family, params, p, device, peak_bandwidth)
                              for p in pts])
            return (np.log(np.maximum(model, 1e-300)) - log_t) / sig
        res = least_squares(residual, np.clip(x, lower, upper), bounds=(lower, upper),
                            x_scale="jac", method="trf", max_nfev=500)
        params = _params(fixed, free, res.x)
        out.append(tuple(float(params[n]) for n in names))
    return tuple(out)


def _params(fixed: dict, free, x) -> dict:
    """All parameters of a family: the held ones' values, then the free ones at x."""
    params = {n: f.value for n, f in fixed.items()}
    params.update(zip(free, x))
    return params


def _cost(family, points, device, peak_bandwidth, free, fixed, x, sigma) -> float:
    """Sum of squared weighted log residuals at free parameters x."""
    params = _params(fixed, free, x)
    r = np.log1p(_residuals(family, points, device, peak_bandwidth, params)) / sigma
    return float(r @ r)


def _widen_flat_directions(cov, names, free, x, tmin, notes, cost) -> np.ndarray:
    """Correct the linearised covariance where the cost is flatter than it claims.

    At the max(compute, memory) kink a parameter can act on one side only (raising
    read_efficiency past the kink changes nothing), so J^T J overstates how well it is
    known, or (zero Jacobian column) says nothing.  For each free parameter, step away
    either way (the others held), doubling the step until the cost rises by 1 (in units
    where 1 std raises it by 1: a quadratic cost reads 1 std = step / sqrt(rise)) or the
    bound is reached.  The std becomes the wider reach.  A fraction that is flat up to a
    bound on one side is moved to the middle of the interval the points allow, with half
    its width as std, so draws stay inside it; the cost moves by < 1 there.
    Returns the (possibly re-centred) free parameters; only ever widens cov."""
    x = x.copy()
    base = cost(x)
    for j, name in enumerate(free):
        i = names.index(name)
        std = math.sqrt(max(cov[i, i], 0.0))
        scale = tmin if name in TIME_PARAMS else max(abs(x[j]), 1e-3)
        first = 2.0 * std if std > 0 else 0.1 * scale
        lo, hi = BOUNDS[name]
        reach = {}
        for sign in (1.0, -1.0):
            step = first
            while True:
                trial = x.copy()
                trial[j] = min(max(x[j] + sign * step, lo), hi)
                moved = abs(trial[j] - x[j])
                rise = cost(trial) - base
                if rise >= 1.0:
                    reach[sign] = (moved / math.sqrt(rise), False)
                    break
                if trial[j] in (lo, hi) or step > 1e3 * first:  # at the bound / no end
                    reach[sign] = (moved, True)
                    break
                step *= 2.0
        (up, up_flat), (down, down_flat) = reach[1.0], reach[-1.0]
        # (a fraction the data pin to its bound, e.g. points beating the peak, stays there)
        if name in curves.FRACTION_PARAMS and (up_flat or down_flat) \
                and min(up, down) > 1e-3 * first:
            low, high = x[j] - down, x[j] + up
            x[j] = 0.5 * (low + high)
            wanted = 0.5 * (high - low)
            if wanted > 2 * std:
                notes.append(f"{name} is flat up to a bound: the points allow "
                             f"[{low:.3g}, {high:.3g}]; centred there")
        else:
            wanted = max(std, up, down)
        if std == 0.0:
            cov[i, i] = wanted ** 2
        elif wanted > std:
            cov[i, :] *= wanted / std
            cov[:, i] *= wanted / std
    return x


def residual_table(fits: dict) -> dict:
    """{name: [[label, measured_s (6 digits), predicted / measured - 1 (4 decimals)]]} of
    FitResults, as profiles record them in provenance."""
    return {name: [[lbl, float(f"{t:.6g}"), round(e, 4)] for lbl, t, e in fit.residuals]
            for name, fit in fits.items()}


def _residuals(family, points, device, peak_bandwidth, params) -> np.ndarray:
    """predicted / measured - 1 per point."""
    return np.array([predict(family, params, p, device, peak_bandwidth) / p.time_s - 1.0
                     for p in points])


def _solve(family, points, device, peak_bandwidth, free, fixed, times, sigma):
    """Best (x, jacobian) over the start grid; the jacobian is of the weighted residuals."""
    if not free:
        return np.array([]), np.zeros((len(points), 0))
    log_t = np.log(times)
    lower = np.array([BOUNDS[n][0] for n in free])
    upper = np.array([BOUNDS[n][1] for n in free])

    def residual(x):
        params = _params(fixed, free, x)
        model = np.array([predict(family, params, p, device, peak_bandwidth) for p in points])
        return (np.log(np.maximum(model, 1e-300)) - log_t) / sigma

    best = None
    for start in _starts(free, float(times.min())):
        x0 = np.clip(np.array(start, dtype=float), lower, upper)
        try:
            res = least_squares(residual, x0, bounds=(lower, upper), x_scale="jac",
                                method="trf", max_nfev=2000)
        except ValueError:
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise ValueError(f"the {family} fit failed from every start")
    return best.x, best.jac


# ---------------------------------------------------------------- store samples -> profile
GATHER_OPS = ("all_gather", "gather")


def without_executor_collectives(samples: list[dict], executor_run_ids) -> list[dict]:
    """The samples minus the collectives timed inside executor runs: those are not link
    measurements (a blocking receive includes waiting for the peer's compute, a posted send
    only its posting: seen here from 2 us to 0.7 ms for the same few hundred bytes), so
    link curves come from microbenchmarks only.  They stay in the store for inspection."""
    skip = set(executor_run_ids)
    return [s for s in samples
            if not (s["run_id"] in skip and s["op"] in curves.COLLECTIVE_FACTORS)]


def points_from_samples(samples: list[dict]) -> tuple[dict, dict]:
    """Store samples -> ({family: [Point]}, {link name: [Point]}).  Ops without a curve
    (e2e_prefill, e2e_decode, ...) are skipped.  Collective sizes follow nccl-tests: the
    store keeps the payload per rank, so all_gather / gather have size = bytes * ranks."""
    families: dict = {"gemm": [], "attention": [], "memory": []}
    links: dict = {}
    for s in samples:
        op, p, src = s["op"], s["params"], f"run {s['run_id']}"
        if op == "gemm":
            shape = {k: int(p[k]) for k in ("tokens", "k", "n", "dtype_bytes")}
        elif op == "attention":
            shape = {k: int(p[k]) for k in ("batch", "q_len", "kv_len", "heads", "kv_heads",
                                            "head_dim", "dtype_bytes")}
            shape["causal"] = bool(p["causal"])
        elif op == "memory":
            kind = str(p.get("kind", "copy"))
            shape = {"moved_bytes": float(p["bytes"]),
                     "kind": kind if kind in curves.MEMORY_KINDS else "copy"}
            families[op].append(Point(op, shape, float(s["median_s"]), source=src,
                                      note=str(p["kind"])))
            continue
        elif op in curves.COLLECTIVE_FACTORS and int(p["ranks"]) > 1:
            ranks = int(p["ranks"])
            size = float(p["bytes"]) * (ranks if op in GATHER_OPS else 1)
            links.setdefault(p["link"], []).append(Point(
                "link", {"kind": op, "payload": size, "ranks": ranks, "lanes": 1},
                float(s["median_s"]), source=src))
            continue
        else:
            continue
        families[op].append(Point(op, shape, float(s["median_s"]), source=src))
    return families, links


def balance_attention_phases(points: list[Point]) -> list[Point]:
    """Decode (q_len 1) and prefill attention points weighted alike in total: sigma scaled
    by sqrt(group size / mean group size), so the fit's total weight is unchanged.  An
    executor run times a decode shape per context length (about a hundred of them) but a
    prefill shape per prompt length (a few), and one efficiency curve cannot follow both
    regimes on a CPU: unweighted, the decode points set it and long prefill came out 3-4x
    too slow (seen here: 57 ms predicted for a measured 12.5 ms at seq 734)."""
    groups = [p.shape["q_len"] == 1 for p in points]
    sizes = {g: groups.count(g) for g in set(groups)}
    mean = len(points) / len(sizes)
    return [replace(p, sigma=p.sigma * math.sqrt(sizes[g] / mean))
            for p, g in zip(points, groups)]


def measured_peaks(families: dict, links: dict) -> tuple[float, float, dict]:
    """No datasheet for this machine: the peaks are the best measured rates, so every
    measured point lies on or above its floor and fitted fractions stay in (0, 1]."""
    rates = [curves.gemm_cost(**p.shape)[0] / p.time_s for p in families["gemm"]]
    rates += [curves.attention_cost(**p.shape)[0] / p.time_s for p in families["attention"]]
    bandwidths = [p.shape["moved_bytes"] / p.time_s for p in families["memory"]]
    link_peaks = {name: max(curves.collective_bytes(p.shape["kind"], p.shape["payload"],
                                                    p.shape["ranks"]) / p.time_s for p in pts)
                  for name, pts in links.items()}
    return max(rates), max(bandwidths), link_peaks


def fit_local(samples: list[dict], name: str, device_name: str, ram_bytes: float,
              world_size: int, provenance: dict, default_links: dict | None = None,
              balance: bool = False):
    """Fit a profile of this machine from store samples (one CPU process or GPU per rank).
    default_links ({name: Link}): kept as they are when the samples time no collective
    (else that is an error).  balance: weight decode and prefill attention alike
    (balance_attention_phases), for samples timed inside executor runs."""
    families, links = points_from_samples(samples)
    if balance and families["attention"]:
        families["attention"] = balance_attention_phases(families["attention"])
    for family in ("gemm", "attention", "memory"):
        if not families[family]:
            raise InputError("store", f"no {family} samples in the selected runs; run "
                             "`fapool calibrate` to measure them")
    if not links and not default_links:
        raise InputError("store", "no collective samples (world size >= 2) in the selected "
                         "runs; run `fapool calibrate --world-size 2`")
    peak_flops, bandwidth, link_peaks = measured_peaks(families, links)
    device = curves.Device(device_name, peak_flops, ram_bytes / world_size, bandwidth)
    runs = sorted({p.source for pts in families.values() for p in pts})
    fits = {fam: fit_curve(fam, pts, device, sources=(f"measured: {', '.join(runs)}",))
            for fam, pts in families.items()}
    link_objs = {} if links else dict(default_links)
    for lname, pts in links.items():
        fit = fit_curve("link", pts, peak_bandwidth=link_peaks[lname],
                        sources=(f"measured: {', '.join(sorted({p.source for p in pts}))}",))
        fits[lname] = fit
        link_objs[lname] = Link(lname, link_peaks[lname], fit.curve)
    prov = dict(provenance)
    host = host_from_samples(samples)
    prov["peaks"] = ("measured, no datasheet: peak_flops = best measured GEMM/attention "
                     "FLOP/s; hbm_bandwidth = best measured memory-op (copy/norm/activation) "
                     "bandwidth; link peak_bandwidth = best measured bus bandwidth of any "
                     f"collective; hbm_bytes = RAM / world size ({world_size})")
    prov["residuals"] = residual_table(fits)
    if not links:
        prov["links"] = "not refitted (the samples time no collective): " + ", ".join(
            f"{n} as given" for n in link_objs)
    return Profile(name=name, device=device, gemm=fits["gemm"].curve,
                   attention=fits["attention"].curve, memory=fits["memory"].curve,
                   links=link_objs, description=f"this machine: {world_size} local processes "
                   f"of {device_name}, joined by {', '.join(link_objs)}", provenance=prov,
                   **({"host": host} if host else {}))


def host_from_samples(samples: list[dict]):
    """The host time per op measured directly (microbench "host_op": the executor's
    interpreter around a no-op kernel), median and spread of every repeat; None if the
    samples have none."""
    times = [t for s in samples if s["op"] == "host_op" for t in s.get("times_s") or ()]
    if not times:
        return None
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    runs = sorted({s["run_id"] for s in samples if s["op"] == "host_op"})
    sources = [f"measured: executor.kernels.host_overhead, runs {runs}"]
    medians = {}
    for op, what in (("host_post", "post_overhead_s: dist.isend to a waiting peer"),
                     ("host_wake", "wake_s: small ops right after a message woke the rank")):
        times = [t for s in samples if s["op"] == op for t in s.get("times_s") or ()]
        medians[op] = float(np.median(times)) if times else 0.0
        if times:
            sources.append(f"{what}, runs "
                           f"{sorted({s['run_id'] for s in samples if s['op'] == op})}")
    return Host(float(q50), float((q75 - q25) / 1.349),        # IQR -> sigma (normal)
                tuple(sources), medians["host_post"], medians["host_wake"])
