"""Hardware profile: device peaks, fitted cost curves (with covariance) and links.

A profile is a YAML file (schema 1)::

    schema: 1
    name: dgx-a100
    description: ...
    device: {name, peak_flops, hbm_bytes, hbm_bandwidth[, fp8_peak_flops]}
    curves:                       # one per operator family: gemm, attention, memory
      gemm:
        params: {efficiency_max: 0.74, half_tokens: 30.0, ...}   # calibration.curves
        std: {efficiency_max: 0.02, ...}                         # optional
        cov: [[...], ...]        # optional, in curves.GEMM_PARAMS order
        rmse_rel: 0.07           # relative RMS error of the fit on its points
        points: 14
        sources: ["hardware.md: vidur mlp.csv (D)", ...]
    links:                        # nvlink / ib / loopback ...
      nvlink:
        peak_bandwidth: 300.0e9   # bytes/s per GPU, one direction (datasheet)
        params: {latency_s: 1.1e-5, efficiency: 0.77}
        std, cov, rmse_rel, points, sources: as above
    host:                         # optional; absent = 0
      op_overhead_s: 6.0e-5       # host time per op on the rank that issues it
      std: 1.0e-5
      sources: ["planner.validate: fitted to executor step times"]
    provenance: {...}             # free-form: runs, files, tool versions

Loading validates everything and raises InputError naming the field.  ``sample`` draws a
profile from the fitted parameter distribution (for prediction intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from calibration import curves
from calibration.errors import InputError, check_file, positive_float, require, safe_name

SCHEMA = 1
DATA_DIR = Path(__file__).parent / "data"
MAX_PROFILE_BYTES = 8 << 20          # the shipped ones are ~30 KB
PROFILE_KEYS = {"schema", "name", "description", "device", "curves", "links", "host",
                "provenance"}
DEVICE_KEYS = {"name", "peak_flops", "hbm_bytes", "hbm_bandwidth", "fp8_peak_flops"}


def _number(value, where: str) -> float:
    """A finite number >= 0 (not a boolean, not a string)."""
    require(isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0, where,
            f"must be a finite number >= 0, got {value!r}")
    return float(value)


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases: a profile needs none, and `*a` repeated inside
    anchored lists expands exponentially (a 1 KB "billion laughs" file)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, field: str, what: str = ""):
    """The one YAML parser of profiles (files and dashboard uploads): no aliases; an
    InputError naming field, with the line, for malformed text."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        why = "aliases are not allowed" if "alias" in str(err) else type(err).__name__
        raise InputError(field, f"{what + ' is ' if what else ''}not valid YAML{where}: {why}"
                         ) from None


def read_yaml(path: Path, field: str):
    """A YAML file of at most MAX_PROFILE_BYTES (parse_yaml); InputError (naming field) for a
    missing, special (a FIFO, /dev/zero), oversized or malformed file."""
    check_file(path, field, MAX_PROFILE_BYTES, "a profile")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(field, f"{path} is not UTF-8 text") from None
    return parse_yaml(text, field, str(path))


