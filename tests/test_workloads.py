"""Workloads: traces (CSV / JSONL), named mixes, buckets, and bad-input errors."""

import json

import numpy as np

import pytest

from calibration.errors import InputError
from planner.cli import main
from planner.workloads import MIXES, load_trace, resolve_workload, save_trace, synthetic


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_trace_is_read_sorted_by_arrival(tmp_path):
    p = write(tmp_path, "t.csv", "arrival_s,input_len,output_len\n1.5,4096,64\n0,100,8\n")
    wl = load_trace(p)
    assert [r.arrival_s for r in wl.requests] == [0.0, 1.5]
    assert [r.input_len for r in wl.requests] == [100, 4096]
    assert wl.requests[1].output_len == 64


def test_jsonl_trace(tmp_path):
    rows = [{"arrival_s": 0.0, "input_len": 700, "output_len": 3},
            {"arrival_s": 0.2, "input_len": 900, "output_len": 5}]
    p = write(tmp_path, "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    wl = load_trace(p)
    (b,) = wl.buckets()                 # both in [512, 1024)
    assert (b.lo, b.hi, b.count, b.input_len, b.max_input, b.output_len) == \
        (512, 1024, 2, 800, 900, 4)
    assert b.weight == 1.0


@pytest.mark.parametrize("row, field", [("0,-5,8", "row 2.input_len"),
                                        ("0,,8", "row 2.input_len"),
                                        ("0,12,abc", "row 2.output_len"),
                                        ("-1,12,8", "row 2.arrival_s"),
                                        ("0,12.5,8", "row 2.input_len")])
def test_bad_csv_rows_name_row_and_field(tmp_path, row, field):
    p = write(tmp_path, "bad.csv", f"arrival_s,input_len,output_len\n{row}\n")
    with pytest.raises(InputError) as err:
        load_trace(p)
    assert field in err.value.field


def test_missing_column_and_bad_jsonl(tmp_path):
    with pytest.raises(InputError, match="missing column"):
        load_trace(write(tmp_path, "h.csv", "arrival_s,input_len\n0,5\n"))
    with pytest.raises(InputError) as err:
        load_trace(write(tmp_path, "b.jsonl", '{"arrival_s": 0, "input_len": 5}\n'))
    assert "line 1.output_len" in err.value.field


def test_buckets_are_power_of_two_ranges_with_weights():
    wl = synthetic("paper", 400, seed=3)
    buckets = wl.buckets()
    assert abs(sum(b.weight for b in buckets) - 1.0) < 1e-9
    assert sum(b.count for b in buckets) == 400
    for b in buckets:
        assert b.hi == 2 * b.lo and b.lo & (b.lo - 1) == 0
        assert b.lo <= b.input_len <= b.max_input < b.hi


def test_mixes_are_deterministic_and_poisson_arrivals_increase():
    for name in list(MIXES) + ["fixed:2048"]:
        a, b = synthetic(name, 50, seed=1), synthetic(name, 50, seed=1)
        assert a == b
        arrivals = [r.arrival_s for r in a.requests]
        assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    assert {r.input_len for r in synthetic("fixed:2048", 10).requests} == {2048}
    with pytest.raises(InputError):
        resolve_workload("no-such-mix")


def test_save_then_load_round_trip(tmp_path):
    wl = synthetic("mixed", 20, seed=2)
    save_trace(wl, tmp_path / "w.csv")
    back = load_trace(tmp_path / "w.csv")
    assert [(r.input_len, r.output_len) for r in back.requests] == \
        [(r.input_len, r.output_len) for r in wl.requests]


def test_plan_cli_bad_trace_one_line_exit_2_nothing_written(tmp_path, capsys):
    p = write(tmp_path, "bad.csv", "arrival_s,input_len,output_len\n0,100,8\n0.1,-3,8\n")
    out = tmp_path / "out"
    assert main(["plan", "--workload", str(p), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 3.input_len" in err[0]
    assert not out.exists()


def test_a_long_trace_is_streamed_into_a_sample_at_its_rate(tmp_path):
    """Past `sample` rows the requests are a seeded uniform sample plus each bucket's
    longest request, arriving at the trace's mean rate; rows read are reported; a trace
    within the bound is read whole."""
    rng = np.random.default_rng(3)
    n = 5000
    arrivals = np.cumsum(rng.exponential(0.01, n))            # ~100 requests/s
    lens = rng.integers(16, 4000, n)
    lens[1234] = 8191                                          # the longest, one row
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_len,output_len\n" + "".join(
        f"{a:.6f},{i},8\n" for a, i in zip(arrivals, lens)))
    full = load_trace(path, sample=n)
    assert len(full.requests) == n and not full.sampled and full.rows == 0
    part = load_trace(path, sample=200)
    assert part.rows == n and part.sampled and "5,000 rows read" in part.name
    assert 200 <= len(part.requests) <= 200 + len(full.buckets())
    assert part.requests == load_trace(path, sample=200).requests          # seeded
    assert max(r.input_len for r in part.requests) == 8191
    assert {b.max_input for b in part.buckets()} == {b.max_input for b in full.buckets()}
    assert part.rate == pytest.approx(full.rate, rel=0.15)
    assert part.summary()["rows_read"] == n
    # the sample's length mix is the trace's, within sampling error
    mean = np.mean([r.input_len for r in part.requests])
    assert mean == pytest.approx(np.mean(lens), rel=0.15)
