"""`fapool run`: run a plan for real on local processes (torch.distributed), measure it,
optionally verify it against the single-process reference."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from calibration.errors import InputError
from planner.cli.options import (Formatter, _int, add_cluster_options, add_model_options,
                                 add_strategy_options, add_workload_options, specs_from_args)

EPILOG = """examples:
  fapool run --plan plan.json --verify
  fapool run --plan a.json --plan b.json --json   # one process group, a list of results
  fapool run --model tiny --strategy fapool --tp 1 --pool-gpus 3 --seq-len 61 --verify
  fapool run --strategy static --tp 2 --pp 2 --json --no-store
fault injection (tests): FAPOOL_FAULT=raise:R | exit:R | hang:R makes rank R fail
mid-run; the run ends with one line naming the rank within --timeout."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a plan for real on local processes (torch.distributed)",
        description="Launch the plan on local ranks (gloo on CPU, NCCL on GPU), time "
                    "TTFT / TPOT / TPS and every operator, write them to the store; without "
                    "--plan, build one from the model / strategy / workload flags, whose "
                    "defaults here make a tiny local run (listed below); --microbatches "
                    "unset means 1.",
        epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--plan", action="append", default=None,
                   help="plan.json from `fapool plan` / simulate; repeat to run several plans "
                        "of one world size in one process group, their requests alternating")
    p.add_argument("--nproc", type=_int, default=None,
                   help="local processes; must equal the plan's world size (default: it)")
    p.add_argument("--steps", type=_int, default=3, help="timed requests (default 3)")
    p.add_argument("--warmup", type=_int, default=1, help="untimed requests first (default 1)")
    p.add_argument("--verify", action="store_true",
                   help="compare logits and every layer's attention output with the "
                        "single-process reference; fail over tolerance")
    p.add_argument("--timeout", type=_positive, default=None,
                   help="seconds before a stalled run is ended (default: the plan's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeline", action="store_true",
                   help="with --json: when every op of the last request ran on every rank "
                        "(timeline_per_rank: per step, [kind, label, layer, micro-batch, "
                        "start s, end s])")
    p.add_argument("--store", default=None, help="measurement store (default: the user's)")
    p.add_argument("--no-store", action="store_true", help="do not write measurements")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="on-the-fly plans: default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--seed", type=_int, default=0, help="weights / prompt seed (on-the-fly)")
    add_model_options(p, default_model="tiny", precision=False)
    add_cluster_options(p, default_cluster="local")
    add_workload_options(p, default_seq=64)
    add_strategy_options(p)
    p.set_defaults(handler=_handler, batch=2, output_len=8, tp=1, pp=2, threshold=32,
                   tokens_per_pool_gpu=16, max_pool=3)


def _plan_from_flags(args):
    import torch

    from calibration.profile import load_profile
    from planner.plan import ExecutorSettings, make_plan

    model, cluster, strategy, workload = specs_from_args(args)
    if strategy.microbatches is None:                     # documented: unset means 1
        strategy = dataclasses.replace(strategy, microbatches=1)
    need = strategy.max_gpus
    if need > cluster.total_gpus and args.nodes is None:   # local: as many "GPUs" as ranks
        cluster = dataclasses.replace(cluster, gpus_per_node=need)
    try:
        profile = load_profile(cluster.profile)
    except InputError:
        if args.profile or cluster.profile != "local":
            raise
        sys.stderr.write("fapool run: note: no 'local' profile yet (fapool calibrate); "
                         "the plan embeds dgx-a100's\n")
        profile = load_profile("dgx-a100")
    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    if args.seed < 0:
        raise InputError("--seed", "must be >= 0")
    return make_plan(model, cluster, strategy, workload, profile,
                     executor=ExecutorSettings(args.seed, dtype, args.timeout or 300.0))


def _handler(args) -> int:
    from planner.plan import load_plan, save_plan

    if args.steps < 1:
        raise InputError("--steps", f"must be >= 1, got {args.steps}")
    if args.warmup < 0:
        raise InputError("--warmup", f"must be >= 0, got {args.warmup}")
    plans = [load_plan(p) for p in args.plan] if args.plan else [_plan_from_flags(args)]
    from executor.model import require_runnable
    for plan in plans:
        require_runnable(plan)
    nproc = plans[0].world_size if args.nproc is None else args.nproc
    for path, plan in zip(args.plan or ["(flags)"], plans):
        if nproc != plan.world_size:
            raise InputError("--nproc" if args.nproc is not None else "--plan",
                             f"{path}: world size {plan.world_size} "
                             f"({plan.strategy.describe()}) != {nproc} ranks")
    store_path = None
    if not args.no_store:
        from calibration.store import Store, default_store_path
        store_path = Path(args.store) if args.store else default_store_path()
        Store(store_path).close()              # a bad store is refused before launch
    from executor.launch import launch
    from executor.report import table

    timeout = args.timeout or sum(p.executor.timeout_s for p in plans)
    with tempfile.TemporaryDirectory(prefix="fapool-plan-") as tmp:
        paths = [Path(tmp) / f"plan_{i}.json" for i in range(len(plans))]
        for plan, path in zip(plans, paths):
            save_plan(plan, path)
        extra = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        extra += ["--verify"] if args.verify else []
        extra += ["--balanced"] if args.balanced else []
        extra += ["--timeline"] if args.timeline else []
        extra += ["--store", str(store_path)] if store_path else []
        res = launch(paths, nproc, timeout, extra)
    if not res.ok:
        sys.stderr.write(f"fapool run: error: {res.error}\n")
        return 1
    summaries = res.results
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1))
    else:
        print("\n\n".join(table(s) for s in summaries))
    for summ in summaries:
        v = summ.get("verify")
        if v and not v["passed"]:
            worst = max([v["max_abs_err_logits"]] + v["max_abs_err_attn"])
            sys.stderr.write(f"fapool run: error: verify failed ({summ['strategy']}): "
                             f"largest error {worst:.3e} > tolerance {v['tolerance']:.1e}\n")
            return 1
    return 0