@dataclass(frozen=True)
class Curve:
    """Fitted parameters of one family, their uncertainty and the fit's error."""

    family: str
    params: dict
    std: dict = field(default_factory=dict)
    cov: tuple | None = None          # square matrix, family parameter order
    rmse_rel: float | None = None
    points: int = 0
    sources: tuple = ()
    # bootstrap refits (calibration.fit.bootstrap_draws): one parameter tuple per resample
    # of the measured points, in family parameter order; intervals draw from these
    draws: tuple = ()

    def __post_init__(self):
        where = f"curves.{self.family}" if self.family != "link" else "links"
        for k, draw in enumerate(self.draws):
            require(len(draw) == len(curves.FAMILY_PARAMS[self.family]) and all(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in draw),
                f"{where}.draws.{k}", f"must be {len(curves.FAMILY_PARAMS[self.family])} "
                "finite numbers >= 0 in family parameter order")
        names = curves.FAMILY_PARAMS[self.family]
        defaulted = [n for n in names if n not in self.params and n in curves.PARAM_DEFAULTS]
        if defaulted:  # an older profile: fill the defaults, embed its smaller covariance
            object.__setattr__(self, "params", {**{n: curves.PARAM_DEFAULTS[n]
                                                   for n in defaulted}, **self.params})
            if self.cov is not None:
                kept = [i for i, n in enumerate(names) if n not in defaulted]
                small = np.asarray(self.cov, dtype=float)
                if small.shape == (len(kept), len(kept)):
                    full = np.zeros((len(names), len(names)))
                    full[np.ix_(kept, kept)] = small
                    object.__setattr__(self, "cov", full.tolist())
        for name in names:
            require(name in self.params, f"{where}.params.{name}", "missing")
            value = self.params[name]
            require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                    f"{where}.params.{name}", f"must be a finite number >= 0, got {value!r}")
            if name in curves.FRACTION_PARAMS:
                require(0 < value <= 1, f"{where}.params.{name}",
                        f"is a fraction of a peak and must lie in (0, 1], got {value}")
            if name in curves.FACTOR_PARAMS:
                require(value >= 1, f"{where}.params.{name}",
                        f"is a slow-down relative to a copy and must be >= 1, got {value}")
        extra = set(self.params) - set(names)
        require(not extra, f"{where}.params", f"unknown parameters {sorted(extra)}")
        require(isinstance(self.std, dict), f"{where}.std",
                "must be a mapping of parameter -> std")
        for name, value in self.std.items():
            require(name in names, f"{where}.std", f"unknown parameter {name!r}")
            _number(value, f"{where}.std.{name}")
        if self.cov is not None:
            n = len(names)
            require(isinstance(self.cov, (list, tuple)) and len(self.cov) == n
                    and all(isinstance(row, (list, tuple)) and len(row) == n
                            for row in self.cov), f"{where}.cov",
                    f"must be {n}x{n} in order {list(names)}")
            for i, row in enumerate(self.cov):
                for value in row:
                    require(isinstance(value, (int, float)) and not isinstance(value, bool)
                            and math.isfinite(value), f"{where}.cov.{i}",
                            f"must hold finite numbers, got {value!r}")
        if self.rmse_rel is not None:
            _number(self.rmse_rel, f"{where}.rmse_rel")
        require(isinstance(self.points, int) and not isinstance(self.points, bool)
                and self.points >= 0, f"{where}.points",
                f"must be an integer >= 0, got {self.points!r}")
        require(isinstance(self.sources, tuple) and all(isinstance(x, str)
                                                        for x in self.sources),
                f"{where}.sources", "must be a list of strings")

    @property
    def names(self) -> tuple:
        return curves.FAMILY_PARAMS[self.family]

    def sample(self, rng: np.random.Generator) -> "Curve":
        """A draw of the parameters: one of the bootstrap refits when the curve has them
        (what the measured points support, however poorly a parameter is identified),
        else from N(params, cov) (or independent std), clipped to their valid ranges.
        Without uncertainty the curve is returned unchanged."""
        if self.draws:
            draw = self.draws[int(rng.integers(len(self.draws)))]
            return replace(self, params=dict(zip(self.names, (float(v) for v in draw))))
        mean = np.array([self.params[n] for n in self.names], dtype=float)
        if self.cov is not None:
            draw = rng.multivariate_normal(mean, np.asarray(self.cov, dtype=float),
                                           check_valid="ignore")
        elif self.std:
            draw = mean + rng.standard_normal(len(mean)) * np.array(
                [self.std.get(n, 0.0) for n in self.names])
        else:
            return self
        params = {}
        for name, value in zip(self.names, draw):
            low = 1e-3 * self.params[name] if self.params[name] > 0 else 0.0
            value = max(float(value), low)
            if name in curves.FRACTION_PARAMS:
                value = min(value, 1.0)
            if name in curves.FACTOR_PARAMS:
                value = max(value, 1.0)
            params[name] = value
        return replace(self, params=params)

    def to_dict(self) -> dict:
        out = {"params": {k: float(v) for k, v in self.params.items()}}
        if self.std:
            out["std"] = {k: float(v) for k, v in self.std.items()}
        if self.cov is not None:
            out["cov"] = [[float(x) for x in row] for row in self.cov]
        if self.rmse_rel is not None:
            out["rmse_rel"] = float(self.rmse_rel)
        out["points"] = int(self.points)
        if self.sources:
            out["sources"] = list(self.sources)
        if self.draws:
            out["draws"] = [[float(v) for v in d] for d in self.draws]
        return out


