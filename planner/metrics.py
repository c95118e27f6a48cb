"""The metric definitions, once, for the simulator, the executor's report, the store and
the dashboard.

For one batch of `batch` sequences of `input_len` prompt tokens, each generating
`output_len` tokens (the first from prefill, the rest one per decode step):
  TTFT        time of the prefill of the whole batch (until every sequence has its first token)
  TPOT        time of one decode step of the whole batch
  request     TTFT + (output_len - 1) x TPOT: the batch's wall time
  TPS         batch x (input_len + output_len) / request  (paper 4.4: "input and output")
  decode TPS  batch / TPOT  (output tokens per second while decoding)
"""

from __future__ import annotations

from planner.workload import Workload

KEYS = ("ttft_ms", "tpot_ms", "tps", "decode_tps")


def request_s(wl: Workload, ttft_s: float | None, tpot_s: float | None) -> float | None:
    if ttft_s is None:
        return None
    steps = wl.output_len - 1
    if steps and tpot_s is None:
        return None
    return ttft_s + steps * (tpot_s or 0.0)


def tps(wl: Workload, ttft_s: float | None, tpot_s: float | None) -> float | None:
    total = request_s(wl, ttft_s, tpot_s)
    return wl.total_tokens / total if total else None


def decode_tps(wl: Workload, tpot_s: float | None) -> float | None:
    return wl.batch / tpot_s if tpot_s else None


def metrics(wl: Workload, ttft_s: float | None, tpot_s: float | None) -> dict:
    """The four metrics under their JSON keys (ms for times, tokens/s for rates)."""
    ms = (lambda s: None if s is None else s * 1e3)
    return {"ttft_ms": ms(ttft_s), "tpot_ms": ms(tpot_s), "tps": tps(wl, ttft_s, tpot_s),
            "decode_tps": decode_tps(wl, tpot_s)}


def tps_interval(wl: Workload, ttft_iv, tpot_iv) -> list | None:
    """TPS bounds from the interval ends: slowest TTFT and TPOT together give the low TPS.
    Conservative (wider than the TPS percentiles), as both ends are rarely drawn together."""
    if not ttft_iv or not tpot_iv:
        return None
    return [tps(wl, ttft_iv[1], tpot_iv[1]), tps(wl, ttft_iv[0], tpot_iv[0])]
