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
from planner.workloads import DEFAULT_RATE, DEFAULT_REQUESTS, MIXES, parse_rates

EPILOG = f"""examples:
  fapool plan --model paper-4l --cluster dgx-a100 --gpus 40 --workload paper --out out/plan
  fapool plan --workload trace.csv --slo-tpot 30 --objective gpus --out out/slo
  fapool plan --model tiny --cluster local --gpus 4 --workload fixed:256 --batch 4 --out out/t
  fapool plan --model llama-2-7b --workload long --rate 0.5 --slo-ttft 10000 \
      --objective gpus --out out/cap
  fapool plan --workload mixed --rate 1,2,4,8 --slo-ttft 2000 --objective gpus --out out/rates
workloads: a trace (.csv with header arrival_s,input_len,output_len, or .jsonl), a named
mix ({', '.join(sorted(MIXES))}) or fixed:N.
SLOs are judged on the request-level simulation of the workload's arrivals (p99 TTFT and
p99 TPOT over its requests, queueing included); every plan must keep up with the arrival
rate.  A plan is a layout, its replicas and its running-batch limit (planner.serving).
--rate with several values (comma-separated) plans each rate and writes the plan of the
largest rate that has one; report.html shows GPUs and p99 vs rate.
--out gets plan.json, launch/ (torchrun scripts, slurm.sbatch, k8s.yaml), report.html,
search.json and workload.csv; it is written whole or not at all.
exit status: 0 a plan was written; 2 bad input (one line on stderr naming it);
3 no plan fits or meets the SLOs within the budget (nothing written; the reason on stderr
names the closest plan and the SLO it misses)."""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise options.argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _rates(text: str) -> list:
    """--rate: one rate or a comma-separated list (planner.workloads.parse_rates)."""
    try:
        return parse_rates(text)
    except InputError as err:
        raise options.argparse.ArgumentTypeError(err.problem) from None


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
    g.add_argument("--rate", type=_rates, default=None,
                   help=f"arrival rate(s), requests/s, comma-separated for a sweep: a mix's "
                        f"Poisson rate (default {DEFAULT_RATE}); a trace's arrivals rescaled "
                        f"to it (default: as recorded)")
    g.add_argument("--seed", type=options._int, default=0, help="seed of a mix (default 0)")
    g.add_argument("--output-len", type=options._int, default=DEFAULT_OUTPUT_LEN,
                   help=f"generated tokens per request of a mix (default {DEFAULT_OUTPUT_LEN})")
    g.add_argument("--batch", type=options._int, default=PAPER_BATCH,
                   help=f"largest running batch a replica may hold; the search tries it and "
                        f"powers of 4 below (default {PAPER_BATCH})")
    g.add_argument("--slo-tpot", type=_float, default=None, metavar="MS",
                   help="request-level p99 TPOT limit in ms")
    g.add_argument("--slo-ttft", type=_float, default=None, metavar="MS",
                   help="request-level p99 TTFT limit in ms (queueing included)")
    g.add_argument("--objective", choices=("tps", "gpus"), default="tps",
                   help="tps: the highest sustainable throughput within --gpus; gpus: the "
                        "fewest GPUs (replicas x GPUs per replica); both among plans meeting "
                        "the SLOs under the workload's arrivals")
    g.add_argument("--workers", type=options._int, default=None,
                   help="processes for the search (default: every core)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an --out that cannot take the plan, before any work is done."""
    if out.is_symlink() and not out.exists():
        raise InputError("--out", f"{out} is a symbolic link to nothing")
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


def _plan_workload(chosen: dict) -> Workload:
    """The shape plan.json (and `fapool run`) uses: the bucket holding the median request."""
    acc = 0.0
    for row in chosen["buckets"]:
        acc += row["weight"]
        if acc >= 0.5 - 1e-9:
            break
    return Workload(row["batch"], row["seq_len"], row["output_len"])


def _workloads(args) -> list:
    """[(rate asked or None, RequestWorkload)], one per --rate (ascending); a mix is drawn
    at each rate with its seed (the same requests), a trace rescaled to it."""
    from planner.workloads import is_trace, load_trace, synthetic
    if is_trace(args.workload):
        trace = load_trace(args.workload)
        return [(r, trace.at_rate(r)) for r in args.rate] if args.rate else [(None, trace)]
    return [(r, synthetic(args.workload, args.requests, r or DEFAULT_RATE, args.output_len,
                          args.seed)) for r in (args.rate or [None])]


def _serving(p: dict):
    from planner.serving import Serving
    return Serving(replicas=p["replicas"], max_batch=p["max_batch"])


def _comparisons(result) -> dict:
    """{label: request-level plan} the report compares with the chosen one: the best plan
    of each strategy family under the same SLOs and load."""
    names = {"static": "best static", "fapool": "best FA Pool"}
    out = {}
    for kind, p in result.best_by_kind.items():
        if p is not None and p["id"] != result.chosen["id"]:
            out[f"{names[kind]} ({p['replicas']} x {p['name']})"] = {
                **result.candidates[p["id"]], **p}
    return out


def run(args) -> int:
    from planner.launch import write_launch_configs
    from planner.plan import ExecutorSettings, make_plan, resolve_microbatches, save_plan
    from planner.report import SWEEP_LENS, render_report
    from planner.requests import simulate_requests
    from planner.capacity import rate_row
    from planner.search import evaluate_strategy, search_rates
    from planner.simulate import simulate
    from planner.workloads import save_trace, synthetic

    out = Path(args.out)
    _check_out(out, args.force)
    if args.seed < 0:
        raise InputError("--seed", f"must be >= 0, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers", f"must be >= 1, got {args.workers}")
    model, cluster = options.model_from_args(args), options.cluster_from_args(args)
    profile = cluster.load_profile()
    gpus = args.gpus if args.gpus is not None else cluster.total_gpus
    runs = search_rates(model, cluster, gpus, _workloads(args), args.slo_tpot,
                        args.slo_ttft, args.objective, batch=args.batch, profile=profile,
                        workers=args.workers)
    rates = [rate_row(rate, w, r) for rate, w, r in runs]
    served = [run for run in runs if run[2].chosen is not None]
    if not served:
        result = runs[-1][2]
        summary = {**result.to_json(), "rates": rates}
        print(json.dumps(summary) if args.json else format_summary(result, rates))
        sys.stderr.write(f"fapool plan: no plan: {result.reason}\n")
        return 3
    rate, workload, result = served[-1]
    chosen = result.chosen
    wl = _plan_workload(chosen)
    wl = Workload(min(wl.batch, chosen["max_batch"]), wl.input_len, wl.output_len)
    strategy = resolve_microbatches(model, result.strategy(chosen), wl, profile)
    sim = simulate(model, cluster, strategy, wl, profile=profile, record=False)
    predictions = sim.to_json()
    predictions["search"] = {k: v for k, v in chosen.items() if k != "buckets"}
    comparisons = _comparisons(result)
    reqs = {"chosen": simulate_requests(model, cluster, strategy, workload, _serving(chosen),
                                        profile, result.costs)}
    for label, p in comparisons.items():
        reqs[label] = simulate_requests(model, cluster, result.strategy(p), workload,
                                        _serving(p), profile, result.costs)
    predictions["requests"] = reqs["chosen"].summary()
    dtype = {4: "float32", 2: "bfloat16"}.get(model.dtype_bytes, "bfloat16")
    plan = make_plan(model, cluster, strategy, wl, profile, predictions,
                     ExecutorSettings(dtype=dtype), _serving(chosen))
    sweeps = {}
    for label, cand in {"chosen": chosen, **comparisons}.items():
        s = result.strategy(cand)
        sweeps[f"{label}: {s.describe()}" if label == "chosen" else label] = [
            evaluate_strategy(model, cluster, s, synthetic(f"fixed:{n}", 1, output_len=
                                                           args.output_len),
                              args.batch, profile) for n in SWEEP_LENS]
    notes = [f"plan.json's shape for `fapool run`: the bucket of the median request, batch "
             f"{wl.batch} x seq {wl.input_len} -> {wl.output_len} tokens",
             f"serving: {chosen['replicas']} replica(s), each with at most "
             f"{chosen['max_batch']} requests in flight, routed by least outstanding tokens; "
             f"FA Pool replicas each own their pool (planner.serving)",
             "SLOs judged on the request-level simulation (planner.capacity); full-batch "
             "figures per bucket: planner.search", *sim.notes()]
    if len(served) < len(runs):
        notes.append("no plan at rate(s) " + ", ".join(f"{r:g}" for r, _, res in runs
                                                       if res.chosen is None))
    title = (f"FA Pool plan {plan.plan_id}: {model.name} on {cluster.name}, {gpus} GPUs, "
             f"workload {workload.name}")
    report = render_report(result, title, sweeps, {"chosen": chosen, **comparisons},
                           profile.device.hbm_bytes / 1e9, reqs, notes, rates)
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
        summary = {**result.to_json(), "plan_id": plan.plan_id, "rate": rate, "rates": rates,
                   "requests": {k: r.summary() for k, r in reqs.items()}}
        (tmp / "search.json").write_text(json.dumps({**summary, "all": result.candidates}))
        save_trace(workload, tmp / "workload.csv")
        _publish(tmp, out)
    except OSError as err:
        raise InputError("--out", f"cannot write {out}: {err.strerror or err}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({**summary, "out": str(out)}))
    else:
        print(format_summary(result, rates))
        print(f"wrote {out}/plan.json, {out}/launch/, {out}/report.html, {out}/search.json, "
              f"{out}/workload.csv")
    return 0


def _f(x, d=2):
    return "-" if x is None else f"{x:,.{d}f}"


def _slo_lines(result, plan: dict) -> list:
    """Which SLOs were asked and whether the plan meets them; nothing when none were."""
    if not result.slo_given:
        return []
    parts = []
    for name, key in (("TTFT", "ttft_p99_ms"), ("TPOT", "tpot_p99_ms")):
        limit = result.slo.get(f"{name.lower()}_ms")
        if limit is None:
            continue
        value = plan["requests"].get(key)
        ok = value is not None and value <= limit
        parts.append(f"p99 {name} <= {limit:g} ms: {_f(value, 1)} ms, "
                     f"{'met' if ok else 'MISSED'}")
    return ["  SLOs (request level): " + "; ".join(parts)]


def format_summary(result, rates: list) -> str:
    lines = [result.headline()]
    if result.workload.get("rows_read"):
        lines.insert(0, f"workload {result.workload['name']}")
    p = result.chosen or result.closest
    if result.chosen is None:
        lines.append(f"NO PLAN: {result.reason}")
    if p:
        r = p["requests"]
        lines.append(f"{'chosen' if result.chosen else 'closest'}: {p['replicas']} x {p['name']}"
                     f", running batch <= {p['max_batch']}, {p['gpus']} GPUs "
                     f"({p['gpus_per_replica']} per replica)")
        lines.append(f"  requests: TTFT p50/p99 {_f(r.get('ttft_p50_ms'), 1)}/"
                     f"{_f(r.get('ttft_p99_ms'), 1)} ms, TPOT p50/p99 "
                     f"{_f(r.get('tpot_p50_ms'))}/{_f(r.get('tpot_p99_ms'))} ms, queue p99 "
                     f"{_f(r.get('queue_p99_ms'), 1)} ms, {_f(r.get('throughput_rps'), 3)} "
                     f"requests/s, {_f(r.get('throughput_tps'), 0)} tokens/s")
        lines += _slo_lines(result, p)
        if "tpot_ms_interval" in p:
            lo, hi = p["tpot_ms_interval"]
            lines.append(f"  full-batch TPOT {_f(p['tpot_ms'])} ms, 5-95% interval "
                         f"[{_f(lo)} .. {_f(hi)}] ms")
    for kind, label in (("static", "best static"), ("fapool", "best FA Pool")):
        b = result.best_by_kind.get(kind)
        if b is not None and (result.chosen is None or b["id"] != result.chosen["id"]):
            lines.append(f"{label}: {b['replicas']} x {b['name']}, running batch <= "
                         f"{b['max_batch']}, {b['gpus']} GPUs, request p99 TTFT "
                         f"{_f(b['requests'].get('ttft_p99_ms'), 1)} ms, TPOT "
                         f"{_f(b['requests'].get('tpot_p99_ms'))} ms")
    if result.requests_front:
        lines.append("request-level Pareto front (GPUs, p99 TTFT ms, p99 TPOT ms):")
        for f in result.requests_front[:8]:
            r = f["requests"]
            lines.append(f"  {f['gpus']:>4} {_f(r.get('ttft_p99_ms'), 1):>12} "
                         f"{_f(r.get('tpot_p99_ms')):>9}  {f['replicas']} x {f['name']}, "
                         f"running batch <= {f['max_batch']}")
    if len(rates) > 1:
        lines.append("GPUs needed vs arrival rate (chosen / best static / best FA Pool):")
        for row in rates:
            cells = [str(x["gpus"]) if x else "-" for x in
                     (row["chosen"], row["best_by_kind"].get("static"),
                      row["best_by_kind"].get("fapool"))]
            plan = row["chosen"]
            lines.append(f"  {row['rate']:>8g}/s  {' / '.join(cells):>14}  "
                         + (f"{plan['replicas']} x {plan['name']}" if plan else row["reason"]))
    return "\n".join(lines)
