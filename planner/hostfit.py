"""Fit a profile's host time per op (calibration.profile.Host) to measured step times.

Microbenchmarks time each operator in a tight loop, so they never see what a real program
spends on the host between operators (Python, eager-mode dispatch, posting a send).  That
time is one number per machine and framework, and only end-to-end times reveal it, so it is
fitted here, through the simulator, to the executor's measured TTFT and TPOT:

    h* = argmin_h  sum_i (log sim_i(h) - log measured_i)^2        over h in [0, H_MAX_S]

(least squares in log time, as calibration.fit does for the curves; one scalar, so a
bounded scalar minimisation).  Its std is the Gauss-Newton one, with the residuals' own
scatter: var = s^2 / sum_i (d r_i / d h)^2, s^2 = RSS / (n - 1).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.optimize import minimize_scalar

from calibration.profile import Host, Profile

H_MAX_S = 5e-3          # search bound: far above any per-op overhead seen (~0.1 ms on CPU)


def fit_host(points: list, profile: Profile, predict, source: str) -> Host:
    """points: [(config, metric, measured_ms)]; predict(config, profile) -> {metric: ms}.
    Returns the fitted Host (h, its std, the source)."""
    configs = list({id(c): c for c, _, _ in points}.values())   # each simulated once per h

    def residuals(h: float) -> np.ndarray:
        prof = dataclasses.replace(profile, host=Host(h))
        pred = {id(c): predict(c, prof) for c in configs}
        return np.array([math.log(pred[id(c)][m] / meas) for c, m, meas in points])

    res = minimize_scalar(lambda h: float(np.sum(residuals(h) ** 2)), bounds=(0.0, H_MAX_S),
                          method="bounded", options={"xatol": 1e-7})
    h = float(res.x)
    step = max(1e-7, 0.01 * h)
    jac = (residuals(h + step) - residuals(max(0.0, h - step))) / (h + step - max(0.0, h - step))
    r = residuals(h)
    dof = max(1, len(r) - 1)
    std = math.sqrt(float(np.sum(r ** 2)) / dof / max(float(np.sum(jac ** 2)), 1e-30))
    return Host(h, std, (f"{source}: fitted to {len(points)} measured step times "
                         f"(log-RMS residual {math.sqrt(float(np.mean(r ** 2))):.3f})",))
