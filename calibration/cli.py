"""`fapool calibrate`: measure this machine, store the samples, fit, write a profile.

    fapool calibrate [--backend auto|gloo|nccl] [--world-size N] [--quick] [--store PATH]
                     [--out PROFILE]
    fapool calibrate --refit [--from-store PATH] [--out PROFILE]

Measuring imports torch (inside the handler, never at import time).  Refitting reads
only the store.  Bad input -> InputError (one line, exit 2); a collective worker that dies
or hangs -> one line, exit 1, the run marked 'failed' in the store.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from calibration.errors import InputError
from calibration.fingerprint import cpu_cores, loopback_link

EPILOG = """examples:
  fapool calibrate --quick --world-size 2 --backend gloo --out /tmp/local.yaml
  fapool calibrate --world-size 2 --out calibration/data/local.yaml
  fapool calibrate --refit --from-store ~/.local/share/fa-pool/measurements.sqlite"""


def default_profile_path() -> Path:
    """<user data dir>/fa-pool/profiles/local.yaml, beside the default store."""
    from calibration.store import default_store_path

    return default_store_path().parent / "profiles" / "local.yaml"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="measure this machine and fit a hardware profile",
        description="Time GEMM, attention, memory-bound ops and collectives among N local "
                    "processes, keep every sample in the SQLite store, fit the cost curves "
                    "(with uncertainty) and write a profile.",
        epilog=EPILOG, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                        help="torch.distributed backend for collectives: auto = nccl when "
                             "CUDA GPUs are present, else gloo (default auto)")
    parser.add_argument("--world-size", type=int, default=None, metavar="N",
                        help="local processes (ranks); the profile's device is one of them "
                             "(default: 2 on CPU, the GPU count with nccl)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer, smaller points (under a minute; what CI runs)")
    parser.add_argument("--store", default=None, metavar="PATH",
                        help="SQLite measurement store (default: <user data dir>/fa-pool/"
                             "measurements.sqlite)")
    parser.add_argument("--out", default=None, metavar="PROFILE",
                        help="profile YAML to write (default: <user data dir>/fa-pool/"
                             "profiles/local.yaml)")
    parser.add_argument("--name", default="local", help="profile name (default local)")
    parser.add_argument("--refit", action="store_true",
                        help="refit from stored samples without measuring")
    parser.add_argument("--from-store", default=None, metavar="PATH",
                        help="store to refit from (default: --store, else the default store)")
    parser.set_defaults(handler=handle)


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise InputError("--out", f"{out} is a directory; give a .yaml file path")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError("--out", f"cannot write under {parent}")


def handle(args) -> int:
    out = Path(args.out) if args.out else default_profile_path()
    _check_out(out)
    if not args.name or not args.name.replace("-", "").replace("_", "").isalnum():
        raise InputError("--name", f"must be letters, digits, '-' or '_', got {args.name!r}")
    if args.refit:
        return _refit(args, out)
    return _measure(args, out)


def _resolve_backend(args):
    """(backend, world size, device type, gpu model, gpu count), validated; imports torch."""
    from calibration import microbench

    device, gpu_model, gpu_count = microbench.device_info()
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl" and device != "cuda":
        raise InputError("--backend", "nccl needs CUDA GPUs and none is available here; "
                         "use gloo")
    cores = cpu_cores()
    world = args.world_size
    if world is None:
        world = gpu_count if backend == "nccl" else 2
    _check_world(world)
    if backend == "nccl" and world > gpu_count:
        raise InputError("--world-size", f"{world} ranks with nccl need {world} GPUs; "
                         f"this machine has {gpu_count}")
    if world > 2 * cores:
        raise InputError("--world-size", f"{world} processes on {cores} cores is more than "
                         f"this machine can run (at most {2 * cores})")
    if backend == "gloo":  # gloo runs collectives on CPU tensors even with GPUs present
        device = "cpu"
    return backend, world, device, gpu_model, gpu_count


def _check_world(world: int) -> None:
    if world < 2:
        raise InputError("--world-size", f"must be at least 2 (collectives need two "
                         f"processes), got {world}")


def _measure(args, out: Path) -> int:
    from calibration.store import Store, default_store_path

    if args.world_size is not None:  # before importing torch
        _check_world(args.world_size)
    backend, world, device, gpu_model, gpu_count = _resolve_backend(args)
    store_path = Path(args.store) if args.store else default_store_path()
    store = Store(store_path)  # validates the file before any measuring

    from calibration import microbench   # the only calibration module that imports torch

    sweep = microbench.sweep(args.quick, device)
    cores = cpu_cores()
    threads = max(1, cores // world)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    link = loopback_link(world, cores)
    meta = {"quick": args.quick, "threads_per_process": threads, "device": device,
            "link": link, "loadavg_1min_at_start": load}
    if load is not None and load > 0.5 * cores:
        print(f"warning: this machine is busy (load average {load:.1f} on {cores} "
              "cores): timings will be slower and noisier than on an idle machine",
              file=sys.stderr)
    print(f"calibrating: backend {backend}, {world} processes, {threads} thread(s) each, "
          f"{'quick' if args.quick else 'full'} sweep; store {store_path}", file=sys.stderr)
    try:
        with store.run(kind="microbench", backend=backend, world_size=world,
                       torch_version=microbench.torch_version(), meta=meta, gpu_model=gpu_model,
                       device_count=gpu_count if device == "cuda" else 0) as run:
            def on_sample(op, params, times, dtype, impl):
                if op == "attention":
                    params = {**params, "impl": impl}
                run.add_sample(op=op, params=params, times_s=times, dtype=dtype)

            # The executor's own kernels and its host time per op (calibrate what runs):
            # the one place calibration reaches into the executor, and only here, at the
            # command's entry, so calibration's modules stay free of it.
            from executor import kernels
            microbench.run_compute(sweep, device, threads, on_sample, kernels)
            deadline = 240.0 if args.quick else 1200.0
            microbench.run_collectives(sweep, backend, world, link, on_sample,
                                       deadline_s=deadline)
    except microbench.CollectiveError as err:
        sys.stderr.write(f"fapool calibrate: error: {err} (run marked failed in the store)\n")
        return 1
    run_row = [r for r in store.runs() if r["id"] == run.id][0]
    profile = _fit(store, [run_row], args.name, store_path)
    return _write(profile, out)


def _refit(args, out: Path) -> int:
    from calibration.store import Store, default_store_path

    path = Path(args.from_store or args.store or default_store_path())
    if not path.is_file():
        raise InputError("--from-store", f"no such store file: {path}")
    if path.stat().st_size == 0:   # Store() would initialise it; a refit only reads
        raise InputError("--from-store", f"{path} is empty, not an fa-pool store")
    store = Store(path)
    runs = select_runs(store.runs(status="complete"), args.world_size)
    return _write(_fit(store, runs, args.name, path), out)


def select_runs(runs: list[dict], world_size: int | None) -> list[dict]:
    """Complete runs of one machine and world size (each rank's share of the cores depends
    on it): those of the newest microbenchmark run's machine, and its world size unless
    one is given.  Executor runs that match are included."""
    bench = [r for r in runs if r["kind"] == "microbench"]
    if not bench:
        raise InputError("--from-store", "the store has no complete microbenchmark run to "
                         "refit from; run `fapool calibrate` first")
    newest = bench[-1]
    world = world_size or newest["world_size"]
    key = (newest["fingerprint"].get("hostname_sha256"), newest["cpu_model"], newest["gpu_model"])
    chosen = [r for r in runs if r["world_size"] == world
              and (r["fingerprint"].get("hostname_sha256"), r["cpu_model"], r["gpu_model"]) == key]
    if not any(r["kind"] == "microbench" for r in chosen):
        raise InputError("--world-size", f"no complete microbenchmark run with world size "
                         f"{world} on this store's newest machine")
    return chosen


def _fit(store, runs: list[dict], name: str, store_path: Path):
    from calibration.fit import fit_local, without_executor_collectives

    ids = [r["id"] for r in runs]
    samples = without_executor_collectives(
        [s for rid in ids for s in store.samples(run_id=rid)],
        [r["id"] for r in runs if r["kind"] == "executor"])
    newest = [r for r in runs if r["kind"] == "microbench"][-1]
    fp = newest["fingerprint"]
    world = newest["world_size"]
    threads = newest["meta"].get("threads_per_process", max(1, fp["cpu_cores"] // world))
    device_name = (newest["gpu_model"] if newest["meta"].get("device") == "cuda"
                   else f"{fp['cpu_model']} ({threads} thread(s) per process)")
    provenance = {
        "runs": ids, "store": str(store_path),
        "torch_version": sorted({r["torch_version"] for r in runs if r["torch_version"]}),
        "backend": newest["backend"], "world_size": world, "threads_per_process": threads,
        "machine": {k: fp.get(k) for k in ("cpu_model", "cpu_cores", "ram_bytes",
                                           "hostname_sha256", "gpu_model", "gpu_count")},
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg_1min_at_start": {r["id"]: r["meta"].get("loadavg_1min_at_start")
                                  for r in runs if r["kind"] == "microbench"},
        "method": "calibration.fit: weighted least squares in log time, covariance from "
                  "the Jacobian (fapool calibrate)",
    }
    return fit_local(samples, name, device_name, float(fp.get("ram_bytes") or 0) or 1.0,
                     world, provenance, balance=any(r["kind"] == "executor" for r in runs))


def _write(profile, out: Path) -> int:
    from calibration.reference import write_profile

    write_profile(profile, out, f"# Measured by `fapool calibrate` on {profile.device.name}; "
                                f"runs {profile.provenance['runs']}.\n")
    print(format_table(profile))
    print(f"wrote {out}")
    return 0


def format_table(profile) -> str:
    """One line per fitted curve: points, rmse_rel and params +- std."""
    rows = [(c.family, c) for c in (profile.gemm, profile.attention, profile.memory)]
    rows += [(f"link {n}", l.curve) for n, l in profile.links.items()]
    lines = [f"profile {profile.name}: peak {profile.device.peak_flops / 1e9:.1f} GFLOP/s, "
             f"memory {profile.device.hbm_bandwidth / 1e9:.1f} GB/s "
             f"({profile.device.name})",
             f"{'curve':<14}{'points':>7}{'rmse_rel':>10}  parameters (+- std)"]
    for label, c in rows:
        params = "  ".join(f"{k}={v:.4g}+-{c.std.get(k, 0.0):.2g}" for k, v in c.params.items())
        lines.append(f"{label:<14}{c.points:>7}{c.rmse_rel:>10.3f}  {params}")
    for n, l in profile.links.items():
        lines.append(f"  link {n} peak_bandwidth {l.peak_bandwidth / 1e9:.2f} GB/s (measured)")
    return "\n".join(lines)
