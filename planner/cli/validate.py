"""`fapool validate`: predict, run, measure, refit, predict again (the closed loop)."""

from __future__ import annotations

import sys

EPILOG = """examples:
  fapool validate --quick
  fapool validate --plan out/plan/plan.json --store /tmp/s.sqlite --json
"""


def register(subparsers) -> None:
    from planner.cli.options import Formatter
    p = subparsers.add_parser("validate", help="measure the planner's error and refit it",
                              epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--plan", default=None, help="validate this plan.json")
    p.add_argument("--quick", action="store_true", help="a small set of configurations")
    p.add_argument("--store", default=None, help="measurement store (default: the user's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    sys.stderr.write("fapool validate: not implemented yet (work in progress)\n")
    return 1
