"""Faults from outside, as an operator or the machine causes them: each scenario starts the
real command in a child process, injects the fault and returns what happened.  Used once
each by tests/test_faults.py and ten times each by benchmarks/faults.py (the figures).

Executor runs: `fapool run` of a tiny FA Pool plan on 4 local ranks with many steps, its
temp files under a TMPDIR of the scenario's own, failed-run logs under FAPOOL_RUN_LOGS.
The fault comes once every rank has written its PID: kill -9 of rank 1, kill -9 of
torchrun, or SIGINT of `fapool run`.  Reported: seconds from the fault to the exit, exit
status, stderr, and what is left (live processes naming the TMPDIR, entries in it).

Store writers: a child writes runs of 200 samples into one store in a loop; kill -9 lands
at a random moment; two such writers at once; a store held under an exclusive lock."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS = 4
KINDS = ("rank", "torchrun", "sigint")


def _env(tmp: Path, **more) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp / "tmp"), FAPOOL_RUN_LOGS=str(tmp / "logs"),
               PYTHONPATH=str(ROOT), **more)
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def _procs_naming(text: str) -> list:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{d}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmd or f"TMPDIR={text}" in environ:
            out.append(int(d))
    return out


def _wait_for(pred, limit_s: float, step: float = 0.05):
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return None


def executor_fault(kind: str, tmp: Path, timeout_s: float = 60.0) -> dict:
    """One `fapool run` hit by fault `kind` (KINDS).  The run's own timeout is timeout_s."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = _env(tmp)
    cmd = [sys.executable, "-m", "planner.cli", "run", "--model", "tiny", "--strategy",
           "fapool", "--tp", "1", "--pool-gpus", "3", "--seq-len", "61", "--steps", "100000",
           "--warmup", "0", "--no-store", "--timeout", str(timeout_s)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tmpdir = tmp / "tmp"

    def run_dir():
        dirs = [d for d in tmpdir.glob("fapool-run-*")
                if all((d / f"rank{r}.pid").exists() for r in range(RANKS))]
        return dirs[0] if dirs else None
    found = _wait_for(run_dir, 120)
    if found is None:
        proc.kill()
        raise RuntimeError(f"the run never started: {proc.communicate()[1][-500:]}")
    time.sleep(1.0)                                   # let it get into its steps
    if kind == "rank":
        os.kill(int((found / "rank1.pid").read_text()), signal.SIGKILL)
    elif kind == "torchrun":
        agents = [p for p in _procs_naming(str(found)) if "torch.distributed.run" in
                  Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        os.kill(agents[0], signal.SIGKILL)
    elif kind == "sigint":
        os.kill(proc.pid, signal.SIGINT)
    else:
        raise ValueError(kind)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=timeout_s + 60)
    ended_s = time.monotonic() - t0
    time.sleep(0.5)                                   # stragglers would still be alive
    return {"kind": kind, "seconds": round(ended_s, 2), "code": proc.returncode,
            "stderr": err.strip().splitlines(), "left_processes": _procs_naming(str(tmpdir)),
            "left_in_tmp": sorted(p.name for p in tmpdir.iterdir()),
            "logs": sorted(p.name for p in (tmp / "logs").glob("*"))}


# ------------------------------------------------------------------ the store
WRITER = textwrap.dedent("""
    import sys
    from calibration.store import Store
    store = Store(sys.argv[1])
    for i in range(int(sys.argv[2])):
        with store.run(kind="microbench", backend="gloo", world_size=2) as run:
            for j in range(200):
                run.add_sample(op="gemm", params={"tokens": j + 1, "k": 64, "n": 64,
                               "dtype_bytes": 4}, times_s=[1e-4, 1.1e-4])
    print("done", flush=True)
""")


def _writer(path: Path, runs: int, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(runs)], cwd=ROOT,
                            env=env or dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def store_state(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        status = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status"))
        per_run = dict(conn.execute("SELECT run_id, count(*) FROM samples GROUP BY run_id"))
        complete = [r for (r,) in conn.execute("SELECT id FROM runs WHERE status='complete'")]
    finally:
        conn.close()
    return {"integrity": integrity, "status": status,
            "complete_runs_whole": all(per_run.get(r) == 200 for r in complete),
            "samples_of_incomplete": sum(n for r, n in per_run.items() if r not in complete)}


def writer_killed(path: Path, rng: random.Random) -> dict:
    """kill -9 of a writer at a random moment of its writing (after 2 whole runs)."""
    first = _writer(path, 2)
    first.communicate(timeout=120)
    proc = _writer(path, 1000)
    time.sleep(rng.uniform(0.3, 1.5))
    proc.kill()
    proc.communicate()
    state = store_state(path)
    from calibration.store import Store
    with Store(path) as store:                        # still usable, and what fitting sees
        counted = {s["run_id"] for s in store.samples()}
        runs = store.runs()
    state["counted_only_complete"] = counted <= {r["id"] for r in runs
                                                 if r["status"] == "complete"}
    return state


def two_writers(path: Path) -> dict:
    procs = [_writer(path, 15) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    state = store_state(path)
    state["codes"] = [p.returncode for p in procs]
    state["stderr"] = [o[1].strip().splitlines()[-1:] for o in outs]
    return state


def locked_store(path: Path, wait_s: float = 1.0) -> dict:
    """Another process holds the store under an exclusive lock; `fapool run --store` waits
    wait_s (FAPOOL_STORE_WAIT_S) and ends with one line."""
    from calibration.store import Store
    Store(path).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys, time
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "planner.cli", "run", "--store",
                               str(path), "--steps", "1"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120,
                              env=dict(os.environ, FAPOOL_STORE_WAIT_S=str(wait_s),
                                       PYTHONPATH=str(ROOT)))
        seconds = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    return {"seconds": round(seconds, 2), "code": proc.returncode,
            "stderr": proc.stderr.strip().splitlines()}
