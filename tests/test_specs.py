"""Specs validate on construction and name the bad field."""

import json

import pytest

from calibration.errors import InputError
from planner.cluster import resolve_cluster
from planner.layout import build_layout
from planner.hf_config import model_from_hf_config, resolve_model
from planner.model import PRESETS, ModelSpec
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload


def test_paper_model_parameter_count_by_hand():
    m = PRESETS["paper-4l"]
    # per layer: QKV 4096*3*4096 + out 4096*4096 + FFN 2*4096*16384 + 2 norms
    per_layer = 4096 * 3 * 4096 + 4096 * 4096 + 2 * 4096 * 16384 + 2 * 4096
    assert m.layer_params == per_layer
    assert m.total_params == 4 * per_layer + 2 * 32000 * 4096 + 4096


@pytest.mark.parametrize("name,params_b", [("llama-2-7b", 6.74), ("llama-2-13b", 13.02),
                                            ("llama-2-70b", 68.98), ("llama-3.1-8b", 8.03),
                                            ("llama-3.1-70b", 70.55)])
def test_presets_match_public_parameter_counts(name, params_b):
    assert PRESETS[name].total_params / 1e9 == pytest.approx(params_b, rel=0.01)


def test_gqa_kv_bytes():
    m = PRESETS["llama-3.1-8b"]   # 8 K/V heads of 128, 32 layers, bf16
    assert m.kv_bytes_per_token() == 2 * 8 * 128 * 2 * 32


@pytest.mark.parametrize("fields,field", [
    (dict(layers=0), "model.layers"),
    (dict(hidden=-4), "model.hidden"),
    (dict(kv_heads=5), "model.kv_heads"),
    (dict(activation="relu"), "model.activation"),
])
def test_model_rejects_bad_fields(fields, field):
    base = PRESETS["tiny"].to_dict()
    base.update(fields)
    with pytest.raises(InputError) as err:
        ModelSpec(**base)
    assert err.value.field == field


def test_heads_must_divide_hidden():
    with pytest.raises(InputError) as err:
        PRESETS["tiny"].with_overrides(heads=5)
    assert err.value.field == "model.heads"


def test_hf_config_loading(tmp_path):
    cfg = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 8,
           "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
           "hidden_act": "silu", "torch_dtype": "bfloat16"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    m = resolve_model(str(path))
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.activation) == (
        2, 256, 8, 2, 32, "swiglu")


def test_hf_config_malformed(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        model_from_hf_config(path)
    path.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(InputError) as err:
        model_from_hf_config(path)
    assert "num_hidden_layers" in err.value.field


def test_unknown_presets():
    with pytest.raises(InputError, match="unknown preset"):
        resolve_model("gpt-9")
    with pytest.raises(InputError, match="unknown preset"):
        resolve_cluster("dgx-z900")


def test_workload_and_strategy_validation():
    with pytest.raises(InputError):
        Workload(batch=0)
    with pytest.raises(InputError):
        FAPoolStrategy(decode_kv="somewhere")
    with pytest.raises(InputError):
        StaticStrategy(tp=-1)


def test_pool_rule_is_the_papers():
    s = FAPoolStrategy()
    assert [s.pool_size(n) for n in (512, 4095, 4096, 8192, 16384, 65536)] == [
        0, 0, 8, 16, 32, 32]
    assert FAPoolStrategy(pool_gpus=5).pool_size(5000) == 5
    assert FAPoolStrategy(tokens_per_pool_gpu=1024, max_pool=4).pool_size(8192) == 4


def test_layout_roles_and_limits():
    c = resolve_cluster("dgx-a100", nodes=5)
    lay = build_layout(PRESETS["paper-4l"], c, FAPoolStrategy())
    assert lay.base_ranks == tuple(range(8)) and lay.pool_ranks == tuple(range(8, 40))
    with pytest.raises(InputError, match="needs 48 GPUs"):
        build_layout(PRESETS["paper-4l"], c, FAPoolStrategy(max_pool=40))
    with pytest.raises(InputError) as err:
        build_layout(PRESETS["paper-4l"], c, StaticStrategy(tp=3))
    assert err.value.field == "strategy.tp"
