"""`fapool plan`: search plans for a workload; write plan.json, launch configs, report."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from calibration.errors import InputError
from planner.cli import options
from planner.workload import DEFAULT_OUTPUT_LEN, PAPER_BATCH, Workload
from planner.workloads import DEFAULT_RATE, DEFAULT_REQUESTS, MIXES

EPILOG = f"""examples:
  fapool plan --model paper-4l --cluster dgx-a100 --gpus 40 --workload paper --out out/plan
  fapool plan --workload trace.csv --slo-tpot 30 --objective gpus --out out/slo
  fapool plan --model tiny --cluster local --gpus 4 --workload fixed:256 --batch 4 --out out/t
workloads: a trace (.csv with header arrival_s,input_len,output_len, or .jsonl), a named
mix ({', '.join(sorted(MIXES))}) or fixed:N.
--out gets plan.json, launch/ (torchrun_node<i>.sh, slurm.sbatch, k8s.yaml), report.html
and search.json; it is written whole or not at all."""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise options.argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="search the best plan for a workload and write it",
                              epilog=EPILOG, formatter_class=options.Formatter)
    options.add_model_options(p)
    options.add_cluster_options(p)
    g = p.add_argument_group("search")
    g.add_argument("--gpus", type=options._int, default=None,
                   help="GPU budget (default: every GPU of the cluster)")
    g.add_argument("--workload", default="paper",
                   help="trace file (.csv/.jsonl) or mix name (default paper)")
    g.add_argument("--requests", type=options._int, default=DEFAULT_REQUESTS,
                   help=f"requests drawn from a mix (default {DEFAULT_REQUESTS})")
    g.add_argument("--rate", type=_float, default=DEFAULT_RATE,
                   help=f"Poisson arrival rate of a mix, requests/s (default {DEFAULT_RATE})")
    g.add_argument("--seed", type=options._int, default=0, help="seed of a mix (default 0)")
    g.add_argument("--output-len", type=options._int, default=DEFAULT_OUTPUT_LEN,
                   help=f"generated tokens per request of a mix (default {DEFAULT_OUTPUT_LEN})")
    g.add_argument("--batch", type=options._int, default=PAPER_BATCH,
                   help=f"largest batch a plan serves at once (default {PAPER_BATCH})")
    g.add_argument("--slo-tpot", type=_float, default=None, metavar="MS",
                   help="p99 TPOT limit in ms")
    g.add_argument("--slo-ttft", type=_float, default=None, metavar="MS",
                   help="p99 TTFT limit in ms")
    g.add_argument("--objective", choices=("tps", "gpus"), default="tps",
                   help="maximise TPS, or minimise GPUs, among plans meeting the SLOs")
    g.add_argument("--workers", type=options._int, default=None,
                   help="processes for the search (default: every core)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an --out that cannot take the plan, before any work is done."""
    if out.exists() and not out.is_dir():
        raise InputError("--out", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError("--out", f"{out} is not empty (use --force to replace it)")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError("--out", f"cannot create {out}: {parent} is not a writable directory")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temp directory into place (one rename; old contents removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _baselines(result) -> dict:
    """Best static plan (by the objective, meeting the SLO when one does) and the paper's
    TP=8 x PP=2 when it is in the budget."""
    from planner.search import _better
    statics = [c for c in result.candidates if c["kind"] == "static" and c["feasible"]]
    out = {}
    if statics:
        ok = [c for c in statics if c["meets_slo"]] or statics
        best = max(ok, key=_better(result.objective))
        out[f"best static ({best['name']})"] = best
    paper = [c for c in statics if c["strategy"]["tp"] == 8 and c["strategy"]["pp"] == 2]
    if paper and paper[0] not in out.values():
        out["paper baseline (static TP=8 PP=2)"] = paper[0]
    return out


def _plan_workload(chosen: dict) -> Workload:
    """The shape plan.json (and `fapool run`) uses: the bucket holding the median request."""
    acc = 0.0
    for row in chosen["buckets"]:
        acc += row["weight"]
        if acc >= 0.5 - 1e-9:
            break
    return Workload(row["batch"], row["seq_len"], row["output_len"])


def run(args) -> int:
    from planner.launch import write_launch_configs
    from planner.plan import ExecutorSettings, make_plan, resolve_microbatches, save_plan
    from planner.report import SWEEP_LENS, render_report
    from planner.requests import simulate_requests
    from planner.search import evaluate_strategy, search
    from planner.simulate import simulate
    from planner.workloads import resolve_workload, save_trace, synthetic

    out = Path(args.out)
    _check_out(out, args.force)
    if args.seed < 0:
        raise InputError("--seed", f"must be >= 0, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers", f"must be >= 1, got {args.workers}")
    model, cluster = options.model_from_args(args), options.cluster_from_args(args)
    workload = resolve_workload(args.workload, args.requests, args.rate, args.output_len,
                                args.seed)
    profile = cluster.load_profile()
    gpus = args.gpus if args.gpus is not None else cluster.total_gpus
    result = search(model, cluster, gpus, workload, args.slo_tpot, args.slo_ttft,
                    args.objective, batch=args.batch, profile=profile, workers=args.workers)
    if result.chosen is None:
        if args.json:
            print(json.dumps(result.to_json()))
        else:
            print(format_summary(result, {}))
        sys.stderr.write(f"fapool plan: no feasible plan: {result.reason}\n")
        return 2
    wl = _plan_workload(result.chosen)
    strategy = resolve_microbatches(model, result.strategy(result.chosen), wl, profile)
    sim = simulate(model, cluster, strategy, wl, profile=profile, record=False)
    predictions = sim.to_json()
    predictions["search"] = {k: v for k, v in result.chosen.items() if k != "buckets"}
    baselines = _baselines(result)
    reqs = {"chosen": simulate_requests(model, cluster, strategy, workload, args.batch,
                                        profile)}
    for label, cand in baselines.items():
        reqs[label] = simulate_requests(model, cluster, result.strategy(cand), workload,
                                        args.batch, profile)
    predictions["requests"] = reqs["chosen"].summary()
    dtype = {4: "float32", 2: "bfloat16"}.get(model.dtype_bytes, "bfloat16")
    plan = make_plan(model, cluster, strategy, wl, profile, predictions,
                     ExecutorSettings(dtype=dtype))
    sweeps = {}
    for label, cand in {"chosen": result.chosen, **baselines}.items():
        s = result.strategy(cand)
        sweeps[f"{label}: {s.describe()}" if label == "chosen" else label] = [
            evaluate_strategy(model, cluster, s, synthetic(f"fixed:{n}", 1, output_len=
                                                           args.output_len),
                              args.batch, profile) for n in SWEEP_LENS]
    notes = [f"plan.json runs the bucket of the median request: batch {wl.batch} x seq "
             f"{wl.input_len} -> {wl.output_len} tokens",
             "metrics over the workload: see planner/search.py (request-weighted buckets, "
             "p99 for the SLOs)", *sim.notes()]
    report = render_report(result, f"FA Pool plan {plan.plan_id}: {model.name} on "
                           f"{cluster.name}, {gpus} GPUs, workload {workload.name}",
                           sweeps, {"chosen": result.chosen, **baselines},
                           profile.device.hbm_bytes / 1e9, reqs, notes)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o755)       # mkdtemp makes it private; a plan is read by other nodes
    except OSError as err:
        raise InputError("--out", f"cannot create {out}: {err.strerror or err}") from None
    try:
        save_plan(plan, tmp / "plan.json")
        write_launch_configs(plan, tmp / "launch")
        (tmp / "report.html").write_text(report)
        summary = {**result.to_json(), "plan_id": plan.plan_id,
                   "requests": {k: r.summary() for k, r in reqs.items()}}
        (tmp / "search.json").write_text(json.dumps({**summary, "all": result.candidates}))
        save_trace(workload, tmp / "workload.csv")
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({**summary, "out": str(out)}))
    else:
        print(format_summary(result, reqs))
        print(f"wrote {out}/plan.json, {out}/launch/, {out}/report.html, {out}/search.json")
    return 0


