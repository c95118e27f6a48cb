"""The one error type for bad input anywhere in fa-pool.

Every part (CLI flags, spec files, plan files, profiles, the store) raises
``InputError(field, problem)``; the CLI prints it as one line on stderr and exits 2.
It lives in calibration because that is the lowest layer: planner and executor import it.
"""


class InputError(ValueError):
    """Bad user input: names the field and what is wrong with it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def require(condition: bool, field: str, problem: str) -> None:
    """Raise InputError(field, problem) unless condition holds."""
    if not condition:
        raise InputError(field, problem)


NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+:@/=-")
NAME_MAX = 200


def safe_name(value, field: str) -> str:
    """Return value if it is a name fa-pool may write into generated files (launch scripts,
    manifests, reports): 1-200 characters of letters, digits and ._+:@/=- (an HF repo id
    or a path without spaces), or raise InputError naming field.  Whitespace, quotes,
    $ ` ; | & < > # and control characters could end a comment or start a command."""
    require(isinstance(value, str) and value != "", field, "must be a non-empty string")
    require(len(value) <= NAME_MAX, field, f"is {len(value)} characters; at most {NAME_MAX}")
    bad = sorted({c for c in value if c not in NAME_CHARS})
    require(not bad, field, f"{value[:60]!r} has characters a name may not hold: "
            f"{''.join(bad)!r} (allowed: letters, digits and ._+:@/=-)")
    return value


MAX_INT = 2 ** 40      # the largest count or size any input may give (tokens, GPUs, bytes)


def positive_int(value, field: str) -> int:
    """Return value as an int in (0, 2^40], or raise InputError naming field."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(field, f"must be a positive integer, got {value!r}")
    if value <= 0:
        raise InputError(field, f"must be a positive integer, got {value}")
    if value > MAX_INT:
        raise InputError(field, f"{value:.4g} is more than the largest size accepted (2^40)")
    return value


def positive_float(value, field: str) -> float:
    """Return value as a float > 0, or raise InputError naming field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(field, f"must be a positive number, got {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise InputError(field, f"must be a positive finite number, got {value!r}")
    return number


MAX_JSON_BYTES = 64 << 20     # plan.json, config.json: a plan with its profile is ~100 KB


def check_file(path, field: str, max_bytes: int, what: str = "") -> None:
    """Before a file is read: it exists, is a regular file (not /dev/zero, a FIFO, a
    directory) and holds at most max_bytes; else an InputError naming field."""
    require(path.exists(), field, f"no such file: {path}")
    require(path.is_file(), field, f"{path} is not a regular file")
    size = path.stat().st_size
    require(size <= max_bytes, field, f"{path} is {size:,} bytes; {what or 'a file'} may hold "
            f"at most {max_bytes:,}")


def read_json(path, field: str):
    """Parse a JSON file of at most MAX_JSON_BYTES; a missing, special (/dev/zero, a FIFO),
    oversized or malformed file is an InputError naming field."""
    import json
    from pathlib import Path

    path = Path(path)
    check_file(path, field, MAX_JSON_BYTES, "a JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(field, f"{path} is not valid JSON ({err.__class__.__name__})") from None
