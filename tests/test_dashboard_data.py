"""planner.dashboard without Streamlit: upload parsers, the cache-key canonicalisation, sweeps,
heatmap arithmetic, the store comparison, downloads, figures, and `fapool dashboard`."""

import io
import json
import zipfile
from dataclasses import replace

import pytest

from calibration.errors import InputError
from calibration.profile import DATA_DIR, load_profile
from calibration.store import Store
from planner.cli import main
from planner.cli.dashboard import streamlit_command
from planner.cluster import resolve_cluster
from planner.dashboard import data, figures, uploads
from planner.dashboard.scenario import Scenario
from planner.model import PRESETS
from planner.paper import CLAIMS
from planner.plan import plan_from_dict
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload

A100 = resolve_cluster("dgx-a100")
PROFILE = load_profile("dgx-a100")
PAPER = PRESETS["paper-4l"]
HF = {"num_hidden_layers": 4, "hidden_size": 2048, "num_attention_heads": 16,
      "num_key_value_heads": 4, "intermediate_size": 8192, "vocab_size": 32000,
      "hidden_act": "silu"}


def scenario(**kw) -> Scenario:
    base = dict(model=PAPER, cluster=A100, profile=PROFILE, batch=64, seq_len=8192,
                output_len=32, fapool=FAPoolStrategy(), static=StaticStrategy(8, 2),
                seq_lens=(2048, 8192), interval_samples=0)
    return Scenario(**{**base, **kw})


# ------------------------------------------------------------------ uploads
def test_model_upload_reads_hf_config_and_own_spec():
    m = uploads.model_from_upload(json.dumps(HF).encode())
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.activation) == \
        (4, 2048, 16, 4, 128, "swiglu")
    assert m.name == "uploaded-model"                      # no _name_or_path in the file
    assert uploads.model_from_upload(json.dumps(PAPER.to_dict()).encode()) == PAPER


@pytest.mark.parametrize("raw,field", [
    (b"", "config.json"), (b"\xff\xfe\x00", "config.json"), (b"{oops", "config.json"),
    (b"[1, 2]", "config.json"), (json.dumps({"hidden_size": 8}).encode(),
                                 "config.json.num_hidden_layers"),
    (json.dumps({**HF, "num_attention_heads": 3}).encode(), "config.json.num_attention_heads"),
    (json.dumps({**HF, "hidden_act": "relu6"}).encode(), "config.json.hidden_act"),
])
def test_model_upload_errors_name_the_field(raw, field):
    with pytest.raises(InputError) as err:
        uploads.model_from_upload(raw)
    assert err.value.field == field


def test_profile_upload_and_its_checks():
    raw = (DATA_DIR / "dgx-a100.yaml").read_bytes()
    assert uploads.profile_from_upload(raw, A100).name == "dgx-a100"
    with pytest.raises(InputError, match="not valid YAML"):
        uploads.profile_from_upload(b"schema: 1\nname: [x")
    with pytest.raises(InputError) as err:
        uploads.profile_from_upload(b"- a list\n")
    assert err.value.field == "profile"
    no_ib = PROFILE.to_dict()
    no_ib["links"] = {"nvlink": no_ib["links"]["nvlink"]}
    text = json.dumps(no_ib).encode()                      # JSON is YAML
    assert uploads.profile_from_upload(text, replace(A100, nodes=1)).name == "dgx-a100"
    with pytest.raises(InputError, match="has no link 'ib'"):
        uploads.profile_from_upload(text, A100)            # 8 nodes need the inter-node link


def test_trace_upload_csv_jsonl_and_errors():
    csv_trace = uploads.trace_from_upload(
        b"arrival_s,input_len,output_len\n0,1000,10\n1,3000,20\n2,3500,30\n")
    assert [(b.lo, b.count, b.output_len) for b in csv_trace.buckets()] == \
        [(512, 1, 10), (2048, 2, 25)]
    jsonl = uploads.trace_from_upload(b'{"arrival_s": 0, "input_len": 5, "output_len": 1}\n')
    assert jsonl.requests[0].input_len == 5
    for raw, where in ((b"arrival_s,input_len,output_len\n0,10,0\n", "row 2.output_len"),
                       (b"a,b\n1,2\n", "header"), (b"arrival_s,input_len,output_len\n",
                                                   "no requests")):
        with pytest.raises(InputError) as err:
            uploads.trace_from_upload(raw)
        assert where in str(err.value) and "/tmp" not in str(err.value)


