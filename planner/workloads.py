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
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.errors import MAX_INT, InputError, check_file, require
from planner.workload import DEFAULT_OUTPUT_LEN

FIELDS = ("arrival_s", "input_len", "output_len")
DEFAULT_REQUESTS = 512
DEFAULT_RATE = 4.0          # requests per second of the synthetic mixes


@dataclass(frozen=True)
class Request:
    arrival_s: float
    input_len: int
    output_len: int

    def __post_init__(self):       # messages built only on failure: a trace makes millions
        if not (self.arrival_s >= 0 and math.isfinite(self.arrival_s)):
            raise InputError("arrival_s", f"must be a finite number >= 0, got {self.arrival_s}")
        for name in ("input_len", "output_len"):
            if not getattr(self, name) > 0:
                raise InputError(name, f"must be > 0, got {getattr(self, name)}")


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
    """The requests of a trace or mix (sorted by arrival); name says where they came from.
    A trace longer than MAX_SIMULATED_REQUESTS is planned on a sample of its rows
    (load_trace); rows is then how many were read."""

    name: str
    requests: tuple
    rows: int = 0                    # rows read (0: len(requests), nothing sampled)

    def __post_init__(self):
        require(len(self.requests) > 0, "workload", f"{self.name}: no requests")

    @property
    def sampled(self) -> bool:
        return self.rows > len(self.requests)

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
            for r in self.requests), self.rows)

    def buckets(self) -> list:
        tally = BucketTally()
        for r in self.requests:
            tally.add(r)
        return tally.buckets()

    def summary(self) -> dict:
        lens = np.array([r.input_len for r in self.requests])
        sampled = ({"rows_read": self.rows, "sampled": len(self.requests)}
                   if self.sampled else {})
        return {"name": self.name, "requests": len(self.requests), **sampled,
                "duration_s": round(self.duration_s, 3),
                "input_len": {"min": int(lens.min()), "p50": int(np.percentile(lens, 50)),
                              "p90": int(np.percentile(lens, 90)), "max": int(lens.max())},
                "buckets": [{"range": b.label, "input_len": b.input_len,
                             "output_len": b.output_len, "count": b.count,
                             "weight": round(b.weight, 4)} for b in self.buckets()]}


class BucketTally:
    """Buckets accumulated one request at a time (a streamed trace holds no list); the
    longest request of each bucket is kept."""

    def __init__(self):
        self.groups: dict = {}          # k -> [count, sum input, max input, sum output]
        self.longest: dict = {}         # k -> the first request of the bucket's max input
        self.n = 0

    def add(self, r: Request) -> None:
        k = max(0, int(math.floor(math.log2(r.input_len))))
        g = self.groups.setdefault(k, [0, 0, 0, 0])
        g[0] += 1
        g[1] += r.input_len
        if r.input_len > g[2]:
            g[2] = r.input_len
            self.longest[k] = r
        g[3] += r.output_len
        self.n += 1

    def buckets(self) -> list:
        return [Bucket(lo=2 ** k, hi=2 ** (k + 1), input_len=math.ceil(s_in / count),
                       max_input=top, output_len=math.ceil(s_out / count), count=count,
                       weight=count / self.n)
                for k, (count, s_in, top, s_out) in sorted(self.groups.items())]


# ------------------------------------------------------------------ traces
MAX_SIMULATED_REQUESTS = 2048    # a longer trace is simulated on a uniform sample this big
MAX_TRACE_BYTES = 1 << 30       # 1 GiB: ~30 million rows of a CSV trace


def _number(raw, where, integer: bool, typed: bool):
    """One field of a trace row.  typed (JSONL): the JSON value itself must be a number, an
    integer where one is meant (true, "512" and 512.0 are refused); CSV: the text, an
    integer written as digits.  where() names the field; like every message, it is built
    only for an error (this runs three times per row of a million-row trace)."""
    try:
        if typed:
            if isinstance(raw, bool) or not isinstance(raw, int if integer else (int, float)):
                raise TypeError
            value = raw
        else:
            text = raw.strip()
            if integer and not text.isdigit():
                raise ValueError
            value = int(text) if integer else float(text)
    except (AttributeError, TypeError, ValueError):
        missing = raw is None or (isinstance(raw, str) and not raw.strip())
        raise InputError(where(), "missing" if missing else
                         f"must be {'a positive integer' if integer else 'a number'}, "
                         f"got {raw!r}") from None
    if integer:
        if not 0 < value <= MAX_INT:
            raise InputError(where(), f"must be a positive integer of at most 2^40, got "
                             f"{raw!r}")
    elif not (value >= 0 and math.isfinite(value)):
        raise InputError(where(), f"must be a finite number >= 0, got {raw!r}")
    return value


