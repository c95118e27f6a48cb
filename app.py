"""fa-pool what-if dashboard: `fapool dashboard` (or `streamlit run app.py`).

Layout only: one render_* function per section.  Data comes from planner.dashboard.data
(simulations wrapped in st.cache_data here), figures from planner.dashboard.figures,
uploaded files are parsed by planner.dashboard.uploads (bytes in, specs or InputError out).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from calibration.errors import InputError
from calibration.profile import Profile
from calibration.store import default_store_path
from planner.cluster import PRESETS as CLUSTERS
from planner.dashboard import data, figures, uploads
from planner.dashboard.scenario import KINDS, LABELS, SEQ_LENS, Scenario
from planner.model import KV_PRECISIONS, PRECISIONS
from planner.model import PRESETS as MODELS
from planner.paper import CLAIMS
from planner.report import rate_figure
from planner.strategy import DECODE_KV_PLACEMENTS, FAPoolStrategy, StaticStrategy
from planner.workloads import DEFAULT_RATE, parse_rates

UPLOAD = "upload / paste ..."
THRESHOLDS = tuple(2 ** k for k in range(8, 17))          # 256 .. 65536
LENGTHS = tuple(sorted(set(SEQ_LENS) | {3 * 2 ** k for k in range(9, 15)} | {65536}))
TP_CHOICES = (1, 2, 4, 8, 16)
DRAWS = 8             # profile draws per point for the 5-95 % bands (each costs a simulation)

HASH = {Profile: data.profile_digest}       # hashing a profile's fields on every call is slow
point = st.cache_data(show_spinner=False, max_entries=4096, hash_funcs=HASH)(data.point)
timeline = st.cache_data(show_spinner=False, max_entries=64, hash_funcs=HASH)(data.timeline)
serve = st.cache_data(show_spinner=False, max_entries=64, hash_funcs=HASH)(data.serve)
load_profile = st.cache_resource(show_spinner=False, max_entries=16)(
    lambda cluster: cluster.load_profile())
profile_from_upload = st.cache_resource(show_spinner=False, max_entries=16)(
    uploads.profile_from_upload)
store_comparison = st.cache_data(show_spinner=False, max_entries=16)(
    lambda path, mtime: data.store_comparison(path))


def file_input(label: str, key: str, types: list) -> bytes | None:
    """An uploader and a text area for pasting; either way the bytes go to one parser."""
    upload = st.file_uploader(label, type=types, key=f"{key}_file")
    pasted = st.text_area(f"... or paste the {label}", key=f"{key}_text", height=90)
    if upload is not None:
        return upload.getvalue()
    return pasted.encode() if pasted.strip() else None


def _uploaded(raw: bytes | None, what: str):
    if raw is None:
        raise InputError(what, "choose a file to upload or paste its content")
    return raw


def render_sidebar() -> Scenario:
    """The inputs, as one validated Scenario (raises InputError)."""
    sb = st.sidebar
    with sb:
        st.header("Model and cluster")
        model_name = st.selectbox("model", list(MODELS) + [UPLOAD], key="model")
        model_raw = file_input("config.json", "model", ["json"]) if model_name == UPLOAD else None
        dtype = st.selectbox("precision (weights)", ["as the model"] + sorted(PRECISIONS),
                             key="dtype", help="fp8: FP8 weights on FP8 tensor cores (H100)")
        kv_dtype = st.selectbox("K/V cache precision", ["as the model"] + sorted(KV_PRECISIONS),
                                key="kv_dtype")
        cluster_name = st.selectbox("cluster", list(CLUSTERS), key="cluster")
        nodes = st.number_input("nodes", 1, 1024, CLUSTERS[cluster_name].nodes, key="nodes")
        own = st.radio("hardware profile", ["the cluster's own", UPLOAD], key="profile_source")
        profile_raw = (file_input("profile YAML", "profile", ["yaml", "yml"])
                       if own == UPLOAD else None)
        st.header("Workload")
        batch = st.number_input("batch (sequences)", 1, 1 << 20, 1024, key="batch")
        seq_len = st.select_slider("sequence length (metrics, timeline, plan)", LENGTHS,
                                   16384, key="seq_len")
        source = st.radio("request mix (heatmap, search)",
                          ["uniform over the curve's lengths", "workload trace"], key="workload")
        trace_raw = (file_input("trace (CSV/JSONL)", "trace", ["csv", "jsonl"])
                     if source == "workload trace" else None)
        output_len = st.number_input("output length (tokens)", 1, 1 << 20, 128,
                                     key="output_len")
        st.header("FA Pool")
        base_tp = st.selectbox("base TP", TP_CHOICES, TP_CHOICES.index(8), key="base_tp")
        threshold = st.select_slider("threshold (tokens)", THRESHOLDS, 4096, key="threshold")
        per_gpu = st.number_input("tokens per pool GPU", 1, 1 << 20, 512, key="tokens_per_gpu")
        max_pool = st.number_input("maximum pool (GPUs)", 1, 4096, 32, key="max_pool")
        decode_kv = st.selectbox("decode K/V placement", DECODE_KV_PLACEMENTS, key="decode_kv")
        st.header("Static baseline")
        tp = st.selectbox("TP", TP_CHOICES, TP_CHOICES.index(8), key="tp")
        pp = st.number_input("PP", 1, 128, 2, key="pp")
        st.header("Plan and SLOs")
        selected = st.radio("selected plan", KINDS, format_func=LABELS.get, key="selected")
        slo_tpot = st.number_input("TPOT SLO (ms, 0 = none)", 0.0, 1e6, 0.0, key="slo_tpot")
        slo_ttft = st.number_input("TTFT SLO (ms, 0 = none)", 0.0, 1e7, 0.0, key="slo_ttft")
        st.header("Serving under load")
        rate = st.number_input("arrival rate (requests/s, 0 = a trace's own)", 0.0, 1e6,
                               DEFAULT_RATE, key="rate")
        replicas = st.number_input("replicas of the selected plan", 1, 4096, 1, key="replicas")
        per_len = st.number_input("requests per length (uniform mix)", 1, 4096, 16,
                                  key="requests_per_len")
        intervals = st.toggle(f"prediction intervals ({DRAWS} profile draws per point)", True,
                              key="intervals")
        st.text_input("measurement store", str(default_store_path()), key="store_path")

    model = (MODELS[model_name] if model_name != UPLOAD
             else uploads.model_from_upload(_uploaded(model_raw, "config.json"))).with_precision(
        None if dtype == "as the model" else dtype,
        None if kv_dtype == "as the model" else kv_dtype)
    cluster = CLUSTERS[cluster_name].with_nodes(int(nodes))
    profile = (load_profile(cluster) if own != UPLOAD else
               profile_from_upload(_uploaded(profile_raw, "profile"), cluster))
    trace = None
    if source == "workload trace":
        trace = uploads.trace_from_upload(_uploaded(trace_raw, "trace"))
        st.sidebar.caption(f"trace: {len(trace.requests)} requests over {trace.duration_s:.1f} s;"
                           " buckets " + ", ".join(f"{b.label} {b.weight:.0%}"
                                                   for b in trace.buckets()))
    return Scenario(
        model=model, cluster=dataclasses.replace(cluster, profile=profile.name), profile=profile,
        batch=int(batch), seq_len=int(seq_len), output_len=int(output_len),
        fapool=FAPoolStrategy(base_tp=base_tp, threshold=threshold,
                              tokens_per_pool_gpu=int(per_gpu), max_pool=int(max_pool),
                              decode_kv=decode_kv),
        static=StaticStrategy(tp=tp, pp=int(pp)), selected=selected, trace=trace,
        slo_tpot_ms=slo_tpot or None, slo_ttft_ms=slo_ttft or None,
        interval_samples=DRAWS if intervals else 0, rate=rate or None,
        replicas=int(replicas), requests_per_len=int(per_len))


def render_metrics(sc: Scenario, curves: dict) -> None:
    row = next(r for r in curves[LABELS[sc.selected]] if r["seq_len"] == sc.seq_len)
    st.subheader(f"Selected: {sc.model.name} on {sc.cluster.name}: {sc.strategy().describe()}"
                 f" at {sc.seq_len} tokens")
    if not row["feasible"]:
        st.warning("infeasible: " + "; ".join(row["infeasible_reasons"]))
        return
    cols = st.columns(5)
    for col, key, label in ((cols[0], "ttft_ms", "TTFT (ms)"), (cols[1], "tpot_ms", "TPOT (ms)")):
        iv = row[f"{key}_interval"]
        col.metric(label, data.fmt(row[key]), iv and f"5-95 %: {data.fmt(iv[0])} .. "
                   f"{data.fmt(iv[1])}", delta_color="off", delta_arrow="off")
    cols[2].metric("TPS (tok/s)", f"{row['tps']:,.0f}")
    cols[3].metric("GPUs", f"{row['gpus']} ({row['pool_gpus']} pool)")
    cols[4].metric("comm share", f"{row['comm_fraction'] * 100:.1f} %")
    for slo, key, name in ((sc.slo_tpot_ms, "tpot_ms", "TPOT"),
                           (sc.slo_ttft_ms, "ttft_ms", "TTFT")):
        if slo and row[key] > slo:
            st.warning(f"{name} {row[key]:.4g} ms misses the SLO of {slo:g} ms")


def sweeps(sc: Scenario) -> dict:
    return {LABELS[k]: data.sweep(sc, k, point) for k in ("static", "fapool")}


def render_curves(sc: Scenario, curves: dict) -> None:
    st.header("TPOT and TPS vs sequence length")
    claims = CLAIMS if st.checkbox("overlay the paper's claimed points", True,
                                   key="claims") else None
    left, right = st.columns(2)
    left.plotly_chart(figures.curves_figure(curves, "tpot", claims, sc.slo_tpot_ms, sc.seq_len),
                      key="chart_tpot")
    right.plotly_chart(figures.curves_figure(curves, "tps", claims, None, sc.seq_len),
                       key="chart_tps")
    st.caption("Lines: simulated (planner.simulate); bands: 5-95 % over profile draws "
               "(TPS band from the TTFT and TPOT interval ends, conservative).  Diamonds: the "
               "paper's claims (paper-4l, batch 1024, A100, section 5.1), not computed; its "
               "TPS cannot be batch x tokens / time (see `fapool paper`).")


def render_timeline(sc: Scenario) -> None:
    st.header(f"Timeline: {sc.strategy().describe()} at {sc.seq_len} tokens")
    phase = st.radio("phase", ["prefill", "decode"], horizontal=True, key="phase")
    tl = timeline(*sc.specs, data.canonical(sc.strategy(), sc.seq_len), sc.workload())
    if not tl["feasible"]:
        st.warning("infeasible: " + "; ".join(tl["reasons"]))
        return
    st.plotly_chart(figures.gantt_figure(tl, phase), key="chart_gantt")
    st.caption("Prefill: the first micro-batches simulated explicitly; decode: two steps of "
               "the whole batch.  Wide bars compute, narrow bars communication.")


def render_memory(sc: Scenario, curves: dict) -> None:
    st.header("Memory per GPU")
    groups = [(f"static TP={sc.static.tp} PP={sc.static.pp}: worst stage", "base",
               curves[LABELS["static"]]),
              ("FA Pool: base GPU", "base", curves[LABELS["fapool"]]),
              ("FA Pool: pool GPU", "pool", curves[LABELS["fapool"]])]
    capacity = sc.profile.device.hbm_bytes / 1e9
    st.plotly_chart(figures.memory_figure(groups, capacity), key="chart_memory")
    bad = [f"{r['label']} at {r['seq_len']}: {'; '.join(r['infeasible_reasons'])}"
           for rows in curves.values() for r in rows if not r["feasible"]]
    for reason in bad:
        st.warning(f"infeasible: {reason}")


def render_heatmap(sc: Scenario) -> None:
    st.header("Threshold x pool size")
    metric = st.radio("metric", ["tpot", "tps"], format_func=str.upper, horizontal=True,
                      key="heat_metric")
    bar = st.progress(0.0, text="simulating the grid")
    h = data.heatmap(sc, metric, point, progress=lambda f: bar.progress(f, text="simulating"))
    bar.empty()
    st.plotly_chart(figures.heatmap_figure(h), key="chart_heatmap")
    what = sc.request_workload.name
    st.caption(f"FA Pool with base TP {sc.fapool.base_tp} and a fixed pool over the request "
               f"mix '{what}' (power-of-two buckets, each a batch of {sc.batch}); lengths below "
               "the threshold run on the base group alone.  ✗: some bucket does not fit in "
               "memory (hover for the reason).")


def render_serving(sc: Scenario) -> None:
    st.header(f"Serving under load: {sc.replicas} x {sc.strategy().describe()}")
    try:
        with st.spinner("simulating the request stream"):
            out = data.serve_selected(sc, serve)
    except InputError as err:
        st.error(str(err))
        return
    if not out.get("completed"):
        st.warning(f"no request fits in memory: {out['requests']} rejected")
        return
    cols = st.columns(5)
    for col, (label, key) in zip(cols, (("p99 TTFT (ms)", "ttft_p99_ms"),
                                        ("p99 TPOT (ms)", "tpot_p99_ms"),
                                        ("p99 queue (ms)", "queue_p99_ms"),
                                        ("p50 TTFT (ms)", "ttft_p50_ms"),
                                        ("served (requests/s)", "throughput_rps"))):
        col.metric(label, data.fmt(out.get(key)))
    for slo, key, name in ((sc.slo_tpot_ms, "tpot_p99_ms", "TPOT"),
                           (sc.slo_ttft_ms, "ttft_p99_ms", "TTFT")):
        if slo and (out.get(key) or 0) > slo:
            st.warning(f"request p99 {name} {out[key]:.4g} ms misses the SLO of {slo:g} ms")
    st.caption(f"{out['completed']}/{out['requests']} requests of "
               f"{sc.request_workload.name}, each replica holding at most {sc.batch} in flight "
               f"(the batch), routed by {sc.serving.router}; pool occupancy "
               f"{out['pool_occupancy_mean']:.2f} (planner.requests)")


def render_search(sc: Scenario) -> None:
    st.header("Plan search: layouts, replicas and running-batch limit under the arrivals")
    budget = st.number_input("GPU budget", 1, sc.cluster.total_gpus, sc.cluster.total_gpus,
                             key="search_gpus")
    objective = st.radio("objective", ["tps", "gpus"], horizontal=True, key="objective")
    rates_text = st.text_input("arrival rates for a GPUs-vs-rate curve (requests/s, "
                               "comma-separated; empty = the sidebar's rate)", "",
                               key="search_rates")
    try:
        rates = tuple(parse_rates(rates_text, "arrival rates")) if rates_text.strip() else ()
    except InputError as err:
        st.error(str(err))
        return
    key = data.search_key(sc, int(budget), objective, rates)
    if st.button("Run search", key="run_search"):
        bar = st.progress(0.0, text="searching")
        try:
            st.session_state["search"] = (key, data.run_search(
                sc, int(budget), objective, rates,
                progress=lambda f: bar.progress(f, text="searching")))
        except InputError as err:
            st.error(str(err))
        bar.empty()
    stored = st.session_state.get("search")
    if not stored or stored[0] != key:
        st.info("Press 'Run search' to search layouts (FA Pool thresholds, pool rules and "
                "base TP; static TP x PP), replicas and running-batch limits within the GPU "
                "budget, judged on the request-level simulation of these arrivals.")
        return
    found = stored[1]
    left, right = st.columns(2)
    left.plotly_chart(figures.requests_front_figure(found["served"], found["requests_front"],
                                                    found["chosen"], sc.slo_ttft_ms),
                      key="chart_requests_front")
    right.plotly_chart(figures.pareto_figure(found["candidates"], found["pareto"],
                                             found["front"], found["chosen"], sc.slo_tpot_ms),
                       key="chart_pareto")
    if len(found["rates"]) > 1:
        st.plotly_chart(rate_figure(found["rates"]), key="chart_rates")
    st.caption(found["summary"])


def render_measured() -> None:
    st.header("Measured vs predicted")
    path = Path(st.session_state.get("store_path") or default_store_path())
    try:
        comp = store_comparison(str(path), path.stat().st_mtime if path.is_file() else None)
    except InputError as err:
        st.error(str(err))
        return
    if not comp["rows"]:
        st.info(f"{comp['note']}: nothing to compare yet.  `fapool run --plan plan.json "
                "--store PATH` (or `fapool validate`) adds executor runs.")
        return
    st.plotly_chart(figures.measured_figure(comp["rows"]), key="chart_measured")
    st.caption(comp["note"])


def render_downloads(sc: Scenario) -> None:
    st.header("Downloads: the selected plan")
    left, right = st.columns(2)
    left.download_button("plan.json", lambda: data.plan_json(sc), "plan.json",
                         "application/json", key="dl_plan")
    right.download_button("launch configs (zip)", lambda: data.launch_zip(sc),
                          "fapool-launch.zip", "application/zip", key="dl_launch")


def main() -> None:
    st.set_page_config(page_title="fa-pool what-if", layout="wide")
    st.title("fa-pool: what if I add an attention pool?")
    try:
        sc = render_sidebar()
    except InputError as err:
        st.error(str(err))
        st.stop()
    curves = sweeps(sc)
    render_metrics(sc, curves)
    render_curves(sc, curves)
    render_timeline(sc)
    render_memory(sc, curves)
    render_heatmap(sc)
    render_serving(sc)
    render_search(sc)
    render_measured()
    render_downloads(sc)


main()
