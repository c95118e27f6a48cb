"""report.html of `fapool plan`: the search's Pareto charts, TPOT / TPS against sequence
length for the chosen plan and the baselines, memory per GPU, and the request-level
simulation (percentiles, pool occupancy).  One self-contained file (plotly.js inlined)."""

from __future__ import annotations

import html
import json

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

SWEEP_LENS = tuple(2 ** k for k in range(9, 17))      # 512 .. 65536


def _fmt(x, digits=2):
    return "-" if x is None else f"{x:,.{digits}f}"


def pareto_figure(result) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("TPOT (p-mean) vs GPUs",
                                                        "TPS vs GPUs"))
    feas = [c for c in result.candidates if c["feasible"]]
    front_ids = {c["id"] for c in result.pareto}
    for kind, color in (("fapool", "#1f77b4"), ("static", "#ff7f0e")):
        pts = [c for c in feas if c["kind"] == kind and c["id"] not in front_ids]
        text = [c["name"] for c in pts]
        for col, y in ((1, "tpot_ms"), (2, "tps")):
            fig.add_trace(go.Scatter(x=[c["gpus"] for c in pts], y=[c[y] for c in pts],
                                     mode="markers", name=f"{kind} candidates",
                                     marker=dict(color=color, size=5, opacity=0.35),
                                     text=text, hoverinfo="text+x+y", legendgroup=kind,
                                     showlegend=col == 1), row=1, col=col)
    front = result.pareto
    for col, y in ((1, "tpot_ms"), (2, "tps")):
        fig.add_trace(go.Scatter(x=[c["gpus"] for c in front], y=[c[y] for c in front],
                                 mode="markers", name="Pareto front",
                                 marker=dict(color="black", size=9, symbol="diamond"),
                                 text=[c["name"] for c in front], hoverinfo="text+x+y",
                                 legendgroup="front", showlegend=col == 1), row=1, col=col)
        if result.chosen:
            fig.add_trace(go.Scatter(x=[result.chosen["gpus"]], y=[result.chosen[y]],
                                     mode="markers", name="chosen",
                                     marker=dict(color="red", size=16, symbol="star"),
                                     text=[result.chosen["name"]], hoverinfo="text+x+y",
                                     legendgroup="chosen", showlegend=col == 1),
                          row=1, col=col)
    fig.update_xaxes(title_text="GPUs reserved")
    fig.update_yaxes(title_text="TPOT ms (request-weighted mean)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="TPS (tokens/s, input+output)", type="log", row=1, col=2)
    fig.update_layout(height=480, margin=dict(t=40))
    return fig


def sweep_figure(sweeps: dict) -> go.Figure:
    """sweeps: {label: [candidate dict per seq len in SWEEP_LENS]} from evaluate_strategy."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("TPOT", "TPS", "TTFT"))
    for label, rows in sweeps.items():
        for col, key in ((1, "tpot_ms"), (2, "tps"), (3, "ttft_ms")):
            fig.add_trace(go.Scatter(x=list(SWEEP_LENS), y=[r[key] for r in rows],
                                     mode="lines+markers", name=label, legendgroup=label,
                                     showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="sequence length (input tokens)", type="log")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="ms", row=1, col=1)
    fig.update_yaxes(title_text="tokens/s", row=1, col=2)
    fig.update_yaxes(title_text="ms", row=1, col=3)
    fig.update_layout(height=420, margin=dict(t=40))
    return fig


def memory_figure(plans: dict, capacity_gb: float) -> go.Figure:
    """plans: {label: candidate dict}; bars per bucket and role."""
    fig = go.Figure()
    for label, cand in plans.items():
        for role in ("base", "pool"):
            xs, ys = [], []
            for row in cand["buckets"]:
                mem = row.get("memory_gb") or {}
                if role in mem and mem[role]:
                    xs.append(f"{row['seq_len']}")
                    ys.append(mem[role])
            if xs:
                fig.add_trace(go.Bar(x=xs, y=ys, name=f"{label}: {role} GPU"))
    fig.add_hline(y=capacity_gb, line_dash="dash", annotation_text="GPU memory")
    fig.update_layout(barmode="group", height=400, xaxis_title="bucket mean input length",
                      yaxis_title="GB per GPU (at the bucket's batch)", margin=dict(t=30))
    return fig


def occupancy_figure(req) -> go.Figure:
    xs, ys = [], []
    for t, level in req.occupancy:
        if xs:
            xs.append(t)
            ys.append(ys[-1])
        xs.append(t)
        ys.append(level)
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", fill="tozeroy", name="pool GPUs"))
    fig.update_layout(height=300, xaxis_title="time (s)", yaxis_title="pool GPUs in use",
                      yaxis_range=[0, max(req.pool_capacity, 1)], margin=dict(t=30))
    return fig


def _table(rows: list, cols: list) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(f(r)))}</td>" for _, f in cols)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cand_cols():
    return [("plan", lambda c: c["name"]), ("GPUs", lambda c: c["gpus"]),
            ("GPUs in use (mean)", lambda c: _fmt(c.get("gpus_mean"), 1)),
            ("TPOT ms", lambda c: _fmt(c["tpot_ms"])),
            ("TPOT p99 ms", lambda c: _fmt(c["tpot_p99_ms"])),
            ("TTFT ms", lambda c: _fmt(c["ttft_ms"], 1)),
            ("TPS", lambda c: _fmt(c["tps"], 0)),
            ("served under the arrivals: replicas x, batch <=, p99 TTFT / TPOT ms",
             _served_as)]


def _served_as(c: dict) -> str:
    p = c.get("serving_plan")
    if p is None:
        return "-" if "serving_plan" not in c else "cannot keep up within the budget"
    r = p["requests"]
    return (f"{p['replicas']} x, <= {p['max_batch']}: {_fmt(r.get('ttft_p99_ms'), 1)} / "
            f"{_fmt(r.get('tpot_p99_ms'))}")


def _req_rows(reqs: dict) -> list:
    return [{"plan": label, **r.summary()} for label, r in reqs.items()]


def _plan_cols(slo_given: bool):
    cols = [("plan", lambda p: f"{p['replicas']} x {p['name']}"),
            ("running batch <=", lambda p: p["max_batch"]), ("GPUs", lambda p: p["gpus"]),
            ("capacity req/s", lambda p: _fmt(p["capacity_rps"], 3)),
            ("TTFT p99 ms", lambda p: _fmt(p["requests"].get("ttft_p99_ms"), 1)),
            ("TPOT p99 ms", lambda p: _fmt(p["requests"].get("tpot_p99_ms")))]
    if slo_given:
        cols.append(("meets SLOs", lambda p: p["meets_slo"]))
    return cols


def slo_text(slo: dict) -> str:
    return ", ".join(f"{n.upper()} <= {slo[f'{n}_ms']:g} ms" for n in ("ttft", "tpot")
                     if slo.get(f"{n}_ms") is not None)


def _rate_cols():
    def gpus(pick):
        return lambda row: pick(row)["gpus"] if pick(row) else "-"
    return [("rate req/s", lambda row: f"{row['rate']:g}"),
            ("chosen", lambda row: (f"{row['chosen']['replicas']} x {row['chosen']['name']}"
                                    if row["chosen"] else row["reason"])),
            ("GPUs", gpus(lambda row: row["chosen"])),
            ("best static GPUs", gpus(lambda row: row["best_by_kind"].get("static"))),
            ("best FA Pool GPUs", gpus(lambda row: row["best_by_kind"].get("fapool")))]


def rate_figure(rates: list) -> go.Figure:
    """GPUs needed and request p99s vs arrival rate, for the chosen plan and the best of
    each strategy (rows of `fapool plan`'s rate table)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("GPUs needed", "p99 TTFT",
                                                        "p99 TPOT"))
    series = {"chosen": lambda row: row["chosen"],
              "best static": lambda row: row["best_by_kind"].get("static"),
              "best FA Pool": lambda row: row["best_by_kind"].get("fapool")}
    for label, pick in series.items():
        pts = [(row["rate"], pick(row)) for row in rates if pick(row)]
        xs = [x for x, _ in pts]
        text = [f"{p['replicas']} x {p['name']}, batch <= {p['max_batch']}" for _, p in pts]
        for col, y in ((1, lambda p: p["gpus"]),
                       (2, lambda p: p["requests"].get("ttft_p99_ms")),
                       (3, lambda p: p["requests"].get("tpot_p99_ms"))):
            fig.add_trace(go.Scatter(x=xs, y=[y(p) for _, p in pts], mode="lines+markers",
                                     name=label, legendgroup=label, text=text,
                                     hoverinfo="text+x+y", showlegend=col == 1),
                          row=1, col=col)
    fig.update_xaxes(title_text="arrival rate (requests/s)")
    fig.update_yaxes(title_text="GPUs", row=1, col=1)
    fig.update_yaxes(title_text="ms", type="log", row=1, col=2)
    fig.update_yaxes(title_text="ms", type="log", row=1, col=3)
    fig.update_layout(height=420, margin=dict(t=40))
    return fig


