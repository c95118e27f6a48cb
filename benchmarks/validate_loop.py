"""The closed loop's accuracy on this machine, from real timings (not a test: the figures
move with the machine's load, so CI never asserts them).

    .venv/bin/python benchmarks/validate_loop.py [--runs 1] [--repeats 5] [--plan P]
        [--report DIR]

Runs `fapool validate --quick --json` (or `--plan P`) --runs times, prints every run's
held-out MAPE (before the refit, and the refit without any per-family factor) and appends
them with the date and commit to benchmarks/history.json.  --report DIR keeps each run's
whole report (report_<i>.json) and its predicted-vs-measured traces there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import append  # noqa: E402

KEYS = ("ttft", "tpot", "ratio")


def one_run(repeats: int, plan: str | None, report_dir: Path | None, index: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fapool-bench-") as tmp:
        cmd = [sys.executable, "-m", "planner.cli", "validate", "--json", "--repeats",
               str(repeats), "--store", str(Path(tmp) / "store.sqlite")]
        cmd += ["--plan", plan] if plan else ["--quick"]
        if report_dir is not None:
            cmd += ["--trace-dir", str(report_dir / f"traces_{index}")]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"validate failed: {proc.stderr.strip().splitlines()[-1:]}")
        report = json.loads(proc.stdout)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    if report_dir is not None:
        (report_dir / f"report_{index}.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plan", default=None)
    parser.add_argument("--report", default=None, metavar="DIR")
    args = parser.parse_args()
    report_dir = Path(args.report) if args.report else None
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'run':>4} {'stage':>8} " + " ".join(f"{k + ' %':>8}" for k in KEYS) + "  wall s")
    for i in range(args.runs):
        r = one_run(args.repeats, args.plan, report_dir, i)
        row = {"wall_s": r["wall_s"]}
        for stage in ("before", "refit"):
            row[stage] = {k: r["mape"][stage][k] for k in KEYS}
            print(f"{i + 1:>4} {stage:>8} " + " ".join(
                f"{row[stage][k]:>8.1f}" if row[stage][k] is not None else f"{'-':>8}"
                for k in KEYS) + f"  {r['wall_s']:>6}")
        row["with_bias"] = {k: r["bias"]["mape_with_bias"][k] for k in KEYS}
        row["op_mape"] = r.get("op_mape")
        rows.append(row)
    command = "benchmarks/validate_loop.py " + " ".join(sys.argv[1:])
    append("validate_loop", {"what": args.plan or "--quick", "repeats": args.repeats,
                             "runs": rows}, command.strip())


if __name__ == "__main__":
    main()
