"""The closed loop: predict -> run the executor -> store -> refit -> predict again.

Configurations fit this machine (cluster `local`, model `tiny`): FA Pool and the static
baseline at several sequence lengths; each run measures prefill (TTFT) and decode (TPOT).
Every configuration states its micro-batch count (planner.plan.resolve_microbatches), so
planner and executor cut the batch alike.

Measured value: the median of the executor's per-step times (its e2e_prefill / e2e_decode
samples in the store), the statistic the refit's points use too (planner.loopfit.typical_s):
a prediction is a sum of op times, and the sum of every op's fast tail (a low quantile) is
faster than any whole step, which made every prediction 20 % fast at short lengths.  Each
pass runs the configurations of one world size in one process group, their requests
alternating (executor.engine.run_cases) so that a slow spell of the machine hits them alike,
in reversed order from pass to pass; a configuration's steps of all passes are pooled into
one median (each pass's own median is reported next to it).

Calibrate what runs: if the store has no microbenchmark run of this machine yet, validate
first runs `fapool calibrate --quick` into it, which times the executor's own kernels and
its host time per op directly (executor.kernels).

Refit, evaluated leave-one-out: for each configuration c, using only the other ones,
  the profile's curves are refitted (calibration.fit.fit_local) from this machine's
  microbenchmark samples in the store plus the operator samples the executor timed while
  running the other configurations (one point per shape, as above).  Not its collectives:
  those include waiting for the peer (calibration.fit.without_executor_collectives), so
  the links come from the store's microbenchmarks, else stay the starting profile's.
  Decode and prefill attention shapes weigh alike (calibration.fit.balance_attention_phases).
  Host time per op is the microbenchmarks' direct measurement, never fitted to the
  configurations being validated.
Then c is predicted with it: that is `mape.refit`, the headline.  No refit figure uses c's
own measurements.  Apart from the model, a per-family bias (strategy kind and rank count:
measured ~ b * refit prediction, b the geometric mean over the other configurations of that
family) is reported under `bias`, with the MAPE it would give; it is a correction, never part
of `refit`.

Where the model is wrong: every configuration's report has, per phase and op kind, the
predicted and measured time per rank (planner.loopview.op_table), and `--trace-dir` gets one
Chrome trace per configuration with the refit's predicted and the executor's measured
timelines of every rank side by side (planner.loopview.write_comparison_trace).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.errors import require
from calibration.fingerprint import loopback_link
from calibration.profile import Profile, load_profile
from planner.cluster import PRESETS as CLUSTERS
from planner.cluster import ClusterSpec
from planner.model import PRESETS as MODELS
from planner.model import ModelSpec
from planner.plan import ExecutorSettings, Plan, make_plan, resolve_microbatches, save_plan
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy, Strategy
from planner.loopfit import (METRICS, STAGES, RefitInputs, typical_s,  # noqa: F401
                             _err, e2e_corrections, mape, microbench_samples, ratio_errors,
                             refit_inputs, refit_profile, robust_samples, summarize)
from planner.workload import Workload

REPO_ROOT = Path(__file__).resolve().parent.parent
# Timed steps per configuration and run (whole passes drift with the machine, hence several
# passes, pooled).
STEPS, WARMUP = 30, 3


@dataclass(frozen=True)
class Config:
    label: str
    strategy: Strategy
    workload: Workload
    model: ModelSpec | None = None       # None: the loop's model

    def spec(self, default: ModelSpec) -> ModelSpec:
        return self.model or default

    def pair(self, default: ModelSpec) -> tuple:
        """Configurations compared as FA Pool / static: same model, batch and length."""
        return (self.spec(default).name, self.spec(default).kv_heads, self.workload.batch,
                self.workload.input_len)

    @property
    def kind(self) -> str:
        return "fapool" if isinstance(self.strategy, FAPoolStrategy) else "static"

    @property
    def family(self) -> str:
        """Configurations sharing an end-to-end correction: same kind and rank count."""
        return f"{self.kind}-{self.strategy.max_gpus}"


def _fapool(pool: int, mb: int = 2, tp: int = 1, kv: str = "split-batch") -> FAPoolStrategy:
    return FAPoolStrategy(base_tp=tp, threshold=16, max_pool=pool, pool_gpus=pool,
                          microbatches=mb, decode_kv=kv)


def default_configs(quick: bool) -> list:
    """FA Pool (base TP 1 + pool 1) beside static TP 1 x PP 2 at four lengths (batch 2 in
    2 micro-batches), and wider layouts (world sizes 3 and 4): pools of 2 and 3 with the
    split-seq and replicated decode placements, and base TP 2 + pool 2 beside static
    TP 2 x PP 2 with GQA at batch 4."""
    lens = (64, 256, 512, 1024) if quick else (64, 256, 512, 1024, 2048)
    out = []
    for n in lens:
        wl = Workload(batch=2, input_len=n, output_len=16)
        out.append(Config(f"static tp1 pp2 seq{n}", StaticStrategy(tp=1, pp=2,
                                                                     microbatches=2), wl))
        out.append(Config(f"fapool tp1 pool1 seq{n}", _fapool(1), wl))
    gqa = MODELS["tiny"].with_overrides(kv_heads=2)
    wl4 = Workload(batch=4, input_len=512, output_len=16)
    out += [
        Config("fapool tp1 pool2 split-seq seq512", _fapool(2, 1, kv="split-seq"),
               Workload(batch=2, input_len=512, output_len=16)),
        Config("fapool tp1 pool3 replicated seq1024", _fapool(3, 2, kv="replicated"),
               Workload(batch=2, input_len=1024, output_len=16)),
        Config("static tp2 pp2 gqa b4 seq512", StaticStrategy(tp=2, pp=2, microbatches=2),
               wl4, gqa),
        Config("fapool tp2 pool2 gqa b4 seq512", _fapool(2, 2, tp=2), wl4, gqa),
    ]
    if not quick:
        out.append(Config("fapool tp1 pool2 seq2048", _fapool(2),
                          Workload(batch=2, input_len=2048, output_len=16)))
    return out


def plan_configs(plan: Plan) -> list:
    """--plan: the plan at its length and at 1/4 and 1/16 of it, with the static TP x PP
    baseline of as many ranks beside each."""
    require(plan.cluster.nodes == 1 and plan.cluster.name == "local", "plan.cluster",
            f"validate runs plans on this machine (cluster 'local'), not {plan.cluster.name!r}")
    s, wl = plan.strategy, plan.workload
    out = []
    for n in sorted({max(16, wl.input_len // div) for div in (1, 4, 16)}):
        w = dataclasses.replace(wl, input_len=n)
        if isinstance(s, FAPoolStrategy):
            cfg = dataclasses.replace(s, threshold=min(s.threshold, n))
            base = StaticStrategy(tp=s.base_tp, pp=2, microbatches=s.microbatches)
        else:
            cfg, base = s, FAPoolStrategy(base_tp=s.tp, threshold=1, pool_gpus=1, max_pool=1,
                                          microbatches=s.microbatches)
        out.append(Config(f"plan seq{n}", cfg, w))
        out.append(Config(f"{'static' if isinstance(base, StaticStrategy) else 'fapool'} "
                          f"seq{n}", base, w))
    return out


def local_cluster(world: int, profile: Profile | None = None) -> ClusterSpec:
    """This machine as a cluster of `world` ranks; with a profile that has the loopback
    link measured at that world size (calibration.fingerprint.loopback_link: processes
    sharing cores), its messages use it."""
    c = CLUSTERS["local"]
    c = dataclasses.replace(c, gpus_per_node=max(c.gpus_per_node, world))
    link = loopback_link(world, c.cores_per_node)
    if profile is not None and link in profile.links:
        c = dataclasses.replace(c, intra_link=link, inter_link=link)
    return c


def simulate_config(model: ModelSpec, cfg: Config, profile: Profile, record: bool = False):
    cluster = local_cluster(cfg.strategy.max_gpus, profile)
    r = simulate(cfg.spec(model), cluster, cfg.strategy, cfg.workload, profile=profile,
                 record=record, interval_samples=0)
    require(r.feasible, "config", f"{cfg.label} does not fit: {r.infeasible_reasons}")
    return r


def predict(model: ModelSpec, cfg: Config, profile: Profile) -> dict:
    r = simulate_config(model, cfg, profile)
    return {"ttft_ms": r.ttft_s * 1e3, "tpot_ms": r.tpot_s * 1e3}


# ------------------------------------------------------------------ measuring
def run_executor(plan_paths: list, store: Path, steps: int = STEPS, warmup: int = WARMUP,
                 timeout: float = 300.0) -> list:
    """`fapool run --plan P1 --plan P2 ... --json --store S` in a subprocess (planner never
    imports torch): the plans (one world size) run in one process group, which saves a
    launch per plan, their requests alternating, so the machine's drift during the pass
    hits every plan alike.  Returns their JSON summaries in order.  A failed
    run raises RuntimeError with its message."""
    cmd = [sys.executable, "-m", "planner.cli", "run", "--json", "--timeline", "--store",
           str(store), "--steps", str(steps), "--warmup", str(warmup), "--timeout",
           str(timeout)]
    for path in plan_paths:
        cmd += ["--plan", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=timeout + 120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        names = ", ".join(Path(p).name for p in plan_paths)
        raise RuntimeError(f"executor run of {names} failed: {last}")
    out = json.loads(proc.stdout)
    return out if isinstance(out, list) else [out]


def _typical_ms(times_s) -> float:
    return typical_s(times_s) * 1e3


def measured_from_store(store, run_ids: list) -> dict:
    """Measured TTFT / TPOT from the e2e samples of one configuration's runs (its passes):
    the median of all their steps pooled, and each run's own median."""
    out = {}
    for op, metric in (("e2e_prefill", "ttft_ms"), ("e2e_decode", "tpot_ms")):
        per_run = []
        for rid in run_ids:
            samples = store.samples(op=op, run_id=rid)
            require(bool(samples), "store", f"run {rid} has no {op} samples")
            per_run.append([t for s in samples for t in s["times_s"]])
        times = [t for run in per_run for t in run]
        out[metric] = _typical_ms(times)
        out[f"{metric}_passes"] = [round(_typical_ms(run), 4) for run in per_run]
        out[f"{metric}_steps"] = len(times)
    return out


