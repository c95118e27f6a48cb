"""`fapool paper` computes its findings from the specs, not from typed-in numbers."""

from planner.model import PRESETS
from planner.paper import CLAIMS, inconsistencies, paper_report


def test_inconsistencies_follow_the_model():
    small = inconsistencies(PRESETS["paper-4l"], 1024, 128)
    params = next(i for i in small if i["topic"] == "parameter count")["computed"]
    assert params.startswith("1.067B")
    bigger = PRESETS["paper-4l"].with_overrides(vocab=1_490_000)
    params = next(i for i in inconsistencies(bigger, 1024, 128)
                  if i["topic"] == "parameter count")["computed"]
    assert params.startswith("13.0")


def test_pool_size_mismatches_are_computed():
    pools = next(i for i in inconsistencies(PRESETS["paper-4l"], 1024, 128)
                 if i["topic"] == "pool sizes")["computed"]
    assert "2048: table 8, formula 0" in pools and "16384: table 24, formula 32" in pools
    assert "8192" not in pools          # 8192 -> 16 agrees with the formula


def test_replicated_kv_memory_by_hand():
    kv = next(i for i in inconsistencies(PRESETS["paper-4l"], 1024, 128)
              if i["topic"] == "replicated K/V at batch 1024")["computed"]
    need = 1024 * (16384 + 128) * 2 * 4096 * 2 * 4 / 1e9      # bytes -> GB
    assert f"16384: {need:,.0f} GB" in kv


def test_report_rows_have_claims_and_our_numbers():
    report = paper_report()
    by_seq = {row["seq_len"]: row for row in report["rows"]}
    assert by_seq[16384]["claimed"]["fapool_tpot_ms"] == CLAIMS[16384]["tpot"][1]
    assert by_seq[32768]["claimed"] is None
    ours = by_seq[16384]["ours"]
    assert ours["fapool"]["pool_gpus"] == 32
    assert ours["baseline"]["tpot_ms"] > 0 and ours["fapool"]["tpot_ms"] > 0
    assert by_seq[16384]["ours_ratios"]["tpot"] == round(
        ours["baseline"]["tpot_ms"] / ours["fapool"]["tpot_ms"], 3)
