"""The measurement store: one SQLite file holding every run and every timed sample.

Microbenchmarks (``fapool calibrate``) and executor runs write here; fitting reads here.
Schema (version 1)::

    meta    (key TEXT PRIMARY KEY, value TEXT)         -- app = fa-pool, schema_version = 1
    runs    (id, kind, fingerprint JSON, cpu_model, gpu_model, device_count, torch_version,
             backend, world_size, plan_id NULL, started, finished, status, meta JSON)
    samples (id, run_id -> runs.id, op, params JSON, dtype, times_s JSON, median_s, spread,
             repeats)

A run row is committed as 'running' before any sample; its samples and its final status
('complete' or 'failed') are committed together, in one transaction, when the
``with store.run(...)`` block ends.  A crash in between leaves the run 'running' with no
samples, earlier runs intact (SQLite's journal rolls back any half-written transaction),
and fitting reads only 'complete' runs.

Sample parameter conventions (executor and fitting rely on them):
  gemm       {tokens, k, n, dtype_bytes}
  attention  {batch, q_len, kv_len, heads, kv_heads, head_dim, causal, dtype_bytes}
  memory     {bytes, kind: norm|activation|copy}      (bytes = read + written, minimum)
  all_reduce | all_gather | broadcast | gather | send_recv
             {bytes (payload per rank), ranks, link}
  e2e_prefill | e2e_decode, or any other op: free parameters.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import statistics
from datetime import datetime, timezone
from pathlib import Path

from calibration.curves import MEMORY_KINDS
from calibration.errors import InputError, require
from calibration.fingerprint import fingerprint as machine_fingerprint

SCHEMA_VERSION = 1
APP = "fa-pool"
APPLICATION_ID = 0x46415031  # "FAP1", in the SQLite header (PRAGMA application_id)
RUN_KINDS = ("microbench", "executor")  # the kinds fa-pool writes; others are allowed
SQLITE_MAGIC = b"SQLite format 3\x00"

REQUIRED_PARAMS = {
    "gemm": ("tokens", "k", "n", "dtype_bytes"),
    "attention": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal",
                  "dtype_bytes"),
    "memory": ("bytes", "kind"),
    "host_post": ("bytes", "link"),
    "host_wake": ("bytes", "link"),
}
COLLECTIVE_OPS = ("all_reduce", "all_gather", "broadcast", "gather", "send_recv")
for _op in COLLECTIVE_OPS:
    REQUIRED_PARAMS[_op] = ("bytes", "ranks", "link")

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    cpu_model TEXT, gpu_model TEXT, device_count INTEGER,
    torch_version TEXT, backend TEXT, world_size INTEGER,
    plan_id TEXT,
    started TEXT NOT NULL, finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    meta TEXT NOT NULL
);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    op TEXT NOT NULL, params TEXT NOT NULL, dtype TEXT,
    times_s TEXT NOT NULL, median_s REAL NOT NULL, spread REAL NOT NULL,
    repeats INTEGER NOT NULL
);
CREATE INDEX samples_run ON samples(run_id);
CREATE INDEX samples_op ON samples(op);
"""


# How long a store waits for another process's lock before giving up with one line (SQLite's
# busy timeout); FAPOOL_STORE_WAIT_S overrides it.
BUSY_TIMEOUT_S = 30.0


def busy_timeout_s() -> float:
    try:
        return max(0.0, float(os.environ.get("FAPOOL_STORE_WAIT_S", BUSY_TIMEOUT_S)))
    except ValueError:
        raise InputError("FAPOOL_STORE_WAIT_S", "must be a number of seconds") from None


