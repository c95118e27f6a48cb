"""`fapool paper`: the paper's table next to our simulation, and its inconsistencies."""

from __future__ import annotations

import json

from planner.cli.options import Formatter, _int
from planner.paper import paper_report
from planner.workload import DEFAULT_OUTPUT_LEN, PAPER_BATCH

EPILOG = """example:
  fapool paper
  fapool paper --output-len 512 --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("paper", help="the paper's results side by side with ours",
                              epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--cluster", default="dgx-a100", help="cluster preset (default dgx-a100)")
    p.add_argument("--profile", default=None, help="hardware profile name or YAML path")
    p.add_argument("--batch", type=_int, default=PAPER_BATCH,
                   help=f"sequences per batch (default {PAPER_BATCH}, the paper's)")
    p.add_argument("--output-len", type=_int, default=DEFAULT_OUTPUT_LEN,
                   help=f"generated tokens per sequence (default {DEFAULT_OUTPUT_LEN}; "
                        "the paper gives none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    report = paper_report(args.cluster, args.output_len, args.batch, args.profile)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _v(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def _cell(row: dict, key: str, digits=1) -> str:
    return _v(row[key], digits) if row["feasible"] else "infeasible"


def format_report(r: dict) -> str:
    out = [f"FA Pool paper vs our simulation: paper-4l on {r['cluster']}, batch {r['batch']}",
           *[f"  assumption: {a}" for a in r["assumptions"]], ""]
    head = (f"{'seq':>6} | {'claimed TPOT ms':>16} {'x':>5} | {'our TPOT ms':>21} {'x':>6} | "
            f"{'claimed TPS':>12} {'x':>5} | {'our TPS (tok/s)':>25} {'x':>6} | "
            f"{'pool':>9} | {'our TTFT ms':>21}")
    out += [head, "-" * len(head)]
    for row in r["rows"]:
        c = row["claimed"]
        b, f = row["ours"]["baseline"], row["ours"]["fapool"]
        ratios = row["ours_ratios"]
        claimed_tpot = f"{c['baseline_tpot_ms']}/{c['fapool_tpot_ms']}" if c else "-"
        claimed_tps = f"{c['baseline_tps']}/{c['fapool_tps']}" if c else "-"
        out.append(
            f"{row['seq_len']:>6} | {claimed_tpot:>16} {(c and c['tpot_ratio']) or '-':>5} | "
            f"{_cell(b, 'tpot_ms') + '/' + _cell(f, 'tpot_ms'):>21} {_v(ratios['tpot'], 2):>6} | "
            f"{claimed_tps:>12} {(c and c['tps_ratio']) or '-':>5} | "
            f"{_cell(b, 'tps', 0) + '/' + _cell(f, 'tps', 0):>25} {_v(ratios['tps'], 2):>6} | "
            f"{str(c['pool_gpus']) if c else '-':>4}/{f['pool_gpus']:<4} | "
            f"{_cell(b, 'ttft_ms', 0) + '/' + _cell(f, 'ttft_ms', 0):>21}")
    out.append("  (pairs are baseline TP=8 PP=2 / FA Pool; x = improvement; pool = claimed/ours)")
    out += ["", "Other static layouts at each length (TPOT ms / TPS):"]
    for row in r["rows"]:
        cells = []
        for name in ("tp16_pp2", "tp8_pp4"):
            o = row["ours"][name]
            cells.append(f"{name} {_cell(o, 'tpot_ms')} / {_cell(o, 'tps', 0)}")
        out.append(f"  {row['seq_len']:>6}: " + "; ".join(cells))
    out += ["", "Section 5.4 comparisons:"]
    for c in r["section_5_4"]:
        out.append(f"  FA Pool vs {c['versus']} {c['metric'].upper()} at {c['seq_len']}: "
                   f"claimed {c['claimed_ratio']}x, ours {_v(c['our_ratio'], 2)}x"
                   + ("" if c["versus_feasible"] else f" ({c['versus']} does not fit)"))
    out += ["", "Where the paper disagrees with itself (computed from its specs):"]
    for item in r["inconsistencies"]:
        out.append(f"  * {item['topic']}: paper says {item['paper']}; {item['computed']}")
    return "\n".join(out)
