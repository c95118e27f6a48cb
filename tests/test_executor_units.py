"""Executor pieces in one process: splits, tree, masks, LSE merge, TP shards, reference."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from executor import attention  # noqa: E402
from executor.model import make_weights  # noqa: E402
from executor.parallel import shard_layer, tp_shard  # noqa: E402
from planner.schedule import query_blocks as q_segments  # noqa: E402
from planner.schedule import kv_lanes, subtree, tree_children  # noqa: E402
from executor.reference import forward, naive_attention, verify  # noqa: E402
from planner.model import PRESETS  # noqa: E402

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("seq,parts", [(13, 1), (13, 2), (13, 3), (4, 3), (5, 4), (64, 3)])
@pytest.mark.parametrize("balanced", [False, True])
def test_q_segments_cover_sequence_once(seq, parts, balanced):
    segs = q_segments(seq, parts, balanced)
    assert len(segs) == parts
    covered = sorted(i for rank in segs for a, e in rank for i in range(a, e))
    assert covered == list(range(seq))
    if not balanced:   # blocks of ceil(seq / parts), in order
        c = math.ceil(seq / parts)
        assert segs[0] == [(0, min(c, seq))]


def test_balanced_split_evens_causal_work():
    seq, parts = 64, 4

    def work(rank_segs):   # causal attention cost ~ sum of key counts of the queries
        return sum(e * (e + 1) // 2 - a * (a + 1) // 2 for a, e in rank_segs)
    plain = [work(s) for s in q_segments(seq, parts, False)]
    bal = [work(s) for s in q_segments(seq, parts, True)]
    assert max(bal) / min(bal) < 1.1 < max(plain) / min(plain)


@pytest.mark.parametrize("n", range(1, 10))
def test_tree_every_member_reaches_root_once_in_order(n):
    seen = []

    def walk(idx):
        seen.append(idx)
        for c in tree_children(idx, n):
            assert list(subtree(c, n))[0] == c
            walk(c)
    walk(0)
    assert seen == list(range(n + 1))        # pre-order = member order: concat stays ordered
    assert max(len(tree_children(i, n)) for i in range(n + 1)) <= math.ceil(math.log2(n + 1))


def test_bottom_right_causal_block_matches_full_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 11, 4, 8, generator=g)
    k = torch.randn(2, 11, 2, 8, generator=g)
    v = torch.randn(2, 11, 2, 8, generator=g)
    full = naive_attention(q, k, v)
    for a, e in [(0, 4), (4, 8), (8, 11), (3, 11)]:
        block = attention.causal_block(q[:, a:e], k[:, :e], v[:, :e])
        assert (block - full[:, a:e]).abs().max() < 1e-5
    assert attention.bottom_right_mask(2, 4, "cpu").tolist() == [[True, True, True, False],
                                                                  [True, True, True, True]]


def test_lse_merge_of_shards_equals_full_decode_including_empty_shard():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 1, 4, 8, generator=g)
    k = torch.randn(3, 9, 2, 8, generator=g)
    v = torch.randn(3, 9, 2, 8, generator=g)
    full = attention.decode_full(q, k, v)
    shards = [(0, 4), (4, 4), (4, 9)]                         # the middle one is empty
    parts = [attention.decode_partial(q, k[:, a:e].contiguous(), v[:, a:e].contiguous(), e - a)
             for a, e in shards]
    merged = attention.merge_partials(torch.stack([p[0] for p in parts]),
                                      torch.stack([p[1] for p in parts]))
    assert torch.isinf(parts[1][1]).all()
    assert (merged - full).abs().max() < 1e-5


def test_weights_are_deterministic_and_tp_shards_reassemble():
    spec = TINY.with_overrides(kv_heads=2)
    w1, w2 = make_weights(spec, 7), make_weights(spec, 7)
    assert torch.equal(w1.layers[1].wq, w2.layers[1].wq)
    assert not torch.equal(w1.layers[1].wq, make_weights(spec, 8).layers[1].wq)
    lw = w1.layers[0]
    for tp in (1, 2, 4):     # tp=4 > kv_heads=2: K/V heads replicated
        shards = [shard_layer(lw, spec, tp_shard(spec, tp, i)) for i in range(tp)]
        assert torch.equal(torch.cat([s.wq for s in shards], 1), lw.wq)
        assert torch.equal(torch.cat([s.w_down for s in shards], 0), lw.w_down)
        # the K/V lanes (planner.schedule.kv_lanes) send each K/V head once, in order: the
        # pool's concatenation of what they send is the whole K
        owners = [shards[i].wk for i in kv_lanes(spec, tp)]
        assert torch.equal(torch.cat(owners, 1), lw.wk)


def test_verify_fails_on_a_perturbed_run():
    spec = TINY
    w = make_weights(spec, 0)
    prompt = torch.randint(spec.vocab, (2, 6), generator=torch.Generator().manual_seed(1))
    logits, attn = forward(spec, w, prompt)
    gen = logits[:, -1:].argmax(-1)
    ok = verify(spec, w, torch.float32, "float32", prompt, gen, {"logits": logits, "attn": attn})
    assert ok["passed"] and ok["max_abs_err_logits"] == 0.0
    bad_attn = [attn[0], attn[1] + 1e-3]
    bad = verify(spec, w, torch.float32, "float32", prompt, gen,
                 {"logits": logits, "attn": bad_attn})
    assert not bad["passed"] and bad["max_abs_err_attn"][1] > 1e-4


def test_overlap_measures_intersection_of_interval_unions():
    from executor.measure import overlap
    pool = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]      # union: [0,3] + [5,6] = 4 s
    base = [(2.5, 5.5)]                              # meets [2.5,3] and [5,5.5]: 1 s
    ov = overlap(pool, base)
    assert ov["pool_attention_ms"] == pytest.approx(4000.0)
    assert ov["overlapped_ms"] == pytest.approx(1000.0)
    assert ov["fraction"] == pytest.approx(0.25)
    assert overlap([], base)["fraction"] == 0.0


def test_launcher_reads_a_zombie_rank_exit_status_from_proc():
    import subprocess
    import time

    from executor.launch import _proc_state, _status_text
    p = subprocess.Popen(["sh", "-c", "exit 7"])
    deadline = time.monotonic() + 10
    while _proc_state(p.pid) is None and time.monotonic() < deadline:
        time.sleep(0.01)              # not reaped (no poll/wait): a zombie once it exits
    status = _proc_state(p.pid)
    assert status != "gone" and _status_text(status, wait_status=True) == "exit status 7"
    p.wait()
    assert _proc_state(p.pid) == "gone"
    assert _status_text(-9, wait_status=False) == "killed by SIGKILL"
    assert _status_text(9, wait_status=True) == "killed by SIGKILL"


TORCHRUN_LOG = """\
W1125 api.py:1028] Sending process 101 closing signal SIGTERM
W1125 api.py:1028] Sending process 103 closing signal SIGTERM
Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 101)  (SIGTERM)
[2]:
  rank      : 3 (local_rank: 3)
  exitcode  : -15 (pid: 103)  (SIGTERM)