# ------------------------------------------------------------------ scenario and points
def test_scenario_validates_with_the_planner():
    with pytest.raises(InputError) as err:
        scenario(fapool=FAPoolStrategy(base_tp=3))
    assert err.value.field == "strategy.base_tp"
    with pytest.raises(InputError) as err:
        scenario(static=StaticStrategy(16, 4), cluster=replace(A100, nodes=4))  # 64 > 32
    assert err.value.field == "gpus"
    with pytest.raises(InputError):
        scenario(slo_tpot_ms=-1.0)


@pytest.mark.parametrize("strategy,seq", [
    (FAPoolStrategy(), 2048), (FAPoolStrategy(), 8192), (FAPoolStrategy(threshold=1024), 2048),
    (FAPoolStrategy(tokens_per_pool_gpu=1024, max_pool=4), 16384),
    (FAPoolStrategy(decode_kv="split-seq"), 8192), (StaticStrategy(8, 2), 4096)])
def test_canonical_strategy_predicts_the_same(strategy, seq):
    """The cache key's stand-in gives exactly the original strategy's numbers."""
    wl = Workload(64, seq, 32)
    canon = data.canonical(strategy, seq)
    assert canon.pool_size(seq) == strategy.pool_size(seq)
    a = data.point(PAPER, A100, PROFILE, strategy, wl)
    b = data.point(PAPER, A100, PROFILE, canon, wl)
    for key in ("feasible", "ttft_ms", "tpot_ms", "tps", "gpus", "pool_gpus",
                "memory_breakdown_gb", "comm_fraction", "utilization", "microbatches"):
        assert a[key] == b[key], key


def test_threshold_change_reuses_cached_points():
    calls = []

    def counting(*args):
        calls.append(args)
        return data.point(*args)
    seen = {}

    def cached(*args):
        key = repr(args)
        if key not in seen:
            seen[key] = counting(*args)
        return seen[key]
    data.sweep(scenario(fapool=FAPoolStrategy(threshold=4096)), "fapool", cached)
    first = len(calls)
    data.sweep(scenario(fapool=FAPoolStrategy(threshold=1024)), "fapool", cached)
    assert first == 2 and len(calls) == 3    # only 2048 changes (base alone -> pool of 4)


def test_sweep_marks_infeasible_with_reasons():
    rows = data.sweep(scenario(batch=1024, seq_lens=(32768,), seq_len=32768), "static")
    assert rows[0]["feasible"] is False and "K/V" in rows[0]["infeasible_reasons"][0]
    assert rows[0]["strategy"]["name"] == "static TP=8 PP=2"
    ok = data.sweep(scenario(interval_samples=4), "fapool")
    low, high = ok[-1]["tpot_ms_interval"]
    assert ok[-1]["feasible"] and low <= high and ok[-1]["tps_interval"][0] <= ok[-1]["tps"]


def test_timeline_rows_cover_every_unit():
    tl = data.timeline(PAPER, A100, PROFILE, FAPoolStrategy(), Workload(64, 8192, 32))
    assert [u["name"] for u in tl["units"]][:2] == ["base", "pool0"]
    assert len(tl["units"]) == 1 + 16
    used = {r["unit"] for r in tl["rows"]}
    assert used == {u["name"] for u in tl["units"]}
    assert {r["kind"] for r in tl["rows"]} == {"compute", "comm"}
    assert all(r["end_ms"] >= r["start_ms"] >= 0 for r in tl["rows"])
    decode_end = max(r["end_ms"] for r in tl["rows"] if r["phase"] == "decode")
    assert decode_end >= tl["tpot_ms"]                     # two decode steps are drawn


