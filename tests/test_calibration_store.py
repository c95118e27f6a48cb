"""The SQLite measurement store: round trip, crash safety, refusal of foreign files."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from calibration.errors import InputError
from calibration.store import SCHEMA_VERSION, Store, default_store_path, summarize

ROOT = Path(__file__).resolve().parents[1]
GEMM = {"tokens": 8, "k": 64, "n": 192, "dtype_bytes": 4}


def add_run(store, plan_id=None, times=(1e-3, 3e-3, 2e-3, 4e-3)):
    with store.run(kind="executor", backend="gloo", world_size=4, torch_version="2.13.0",
                   plan_id=plan_id, meta={"note": "x"}) as run:
        run.add_sample(op="gemm", params=GEMM, times_s=list(times), dtype="float32")
        run.add_sample(op="all_reduce", params={"bytes": 4096, "ranks": 4, "link": "loopback"},
                       times_s=[5e-5], dtype="float32")
        run.add_sample(op="e2e_decode", params={"anything": [1, 2]}, times_s=[0.5, 0.6])
    return run.id


def test_round_trip(tmp_path):
    path = tmp_path / "m.sqlite"
    rid = add_run(Store(path), plan_id="abc123")
    store = Store(path)  # reopen: everything came from the file
    (run,) = store.runs()
    assert run["id"] == rid and run["kind"] == "executor" and run["plan_id"] == "abc123"
    assert run["backend"] == "gloo" and run["world_size"] == 4
    assert run["torch_version"] == "2.13.0" and run["status"] == "complete"
    assert run["meta"] == {"note": "x"} and run["fingerprint"]["cpu_cores"] >= 1
    assert run["started"] and run["finished"]
    samples = store.samples()
    assert [s["op"] for s in samples] == ["gemm", "all_reduce", "e2e_decode"]
    gemm = store.samples(op="gemm")[0]
    assert gemm["params"] == GEMM and gemm["dtype"] == "float32"
    assert gemm["times_s"] == [1e-3, 3e-3, 2e-3, 4e-3]
    assert gemm["median_s"] == pytest.approx(2.5e-3)
    assert gemm["spread"] == pytest.approx(summarize([1e-3, 2e-3, 3e-3, 4e-3])[1])
    assert gemm["spread"] > 0
    assert store.samples(plan_id="abc123", kind="executor", run_id=rid)
    assert store.samples(plan_id="other") == [] and store.samples(kind="microbench") == []
    assert store.runs(kind="microbench") == []


def test_exception_inside_run_marks_it_failed_and_keeps_earlier_runs(tmp_path):
    store = Store(tmp_path / "m.sqlite")
    first = add_run(store)
    with pytest.raises(RuntimeError, match="boom"):
        with store.run(kind="microbench") as run:
            run.add_sample(op="gemm", params=GEMM, times_s=[1.0])
            raise RuntimeError("boom")
    runs = {r["id"]: r["status"] for r in Store(tmp_path / "m.sqlite").runs()}
    assert runs == {first: "complete", run.id: "failed"}
    assert {s["run_id"] for s in store.samples()} == {first}  # fitting never sees it
    assert run.id in {s["run_id"] for s in store.samples(include_incomplete=True)}


def test_process_killed_mid_run_keeps_earlier_runs(tmp_path):
    path = tmp_path / "m.sqlite"
    first = add_run(Store(path))
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from calibration.store import Store
        store = Store({str(path)!r})
        with store.run(kind="microbench", backend="gloo", world_size=2) as run:
            run.add_sample(op="gemm", params={GEMM!r}, times_s=[1.0])
            # killed in the middle of writing: a transaction is open, a sample half-stored
            store._conn.execute("BEGIN IMMEDIATE")
            store._conn.execute(
                "INSERT INTO samples (run_id, op, params, dtype, times_s, median_s, spread, "
                "repeats) VALUES (?, 'gemm', '{{}}', NULL, '[1.0]', 1.0, 0.0, 1)", (run.id,))
            os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == 9
    store = Store(path)
    runs = {r["id"]: r["status"] for r in store.runs()}
    assert runs[first] == "complete"
    assert list(runs.values()).count("running") == 1  # left running, ignored by fitting
    assert {s["run_id"] for s in store.samples(include_incomplete=True)} == {first}
    assert len(store.samples(run_id=first)) == 3
    add_run(store)  # the store is still writable
    assert len(store.runs(status="complete")) == 2


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(InputError) as err:
        Store(path)
    assert err.value.field == "store" and "not an SQLite database" in err.value.problem
    assert path.read_bytes() and len(path.read_bytes()) == 4096  # untouched


def test_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="not an fa-pool store"):
        Store(path)
    # a meta table of another application is refused too
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('app', 'someone-else')")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="another application"):
        Store(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "m.sqlite"
    add_run(Store(path))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="newer"):
        Store(path)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(InputError, match="directory"):
        Store(tmp_path)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    store = Store(empty)  # an empty file becomes a new store
    assert store.runs() == []


def test_bad_samples_are_refused(tmp_path):
    store = Store(tmp_path / "m.sqlite")
    with store.run(kind="microbench") as run:
        with pytest.raises(InputError, match="missing"):
            run.add_sample(op="gemm", params={"tokens": 1}, times_s=[1.0])
        with pytest.raises(InputError, match="times_s"):
            run.add_sample(op="gemm", params=GEMM, times_s=[])
        with pytest.raises(InputError, match="times_s"):
            run.add_sample(op="gemm", params=GEMM, times_s=[-1.0])
        with pytest.raises(InputError, match="kind"):
            run.add_sample(op="memory", params={"bytes": 8, "kind": "bogus"}, times_s=[1.0])
    with pytest.raises(InputError, match="run.kind"):
        with store.run(kind="Not a kind!"):
            pass


def test_default_path_is_under_user_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    path = default_store_path()
    assert path.name == "measurements.sqlite" and "fa-pool" in str(path)
    json.dumps(str(path))