# ------------------------------------------------------------------ the loop
def ensure_microbenchmarks(store_path: Path, worlds, tick) -> None:
    """Calibrate what runs: every world size the loop runs gets a microbenchmark run of
    this machine in the store unless it has one (`fapool calibrate --quick --world-size
    W`: the executor's kernels, its host time per op, and the loopback link among W
    processes), in a subprocess, as planner never imports torch."""
    from calibration.fingerprint import fingerprint
    from calibration.store import Store
    store = Store(store_path)
    try:
        me = fingerprint().get("hostname_sha256")
        have = {r["world_size"] for r in store.runs(kind="microbench", status="complete")
                if r["fingerprint"].get("hostname_sha256") == me}
    finally:
        store.close()
    for world in sorted(set(worlds) - have):
        tick(f"no microbenchmarks of {world} processes on this machine in the store: "
             f"fapool calibrate --quick --world-size {world} first")
        with tempfile.TemporaryDirectory(prefix="fapool-calibrate-") as tmp:
            cmd = [sys.executable, "-m", "planner.cli", "calibrate", "--quick", "--world-size",
                   str(world), "--store", str(store_path), "--out", str(Path(tmp) / "p.yaml")]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                                  timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"calibration failed: {last}")


def _measure(plans: list, store_path: Path, repeats: int, tick, runner,
             steps: int = STEPS) -> tuple:
    """Run every plan `repeats` times (per pass: one process group per world size, requests
    alternating); returns ({config index: [store run ids]}, {index: last summary})."""
    runs: dict = {i: [] for i in range(len(plans))}
    last: dict = {}
    by_world: dict = {}
    for i, (plan, _, _) in enumerate(plans):
        by_world.setdefault(plan.world_size, []).append(i)
    for rep in range(repeats):
        for world, members in sorted(by_world.items()):
            order = members if rep % 2 == 0 else members[::-1]
            tick(f"pass {rep + 1}/{repeats}: {len(order)} configurations on {world} ranks "
                 f"({steps} timed steps each), one process group")
            summaries = runner([plans[i][1] for i in order], store_path,
                               timeout=60.0 * len(order))
            for i, summary in zip(order, summaries):
                runs[i].append(summary["store_run_id"])
                last[i] = summary
    return runs, last


