"""Fuzzing the inputs: every flag combination of simulate / plan / run (run without
launching) and every parser of a file kind (config.json, profile YAML, trace CSV / JSONL,
plan.json, store) either succeeds or refuses with InputError (the CLI: one stderr line,
exit 2), never another exception.  Bounded: small example counts, small values where a
valid input would start real work, hypothesis deadlines off (the first call imports)."""

import copy
import json
import os
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration.errors import InputError
from calibration.profile import Profile, load_profile, parse_yaml
from calibration.store import Store
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.hf_config import model_from_hf_config
from planner.model import PRESETS
from planner.plan import make_plan, plan_from_dict
from planner.strategy import FAPoolStrategy
from planner.workload import Workload
from planner.workloads import load_trace

# derandomized: CI runs the same examples every time (a suite that fails by chance blocks
# every change); FAPOOL_FUZZ_EXAMPLES=500 FAPOOL_FUZZ_RANDOM=1 searches further by hand
FAST = settings(max_examples=int(os.environ.get("FAPOOL_FUZZ_EXAMPLES", 40)), deadline=None,
                derandomize=not os.environ.get("FAPOOL_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# values that reach a flag: valid small ones, edges, huge, and not numbers at all
FLAG_VALUES = st.sampled_from(["1", "2", "3", "4", "8", "16", "64", "0", "-1", "2199023255553",
                               "1.5", "x", "", "nan", "inf", "1e9", " 7", "0x10"])
INT_FLAGS = ["--tp", "--pp", "--batch", "--seq-len", "--output-len", "--threshold",
             "--max-pool", "--pool-gpus", "--tokens-per-pool-gpu", "--microbatches",
             "--prefill-microbatches", "--decode-microbatches", "--nodes", "--layers",
             "--hidden", "--heads", "--kv-heads", "--head-dim", "--ffn", "--vocab"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6)


def _cli(argv, capsys) -> int:
    """main(argv) as the console script runs it; a refusal is exactly one stderr line."""
    try:
        code = main(argv)
    except SystemExit as stop:            # argparse refused a flag
        code = stop.code
    err = capsys.readouterr().err
    if code == 2:
        lines = [ln for ln in err.splitlines() if not ln.startswith("fapool: screen")
                 and not ln.startswith("fapool: requests")]
        assert len(lines) == 1 and "Traceback" not in err, err
    return code


@FAST
@given(flags=st.lists(st.tuples(st.sampled_from(INT_FLAGS), FLAG_VALUES), max_size=4),
       strategy=st.sampled_from(["static", "fapool"]))
def test_simulate_flags(flags, strategy, capsys):
    argv = ["simulate", "--model", "tiny", "--cluster", "local", "--strategy", strategy,
            "--tp", "1", "--pp", "1", "--seq-len", "64", "--batch", "2", "--threshold", "32",
            "--max-pool", "2", "--json"]
    for name, value in flags:
        argv += [f"{name}={value}"]
    assert _cli(argv, capsys) in (0, 2)


@FAST
@given(flags=st.lists(st.tuples(st.sampled_from(["--gpus", "--batch", "--requests",
                                                 "--output-len", "--rate", "--slo-ttft",
                                                 "--slo-tpot"]), FLAG_VALUES), max_size=3),
       objective=st.sampled_from(["tps", "gpus"]))
def test_plan_flags(flags, objective, capsys, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "out"
    argv = ["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2", "--workload",
            "fixed:64", "--requests", "4", "--batch", "2", "--output-len", "4",
            "--objective", objective, "--out", str(out)]
    for name, value in flags:
        argv += [f"{name}={value}"]
    assert _cli(argv, capsys) in (0, 2, 3)       # 3: no plan meets the SLOs


@FAST
@given(flags=st.lists(st.tuples(st.sampled_from(INT_FLAGS + ["--steps", "--warmup",
                                                             "--timeout", "--seed",
                                                             "--nproc"]),
                                FLAG_VALUES), max_size=4))
def test_run_flags_without_launching(flags, capsys, monkeypatch):
    """`fapool run`'s checks before the launch; the launch itself is stubbed (exit 1)."""
    import executor.launch

    class NotLaunched:
        ok, error, results = False, "not launched (fuzz test)", []
    monkeypatch.setattr(executor.launch, "launch", lambda *a, **k: NotLaunched())
    argv = ["run", "--no-store"] + [f"{n}={v}" for n, v in flags]
    assert _cli(argv, capsys) in (1, 2)


# ------------------------------------------------------------------ parsers
HF_KEYS = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "intermediate_size", "vocab_size", "head_dim",
           "hidden_act", "torch_dtype", "sliding_window", "tie_word_embeddings",
           "num_local_experts", "num_experts_per_tok", "_name_or_path", "rope_scaling"]
HF_BASE = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
           "vocab_size": 1000}


@FAST
@given(changes=st.dictionaries(st.sampled_from(HF_KEYS), JSON_VALUES, max_size=4))
def test_hf_config_parser(changes, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "config.json"
    path.write_text(json.dumps({**HF_BASE, **changes}))
    try:
        model_from_hf_config(path)
    except InputError:
        pass


PROFILE = load_profile("local").to_dict()


def _paths(d, prefix=()):
    """Every key path of a nested dict / list."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _with(base: dict, where: tuple, value) -> dict:
    """A deep copy of base with the value at key path `where` replaced."""
    raw = copy.deepcopy(base)
    node = raw
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    return raw


PROFILE_PATHS = [p for p in _paths(PROFILE) if p[0] != "provenance"][:400]


@FAST
@given(where=st.sampled_from(PROFILE_PATHS), value=JSON_VALUES)
def test_profile_parser(where, value):
    try:
        Profile.from_dict(_with(PROFILE, where, value))
    except InputError:
        pass


@FAST
@given(text=st.text(max_size=200))
def test_yaml_parser(text):
    try:
        parse_yaml(text, "profile")
    except InputError:
        pass


@FAST
@given(rows=st.lists(st.lists(st.sampled_from(["0", "1", "64", "-1", "1.5", "x", "", "1e3",
                                               "nan", "\"", "2199023255553"]),
                              max_size=4), max_size=5),
       header=st.sampled_from(["arrival_s,input_len,output_len", "input_len,output_len",
                               "arrival_s,input_len,output_len,x", ""]))
def test_csv_trace_parser(rows, header, tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "t.csv"
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    try:
        load_trace(path)
    except InputError:
        pass


@FAST
@given(rows=st.lists(st.dictionaries(st.sampled_from(["arrival_s", "input_len",
                                                      "output_len", "x"]),
                                     JSON_VALUES, max_size=4) | JSON_VALUES, max_size=4))
def test_jsonl_trace_parser(rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        load_trace(path)
    except InputError:
        pass


PLAN = make_plan(PRESETS["tiny"], resolve_cluster("local"),
                 FAPoolStrategy(base_tp=1, threshold=16, max_pool=2), Workload(2, 64, 4),
                 load_profile("local")).to_dict()
PLAN_PATHS = [p for p in _paths(PLAN) if p[0] != "profile"][:300]


@FAST
@given(where=st.sampled_from(PLAN_PATHS), value=JSON_VALUES)
def test_plan_parser(where, value):
    try:
        plan_from_dict(_with(PLAN, where, value))
    except InputError:
        pass


@FAST
@given(data=st.binary(max_size=256), sql=st.sampled_from([
    None, "CREATE TABLE meta (key, value)", "CREATE TABLE meta (key TEXT, value TEXT); "
    "INSERT INTO meta VALUES ('app', 'fa-pool'); INSERT INTO meta VALUES "
    "('schema_version', 'x')", "CREATE TABLE runs (id)"]))
def test_store_opener(data, sql, tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "s.sqlite"
    if sql is None:
        path.write_bytes(data)
    else:
        conn = sqlite3.connect(path)
        conn.executescript(sql)
        conn.close()
    for readonly in (True, False):
        try:
            Store(path, readonly=readonly).close()
        except InputError:
            pass


@pytest.mark.parametrize("argv", [["simulate", "--profile", "/dev/null"],
                                  ["requests", "--plan", "/dev/null"]])
def test_cli_on_empty_files(argv, capsys):
    assert _cli(argv, capsys) == 2
