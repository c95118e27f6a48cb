"""Machine fingerprint recorded with every run in the store (no torch import here).

The fingerprint says *which* machine a measurement came from, so fits never mix machines by
accident: CPU model and cores (/proc/cpuinfo, os.cpu_count), RAM (/proc/meminfo or sysconf),
a hash of the hostname (not the name itself), the OS, Python, and the GPU model/count when
the caller (microbench, executor) passes them in.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from pathlib import Path


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def ram_bytes() -> int:
    """Physical memory in bytes (MemTotal of /proc/meminfo, else sysconf)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the file states kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_cores() -> int:
    """Cores this process may use (affinity), falling back to os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loopback_link(world: int, cores: int) -> str:
    """Name of the loopback link among `world` local processes on `cores` cores: "loopback"
    while every process has a core; "loopback-<world>" when they share cores, where a
    message also waits for the peer to be scheduled (measured, by `fapool calibrate
    --world-size <world>`: 0.17 ms of latency at 2 processes on 2 cores, 0.76 ms at 4)."""
    return "loopback" if world <= cores else f"loopback-{world}"


def fingerprint(gpu_model: str | None = None, gpu_count: int = 0) -> dict:
    """A JSON-able description of this machine."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "ram_bytes": ram_bytes(),
        "hostname_sha256": host,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu_model": gpu_model,
        "gpu_count": int(gpu_count),
    }