def default_store_path() -> Path:
    """<user data dir>/fa-pool/measurements.sqlite (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("fa-pool")) / "measurements.sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def summarize(times_s) -> tuple[float, float]:
    """Median and interquartile range (p75 - p25, 'inclusive' quantiles) of the repeats."""
    times = sorted(float(t) for t in times_s)
    if len(times) == 1:
        return times[0], 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q3 - q1


def _check_sample(op, params, times_s) -> list:
    if not isinstance(op, str) or not op:
        raise InputError("sample.op", f"must be a non-empty string, got {op!r}")
    if not isinstance(params, dict):
        raise InputError("sample.params", f"must be a dict, got {type(params).__name__}")
    missing = [k for k in REQUIRED_PARAMS.get(op, ()) if k not in params]
    if missing:
        raise InputError("sample.params", f"op {op!r} needs {list(REQUIRED_PARAMS[op])}, "
                         f"missing {missing}")
    if op == "memory" and params["kind"] not in MEMORY_KINDS:
        raise InputError("sample.params.kind", f"must be one of {MEMORY_KINDS}")
    try:
        times = [float(t) for t in times_s]
    except (TypeError, ValueError):
        raise InputError("sample.times_s", "must be a list of numbers") from None
    if not times or not all(math.isfinite(t) and t > 0 for t in times):
        raise InputError("sample.times_s", "must be a non-empty list of positive finite "
                         "seconds")
    return times


class Run:
    """An open run: samples are validated as they come and written, with the run's final
    status, in one short transaction when the ``with`` block ends (so a long run never
    holds the database lock that other writers wait on)."""

    def __init__(self, run_id: int):
        self.id = run_id
        self._rows: list[tuple] = []

    def add_sample(self, op: str, params: dict, times_s, dtype: str | None = None) -> None:
        times = _check_sample(op, params, times_s)
        median, spread = summarize(times)
        try:
            params_json = json.dumps(params, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise InputError("sample.params", f"not JSON-serialisable ({err})") from None
        self._rows.append((self.id, op, params_json, dtype, json.dumps(times), median, spread,
                           len(times)))


def _table_names(conn) -> set:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def create_schema(conn) -> None:
    """Our tables and meta rows, inside the caller's write transaction."""
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.executemany("INSERT INTO meta VALUES (?, ?)",
                     [("app", APP), ("schema_version", str(SCHEMA_VERSION)),
                      ("created", _now())])
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


