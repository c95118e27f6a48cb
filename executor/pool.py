"""FA Pool attention (paper 1.2-1.4): the base root hands attention to a pool of ranks.

Prefill: Q is split along the sequence into blocks of ceil(seq / P) (uneven tails; a block
may be empty), sent point-to-point to each pool rank; K/V are replicated to the pool by one
broadcast; each pool rank computes causal attention of its block against keys [0, block
end) (bottom-right mask, executor.attention); the blocks return to the root by a binomial
tree gather, in order.  balanced=True cuts the sequence into 2P chunks and gives pool rank
i chunks i and 2P-1-i (head-tail, as in causal context parallelism) so causal work is even.

Decode (K/V cache on the pool; each step the new token's q/k/v go to the pool):
  split-batch  each pool rank owns whole sequences (rows of the micro-batch);
  replicated   every pool rank keeps all of K/V, work still split by rows;
  split-seq    each pool rank keeps a slice of every sequence (its prefill block; new
               tokens go round-robin); partial outputs are merged by log-sum-exp in fp32.
Members of a pool group: index 0 = base root, index 1 + p = pool rank p.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from executor import attention
from executor.runtime import Runtime, row_ranges

Q_SEND, TREE, KV_SEND = 0, 1, 2


def q_segments(seq: int, parts: int, balanced: bool) -> list:
    """Per pool rank, the [start, end) sequence segments of Q it computes."""
    if not balanced:
        return [[(r.start, r.stop)] for r in row_ranges(seq, parts)]
    chunks = row_ranges(seq, 2 * parts)
    return [[(chunks[i].start, chunks[i].stop),
             (chunks[2 * parts - 1 - i].start, chunks[2 * parts - 1 - i].stop)]
            for i in range(parts)]


def _lowbit(i: int) -> int:
    return i & -i


def tree_children(idx: int, n: int) -> list:
    """Binomial tree over members 0..n (0 = root): children of idx, in member order."""
    out, step = [], 1
    while (idx == 0 or idx % (2 * step) == 0) and idx + step <= n:
        out.append(idx + step)
        step *= 2
    return out


def subtree(idx: int, n: int) -> range:
    """Members whose payload idx forwards (itself and its descendants)."""
    return range(idx, min(idx + _lowbit(idx), n + 1)) if idx else range(0, n + 1)


class TreeGather:
    """Gather per-member payloads to the root along dim, in member order, log2(P) deep.
    extents[m] = size along dim of member m's payload (member 0 = root: 0); shape(ext)
    gives a payload's full shape; zero-size payloads are never sent."""

    def __init__(self, rt: Runtime, members, extents, dim, shape, dtype, tag):
        self.rt, self.members, self.extents = rt, members, extents
        self.dim, self.shape, self.dtype, self.tag = dim, shape, dtype, tag
        self.n = len(members) - 1

    def _size(self, idx: int) -> int:
        return sum(self.extents[m] for m in subtree(idx, self.n) if m)

    def _buffer(self, ext: int) -> torch.Tensor:
        return torch.empty(self.shape(ext), dtype=self.dtype, device=self.rt.device)

    def _bytes(self, t):
        return dict(bytes=t.numel() * t.element_size(), ranks=2,
                    link=self.rt.link(self.members))

    def send_up(self, idx: int, own: torch.Tensor) -> None:
        """Pool member idx: receive its children's payloads, forward all to its parent."""
        parts = [own]
        for c in tree_children(idx, self.n):
            ext = self._size(c)
            if ext:
                buf = self._buffer(ext)
                with self.rt.timer.op("send_recv", comm=True, **self._bytes(buf)):
                    dist.recv(buf, src=self.members[c], tag=self.tag)
                parts.append(buf)
        payload = torch.cat(parts, dim=self.dim).contiguous()
        if payload.shape[self.dim]:
            parent = self.members[idx - _lowbit(idx)]
            with self.rt.timer.op("send_recv", comm=True, **self._bytes(payload)):
                dist.send(payload, dst=parent, tag=self.tag)

    def post(self) -> list:
        """Root: post a receive per child (async); finish() waits and concatenates."""
        posted = []
        for c in tree_children(0, self.n):
            ext = self._size(c)
            if ext:
                buf = self._buffer(ext)
                posted.append((dist.irecv(buf, src=self.members[c], tag=self.tag), buf))
        return posted

    def finish(self, posted: list) -> torch.Tensor:
        bufs = []
        for work, buf in posted:
            with self.rt.timer.op("send_recv", comm=True, **self._bytes(buf)):
                work.wait()
            bufs.append(buf)
        return torch.cat(bufs, dim=self.dim) if bufs else self._buffer(0)


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


