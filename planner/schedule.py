"""The schedule: the program every unit and rank of a plan runs, derived once, torch-free.

The simulator (planner.sim.run) costs it; the executor (executor.program) executes it; a test
records the executor's operations and holds them against it rank by rank.  Neither side
derives a split, a peer or a message on its own.

Units and lanes.  A *unit* runs in lockstep: a TP group (FA Pool's base, or a static pipeline
stage) or one pool GPU.  Rank i of a TP group is *lane* i.  A unit's program is a list of
`Op`s; a comm op between units names the lanes its messages run on, and `rank_program`
expands a unit's program into one rank's: a TP rank keeps its own lane's message, a pool
GPU (one rank) gets one message per lane, in lane order.

Data path (FA Pool, as both sides run it).  Every base TP rank owns its heads' Q/K/V and
talks to the pool itself; nothing funnels through one rank:
  - prefill, per (layer, micro-batch): base lane i packs its Q heads into one block per pool
    GPU (plain: P blocks of ceil(s / P) rows; balanced: chunks i and 2P-1-i of 2P) and
    `isend`s block p to pool GPU p; it `ibroadcast`s its K/V heads to the whole pool in a
    group of its own ({base lane i} + pool) if it owns them (GQA with TP > kv_heads: the
    first lane of each K/V head sends it); it posts `irecv`s of its heads' outputs from its
    children in a binomial tree rooted at itself over the pool (paper 1.5).  Pool GPU p
    receives every lane's block and K/V, assembles all heads, runs causal attention of its
    block against keys [0, block end) (bottom-right), and sends each lane's heads up that
    lane's tree (receiving its children's first).  The base then waits, unpacks the blocks
    into sequence order and goes on with the output projection.
  - decode (one new token per sequence; the K/V cache stays on the pool):
      split-batch  pool GPU p owns whole sequences (rows dealt as evenly as possible); lane
                   i sends q and (its owned heads') k/v of p's rows to p;
      replicated   every pool GPU keeps all rows: lane i broadcasts the new k/v of all rows
                   and sends q of p's rows to p, which computes only those;
      split-seq    pool GPU p keeps the positions of its prefill block, and the new token
                   of step t goes to pool GPU (t - 1) mod P: lane i broadcasts q, sends the
                   new k/v to that owner; every pool GPU returns a partial output with its
                   log-sum-exp (fp32) up the tree, merged on the base.
  Outputs travel the same per-lane trees (rows, or partials, in member order).

Worked example: base TP 2 (ranks 0, 1) + pool 3 (ranks 2, 3, 4), prefill of one micro-batch
of b rows, seq 10, H heads, KV K/V heads, head_dim d; blocks of ceil(10 / 3) = 4 rows:
pool 2 gets rows [0, 4), pool 3 [4, 8), pool 4 [8, 10).  Tree over members (base lane,
pool 2, pool 3, pool 4) = indices 0..3: children of 0 are 1 and 2, child of 2 is 3.
  rank 0 (lane 0): norm, qkv_proj, pack; isend q (b, 4, H/2, d) to 2, (b, 4, H/2, d) to 3,
      (b, 2, H/2, d) to 4; ibroadcast kv (2, b, 10, KV/2, d) in group (0, 2, 3, 4);
      irecv out (b, 4, H/2, d) from 2 and (b, 6, H/2, d) from 3; ... wait all; unpack.
  rank 1 (lane 1): the same with its heads and group (1, 2, 3, 4).
  rank 2 (pool 0): recv q from 0, from 1; broadcast kv from 0, from 1; assemble;
      attention (b, 4 queries, 4 keys, H, KV); send out (b, 4, H/2, d) to 0, then to 1.
  rank 3 (pool 1): recv q from 0, 1; kv from 0, 1; attention (b, 4 queries, 8 keys);
      recv out (b, 2, H/2, d) from 4 for lane 0, then lane 1; send (b, 6, H/2, d) to 0, 1.
  rank 4 (pool 2): recv q, kv; attention (b, 2 queries, 10 keys); send (b, 2, H/2, d) to
      3 for lane 0, then lane 1.
Order: messages between two ranks are issued in the same order on both sides (checked by
`check_message_order`), which is how they match on NCCL, which ignores p2p tags.

Static TP x PP: stage s lane i sends its whole activation (every TP rank holds it after the
row-parallel all-reduce) to stage s+1 lane i; the last stage samples and sends the tokens
back to the first stage's lanes, so a decode step waits for the previous one.

Both: vocab-parallel embedding (rows of ceil(V / tp) per rank, all-reduce) and LM head
(columns of ceil(V / tp), logits all-gathered in fp32) as Megatron does; micro-batch rows
dealt as evenly as possible ([2, 1, 1] for 4 rows in 3), never empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import NamedTuple

from planner.layout import Layout
from planner.memory import kv_shards
from planner.strategy import FAPoolStrategy, StaticStrategy

COMPUTE = ("gemm", "attention", "memory", "ffn")
POSTS = ("isend", "irecv", "ibroadcast")          # non-blocking: completed by a later wait
BLOCKING = ("send", "recv", "broadcast")
COLLECTIVES = ("all_reduce", "all_gather")      # inside one unit (its TP group)
MESSAGES = ("q", "kv", "out", "act", "token")     # labels of messages between units
LOGIT_BYTES = 4                                   # logits gathered in fp32
TOKEN_BYTES = 8                                   # sampled token ids (int64)


# ------------------------------------------------------------------ splits
def deal(total: int, parts: int) -> list:
    """total items dealt to parts as evenly as possible (first ones get the extra)."""
    per, extra = divmod(total, parts)
    return [per + (1 if i < extra else 0) for i in range(parts)]


def ranges(sizes: list) -> list:
    """Consecutive [start, end) ranges of the given sizes."""
    out, at = [], 0
    for n in sizes:
        out.append((at, at + n))
        at += n
    return out


def microbatch_rows(batch: int, microbatches: int) -> list:
    """[start, end) rows of every micro-batch: min(microbatches, batch) of them, dealt."""
    return ranges(deal(batch, max(1, min(microbatches, batch))))


def query_blocks(seq: int, pool: int, balanced: bool) -> list:
    """Per pool GPU, the [start, end) query segments it computes in prefill.
    Plain: P blocks of ceil(seq / P) (paper 1.4), short or empty ones at the tail.
    Balanced (head-tail): 2P chunks of ceil(seq / 2P); GPU i takes chunks i and 2P-1-i, so
    causal work is even (the zig-zag split of ring-attention implementations)."""
    def cut(parts):
        c = math.ceil(seq / parts)
        return [(min(i * c, seq), min((i + 1) * c, seq)) for i in range(parts)]
    if not balanced:
        return [[blk] for blk in cut(pool)]
    chunks = cut(2 * pool)
    return [[chunks[i], chunks[2 * pool - 1 - i]] for i in range(pool)]


def pool_rows(n: int, pool: int) -> list:
    """Decode (split-batch, replicated): [start, end) rows of an n-row micro-batch that each
    pool GPU owns, dealt as evenly as possible (the last ones may own none)."""
    return ranges(deal(n, pool))


def extent(segments) -> int:
    return sum(e - a for a, e in segments)


def seq_owner(step: int, pool: int) -> int:
    """split-seq: the pool GPU that keeps the K/V of decode step `step` (round-robin)."""
    return (step - 1) % pool


def split_seq_len(seq: int, pool: int, balanced: bool, p: int, step: int) -> int:
    """split-seq: keys pool GPU p holds after decode step `step` has appended its token."""
    own = extent(query_blocks(seq, pool, balanced)[p])
    return own + sum(1 for t in range(1, step + 1) if seq_owner(t, pool) == p)


def tree_children(idx: int, n: int) -> list:
    """Binomial tree over members 0..n (0 = root): children of idx, in member order."""
    out, step = [], 1
    while (idx == 0 or idx % (2 * step) == 0) and idx + step <= n:
        out.append(idx + step)
        step *= 2
    return out


def tree_parent(idx: int) -> int:
    return idx - (idx & -idx)


def subtree(idx: int, n: int) -> range:
    """Members whose payload idx forwards (itself and its descendants)."""
    return range(idx, min(idx + (idx & -idx), n + 1)) if idx else range(0, n + 1)


def kv_lanes(model, tp: int) -> tuple:
    """TP lanes that send K/V to the pool: every lane when tp divides kv_heads, else the
    first lane of each group sharing one K/V head (each head sent once)."""
    if tp <= model.kv_heads:
        return tuple(range(tp))
    share = tp // model.kv_heads
    return tuple(range(0, tp, share))


def local_kv_heads(model, tp: int) -> int:
    return max(1, model.kv_heads // kv_shards(model, tp))


# ------------------------------------------------------------------ ops
class Op(NamedTuple):
    """One operation of a unit's program.

    kind: "gemm" | "attention" | "memory" | "ffn" (compute, params give the cost shape),
          "all_reduce" | "all_gather" (collective inside the unit),
          "isend" | "irecv" | "ibroadcast" (posted; a later "wait" completes it),
          "send" | "recv" | "broadcast" (blocking), "wait".
    label: what it is (qkv_proj, q_block, kv, out, ...); with layer, mb and the peer it
          names the message, so a wait finds its post and both ends find each other.
    shape / dtype_bytes: the tensor of ONE lane (one rank's message / one rank's compute).
    peer: the other unit of a p2p op; for (i)broadcast, the root unit.
    group: units of a cross-unit broadcast, root first.
    lanes: lanes the op's messages run on (comm between units).
    """

    kind: str
    label: str
    layer: int = -1
    mb: int = 0
    shape: tuple = ()
    dtype_bytes: int = 0
    peer: str = ""
    group: tuple = ()
    lanes: tuple = ()
    params: tuple = ()
    # (a NamedTuple, not a frozen dataclass: schedules build tens of thousands of ops per
    # simulation, and a tuple is built 3x faster)

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * self.dtype_bytes if self.shape else 0

    @property
    def key(self) -> tuple:
        """Identifies a message (or collective) for both ends: label, layer, micro-batch."""
        return (self.label, self.layer, self.mb)

    def param(self, name: str):
        return dict(self.params)[name]


def compute(op_kind: str, label: str, layer: int, mb: int, **params) -> Op:
    """A compute op; params are its cost shape, named as the store keys them."""
    return Op(op_kind, label, layer, mb, params=tuple(sorted(params.items())))


@dataclass(frozen=True)
class Unit:
    name: str
    role: str            # "base" | "pool" | "stage"
    ranks: tuple


@dataclass(frozen=True)
class Schedule:
    """Programs of every unit for one pass: prefill (step 0) or decode step `step`."""
    layout: Layout
    phase: str
    step: int
    rows: tuple          # [start, end) rows of each micro-batch
    q_len: int
    kv_len: int          # keys each new query attends (after this step's append)
    pool: int
    units: dict          # name -> Unit
    programs: dict       # unit name -> tuple of Op
    balanced: bool = False
    _rank_programs: dict = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def q_blocks(self) -> list:
        """Prefill: the query segments of every pool GPU (query_blocks)."""
        return query_blocks(self.q_len, self.pool, self.balanced) if self.pool else []

    def pool_rows(self, mb: int) -> list:
        """Decode: the rows of micro-batch mb each pool GPU owns (pool_rows)."""
        r0, r1 = self.rows[mb]
        return pool_rows(r1 - r0, self.pool)

    def seq_capacity(self, p: int, steps: int) -> int:
        """split-seq: keys pool GPU p holds once `steps` decode steps have appended."""
        return split_seq_len(self.q_len if self.step == 0 else self.kv_len - self.step,
                             self.pool, self.balanced, p, steps)

    @cached_property
    def cost_classes(self) -> tuple:
        """(representatives, index): ops that cost the same (equal but for layer and
        micro-batch, on the same unit) share a class; representatives[c] = (op, unit) and
        index[unit][i] = the class of the unit's i-th op.  The simulator costs each class
        once per profile."""
        reps, seen, index = [], {}, {}
        for unit, program in self.programs.items():
            row = []
            for op in program:
                key = (unit, op.kind, op.label, op.shape, op.dtype_bytes, op.peer, op.group,
                       op.lanes, op.params)
                if key not in seen:
                    seen[key] = len(reps)
                    reps.append((op, unit))
                row.append(seen[key])
            index[unit] = row
        return tuple(reps), index

    def unit_of(self, rank: int) -> Unit:
        return next(u for u in self.units.values() if rank in u.ranks)

    def tag(self, op: Op, lane: int) -> int:
        """A p2p tag unique within a step per (label, layer, micro-batch, lane), for
        backends that match by tag (gloo); NCCL matches by issue order alone."""
        width = max(len(u.ranks) for u in self.units.values())
        slot = ((op.layer + 1) * len(self.rows) + op.mb) * len(MESSAGES) + MESSAGES.index(
            op.label)
        return slot * width + lane

    def rank_program(self, rank: int) -> list:
        """(op, lane, peer rank or group ranks) for every operation rank `rank` issues."""
        if rank not in self._rank_programs:
            self._rank_programs[rank] = self._expand(rank)
        return self._rank_programs[rank]

    def _expand(self, rank: int) -> list:
        unit = self.unit_of(rank)
        lane = unit.ranks.index(rank)
        out = []
        for op in self.programs[unit.name]:
            if op.kind in COMPUTE or op.kind in COLLECTIVES:
                out.append((op, lane, unit.ranks))
                continue
            lanes = op.lanes if len(unit.ranks) == 1 else [lane] if lane in op.lanes else []
            for ln in lanes:
                out.append((op, ln, self.peer_ranks(op, ln)))
        return out

    def peer_ranks(self, op: Op, lane: int):
        """The peer rank of a p2p op on a lane, or the group's ranks of a broadcast."""
        def rank_of(unit_name):
            ranks = self.units[unit_name].ranks
            return ranks[lane] if len(ranks) > 1 else ranks[0]
        if op.group:
            return tuple(rank_of(u) for u in op.group)
        return rank_of(op.peer)


