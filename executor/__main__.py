"""torchrun entry point: ``torchrun --nproc-per-node N -m executor --plan plan.json``.

Reads RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) from the environment,
as torchrun sets them (executor.launch runs torchrun locally); gloo on CPU, NCCL on CUDA.
Rank 0 writes the result (JSON) to --result and the measurements to the store.  With
--run-dir (the local launcher) each rank writes its PID to rank<R>.pid and its output to
rank<R>.log there, and a rank that raises writes its error (and whether it was waiting on
peers) to rank<R>.error and exits at once, so the launcher can name it.
Fault injection for tests: FAPOOL_FAULT=raise:R | exit:R | hang:R.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m executor")
    p.add_argument("--plan", action="append", required=True,
                   help="plan.json (repeat to run several cases in one process group)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--verify", action="store_true")
    p.add_argument("--balanced", action="store_true")
    p.add_argument("--record-ops", action="store_true",
                   help="record every op of the last request on every rank (in the result)")
    p.add_argument("--timeline", action="store_true",
                   help="when every op of the last request ran, on every rank (in the result)")
    p.add_argument("--result", default=None, help="rank 0 writes the JSON result here")
    p.add_argument("--run-dir", default=None,
                   help="heartbeat, PID, log and error files (local launcher)")
    p.add_argument("--store", default=None, help="measurement store (rank 0 writes)")
    p.add_argument("--pg-timeout", type=float, default=None)
    return p.parse_args(argv)


def _own_files(run_dir: str, rank: int) -> None:
    """This rank's output to rank<R>.log and its PID to rank<R>.pid: torchrun starts each
    rank in a session of its own, which the launcher finds (and watches) by this PID."""
    fd = os.open(os.path.join(run_dir, f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT
                 | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    pid_path = os.path.join(run_dir, f"rank{rank}.pid")
    with open(pid_path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_path + ".tmp", pid_path)


def main(argv=None) -> int:
    args = _parse(argv)
    rank = int(os.environ["RANK"])
    if args.run_dir:
        _own_files(args.run_dir, rank)
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    hb_path = os.path.join(args.run_dir, "heartbeat") if args.run_dir else None
    from executor.measure import COMPUTE, COMM, DONE, Heartbeat
    heartbeat = Heartbeat(hb_path, rank)
    heartbeat.set(COMPUTE, "start")
    try:
        import torch
        import torch.distributed as dist

        from executor.engine import run_cases
        from planner.plan import load_plan

        from executor.model import require_runnable
        plans = [load_plan(p) for p in args.plan]
        for plan in plans:
            require_runnable(plan)
        timeout = args.pg_timeout or max(p.executor.timeout_s for p in plans)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device, backend = torch.device("cuda", local_rank), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
            torch.set_num_threads(1)
        heartbeat.set(COMM, "init_process_group")
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
        heartbeat.set(COMPUTE, "init done")
        for plan in plans:
            if world < plan.world_size:
                raise RuntimeError(f"plan needs {plan.world_size} ranks, launched {world}")
        done = run_cases(plans, rank, device, heartbeat, steps=args.steps,
                         verify=args.verify, balanced=args.balanced, warmup=args.warmup,
                         record_ops=args.record_ops, timeline=args.timeline)
        results = []
        if rank == 0:
            from executor.report import finish
            results = [finish(plan, res, backend, world, args.store)
                       for plan, res in zip(plans, done)]
        heartbeat.set(COMM, "final barrier")
        dist.barrier()
        if rank == 0 and args.result:
            tmp = args.result + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f)
            os.replace(tmp, args.result)
        elif rank == 0:      # started by torchrun directly: print the summaries
            from executor.report import table
            print("\n\n".join(table(r) for r in results), flush=True)
        heartbeat.set(DONE, "done")
        dist.destroy_process_group()
        return 0
    except BaseException as err:  # noqa: BLE001 - every failure is reported, then exit
        state = heartbeat.get()[0]
        if args.run_dir:
            line = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            with open(os.path.join(args.run_dir, f"rank{rank}.error"), "w") as f:
                json.dump({"rank": rank, "time": time.time(), "error": line,
                           "waiting_on_peers": state == COMM}, f)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
