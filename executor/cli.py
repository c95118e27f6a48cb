"""`fapool run`: launch a plan locally with torchrun (work in progress)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a plan for real on local processes (torch.distributed)",
        epilog="example: fapool run --model tiny --strategy fapool --tp 1 --pool-gpus 2 --verify")
    parser.set_defaults(handler=_handler)


def _handler(args) -> int:
    from calibration.errors import InputError
    raise InputError("run", "not implemented yet")
