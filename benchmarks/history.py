"""Benchmark history: every benchmark appends its figures, with the date and the commit,
to benchmarks/history.json (a JSON list, one entry per run), which the README quotes."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import tempfile
from pathlib import Path

HISTORY = Path(__file__).resolve().parent / "history.json"


def commit() -> str:
    """Short hash of HEAD, with '+dirty' when the work tree has uncommitted changes."""
    root = HISTORY.parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def append(benchmark: str, figures: dict, command: str) -> dict:
    """Append one entry {benchmark, date, commit, command, figures}; atomic rewrite."""
    entry = {"benchmark": benchmark,
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "commit": commit(), "command": command, "figures": figures}
    entries = json.loads(HISTORY.read_text()) if HISTORY.exists() else []
    entries.append(entry)
    fd, tmp = tempfile.mkstemp(dir=HISTORY.parent, prefix=".history-")
    with os.fdopen(fd, "w") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    os.replace(tmp, HISTORY)
    return entry
