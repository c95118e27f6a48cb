"""`fapool validate`: predict, run, measure, refit, predict again (the closed loop)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from calibration.errors import InputError

EPILOG = """examples:
  fapool validate --quick
  fapool validate --quick --store /tmp/fapool.sqlite --json
  fapool validate --plan out/local/plan.json
Runs each configuration with the executor (`fapool run`) on this machine, stores the
measurements, reports predicted vs measured (error, MAPE), refits the profile from the store
(microbenchmarks + the executor's operator timings) and reports the error again,
leave-one-out: each configuration is predicted by a refit that did not see it.  A store
without microbenchmarks of this machine gets them first (fapool calibrate --quick for
every world size the configurations use)."""


def register(subparsers) -> None:
    from planner.cli.options import Formatter, _int
    from planner.validate import STEPS
    p = subparsers.add_parser("validate", help="measure the planner's error and refit it",
                              epilog=EPILOG, formatter_class=Formatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--plan", default=None,
                      help="validate this plan.json (cluster local) at its length, 1/4 and "
                           "1/16 of it, beside the other strategy (~15 minutes for the "
                           "README's tiny local plan with 5 passes)")
    what.add_argument("--quick", action="store_true",
                      help="12 configurations (FA Pool and static, 4 lengths, pools of 1-3, "
                           "TP 2, GQA, every decode placement): ~5.5 minutes")
    p.add_argument("--repeats", type=_int, default=5,
                   help="passes over the configurations (one process group each), their "
                        "steps pooled (default 5)")
    p.add_argument("--steps", type=_int, default=STEPS,
                   help=f"timed steps per configuration and pass (default {STEPS}; fewer is "
                        "faster and noisier)")
    p.add_argument("--store", default=None, help="measurement store (default: the user's)")
    p.add_argument("--profile", default="local",
                   help="profile predictions start from (default local)")
    p.add_argument("--save-profile", default=None, metavar="YAML",
                   help="write the profile refitted from every configuration here")
    p.add_argument("--trace-dir", default=None, metavar="DIR",
                   help="write one Chrome trace per configuration here: the refit's "
                        "predicted and the executor's measured timeline of every rank")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    from calibration.profile import load_profile, save_profile
    from calibration.store import Store, default_store_path
    from planner.plan import load_plan
    from planner.validate import default_configs, plan_configs, validate

    if args.plan:
        plan = load_plan(args.plan)
        configs, model = plan_configs(plan), plan.model
    else:
        from planner.model import PRESETS
        configs, model = default_configs(args.quick), PRESETS["tiny"]
    profile = load_profile(args.profile)
    if args.repeats < 1:
        raise InputError("--repeats", f"must be >= 1, got {args.repeats}")
    if args.steps < 1:
        raise InputError("--steps", f"must be >= 1, got {args.steps}")
    if args.save_profile:
        target = Path(args.save_profile)
        if target.is_dir() or not target.parent.is_dir():
            raise InputError("--save-profile", f"{target} is a directory or its directory "
                             "does not exist")
    trace_dir = Path(args.trace_dir) if args.trace_dir else None
    if trace_dir is not None and trace_dir.exists() and not trace_dir.is_dir():
        raise InputError("--trace-dir", f"{trace_dir} exists and is not a directory")
    store_path = Path(args.store) if args.store else default_store_path()
    try:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError("--store", f"cannot create {store_path.parent}: "
                         f"{err.strerror or err}") from None
    Store(store_path).close()                  # a bad store is refused before any run

    def say(msg):
        print(f"fapool validate: {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="fapool-validate-") as tmp:
        try:
            report = validate(configs, store_path, Path(tmp), model, profile, say,
                              args.repeats, refit_all=bool(args.save_profile),
                              trace_dir=trace_dir, steps=args.steps)
        except RuntimeError as err:
            sys.stderr.write(f"fapool validate: error: {err}\n")
            return 1
    refit = report.pop("refit_profile")
    if args.save_profile:
        save_profile(refit, args.save_profile)
        say(f"wrote the refitted profile to {args.save_profile}")
    report["store"] = str(store_path)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _f(x, d=2):
    return "-" if x is None else f"{x:,.{d}f}"


def format_report(r: dict) -> str:
    lines = [f"{'configuration':<28}{'TTFT ms pred/meas':>20}{'err %':>8}{'refit':>8}"
             f"{'TPOT ms pred/meas':>20}{'err %':>8}{'refit':>8}"]
    for c in r["configs"]:
        p, m, e = c["predicted"], c["measured"], c["error_pct"]
        lines.append(f"{c['label']:<28}{_f(p['ttft_ms']):>9} /{_f(m['ttft_ms']):>9}"
                     f"{_f(e['before']['ttft_ms'], 1):>8}{_f(e['refit']['ttft_ms'], 1):>8}"
                     f"{_f(p['tpot_ms']):>9} /{_f(m['tpot_ms']):>9}"
                     f"{_f(e['before']['tpot_ms'], 1):>8}{_f(e['refit']['tpot_ms'], 1):>8}")
    stages = dict(r["mape"], **{"with bias": r["bias"]["mape_with_bias"]})
    for when, s in stages.items():
        lines.append(f"{when:>9}: MAPE TTFT {_f(s['ttft'], 1)} %, TPOT {_f(s['tpot'], 1)} %, "
                     f"FA Pool / static ratio {_f(s['ratio'], 1)} %")
    hosts = [c["host_overhead_us"] for c in r["configs"] if "host_overhead_us" in c]
    if hosts:
        lines.append(f"host time per op (measured by the microbenchmarks, not fitted): "
                     f"{min(hosts):.1f}-{max(hosts):.1f} us")
    for phase, kinds in r.get("op_mape", {}).items():
        lines.append(f"{phase:>9} per op kind, refit MAPE: " + ", ".join(
            f"{k} {v:.1f} %" for k, v in kinds.items()))
    lines.append(f"measured = {r['measure']}; refit = {r['holdout']}; bias (not in refit) = "
                 f"{r['bias']['note']}; store {r['store']}")
    return "\n".join(lines)
