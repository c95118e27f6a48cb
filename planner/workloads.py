"""Request workloads: a trace file or a named synthetic mix, and its length buckets.

A trace is CSV with the header ``arrival_s,input_len,output_len`` or JSONL with those keys,
one request per row.  A named mix draws requests from a length distribution with Poisson
arrivals (exponential gaps at ``rate`` requests per second).

Buckets (what the plan search simulates): requests grouped by input length into
power-of-two ranges [2^k, 2^(k+1)).  The search's thresholds are powers of two too, so a
threshold never splits a bucket: either every request of a bucket uses the pool or none.
Each bucket is represented by its mean input and output length (times) and its longest
input (memory feasibility, GPUs reserved).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.errors import InputError, require
from planner.workload import DEFAULT_OUTPUT_LEN

FIELDS = ("arrival_s", "input_len", "output_len")
DEFAULT_REQUESTS = 512
DEFAULT_RATE = 4.0          # requests per second of the synthetic mixes


@dataclass(frozen=True)
class Request:
    arrival_s: float
    input_len: int
    output_len: int

    def __post_init__(self):
        require(self.arrival_s >= 0 and math.isfinite(self.arrival_s), "arrival_s",
                f"must be a finite number >= 0, got {self.arrival_s}")
        require(self.input_len > 0, "input_len", f"must be > 0, got {self.input_len}")
        require(self.output_len > 0, "output_len", f"must be > 0, got {self.output_len}")


@dataclass(frozen=True)
class Bucket:
    lo: int                 # inclusive
    hi: int                 # exclusive
    input_len: int          # mean input length (rounded up)
    max_input: int          # longest input in the bucket
    output_len: int         # mean output length (rounded up)
    count: int
    weight: float           # fraction of the requests

    @property
    def label(self) -> str:
        return f"[{self.lo}, {self.hi})"


@dataclass(frozen=True)
class RequestWorkload:
    """The requests of a trace or mix (sorted by arrival); name says where they came from."""

    name: str
    requests: tuple

    def __post_init__(self):
        require(len(self.requests) > 0, "workload", f"{self.name}: no requests")

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    @property
    def rate(self) -> float:
        """Mean arrival rate, requests/s (0 when all arrive at once)."""
        span = self.duration_s
        return (len(self.requests) - 1) / span if span > 0 else 0.0

    def at_rate(self, rate: float) -> "RequestWorkload":
        """The same requests with arrival times scaled to a mean rate of `rate` per s (a
        Poisson mix regenerated at another rate with its seed gives the same requests)."""
        require(rate > 0 and math.isfinite(rate), "--rate", f"must be > 0, got {rate}")
        require(self.rate > 0, "--rate", f"{self.name}: all requests arrive at once, so "
                                         "there is no rate to rescale")
        t0, k = self.requests[0].arrival_s, self.rate / rate
        return RequestWorkload(f"{self.name} @ {rate:g}/s", tuple(
            Request(t0 + (r.arrival_s - t0) * k, r.input_len, r.output_len)
            for r in self.requests))

    def buckets(self) -> list:
        groups: dict = {}
        for r in self.requests:
            k = max(0, int(math.floor(math.log2(r.input_len))))
            groups.setdefault(k, []).append(r)
        n = len(self.requests)
        out = []
        for k in sorted(groups):
            rs = groups[k]
            out.append(Bucket(lo=2 ** k, hi=2 ** (k + 1),
                              input_len=math.ceil(sum(r.input_len for r in rs) / len(rs)),
                              max_input=max(r.input_len for r in rs),
                              output_len=math.ceil(sum(r.output_len for r in rs) / len(rs)),
                              count=len(rs), weight=len(rs) / n))
        return out

    def summary(self) -> dict:
        lens = np.array([r.input_len for r in self.requests])
        return {"name": self.name, "requests": len(self.requests),
                "duration_s": round(self.duration_s, 3),
                "input_len": {"min": int(lens.min()), "p50": int(np.percentile(lens, 50)),
                              "p90": int(np.percentile(lens, 90)), "max": int(lens.max())},
                "buckets": [{"range": b.label, "input_len": b.input_len,
                             "output_len": b.output_len, "count": b.count,
                             "weight": round(b.weight, 4)} for b in self.buckets()]}


# ------------------------------------------------------------------ traces
def _number(raw, where: str, integer: bool):
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        raise InputError(where, "missing")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InputError(where, f"not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise InputError(where, f"must be finite, got {raw!r}")
    if integer:
        if not value.is_integer() or value <= 0:
            raise InputError(where, f"must be a positive integer, got {raw!r}")
        return int(value)
    if value < 0:
        raise InputError(where, f"must be >= 0, got {raw!r}")
    return value


def _request(row: dict, where: str) -> Request:
    return Request(_number(row.get("arrival_s"), f"{where}.arrival_s", False),
                   _number(row.get("input_len"), f"{where}.input_len", True),
                   _number(row.get("output_len"), f"{where}.output_len", True))


def load_trace(path: str | Path) -> RequestWorkload:
    """Read a CSV or JSONL trace; bad rows raise InputError naming file, row and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("workload", f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError("workload", f"cannot read {path} ({err.__class__.__name__})") from None
    requests = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path.name} line {i}", "not valid JSON") from None
            require(isinstance(row, dict), f"{path.name} line {i}", "must be a JSON object")
            requests.append(_request(row, f"{path.name} line {i}"))
    else:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [f for f in FIELDS if f not in header]
        require(not missing, f"{path.name} header",
                f"missing column(s) {missing}; expected {','.join(FIELDS)}")
        reader.fieldnames = header
        for i, row in enumerate(reader, start=2):     # line 1 is the header
            requests.append(_request(row, f"{path.name} row {i}"))
    require(bool(requests), "workload", f"{path} holds no requests")
    requests.sort(key=lambda r: r.arrival_s)
    return RequestWorkload(path.name, tuple(requests))


