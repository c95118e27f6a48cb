"""The executor of a schedule: every rank runs its program (planner.schedule) op by op.

The schedule says what to do, in which order, with which shapes and peers; this module
only says how, with torch: one handler per (op kind, label).  So the data path, the splits
and the message order are the simulator's by construction, and the op recorder
(`Recorder`) writes down what the tensors really were, which a test compares with the
schedule rank by rank.

State a rank keeps between ops of one step (per micro-batch mb): x[mb] the residual stream
(n, q, hidden), h[mb] the normed input, q/k/v[mb] its heads' projections (n, q, heads, d),
att[mb] its heads' attention output, y[mb] the latest partial sum; posted works by message;
and K/V caches across steps ((layer, mb) -> KVCache).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from executor import attention
from executor.model import ffn_partial, norm
from executor.parallel import shard_layer, tp_shard
from planner.schedule import COLLECTIVES, COMPUTE, POSTS, Op, Schedule


class KVCache:
    """K and V of some rows / positions, preallocated to capacity; (b, capacity, KV, d)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int):
        b, n, kvh, d = k.shape
        self.k = k.new_zeros(b, capacity, kvh, d)
        self.v = v.new_zeros(b, capacity, kvh, d)
        self.k[:, :n], self.v[:, :n] = k, v
        self.len = n

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        n = k.shape[1]
        self.k[:, self.len:self.len + n], self.v[:, self.len:self.len + n] = k, v
        self.len += n


def regroup(cache: dict, old_rows: tuple, new_rows: tuple) -> dict:
    """{(layer, mb): KVCache} cut by old_rows -> the same keys and values cut by new_rows
    (decode on another micro-batch count than prefill): each layer's caches joined in row
    order, then split, at the same capacity."""
    out = {}
    for layer in sorted({L for L, _ in cache}):
        parts = [cache[layer, mb] for mb in range(len(old_rows))]
        k = torch.cat([c.k for c in parts])                 # (batch, capacity, KV, d)
        v = torch.cat([c.v for c in parts])
        for mb, (r0, r1) in enumerate(new_rows):
            c = KVCache.__new__(KVCache)
            c.k, c.v, c.len = k[r0:r1].clone(), v[r0:r1].clone(), parts[0].len
            out[layer, mb] = c
    return out


class Recorder:
    """What a rank really ran: one row per op, (kind, label, layer, mb, what), where what is
    (shape, bytes, peer) of the tensor a comm op moved, or the shape parameters of a compute
    op read off its tensors (memory ops: their stated bytes)."""

    def __init__(self):
        self.enabled = False             # rows: the op-sequence test
        self.timeline = False            # spans: (kind, label, layer, mb, t0, t1) per op,
        self.rows: list = []             # CLOCK_MONOTONIC seconds (comparable across
        self.spans: list = []            # local processes): predicted-vs-measured traces

    def add(self, op: Op, what) -> None:
        if self.enabled:
            self.rows.append((op.kind, op.label, op.layer, op.mb, what))


def expected_row(op: Op, lane: int, peer) -> tuple:
    """The recorder's row the schedule expects for (op, lane, peer) of a rank program."""
    if op.kind == "memory":
        return (op.kind, op.label, op.layer, op.mb, (("bytes", op.param("bytes")),))
    if op.kind in COMPUTE:
        keep = RECORDED[op.kind]
        return (op.kind, op.label, op.layer, op.mb,
                tuple((k, v) for k, v in op.params if k in keep))
    if op.kind == "wait":
        return (op.kind, op.label, op.layer, op.mb, (peer,))
    return (op.kind, op.label, op.layer, op.mb, (tuple(op.shape), op.bytes, peer))


# the state a collective of this label works on, where it is not named after the label
REDUCES = {"embedding": "x"}

RECORDED = {"gemm": ("tokens", "k", "n"),
            "attention": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
            "ffn": ("tokens", "ffn_shard")}


