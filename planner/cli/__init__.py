"""`fapool`: one console script, one module per subcommand.

Each subcommand module exposes ``register(subparsers)`` which adds its parser (with an
example epilog) and sets ``handler=fn(args) -> int``.  main() turns InputError into one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from calibration.errors import InputError

# Order = order in `fapool --help`.  Modules must not import torch at import time.
SUBCOMMAND_MODULES = (
    "planner.cli.simulate",
    "planner.cli.paper",
    "calibration.cli",
    "executor.cli",
    "planner.cli.plan",
    "planner.cli.requests",
    "planner.cli.validate",
    "planner.cli.dashboard",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit 2 (its usage dump is noise)."""

    def error(self, message):
        sys.stderr.write(f"fapool: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fapool", description="Plan, simulate and run FA Pool parallelism.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_Parser)
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as err:
        sys.stderr.write(f"fapool {args.command}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("fapool: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`fapool ... | head`): stop quietly as shell tools do, and
        # point stdout at /dev/null so the interpreter's last flush cannot fail again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