# ------------------------------------------------------------------ building
def fapool_units(layout: Layout, pool: int) -> dict:
    units = {"base": Unit("base", "base", tuple(layout.base_ranks))}
    for p, rank in enumerate(layout.pool_ranks[:pool]):
        units[f"pool{p}"] = Unit(f"pool{p}", "pool", (rank,))
    return units


def static_units(layout: Layout) -> dict:
    return {f"stage{s}": Unit(f"stage{s}", "stage", tuple(layout.stage_ranks(s)))
            for s in range(layout.strategy.pp)}


class _Builder:
    """Appends ops to unit programs; shapes are one lane's."""

    def __init__(self, layout: Layout, tp: int, rows: list, q_len: int, kv_len: int,
                 step: int, all_positions: bool):
        self.layout, self.model, self.tp = layout, layout.model, tp
        self.rows, self.q, self.kv, self.step = rows, q_len, kv_len, step
        self.all_positions = all_positions
        self.d = self.model.dtype_bytes
        self.hl = self.model.heads // tp                       # query heads per lane
        self.kvl = local_kv_heads(self.model, tp)              # K/V heads per lane
        self.programs: dict = {}
        self.posted: dict = {}                  # (unit, layer, mb) -> ops posted, in order

    def emit(self, unit: str, op: Op) -> None:
        self.programs.setdefault(unit, []).append(op)
        if op.kind in POSTS:
            self.posted.setdefault((unit, op.layer, op.mb), []).append(op)

    def wait_all(self, unit: str, layer: int, mb: int) -> None:
        """A wait for every op the unit posted for (layer, mb), in posting order."""
        for op in self.posted.pop((unit, layer, mb), []):
            self.emit(unit, Op("wait", op.label, layer, mb, op.shape, op.dtype_bytes,
                               peer=op.peer, group=op.group, lanes=op.lanes))

    def n(self, mb: int) -> int:
        return self.rows[mb][1] - self.rows[mb][0]

    # ---- the TP group's own ops (Megatron column / row parallel)
    def embedding(self, unit: str, mb: int) -> None:
        m, tokens = self.model, self.n(mb) * self.q
        self.emit(unit, compute("memory", "embedding", -1, mb, kind="copy",
                                bytes=2 * tokens * m.hidden * self.d))
        if self.tp > 1:
            self.emit(unit, Op("all_reduce", "embedding", -1, mb,
                               (self.n(mb), self.q, m.hidden), self.d))

    def pre_attention(self, unit: str, layer: int, mb: int) -> None:
        m, tokens = self.model, self.n(mb) * self.q
        self.emit(unit, compute("memory", "norm1", layer, mb, kind="norm",
                                bytes=2 * tokens * m.hidden * self.d))
        self.emit(unit, compute("gemm", "qkv_proj", layer, mb, tokens=tokens, k=m.hidden,
                                n=(self.hl + 2 * self.kvl) * m.head_dim,
                                dtype_bytes=self.d))

    def local_attention(self, unit: str, layer: int, mb: int) -> None:
        m = self.model
        self.emit(unit, compute("attention", "attention", layer, mb, batch=self.n(mb),
                                q_len=self.q, kv_len=self.kv, heads=self.hl,
                                kv_heads=self.kvl, head_dim=m.head_dim, causal=self.q > 1,
                                dtype_bytes=self.d))

    def post_attention(self, unit: str, layer: int, mb: int) -> None:
        m, n = self.model, self.n(mb)
        tokens = n * self.q
        act = 2 * tokens * m.hidden * self.d
        self.emit(unit, compute("gemm", "out_proj", layer, mb, tokens=tokens,
                                k=self.hl * m.head_dim, n=m.hidden, dtype_bytes=self.d))
        if self.tp > 1:
            self.emit(unit, Op("all_reduce", "attn_out", layer, mb, (n, self.q, m.hidden),
                               self.d))
        self.emit(unit, compute("memory", "residual_attn", layer, mb, kind="copy",
                                bytes=3 * act // 2))
        self.emit(unit, compute("memory", "norm2", layer, mb, kind="norm", bytes=act))
        self.emit(unit, compute("ffn", "ffn", layer, mb, tokens=tokens, hidden=m.hidden,
                                ffn_shard=m.ffn // self.tp, activation=m.activation,
                                dtype_bytes=self.d))
        if self.tp > 1:
            self.emit(unit, Op("all_reduce", "ffn_out", layer, mb, (n, self.q, m.hidden),
                               self.d))
        self.emit(unit, compute("memory", "residual_ffn", layer, mb, kind="copy",
                                bytes=3 * act // 2))

    def lm_head(self, unit: str) -> None:
        """Final norm and the vocab-parallel LM head of every row (last position only,
        unless all_positions: --verify compares every position's logits)."""
        m = self.model
        rows = self.rows[-1][1] - self.rows[0][0]
        pos = self.q if self.all_positions else 1
        cols = math.ceil(m.vocab / self.tp)
        self.emit(unit, compute("memory", "final_norm", -1, 0, kind="norm",
                                bytes=2 * rows * pos * m.hidden * self.d))
        self.emit(unit, compute("gemm", "lm_head", -1, 0, tokens=rows * pos, k=m.hidden,
                                n=cols, dtype_bytes=self.d))
        if self.tp > 1:
            self.emit(unit, Op("all_gather", "logits", -1, 0, (rows, pos, cols), LOGIT_BYTES))


def _tree_ops(b: _Builder, unit: str, label: str, idx: int, pool: int, layer: int, mb: int,
              payload, dtype_bytes: int, units: list) -> None:
    """Pool member idx (1 + pool index) of every lane's tree: receive its children's
    payloads, pack, send the subtree's payload to its parent.  payload(members) -> the
    shape of those members' payloads, or None when they carry nothing."""
    lanes = tuple(range(b.tp))
    got = []
    for c in tree_children(idx, pool):
        shape = payload(subtree(c, pool))
        if shape is not None:
            b.emit(unit, Op("recv", label, layer, mb, shape, dtype_bytes, peer=units[c],
                            lanes=lanes))
            got.append(shape)
    mine = payload(subtree(idx, pool))
    if mine is None:
        return
    if got or b.tp > 1:       # own heads of each lane + children's payloads into one buffer
        nbytes = 2 * math.prod(mine) * dtype_bytes * b.tp
        b.emit(unit, compute("memory", f"{label}_pack", layer, mb, kind="copy", bytes=nbytes))
    b.emit(unit, Op("send", label, layer, mb, mine, dtype_bytes,
                    peer=units[tree_parent(idx)], lanes=lanes))


def _fapool(b: _Builder, strategy: FAPoolStrategy, pool: int) -> None:
    m, tp, d = b.model, b.tp, b.model.head_dim
    lanes, kvl = tuple(range(tp)), kv_lanes(m, tp)
    members = ["base"] + [f"pool{p}" for p in range(pool)]     # tree member index -> unit
    prefill = b.step == 0
    blocks = query_blocks(b.q, pool, strategy.balanced) if pool else []
    mode = strategy.decode_kv

    def decode_rows(mb):                    # rows of the micro-batch each pool GPU owns
        return pool_rows(b.n(mb), pool)

    def submit(layer, mb):
        b.pre_attention("base", layer, mb)
        if not pool:
            b.local_attention("base", layer, mb)
            return
        n = b.n(mb)
        q_bytes = n * b.q * b.hl * d * b.d
        kv_bytes = 2 * n * b.q * b.kvl * d * b.d
        b.emit("base", compute("memory", "pack_qkv", layer, mb, kind="copy",
                               bytes=2 * (q_bytes + kv_bytes)))
        group = tuple(members)
        if prefill:
            for p, segs in enumerate(blocks):
                if extent(segs):
                    b.emit("base", Op("isend", "q", layer, mb, (n, extent(segs), b.hl, d), b.d,
                                      peer=members[1 + p], lanes=lanes))
            b.emit("base", Op("ibroadcast", "kv", layer, mb, (2, n, b.q, b.kvl, d), b.d,
                              peer="base", group=group, lanes=kvl))
        elif mode == "split-seq":
            b.emit("base", Op("ibroadcast", "q", layer, mb, (n, 1, b.hl, d), b.d,
                              peer="base", group=group, lanes=lanes))
            owner = members[1 + seq_owner(b.step, pool)]
            b.emit("base", Op("isend", "kv", layer, mb, (2, n, 1, b.kvl, d), b.d,
                              peer=owner, lanes=kvl))
        else:
            for p, (r0, r1) in enumerate(decode_rows(mb)):
                if r1 > r0:
                    b.emit("base", Op("isend", "q", layer, mb, (r1 - r0, 1, b.hl, d), b.d,
                                      peer=members[1 + p], lanes=lanes))
                    if mode == "split-batch":
                        b.emit("base", Op("isend", "kv", layer, mb, (2, r1 - r0, 1, b.kvl, d),
                                          b.d, peer=members[1 + p], lanes=kvl))
            if mode == "replicated":
                b.emit("base", Op("ibroadcast", "kv", layer, mb, (2, n, 1, b.kvl, d), b.d,
                                  peer="base", group=group, lanes=kvl))
        out_shape, out_bytes = payload_fn(mb)
        for c in tree_children(0, pool):
            shape = out_shape(subtree(c, pool))
            if shape is not None:
                b.emit("base", Op("irecv", "out", layer, mb, shape, out_bytes,
                                  peer=members[c], lanes=lanes))

    def payload_fn(mb):
        """(members -> the shape of their outputs for one lane, or None; dtype bytes)."""
        n = b.n(mb)
        if prefill:
            def shape(ms):
                e = sum(extent(blocks[i - 1]) for i in ms if i)
                return (n, e, b.hl, d) if e else None
            return shape, b.d
        if mode == "split-seq":                       # out and its LSE, fp32, per member
            def shape(ms):
                k = sum(1 for i in ms if i)
                return (k, n, 1, b.hl, d + 1) if k else None
            return shape, 4
        rows = decode_rows(mb)

        def shape(ms):
            r = sum(rows[i - 1][1] - rows[i - 1][0] for i in ms if i)
            return (r, 1, b.hl, d) if r else None
        return shape, b.d

    def finish(layer, mb):
        if pool:
            n = b.n(mb)
            b.wait_all("base", layer, mb)
            if not prefill and mode == "split-seq":
                b.emit("base", compute("memory", "lse_merge", layer, mb, kind="copy",
                                       bytes=2 * pool * n * b.hl * (d + 1) * 4))
            b.emit("base", compute("memory", "unpack_out", layer, mb, kind="copy",
                                   bytes=2 * n * b.q * b.hl * d * b.d))
        b.post_attention("base", layer, mb)

    def serve(p, layer, mb):
        """Pool GPU p's work for one (layer, micro-batch) of the base's requests."""
        unit, n = members[1 + p], b.n(mb)
        if prefill:
            segs = blocks[p]
            if extent(segs):
                b.emit(unit, Op("recv", "q", layer, mb, (n, extent(segs), b.hl, d), b.d,
                                peer="base", lanes=lanes))
            b.emit(unit, Op("broadcast", "kv", layer, mb, (2, n, b.q, b.kvl, d), b.d,
                            peer="base", group=tuple(members), lanes=kvl))
            if tp > 1:
                b.emit(unit, compute("memory", "pool_assemble", layer, mb, kind="copy",
                                     bytes=2 * n * (extent(segs) * m.heads + 2 * b.q *
                                                    m.kv_heads) * d * b.d))
            for s0, s1 in segs:
                if s1 > s0:
                    b.emit(unit, compute("attention", "pool_attention", layer, mb, batch=n,
                                         q_len=s1 - s0, kv_len=s1, heads=m.heads,
                                         kv_heads=m.kv_heads, head_dim=d, causal=True,
                                         dtype_bytes=b.d))
        else:
            r0, r1 = decode_rows(mb)[p]
            mine = r1 - r0
            if mode == "split-seq":
                b.emit(unit, Op("broadcast", "q", layer, mb, (n, 1, b.hl, d), b.d,
                                peer="base", group=tuple(members), lanes=lanes))
                if seq_owner(b.step, pool) == p:
                    b.emit(unit, Op("recv", "kv", layer, mb, (2, n, 1, b.kvl, d), b.d,
                                    peer="base", lanes=kvl))
                rows, keys = n, split_seq_len(b.kv - b.step, pool, strategy.balanced, p,
                                              b.step)
            else:
                if mine:
                    b.emit(unit, Op("recv", "q", layer, mb, (mine, 1, b.hl, d), b.d,
                                    peer="base", lanes=lanes))
                if mode == "split-batch" and mine:
                    b.emit(unit, Op("recv", "kv", layer, mb, (2, mine, 1, b.kvl, d), b.d,
                                    peer="base", lanes=kvl))
                if mode == "replicated":
                    b.emit(unit, Op("broadcast", "kv", layer, mb, (2, n, 1, b.kvl, d), b.d,
                                    peer="base", group=tuple(members), lanes=kvl))
                rows, keys = mine, b.kv
            got_q = n if mode == "split-seq" else mine
            got_kv = {"split-seq": n if seq_owner(b.step, pool) == p else 0,
                      "split-batch": mine, "replicated": n}[mode]
            if tp > 1 and (got_q or got_kv):
                b.emit(unit, compute("memory", "pool_assemble", layer, mb, kind="copy",
                                     bytes=2 * (got_q * m.heads + 2 * got_kv * m.kv_heads)
                                     * d * b.d))
            if rows:
                b.emit(unit, compute("attention", "pool_attention", layer, mb, batch=rows,
                                     q_len=1, kv_len=keys, heads=m.heads, kv_heads=m.kv_heads,
                                     head_dim=d, causal=False, dtype_bytes=b.d))
        shape, nbytes = payload_fn(mb)
        _tree_ops(b, unit, "out", 1 + p, pool, layer, mb, shape, nbytes, members)

    layers = range(m.layers)
    for mb in range(len(b.rows)):
        b.embedding("base", mb)
    # Software pipeline over micro-batches: as soon as micro-batch j's FFN of layer L is
    # done, its attention of layer L+1 is submitted, before j+1's FFN of layer L, so the
    # pool is not idle until the whole layer is done.  The pool serves requests in
    # submission order: (layer, micro-batch).
    for mb in range(len(b.rows)):
        submit(layers[0], mb)
    for layer in layers:
        for mb in range(len(b.rows)):
            finish(layer, mb)
            if layer != layers[-1]:
                submit(layer + 1, mb)
    b.lm_head("base")
    for layer in layers:
        for mb in range(len(b.rows)):
            for p in range(pool):
                serve(p, layer, mb)


def _static(b: _Builder, layout: Layout) -> None:
    m, pp = b.model, layout.strategy.pp
    lanes = tuple(range(b.tp))
    for s in range(pp):
        unit = f"stage{s}"
        for mb in range(len(b.rows)):
            act = (b.n(mb), b.q, m.hidden)
            if s == 0:
                b.embedding(unit, mb)
            else:
                b.emit(unit, Op("recv", "act", -1, mb, act, b.d, peer=f"stage{s - 1}",
                                lanes=lanes))
            for layer in layout.stage_layers(s):
                b.pre_attention(unit, layer, mb)
                b.local_attention(unit, layer, mb)
                b.post_attention(unit, layer, mb)
            if s < pp - 1:
                b.emit(unit, Op("isend", "act", -1, mb, act, b.d, peer=f"stage{s + 1}",
                                lanes=lanes))
        if s < pp - 1:
            for mb in range(len(b.rows)):
                b.wait_all(unit, -1, mb)
        batch = (b.rows[-1][1] - b.rows[0][0],)
        if s == pp - 1:
            b.lm_head(unit)
            if pp > 1:
                b.emit(unit, Op("send", "token", -1, 0, batch, TOKEN_BYTES, peer="stage0",
                                lanes=lanes))
        elif s == 0:
            b.emit(unit, Op("recv", "token", -1, 0, batch, TOKEN_BYTES,
                            peer=f"stage{pp - 1}", lanes=lanes))


def plan_units(layout: Layout, pool: int) -> dict:
    """The units of a layout with `pool` pool GPUs active (FA Pool) or its stages."""
    if isinstance(layout.strategy, FAPoolStrategy):
        return fapool_units(layout, pool)
    return static_units(layout)


@lru_cache(maxsize=4096)
def build_schedule(layout: Layout, rows: tuple, input_len: int, step: int = 0,
                   pool: int | None = None, all_positions: bool = False) -> Schedule:
    """The programs of prefill (step 0: q_len = kv_len = input_len) or of decode step
    `step` >= 1 (one new token per sequence, attending input_len + step keys) for the
    micro-batches `rows` ([start, end) each).  pool: FA Pool GPUs (default: the strategy's
    rule for input_len; the decode steps of a request keep the pool of its prefill)."""
    s = layout.strategy
    q_len, kv_len = (input_len, input_len) if step == 0 else (1, input_len + step)
    if isinstance(s, FAPoolStrategy):
        pool, tp = (s.pool_size(input_len) if pool is None else pool), s.base_tp
    else:
        pool, tp = 0, s.tp
    units = plan_units(layout, pool)
    b = _Builder(layout, tp, list(rows), q_len, kv_len, step, all_positions)
    if isinstance(s, StaticStrategy):
        _static(b, layout)
    else:
        _fapool(b, s, pool)
    programs = {name: tuple(b.programs.get(name, ())) for name in units}
    return Schedule(layout, "prefill" if step == 0 else "decode", step, tuple(rows), q_len,
                    kv_len, pool, units, programs, bool(getattr(s, "balanced", False)))


def check_message_order(schedule: Schedule) -> None:
    """Between every two ranks, messages are posted in the same order on both sides
    (label, layer, micro-batch, bytes), so they match by issue order as NCCL requires.
    Raises AssertionError naming the pair otherwise."""
    sent, received = {}, {}
    ranks = [r for u in schedule.units.values() for r in u.ranks]
    for rank in ranks:
        for op, lane, peer in schedule.rank_program(rank):
            if op.kind in ("isend", "send"):
                sent.setdefault((rank, peer), []).append((op.key, lane, op.bytes))
            elif op.kind in ("irecv", "recv"):
                received.setdefault((peer, rank), []).append((op.key, lane, op.bytes))
    for pair in set(sent) | set(received):
        assert sent.get(pair, []) == received.get(pair, []), (
            f"messages {pair[0]} -> {pair[1]} out of order: {sent.get(pair)} vs "
            f"{received.get(pair)}")