@dataclass(frozen=True)
class Host:
    """Host (framework) time per op, spent on the rank that issues the op, serially with
    its work: Python and eager-mode dispatch, argument packing, posting a send.  0 where
    the host runs ahead of an asynchronous device queue (GPU kernel launches overlap the
    kernels; the reference profiles); on a CPU `fapool calibrate` measures both parts:
    op_overhead_s, the executor's interpreter around any op (a no-op kernel), and
    post_overhead_s, the call that posts a message (dist.isend to a waiting peer), charged
    on top for every message a rank posts or enters; wake_s, what a rank loses on its next
    compute after a message wakes it from waiting (caches and core refilled)."""

    op_overhead_s: float = 0.0
    std: float = 0.0
    sources: tuple = ()
    post_overhead_s: float = 0.0
    wake_s: float = 0.0

    def __post_init__(self):
        for name in ("op_overhead_s", "std", "post_overhead_s", "wake_s"):
            _number(getattr(self, name), f"profile.host.{name}")

    def sample(self, rng: np.random.Generator) -> "Host":
        if not self.std:
            return self
        return replace(self, op_overhead_s=max(0.0, self.op_overhead_s
                                               + self.std * float(rng.standard_normal())))

    def to_dict(self) -> dict:
        out = {"op_overhead_s": float(self.op_overhead_s), "std": float(self.std)}
        for name in ("post_overhead_s", "wake_s"):
            if getattr(self, name):
                out[name] = float(getattr(self, name))
        if self.sources:
            out["sources"] = list(self.sources)
        return out


@dataclass(frozen=True)
class Link:
    """An interconnect: datasheet peak (bytes/s per GPU or NIC, one direction) + fit."""

    name: str
    peak_bandwidth: float
    curve: Curve

    def time(self, kind: str, payload: float, ranks: int, lanes: int = 1) -> float:
        """Collective time over `lanes` parallel copies of this link (e.g. NICs of a node)."""
        return curves.collective_time(self.curve.params, self.peak_bandwidth * lanes, kind,
                                      payload, ranks)

    def floor(self, kind: str, payload: float, ranks: int, lanes: int = 1) -> float:
        return curves.floor_collective(self.peak_bandwidth * lanes, kind, payload, ranks)


