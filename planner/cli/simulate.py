"""`fapool simulate`: predict one configuration."""

from __future__ import annotations

import json
import sys

from planner.cli import options
from planner.simulate import PHASES, simulate
from planner.trace import write_trace

EPILOG = """example:
  fapool simulate --model paper-4l --cluster dgx-a100 --strategy fapool --seq-len 16384
  fapool simulate --strategy static --tp 8 --pp 2 --seq-len 8192 --json
  fapool simulate --model tiny --cluster local --tp 1 --max-pool 3 --threshold 64 \
      --batch 2 --seq-len 512 --trace out/t.json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="predict TTFT / TPOT / TPS / memory of a plan",
                              epilog=EPILOG, formatter_class=options.Formatter)
    options.add_model_options(p)
    options.add_cluster_options(p)
    options.add_workload_options(p)
    options.add_strategy_options(p)
    p.add_argument("--phase", choices=PHASES, default="both",
                   help="simulate prefill, decode or both (default both)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trace", metavar="FILE", help="write the timeline as Chrome-trace JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    model, cluster, strategy, workload = options.specs_from_args(args)
    result = simulate(model, cluster, strategy, workload, phase=args.phase)
    out = result.to_json()
    if args.trace and result.feasible:
        count = write_trace(result, args.trace)
        print(f"wrote {count} events to {args.trace}", file=sys.stderr)
    elif args.trace:
        print(f"no trace written to {args.trace}: the plan is infeasible", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    else:
        print(format_result(out))
    return 0


def _fmt(value, unit="", digits=2):
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def format_result(out: dict) -> str:
    lines = [f"{out['model']} on {out['cluster']} (profile {out['profile']}): "
             f"{out['strategy']['name']}",
             f"batch {out['batch']} x seq {out['seq_len']} -> {out['output_len']} tokens; "
             f"{out['gpus']} GPUs ({out['pool_gpus']} pool); micro-batches prefill "
             f"{out['microbatches']}, decode {out['decode_microbatches']}"]
    if not out["feasible"]:
        lines.append("INFEASIBLE:")
        lines += [f"  - {r}" for r in out["infeasible_reasons"]]
        return "\n".join(lines)

    def interval(key):
        iv = out.get(key)
        return f"  [{iv[0]:,.2f} .. {iv[1]:,.2f}]" if iv else ""

    lines += [
        f"  TTFT         {_fmt(out['ttft_ms'], ' ms')}{interval('ttft_ms_interval')}",
        f"  TPOT         {_fmt(out['tpot_ms'], ' ms')}{interval('tpot_ms_interval')}",
        f"  TPS          {_fmt(out['tps'], ' tok/s', 0)}   (input + output)",
        f"  decode TPS   {_fmt(out['decode_tps'], ' tok/s', 0)}",
        f"  comm share   {_fmt(out['comm_fraction'] and out['comm_fraction'] * 100, ' %', 1)}",
        "  utilization  " + ", ".join(f"{k} {v * 100:.1f} %"
                                      for k, v in out["utilization"].items()),
        "  memory/GPU   " + ", ".join(f"{k} {v:.1f} GB" for k, v in out["memory_gb"].items()),
    ]
    lines += [f"  note: {n}" for n in out["notes"]]
    return "\n".join(lines)
