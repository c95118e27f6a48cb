"""`fapool simulate` / `fapool paper`: success paths and bad input (one line, exit 2)."""

import json
import subprocess
import sys

import pytest


def fapool(*args):
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_simulate_json_contract(tmp_path):
    trace = tmp_path / "trace.json"
    r = fapool("simulate", "--model", "paper-4l", "--cluster", "dgx-a100", "--strategy",
               "fapool", "--seq-len", "16384", "--json", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("model", "cluster", "strategy", "seq_len", "batch", "gpus", "pool_gpus",
                "feasible", "infeasible_reasons", "ttft_ms", "tpot_ms", "tps", "decode_tps",
                "memory_gb", "comm_fraction", "utilization", "tpot_ms_interval", "profile"):
        assert key in out
    assert out["batch"] == 1024 and out["pool_gpus"] == 32 and out["gpus"] == 40
    assert set(out["memory_gb"]) == {"base", "pool"}
    assert out["strategy"]["threshold"] == 4096
    assert json.loads(trace.read_text())["traceEvents"]


def test_simulate_defaults_are_the_papers():
    out = json.loads(fapool("simulate", "--strategy", "static", "--seq-len", "2048",
                            "--json").stdout)
    assert (out["strategy"]["tp"], out["strategy"]["pp"], out["gpus"]) == (8, 2, 16)


def test_simulate_overrides_and_tiny():
    r = fapool("simulate", "--model", "tiny", "--layers", "3", "--cluster", "dgx-a100",
               "--nodes", "1", "--tp", "2", "--max-pool", "2", "--threshold", "64",
               "--tokens-per-pool-gpu", "64",
               "--batch", "2", "--seq-len", "128", "--output-len", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pool_gpus"] == 2 and out["gpus"] == 4


def test_profile_without_the_clusters_link_is_refused():
    r = fapool("simulate", "--model", "tiny", "--cluster", "local", "--profile", "dgx-a100",
               "--tp", "2", "--max-pool", "2")
    assert r.returncode == 2 and "loopback" in r.stderr


def test_infeasible_is_reported_not_an_error():
    r = fapool("simulate", "--strategy", "static", "--seq-len", "32768", "--json")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["feasible"] is False and out["infeasible_reasons"]
    human = fapool("simulate", "--strategy", "static", "--seq-len", "32768")
    assert "INFEASIBLE" in human.stdout


@pytest.mark.parametrize("args,field", [
    (["--model", "gpt-9"], "model"),
    (["--cluster", "nowhere"], "cluster"),
    (["--batch", "0"], "batch"),
    (["--seq-len", "-5"], "seq_len"),
    (["--heads", "5"], "heads"),
    (["--tp", "3"], "tp"),
    (["--max-pool", "100"], "GPUs"),
    (["--strategy", "static", "--tp", "32", "--pp", "4", "--heads", "64"], "GPUs"),
    (["--strategy", "static", "--pp", "8"], "pp"),
    (["--seq-len", "abc"], "seq-len"),
    (["--strategy", "ring"], "strategy"),
    (["--profile", "/no/such.yaml"], "profile"),
    (["--dtype", "fp8", "--cluster", "dgx-a100"], "dtype: fp8 on A100"),
    (["--dtype", "int4"], "dtype"),
    (["--model", "/no/such/dir/config.json"], "model"),
])
def test_bad_input_one_line_exit_2(args, field):
    r = fapool("simulate", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert field.lower() in lines[0].lower()


def test_malformed_config_json(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{")
    r = fapool("simulate", "--model", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "config.json" in r.stderr


def test_trace_not_written_on_bad_input(tmp_path):
    trace = tmp_path / "t.json"
    r = fapool("simulate", "--batch", "0", "--trace", str(trace))
    assert r.returncode == 2 and not trace.exists()


def test_paper_json_and_text():
    r = fapool("paper", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [row["seq_len"] for row in report["rows"]] == [512, 2048, 8192, 16384, 32768]
    topics = {i["topic"] for i in report["inconsistencies"]}
    assert {"parameter count", "pool sizes", "TPS vs its definition",
            "replicated K/V at batch 1024"} <= topics
    assert any("output length 128" in a for a in report["assumptions"])
    text = fapool("paper", "--output-len", "64")
    assert "output length 64" in text.stdout and "Section 5.4" in text.stdout


def test_readme_local_example_runs(tmp_path):
    trace = tmp_path / "t.json"
    r = fapool("simulate", "--model", "tiny", "--cluster", "local", "--tp", "1", "--max-pool",
               "3", "--threshold", "64", "--batch", "2", "--seq-len", "512", "--trace",
               str(trace), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["profile"] == "local" and trace.exists()


def test_unwritable_trace_is_one_line_and_leaves_nothing(tmp_path):
    r = fapool("simulate", "--seq-len", "2048", "--trace", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--trace" in r.stderr and list(tmp_path.iterdir()) == []
