"""plan.json: versioned, self-contained, validated on load."""

import json

import pytest

from calibration.errors import InputError
from planner.cluster import resolve_cluster
from planner.model import PRESETS
from planner.plan import load_plan, make_plan, resolve_microbatches, save_plan
from planner.simulate import simulate
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload


def _plan(strategy=None):
    cluster, model, wl = resolve_cluster("dgx-a100"), PRESETS["paper-4l"], Workload()
    profile = cluster.load_profile()
    strategy = resolve_microbatches(model, strategy or FAPoolStrategy(), wl, profile)
    return make_plan(model, cluster, strategy, wl, profile, predictions={"tpot_ms": 1.0})


def test_plan_states_the_micro_batch_count_the_simulator_used():
    """The executor cuts prefill into strategy.microbatches and decode into
    strategy.decode_microbatches, so a plan whose strategy left them unset would run other
    than predicted: the plan states both, as the simulator chose them (decode: 1 at PP=1)."""
    cluster, model, wl = resolve_cluster("local"), PRESETS["tiny"], Workload(4, 64, 8)
    profile = cluster.load_profile()
    unset = StaticStrategy(1, 1)
    plan = make_plan(model, cluster, unset, wl, profile)
    sim = simulate(model, cluster, unset, wl, profile=profile, record=False)
    assert plan.strategy.microbatches == sim.microbatches == 2
    again = simulate(model, cluster, plan.strategy, wl, profile=profile, record=False)
    assert plan.strategy.decode_microbatches == sim.decode_microbatches == 1
    assert (again.microbatches, again.decode_microbatches) == (2, 1)
    with pytest.raises(ValueError, match="micro-batch"):
        make_plan(model, cluster, unset, wl, profile, predictions=sim.to_json())


def test_round_trip(tmp_path):
    plan = _plan()
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    loaded = load_plan(path)
    assert loaded.plan_id == plan.plan_id
    raw = json.loads(path.read_text())
    assert raw["schema"] == 1 and raw["threshold"] == 4096
    assert raw["groups"]["pool_sizes"] == list(range(8, 33))
    assert [r["role"] for r in raw["ranks"]].count("pool") == 32
    assert raw["profile"]["name"] == "dgx-a100"


def test_static_groups(tmp_path):
    raw = _plan(StaticStrategy(8, 2)).to_dict()
    assert raw["groups"]["stages"] == [list(range(8)), list(range(8, 16))]
    assert raw["threshold"] is None


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(schema=2), "plan.schema"),
    (lambda d: d["ranks"].pop(), "plan.ranks"),
    (lambda d: d["groups"].update(base=[0, 1]), "plan.groups"),
    (lambda d: d["strategy"].update(base_tp=3), "strategy.base_tp"),
    (lambda d: d.update(threshold=1), "plan.threshold"),
    (lambda d: d["workload"].update(batch=-1), "workload.batch"),
    (lambda d: d["profile"]["device"].update(peak_flops=-1), "profile.device.peak_flops"),
    (lambda d: d.pop("model"), "plan.model"),
])
def test_inconsistent_plans_refused(tmp_path, edit, field):
    raw = _plan().to_dict()
    edit(raw)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError) as err:
        load_plan(path)
    assert err.value.field == field


def test_not_json(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("garbage")
    with pytest.raises(InputError, match="not valid JSON"):
        load_plan(path)
