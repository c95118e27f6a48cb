"""Hugging Face config.json import: the models people run are read as they are (gated
GELU, tied embeddings, sliding windows, experts), and anything not modeled is refused in
one line naming the key, never planned as something else."""

import json

import pytest

from calibration.errors import InputError
from planner.hf_config import model_from_hf_config, resolve_model
from planner.model import PRESETS

# The public config.json of each model (the keys that matter; sources in PRESET_SOURCES).
MIXTRAL = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096,
           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
           "vocab_size": 32000, "hidden_act": "silu", "num_local_experts": 8,
           "num_experts_per_tok": 2, "sliding_window": None, "torch_dtype": "bfloat16",
           "tie_word_embeddings": False}
GEMMA = {"model_type": "gemma", "num_hidden_layers": 28, "hidden_size": 3072,
         "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
         "intermediate_size": 24576, "vocab_size": 256000, "hidden_act": "gelu",
         "hidden_activation": None, "torch_dtype": "bfloat16"}
MISTRAL = {"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096,
           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
           "vocab_size": 32000, "hidden_act": "silu", "sliding_window": 4096,
           "torch_dtype": "bfloat16"}
QWEN2 = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584,
         "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
         "vocab_size": 152064, "hidden_act": "silu", "sliding_window": 131072,
         "use_sliding_window": False, "max_window_layers": 28, "tie_word_embeddings": False,
         "torch_dtype": "bfloat16"}
QWEN_MOE = {"model_type": "qwen2_moe", "num_hidden_layers": 24, "hidden_size": 2048,
            "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5632,
            "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
            "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "vocab_size": 151936, "hidden_act": "silu",
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def _load(tmp_path, cfg, **changes):
    cfg = dict(cfg, **changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return model_from_hf_config(path)


def _refused(tmp_path, cfg, field, **changes):
    with pytest.raises(InputError) as err:
        _load(tmp_path, cfg, **changes)
    assert err.value.field == field, err.value
    return str(err.value)


def test_mixtral_is_a_moe_never_a_dense_7b(tmp_path):
    m = _load(tmp_path, MIXTRAL)
    assert (m.experts, m.experts_per_token) == (8, 2)
    assert m.total_params / 1e9 == pytest.approx(46.7, rel=0.01)        # Mistral AI: 46.7B
    active = m.layers * m.active_layer_params + 2 * m.embedding_params
    assert active / 1e9 == pytest.approx(12.9, rel=0.01)                #  12.9B active
    assert m == PRESETS["mixtral-8x7b"].with_overrides(name=m.name)


def test_gemma_has_a_gated_gelu_its_head_dim_and_tied_embeddings(tmp_path):
    m = _load(tmp_path, GEMMA)
    assert (m.activation, m.head_dim, m.tied_embeddings) == ("geglu", 256, True)
    assert m.total_params / 1e9 == pytest.approx(8.54, rel=0.005)       # not 7.21B


def test_sliding_window_is_read_and_qwen2s_unused_one_ignored(tmp_path):
    assert _load(tmp_path, MISTRAL).sliding_window == 4096
    assert _load(tmp_path, QWEN2).sliding_window == 0
    assert _load(tmp_path, MISTRAL).total_params / 1e9 == pytest.approx(7.24, rel=0.005)
    assert _load(tmp_path, QWEN2).total_params / 1e9 == pytest.approx(7.62, rel=0.005)
    _refused(tmp_path, QWEN2, "config.json.use_sliding_window", use_sliding_window=True,
             max_window_layers=21)


def test_qwen_moe_has_experts_and_a_shared_expert(tmp_path):
    m = _load(tmp_path, QWEN_MOE)
    assert (m.experts, m.experts_per_token, m.ffn, m.shared_ffn) == (60, 4, 1408, 5632)
    assert m.total_params / 1e9 == pytest.approx(14.3, rel=0.01)        # Qwen1.5-MoE-A2.7B
    _refused(tmp_path, QWEN_MOE, "config.json.decoder_sparse_step", decoder_sparse_step=2)


def test_tied_embeddings_are_one_matrix(tmp_path):
    untied = _load(tmp_path, MISTRAL)
    tied = _load(tmp_path, MISTRAL, tie_word_embeddings=True)
    assert untied.total_params - tied.total_params == 32000 * 4096


@pytest.mark.parametrize("changes,field", [
    ({"torch_dtype": "float8_e4m3fn"}, "config.json.torch_dtype"),
    ({"torch_dtype": "int3"}, "config.json.torch_dtype"),
    ({"head_dim": 0}, "config.json.head_dim"),
    ({"model_type": "deepseek_v3"}, "config.json.model_type"),
    ({"hidden_act": "relu"}, "config.json.hidden_act"),
    ({"quantization_config": {"quant_method": "awq"}}, "config.json.quantization_config"),
    ({"num_experts_per_tok": 2}, "config.json.num_experts_per_tok"),       # dense type
    ({"num_key_value_heads": 5}, "config.json.num_key_value_heads"),
])
def test_what_is_not_modeled_is_refused_naming_the_key(tmp_path, changes, field):
    text = _refused(tmp_path, MISTRAL, field, **changes)
    assert "\n" not in text


def test_a_model_directory_is_read_through_its_config(tmp_path):
    model_dir, empty = tmp_path / "mistral", tmp_path / "empty"
    model_dir.mkdir()
    empty.mkdir()
    (model_dir / "config.json").write_text(json.dumps(MISTRAL))
    assert resolve_model(str(model_dir)).sliding_window == 4096
    with pytest.raises(InputError, match="without a config.json"):
        resolve_model(str(empty))


def test_a_config_without_model_type_reads_as_llama(tmp_path):
    cfg = {k: v for k, v in MISTRAL.items() if k not in ("model_type", "sliding_window")}
    m = _load(tmp_path, cfg)
    assert (m.activation, m.sliding_window, m.tied_embeddings) == ("swiglu", 0, False)
