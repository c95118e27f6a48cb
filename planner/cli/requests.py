"""`fapool requests`: the request-level simulation of a plan.json on a workload."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from calibration.errors import InputError
from planner.cli import options

EPILOG = """examples:
  fapool requests --plan out/plan/plan.json              (its workload.csv beside it)
  fapool requests --plan out/plan/plan.json --workload trace.csv --rate 4 --json
  fapool requests --plan out/plan/plan.json --replicas 2 --max-batch 16
The figures are those `fapool plan` judged the SLOs on: with the plan's own workload and
serving settings they equal plan.json's predictions.requests exactly."""

FIGURES = (("TTFT", "ttft", 1), ("TPOT", "tpot", 2), ("queue", "queue", 1))


def register(subparsers) -> None:
    p = subparsers.add_parser("requests", help="simulate a plan.json serving a request stream",
                              epilog=EPILOG, formatter_class=options.Formatter)
    p.add_argument("--plan", required=True, help="plan.json written by `fapool plan`")
    p.add_argument("--workload", default=None,
                   help="trace (.csv/.jsonl) or mix name (default: workload.csv beside the plan)")
    p.add_argument("--rate", type=float, default=None,
                   help="rescale the arrivals to this mean rate, requests/s")
    p.add_argument("--replicas", type=options._int, default=None,
                   help="replicas instead of the plan's")
    p.add_argument("--max-batch", type=options._int, default=None,
                   help="running-batch limit per replica instead of the plan's")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    from calibration.profile import Profile
    from planner.plan import load_plan
    from planner.requests import simulate_requests
    from planner.workloads import resolve_workload

    plan = load_plan(args.plan)
    spec = args.workload or str(Path(args.plan).with_name("workload.csv"))
    if args.workload is None and not Path(spec).is_file():
        raise InputError("--workload", f"not given and no {spec} beside the plan")
    workload = resolve_workload(spec)
    if args.rate is not None:
        workload = workload.at_rate(args.rate)
    serving = plan.serving
    for flag, name in (("--replicas", "replicas"), ("--max-batch", "max_batch")):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise InputError(flag, f"must be >= 1, got {value}")
            serving = replace(serving, **{name: value})
    result = simulate_requests(plan.model, plan.cluster, plan.strategy, workload, serving,
                               Profile.from_dict(plan.profile))
    summary = result.summary()
    predicted = (plan.predictions or {}).get("requests")
    same_setting = (args.workload is None and args.rate is None and serving == plan.serving)
    out = {"plan_id": plan.plan_id, "workload": workload.summary(), **summary}
    if same_setting and predicted is not None:
        out["matches_plan"] = predicted == summary
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{plan.plan_id}: {serving.replicas} x {summary['strategy']}, running batch <= "
          f"{serving.max_batch}, router {serving.router}; {workload.name}: "
          f"{summary['completed']}/{summary['requests']} requests served")
    for label, key, digits in FIGURES:
        if f"{key}_p50_ms" in summary:
            print(f"  {label:<6} p50/p90/p99 " + " / ".join(
                f"{summary[f'{key}_p{q}_ms']:,.{digits}f}" for q in (50, 90, 99)) + " ms")
    if "throughput_rps" in summary:
        print(f"  throughput {summary['throughput_rps']:,.3f} requests/s, "
              f"{summary['throughput_tps']:,.0f} tokens/s; pool occupancy "
              f"{summary['pool_occupancy_mean']:.3f}")
    if "matches_plan" in out:
        print("  equals plan.json's predictions.requests" if out["matches_plan"] else
              "  DIFFERS from plan.json's predictions.requests (another profile or code?)")
    return 0
