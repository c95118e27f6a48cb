"""`fapool calibrate`: measure this machine, store the samples, fit, write a profile."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="measure this machine and fit a hardware profile",
        epilog="example: fapool calibrate --quick --world-size 2 --out /tmp/local.yaml")
    parser.set_defaults(handler=_handler)


def _handler(args) -> int:
    from calibration.errors import InputError
    raise InputError("calibrate", "not implemented yet")