def save_trace(workload: RequestWorkload, path: str | Path) -> None:
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in workload.requests:
            w.writerow((_exact(r.arrival_s), r.input_len, r.output_len))


def _exact(t: float) -> str:
    """Microseconds when they hold t exactly, else every digit: a saved trace loads back
    to the same floats (a plan's re-simulation from workload.csv equals the search's)."""
    short = f"{t:.6f}"
    return short if float(short) == t else repr(t)


# ------------------------------------------------------------------ named mixes
def _log_uniform(rng, lo, hi, n):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _paper(rng, n):
    """Paper 4.5's four classes (short 512-2048, medium 2048-8192, long 8192-32768,
    very long 32768-65536: the paper gives no upper end, we cap at 64K), equally likely,
    log-uniform within a class."""
    edges = ((512, 2048), (2048, 8192), (8192, 32768), (32768, 65536))
    cls = rng.integers(0, len(edges), n)
    return np.array([_log_uniform(rng, *edges[c], 1)[0] for c in cls])


def _mixed(rng, n):
    """Bimodal: 80% chat-like (log-normal around 1K), 20% document-like (around 16K)."""
    short = rng.lognormal(math.log(1024), 0.6, n)
    long = rng.lognormal(math.log(16384), 0.5, n)
    return np.where(rng.random(n) < 0.8, short, long)


MIXES = {
    "paper": (_paper, "paper section 4.5: four length classes 512..64K, equally likely"),
    "short": (lambda rng, n: _log_uniform(rng, 128, 2048, n), "log-uniform 128..2K"),
    "long": (lambda rng, n: _log_uniform(rng, 8192, 65536, n), "log-uniform 8K..64K"),
    "mixed": (_mixed, "80% around 1K, 20% around 16K (log-normal)"),
}


def synthetic(name: str, requests: int = DEFAULT_REQUESTS, rate: float = DEFAULT_RATE,
              output_len: int = DEFAULT_OUTPUT_LEN, seed: int = 0,
              max_len: int = 65536) -> RequestWorkload:
    """A named mix, or ``fixed:N`` (every request N tokens)."""
    require(requests > 0, "--requests", f"must be > 0, got {requests}")
    require(rate > 0 and math.isfinite(rate), "--rate", f"must be > 0, got {rate}")
    require(output_len > 0, "--output-len", f"must be > 0, got {output_len}")
    rng = np.random.default_rng(seed)
    if name.startswith("fixed:"):
        try:
            length = int(name.split(":", 1)[1])
        except ValueError:
            raise InputError("workload", f"fixed:N needs an integer N, got {name!r}") from None
        require(length > 0, "workload", f"fixed:N needs N > 0, got {length}")
        lens = np.full(requests, length)
    elif name in MIXES:
        lens = MIXES[name][0](rng, requests)
    else:
        raise InputError("workload", f"not a file and not a named mix: {name!r}; mixes: "
                                     f"{sorted(MIXES)} or fixed:N")
    lens = np.clip(np.ceil(lens), 1, max_len).astype(int)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, requests))
    arrivals = np.round(arrivals - arrivals[0], 6)       # microseconds, as a trace records
    reqs = tuple(Request(float(a), int(n), output_len) for a, n in zip(arrivals, lens))
    return RequestWorkload(name, reqs)


MAX_RATES = 16


def parse_rates(text: str, field: str = "--rate") -> list:
    """Arrival rates from "R" or "R1,R2,...": each > 0 requests/s, at most MAX_RATES;
    returned sorted, without repeats."""
    out = []
    for part in str(text).split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise InputError(field, f"not a number: {part.strip()!r}") from None
        require(0 < value < math.inf, field, f"must be > 0, got {part.strip()!r}")
        out.append(value)
    require(len(out) <= MAX_RATES, field, f"at most {MAX_RATES} rates, got {len(out)}")
    return sorted(set(out))


def is_trace(spec: str) -> bool:
    """Whether a --workload names a trace file (else a mix)."""
    path = Path(spec)
    return path.suffix.lower() in (".csv", ".jsonl", ".ndjson") or path.is_file()


def resolve_workload(spec: str, requests: int = DEFAULT_REQUESTS, rate: float = DEFAULT_RATE,
                     output_len: int = DEFAULT_OUTPUT_LEN, seed: int = 0) -> RequestWorkload:
    """A trace path (.csv / .jsonl, or any existing file) or a mix name."""
    if is_trace(spec):
        return load_trace(Path(spec))
    return synthetic(spec, requests, rate, output_len, seed)