class PoolPlanBits:
    """What root and pool ranks both derive for a pool of size P."""

    def __init__(self, rt: Runtime, size: int):
        self.rt, self.size = rt, size
        self.group = rt.groups.pool[size]
        self.members = rt.groups.pool_members[size]
        self.segments = q_segments(rt.seq_len, size, rt.balanced)
        self.kv_mode = rt.plan.strategy.decode_kv
        spec = rt.spec
        self.h, self.kvh, self.d = spec.heads, spec.kv_heads, spec.head_dim

    def q_extent(self, p: int) -> int:
        return sum(b - a for a, b in self.segments[p])

    def rows(self, j: int) -> list:
        return row_ranges(len(self.rt.mb_rows[j]), self.size)

    def owner(self, step: int) -> int:
        """split-seq: pool rank that keeps the K/V of decode step `step` (round-robin)."""
        return (step - 1) % self.size

    def prefill_gather(self, layer: int, j: int, b: int) -> TreeGather:
        """The attention blocks (b, q_extent, H, d) back to the root, along the sequence."""
        return TreeGather(self.rt, self.members, [0] + [self.q_extent(p) for p in
                                                        range(self.size)],
                          1, lambda e: (b, e, self.h, self.d), self.rt.dtype,
                          self.rt.tag(0, layer, j, TREE))

    def decode_gather(self, step: int, layer: int, j: int, b: int) -> TreeGather:
        """Decode outputs back to the root along dim 0: split-seq, one fp32 partial
        (1, b, 1, H, d + 1) per pool rank (out and its LSE); else each rank's rows
        (rows, 1, H, d)."""
        tag = self.rt.tag(step, layer, j, TREE)
        if self.kv_mode == "split-seq":
            return TreeGather(self.rt, self.members, [0] + [1] * self.size, 0,
                              lambda e: (e, b, 1, self.h, self.d + 1), torch.float32, tag)
        return TreeGather(self.rt, self.members, [0] + [len(r) for r in self.rows(j)], 0,
                          lambda e: (e, 1, self.h, self.d), self.rt.dtype, tag)


def pack_bytes(q: torch.Tensor, k: torch.Tensor) -> int:
    """Bytes read + written packing q and k/v (same shape as k) into send buffers."""
    return 2 * (q.numel() + 2 * k.numel()) * q.element_size()


