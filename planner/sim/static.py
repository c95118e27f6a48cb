"""Static TP x PP: every stage is a TP group running its layers; micro-batches flow through
the stages (GPipe-style inference schedule), so bubbles appear at fill and drain."""

from __future__ import annotations

from functools import lru_cache

from planner.costs import CostModel
from planner.layout import Layout
from planner.sim.engine import Machine, Unit
from planner.sim.ops import embedding_op, layer_ops, lm_head_ops


def static_units(layout: Layout) -> dict:
    units = {}
    for stage in range(layout.strategy.pp):
        ranks = layout.stage_ranks(stage)
        units[f"stage{stage}"] = Unit(f"stage{stage}", "base", ranks, layout.nodes_of(ranks))
    return units


class StaticProgram:
    """The ops of one micro-batch through all stages, for one phase's shapes."""

    def __init__(self, cm: CostModel, layout: Layout):
        self.cm, self.layout = cm, layout
        self.model = layout.model
        self.tp, self.pp = layout.strategy.tp, layout.strategy.pp
        self._ops = lru_cache(maxsize=None)(self._build)

    def _build(self, seqs: int, q_len: int, kv_len: int):
        m, cm, tp = self.model, self.cm, self.tp
        per_stage = []
        for stage in range(self.pp):
            ranks = self.layout.stage_ranks(stage)
            layer = layer_ops(cm, m, tp, ranks, seqs, q_len, kv_len)
            embed = embedding_op(cm, m, tp, ranks, seqs * q_len) if stage == 0 else ()
            head = lm_head_ops(cm, m, tp, ranks, seqs) if stage == self.pp - 1 else ()
            send = ()
            if stage < self.pp - 1:
                act = seqs * q_len * m.hidden * m.dtype_bytes
                send = (cm.transfer("send_activations", act, ranks,
                                    self.layout.stage_ranks(stage + 1)),)
            elif self.pp > 1:   # sampled token ids (int64) back to the first stage's embedding
                send = (cm.transfer("token_return", seqs * 8, ranks, self.layout.stage_ranks(0)),)
            per_stage.append((embed, layer, head, send))
        return per_stage

    def microbatch(self, machine: Machine, mb: int, seqs: int, q_len: int, kv_len: int,
                   done: list):
        """Process: micro-batch mb through the pipeline; appends its finish time to done."""

        def run(ops, units, layer=-1):
            return machine.run_sequence(ops, units, mb, layer)

        for stage, (embed, layer, head, send) in enumerate(self._ops(seqs, q_len, kv_len)):
            unit = [f"stage{stage}"]
            yield from run(embed, unit)
            for index in self.layout.stage_layers(stage):
                yield from run(layer.pre_attention + (layer.attention,), unit, index)
                yield from run(layer.post_attention, unit, index)
            yield from run(head, unit)
            yield from run(send, unit + [f"stage{(stage + 1) % self.pp}"])
        done.append(machine.env.now)
