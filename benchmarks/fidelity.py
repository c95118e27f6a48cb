"""Fidelity on public GPU serving figures: fa-pool's prediction beside each measured point
(not a test: the figures are what they are; this records how far we are from them).

    .venv/bin/python benchmarks/fidelity.py [--csv benchmarks/data/fidelity_points.csv]
        [--no-history]

Each row of the CSV is one figure someone published (engine, version, GPU, model,
precision, TP, batch, input / output length, TTFT or TPOT, and its source).  fa-pool
predicts it with the GPU's shipped reference profile (dgx-a100 / dgx-h100, built from
public microbenchmark data only: calibration/data) and static TP (PP 1, the batch in one
micro-batch, as these engines run it):

  ttft_ms  the prefill of the whole batch (the engine's first-token latency at that batch)
  tpot_ms  one decode step of the whole batch at mid generation (a per-token latency's
           median, or a mean inter-token latency)

A row the planner refuses (it needs more memory than the GPU has) is listed, counted and
left out of the MAPE.  Prints every row's error and the MAPE per GPU and overall, and
appends them with the date and commit to benchmarks/history.json (the README quotes it).
No constant here or in the profiles is fitted to these rows.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import append  # noqa: E402

from planner.cluster import resolve_cluster  # noqa: E402
from planner.model import PRESETS  # noqa: E402
from planner.simulate import simulate  # noqa: E402
from planner.strategy import StaticStrategy  # noqa: E402
from planner.workload import Workload  # noqa: E402

POINTS = Path(__file__).resolve().parent / "data" / "fidelity_points.csv"
CLUSTERS = {"A100": "dgx-a100", "H100": "dgx-h100"}
COLUMNS = ("gpu", "engine", "version", "model", "precision", "kv_precision", "tp", "batch",
           "input_len", "output_len", "metric", "measured_ms", "source")
METRICS = ("ttft_ms", "tpot_ms")


def read_points(path: Path) -> list:
    """The CSV's rows, each checked: a bad row stops the benchmark naming row and field."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            sys.exit(f"{path}: header lacks {sorted(missing)}")
        rows = list(reader)
    for i, r in enumerate(rows, start=2):
        checks = {"gpu": r["gpu"] in CLUSTERS, "model": r["model"] in PRESETS,
                  "metric": r["metric"] in METRICS, "source": bool(r["source"].strip())}
        for field in ("tp", "batch", "input_len", "output_len"):
            checks[field] = r[field].isdigit() and int(r[field]) > 0
        try:
            checks["measured_ms"] = float(r["measured_ms"]) > 0
        except ValueError:
            checks["measured_ms"] = False
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            sys.exit(f"{path} row {i}.{bad[0]}: {r[bad[0]]!r} is not valid")
    return rows


def predict(r: dict) -> tuple:
    """(predicted ms or None, the planner's reason when it refuses the configuration)."""
    model = PRESETS[r["model"]].with_precision(r["precision"], r["kv_precision"])
    cluster = resolve_cluster(CLUSTERS[r["gpu"]])
    strategy = StaticStrategy(tp=int(r["tp"]), pp=1, microbatches=1, decode_microbatches=1)
    # decode needs at least a second token to exist; a first-token row's output is 1
    wl = Workload(int(r["batch"]), int(r["input_len"]), max(2, int(r["output_len"])))
    phase = "prefill" if r["metric"] == "ttft_ms" else "decode"
    res = simulate(model, cluster, strategy, wl, phase=phase, interval_samples=0,
                   record=False)
    if not res.feasible:
        return None, res.infeasible_reasons[0]
    return (res.ttft_s if phase == "prefill" else res.tpot_s) * 1e3, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(POINTS))
    parser.add_argument("--no-history", action="store_true")
    args = parser.parse_args()
    rows = read_points(Path(args.csv))
    print(f"{'gpu':<5} {'engine':<13} {'model':<14} {'prec':<4} {'tp':>2} {'batch':>5} "
          f"{'in/out':>10} {'metric':<8} {'measured':>9} {'predicted':>9} {'error %':>8}")
    errors: dict = {}
    refused = []
    for r in rows:
        pred, why = predict(r)
        meas = float(r["measured_ms"])
        shape = f"{r['input_len']}/{r['output_len']}"
        head = (f"{r['gpu']:<5} {r['engine']:<13} {r['model']:<14} {r['precision']:<4} "
                f"{r['tp']:>2} {r['batch']:>5} {shape:>10} {r['metric']:<8} {meas:>9.2f}")
        if pred is None:
            refused.append({"row": head.split(), "reason": why})
            print(f"{head} {'refused':>9}  ({why[:60]})")
            continue
        err = (pred - meas) / meas * 100.0
        errors.setdefault(r["gpu"], []).append(abs(err))
        errors.setdefault(f"{r['gpu']} {r['metric']}", []).append(abs(err))
        print(f"{head} {pred:>9.2f} {err:>+8.1f}")
    mape = {k: round(float(np.mean(v)), 1) for k, v in sorted(errors.items())}
    everything = [e for k, v in errors.items() if " " not in k for e in v]
    mape["all"] = round(float(np.mean(everything)), 1)
    counts = {k: len(v) for k, v in sorted(errors.items()) if " " not in k}
    sources = sorted({r["source"].split(" (")[0] for r in rows})
    print(f"\nMAPE %: {mape}\npoints predicted: {counts} (refused by the planner: "
          f"{len(refused)}); sources: {len(sources)}")
    if not args.no_history:
        command = "benchmarks/fidelity.py " + " ".join(sys.argv[1:])
        append("fidelity", {"mape": mape, "points": counts, "refused": len(refused),
                            "sources": sources}, command.strip())


if __name__ == "__main__":
    main()
