"""The bad inputs a fuzz pass found (issue 14): each gives one line on stderr and exit 2
(or a correct result), no traceback, nothing half-written, in bounded time and memory."""

import copy
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from calibration.errors import InputError
from calibration.profile import MAX_PROFILE_BYTES, load_profile
from calibration.store import Store
from planner.cli import main
from planner.cli.dashboard import streamlit_command
from planner.dashboard.data import store_comparison

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ["--model", "tiny", "--cluster", "local", "--tp", "1", "--max-pool", "2",
         "--threshold", "64", "--batch", "2", "--seq-len", "128"]


def one_line_exit_2(argv, capsys, *needles):
    try:
        code = main(argv)
    except SystemExit as stop:          # argparse's refusal of a flag
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------ files written
def test_trace_under_a_regular_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_exit_2(["simulate", *LOCAL, "--trace", str(tmp_path / "f" / "t.json")], capsys,
                    "--trace")


def test_plan_out_a_dangling_symlink_is_refused_and_nothing_written(tmp_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing" / "dir")
    one_line_exit_2(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                     "--workload", "fixed:128", "--requests", "4", "--batch", "2",
                     "--out", str(link)], capsys, "--out", "symbolic link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_closed_pipe_ends_quietly():
    """`fapool simulate --json | head`: the reader has gone before the JSON is written."""
    proc = subprocess.Popen([sys.executable, "-m", "planner.cli", "simulate", *LOCAL,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


# ------------------------------------------------------------------ limits
@pytest.mark.parametrize("argv, field", [
    (["--max-pool", "1000000000"], "gpus"),           # refused before any rank is built
    (["--pool-gpus", "1000000000"], "gpus"),
    (["--nodes", "99999999999999"], "--nodes"),       # past 2^40: the flag itself
    (["--nodes", "9999999"], "cluster.nodes"),        # past the largest cluster planned
    (["--seq-len", str(2 ** 41)], "--seq-len"),
])
def test_huge_numbers_are_refused(argv, field, capsys):
    one_line_exit_2(["simulate", "--seq-len", "1024", *argv], capsys, field)


def test_an_overflowing_hf_config_is_refused(tmp_path, capsys):
    cfg = {"model_type": "llama", "hidden_size": 1e300, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
           "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    one_line_exit_2(["simulate", "--model", str(tmp_path / "config.json"), "--cluster",
                     "local", "--tp", "1", "--seq-len", "64", "--batch", "1"], capsys,
                    "hidden_size")


# ------------------------------------------------------------------ profiles
def _profile(tmp_path, mutate) -> Path:
    raw = copy.deepcopy(load_profile("local").to_dict())
    mutate(raw)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["curves"]["gemm"].__setitem__("cov", [[1, "x"], [2]]), "gemm.cov"),
    (lambda d: d["curves"]["gemm"].__setitem__("cov", "bad"), "gemm.cov"),
    (lambda d: d["curves"]["gemm"]["cov"][0].__setitem__(0, float("nan")), "gemm.cov"),
    (lambda d: d["curves"]["gemm"].__setitem__("points", "many"), "gemm.points"),
    (lambda d: d["curves"]["gemm"].__setitem__("points", True), "gemm.points"),
    (lambda d: d["curves"]["gemm"].__setitem__("sources", 5), "gemm.sources"),
    (lambda d: d["curves"]["gemm"].__setitem__("std", [1, 2]), "gemm.std"),
    (lambda d: d["curves"]["gemm"].__setitem__("std", {"nope": 1}), "gemm.std"),
    (lambda d: d["curves"]["gemm"].__setitem__("rmse_rel", "x"), "gemm.rmse_rel"),
    (lambda d: d.__setitem__("bogus", 1), "profile: unknown keys ['bogus']"),
    (lambda d: d["curves"]["gemm"].__setitem__("bogus", 1), "gemm: unknown keys"),
    (lambda d: d["device"].__setitem__("bogus", 1), "profile.device: unknown keys"),
    (lambda d: d["host"].__setitem__("sources", [1, {"a": 2}]), "host.sources"),
    (lambda d: d["host"].__setitem__("wake_s", "fast"), "host.wake_s"),
    (lambda d: d.__setitem__("provenance", [1, 2]), "profile.provenance"),
])
def test_malformed_profile_fields_are_named(tmp_path, capsys, mutate, field):
    path = _profile(tmp_path, mutate)
    one_line_exit_2(["simulate", *LOCAL, "--profile", str(path)], capsys, field)