Root Cause (first observed failure):
[0]:
  rank      : 2 (local_rank: 2)
  exitcode  : 5 (pid: 102)
"""


def _run_dir(tmp_path, errors=()):
    import json
    import time
    (tmp_path / "torchrun.log").write_text(TORCHRUN_LOG)
    for rank, waiting in errors:
        (tmp_path / f"rank{rank}.error").write_text(json.dumps(
            {"rank": rank, "time": time.time(), "error": f"E{rank}",
             "waiting_on_peers": waiting}))
    return tmp_path


def test_blame_skips_ranks_torchrun_terminated_and_prefers_computing_errors(tmp_path):
    from executor.launch import _blame_failure
    pids = {0: 100, 1: 101, 2: 102, 3: 103}
    # rank 1 (a rank torchrun terminated) seen gone first; rank 2's status only in the
    # summary; rank 0 reported an error while waiting on peers
    d = _run_dir(tmp_path, errors=[(0, True)])
    dead = {1: (1.0, None), 2: (1.1, None), 3: (1.1, None), 0: (1.2, 256)}
    assert _blame_failure(d, pids, dead, 1).startswith(
        "rank 2 died (exit status 5) without reporting an error")
    # a zombie's wait status (signal 9) wins over the summary
    assert "rank 2 died (killed by SIGKILL)" in _blame_failure(d, pids, {2: (1.0, 9)}, 1)
    # a rank that raised while computing is blamed before any silent death
    d = _run_dir(tmp_path, errors=[(0, True), (3, False)])
    assert _blame_failure(d, pids, dead, 1) == "rank 3 failed: E3"
    # nothing silent: the earliest error, waiting or not
    (d / "torchrun.log").write_text("")
    (d / "rank3.error").unlink()
    assert _blame_failure(d, pids, {}, 1) == "rank 0 failed: E0"
    (d / "rank0.error").unlink()
    assert _blame_failure(d, {}, {}, 1).startswith("torchrun exited with status 1 and")


def test_geglu_ffn_is_gelu_tanh_of_the_gate_times_up():
    """Gemma's MLP: down(gelu_tanh(gate(x)) * up(x)); sharding columns sums back to it."""
    import torch
    import torch.nn.functional as F

    from executor.model import ffn_partial
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=g)
    up, gate, down = (torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g),
                      torch.randn(6, 8, generator=g))
    want = (F.gelu(x @ gate, approximate="tanh") * (x @ up)) @ down
    assert torch.allclose(ffn_partial(x, up, gate, down, "geglu"), want, atol=1e-5)
    halves = sum(ffn_partial(x, up[:, c], gate[:, c], down[c], "geglu")
                 for c in (slice(0, 3), slice(3, 6)))
    assert torch.allclose(halves, want, atol=1e-5)
