"""`fapool calibrate`: a quick CPU run (gloo, 2 processes) end to end, refit, bad input."""

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from calibration import curves, load_profile
from calibration.fit import GATHER_OPS
from calibration.store import Store

ROOT = Path(__file__).resolve().parents[1]
MAIN = "import sys; from planner.cli import main; sys.exit(main())"


def fapool(*args, timeout=120):
    return subprocess.run([sys.executable, "-c", MAIN, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calib")
    store, out = tmp / "m.sqlite", tmp / "p.yaml"
    proc = fapool("calibrate", "--quick", "--world-size", "2", "--backend", "gloo",
                  "--store", str(store), "--out", str(out), timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return store, out, proc


def predicted(profile, sample):
    """The profile's curve for a stored sample (store conventions -> curve arguments)."""
    op, p = sample["op"], sample["params"]
    if op == "gemm":
        return curves.gemm_time(profile.gemm.params, profile.device, p["tokens"], p["k"],
                                p["n"], p["dtype_bytes"])
    if op == "attention":
        return curves.attention_time(profile.attention.params, profile.device, p["batch"],
                                     p["q_len"], p["kv_len"], p["heads"], p["kv_heads"],
                                     p["head_dim"], p["causal"], p["dtype_bytes"])
    if op == "memory":
        return curves.memory_time(profile.memory.params, profile.device, p["bytes"], p["kind"])
    size = p["bytes"] * (p["ranks"] if op in GATHER_OPS else 1)  # nccl-tests size
    return profile.link(p["link"]).time(op, size, p["ranks"])


@pytest.mark.slow
def test_quick_run_writes_a_profile_whose_predictions_meet_its_stated_error(quick):
    store_path, out, proc = quick
    profile = load_profile(out)
    assert profile.name == "local" and profile.has_uncertainty
    assert "loopback" in profile.links
    assert "rmse_rel" in proc.stdout and str(out) in proc.stdout
    store = Store(store_path)
    (run,) = store.runs()
    assert run["status"] == "complete" and run["kind"] == "microbench"
    assert run["backend"] == "gloo" and run["world_size"] == 2 and run["torch_version"]
    assert profile.provenance["runs"] == [run["id"]]
    samples = store.samples(run_id=run["id"])
    ops = {s["op"] for s in samples}
    assert ops == {"gemm", "attention", "memory", "all_reduce", "all_gather", "broadcast",
                   "gather", "send_recv", "host_op", "host_post", "host_wake"}
    assert profile.host.op_overhead_s > 0                  # measured directly (host_op)
    assert profile.host.post_overhead_s > 0                # and posting a message
    impls = {s["params"].get("impl") for s in samples if s["op"] == "attention"}
    assert impls <= {"sdpa", "flash_attn"}                 # executor.attention's kernels
    samples = [s for s in samples if not s["op"].startswith("host_")]
    sizes = {s["params"]["bytes"] for s in samples if s["op"] == "all_reduce"}
    assert min(sizes) <= 1024 and max(sizes) >= 64 << 20
    families = {"gemm": profile.gemm, "attention": profile.attention, "memory": profile.memory}
    errors = {}
    for s in samples:
        family = s["op"] if s["op"] in families else "loopback"
        errors.setdefault(family, []).append(predicted(profile, s) / s["median_s"] - 1)
    for family, errs in errors.items():
        curve = families[family] if family in families else profile.links[family].curve
        assert curve.points == len(errs)
        rms = statistics.fmean(e * e for e in errs) ** 0.5
        assert rms == pytest.approx(curve.rmse_rel, rel=1e-6), family  # the stated error
        assert statistics.median(abs(e) for e in errs) <= 1.5 * curve.rmse_rel, family
    # physics: the measured peaks hold every compute point on or above its floor
    for s in samples:
        if s["op"] == "gemm":
            flops, moved = curves.gemm_cost(**{k: s["params"][k] for k in
                                              ("tokens", "k", "n", "dtype_bytes")})
            assert s["median_s"] >= curves.floor_compute(profile.device, flops, 0) * 0.999


@pytest.mark.slow
def test_refit_from_store_reproduces_the_profile_and_feeds_the_local_preset(quick, tmp_path):
    store_path, out, _ = quick
    again = tmp_path / "refit.yaml"
    proc = fapool("calibrate", "--refit", "--from-store", str(store_path), "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    a, b = load_profile(out), load_profile(again)
    for name in a.gemm.params:
        assert a.gemm.params[name] == pytest.approx(b.gemm.params[name], rel=1e-6)
    assert a.links["loopback"].peak_bandwidth == b.links["loopback"].peak_bandwidth
    from planner.cluster import resolve_cluster

    cluster = resolve_cluster("local", profile=str(again))
    assert cluster.load_profile().name == "local"


def test_shipped_local_profile_loads_for_the_local_preset():
    from planner.cluster import resolve_cluster

    profile = resolve_cluster("local").load_profile()
    assert profile.name == "local" and profile.has_uncertainty
    assert profile.provenance["world_size"] >= 2 and profile.provenance["runs"]


def one_line_error(proc, needle):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    out = str(tmp_path / "p.yaml")
    one_line_error(fapool("calibrate", "--backend", "mpi", "--out", out), "--backend")
    one_line_error(fapool("calibrate", "--world-size", "0", "--out", out,
                          "--store", str(tmp_path / "s.sqlite")), "--world-size")
    one_line_error(fapool("calibrate", "--world-size", str(4 * (os.cpu_count() or 1) + 1),
                          "--out", out, "--store", str(tmp_path / "s.sqlite")),
                   "--world-size")
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store is created
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 50)
    one_line_error(fapool("calibrate", "--store", str(junk), "--out", out), "store")
    one_line_error(fapool("calibrate", "--refit", "--from-store", str(junk), "--out", out),
                   "store")
    one_line_error(fapool("calibrate", "--refit", "--from-store", str(tmp_path / "nope"),
                          "--out", out), "--from-store")
    empty = tmp_path / "empty.sqlite"
    Store(empty)
    one_line_error(fapool("calibrate", "--refit", "--from-store", str(empty), "--out", out),
                   "no complete microbenchmark run")
    one_line_error(fapool("calibrate", "--out", str(tmp_path)), "--out")
    assert not Path(out).exists()  # nothing written half-way


def test_nccl_without_cuda_is_bad_input(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: nccl is valid here")
    one_line_error(fapool("calibrate", "--backend", "nccl", "--out", str(tmp_path / "p.yaml"),
                          "--store", str(tmp_path / "s.sqlite")), "nccl")