class PoolClient(PoolPlanBits):
    """Runs on the base root: posts the work of one (layer, micro-batch), returns a waiter."""

    def prefill(self, layer: int, j: int, q, k, v):
        """q (b, s, H, d), k/v (b, s, KV, d) -> callable returning out (b, s, H, d)."""
        rt, tm = self.rt, self.rt.timer
        tag = rt.tag(0, layer, j, Q_SEND)
        # pack: each pool rank's Q block (b, ext, H, d) and K/V (2, b, s, KV, d) contiguous
        with tm.op("memory", kind="copy", bytes=pack_bytes(q, k)):
            blocks = {p: torch.cat([q[:, a:e] for a, e in segs], dim=1).contiguous()
                      for p, segs in enumerate(self.segments) if self.q_extent(p)}
            kv = torch.stack([k, v]).contiguous()
        sends = [(dist.isend(blk, dst=self.members[1 + p], tag=tag), blk)
                 for p, blk in blocks.items()]
        with tm.op("broadcast_post", comm=True):      # async: issue only, waited later
            bcast = dist.broadcast(kv, src=self.members[0], group=self.group, async_op=True)
        gather = self.prefill_gather(layer, j, q.shape[0])
        posted = gather.post()

        def wait():
            for work, _ in sends:
                with tm.op("wait_send", comm=True):
                    work.wait()
            with tm.op("wait_broadcast", comm=True):
                bcast.wait()
            blocks = gather.finish(posted)                            # (b, sum ext, H, d)
            # unpack: the blocks back in sequence order
            with tm.op("memory", kind="copy", bytes=2 * q.numel() * q.element_size()):
                out = torch.empty_like(q)
                off = 0
                for segs in self.segments:
                    for a, e in segs:
                        out[:, a:e] = blocks[:, off:off + e - a]
                        off += e - a
            return out
        return wait

    def decode(self, step: int, layer: int, j: int, q, k, v):
        """q (b, 1, H, d), k/v (b, 1, KV, d) -> callable returning out (b, 1, H, d)."""
        rt, tm = self.rt, self.rt.timer
        b = q.shape[0]
        with tm.op("memory", kind="copy", bytes=pack_bytes(q, k)):
            packed = torch.cat([q, k, v], dim=2).contiguous()      # (b, 1, H + 2 KV, d)
        sends, bcast = [], None
        rows = self.rows(j)
        if self.kv_mode == "split-batch":
            for p, r in enumerate(rows):
                if len(r):
                    part = packed[r.start:r.stop].contiguous()
                    sends.append((dist.isend(part, dst=self.members[1 + p],
                                             tag=rt.tag(step, layer, j, KV_SEND)), part))
        else:
            with tm.op("broadcast_post", comm=True):  # async: issue only, waited later
                bcast = dist.broadcast(packed, src=self.members[0], group=self.group,
                                       async_op=True)
        gather = self.decode_gather(step, layer, j, b)
        posted = gather.post()

        def wait():
            for work, _ in sends:
                with tm.op("wait_send", comm=True):
                    work.wait()
            if bcast is not None:
                with tm.op("wait_broadcast", comm=True):
                    bcast.wait()
            got = gather.finish(posted)
            if self.kv_mode != "split-seq":
                return got                                            # (b, 1, H, d)
            with tm.op("lse_merge", parts=self.size):
                out = attention.merge_partials(got[..., :self.d], got[:, :, 0, :, self.d])
            return out.to(q.dtype)
        return wait