def test_heatmap_cells_follow_the_threshold():
    sc = scenario(seq_lens=(2048, 8192))
    h = data.heatmap(sc, "tpot")
    assert h["thresholds"] == [512, 1024, 2048, 4096, 8192, 16384]
    assert h["pools"] == [2, 4, 8, 16, 24, 32, 48, 56]
    base = {seq: data.point(PAPER, A100, PROFILE, FAPoolStrategy(threshold=seq + 1),
                            Workload(64, seq, 32)) for seq in (2048, 8192)}
    pooled = {seq: data.point(PAPER, A100, PROFILE, FAPoolStrategy(pool_gpus=8, threshold=seq),
                              Workload(64, seq, 32)) for seq in (2048, 8192)}
    row = h["z"][h["pools"].index(8)]
    col = h["thresholds"].index
    # 16384: no bucket reaches the threshold; 4096: only 8192 uses the pool; 512: both do.
    assert row[col(16384)] == pytest.approx((base[2048]["tpot_ms"] + base[8192]["tpot_ms"]) / 2)
    assert row[col(4096)] == pytest.approx((base[2048]["tpot_ms"] + pooled[8192]["tpot_ms"]) / 2)
    assert row[col(512)] == pytest.approx((pooled[2048]["tpot_ms"] + pooled[8192]["tpot_ms"]) / 2)
    assert len({r[col(16384)] for r in h["z"]}) == 1       # the pool size cannot matter there
    tps = data.heatmap(sc, "tps")["z"][h["pools"].index(8)][col(16384)]
    secs = sum((p["ttft_ms"] + 31 * p["tpot_ms"]) / 1e3 for p in base.values())
    assert tps == pytest.approx(64 * (2048 + 32 + 8192 + 32) / secs)
    with pytest.raises(InputError):
        data.heatmap(sc, "ttft")


def test_heatmap_marks_cells_that_do_not_fit():
    h = data.heatmap(scenario(batch=1024, seq_lens=(32768,), seq_len=32768), "tpot")
    small = h["pools"].index(2)
    assert h["z"][small][0] is None and "GB" in h["reasons"][small][0]


def test_front_2d_keeps_only_undominated_points():
    c = [dict(gpus=g, tpot_ms=t, feasible=f) for g, t, f in
         ((8, 30.0, True), (8, 25.0, True), (16, 26.0, True), (16, 20.0, True),
          (24, 1.0, False), (32, 20.0, True), (40, 10.0, True))]
    assert [(x["gpus"], x["tpot_ms"]) for x in data.front_2d(c)] == \
        [(8, 25.0), (16, 20.0), (40, 10.0)]


# ------------------------------------------------------------------ store
def _store_with_runs(path):
    with Store(path) as store:
        with store.run("executor", plan_id="abc", meta={
                "strategy": "FA Pool", "predictions": {"ttft_ms": 20.0, "tpot_ms": 2.0}}) as run:
            run.add_sample("e2e_prefill", {"seq_len": 256}, [0.030, 0.032, 0.034])
            run.add_sample("e2e_decode", {"seq_len": 256}, [0.0025])
            run.add_sample("gemm", {"tokens": 1, "k": 2, "n": 3, "dtype_bytes": 4}, [1e-5])
        with store.run("executor", plan_id="old", meta={"predictions": None}) as run:
            run.add_sample("e2e_decode", {"seq_len": 256}, [0.001])
        with store.run("microbench") as run:
            run.add_sample("gemm", {"tokens": 1, "k": 2, "n": 3, "dtype_bytes": 4}, [1e-5])


def test_store_comparison(tmp_path):
    path = tmp_path / "m.sqlite"
    _store_with_runs(path)
    comp = data.store_comparison(path)
    rows = {r["metric"]: r for r in comp["rows"]}
    assert set(rows) == {"TTFT", "TPOT"} and comp["runs"] == 2
    assert rows["TTFT"]["predicted_ms"] == 20.0 and rows["TTFT"]["measured_ms"] == \
        pytest.approx(32.0)
    assert rows["TPOT"]["measured_ms"] == pytest.approx(2.5) and rows["TPOT"]["plan_id"] == "abc"
    assert "1 without predictions" in comp["note"]
    fig = figures.measured_figure(comp["rows"])
    assert {t.name for t in fig.data} == {"TTFT", "TPOT", "measured = predicted"}


def test_store_comparison_never_creates_a_store(tmp_path):
    path = tmp_path / "absent.sqlite"
    assert data.store_comparison(path)["rows"] == [] and not path.exists()
    bad = tmp_path / "bad.sqlite"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not an SQLite database"):
        data.store_comparison(bad)


