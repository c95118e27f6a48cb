"""Host time per op (calibration.profile.Host): profile format, simulator, its direct
measurement; and the pool GPU's blocking transfers."""

import dataclasses

import pytest

from calibration import load_profile
from calibration.errors import InputError
from calibration.profile import Host, Profile, save_profile
from planner import validate as V
from planner.model import PRESETS
from planner.simulate import simulate
from planner.strategy import StaticStrategy
from planner.workload import Workload

TINY = PRESETS["tiny"]
LOCAL = load_profile("local")


def sim(strategy, seq=256, host=0.0, profile=LOCAL, **kw):
    prof = dataclasses.replace(profile, host=Host(host))
    return simulate(TINY, V.local_cluster(strategy.max_gpus), strategy,
                    Workload(2, seq, 16), profile=prof, interval_samples=0, **kw)


def test_host_round_trips_and_is_absent_when_zero(tmp_path):
    prof = dataclasses.replace(LOCAL, host=Host(6e-5, 1e-5, ("measured",)))
    save_profile(prof, tmp_path / "p.yaml")
    back = load_profile(tmp_path / "p.yaml")
    assert back.host == prof.host
    assert "host" not in load_profile("dgx-a100").to_dict()     # reference GPUs: 0
    assert load_profile("dgx-a100").host == Host()


@pytest.mark.parametrize("host, field", [({"op_overhead_s": -1e-5}, "op_overhead_s"),
                                         ({"std": "x"}, "std"),
                                         ({"per_op": 1}, "profile.host"),
                                         ({"sources": "fitted"}, "profile.host.sources")])
def test_bad_host_section_names_the_field(tmp_path, host, field):
    raw = LOCAL.to_dict()
    raw["host"] = host
    with pytest.raises(InputError) as err:
        Profile.from_dict(raw)
    assert field in str(err.value)


@pytest.mark.parametrize("strategy", [StaticStrategy(tp=1, pp=2, microbatches=2),
                                      V._fapool(1)])
def test_host_time_adds_at_least_one_op_overhead_per_serial_op(strategy):
    base = sim(strategy)
    h = 1e-4
    slow = sim(strategy, host=h)
    # a micro-batch's ops on its critical path run one after the other: at least one layer's
    # pre-attention + post-attention compute ops each pay h once
    assert slow.ttft_s >= base.ttft_s + 8 * h
    assert slow.tpot_s >= base.tpot_s + 8 * h
    assert sim(strategy, host=2 * h).ttft_s > slow.ttft_s


def test_pool_gpu_never_computes_during_its_own_transfers():
    r = sim(V._fapool(1), seq=512, phase="prefill")
    pool = [e for e in r.prefill.events if "pool0" in e.units]
    comm = [e for e in pool if e.kind == "comm"]
    compute = [e for e in pool if e.kind == "compute"]
    assert comm and compute
    for c in compute:
        for t in comm:
            assert c.end <= t.start + 1e-12 or t.end <= c.start + 1e-12, (c, t)


def test_robust_samples_pool_the_repeats_of_one_shape():
    s = [{"op": "gemm", "params": {"tokens": 4, "k": 8}, "run_id": 1, "times_s": [1.0, 2.0]},
         {"op": "gemm", "params": {"k": 8, "tokens": 4}, "run_id": 2, "times_s": [0.5]},
         {"op": "gemm", "params": {"tokens": 5, "k": 8}, "run_id": 2, "times_s": [3.0]}]
    out = V.robust_samples(s)
    assert len(out) == 2
    pooled = [x for x in out if x["params"]["tokens"] == 4][0]
    assert sorted(pooled["times_s"]) == [0.5, 1.0, 2.0]
    assert pooled["median_s"] == pytest.approx(1.0)          # the median of the three



def test_host_comes_from_its_direct_measurement():
    from calibration.fit import host_from_samples
    s = [{"op": "host_op", "params": {}, "run_id": 3, "times_s": [2e-6, 3e-6, 4e-6]},
         {"op": "gemm", "params": {}, "run_id": 3, "times_s": [1.0]}]
    host = host_from_samples(s)
    assert host.op_overhead_s == pytest.approx(3e-6)
    assert host.std > 0 and "run" in host.sources[0]
    assert host_from_samples(s[1:]) is None