def validate(configs: list, store_path: Path, work_dir: Path, model: ModelSpec | None = None,
             profile: Profile | None = None, progress=None, repeats: int = 5,
             refit_all: bool = False, trace_dir: Path | None = None,
             runner=None, calibrate: bool = True, steps: int = STEPS) -> dict:
    """Run the loop over configs; returns the report (see the module docstring).  With
    refit_all, report["refit_profile"] is the profile refitted from every configuration
    (else None).  runner(plan paths, store, timeout=) -> summaries runs the executor
    (default run_executor with `steps` timed steps per configuration and pass; tests pass a
    synthetic one); calibrate: microbenchmark first if the store has none
    (ensure_microbenchmarks)."""
    from calibration.store import Store
    from planner.loopview import op_table, write_comparison_trace
    model = model or MODELS["tiny"]
    profile = profile or load_profile("local")
    require(len(configs) >= 3, "configs", "need at least 3 configurations")
    require(repeats >= 1, "--repeats", f"must be >= 1, got {repeats}")
    require(steps >= 1, "--steps", f"must be >= 1, got {steps}")
    tick = progress or (lambda msg: None)
    if calibrate:
        ensure_microbenchmarks(store_path, {max(2, c.strategy.max_gpus) for c in configs},
                               tick)
    # micro-batch counts explicit, as the plans state them (an older plan.json may not)
    configs = [dataclasses.replace(c, strategy=resolve_microbatches(
        c.spec(model), c.strategy, c.workload, profile)) for c in configs]
    plans = []
    for i, cfg in enumerate(configs):
        pred = predict(model, cfg, profile)
        spec = cfg.spec(model)
        dtype = {4: "float32", 2: "bfloat16"}.get(spec.dtype_bytes, "float32")
        plan = make_plan(spec, local_cluster(cfg.strategy.max_gpus, profile), cfg.strategy,
                         cfg.workload, profile, {k: round(v, 4) for k, v in pred.items()},
                         ExecutorSettings(dtype=dtype, timeout_s=300.0))
        path = work_dir / f"plan_{i}.json"
        save_plan(plan, path)
        plans.append((plan, path, pred))
    runs, last = _measure(plans, store_path, repeats, tick,
                          runner or functools.partial(run_executor, steps=steps), steps)
    store = Store(store_path)
    try:
        rows = []
        for i, cfg in enumerate(configs):
            plan, _, pred = plans[i]
            rows.append({"label": cfg.label, "kind": cfg.kind, "family": cfg.family,
                         "pair": list(cfg.pair(model)), "model": cfg.spec(model).name,
                         "plan_id": plan.plan_id, "strategy": cfg.strategy.describe(),
                         "seq_len": cfg.workload.input_len, "batch": cfg.workload.batch,
                         "output_len": cfg.workload.output_len, "run_ids": runs[i],
                         "microbatch_rows": last[i].get("microbatch_rows"),
                         "predicted": pred, "measured": measured_from_store(store, runs[i])})
        inputs = refit_inputs(store, [rid for r in rows for rid in r["run_ids"]])
    finally:
        store.close()
    fold_preds, folds = leave_one_out(configs, rows, inputs, model, profile, tick)
    bias = _bias(rows, fold_preds)
    for i, (cfg, row) in enumerate(zip(configs, rows)):
        predicted = simulate_config(model, cfg, folds[i], record=True)
        row["ops"] = op_table(predicted, last[i])
        if trace_dir is not None:
            row["trace"] = str(write_comparison_trace(
                predicted, last[i], trace_dir / f"{i:02d}_{_slug(cfg.label)}.json"))
    full = refit_profile(inputs, list(inputs.by_run), profile) if refit_all else None
    for r in rows:
        r["error_pct"] = {stage: {m: round(_err(r[key][m], r["measured"][m]), 2)
                                  for m in METRICS}
                          for stage, key in STAGES.items()}
    return {"configs": rows,
            "mape": {stage: summarize(rows, key) for stage, key in STAGES.items()
                     if stage != "with_bias"},
            "op_mape": op_mape(rows),
            "bias": {"factors": bias,
                     "note": "measured ~ b x refit prediction per strategy family, fitted "
                             "leave-one-out; reported beside the model, never inside refit",
                     "mape_with_bias": summarize(rows, "predicted_with_bias")},
            "measure": f"median of per-step times, {repeats} pass(es) pooled",
            "holdout": "leave-one-out: profile refit (curves; host time per op measured, not "
                       "fitted) without the config",
            "refit_profile": full}