@dataclass(frozen=True)
class Profile:
    """Everything the cost model needs to know about one kind of machine."""

    name: str
    device: curves.Device
    gemm: Curve
    attention: Curve
    memory: Curve
    links: dict                      # name -> Link
    description: str = ""
    provenance: dict = field(default_factory=dict)
    host: Host = Host()

    def link(self, name: str) -> Link:
        if name not in self.links:
            raise InputError("profile.links", f"profile {self.name!r} has no link {name!r}; "
                             f"it has {sorted(self.links)}")
        return self.links[name]

    def sample(self, rng: np.random.Generator) -> "Profile":
        """A profile whose fitted parameters are one draw from their uncertainty."""
        links = {n: replace(l, curve=l.curve.sample(rng)) for n, l in self.links.items()}
        return replace(self, gemm=self.gemm.sample(rng), attention=self.attention.sample(rng),
                       memory=self.memory.sample(rng), links=links,
                       host=self.host.sample(rng))

    @property
    def has_uncertainty(self) -> bool:
        parts = [self.gemm, self.attention, self.memory] + [l.curve for l in self.links.values()]
        return any(c.cov is not None or c.std or c.draws for c in parts) or self.host.std > 0

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = self.device
        return {
            "schema": SCHEMA,
            "name": self.name,
            "description": self.description,
            "device": {"name": d.name, "peak_flops": float(d.peak_flops),
                       "hbm_bytes": float(d.hbm_bytes), "hbm_bandwidth": float(d.hbm_bandwidth),
                       **({"fp8_peak_flops": float(d.fp8_peak_flops)}
                          if d.fp8_peak_flops else {})},
            "curves": {c.family: c.to_dict() for c in (self.gemm, self.attention, self.memory)},
            "links": {n: {"peak_bandwidth": float(l.peak_bandwidth), **l.curve.to_dict()}
                      for n, l in self.links.items()},
            **({"host": self.host.to_dict()} if self.host != Host() else {}),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "Profile":
        require(isinstance(raw, dict), "profile", "must be a YAML mapping")
        unknown = sorted(set(raw) - PROFILE_KEYS)
        require(not unknown, "profile", f"unknown keys {unknown}")
        require(raw.get("schema") == SCHEMA, "profile.schema",
                f"must be {SCHEMA}, got {raw.get('schema')!r}")
        safe_name(raw.get("name"), "profile.name")
        dev = raw.get("device")
        require(isinstance(dev, dict), "profile.device", "missing or not a mapping")
        unknown = sorted(set(dev) - DEVICE_KEYS)
        require(not unknown, "profile.device", f"unknown keys {unknown}")
        device = curves.Device(
            name=str(dev.get("name", "unknown")),
            peak_flops=positive_float(dev.get("peak_flops"), "profile.device.peak_flops"),
            hbm_bytes=positive_float(dev.get("hbm_bytes"), "profile.device.hbm_bytes"),
            hbm_bandwidth=positive_float(dev.get("hbm_bandwidth"),
                                         "profile.device.hbm_bandwidth"),
            fp8_peak_flops=(positive_float(dev["fp8_peak_flops"],
                                           "profile.device.fp8_peak_flops")
                            if dev.get("fp8_peak_flops") is not None else 0.0),
        )
        fams = raw.get("curves")
        require(isinstance(fams, dict), "profile.curves", "missing or not a mapping")
        unknown = sorted(set(fams) - {"gemm", "attention", "memory"})
        require(not unknown, "profile.curves", f"unknown curve families {unknown}")
        parsed = {}
        for family in ("gemm", "attention", "memory"):
            require(isinstance(fams.get(family), dict), f"profile.curves.{family}", "missing")
            parsed[family] = _curve(family, fams[family], f"profile.curves.{family}")
        links_raw = raw.get("links")
        require(isinstance(links_raw, dict) and links_raw, "profile.links", "missing or empty")
        links = {}
        for name, body in links_raw.items():
            safe_name(name, "profile.links")
            require(isinstance(body, dict), f"profile.links.{name}", "not a mapping")
            peak = positive_float(body.get("peak_bandwidth"),
                                  f"profile.links.{name}.peak_bandwidth")
            links[name] = Link(name, peak, _curve("link", body, f"profile.links.{name}",
                                                  ("peak_bandwidth",)))
        host_raw = raw.get("host") or {}
        require(isinstance(host_raw, dict), "profile.host", "not a mapping")
        unknown = set(host_raw) - {"op_overhead_s", "std", "sources", "post_overhead_s",
                                   "wake_s"}
        require(not unknown, "profile.host", f"unknown keys {sorted(unknown)}")
        sources = host_raw.get("sources", [])
        require(isinstance(sources, list) and all(isinstance(x, str) for x in sources),
                "profile.host.sources", "must be a list of strings")
        host = Host(host_raw.get("op_overhead_s", 0.0), host_raw.get("std", 0.0),
                    tuple(sources), host_raw.get("post_overhead_s", 0.0),
                    host_raw.get("wake_s", 0.0))           # Host checks the numbers
        require(isinstance(raw.get("provenance") or {}, dict), "profile.provenance",
                "must be a mapping")
        return cls(name=raw["name"], device=device, links=links,
                   description=str(raw.get("description", "")),
                   provenance=raw.get("provenance") or {}, host=host, **parsed)


CURVE_KEYS = {"params", "std", "cov", "rmse_rel", "points", "sources", "draws"}


def _curve(family: str, body: dict, where: str, more_keys: tuple = ()) -> Curve:
    """A curve's YAML body; Curve checks every field (one error, re-anchored at where)."""
    unknown = sorted(set(body) - CURVE_KEYS - set(more_keys))
    require(not unknown, where, f"unknown keys {unknown}")
    params = body.get("params")
    require(isinstance(params, dict), f"{where}.params", "missing or not a mapping")
    draws = body.get("draws") or ()
    require(isinstance(draws, (list, tuple)) and all(isinstance(d, (list, tuple))
                                                     for d in draws),
            f"{where}.draws", "must be a list of parameter lists")
    sources = body.get("sources", [])
    try:
        return Curve(family=family, params=dict(params), std=body.get("std") or {},
                     cov=body.get("cov"), rmse_rel=body.get("rmse_rel"),
                     points=body.get("points", 0),
                     sources=tuple(sources) if isinstance(sources, list) else sources,
                     draws=tuple(tuple(d) for d in draws))
    except InputError as err:  # re-anchor the field under this profile path
        raise InputError(err.field.replace(f"curves.{family}" if family != "link" else "links",
                                           where, 1), err.problem) from None


# Profiles parsed, by (file, inode, modification time, size): a simulation without an explicit
# profile loads its cluster's, and parsing the YAML took 3x as long as the simulation itself.
# A Profile is frozen, so callers share one.
_LOADED: dict = {}


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``dgx-a100``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        shipped = DATA_DIR / f"{name_or_path}.yaml"
        if shipped.exists():
            path = shipped
        else:
            known = sorted(p.stem for p in DATA_DIR.glob("*.yaml"))
            raise InputError("profile", f"unknown profile {str(name_or_path)!r}; "
                             f"known: {known}, or give a path to a .yaml file")
    try:
        st = path.stat()
    except OSError:                     # read_yaml names the problem
        return Profile.from_dict(read_yaml(path, "profile"))
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        if len(_LOADED) >= 64:
            _LOADED.clear()
        _LOADED[key] = Profile.from_dict(read_yaml(path, "profile"))
    return _LOADED[key]


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a profile."""
    write_yaml_atomic(path, yaml.safe_dump(profile.to_dict(), sort_keys=False))


def write_yaml_atomic(path: str | Path, text: str) -> None:
    """Write text to path through a temp file + rename (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
