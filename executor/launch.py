"""Local launcher + watchdog: runs ``torchrun --standalone --nproc-per-node N -m executor``
(torch.distributed.run, the same entry point as on a cluster) in a new session, and ends
the whole run when a rank fails or stalls.

torchrun starts every rank in a session of its own, so each rank writes its PID (and its
output) to the run dir; the launcher polls those PIDs, reading a dead rank's exit status
from /proc while it is a zombie, and signals each rank's session as well as torchrun's.

Blame: a rank that raised while computing (not waiting on peers) first; else a rank that
died without reporting (os._exit, a signal), in the order seen dead, leaving out the ranks
torchrun itself terminated ("Sending process P closing signal"); its status from /proc or
torchrun's failure summary; else, on timeout, the ranks found computing (stuck) rather
than waiting on peers in the heartbeat; else the earliest error.  Every process of the
run is killed (SIGTERM, then SIGKILL) on every exit path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from executor.measure import COMM, DONE, STATES, create_heartbeat, read_heartbeats

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_S, MONITOR_S = 0.05, 0.25   # our PID poll runs faster than torchrun's, to see zombies
FAIL_GRACE_S = 10.0              # after a rank dies, torchrun gets this long to end the run
KEEP_FAILED_RUNS = 20            # logs of the newest failed runs kept (run_logs_dir)


def run_logs_dir() -> Path:
    """Where a failed run's logs go: <user state dir>/fa-pool/failed-runs (platformdirs);
    FAPOOL_RUN_LOGS overrides it (tests)."""
    import platformdirs

    return Path(os.environ.get("FAPOOL_RUN_LOGS")
                or Path(platformdirs.user_state_dir("fa-pool")) / "failed-runs")


def _keep_logs(run_dir: Path) -> Path | None:
    """Move a failed run's dir out of the temp area into run_logs_dir() (the newest
    KEEP_FAILED_RUNS kept); None (and the dir removed) if it cannot be moved."""
    try:
        logs = run_logs_dir()
        logs.mkdir(parents=True, exist_ok=True)
        kept = Path(shutil.move(str(run_dir), logs / run_dir.name))
        for old in sorted(logs.glob("fapool-run-*"), key=lambda p: p.stat().st_mtime)[
                :-KEEP_FAILED_RUNS]:
            shutil.rmtree(old, ignore_errors=True)
        return kept
    except OSError:
        shutil.rmtree(run_dir, ignore_errors=True)
        return None


@dataclass
class LaunchResult:
    ok: bool
    results: list = field(default_factory=list)    # rank 0's per-case summaries
    error: str = ""                                # one line naming the rank
    run_dir: str = ""                              # a failed run's logs (run_logs_dir)
    pids: list = field(default_factory=list)       # the ranks', then torchrun's
    temp_dir: str = ""                             # the run's temp dir (removed at the end)


def _proc_state(pid: int):
    """None while running; the wait status of a zombie (field 52 of /proc/PID/stat,
    proc(5)); "gone" once reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    fields = stat.rsplit(")", 1)[1].split()        # fields[0] is field 3, the state
    return int(fields[-1]) if fields[0] in ("Z", "X") else None


def _status_text(code: int, wait_status: bool) -> str:
    """A waitpid(2) status, or a Popen returncode (negative: the signal)."""
    sig = (code & 0x7F) if wait_status else -code if code < 0 else 0
    if sig:
        return "killed by " + {s.value: s.name for s in signal.Signals}.get(sig, f"signal {sig}")
    return f"exit status {code >> 8 if wait_status else code}"


def _read_pids(run_dir: Path, nproc: int, pids: dict) -> None:
    for r in range(nproc):
        if r not in pids and (run_dir / f"rank{r}.pid").exists():
            pids[r] = int((run_dir / f"rank{r}.pid").read_text())


