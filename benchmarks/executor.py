"""FA Pool vs the static TP x PP baseline on this machine, measured side by side in one
launch (same model, same sequence length, same number of ranks), plus the attention split's
efficiency: T(attention on 1 pool rank) / (P x T(attention on the busiest of P pool ranks)).

    .venv/bin/python benchmarks/executor.py [--seq-len 512] [--hidden 256] [--steps 3]

Uses time.perf_counter inside the ranks (gloo on CPU).  On a machine with fewer cores
than ranks the processes share cores, which the figures then include.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibration.profile import load_profile  # noqa: E402
from executor.launch import launch  # noqa: E402
from planner.cluster import resolve_cluster  # noqa: E402
from planner.model import ModelSpec  # noqa: E402
from planner.plan import ExecutorSettings, make_plan, save_plan  # noqa: E402
from planner.strategy import FAPoolStrategy, StaticStrategy  # noqa: E402
from planner.workload import Workload  # noqa: E402


def _attention_ms(summ: dict) -> float:
    """Busiest rank's total attention time per timed request."""
    row = next(r for r in summ["ops"] if r["op"] == "attention")
    return row["busiest_ms"] / summ["steps"]


def _split_efficiency_in_process(spec, seq: int, pool: int, balanced: bool,
                                 repeats: int = 30) -> float:
    """The same split timed in one process, one block after another (no contention):
    T(whole) / (P x max_p T(block p))."""
    import torch

    from executor.attention import causal_block
    from planner.schedule import query_blocks as q_segments

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, seq, spec.heads, spec.head_dim, generator=g)
    k = torch.randn(1, seq, spec.kv_heads, spec.head_dim, generator=g)
    v = torch.randn_like(k)

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    whole = best(lambda: causal_block(q, k, v))
    per_rank = [best(lambda segs=segs: [causal_block(q[:, a:e], k[:, :e], v[:, :e])
                                        for a, e in segs])
                for segs in q_segments(seq, pool, balanced)]
    return whole / (pool * max(per_rank))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args(argv)
    heads = max(a.hidden // 32, 4)
    spec = ModelSpec("bench", a.layers, a.hidden, heads, heads, a.hidden // heads,
                     4 * a.hidden, 512, "gelu", "rmsnorm", 4)
    cluster = resolve_cluster("local", profile="dgx-a100")
    profile = load_profile("dgx-a100")
    pool = 3
    settings = ExecutorSettings(0, "float32", a.timeout)
    full = Workload(a.batch, a.seq_len, a.output_len)
    prefill_only = Workload(a.batch, a.seq_len, 1)
    cases = [  # (label, strategy, workload): every plan uses 4 ranks except pool 1
        ("static TP2xPP2", StaticStrategy(tp=2, pp=2, microbatches=2), full),
        (f"FA Pool TP1+{pool}", FAPoolStrategy(base_tp=1, threshold=1, pool_gpus=pool,
                                               microbatches=2), full),
        # one micro-batch: each pool rank's whole share of the batch in one attention call
        ("attn pool 1", FAPoolStrategy(base_tp=1, threshold=1, pool_gpus=1, microbatches=1),
         prefill_only),
        (f"attn pool {pool}", FAPoolStrategy(base_tp=1, threshold=1, pool_gpus=pool,
                                             microbatches=1), prefill_only),
        (f"attn pool {pool} balanced", FAPoolStrategy(base_tp=1, threshold=1, pool_gpus=pool,
                                                      balanced=True, microbatches=1),
         prefill_only),
    ]
    for b in (1, pool):  # decode K/V placement: whole sequences per rank vs slices of each
        for kv in ("split-batch", "split-seq"):
            cases.append((f"decode {kv} b{b}", FAPoolStrategy(
                base_tp=1, threshold=1, pool_gpus=pool, decode_kv=kv, microbatches=1),
                Workload(b, a.seq_len, 2 * a.output_len)))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (_, strategy, wl) in enumerate(cases):
            paths.append(Path(tmp) / f"{i}.json")
            save_plan(make_plan(spec, cluster, strategy, wl, profile, executor=settings),
                      paths[-1])
        print(f"model: {spec.layers} layers, hidden {spec.hidden}, {spec.heads} heads, fp32; "
              f"batch {a.batch} x seq {a.seq_len}, output {a.output_len}; 4 ranks (gloo, "
              f"CPU); median of {a.steps} requests after 1 warm-up", file=sys.stderr)
        res = launch(paths, 4, a.timeout, ["--steps", str(a.steps)])
    if not res.ok:
        print(f"benchmark failed: {res.error}", file=sys.stderr)
        return 1
    out = dict(zip([c[0] for c in cases], res.results))
    print(f"{'case':<24}{'TTFT ms':>10}{'TPOT ms':>10}{'TPS':>9}")
    for label in (cases[0][0], cases[1][0]):
        s = out[label]
        print(f"{label:<24}{s['ttft_ms']:>10.2f}{s['tpot_ms']:>10.2f}{s['tps']:>9.1f}")
    st, fp = out[cases[0][0]], out[cases[1][0]]
    print(f"FA Pool / static: TTFT {fp['ttft_ms'] / st['ttft_ms']:.3f}x, "
          f"TPOT {fp['tpot_ms'] / st['tpot_ms']:.3f}x, TPS {fp['tps'] / st['tps']:.3f}x "
          "(time ratios < 1 and TPS ratio > 1 favour FA Pool)")
    ov = fp.get("overlap")
    if ov:
        print(f"overlap (2 micro-batches): {ov['fraction']:.1%} of the pool's attention time "
              f"({ov['pool_attention_ms']:.1f} ms) ran while the base computed its FFN")
    t1 = _attention_ms(out["attn pool 1"])
    for label in (f"attn pool {pool}", f"attn pool {pool} balanced"):
        tp_ = _attention_ms(out[label])
        ideal = _split_efficiency_in_process(spec, a.seq_len, pool, "balanced" in label)
        print(f"attention split efficiency, {label[5:]}: in the run T1/(P*TP) = "
              f"{t1:.2f}/({pool}*{tp_:.2f}) = {t1 / (pool * tp_):.3f}; "
              f"same split in one process = {ideal:.3f}")
    print("decode TPOT (ms) by K/V placement, pool of "
          f"{pool}: " + "; ".join(f"{label[7:]} {out[label]['tpot_ms']:.2f}"
                                  for label, _, _ in cases if label.startswith("decode")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