def render_report(result, title: str, sweeps: dict, plans: dict, capacity_gb: float,
                  requests: dict, notes: list, rates: list | None = None) -> str:
    figs = [("GPUs and request-level p99 vs arrival rate", rate_figure(rates))] \
        if rates and len(rates) > 1 else []
    figs += [("Pareto front: GPUs vs TPOT vs TPS", pareto_figure(result)),
            ("TPOT / TPS / TTFT vs sequence length (fixed-length workloads)",
             sweep_figure(sweeps)),
            ("Memory per GPU on this workload's buckets", memory_figure(plans, capacity_gb))]
    chosen_req = requests.get("chosen")
    if chosen_req is not None and chosen_req.pool_capacity:
        figs.append(("Pool occupancy over time (request-level simulation, chosen plan)",
                     occupancy_figure(chosen_req)))
    parts = []
    for i, (heading, fig) in enumerate(figs):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False))
    chosen = result.chosen
    intervals = ""
    if chosen:
        iv = [f"{k}: [{_fmt(chosen[k][0])} .. {_fmt(chosen[k][1])}]"
              for k in ("tpot_ms_interval", "ttft_ms_interval", "tps_interval") if k in chosen]
        intervals = "<p>5-95% intervals over the profile's fitted uncertainty: " \
            + html.escape("; ".join(iv)) + "</p>" if iv else ""
    req_cols = [("plan", lambda r: r["plan"]),
                ("replicas x batch <=", lambda r: f"{r['replicas']} x {r['max_batch']}"),
                ("completed", lambda r: r.get("completed")),
                ("TTFT p50/p90/p99 ms", lambda r: "/".join(
                    _fmt(r.get(f"ttft_p{q}_ms")) for q in (50, 90, 99))),
                ("TPOT p50/p90/p99 ms", lambda r: "/".join(
                    _fmt(r.get(f"tpot_p{q}_ms")) for q in (50, 90, 99))),
                ("queue p99 ms", lambda r: _fmt(r.get("queue_p99_ms"))),
                ("throughput req/s", lambda r: _fmt(r.get("throughput_rps"), 3)),
                ("throughput tok/s", lambda r: _fmt(r.get("throughput_tps"), 0)),
                ("pool occupancy", lambda r: _fmt(r.get("pool_occupancy_mean"), 3))]
    bucket_cols = [("bucket", lambda b: b["range"]), ("mean seq", lambda b: b["seq_len"]),
                   ("weight", lambda b: b["weight"]), ("batch", lambda b: b["batch"]),
                   ("pool GPUs", lambda b: b["pool_gpus"]),
                   ("TPOT ms", lambda b: _fmt(b.get("tpot_ms"))),
                   ("TTFT ms", lambda b: _fmt(b.get("ttft_ms"), 1))]
    body = f"""<h1>{html.escape(title)}</h1>
<p>{html.escape(f"{len(result.candidates)} layouts, {len(result.served)} request-level "
                f"plans, {result.simulations} simulations, {result.seconds:.1f} s; objective "
                f"{result.objective}; load {result.load_rps:.3g} requests/s"
                + (f"; SLOs (request p99) {slo_text(result.slo)}" if result.slo_given else ""))}</p>
<h2>Chosen plan</h2>{_table([chosen], _plan_cols(result.slo_given)) if chosen else
                     "<p>" + html.escape(result.reason) + "</p>"}{intervals}
<h3>Full-batch screen of its layout</h3>{_table([chosen], _cand_cols()) if chosen else ""}
{_table(chosen["buckets"], bucket_cols) if chosen else ""}
<h2>Request-level simulation</h2>{_table(_req_rows(requests), req_cols)}
<h2>Request-level Pareto front (GPUs vs p99 TTFT vs p99 TPOT)</h2>
{_table(result.requests_front, _plan_cols(result.slo_given))}
{_table(rates, _rate_cols()) if rates and len(rates) > 1 else ""}
<h2>Full-batch Pareto front</h2>{_table(result.pareto, _cand_cols())}
{''.join(parts)}
<h2>Notes</h2><ul>{''.join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
<h2>Workload</h2><pre>{html.escape(json.dumps(result.workload, indent=1))}</pre>"""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1300px}"
             "table{border-collapse:collapse;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{body}</body></html>\n")