def _terminate(agent: subprocess.Popen, pids: list) -> None:
    """SIGTERM, then SIGKILL, torchrun's session and every rank's (each its own)."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for sid in [agent.pid] + [p for p in pids if _proc_state(p) != "gone"]:
            try:
                os.killpg(sid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if agent.poll() is not None and all(_proc_state(p) == "gone" for p in pids):
                return
            time.sleep(POLL_S)


def _errors(run_dir: Path) -> dict:
    out = {}
    for f in run_dir.glob("rank*.error"):
        try:
            e = json.loads(f.read_text())
            out[int(e["rank"])] = e
        except (OSError, ValueError, KeyError):
            continue
    return out


def _blame_failure(run_dir: Path, pids: dict, dead: dict, code: int | None) -> str:
    errors = _errors(run_dir)
    computing = sorted((e["time"], r) for r, e in errors.items() if not e["waiting_on_peers"])
    if computing:
        r = computing[0][1]
        return f"rank {r} failed: {errors[r]['error']}"
    log = (run_dir / "torchrun.log").read_text(errors="replace")
    # torchrun's summary: "rank : R (local_rank: L)\n  exitcode : C (pid: P)"
    summary = {int(r): (int(c), int(p)) for r, c, p in re.findall(
        r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+) \(pid: (\d+)\)", log)}
    victims = {int(p) for p in re.findall(r"Sending process (\d+) closing signal", log)}
    order = sorted(dead, key=lambda r: dead[r][0]) + sorted(set(summary) - set(dead))
    for r in order:
        if r in errors or pids.get(r, summary.get(r, (0, -1))[1]) in victims:
            continue
        if dead.get(r, (0, None))[1] not in (None, 0):
            how = _status_text(dead[r][1], wait_status=True)
        elif summary.get(r, (0,))[0] != 0:
            how = _status_text(summary[r][0], wait_status=False)
        else:
            continue
        return f"rank {r} died ({how}) without reporting an error"
    if errors:
        r = min(errors, key=lambda k: errors[k]["time"])
        return f"rank {r} failed: {errors[r]['error']}"
    last = (log.strip().splitlines() or ["no output"])[-1][:200]
    ended = ("is still running" if code is None else
             f"was {_status_text(code, wait_status=False)}" if code < 0 else
             f"exited with status {code}")
    return f"torchrun {ended} and no rank reported a failure: {last}"


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
           env: dict | None = None) -> LaunchResult:
    """Run ``torchrun ... -m executor --plan P ... ARGS`` on nproc local ranks."""
    run_dir = Path(tempfile.mkdtemp(prefix="fapool-run-"))
    create_heartbeat(run_dir / "heartbeat", nproc)
    result_path = run_dir / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval",
           str(MONITOR_S), "--log-dir", str(run_dir / "torchrun"), "-m", "executor",
           "--result", str(result_path), "--run-dir", str(run_dir),
           "--pg-timeout", str(timeout + 60)]
    for p in plan_paths:
        cmd += ["--plan", str(p)]
    cmd += list(args)
    run_env = dict(os.environ, **(env or {}), OMP_NUM_THREADS="1")
    run_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([run_env["PYTHONPATH"]] if run_env.get("PYTHONPATH") else []))
    start = time.monotonic()
    with open(run_dir / "torchrun.log", "w") as log:
        agent = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                 start_new_session=True)
    pids, dead = {}, {}                  # rank -> PID; rank -> (seen dead at, wait status)
    res = LaunchResult(False, run_dir=str(run_dir), temp_dir=str(run_dir))
    fail_by = None                       # set when a rank is seen dead with a failure
    try:
        while True:
            _read_pids(run_dir, nproc, pids)
            for r, pid in pids.items():
                state = _proc_state(pid) if r not in dead else None
                if state is not None:
                    dead[r] = (time.monotonic(), None if state == "gone" else state)
                    if dead[r][1] not in (None, 0) and fail_by is None:
                        fail_by = time.monotonic() + FAIL_GRACE_S
            code, now = agent.poll(), time.monotonic()
            if code == 0:
                res.ok, res.results = True, json.loads(result_path.read_text())
                break
            if code is not None or (fail_by is not None and now > fail_by):
                time.sleep(0.2)              # let the failing rank's peers report too
                res.error = _blame_failure(run_dir, pids, dead, code)
                break
            if now - start > timeout:
                res.error = _blame_timeout(run_dir, nproc, timeout)
                break
            time.sleep(POLL_S)
        return res
    finally:              # also on KeyboardInterrupt (SIGINT of `fapool run`)
        _read_pids(run_dir, nproc, pids)
        res.pids = [pids[r] for r in sorted(pids)] + [agent.pid]
        _terminate(agent, res.pids[:-1])
        if res.ok:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:                # no temp dir is left: a failed run's logs move to run_logs_dir
            kept = _keep_logs(run_dir)
            res.run_dir = str(kept or "")
            if res.error:
                res.error += f" [logs: {kept}]" if kept else ""
