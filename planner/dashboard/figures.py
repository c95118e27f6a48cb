"""Plotly figures of the dashboard, one function per chart, from planner.dashboard.data rows.

Everything is SVG (no WebGL): the browser test runs Chromium with --disable-gpu.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"FA Pool": "#1f77b4", "static TP x PP": "#ff7f0e"}
BAND = {"FA Pool": "rgba(31,119,180,0.18)", "static TP x PP": "rgba(255,127,14,0.18)"}
MEMORY_PARTS = (("weights", "weights", "#4c78a8"), ("kv_cache", "K/V cache", "#f58518"),
                ("activations", "activations", "#54a24b"), ("workspace", "workspace", "#b279a2"))
GANTT = {("base", "compute"): "#1f77b4", ("pool", "compute"): "#2ca02c",
         ("base", "comm"): "#d62728", ("pool", "comm"): "#ff7f0e"}
METRICS = {"tpot": ("tpot_ms", "tpot_ms_interval", "TPOT (ms)"),
           "tps": ("tps", "tps_interval", "TPS (tokens/s, input + output)")}
# The paper's claims (planner.paper.CLAIMS) per strategy: index into the (static, fapool) pairs.
CLAIM_INDEX = {"static TP x PP": 0, "FA Pool": 1}


def _seq_axis(fig, lens, **where):
    fig.update_xaxes(type="log", tickvals=list(lens), ticktext=[f"{s // 1024}K" if s >= 1024
                                                                else str(s) for s in lens],
                     title_text="sequence length (input tokens)", **where)


def curves_figure(curves: dict, metric: str, claims: dict | None = None,
                  slo: float | None = None, chosen: int | None = None) -> go.Figure:
    """curves: {label: sweep rows}; metric 'tpot' or 'tps'.  Lines are the simulator's
    predictions with their interval as a band; claims (planner.paper.CLAIMS) are overlaid as
    separate markers named 'paper claim'."""
    key, iv_key, title = METRICS[metric]
    fig = go.Figure()
    lens = sorted({r["seq_len"] for rows in curves.values() for r in rows})
    for label, rows in curves.items():
        xs = [r["seq_len"] for r in rows]
        ys = [r[key] if r["feasible"] else None for r in rows]
        ivs = [r.get(iv_key) if r["feasible"] else None for r in rows]
        if any(ivs):
            band_x = [x for x, iv in zip(xs, ivs) if iv]
            fig.add_trace(go.Scatter(x=band_x, y=[iv[1] for iv in ivs if iv], mode="lines",
                                     line=dict(width=0), hoverinfo="skip", showlegend=False,
                                     name=f"{label} interval high"))
            fig.add_trace(go.Scatter(x=band_x, y=[iv[0] for iv in ivs if iv], mode="lines",
                                     line=dict(width=0), fill="tonexty",
                                     fillcolor=BAND.get(label), name=f"{label} 5-95% interval"))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{label} (simulated)",
                                 line=dict(color=COLORS.get(label))))
        bad = [r for r in rows if not r["feasible"]]
        if bad:
            fig.add_trace(go.Scatter(
                x=[r["seq_len"] for r in bad], y=[None] * len(bad), mode="markers",
                name=f"{label}: infeasible at " + ", ".join(str(r["seq_len"]) for r in bad),
                marker=dict(symbol="x", color=COLORS.get(label))))
            for r in bad:
                fig.add_annotation(x=r["seq_len"], y=1.0, yref="paper", showarrow=False,
                                   text=f"✗ {label}", font=dict(color=COLORS.get(label)),
                                   hovertext=r["infeasible_reasons"][0], yanchor="top")
    if claims:
        for label, idx in CLAIM_INDEX.items():
            seqs = sorted(claims)
            fig.add_trace(go.Scatter(
                x=seqs, y=[claims[s][metric][idx] for s in seqs], mode="markers+text",
                text=["paper claim"] * len(seqs), textposition="top center",
                textfont=dict(size=9), name=f"paper claim: {label}",
                marker=dict(symbol="diamond-open", size=11, color=COLORS.get(label))))
    if slo and metric == "tpot":
        fig.add_hline(y=slo, line_dash="dot", annotation_text=f"TPOT SLO {slo:g} ms")
    if chosen:
        fig.add_vline(x=chosen, line_dash="dash", line_color="grey")
    fig.update_yaxes(type="log", title_text=title)
    _seq_axis(fig, lens)
    fig.update_layout(height=380, margin=dict(t=30, b=40), legend=dict(font=dict(size=10)))
    return fig


def gantt_figure(tl: dict, phase: str) -> go.Figure:
    """Units (base TP group / pipeline stages, pool GPUs) x time of one phase; compute ops as
    wide bars, communication as narrow bars on top of them."""
    fig = go.Figure()
    names = [u["name"] for u in tl["units"]]
    for (role, kind), color in GANTT.items():
        rows = [r for r in tl["rows"] if r["phase"] == phase and r["role"] == role
                and r["kind"] == kind]
        if not rows:
            continue
        start = np.array([r["start_ms"] for r in rows])                 # numpy: plotly
        end = np.array([r["end_ms"] for r in rows])                     # validates it fast
        fig.add_trace(go.Bar(
            y=np.array([r["unit"] for r in rows]), x=end - start, base=start,
            orientation="h", name=f"{role} {kind}", marker=dict(color=color, line=dict(width=0)),
            width=0.8 if kind == "compute" else 0.35,
            customdata=np.array([[r["name"], r["mb"], r["layer"]] for r in rows], dtype=object),
            hovertemplate="%{customdata[0]} mb %{customdata[1]} layer %{customdata[2]}<br>"
                          "%{base:.3f} ms + %{x:.3f} ms<extra>%{y}</extra>"))
    fig.update_layout(barmode="overlay", height=max(260, 22 * len(names) + 120),
                      margin=dict(t=30, b=40), xaxis_title=f"{phase} time (ms)",
                      legend=dict(orientation="h", y=1.08))
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(names)),
                     tickvals=names, ticktext=[f"{u['name']} (GPU {u['ranks']})"
                                              for u in tl["units"]], title_text="unit")
    return fig


def memory_figure(groups: list, capacity_gb: float) -> go.Figure:
    """groups: [(title, role, sweep rows)]; stacked GB per GPU of the role against HBM
    capacity; infeasible points marked with the reason (hover)."""
    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True,
                        subplot_titles=[g[0] for g in groups])
    for col, (_, role, rows) in enumerate(groups, start=1):
        xs = [str(r["seq_len"]) for r in rows]
        for key, label, color in MEMORY_PARTS:
            ys = [r["memory_breakdown_gb"].get(role, {}).get(key, 0.0) for r in rows]
            fig.add_trace(go.Bar(x=xs, y=ys, name=label, marker_color=color,
                                 legendgroup=key, showlegend=col == 1), row=1, col=col)
        bad = [r for r in rows if not r["feasible"]]
        if bad:
            fig.add_trace(go.Scatter(
                x=[str(r["seq_len"]) for r in bad],
                y=[r["memory_breakdown_gb"].get(role, {}).get("total", 0.0) for r in bad],
                mode="markers+text", text=["infeasible"] * len(bad), textposition="top center",
                cliponaxis=False,
                marker=dict(symbol="x", size=12, color="red"), name="infeasible",
                legendgroup="infeasible", showlegend=col == 1,
                hovertext=["; ".join(r["infeasible_reasons"]) for r in bad]), row=1, col=col)
        line = dict(y=capacity_gb, line_color="red", line_dash="dash", row=1, col=col)
        if col == 1:
            line.update(annotation_text=f"HBM {capacity_gb:.0f} GB",
                        annotation_position="top left")
        fig.add_hline(**line)
        fig.update_xaxes(title_text="sequence length", type="category", row=1, col=col)
    top = max([capacity_gb] + [r["memory_breakdown_gb"].get(role, {}).get("total", 0.0)
                               for _, role, rows in groups for r in rows])
    fig.update_yaxes(range=[0, top * 1.15])
    fig.update_layout(barmode="stack", height=380, margin=dict(t=40, b=40))
    fig.update_yaxes(title_text="GB per GPU", row=1, col=1)
    return fig


def heatmap_figure(h: dict) -> go.Figure:
    unit = "TPOT (ms)" if h["metric"] == "tpot" else "TPS (tokens/s)"
    text = [[("✗" if v is None else f"{v:.3g}") for v in row] for row in h["z"]]
    hover = [[reason if v is None else "" for v, reason in zip(zr, rr)]
             for zr, rr in zip(h["z"], h["reasons"])]
    fig = go.Figure(go.Heatmap(
        z=h["z"], x=[str(t) for t in h["thresholds"]], y=[str(p) for p in h["pools"]],
        text=text, texttemplate="%{text}", customdata=hover, colorbar=dict(title=unit),
        colorscale="Viridis", reversescale=h["metric"] == "tpot",
        hovertemplate="threshold %{x}, pool %{y} GPUs: %{text}<br>%{customdata}<extra></extra>"))
    fig.update_traces(xgap=1, ygap=1)
    fig.update_layout(height=360, margin=dict(t=30, b=40),
                      xaxis_title="threshold (sequence length that activates the pool)",
                      yaxis_title="pool GPUs (fixed)")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def pareto_figure(candidates: list, pareto: list, front: list, chosen: dict | None,
                  slo: float | None = None) -> go.Figure:
    """candidates / pareto (the search's GPUs x TPOT x TPS front) / front (GPUs x TPOT) /
    chosen: dicts with label, kind, gpus, tpot_ms, feasible."""
    fig = go.Figure()
    for kind, color in (("fapool", "#1f77b4"), ("static", "#ff7f0e")):
        ok = [c for c in candidates if c["feasible"] and c["kind"] == kind]
        if ok:
            fig.add_trace(go.Scatter(x=[c["gpus"] for c in ok], y=[c["tpot_ms"] for c in ok],
                                     mode="markers", name=f"{kind} candidates",
                                     marker=dict(color=color, opacity=0.4, size=6),
                                     text=[c["label"] for c in ok]))
    if pareto:
        fig.add_trace(go.Scatter(x=[c["gpus"] for c in pareto], y=[c["tpot_ms"] for c in pareto],
                                 mode="markers", name="Pareto set (GPUs, TPOT, TPS)",
                                 marker=dict(symbol="circle-open", size=10, color="black"),
                                 text=[c["label"] for c in pareto]))
    if front:
        fig.add_trace(go.Scatter(x=[c["gpus"] for c in front], y=[c["tpot_ms"] for c in front],
                                 mode="lines+markers", name="Pareto front",
                                 line=dict(color="black", shape="hv"),
                                 text=[c["label"] for c in front]))
    if chosen and chosen.get("tpot_ms") is not None:
        _chosen_star(fig, chosen["gpus"], chosen["tpot_ms"], chosen["label"])
    return _gpus_axes(fig, "TPOT (ms)", "GPUs", slo and ("TPOT", slo))


def _chosen_star(fig, x, y, text) -> None:
    fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", name="chosen", text=[text],
                             hoverinfo="text+x+y",
                             marker=dict(symbol="star", size=16, color="gold",
                                         line=dict(color="black", width=1))))


def _gpus_axes(fig, y_title: str, x_title: str, slo: tuple | None) -> go.Figure:
    """A GPUs-vs-latency chart's axes (log latency) and its SLO line (name, ms) if any."""
    if slo:
        fig.add_hline(y=slo[1], line_dash="dot", annotation_text=f"{slo[0]} SLO {slo[1]:g} ms")
    fig.update_layout(height=380, margin=dict(t=30, b=40), xaxis_title=x_title,
                      yaxis_title=y_title)
    fig.update_yaxes(type="log")
    return fig


def measured_figure(rows: list) -> go.Figure:
    fig = go.Figure()
    for metric, symbol in (("TTFT", "circle"), ("TPOT", "square")):
        sel = [r for r in rows if r["metric"] == metric]
        if sel:
            fig.add_trace(go.Scatter(
                x=[r["predicted_ms"] for r in sel], y=[r["measured_ms"] for r in sel],
                mode="markers", name=metric, marker=dict(symbol=symbol, size=9),
                text=[f"run {r['run_id']} plan {r['plan_id']} {r['strategy']} "
                      f"seq {r['seq_len']}" for r in sel]))
    values = [v for r in rows for v in (r["predicted_ms"], r["measured_ms"]) if v > 0]
    if values:
        lo, hi = min(values) / 1.5, max(values) * 1.5
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="measured = predicted",
                                 line=dict(color="grey", dash="dash")))
    fig.update_layout(height=380, margin=dict(t=30, b=40), xaxis_title="predicted (ms)",
                      yaxis_title="measured (ms)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def requests_front_figure(served: list, front: list, chosen: dict | None,
                          slo_ttft: float | None = None) -> go.Figure:
    """GPUs vs request-level p99 TTFT of every plan the capacity stage simulated (replicas x
    layout x running-batch limit), its Pareto front (GPUs, p99 TTFT, p99 TPOT) and the
    chosen plan; hover gives p99 TPOT."""
    fig = go.Figure()

    def text(pts):
        return [f"{p['label']}<br>p99 TPOT {p['tpot_p99_ms']:.4g} ms" if p["tpot_p99_ms"]
                else p["label"] for p in pts]
    for kind, color in (("fapool", "#1f77b4"), ("static", "#ff7f0e")):
        pts = [p for p in served if p["kind"] == kind and p["ttft_p99_ms"] is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p["gpus"] for p in pts], y=[p["ttft_p99_ms"] for p in pts],
                                     mode="markers", name=f"{kind} plans",
                                     marker=dict(color=color, opacity=0.45, size=7),
                                     text=text(pts), hoverinfo="text+x+y"))
    if front:
        fig.add_trace(go.Scatter(x=[p["gpus"] for p in front], y=[p["ttft_p99_ms"] for p in front],
                                 mode="lines+markers", name="Pareto front (request p99)",
                                 line=dict(color="black", shape="hv"), text=text(front),
                                 hoverinfo="text+x+y"))
    if chosen and chosen.get("ttft_p99_ms") is not None:
        _chosen_star(fig, chosen["gpus"], chosen["ttft_p99_ms"], text([chosen])[0])
    return _gpus_axes(fig, "request-level p99 TTFT (ms)", "GPUs (replicas x plan)",
                      slo_ttft and ("TTFT", slo_ttft))
