"""A Hugging Face config.json (or a model directory holding one) as a ModelSpec.

One parser for the file kind.  It reads the keys each supported `model_type` uses in
transformers' configuration classes, honours the ones that change cost or memory, and
refuses, in one line naming the key, anything it would otherwise plan as something else:

  llama, mistral, qwen2, phi3   dense; SwiGLU (hidden_act silu); GQA (num_key_value_heads)
  gemma                         dense; gated GELU (GeGLU), explicit head_dim, tied embeddings
  mixtral                       MoE: num_local_experts experts, num_experts_per_tok each
  qwen2_moe                     MoE: num_experts of moe_intermediate_size, a shared expert
                                (shared_expert_intermediate_size) every token goes through

sliding_window (Mistral, Phi-3; Qwen2 only with use_sliding_window) bounds attention and the
K/V cache.  tie_word_embeddings defaults as transformers does: true for gemma, else false.
A config without model_type is read as llama.  Never downloads.
"""

from __future__ import annotations

from pathlib import Path

from calibration.errors import InputError, positive_int, read_json, require, safe_name
from planner.model import ModelSpec

_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu"}          # gated (LLaMA-style MLP)
_GEMMA_ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast")
_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3", "gemma", "mixtral", "qwen2_moe")
TIED_BY_DEFAULT = ("gemma",)
# keys whose non-default values change the model in ways not modeled: key -> (default, why)
_UNMODELED = {
    "quantization_config": (None, "quantized weights are not modeled"),
    "attn_logit_softcapping": (None, "logit soft-capping is not modeled"),
    "layer_types": (None, "per-layer attention types are not modeled"),
    "sliding_window_pattern": (None, "per-layer attention windows are not modeled"),
    "decoder_sparse_step": (1, "MoE on only some layers is not modeled"),
    "mlp_only_layers": ([], "MoE on only some layers is not modeled"),
    "num_experts_per_tok": (None, "experts per token without experts (no MoE keys known "
                            "for this model_type)"),
}


def config_path(name_or_path: str | Path) -> Path:
    """config.json itself, or the one inside a model directory."""
    path = Path(name_or_path)
    if path.is_dir():
        inner = path / "config.json"
        require(inner.is_file(), "model", f"{path} is a directory without a config.json")
        return inner
    return path


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """The ModelSpec of a config.json path or model directory (see the module doc)."""
    path = config_path(path)
    raw = read_json(path, "model")
    require(isinstance(raw, dict), "model", f"{path} must hold a JSON object")
    mtype = raw.get("model_type") or "llama"
    require(isinstance(mtype, str) and mtype in MODEL_TYPES, "config.json.model_type",
            f"{mtype!r} is not modeled; supported: {', '.join(MODEL_TYPES)}")
    moe_keys = {"mixtral": ("num_local_experts",), "qwen2_moe": ("num_experts",)}
    for key, (default, why) in _UNMODELED.items():
        if key == "num_experts_per_tok" and mtype in moe_keys:
            continue
        value = raw.get(key, default)
        require(value == default, f"config.json.{key}", f"{value!r}: {why}")
    fields = _dense_fields(raw, path)
    fields["activation"] = _activation(raw, mtype)
    fields["dtype_bytes"] = _dtype_bytes(raw)
    fields["sliding_window"] = _window(raw, mtype)
    tied = raw.get("tie_word_embeddings", mtype in TIED_BY_DEFAULT)
    require(isinstance(tied, bool), "config.json.tie_word_embeddings", "must be true or false")
    fields["tied_embeddings"] = tied
    if mtype in moe_keys:
        fields.update(_moe_fields(raw, mtype, moe_keys[mtype][0]))
    if raw.get("_name_or_path"):
        name = safe_name(raw["_name_or_path"], "config.json._name_or_path")
    else:
        name = safe_name(path.parent.name or path.stem, "model directory name (set "
                         "config.json._name_or_path to name the model)")
    return ModelSpec(name=name, **fields)