class RankProgram:
    """One rank's executor: its shard of the weights and its caches, for all steps of a
    request.  run(schedule, tokens) runs one step's program and returns the next tokens
    (on ranks that sample them) or None."""

    def __init__(self, rt, weights, groups, recorder: Recorder | None = None):
        self.rt, self.groups = rt, groups
        self.rank = groups.rank
        self.spec = rt.spec
        self.recorder = recorder or Recorder()
        self.unit = None                 # set per schedule
        self.cache: dict = {}            # (layer, mb) -> KVCache
        self.cache_rows: tuple = ()      # the micro-batch rows the cache is cut by
        self.weights = weights
        self._shards: dict = {}          # (tp, lane) -> that lane's weights

    # ------------------------------------------------------------ weights
    def shard(self, tp: int, lane: int) -> tuple:
        """(per-layer sharded weights, fused QKV per layer, embedding rows, LM head columns,
        final norm) of a lane."""
        key = (tp, lane)
        if key not in self._shards:
            rt, w, spec = self.rt, self.weights, self.spec
            s = tp_shard(spec, tp, lane)
            layers = {i: shard_layer(lw, spec, s) for i, lw in enumerate(w.layers)}
            cols = math.ceil(spec.vocab / tp)
            a, b = min(lane * cols, spec.vocab), min((lane + 1) * cols, spec.vocab)
            embed = w.embed[a:b].to(rt.device, rt.dtype)                   # (rows, hidden)
            head = torch.zeros(spec.hidden, cols, dtype=rt.dtype, device=rt.device)
            head[:, :b - a] = w.lm_head[:, a:b].to(rt.device, rt.dtype)   # (hidden, cols)
            layers = {i: _to(lw, rt) for i, lw in layers.items()}
            # fused QKV (one GEMM, as the schedule costs it): (hidden, (hl + 2 kvl) * d)
            wqkv = {i: torch.cat([lw.wq, lw.wk, lw.wv], dim=1).contiguous()
                    for i, lw in layers.items()}
            self._shards[key] = (layers, wqkv, (a, b, embed), head,
                                 w.norm_f.to(rt.device, rt.dtype))
        return self._shards[key]

    # ------------------------------------------------------------ running a step
    def run(self, schedule: Schedule, tokens):
        """One step: prefill (tokens (b, s)) or decode (tokens (b, 1)) on TP ranks that
        embed; None elsewhere.  Returns the sampled tokens (b,) where the schedule samples
        them (FA Pool base, static first and last stages), else None."""
        self.sch = schedule
        if schedule.step == 0:
            self.cache, self.cache_rows = {}, schedule.rows
        elif self.cache_rows != schedule.rows:         # decode on another micro-batch count
            self.cache = regroup(self.cache, self.cache_rows, schedule.rows)
            self.cache_rows = schedule.rows
        self.unit = schedule.unit_of(self.rank)
        self.tp_unit = len(self.unit.ranks) > 1 or self.unit.role != "pool"
        self.lane = self.unit.ranks.index(self.rank) if self.tp_unit else 0
        if self.tp_unit:
            tp = len(self.unit.ranks)
            self.lw, self.wqkv, self.emb, self.head, self.norm_f = self.shard(tp, self.lane)
            self.tp_group = self.groups.by_ranks.get(self.unit.ranks)
        self.tokens = tokens
        self.st: dict = {}              # per-step state: (name, layer, mb) -> tensor
        self.works: dict = {}           # (label, layer, mb, lane, peer) -> (work, tensor)
        self.out_tokens = None
        spans = self.recorder.spans if self.recorder.timeline else None
        self.prog = schedule.rank_program(self.rank)
        for at, (op, lane, peer) in enumerate(self.prog):
            self.at = at                  # pack_qkv looks at the posts that follow
            if spans is None:
                self.step_op(op, lane, peer)
                continue
            t0 = time.perf_counter()
            self.step_op(op, lane, peer)
            spans.append((op.kind, op.label, op.layer, op.mb, t0, time.perf_counter()))
        return self.out_tokens

    def step_op(self, op: Op, lane: int, peer) -> None:
        tm = self.rt.timer
        if op.kind in COMPUTE:
            with tm.op(op.kind, **dict(op.params)):
                what = getattr(self, f"c_{op.label}")(op)
            self.recorder.add(op, tuple(sorted(what)) if op.kind != "memory" else
                              (("bytes", op.param("bytes")),))
        elif op.kind in COLLECTIVES:
            key = (REDUCES.get(op.label, op.label), op.layer, op.mb)
            t = self.st[key]
            with tm.op(op.kind, comm=True, bytes=t.numel() * t.element_size(),
                       ranks=len(self.unit.ranks), link=self.rt.link(self.unit.ranks)):
                out = self._collective(op, t)
            self.st[key] = out
            self.recorder.add(op, (tuple(t.shape), t.numel() * t.element_size(),
                                   self.unit.ranks))
            if op.label == "logits":
                self.sample()
        elif op.kind == "wait":
            work, t, receiving = self.works.pop((op.label, op.layer, op.mb, lane, peer))
            with tm.op("wait", comm=True):
                work.wait()
            if receiving:
                self._received(op, lane, peer, t)
            self.recorder.add(op, (peer,))
        else:
            t = self._message(op, lane, peer)
            self.recorder.add(op, (tuple(t.shape), t.numel() * t.element_size(), peer))

    # ------------------------------------------------------------ communication
    def _dtype(self, op: Op) -> torch.dtype:
        if op.label == "token":
            return torch.long
        return self.rt.dtype if op.dtype_bytes == self.rt.dtype.itemsize else torch.float32

    def _collective(self, op: Op, t: torch.Tensor) -> torch.Tensor:
        if op.kind == "all_reduce":
            dist.all_reduce(t, group=self.tp_group)
            return t
        parts = [torch.empty_like(t) for _ in self.unit.ranks]       # all_gather
        dist.all_gather(parts, t.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=-1)

    def _message(self, op: Op, lane: int, peer) -> torch.Tensor:
        """Post or run one message (or this rank's side of a broadcast)."""
        tm, tag = self.rt.timer, self.sch.tag(op, lane)
        sends = op.kind in ("isend", "send") or (op.group and peer[0] == self.rank)
        packed = self.st.pop(("packed", op.label, op.layer, op.mb, lane, peer), None)
        t = (packed if packed is not None else self._payload(op, lane, peer).contiguous()
             if sends else torch.empty(op.shape, dtype=self._dtype(op), device=self.rt.device))
        link = self.rt.link(peer if op.group else (self.rank, peer))
        params = dict(bytes=t.numel() * t.element_size(),
                      ranks=len(peer) if op.group else 2, link=link)
        with tm.op(op.kind, comm=True, **params):
            if op.group:
                work = dist.broadcast(t, src=peer[0], group=self.groups.by_ranks[peer],
                                      async_op=op.kind == "ibroadcast")
            elif op.kind == "isend":
                work = dist.isend(t, dst=peer, tag=tag)
            elif op.kind == "irecv":
                work = dist.irecv(t, src=peer, tag=tag)
            elif op.kind == "send":
                work = dist.send(t, dst=peer, tag=tag)
            else:
                work = dist.recv(t, src=peer, tag=tag)
        if op.kind in ("isend", "irecv", "ibroadcast"):
            self.works[op.label, op.layer, op.mb, lane, peer] = (work, t, not sends)
        elif not sends:
            self._received(op, lane, peer, t)
        return t

    def _payload(self, op: Op, lane: int, peer) -> torch.Tensor:
        """The tensor this rank sends for op on lane (see planner.schedule's data path)."""
        L, mb = op.layer, op.mb
        if op.label == "act":
            return self.st["x", -1, mb]
        if op.label == "token":
            return self.out_tokens
        if op.label == "out":
            self._out_payload(L, mb, lane)
            return self.st["out_payload", L, mb, lane]
        q, k, v = (self.st[n, L, mb] for n in ("q", "k", "v"))
        kv = torch.stack([k, v])                                     # (2, n, q, kvl, d)
        if self.sch.phase == "prefill":
            if op.label == "kv":
                return kv
            p = self._pool_index(peer)
            return torch.cat([q[:, a:e] for a, e in self.sch.q_blocks[p]], dim=1)
        if op.group or self.sch.layout.strategy.decode_kv == "split-seq":
            return q if op.label == "q" else kv                      # every row
        r0, r1 = self.sch.pool_rows(mb)[self._pool_index(peer)]
        return q[r0:r1] if op.label == "q" else kv[:, r0:r1]

    def _pool_index(self, peer) -> int:
        return self.sch.layout.pool_ranks.index(peer)

    def _received(self, op: Op, lane: int, peer, t: torch.Tensor) -> None:
        """Keep what arrived: by label, layer, micro-batch and lane."""
        if op.label in ("act",):
            self.st["x", -1, op.mb] = t
        elif op.label == "token":
            self.out_tokens = t
        elif op.label == "out" and self.tp_unit:
            self.st.setdefault(("got_out", op.layer, op.mb), []).append(t)
        elif op.label == "out":
            self.st.setdefault(("child_out", op.layer, op.mb, lane), []).append(t)
        elif op.kind in ("recv", "broadcast", "irecv"):
            self.st.setdefault((op.label + "_parts", op.layer, op.mb), {})[lane] = t
            if op.label == "kv" and self._all_kv(op):
                self._kv_arrived(op.layer, op.mb)

    # ------------------------------------------------------------ TP unit compute
    def c_embedding(self, op: Op):
        a, b, table = self.emb
        r0, r1 = self.sch.rows[op.mb]
        tok = self.tokens[r0:r1]                                      # (n, q)
        if len(self.unit.ranks) == 1:
            x = table[tok]
        else:                       # vocab-parallel (Megatron): rows outside the shard -> 0
            inside = (tok >= a) & (tok < b)
            x = table[(tok - a).clamp(0, max(b - a - 1, 0))] * inside[..., None]
        self.st["x", -1, op.mb] = x              # (n, q, hidden): partial sum if tp > 1

    def c_norm1(self, op: Op):
        self.st["h", op.layer, op.mb] = norm(self.st["x", -1, op.mb],
                                             self.lw[op.layer].norm1, self.spec.norm)

    def c_qkv_proj(self, op: Op):
        lw, h, d = self.lw[op.layer], self.st["h", op.layer, op.mb], self.spec.head_dim
        n, s, _ = h.shape
        w = self.wqkv[op.layer]
        qkv = (h @ w).view(n, s, -1, d)                     # (n, s, hl + 2 kvl, d)
        hl, kvl = lw.wq.shape[1] // d, lw.wk.shape[1] // d
        for name, t in zip(("q", "k", "v"), qkv.split([hl, kvl, kvl], dim=2)):
            self.st[name, op.layer, op.mb] = t
        return (("tokens", n * s), ("k", h.shape[-1]), ("n", w.shape[1]))

    def c_attention(self, op: Op):
        L, mb = op.layer, op.mb
        q, k, v = (self.st[n, L, mb] for n in ("q", "k", "v"))
        if self.sch.phase == "prefill":
            if self.rt.decode_steps > 0:
                self.cache[L, mb] = KVCache(k, v, k.shape[1] + self.rt.decode_steps)
            out = attention.causal_block(q, k, v)
            kv_len = k.shape[1]
        else:
            cache = self.cache[L, mb]
            cache.append(k, v)
            out = attention.decode_full(q, cache.k, cache.v, cache.len)
            kv_len = cache.len
        self.st["att", L, mb] = out
        return _attn_what(q, k, kv_len)

    def c_pack_qkv(self, op: Op):
        """Every message this (layer, micro-batch) posts next, packed contiguous now."""
        for nxt, lane, peer in self.prog[self.at + 1:]:
            if nxt.kind not in POSTS or (nxt.layer, nxt.mb) != (op.layer, op.mb):
                break
            if nxt.kind == "irecv":
                continue
            self.st["packed", nxt.label, op.layer, op.mb, lane, peer] = self._payload(
                nxt, lane, peer).contiguous()

    def c_unpack_out(self, op: Op):
        L, mb = op.layer, op.mb
        if self.sch.phase == "decode" and self.sch.layout.strategy.decode_kv == "split-seq":
            return                                        # att[mb] set by lse_merge
        parts = self.st.pop(("got_out", L, mb))
        if self.sch.phase == "decode":
            self.st["att", L, mb] = torch.cat(parts, dim=0)           # rows in pool order
            return
        got = torch.cat(parts, dim=1)                     # (n, sum of blocks, hl, d)
        q = self.st["q", L, mb]
        out = torch.empty_like(q)
        off = 0
        for segs in self.sch.q_blocks:                    # blocks back in sequence order
            for a, e in segs:
                out[:, a:e] = got[:, off:off + e - a]
                off += e - a
        self.st["att", L, mb] = out

    def c_lse_merge(self, op: Op):
        got = torch.cat(self.st.pop(("got_out", op.layer, op.mb)), dim=0)  # (P, n, 1, hl, d+1)
        d = self.spec.head_dim
        out = attention.merge_partials(got[..., :d], got[:, :, 0, :, d])
        self.st["att", op.layer, op.mb] = out.to(self.rt.dtype)

    def c_out_proj(self, op: Op):
        o, lw = self.st["att", op.layer, op.mb], self.lw[op.layer]
        n, s = o.shape[:2]
        self.st["attn_out", op.layer, op.mb] = o.reshape(n, s, -1) @ lw.wo
        return (("tokens", n * s), ("k", lw.wo.shape[0]), ("n", lw.wo.shape[1]))

    def c_residual_attn(self, op: Op):
        y = self.st["attn_out", op.layer, op.mb]
        self.rt.keep(("attn", op.layer, self.sch.step), y)
        self.st["x", -1, op.mb] = self.st["x", -1, op.mb] + y

    def c_norm2(self, op: Op):
        self.st["h2", op.layer, op.mb] = norm(self.st["x", -1, op.mb],
                                              self.lw[op.layer].norm2, self.spec.norm)

    def c_ffn(self, op: Op):
        lw, h = self.lw[op.layer], self.st["h2", op.layer, op.mb]
        self.st["ffn_out", op.layer, op.mb] = ffn_partial(h, lw.w_up, lw.w_gate, lw.w_down,
                                                          self.spec.activation)
        return (("tokens", h.shape[0] * h.shape[1]), ("ffn_shard", lw.w_up.shape[1]))

    def c_residual_ffn(self, op: Op):
        self.st["x", -1, op.mb] = self.st["x", -1, op.mb] + self.st["ffn_out", op.layer, op.mb]

    def c_final_norm(self, op: Op):
        xs = torch.cat([self.st["x", -1, mb] for mb in range(len(self.sch.rows))])
        x = xs if self.rt.record else xs[:, -1:]          # --verify: every position
        self.st["hf", -1, 0] = norm(x, self.norm_f, self.spec.norm)

    def c_lm_head(self, op: Op):
        h = self.st["hf", -1, 0]                                      # (b, pos, hidden)
        self.st["logits", -1, 0] = (h @ self.head).float()            # (b, pos, cols)
        if len(self.unit.ranks) == 1:
            self.sample()                                 # else after the all-gather
        return (("tokens", h.shape[0] * h.shape[1]), ("k", h.shape[-1]),
                ("n", self.head.shape[1]))

    def sample(self) -> None:
        """Greedy next token from the (gathered) logits: identical on every lane."""
        logits = self.st["logits", -1, 0][..., :self.spec.vocab]       # (b, pos, vocab)
        self.rt.keep(("logits", self.sch.step), logits)
        self.out_tokens = logits[:, -1].argmax(-1)

    # ------------------------------------------------------------ pool compute
    def _all_kv(self, op: Op) -> bool:
        got = self.st[("kv_parts", op.layer, op.mb)]
        return len(got) == len(op.lanes)

    def _kv_arrived(self, L: int, mb: int) -> None:
        """All lanes' K/V of (layer, mb) are here: assemble the heads and keep them."""
        parts = self.st.pop(("kv_parts", L, mb))
        kv = torch.cat([parts[ln] for ln in sorted(parts)], dim=3)    # (2, n, s, KV, d)
        strategy, steps = self.sch.layout.strategy, self.rt.decode_steps
        p = self._pool_index(self.rank)
        if self.sch.phase == "prefill":
            self.st["kv", L, mb] = kv
            if steps <= 0:
                return
            if strategy.decode_kv == "split-seq":
                segs = self.sch.q_blocks[p]
                k = torch.cat([kv[0, :, a:e] for a, e in segs], dim=1)
                v = torch.cat([kv[1, :, a:e] for a, e in segs], dim=1)
                self.cache[L, mb] = KVCache(k, v, self.sch.seq_capacity(p, steps))
            else:
                r0, r1 = (self.sch.pool_rows(mb)[p] if strategy.decode_kv == "split-batch"
                          else (0, kv.shape[1]))
                self.cache[L, mb] = KVCache(kv[0, r0:r1], kv[1, r0:r1], kv.shape[2] + steps)
        else:
            self.cache[L, mb].append(kv[0], kv[1])

    def _q(self, L: int, mb: int) -> torch.Tensor:
        if ("q", L, mb) not in self.st:
            parts = self.st.pop(("q_parts", L, mb))
            self.st["q", L, mb] = torch.cat([parts[ln] for ln in sorted(parts)], dim=2)
        return self.st["q", L, mb]

    def c_pool_assemble(self, op: Op):
        if ("q_parts", op.layer, op.mb) in self.st:
            self._q(op.layer, op.mb)

    def c_pool_attention(self, op: Op):
        L, mb = op.layer, op.mb
        q = self._q(L, mb)                                  # (n, ext | rows, H, d)
        if self.sch.phase == "prefill":
            kv = self.st["kv", L, mb]
            done = self.st.setdefault(("att_parts", L, mb), [])
            off = sum(t.shape[1] for t in done)
            end = op.param("kv_len")
            qs = q[:, off:off + op.param("q_len")]
            done.append(attention.causal_block(qs, kv[0, :, :end], kv[1, :, :end]))
            return _attn_what(qs, kv[0], end)
        cache = self.cache[L, mb]
        if self.sch.layout.strategy.decode_kv == "split-seq":
            out, lse = attention.decode_partial(q, cache.k, cache.v, cache.len)
            self.st["partial", L, mb] = (out, lse)
            return _attn_what(q, cache.k, cache.len)
        p = self._pool_index(self.rank)
        r0, r1 = (0, q.shape[0]) if self.sch.layout.strategy.decode_kv == "split-batch" \
            else self.sch.pool_rows(mb)[p]
        out = attention.decode_full(q.contiguous(), cache.k[r0:r1], cache.v[r0:r1], cache.len)
        self.st["att_parts", L, mb] = [out]
        return _attn_what(q, cache.k, cache.len)

    def _own_out(self, L: int, mb: int, lane: int):
        """This pool GPU's output heads of a lane, or None if it computed nothing."""
        hl = self.spec.heads // self.sch.layout.strategy.base_tp
        heads = slice(lane * hl, (lane + 1) * hl)
        if ("partial", L, mb) in self.st:
            out, lse = self.st["partial", L, mb]            # (n, 1, H, d), (n, H)
            return torch.cat([out[:, :, heads], lse[:, None, heads, None]], dim=-1)[None]
        parts = self.st.get(("att_parts", L, mb))
        if not parts:
            return None
        own = torch.cat(parts, dim=1)                       # (n | rows, ext | 1, H, d)
        return own[:, :, heads]

    def c_out_pack(self, op: Op):
        for lane in range(self.sch.layout.strategy.base_tp):
            self._out_payload(op.layer, op.mb, lane)

    def _out_payload(self, L: int, mb: int, lane: int) -> None:
        key = ("out_payload", L, mb, lane)
        if key in self.st:
            return
        own = self._own_out(L, mb, lane)
        dim = 1 if self.sch.phase == "prefill" else 0
        parts = ([own] if own is not None else []) + self.st.pop(("child_out", L, mb, lane), [])
        self.st[key] = torch.cat(parts, dim=dim).contiguous()


def _attn_what(q: torch.Tensor, k: torch.Tensor, kv_len: int) -> tuple:
    return (("batch", q.shape[0]), ("q_len", q.shape[1]), ("kv_len", kv_len),
            ("heads", q.shape[2]), ("kv_heads", k.shape[-2]), ("head_dim", q.shape[3]))


def _to(lw, rt):
    return replace(lw, **{k: (None if v is None else v.to(rt.device, rt.dtype))
                          for k, v in lw.__dict__.items()})

