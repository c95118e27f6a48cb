"""Static baseline: Megatron TP inside each pipeline stage, stages in a GPipe-style forward
pipeline over micro-batches (Huang et al. 2019), on the same model code as FA Pool
(executor.fapool.TPRank).  Stage s TP rank i exchanges activations with stage s+1 TP rank i
(every TP rank holds the full activation after the row-parallel all-reduce).  The last
stage samples the next token and sends it back to the first, so a decode step really waits
for the previous one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from executor.fapool import TPRank
from executor.model import lm_head
from executor.parallel import embed_timed
from executor.runtime import Runtime

ACT, TOKEN = 0, 1


class StageRank(TPRank):
    def __init__(self, rt: Runtime, weights):
        info = rt.groups.info
        self.stage = info.stage
        self.pp = rt.plan.strategy.pp
        super().__init__(rt, weights, rt.plan.layout.stage_layers(self.stage),
                         rt.groups.tp_ranks, rt.groups.tp)
        self.index = info.index
        stages = rt.groups.stage_ranks
        self.prev = stages[self.stage - 1][self.index] if self.stage > 0 else None
        self.next = stages[self.stage + 1][self.index] if self.stage < self.pp - 1 else None
        self.first = stages[0][self.index]
        self.last = stages[-1][self.index]

    def _p2p(self, t: torch.Tensor, peer: int) -> dict:
        return dict(bytes=t.numel() * t.element_size(), ranks=2, link=self.rt.link((self.rank,
                                                                                    peer)))

    @property
    def rank(self) -> int:
        return self.rt.groups.rank

    def step(self, tokens, step: int):
        """tokens (b, s) on the first stage (None elsewhere); returns the next token (b,)
        on the first and last stages, None in between."""
        rt, spec, tm = self.rt, self.rt.spec, self.rt.timer
        q_len = rt.seq_len if step == 0 else 1
        sends, outs = [], []
        for j, rows in enumerate(rt.mb_rows):
            if self.prev is None:
                x = embed_timed(tokens[rows.start:rows.stop], self.weights, tm)
            else:
                x = torch.empty(len(rows), q_len, spec.hidden, dtype=rt.dtype, device=rt.device)
                with tm.op("send_recv", comm=True, **self._p2p(x, self.prev)):
                    dist.recv(x, src=self.prev, tag=rt.tag(step, 0, j, ACT))
            for layer in self.layers:
                x = self.layer_local(layer, j, x, step)
            if self.next is not None:
                x = x.contiguous()
                sends.append((dist.isend(x, dst=self.next, tag=rt.tag(step, 0, j, ACT)), x))
            else:
                outs.append(x)
        for work, _ in sends:
            with tm.op("wait_send", comm=True):
                work.wait()
        tok = None
        if self.next is None:
            x = rt.head_input(torch.cat(outs))                     # (b, s or 1, hidden)
            with tm.op("lm_head", tokens=x.shape[0] * x.shape[1], hidden=spec.hidden,
                       vocab=spec.vocab):
                logits = lm_head(x, self.weights, spec)
            tok = self.sample(logits, step)
            if self.pp > 1:
                with tm.op("send_recv", comm=True, **self._p2p(tok, self.first)):
                    dist.send(tok, dst=self.first, tag=rt.tag(step, 0, 0, TOKEN))
        elif self.prev is None:
            tok = torch.empty(rt.batch, dtype=torch.long, device=rt.device)
            with tm.op("send_recv", comm=True, **self._p2p(tok, self.last)):
                dist.recv(tok, src=self.last, tag=rt.tag(step, 0, 0, TOKEN))
        return tok