def _dense_fields(raw: dict, path: Path) -> dict:
    keys = {"layers": "num_hidden_layers", "hidden": "hidden_size",
            "heads": "num_attention_heads", "ffn": "intermediate_size", "vocab": "vocab_size"}
    fields = {}
    for field, key in keys.items():
        require(key in raw, f"config.json.{key}", f"missing in {path}")
        fields[field] = positive_int(raw[key], f"config.json.{key}")
    if raw.get("head_dim") is None:             # absent or null: hidden / heads
        require(fields["hidden"] % fields["heads"] == 0, "config.json.num_attention_heads",
                f"{fields['heads']} does not divide hidden_size ({fields['hidden']})")
        fields["head_dim"] = fields["hidden"] // fields["heads"]
    else:
        fields["head_dim"] = positive_int(raw["head_dim"], "config.json.head_dim")
    fields["kv_heads"] = positive_int(raw.get("num_key_value_heads", fields["heads"]),
                                      "config.json.num_key_value_heads")
    require(fields["heads"] % fields["kv_heads"] == 0, "config.json.num_key_value_heads",
            f"{fields['kv_heads']} does not divide num_attention_heads ({fields['heads']})")
    return fields


def _activation(raw: dict, mtype: str) -> str:
    if mtype == "gemma":        # GemmaMLP: act(gate) * up, act from hidden_activation
        act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        key = "hidden_activation" if raw.get("hidden_activation") else "hidden_act"
        require(isinstance(act, str) and act in _GEMMA_ACTIVATIONS, f"config.json.{key}",
                f"{act!r} is not modeled for gemma (a gated GELU: {_GEMMA_ACTIVATIONS})")
        return "geglu"
    act = raw.get("hidden_act", "silu")
    require(isinstance(act, str) and act in _ACTIVATIONS, "config.json.hidden_act",
            f"{act!r} is not modeled for {mtype} (its MLP is gated: silu)")
    return _ACTIVATIONS[act]


def _dtype_bytes(raw: dict) -> int:
    dtype = raw.get("torch_dtype", raw.get("dtype", "bfloat16"))
    require(isinstance(dtype, str) and dtype in _DTYPES, "config.json.torch_dtype",
            f"{dtype!r} is not modeled; supported: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _window(raw: dict, mtype: str) -> int:
    window = raw.get("sliding_window")
    if mtype == "qwen2":        # Qwen2 keeps a sliding_window value it does not use...
        if not raw.get("use_sliding_window", False):
            return 0
        # ...and with use_sliding_window, applies it from max_window_layers on
        require(raw.get("max_window_layers", 0) == 0, "config.json.use_sliding_window",
                "a window on only some layers (max_window_layers) is not modeled")
    if window is None:
        return 0
    return positive_int(window, "config.json.sliding_window")


def _moe_fields(raw: dict, mtype: str, experts_key: str) -> dict:
    experts = positive_int(raw.get(experts_key), f"config.json.{experts_key}")
    per_token = positive_int(raw.get("num_experts_per_tok"), "config.json.num_experts_per_tok")
    require(per_token <= experts, "config.json.num_experts_per_tok",
            f"{per_token} is more than the {experts} experts")
    out = {"experts": experts, "experts_per_token": per_token}
    if mtype == "qwen2_moe":
        out["ffn"] = positive_int(raw.get("moe_intermediate_size"),
                                  "config.json.moe_intermediate_size")
        shared = raw.get("shared_expert_intermediate_size", 0) or 0
        out["shared_ffn"] = positive_int(shared, "config.json.shared_expert_intermediate_size"
                                         ) if shared else 0
    return out


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset by name, or a config.json path, or a model directory."""
    from planner.model import PRESETS
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise InputError("model", f"no such file: {path}")
        return model_from_hf_config(path)
    raise InputError("model", f"unknown preset {name_or_path!r}; known: {sorted(PRESETS)}, "
                     "a path to a config.json or a model directory")
