"""Local launcher + watchdog: starts N rank processes with torchrun's environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) running ``python -m executor``, all in
one new process group, and ends the whole run when a rank fails or stalls.

Blame: a rank that raised while computing (not waiting on peers) first; else a rank that
died without reporting (os._exit, a signal); else, on timeout, the ranks found computing
(stuck) rather than waiting on peers in the heartbeat; else the earliest error.
The process group is killed (SIGTERM, then SIGKILL) on every exit path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from executor.measure import COMM, DONE, STATES, create_heartbeat, read_heartbeats

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LaunchResult:
    ok: bool
    results: list = field(default_factory=list)    # rank 0's per-case summaries
    error: str = ""                                # one line naming the rank
    run_dir: str = ""
    pids: list = field(default_factory=list)
    elapsed_s: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(pgid: int, procs: list) -> None:
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        if all(p.poll() is not None for p in procs):
            # children are reaped; make sure no stray member of the group survives
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


def _errors(run_dir: Path) -> dict:
    out = {}
    for f in run_dir.glob("rank*.error"):
        try:
            e = json.loads(f.read_text())
            out[int(e["rank"])] = e
        except (OSError, ValueError, KeyError):
            continue
    return out


def _blame_failure(procs, run_dir: Path, nproc: int) -> str:
    errors = _errors(run_dir)
    computing = sorted((e["time"], r) for r, e in errors.items() if not e["waiting_on_peers"])
    if computing:
        r = computing[0][1]
        return f"rank {r} failed: {errors[r]['error']}"
    silent = [r for r, p in enumerate(procs) if p.poll() not in (None, 0) and r not in errors]
    if silent:
        r = silent[0]
        return (f"rank {r} died (exit status {procs[r].returncode}) without reporting an "
                "error")
    if errors:
        r = min(errors, key=lambda k: errors[k]["time"])
        return f"rank {r} failed: {errors[r]['error']}"
    r = next(i for i, p in enumerate(procs) if p.poll() not in (None, 0))
    return f"rank {r} exited with status {procs[r].returncode}"


def _blame_timeout(run_dir: Path, nproc: int, timeout: float) -> str:
    beats = read_heartbeats(run_dir / "heartbeat", nproc)
    now = time.time()
    stuck = [r for r, (state, _, _) in enumerate(beats) if state not in (COMM, DONE)]
    if stuck:
        desc = ", ".join(f"rank {r} ({STATES[beats[r][0]]} after '{beats[r][2]}' for "
                         f"{now - beats[r][1]:.0f}s)" if beats[r][1] else f"rank {r} (never "
                         "started)" for r in stuck)
        return f"timeout after {timeout:g}s: stalled: {desc}; the others wait on it"
    waits = ", ".join(f"rank {r} in '{b[2]}'" for r, b in enumerate(beats) if b[0] == COMM)
    return f"timeout after {timeout:g}s: every rank waiting on peers ({waits})"


def launch(plan_paths: list, nproc: int, timeout: float, args: list = (),
           env: dict | None = None, keep_dir: bool = False) -> LaunchResult:
    """Run ``python -m executor --plan P ... ARGS`` on nproc local ranks."""
    run_dir = Path(tempfile.mkdtemp(prefix="fapool-run-"))
    create_heartbeat(run_dir / "heartbeat", nproc)
    result_path = run_dir / "result.json"
    port = free_port()
    cmd = [sys.executable, "-m", "executor", "--result", str(result_path), "--run-dir",
           str(run_dir), "--pg-timeout", str(timeout + 60)]
    for p in plan_paths:
        cmd += ["--plan", str(p)]
    cmd += list(args)
    base_env = dict(os.environ, **(env or {}))
    base_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([base_env["PYTHONPATH"]] if base_env.get("PYTHONPATH") else []))
    procs, pgid = [], None
    start = time.monotonic()
    try:
        for r in range(nproc):
            renv = dict(base_env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                        LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            log = open(run_dir / f"rank{r}.log", "w")
            kw = {"process_group": 0 if pgid is None else pgid}
            procs.append(subprocess.Popen(cmd, env=renv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=REPO_ROOT, **kw))
            log.close()
            if pgid is None:
                pgid = procs[0].pid
        res = LaunchResult(False, run_dir=str(run_dir), pids=[p.pid for p in procs])
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                time.sleep(0.2)  # let the failing rank's peers report too
                res.error = _blame_failure(procs, run_dir, nproc)
                break
            if all(c == 0 for c in codes):
                res.ok = True
                res.results = json.loads(result_path.read_text())
                break
            if time.monotonic() - start > timeout:
                res.error = _blame_timeout(run_dir, nproc, timeout)
                break
            time.sleep(0.05)
        res.elapsed_s = time.monotonic() - start
        if not res.ok:
            res.error += f" [logs: {run_dir}]"
        return res
    finally:
        if pgid is not None:
            _kill_group(pgid, procs)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
                pass
        if keep_dir is False and all(p.returncode == 0 for p in procs):
            for f in run_dir.iterdir():
                f.unlink()
            run_dir.rmdir()
