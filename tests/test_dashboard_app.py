"""app.py under Streamlit's AppTest: runs clean, widgets change what is plotted, bad uploads
are messages in the page (uploads go through the pasted-text route, which calls the same
parser as the file uploader)."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from calibration.profile import DATA_DIR
from calibration.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120
HF_CONFIG = {"num_hidden_layers": 4, "hidden_size": 2048, "num_attention_heads": 16,
             "num_key_value_heads": 4, "intermediate_size": 8192, "vocab_size": 32000,
             "hidden_act": "silu", "torch_dtype": "bfloat16", "_name_or_path": "my-model"}


@pytest.fixture
def app(tmp_path):
    """The app with a measurement store path that does not exist (never the user's)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["store_path"] = str(tmp_path / "none.sqlite")
    return at.run()


def charts(at) -> dict:
    """{key: plotly figure JSON} of the plotly charts on the page."""
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec)
            for c in at.get("plotly_chart")}


def trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t.get("name") == name)


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def assert_clean(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_runs_clean_with_every_section(app):
    assert_clean(app)
    figs = charts(app)
    assert {"chart_tpot", "chart_tps", "chart_gantt", "chart_memory", "chart_heatmap"} <= set(figs)
    names = [t.get("name") for t in figs["chart_tpot"]["data"]]
    assert "FA Pool (simulated)" in names and "static TP x PP (simulated)" in names
    assert "paper claim: FA Pool" in names and "FA Pool 5-95% interval" in names
    assert metrics(app)["GPUs"] == "40 (32 pool)"       # 16384 tokens: min(32, 32) pool GPUs
    assert {b.proto.id.rsplit("-", 1)[-1] for b in app.get("download_button")} >= {"dl_plan"}
    assert any("no measurement store" in i.value for i in app.info)   # none at that path


def test_threshold_changes_the_fapool_curve(app):
    before = trace(charts(app)["chart_tpot"], "FA Pool (simulated)")
    static0 = trace(charts(app)["chart_tpot"], "static TP x PP (simulated)")
    app.select_slider(key="threshold").set_value(16384).run()
    assert_clean(app)
    after = trace(charts(app)["chart_tpot"], "FA Pool (simulated)")
    y0, y1 = dict(zip(before["x"], before["y"])), dict(zip(after["x"], after["y"]))
    assert y0[8192] != y1[8192]          # 8K: pooled at threshold 4K, base alone at 16K
    assert y0[32768] == y1[32768]        # 32K: 32 pool GPUs either way
    assert static0["y"] == trace(charts(app)["chart_tpot"], "static TP x PP (simulated)")["y"]


def test_a_revisited_widget_value_is_served_from_the_cache(app, monkeypatch):
    """Quality bar: a widget change back to a value seen before re-renders without a single
    new simulation (st.cache_data around planner.simulate); counted, not timed, so a loaded
    CI machine cannot fail it, while a lost cache always does."""
    import streamlit as st

    import planner.dashboard.data as data

    st.cache_data.clear()               # other tests of this process filled the cache
    calls = []
    real = data.simulate
    monkeypatch.setattr(data, "simulate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    app.select_slider(key="threshold").set_value(8192).run()      # warm both thresholds
    app.select_slider(key="threshold").set_value(4096).run()
    assert calls                                                  # the counter does count
    for key, value in (("threshold", 8192), ("threshold", 4096)):
        calls.clear()
        app.select_slider(key=key).set_value(value).run()
        assert_clean(app)
        assert calls == [], key


def test_sequence_length_changes_metrics_and_timeline(app):
    m0 = metrics(app)
    gantt0 = trace(charts(app)["chart_gantt"], "pool compute")
    app.select_slider(key="seq_len").set_value(8192).run()
    assert_clean(app)
    m1 = metrics(app)
    assert m1["GPUs"] == "24 (16 pool)" and m1["TPOT (ms)"] != m0["TPOT (ms)"]
    gantt1 = trace(charts(app)["chart_gantt"], "pool compute")
    assert len(set(gantt1["y"])) == 16 and len(set(gantt0["y"])) == 32


def test_strategy_changes_metrics_and_timeline(app):
    tpot = metrics(app)["TPOT (ms)"]
    app.radio(key="selected").set_value("static").run()
    assert_clean(app)
    assert metrics(app)["GPUs"] == "16 (0 pool)" and metrics(app)["TPOT (ms)"] != tpot
    gantt = charts(app)["chart_gantt"]
    assert {t["name"] for t in gantt["data"]} == {"base compute", "base comm"}
    assert set(trace(gantt, "base compute")["y"]) == {"stage0", "stage1"}


def test_static_pp_changes_the_static_curve(app):
    before = trace(charts(app)["chart_tpot"], "static TP x PP (simulated)")["y"]
    app.number_input(key="pp").set_value(4).run()
    assert_clean(app)
    assert trace(charts(app)["chart_tpot"], "static TP x PP (simulated)")["y"] != before


@pytest.mark.parametrize("selector,area,text,expected", [
    ("model", "model_text", "{not json", "config.json: not valid JSON"),
    ("model", "model_text", json.dumps({"hidden_size": 64}), "config.json.num_hidden_layers"),
    ("profile_source", "profile_text", "schema: 1\nname: [unclosed", "profile: not valid YAML"),
    ("profile_source", "profile_text", "schema: 7\nname: x\n", "profile.schema"),
    ("workload", "trace_text", "arrival_s,input_len,output_len\n0,-5,10\n",
     "trace.csv row 2.input_len"),
    ("workload", "trace_text", "when,length\n0,5\n", "trace.csv header"),
])
def test_bad_upload_is_an_error_message(app, selector, area, text, expected):
    choice = {"model": "upload / paste ...", "profile_source": "upload / paste ...",
              "workload": "workload trace"}[selector]
    widget = app.selectbox(key=selector) if selector == "model" else app.radio(key=selector)
    widget.set_value(choice).run()
    assert not app.exception
    assert any("choose a file" in e.value for e in app.error)   # nothing uploaded yet
    app.text_area(key=area).set_value(text).run()
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not app.get("plotly_chart")                 # the page stops at the message


def test_good_uploads_are_used(app):
    app.toggle(key="intervals").set_value(False).run()      # a new model: keep it quick
    app.selectbox(key="model").set_value("upload / paste ...").run()
    app.text_area(key="model_text").set_value(json.dumps(HF_CONFIG)).run()
    app.radio(key="workload").set_value("workload trace").run()
    app.text_area(key="trace_text").set_value(
        "arrival_s,input_len,output_len\n0,1000,64\n0.5,9000,64\n1.0,9500,32\n").run()
    assert_clean(app)
    assert app.subheader[0].value.startswith("Selected: my-model on dgx-a100")
    names = {t.get("name") for t in charts(app)["chart_tpot"]["data"]}
    assert "FA Pool (simulated)" in names and "FA Pool 5-95% interval" not in names
    heat = charts(app)["chart_heatmap"]["data"][0]
    assert heat["x"][-1] == "16384"                    # up to twice the longest bucket (9250)
    assert any("trace: 3 requests" in c.value for c in app.sidebar.caption)
    a100_tpot = metrics(app)["TPOT (ms)"]
    app.radio(key="profile_source").set_value("upload / paste ...").run()
    app.text_area(key="profile_text").set_value((DATA_DIR / "dgx-h100.yaml").read_text()).run()
    assert_clean(app)
    ms = lambda text: float(text.replace(",", ""))  # noqa: E731
    assert ms(metrics(app)["TPOT (ms)"]) < ms(a100_tpot)     # H100 curves: faster


def test_measured_vs_predicted_from_the_store(app, tmp_path):
    path = tmp_path / "m.sqlite"
    with Store(path) as store:
        for seq, measured_ms in ((256, 3.0), (512, 5.0)):
            with store.run("executor", backend="gloo", world_size=2, plan_id=f"p{seq}",
                           meta={"strategy": "FA Pool", "predictions": {"ttft_ms": 10.0,
                                                                       "tpot_ms": 4.0}}) as run:
                params = {"strategy": "fapool", "seq_len": seq}
                run.add_sample("e2e_prefill", params, [0.011, 0.012])
                run.add_sample("e2e_decode", params, [measured_ms / 1e3])
    app.text_input(key="store_path").set_value(str(path)).run()
    assert_clean(app)
    fig = charts(app)["chart_measured"]
    tpot = trace(fig, "TPOT")
    assert sorted(tpot["y"]) == pytest.approx([3.0, 5.0]) and tpot["x"] == [4.0, 4.0]
    assert trace(fig, "TTFT")["y"] == pytest.approx([11.5, 11.5])


def test_bad_store_is_an_error_message(app, tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_text("not a database")
    app.text_input(key="store_path").set_value(str(path)).run()
    assert not app.exception
    assert any("not an SQLite database" in e.value for e in app.error)


def test_search_runs_behind_the_button(app):
    assert "chart_pareto" not in charts(app)
    app.button(key="run_search").click().run()
    assert_clean(app)
    fig = charts(app)["chart_pareto"]
    names = {t["name"] for t in fig["data"]}
    assert {"Pareto front", "chosen"} <= names
    front = trace(fig, "Pareto front")
    assert front["x"] == sorted(set(front["x"]))       # GPUs ascending along the front,
    assert front["y"] == sorted(front["y"], reverse=True)   # TPOT falling
    assert any("layouts" in c.value and "plans" in c.value for c in app.caption)
    front = charts(app)["chart_requests_front"]
    assert {"Pareto front (request p99)", "chosen"} <= {t["name"] for t in front["data"]}
    p99 = trace(front, "Pareto front (request p99)")
    assert p99["x"] == sorted(p99["x"])                     # GPUs ascending
    assert "meets the SLOs" not in app.caption[-1].value    # none were given
    app.radio(key="phase").set_value("decode").run()    # another widget: the result stays
    assert "chart_pareto" in charts(app)
    app.number_input(key="search_gpus").set_value(32).run()   # other inputs: it is stale
    assert "chart_pareto" not in charts(app)


def test_precision_changes_the_prediction_and_fp8_on_a100_is_a_message(app):
    tpot = metrics(app)["TPOT (ms)"]
    app.selectbox(key="cluster").set_value("dgx-h100").run()
    assert_clean(app)
    h100 = metrics(app)["TPOT (ms)"]
    app.selectbox(key="dtype").set_value("fp8").run()
    assert_clean(app)
    assert metrics(app)["TPOT (ms)"] != h100 != tpot
    app.selectbox(key="cluster").set_value("dgx-a100").run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "no FP8 tensor cores" in errors[0], errors


def test_replicas_and_rate_drive_the_serving_view(app):
    """Serving under load: more replicas of the selected plan queue less; a higher arrival
    rate queues more."""
    base = metrics(app)
    app.number_input(key="replicas").set_value(4).run()
    assert_clean(app)
    more = metrics(app)
    assert float(more["p99 queue (ms)"].replace(",", "")) < \
        float(base["p99 queue (ms)"].replace(",", ""))
    app.number_input(key="replicas").set_value(1).run()
    app.number_input(key="rate").set_value(16.0).run()
    busy = metrics(app)
    assert float(busy["p99 queue (ms)"].replace(",", "")) > \
        float(base["p99 queue (ms)"].replace(",", ""))


def test_rate_sweep_draws_gpus_vs_rate_and_bad_rates_are_messages(app):
    app.number_input(key="slo_ttft").set_value(5000.0).run()
    app.radio(key="objective").set_value("gpus").run()
    app.text_input(key="search_rates").set_value("1, 8").run()
    app.button(key="run_search").click().run()
    assert_clean(app)
    fig = charts(app)["chart_rates"]
    chosen = [t for t in fig["data"] if t["name"] == "chosen"]
    assert chosen and chosen[0]["x"] == [1.0, 8.0]
    gpus = chosen[0]["y"]
    assert gpus[0] <= gpus[1]                       # more arrivals never need fewer GPUs
    assert "meets the SLOs" in app.caption[-1].value
    app.text_input(key="search_rates").set_value("1, x").run()
    assert any("arrival rates" in e.value and "not a number" in e.value for e in app.error)