# ------------------------------------------------------------------ downloads
def test_plan_json_is_a_valid_plan_with_predictions():
    sc = scenario(interval_samples=4)
    raw = json.loads(data.plan_json(sc))
    plan = plan_from_dict(raw)
    # the strategy with its micro-batch count made explicit, as the simulator chose it
    assert plan.strategy == replace(sc.fapool, microbatches=plan.strategy.microbatches,
                                    decode_microbatches=plan.strategy.decode_microbatches)
    assert plan.workload == sc.workload()
    point = data.point(PAPER, A100, PROFILE, plan.strategy, sc.workload())
    assert point["microbatches"] == plan.strategy.microbatches
    assert raw["predictions"]["tpot_ms"] == point["tpot_ms"]
    assert raw["predictions"]["tpot_ms_interval"] is not None
    assert "threshold 4096" not in " ".join(raw["predictions"]["notes"])   # 8192 >= 4096
    static = json.loads(data.plan_json(replace(sc, selected="static")))
    assert static["strategy"]["kind"] == "static"


def test_launch_zip_holds_plan_and_launch_configs():
    from planner.launch import render_launch_configs
    sc = scenario()
    with zipfile.ZipFile(io.BytesIO(data.launch_zip(sc))) as zf:
        names = set(zf.namelist())
        plan = plan_from_dict(json.loads(zf.read("plan.json")))
    assert names == {"plan.json"} | set(render_launch_configs(plan))
    assert len(names) > 2


# ------------------------------------------------------------------ figures
def test_curves_figure_overlays_claims_and_bands():
    sc = scenario(interval_samples=4, seq_lens=(2048, 8192))
    curves = {"FA Pool": data.sweep(sc, "fapool"), "static TP x PP": data.sweep(sc, "static")}
    fig = figures.curves_figure(curves, "tpot", CLAIMS, slo=50.0)
    names = [t.name for t in fig.data]
    assert "paper claim: FA Pool" in names and "FA Pool 5-95% interval" in names
    claim = next(t for t in fig.data if t.name == "paper claim: FA Pool")
    assert list(claim.y) == [CLAIMS[s]["tpot"][1] for s in sorted(CLAIMS)]
    assert set(claim.text) == {"paper claim"}
    band = next(t for t in fig.data if t.name == "FA Pool 5-95% interval")
    line = next(t for t in fig.data if t.name == "FA Pool (simulated)")
    high = next(t for t in fig.data if t.name == "FA Pool interval high")
    rows = curves["FA Pool"]
    assert list(band.x) == list(line.x) == [r["seq_len"] for r in rows]
    assert list(zip(band.y, high.y)) == [tuple(r["tpot_ms_interval"]) for r in rows]
    assert band.fill == "tonexty" and all(lo <= hi for lo, hi in zip(band.y, high.y))
    assert "paper claim" not in [t.name for t in figures.curves_figure(curves, "tps").data]


def test_memory_and_gantt_figures():
    sc = scenario(batch=1024, seq_lens=(8192, 32768), seq_len=8192)
    rows = data.sweep(sc, "static")
    fig = figures.memory_figure([("static", "base", rows)], 80.0)
    infeasible = [t for t in fig.data if t.name == "infeasible"]
    assert len(infeasible) == 1 and list(infeasible[0].x) == ["32768"]
    assert "K/V" in infeasible[0].hovertext[0]
    assert any(s.y0 == 80.0 for s in fig.layout.shapes)   # the HBM capacity line
    tl = data.timeline(PAPER, A100, PROFILE, FAPoolStrategy(), Workload(64, 8192, 32))
    gantt = figures.gantt_figure(tl, "prefill")
    assert {t.name for t in gantt.data} == {"base compute", "pool compute", "base comm",
                                            "pool comm"}
    assert sum(len(t.x) for t in gantt.data) == sum(r["phase"] == "prefill" for r in tl["rows"])


# ------------------------------------------------------------------ CLI
def test_dashboard_command_line(capsys):
    cmd = streamlit_command(8600, True, "127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app.py")
    assert cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert "--server.headless" not in streamlit_command(8501, False)
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["dashboard", "--help"])
    assert exit_.value.code == 0 and "example" in capsys.readouterr().out