def test_a_yaml_alias_bomb_is_refused_without_expanding(tmp_path, capsys):
    """Ten levels of ten aliases: 10^10 nodes if expanded; refused at the first alias."""
    text = yaml.safe_dump(load_profile("local").to_dict())
    bomb = "lol0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"lol{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    path = tmp_path / "bomb.yaml"
    path.write_text(text.replace("provenance:", "provenance:\n  " + bomb.replace(
        "\n", "\n  ").rstrip() + "\n  prov:", 1))
    one_line_exit_2(["simulate", *LOCAL, "--profile", str(path)], capsys,
                    "aliases are not allowed")


def test_special_and_oversized_profile_files_are_refused(tmp_path, capsys):
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    one_line_exit_2(["simulate", *LOCAL, "--profile", str(zero)], capsys,
                    "not a regular file")
    big = tmp_path / "big.yaml"
    with big.open("w") as fh:
        fh.truncate(MAX_PROFILE_BYTES + 1)
    one_line_exit_2(["simulate", *LOCAL, "--profile", str(big)], capsys, "at most")


# ------------------------------------------------------------------ traces
@pytest.mark.parametrize("name, text, needle", [
    ("t.jsonl", '{"arrival_s": 0, "input_len": true, "output_len": 4}\n', "input_len"),
    ("t.jsonl", '{"arrival_s": 0, "input_len": "512", "output_len": 4}\n', "input_len"),
    ("t.jsonl", '{"arrival_s": 0, "input_len": 512.0, "output_len": 4}\n', "input_len"),
    ("t.jsonl", '{"arrival_s": "0", "input_len": 512, "output_len": 4}\n', "arrival_s"),
    ("t.jsonl", '{"arrival_s": 0, "input_len": 512, "output_len": 4, "x": 1}\n',
     "unknown keys ['x']"),
    ("t.jsonl", '{"arrival_s": 0, "input_len": 1099511627777, "output_len": 4}\n', "2^40"),
    ("t.csv", "arrival_s,input_len,output_len\n0,1e3,4\n", "input_len"),
    ("t.csv", "arrival_s,input_len,output_len,foo\n0,512,4,1\n", "unknown column"),
    ("t.csv", "arrival_s,input_len,output_len\n0,512,4,9\n", "more fields"),
])
def test_trace_fields_are_strict(tmp_path, capsys, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    one_line_exit_2(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                     "--workload", str(path), "--batch", "2", "--out",
                     str(tmp_path / "out")], capsys, needle)
    assert not (tmp_path / "out").exists()


def test_a_trace_that_is_a_device_is_refused(tmp_path, capsys):
    path = tmp_path / "zero.csv"
    path.symlink_to("/dev/zero")
    one_line_exit_2(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                     "--workload", str(path), "--out", str(tmp_path / "out")], capsys,
                    "not a regular file")


# ------------------------------------------------------------------ dashboard
def test_the_dashboard_binds_this_machine_only_unless_told(capsys):
    cmd = streamlit_command(8600, True)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    cmd = streamlit_command(8600, True, "0.0.0.0")
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


def test_the_dashboards_store_box_opens_only_fa_pool_stores_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, needle in ((empty, "empty"), (other, "not an fa-pool store"),
                         (text, "not an SQLite database"), (tmp_path, "directory")):
        before = (path.stat().st_mtime_ns, path.stat().st_size)
        with pytest.raises(InputError, match=needle):
            store_comparison(path)
        assert (path.stat().st_mtime_ns, path.stat().st_size) == before
    assert store_comparison(tmp_path / "missing.sqlite")["rows"] == []
    assert not (tmp_path / "missing.sqlite").exists()
    ours = tmp_path / "ours.sqlite"
    Store(ours).close()
    before = (ours.stat().st_mtime_ns, ours.stat().st_size)
    assert store_comparison(ours)["rows"] == []
    with pytest.raises(sqlite3.OperationalError):          # read-only: no write goes in
        Store(ours, readonly=True)._conn.execute("CREATE TABLE x (y)")
    assert (ours.stat().st_mtime_ns, ours.stat().st_size) == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith("ours.sqlite-")]


def test_head_dim_zero_and_deep_or_special_json_are_refused(tmp_path, capsys):
    cfg = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
           "vocab_size": 1000, "head_dim": 0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    one_line_exit_2(["simulate", "--model", str(tmp_path / "config.json"), "--cluster",
                     "local", "--tp", "1", "--seq-len", "64", "--batch", "1"], capsys,
                    "head_dim")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    one_line_exit_2(["requests", "--plan", str(deep)], capsys, "not valid JSON")
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    one_line_exit_2(["requests", "--plan", str(zero)], capsys, "not a regular file")
    deep_trace = tmp_path / "t.jsonl"
    deep_trace.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    one_line_exit_2(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                     "--workload", str(deep_trace), "--out", str(tmp_path / "o")], capsys,
                    "not valid JSON")
