"""The executor runs exactly the schedule the simulator costs (planner.schedule).

One launch of 4 gloo ranks runs a grid of layouts with the op recorder on; for every rank
and every step (prefill and each decode step), the recorded operations and messages (kind,
label, layer, micro-batch; the tensors' real shapes, bytes and peers; compute shapes read
off the tensors) must equal the schedule's, in order.  A second check: between every two
ranks, messages are issued in the same order on both sides (how NCCL matches them)."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("torch")

from calibration.profile import load_profile  # noqa: E402
from executor.launch import launch  # noqa: E402
from executor.program import expected_row  # noqa: E402
from planner.cluster import resolve_cluster  # noqa: E402
from planner.model import PRESETS  # noqa: E402
from planner.plan import ExecutorSettings, make_plan, save_plan  # noqa: E402
from planner.schedule import build_schedule, check_message_order, microbatch_rows  # noqa: E402
from planner.strategy import FAPoolStrategy, StaticStrategy  # noqa: E402
from planner.workload import Workload  # noqa: E402

TINY = PRESETS["tiny"]                                  # 4 heads, 4 K/V heads
GQA = TINY.with_overrides(kv_heads=2)
MQA = dataclasses.replace(TINY, kv_heads=1, activation="swiglu")
CLUSTER = resolve_cluster("local", profile="dgx-a100")


def fapool(tp, pool, kv="split-batch", mb=1, balanced=False, threshold=8):
    return FAPoolStrategy(base_tp=tp, threshold=threshold, pool_gpus=pool, max_pool=pool,
                          decode_kv=kv, microbatches=mb, balanced=balanced)


# (name, model, strategy, batch, seq, output_len)
GRID = [
    ("static-tp1-pp1", TINY, StaticStrategy(1, 1, microbatches=1), 2, 9, 3),
    ("static-tp2-pp2-mb3", TINY, StaticStrategy(2, 2, microbatches=3), 4, 9, 3),
    ("static-tp1-pp2-gqa-mb2", GQA, StaticStrategy(1, 2, microbatches=2), 3, 7, 2),
    ("static-tp2-pp1-prefill2-decode1", TINY, StaticStrategy(2, 1, microbatches=2), 3, 7, 3),
    ("fapool-tp1-pool1", TINY, fapool(1, 1), 2, 13, 3),
    ("fapool-tp1-pool3-splitseq-balanced-mb2", TINY, fapool(1, 3, "split-seq", 2, True),
     3, 13, 4),
    ("fapool-tp1-pool3-replicated-mb3-uneven", TINY, fapool(1, 3, "replicated", 3), 4, 10, 3),
    ("fapool-tp1-pool3-empty-block", TINY, fapool(1, 3, threshold=4), 1, 4, 3),
    ("fapool-tp2-pool2-gqa-splitseq-mb2", GQA, fapool(2, 2, "split-seq", 2), 2, 11, 3),
    ("fapool-tp2-pool2-mqa-splitbatch", MQA, fapool(2, 2), 3, 11, 3),
    ("fapool-tp2-pool2-replicated-balanced-mb2", TINY, fapool(2, 2, "replicated", 2, True),
     3, 12, 3),
    ("fapool-tp2-below-threshold", GQA, fapool(2, 2, threshold=64), 2, 11, 3),
]


def _plan(model, strategy, batch, seq, out):
    return make_plan(model, CLUSTER, strategy, Workload(batch, seq, out),
                     load_profile("dgx-a100"), executor=ExecutorSettings(0, "float32", 120.0))


def _norm(rows) -> list:
    return json.loads(json.dumps(rows))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("opseq")
    plans, paths = [], []
    for name, model, strategy, batch, seq, out in GRID:
        plan = _plan(model, strategy, batch, seq, out)
        paths.append(d / f"{name}.json")
        save_plan(plan, paths[-1])
        plans.append(plan)
    res = launch(paths, 4, 240, ["--steps", "1", "--warmup", "0", "--record-ops"])
    assert res.ok, res.error
    return dict(zip([g[0] for g in GRID], zip(plans, res.results)))


def expected(plan, step: int) -> tuple:
    """{rank: expected recorder rows} of one step, and the schedule."""
    wl, s = plan.workload, plan.strategy
    rows = tuple(microbatch_rows(wl.batch, (s.decode_microbatches if step else
                                            s.microbatches) or 1))
    schedule = build_schedule(plan.layout, rows, wl.input_len, step,
                              s.pool_size(wl.input_len))
    ranks = [r for u in schedule.units.values() for r in u.ranks]
    return {r: [expected_row(*x) for x in schedule.rank_program(r)] for r in ranks}, schedule


@pytest.mark.slow
@pytest.mark.parametrize("name", [g[0] for g in GRID])
def test_recorded_ops_equal_the_schedule(recorded, name):
    plan, summ = recorded[name]
    per_rank = summ["ops_per_rank"]
    steps = plan.workload.output_len
    assert summ["microbatch_rows"] == [b - a for a, b in microbatch_rows(
        plan.workload.batch, plan.strategy.microbatches or 1)]
    assert summ["decode_microbatch_rows"] == [b - a for a, b in microbatch_rows(
        plan.workload.batch, plan.strategy.decode_microbatches or 1)]
    for step in range(steps):
        want, schedule = expected(plan, step)
        check_message_order(schedule)
        assert len(per_rank) == plan.world_size
        for rank, ops in enumerate(per_rank):
            if rank not in want:          # a pool rank beyond the activated pool
                assert not ops, f"rank {rank} is idle in the schedule"
                continue
            assert ops[step] == _norm(want[rank]), (name, step, rank)


def test_schedule_message_order_holds_over_a_wider_grid():
    """Torch-free: every two ranks issue their messages in the same order, for more layouts
    than one launch can run (up to base TP 4 and a pool of 8, every placement)."""
    cluster = dataclasses.replace(CLUSTER, gpus_per_node=16)
    for model in (TINY, GQA, MQA):
        for tp in (1, 2, 4):
            if model.heads % tp:
                continue
            for pool in (1, 3, 8):
                for kv in ("split-batch", "split-seq", "replicated"):
                    s = dataclasses.replace(fapool(tp, pool, kv, 3, pool == 3), threshold=4)
                    plan = make_plan(model, cluster, s, Workload(5, 17, 3),
                                     load_profile("dgx-a100"))
                    for step in range(3):
                        check_message_order(expected(plan, step)[1])
