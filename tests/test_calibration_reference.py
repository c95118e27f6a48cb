"""Reference profiles come out of the shipped public data by the shared fitting code."""

import csv
import math

import numpy as np
import pytest
import yaml

from calibration import curves, load_profile
from calibration.profile import DATA_DIR
from calibration.reference import build_all

CSVS = sorted(DATA_DIR.glob("*_*.csv"))


def close(a, b, path=""):
    """Recursive equality with a float tolerance (fits may differ in the last digits)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        # residual listings are rounded to 4 decimals: compare those absolutely
        abs_tol = 2e-3 if ".residuals." in path else 1e-12
        assert math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=abs_tol), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def regenerated():
    return build_all()


@pytest.mark.parametrize("name", ["dgx-a100", "dgx-h100"])
def test_shipped_yaml_equals_a_fresh_regeneration(name, regenerated):
    shipped = yaml.safe_load((DATA_DIR / f"{name}.yaml").read_text())
    fresh = yaml.safe_load(yaml.safe_dump(regenerated[name].to_dict()))
    close(shipped, fresh, name)


def test_every_data_row_has_a_source_and_a_tag():
    assert len(CSVS) >= 10
    for path in CSVS:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows, path
        for row in rows:
            assert row["source"].strip(), (path, row)
            assert row["tag"] in {"S", "M", "C", "D"}, (path, row)


@pytest.mark.parametrize("name", ["dgx-a100", "dgx-h100"])
def test_reference_profiles_load_with_uncertainty_and_keep_datasheet_peaks(name):
    profile = load_profile(name)
    assert profile.has_uncertainty
    peaks = {"dgx-a100": (312e12, 2.039e12, 300e9, 25e9),
             "dgx-h100": (989e12, 3.35e12, 450e9, 50e9)}[name]
    assert profile.device.peak_flops == peaks[0]
    assert profile.device.hbm_bandwidth == peaks[1]
    assert profile.links["nvlink"].peak_bandwidth == peaks[2]
    assert profile.links["ib"].peak_bandwidth == peaks[3]
    for curve in [profile.gemm, profile.attention, profile.memory] + [
            l.curve for l in profile.links.values()]:
        assert curve.points > 0 and curve.rmse_rel is not None and curve.sources
        cov = np.asarray(curve.cov)
        assert np.all(np.linalg.eigvalsh((cov + cov.T) / 2) >= -1e-12 * np.abs(cov).max())


def test_fitted_curves_reproduce_the_public_points():
    # A100 GEMM: 4096 -> 12288 at T=4096 runs at 216 TFLOP/s (vidur, D); the fit's
    # prediction lies within its stated relative error (rmse_rel, and 2x for one point)
    profile = load_profile("dgx-a100")
    t = curves.gemm_time(profile.gemm.params, profile.device, 4096, 4096, 12288, 2)
    measured = 2 * 4096 * 4096 * 12288 / 216e12
    assert abs(t / measured - 1) <= 2 * profile.gemm.rmse_rel
    # H100 FA2 forward, non-causal, d=128, s=4k: 368 TFLOP/s (chart, C)
    h100 = load_profile("dgx-h100")
    t = curves.attention_time(h100.attention.params, h100.device, 4, 4096, 4096, 16, 16, 128,
                              False, 2)
    measured = 4 * 4 * 4096 ** 2 * 16 * 128 / 368e12
    assert abs(t / measured - 1) <= 2 * h100.attention.rmse_rel


def test_points_above_the_link_peak_are_reported_not_hidden():
    # H100 all_reduce of 1 GB in 4029 us on 8 GPUs: busbw 466 GB/s > NVLink 4's 450
    nvlink = load_profile("dgx-h100").links["nvlink"].curve
    assert nvlink.params["efficiency"] <= 1.0
    assert any("beat the peak" in s for s in nvlink.sources)
    ib = load_profile("dgx-h100").links["ib"].curve
    assert any("beat the peak" in s for s in ib.sources)
    assert any("latency_s held" in s for s in ib.sources)
