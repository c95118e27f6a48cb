"""`fapool dashboard`: start the Streamlit what-if dashboard (app.py at the repository top)."""

from __future__ import annotations

import errno
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

from calibration.errors import InputError, require
from planner.cli import options

EPILOG = """example:
  fapool dashboard                      # http://127.0.0.1:8501 (this machine only)
  fapool dashboard --port 8600 --headless --address 127.0.0.1
"""
APP = Path(__file__).resolve().parents[2] / "app.py"
LOCAL = "127.0.0.1"


def register(subparsers) -> None:
    p = subparsers.add_parser("dashboard", help="start the Streamlit what-if dashboard",
                              epilog=EPILOG, formatter_class=options.Formatter)
    p.add_argument("--port", type=options._int, default=8501,
                   help="port to serve on (default 8501)")
    p.add_argument("--headless", action="store_true",
                   help="do not open a browser (servers, CI)")
    p.add_argument("--address", default=LOCAL,
                   help="address to bind (default %(default)s: this machine only; the "
                        "dashboard runs simulations and reads files for whoever reaches "
                        "it, so serving other machines, e.g. --address 0.0.0.0, is your "
                        "choice to make)")
    p.set_defaults(handler=run)


def streamlit_command(port: int, headless: bool, address: str = LOCAL,
                      app: Path = APP) -> list:
    """The `streamlit run app.py ...` command line (validated)."""
    require(1 <= port <= 65535, "--port", f"must be in 1..65535, got {port}")
    require(app.is_file(), "dashboard", f"app.py not found at {app} (run from a source "
                                        "checkout: pip install -e '.[app]')")
    # No file watcher: it is for editing app.py, and it would watch the whole checkout.
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    if headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--server.address", address or LOCAL]
    return cmd


def check_bind(port: int, address: str | None) -> None:
    """Refuse a port that is taken or an address this machine cannot bind, before Streamlit
    starts (it would print its own traceback)."""
    host = address or LOCAL
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InputError("--address", f"not an address of this machine: {host}") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(sockaddr)
        except OSError as err:
            field = "--port" if err.errno == errno.EADDRINUSE else "--address"
            raise InputError(field, f"cannot serve on {host}:{port}: "
                             f"{err.strerror or err}") from None


def run(args) -> int:
    cmd = streamlit_command(args.port, args.headless, args.address)
    check_bind(args.port, args.address)
    for module in ("streamlit", "plotly"):
        if importlib.util.find_spec(module) is None:
            raise InputError("dashboard", f"{module} is not installed: pip install -e '.[app]'")
    return subprocess.call(cmd, cwd=APP.parent)