def _request(values, label, typed: bool) -> Request:
    """A Request from a row's (arrival_s, input_len, output_len); label() names the row;
    typed: JSON values (JSONL), else CSV text."""
    return Request(*(_number(v, lambda f=f: f"{label()}.{f}", f != "arrival_s", typed)
                     for f, v in zip(FIELDS, values)))


def _rows(path: Path, fh):
    """The Request of every row of an open CSV or JSONL trace, streamed."""
    name = path.name
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise InputError(f"{name} line {i}", "not valid JSON") from None
            if not isinstance(row, dict) or not row.keys() <= set(FIELDS):
                require(isinstance(row, dict), f"{name} line {i}", "must be a JSON object")
                raise InputError(f"{name} line {i}", f"unknown keys "
                                 f"{sorted(str(k) for k in set(row) - set(FIELDS))}; a row "
                                 f"holds {', '.join(FIELDS)}")
            yield _request([row.get(f) for f in FIELDS], lambda i=i: f"{name} line {i}", True)
        return
    reader = csv.reader(fh)
    header = [h.strip() for h in next(reader, [])]
    missing = [f for f in FIELDS if f not in header]
    require(not missing, f"{name} header",
            f"missing column(s) {missing}; expected {','.join(FIELDS)}")
    extra = [h for h in header if h not in FIELDS]           # checked once, not per row
    require(not extra, f"{name} header",
            f"unknown column(s) {extra}; expected {','.join(FIELDS)}")
    index = [header.index(f) for f in FIELDS]
    for i, values in enumerate(reader, start=2):     # line 1 is the header
        if not values:
            continue
        if len(values) != len(header):
            require(len(values) < len(header), f"{name} row {i}",
                    f"more fields than the header's {len(header)}")
            values = values + [""] * (len(header) - len(values))     # named "missing"
        yield _request([values[k] for k in index], lambda i=i: f"{name} row {i}", False)


def load_trace(path: str | Path, sample: int = MAX_SIMULATED_REQUESTS) -> RequestWorkload:
    """Read a CSV or JSONL trace, streamed row by row (memory bounded by `sample`); bad
    rows raise InputError naming file, row and field.  The requests are every row, or
    beyond `sample` rows a uniform sample of them (reservoir sampling, Vitter's algorithm
    R, seeded: the same trace gives the same sample) plus the longest request of every
    length bucket the sample missed (memory is planned for the longest input), with
    arrivals compressed about the first by (kept - 1) / (rows - 1), so the sample arrives
    at the trace's mean rate.  The workload's name says so; workload.csv (`fapool plan`)
    holds the sample, so a re-simulation sees what the search saw."""
    path = Path(path)
    check_file(path, "workload", MAX_TRACE_BYTES, "a trace")
    rng = random.Random(0)          # per row: randrange is ~4x numpy's scalar integers
    tally, kept, first = BucketTally(), [], math.inf
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for r in _rows(path, fh):
                tally.add(r)
                first = min(first, r.arrival_s)
                if len(kept) < sample:
                    kept.append(r)
                else:
                    j = rng.randrange(tally.n)
                    if j < sample:
                        kept[j] = r
    except (OSError, UnicodeDecodeError) as err:
        raise InputError("workload", f"cannot read {path} ({err.__class__.__name__})") from None
    except csv.Error as err:
        raise InputError("workload", f"{path.name} is not valid CSV ({err})") from None
    require(bool(kept), "workload", f"{path} holds no requests")
    if tally.n <= sample:
        return RequestWorkload(path.name, tuple(sorted(kept, key=lambda r: r.arrival_s)))
    lengths = {r.input_len for r in kept}
    kept += [r for _, r in sorted(tally.longest.items()) if r.input_len not in lengths]
    kept.sort(key=lambda r: r.arrival_s)
    k = (len(kept) - 1) / (tally.n - 1)
    requests = tuple(Request(first + (r.arrival_s - first) * k, r.input_len, r.output_len)
                     for r in kept)
    return RequestWorkload(f"{path.name} ({tally.n:,} rows read; planned on a uniform sample "
                           f"of {len(requests):,} at the trace's rate)", requests, tally.n)


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
