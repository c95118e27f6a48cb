"""Predict a stored `fapool validate` run again with the current code, without running the
executor: the leave-one-out refit and prediction of every configuration (planner.validate.
leave_one_out) from the measurements already in its store.  A change to the cost model or
the refit is then judged on the same measurements in ~30 s instead of a new 7-minute run.

    .venv/bin/python benchmarks/repredict.py REPORT.json [--store STORE]

REPORT.json: what `fapool validate --quick --json` printed (its configurations' labels
and store run ids); STORE: its measurement store (default: the report's "store").  Prints
each configuration's refit error and the MAPE (TTFT, TPOT, FA Pool / static ratio), beside
the report's own.  A record of a model change, not a test: nothing is appended.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration.errors import InputError, read_json, require  # noqa: E402
from calibration.profile import load_profile  # noqa: E402
from calibration.store import Store  # noqa: E402
from planner.loopfit import METRICS, _err, refit_inputs, summarize  # noqa: E402
from planner.model import PRESETS  # noqa: E402
from planner.plan import resolve_microbatches  # noqa: E402
from planner.validate import default_configs, leave_one_out  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report")
    p.add_argument("--store", default=None)
    a = p.parse_args()
    try:
        repredict(a.report, a.store)
    except InputError as err:               # bad input: one line, status 2
        sys.stderr.write(f"repredict: error: {err}\n")
        sys.exit(2)


def repredict(report_path: str, store_path: str | None) -> None:
    report = read_json(report_path, "report")
    require(isinstance(report, dict) and isinstance(report.get("configs"), list)
            and isinstance(report.get("mape"), dict), "report",
            f"{report_path} is not the JSON `fapool validate --json` prints")
    for i, r in enumerate(report["configs"]):
        require(isinstance(r, dict) and {"label", "kind", "family", "pair", "seq_len",
                                         "run_ids", "measured", "error_pct"} <= set(r),
                f"report.configs.{i}", "not a configuration of a validate report")
    require(store_path is not None or isinstance(report.get("store"), str), "--store",
            "the report names no store; give --store")
    model, profile = PRESETS["tiny"], load_profile("local")
    by_label = {c.label: c for c in default_configs(quick=True)}
    missing = [r["label"] for r in report["configs"] if r["label"] not in by_label]
    require(not missing, "report", f"configurations {missing} are not --quick's; re-predict "
            "only reports of `fapool validate --quick`")
    configs = [by_label[r["label"]] for r in report["configs"]]
    configs = [dataclasses.replace(c, strategy=resolve_microbatches(
        c.spec(model), c.strategy, c.workload, profile)) for c in configs]
    rows = [{k: r[k] for k in ("label", "kind", "family", "pair", "seq_len", "run_ids",
                               "measured")} for r in report["configs"]]
    store = Store(Path(store_path or report["store"]), readonly=True)
    try:
        inputs = refit_inputs(store, [rid for r in rows for rid in r["run_ids"]])
    finally:
        store.close()
    leave_one_out(configs, rows, inputs, model, profile)
    for row, old in zip(rows, report["configs"]):
        now = {m: round(_err(row["predicted_refit"][m], row["measured"][m]), 1)
               for m in METRICS}
        print(f"{row['label']:38s} refit error % now {now}, in the report "
              f"{old['error_pct']['refit']}")
    mape, before = summarize(rows, "predicted_refit"), report["mape"]["refit"]
    print("refit MAPE % now:       " + ", ".join(f"{k} {mape[k]:.2f}" for k in
                                                  ("ttft", "tpot", "ratio")))
    print("refit MAPE % in report: " + ", ".join(f"{k} {before[k]:.2f}" for k in
                                                  ("ttft", "tpot", "ratio")))


if __name__ == "__main__":
    main()