def _f(x, d=2):
    return "-" if x is None else f"{x:,.{d}f}"


def format_summary(result, reqs: dict) -> str:
    lines = [f"searched {len(result.candidates)} candidates ({result.simulations} simulations, "
             f"{result.seconds:.1f} s): {sum(c['feasible'] for c in result.candidates)} fit, "
             f"{sum(bool(c['meets_slo']) for c in result.candidates)} meet the SLO"]
    c = result.chosen or result.closest
    if result.chosen is None:
        lines.append(f"NO PLAN: {result.reason}")
    if c:
        lines.append(f"{'chosen' if result.chosen else 'closest'}: {c['name']}")
        lines.append(f"  GPUs {c['gpus']} (mean in use {_f(c['gpus_mean'], 1)})  "
                     f"TPOT {_f(c['tpot_ms'])} ms (p99 {_f(c['tpot_p99_ms'])})  "
                     f"TTFT {_f(c['ttft_ms'], 1)} ms (p99 {_f(c['ttft_p99_ms'], 1)})  "
                     f"TPS {_f(c['tps'], 0)}")
        if "tpot_ms_interval" in c:
            lo, hi = c["tpot_ms_interval"]
            lines.append(f"  TPOT 5-95% interval [{_f(lo)} .. {_f(hi)}] ms")
    lines.append("Pareto front (GPUs, TPOT ms, TPS):")
    for p in result.pareto[:12]:
        lines.append(f"  {p['gpus']:>4} {_f(p['tpot_ms']):>10} {_f(p['tps'], 0):>14}  {p['name']}")
    if reqs:
        lines.append("search metrics (and the SLOs) assume full batches of each length bucket; "
                     "the request-level simulation below serves the trace as it arrives, in "
                     "smaller batches, so its percentiles differ:")
    for label, r in reqs.items():
        s = r.summary()
        if "tpot_ms" in s:
            lines.append(f"requests ({label}): TTFT p50/p99 {_f(s['ttft_ms']['p50'])}/"
                         f"{_f(s['ttft_ms']['p99'])} ms, TPOT p50/p99 {_f(s['tpot_ms']['p50'])}/"
                         f"{_f(s['tpot_ms']['p99'])} ms, pool occupancy "
                         f"{_f(s['pool_occupancy_mean'], 3)}")
    return "\n".join(lines)
