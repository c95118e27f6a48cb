"""Model spec: the transformer's shape, presets, and Hugging Face config.json loading."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from calibration.errors import InputError, positive_int, read_json, require

ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("rmsnorm", "layernorm")


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer (pre-norm).  Validated on construction."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    activation: str = "gelu"
    norm: str = "rmsnorm"
    dtype_bytes: int = 2

    def __post_init__(self):
        for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
                  "dtype_bytes"):
            positive_int(getattr(self, f), f"model.{f}")
        require(self.activation in ACTIVATIONS, "model.activation",
                f"must be one of {ACTIVATIONS}, got {self.activation!r}")
        require(self.norm in NORMS, "model.norm", f"must be one of {NORMS}, got {self.norm!r}")
        require(self.heads % self.kv_heads == 0, "model.kv_heads",
                f"{self.kv_heads} does not divide heads ({self.heads})")
        require(self.dtype_bytes in (1, 2, 4), "model.dtype_bytes", "must be 1, 2 or 4")

    # ------------------------------------------------------------ derived sizes
    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def ffn_in_width(self) -> int:
        """Columns of the up projection: SwiGLU has gate and up (LLaMA), GELU just up."""
        return 2 * self.ffn if self.activation == "swiglu" else self.ffn

    @property
    def layer_params(self) -> int:
        """QKV + output projection + FFN weights + two norm scales (no biases)."""
        attn = self.hidden * (self.q_width + 2 * self.kv_width) + self.q_width * self.hidden
        ffn = self.hidden * self.ffn_in_width + self.ffn * self.hidden
        return attn + ffn + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        """Layers + embedding + untied LM head + final norm."""
        return self.layers * self.layer_params + 2 * self.embedding_params + self.hidden

    def kv_bytes_per_token(self, layers: int | None = None) -> int:
        """K and V of one token: 2 * kv_heads * head_dim * dtype per layer."""
        return 2 * self.kv_width * self.dtype_bytes * (self.layers if layers is None else layers)

    def with_overrides(self, **fields) -> "ModelSpec":
        """A copy with the given (non-None) fields replaced; head_dim follows hidden/heads
        when either changes and head_dim is not given."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if not fields:
            return self
        if ("hidden" in fields or "heads" in fields) and "head_dim" not in fields:
            hidden = fields.get("hidden", self.hidden)
            heads = fields.get("heads", self.heads)
            positive_int(heads, "model.heads")
            require(hidden % heads == 0, "model.heads", f"{heads} does not divide hidden ({hidden})")
            fields["head_dim"] = hidden // heads
        if "heads" in fields and "kv_heads" not in fields and self.kv_heads == self.heads:
            fields["kv_heads"] = fields["heads"]
        return replace(self, **fields)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelSpec":
        require(isinstance(raw, dict), "model", "must be a mapping")
        known = set(cls.__dataclass_fields__)
        extra = set(raw) - known
        require(not extra, "model", f"unknown fields {sorted(extra)}")
        missing = [f for f in ("name", "layers", "hidden", "heads", "kv_heads", "head_dim",
                               "ffn", "vocab") if f not in raw]
        require(not missing, f"model.{missing[0] if missing else ''}", "missing")
        return cls(**raw)


# Public configs: Hugging Face config.json of each model.  paper-4l: the paper's section 1.1;
# the paper gives no vocabulary, we assume LLaMA's 32000 (its parameter count then is ~1.07B,
# not the "~13B" it states: `fapool paper` shows the arithmetic).
PRESETS = {
    "paper-4l": ModelSpec("paper-4l", 4, 4096, 32, 32, 128, 16384, 32000, "gelu"),
    "llama-2-7b": ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, "swiglu"),
    "llama-2-13b": ModelSpec("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, "swiglu"),
    "llama-2-70b": ModelSpec("llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, "swiglu"),
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, "swiglu"),
    "llama-3.1-70b": ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, "swiglu"),
    # Small enough for CPU tests and the executor on gloo (fp32).
    "tiny": ModelSpec("tiny", 2, 64, 4, 4, 16, 128, 128, "gelu", "rmsnorm", 4),
}
PAPER_VOCAB_NOTE = "vocabulary 32000 assumed (the paper gives none)"

_HF_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu": "gelu", "gelu_new": "gelu",
                   "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu"}
_HF_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """Read a Hugging Face config.json (LLaMA-style keys) from disk; never downloads."""
    path = Path(path)
    raw = read_json(path, "model")
    require(isinstance(raw, dict), "model", f"{path} must hold a JSON object")
    keys = {"layers": "num_hidden_layers", "hidden": "hidden_size",
            "heads": "num_attention_heads", "ffn": "intermediate_size", "vocab": "vocab_size"}
    fields = {}
    for field, key in keys.items():
        require(key in raw, f"config.json.{key}", "missing")
        fields[field] = positive_int(raw[key], f"config.json.{key}")
    require(fields["hidden"] % fields["heads"] == 0, "config.json.num_attention_heads",
            f"{fields['heads']} does not divide hidden_size ({fields['hidden']})")
    fields["kv_heads"] = positive_int(raw.get("num_key_value_heads", fields["heads"]),
                                      "config.json.num_key_value_heads")
    fields["head_dim"] = positive_int(raw.get("head_dim") or fields["hidden"] // fields["heads"],
                                      "config.json.head_dim")
    act = raw.get("hidden_act", "silu")
    require(act in _HF_ACTIVATIONS, "config.json.hidden_act", f"unsupported activation {act!r}")
    dtype = _HF_DTYPES.get(str(raw.get("torch_dtype", "bfloat16")), 2)
    name = str(raw.get("_name_or_path") or path.parent.name or path.stem)
    return ModelSpec(name=name, activation=_HF_ACTIVATIONS[act], dtype_bytes=dtype, **fields)


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset by name, or a config.json by path."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return model_from_hf_config(path)
    raise InputError("model", f"unknown preset {name_or_path!r}; known: {sorted(PRESETS)} "
                     "or a path to a config.json")