def leave_one_out(configs: list, rows: list, inputs: RefitInputs, model: ModelSpec,
                  profile: Profile, tick=lambda msg: None) -> tuple:
    """For each configuration i, the profile refitted without its runs (folds[i]) and that
    fold's prediction of every configuration j (fold_preds[i, j]); sets each row's
    predicted_refit (its own fold's) and host_overhead_us.  rows[i]["run_ids"]: the store
    runs of configs[i]."""
    fold_preds, folds = {}, {}
    for i, row in enumerate(rows):
        tick(f"[{i + 1}/{len(rows)}] refit without {row['label']}")
        others = [rid for r in rows if r is not row for rid in r["run_ids"]]
        folds[i] = refit_profile(inputs, others, profile)
        row["host_overhead_us"] = round(folds[i].host.op_overhead_s * 1e6, 3)
        for j, cfg in enumerate(configs):
            fold_preds[i, j] = predict(model, cfg, folds[i])
        row["predicted_refit"] = fold_preds[i, i]
    return fold_preds, folds


def _bias(rows: list, fold_preds: dict) -> dict:
    """Per-family bias, fitted leave-one-out (e2e_corrections on the other configs of the
    fold); sets each row's predicted_with_bias and bias; returns family -> factors."""
    out: dict = {}
    for i, row in enumerate(rows):
        train = [dict(r, predicted_refit=fold_preds[i, j])
                 for j, r in enumerate(rows) if j != i]
        corr = e2e_corrections(train)
        row["predicted_with_bias"], row["bias"] = {}, {}
        for m in METRICS:
            _, b = corr.get((row["family"], m), (0.0, 1.0))
            row["predicted_with_bias"][m] = b * row["predicted_refit"][m]
            row["bias"][m] = round(b, 4)
            out.setdefault(row["family"], {}).setdefault(m, []).append(round(b, 4))
    return out


def op_mape(rows: list) -> dict:
    """Per phase and compute op kind, the mean |predicted / measured - 1| in % over the
    configurations (the refit's per-op error; comm includes waiting, so it is left out)."""
    acc: dict = {}
    for r in rows:
        for phase, kinds in (r.get("ops") or {}).items():
            for kind, v in kinds.items():
                if kind != "comm" and v["measured_ms"] > 0:
                    acc.setdefault(phase, {}).setdefault(kind, []).append(
                        abs(v["predicted_ms"] / v["measured_ms"] - 1) * 100)
    return {phase: {k: round(float(np.mean(v)), 1) for k, v in kinds.items()}
            for phase, kinds in acc.items()}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)