class Store:
    """Create or open the store at path; refuse files that are not ours (InputError).
    readonly: open an existing fa-pool store for reading only (SQLite's mode=ro): never
    create a file, never write a schema into one (the dashboard's store box)."""

    def __init__(self, path: str | Path | None = None, readonly: bool = False):
        self.path = Path(path) if path is not None else default_store_path()
        self.readonly = readonly
        self.wait_s = busy_timeout_s()
        self._check_file()
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=self.wait_s,
                                             isolation_level=None)
                self._conn.execute("PRAGMA query_only = ON")
                with self._unlocked():
                    self._open()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=self.wait_s, isolation_level=None)
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._unlocked():
                self._open()
        except sqlite3.DatabaseError as err:
            raise InputError("store", f"{self.path} is not a usable fa-pool store ({err})"
                             ) from None
        except OSError as err:
            raise InputError("store", f"cannot open {self.path}: {err.strerror or err}"
                             ) from None

    # ------------------------------------------------------------ opening and validation
    @contextlib.contextmanager
    def _unlocked(self):
        """SQLite's 'database is locked' after the busy timeout -> one InputError line."""
        try:
            yield
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise InputError("store", f"{self.path} is locked by another process "
                                 f"(waited {self.wait_s:g} s; FAPOOL_STORE_WAIT_S sets how "
                                 "long)") from None
            raise

    def _check_file(self) -> None:
        if self.path.is_dir():
            raise InputError("store", f"{self.path} is a directory, not a database file")
        if self.readonly:
            require(self.path.is_file(), "store", f"no fa-pool store at {self.path}")
            require(self.path.stat().st_size > 0, "store",
                    f"{self.path} is empty, not an fa-pool store")
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as err:
            raise InputError("store", f"cannot read {self.path}: {err.strerror}") from None
        if head != SQLITE_MAGIC:
            raise InputError("store", f"{self.path} is not an SQLite database (bad header); "
                             "not an fa-pool store")

    def _open(self) -> None:
        conn = self._conn
        tables = _table_names(conn)
        if not tables and self.readonly:
            raise InputError("store", f"{self.path} is an SQLite database but not an fa-pool "
                             "store (no tables)")
        if not tables:  # a new (or empty) file: create our schema, unless a process
            conn.execute("BEGIN IMMEDIATE")      # opening it at the same time just did
            try:
                if not _table_names(conn):
                    create_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:          # else SQLite's own error is the one to tell
                    conn.execute("ROLLBACK")
                raise
            tables = _table_names(conn)
        if "meta" not in tables:
            raise InputError("store", f"{self.path} is an SQLite database but not an fa-pool "
                             "store (no meta table)")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("app") != APP:
            raise InputError("store", f"{self.path} is an SQLite database of another "
                             f"application (app={meta.get('app')!r}), not an fa-pool store")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise InputError("store", f"{self.path} has no valid schema_version") from None
        if version > SCHEMA_VERSION:
            raise InputError("store", f"{self.path} has schema version {version}, newer than "
                             f"this fa-pool understands ({SCHEMA_VERSION}); upgrade fa-pool")
        if not {"runs", "samples"} <= tables:
            raise InputError("store", f"{self.path} is missing the runs/samples tables")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ writing
    @contextlib.contextmanager
    def run(self, kind: str, backend: str | None = None, world_size: int | None = None,
            torch_version: str | None = None, plan_id: str | None = None,
            meta: dict | None = None, gpu_model: str | None = None, device_count: int = 0,
            fingerprint: dict | None = None):
        """Open a run; yields a Run.  On normal exit its samples are committed and it is
        marked 'complete'; on an exception it is marked 'failed' and the error re-raised."""
        if not (isinstance(kind, str) and kind.replace("_", "").isalnum()
                and kind == kind.lower()):
            raise InputError("run.kind", f"must be a lowercase word like {RUN_KINDS}, "
                             f"got {kind!r}")
        fp = fingerprint or machine_fingerprint(gpu_model, device_count)
        try:
            meta_json = json.dumps(meta or {}, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise InputError("run.meta", f"not JSON-serialisable ({err})") from None
        conn = self._conn
        with self._unlocked():
            cur = conn.execute(
                "INSERT INTO runs (kind, fingerprint, cpu_model, gpu_model, device_count, "
                "torch_version, backend, world_size, plan_id, started, status, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (kind, json.dumps(fp, sort_keys=True), fp.get("cpu_model"),
                 fp.get("gpu_model"), int(fp.get("gpu_count") or device_count or 0),
                 torch_version, backend, world_size, plan_id, _now(), meta_json))
            # autocommit: the run row is durable
        run = Run(cur.lastrowid)
        try:
            yield run
        except BaseException:
            self._close_run(run, "failed")
            raise
        self._close_run(run, "complete")

    def _close_run(self, run: Run, status: str) -> None:
        conn = self._conn
        with self._unlocked():
            conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO samples (run_id, op, params, dtype, times_s, median_s, spread, "
                "repeats) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", run._rows)
            conn.execute("UPDATE runs SET status=?, finished=? WHERE id=?",
                         (status, _now(), run.id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ reading
    def runs(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if kind is not None:
            query, args = query + " AND kind = ?", args + [kind]
        if status is not None:
            query, args = query + " AND status = ?", args + [status]
        with self._unlocked():
            return _dicts(self._conn.execute(query + " ORDER BY id", args),
                          ("fingerprint", "meta"))

    def samples(self, op: str | None = None, run_id: int | None = None,
                kind: str | None = None, plan_id: str | None = None,
                include_incomplete: bool = False) -> list[dict]:
        """Samples of complete runs (all runs with include_incomplete), oldest first."""
        query = ("SELECT s.run_id, s.op, s.params, s.dtype, s.times_s, s.median_s, s.spread, "
                 "s.repeats, r.kind, r.plan_id, r.backend, r.world_size, r.status "
                 "FROM samples s JOIN runs r ON r.id = s.run_id WHERE 1=1")
        args: list = []
        for column, value in (("s.op", op), ("s.run_id", run_id), ("r.kind", kind),
                              ("r.plan_id", plan_id)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if not include_incomplete:
            query += " AND r.status = 'complete'"
        with self._unlocked():
            return _dicts(self._conn.execute(query + " ORDER BY s.id", args),
                          ("params", "times_s"))


def _dicts(cursor, json_columns: tuple) -> list[dict]:
    """Rows of a query as dicts, with the JSON-encoded columns decoded."""
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor.fetchall():
        item = dict(zip(names, row))
        for column in json_columns:
            item[column] = json.loads(item[column])
        out.append(item)
    return out