class PoolWorker(PoolPlanBits):
    """Runs on pool rank p (member 1 + p): attention of its share, K/V cache kept here."""

    def __init__(self, rt: Runtime, size: int, p: int):
        super().__init__(rt, size)
        self.p, self.idx = p, 1 + p
        self.cache = {}                                               # (layer, mb) -> KVCache

    def prefill(self, layer: int, j: int) -> None:
        rt, tm = self.rt, self.rt.timer
        b, s = len(rt.mb_rows[j]), rt.seq_len
        ext = self.q_extent(self.p)
        q = torch.empty(b, ext, self.h, self.d, dtype=rt.dtype, device=rt.device)
        if ext:
            with tm.op("send_recv", comm=True, bytes=q.numel() * q.element_size(), ranks=2,
                       link=rt.link(self.members)):
                dist.recv(q, src=self.members[0], tag=rt.tag(0, layer, j, Q_SEND))
        kv = torch.empty(2, b, s, self.kvh, self.d, dtype=rt.dtype, device=rt.device)
        with tm.op("broadcast", comm=True, bytes=kv.numel() * kv.element_size(),
                   ranks=len(self.members), link=rt.link(self.members)):
            dist.broadcast(kv, src=self.members[0], group=self.group)
        outs, off = [], 0
        for a, e in self.segments[self.p]:
            with tm.op("attention", batch=b, q_len=e - a, kv_len=e, heads=self.h,
                       kv_heads=self.kvh, head_dim=self.d, causal=True,
                       dtype_bytes=q.element_size()):
                outs.append(attention.causal_block(q[:, off:off + e - a], kv[0, :, :e],
                                                   kv[1, :, :e]))
            off += e - a
        self._keep_cache(layer, j, kv)
        self.prefill_gather(layer, j, b).send_up(self.idx, torch.cat(outs, 1))

    def _keep_cache(self, layer: int, j: int, kv: torch.Tensor) -> None:
        if self.rt.decode_steps <= 0:
            return
        steps = self.rt.decode_steps
        if self.kv_mode == "split-seq":
            k = torch.cat([kv[0, :, a:e] for a, e in self.segments[self.p]], dim=1)
            v = torch.cat([kv[1, :, a:e] for a, e in self.segments[self.p]], dim=1)
            mine = sum(1 for t in range(1, steps + 1) if self.owner(t) == self.p)
            self.cache[(layer, j)] = KVCache(k, v, k.shape[1] + mine)
        else:
            r = (self.rows(j)[self.p] if self.kv_mode == "split-batch"
                 else range(kv.shape[1]))
            self.cache[(layer, j)] = KVCache(kv[0, r.start:r.stop], kv[1, r.start:r.stop],
                                             kv.shape[2] + steps)

    def decode(self, step: int, layer: int, j: int) -> None:
        rt, tm = self.rt, self.rt.timer
        b = len(rt.mb_rows[j])
        rows = self.rows(j)
        mine = rows[self.p]
        width = self.h + 2 * self.kvh
        cache = self.cache[(layer, j)]
        if self.kv_mode == "split-batch":
            if not len(mine):
                return          # no rows here: nothing received, nothing sent
            packed = torch.empty(len(mine), 1, width, self.d, dtype=rt.dtype, device=rt.device)
            with tm.op("send_recv", comm=True, bytes=packed.numel() * packed.element_size(),
                       ranks=2, link=rt.link(self.members)):
                dist.recv(packed, src=self.members[0], tag=rt.tag(step, layer, j, KV_SEND))
        else:
            packed = torch.empty(b, 1, width, self.d, dtype=rt.dtype, device=rt.device)
            with tm.op("broadcast", comm=True, bytes=packed.numel() * packed.element_size(),
                       ranks=len(self.members), link=rt.link(self.members)):
                dist.broadcast(packed, src=self.members[0], group=self.group)
        q, k, v = packed.split([self.h, self.kvh, self.kvh], dim=2)
        gather = self.decode_gather(step, layer, j, b)
        if self.kv_mode == "split-seq":
            if self.owner(step) == self.p:
                cache.append(k, v)
            with self._timed_attention(b, cache.len, q):
                out, lse = attention.decode_partial(q, cache.k, cache.v, cache.len)
            payload = torch.cat([out, lse[:, None, :, None]], dim=-1)[None]  # (1,b,1,H,d+1)
            gather.send_up(self.idx, payload.contiguous())
            return
        cache.append(k, v)
        if self.kv_mode == "split-batch":      # the cache holds exactly this rank's rows
            qm, kc, vc = q, cache.k, cache.v
        else:                                  # replicated: all rows cached, compute mine
            qm = q[mine.start:mine.stop]
            kc, vc = cache.k[mine.start:mine.stop], cache.v[mine.start:mine.stop]
        out = q.new_zeros(0, 1, self.h, self.d)
        if len(mine):
            with self._timed_attention(len(mine), cache.len, q):
                out = attention.decode_full(qm.contiguous(), kc, vc, cache.len)
        gather.send_up(self.idx, out)

    def _timed_attention(self, batch: int, kv_len: int, q: torch.Tensor):
        """Timer op of a decode attention: one query per sequence over kv_len keys."""
        return self.rt.timer.op("attention", batch=batch, q_len=1, kv_len=kv_len,
                                heads=self.h, kv_heads=self.kvh, head_dim=self.d,
                                causal=False, dtype_bytes=q.element_size())
