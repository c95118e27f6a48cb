"""Model spec: the transformer's shape and the presets (config.json: planner.hf_config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from calibration.errors import positive_int, require, safe_name

ACTIVATIONS = ("gelu", "swiglu", "geglu")     # geglu: gated GELU (Gemma)
PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}     # bytes per weight
KV_PRECISIONS = {"bf16": 2, "fp16": 2, "fp8": 1}
GATED = ("swiglu", "geglu")
NORMS = ("rmsnorm", "layernorm")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (pre-norm), dense or Mixture-of-Experts.  Validated on
    construction.  experts > 0: every layer's FFN is `experts` experts of `ffn` each, a
    token goes through `experts_per_token` of them (Mixtral: 8, top 2; the router's
    hidden x experts weights are counted too).  sliding_window > 0: a query attends the
    last sliding_window keys only (Mistral), so attention cost and the K/V cache stop
    growing there.  tied_embeddings: the LM head is the embedding matrix (no second copy)."""

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
    experts: int = 0                 # 0: dense FFN
    experts_per_token: int = 0
    sliding_window: int = 0          # 0: full causal attention
    tied_embeddings: bool = False
    shared_ffn: int = 0              # a MoE's shared expert (Qwen2-MoE): dense, every token
    # precision: dtype_bytes is the activations' (and 16/32-bit weights'); weight_dtype_bytes
    # 1 = FP8 weights, GEMMs on FP8 tensor cores (W8A8, as TensorRT-LLM / vLLM FP8);
    # kv_dtype_bytes 1 = an FP8 K/V cache.  0: as dtype_bytes.
    weight_dtype_bytes: int = 0
    kv_dtype_bytes: int = 0

    def __post_init__(self):
        safe_name(self.name, "model.name")
        for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
                  "dtype_bytes"):
            positive_int(getattr(self, f), f"model.{f}")
        for f in ("experts", "experts_per_token", "sliding_window", "shared_ffn"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"model.{f}",
                    f"must be an integer >= 0, got {v!r}")
        require((self.experts == 0) == (self.experts_per_token == 0),
                "model.experts_per_token", "a MoE needs both experts and experts_per_token")
        require(self.experts_per_token <= self.experts, "model.experts_per_token",
                f"{self.experts_per_token} is more than the {self.experts} experts")
        require(not self.shared_ffn or self.experts, "model.shared_ffn",
                "a shared expert needs experts (a MoE)")
        require(isinstance(self.tied_embeddings, bool), "model.tied_embeddings",
                "must be true or false")
        require(self.activation in ACTIVATIONS, "model.activation",
                f"must be one of {ACTIVATIONS}, got {self.activation!r}")
        require(self.norm in NORMS, "model.norm", f"must be one of {NORMS}, got {self.norm!r}")
        require(self.heads % self.kv_heads == 0, "model.kv_heads",
                f"{self.kv_heads} does not divide heads ({self.heads})")
        require(self.dtype_bytes in (2, 4), "model.dtype_bytes",
                "must be 2 (bf16 / fp16) or 4 (fp32); FP8 is weight_dtype_bytes 1")
        for f in ("weight_dtype_bytes", "kv_dtype_bytes"):
            require(getattr(self, f) in (0, 1, 2, 4), f"model.{f}",
                    "must be 0 (as dtype_bytes), 1 (fp8), 2 or 4")

    # ------------------------------------------------------------ derived sizes
    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def ffn_in_width(self) -> int:
        """Columns of the up projection: gated FFNs (SwiGLU, GeGLU) have gate and up
        (LLaMA, Gemma), GELU just up."""
        return 2 * self.ffn if self.activation in GATED else self.ffn

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def expert_params(self) -> int:
        """One FFN (one expert of a MoE): up (+ gate) and down."""
        return self.hidden * self.ffn_in_width + self.ffn * self.hidden

    @property
    def shared_params(self) -> int:
        """A MoE's shared expert (gated like the experts) and its hidden x 1 gate."""
        if not self.shared_ffn:
            return 0
        return self.hidden * self.shared_ffn * (2 if self.activation in GATED else 1) + (
            self.shared_ffn * self.hidden + self.hidden)

    @property
    def layer_params(self) -> int:
        """QKV + output projection + FFN weights (every expert and the router of a MoE) +
        two norm scales (no biases)."""
        attn = self.hidden * (self.q_width + 2 * self.kv_width) + self.q_width * self.hidden
        ffn = (self.experts * self.expert_params + self.hidden * self.experts
               + self.shared_params if self.is_moe else self.expert_params)
        return attn + ffn + 2 * self.hidden

    @property
    def active_layer_params(self) -> int:
        """Weights one token goes through in a layer (a MoE: experts_per_token experts)."""
        if not self.is_moe:
            return self.layer_params
        return (self.layer_params - (self.experts - self.experts_per_token)
                * self.expert_params)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """The LM head's own weights: none when tied to the embedding."""
        return 0 if self.tied_embeddings else self.embedding_params

    @property
    def total_params(self) -> int:
        """Layers + embedding + LM head (unless tied) + final norm."""
        return (self.layers * self.layer_params + self.embedding_params + self.head_params
                + self.hidden)

    def attended(self, kv_len: int) -> int:
        """Keys one query at the end of kv_len attends: the window's, if any."""
        return min(kv_len, self.sliding_window) if self.sliding_window else kv_len

    @property
    def weight_bytes(self) -> int:
        return self.weight_dtype_bytes or self.dtype_bytes

    @property
    def kv_bytes(self) -> int:
        return self.kv_dtype_bytes or self.dtype_bytes

    def kv_bytes_per_token(self, layers: int | None = None) -> int:
        """K and V of one token: 2 * kv_heads * head_dim * K/V dtype per layer."""
        return 2 * self.kv_width * self.kv_bytes * (self.layers if layers is None else layers)

    def kv_tokens(self, context: int) -> int:
        """Tokens of K/V a sequence of `context` tokens keeps (a sliding window's at most:
        a rolling buffer, as Mistral's reference implementation)."""
        return self.attended(context)

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

    def with_precision(self, dtype: str | None = None,
                       kv_dtype: str | None = None) -> "ModelSpec":
        """A copy in the given precision (PRECISIONS): fp8 is FP8 weights on FP8 tensor
        cores with 16-bit activations (W8A8); kv_dtype sets the K/V cache's alone."""
        out = self
        if dtype is not None:
            require(dtype in PRECISIONS, "dtype", f"must be one of {sorted(PRECISIONS)}, "
                    f"got {dtype!r}")
            out = replace(out, dtype_bytes=2 if dtype == "fp8" else PRECISIONS[dtype],
                          weight_dtype_bytes=1 if dtype == "fp8" else 0)
        if kv_dtype is not None:
            require(kv_dtype in KV_PRECISIONS, "kv_dtype",
                    f"must be one of {sorted(KV_PRECISIONS)}, got {kv_dtype!r}")
            out = replace(out, kv_dtype_bytes=KV_PRECISIONS[kv_dtype])
        return out

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


# Public configs: the Hugging Face config.json of each model (PRESET_SOURCES).  paper-4l: the
# paper's section 1.1; the paper gives no vocabulary, we assume LLaMA's 32000 (its parameter
# count then is ~1.07B, not the "~13B" it states: `fapool paper` shows the arithmetic).
PRESETS = {
    "paper-4l": ModelSpec("paper-4l", 4, 4096, 32, 32, 128, 16384, 32000, "gelu"),
    "llama-2-7b": ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, "swiglu"),
    "llama-2-13b": ModelSpec("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, "swiglu"),
    "llama-2-70b": ModelSpec("llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, "swiglu"),
    "llama-3-8b": ModelSpec("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, "swiglu"),
    "llama-3-70b": ModelSpec("llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256, "swiglu"),
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, "swiglu"),
    "llama-3.1-70b": ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, "swiglu"),
    "mistral-7b": ModelSpec("mistral-7b", 32, 4096, 32, 8, 128, 14336, 32000, "swiglu",
                            sliding_window=4096),
    "qwen2-7b": ModelSpec("qwen2-7b", 28, 3584, 28, 4, 128, 18944, 152064, "swiglu"),
    "gemma-7b": ModelSpec("gemma-7b", 28, 3072, 16, 16, 256, 24576, 256000, "geglu",
                          tied_embeddings=True),
    "mixtral-8x7b": ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, "swiglu",
                              experts=8, experts_per_token=2),
    # Small enough for CPU tests and the executor on gloo (fp32).
    "tiny": ModelSpec("tiny", 2, 64, 4, 4, 16, 128, 128, "gelu", "rmsnorm", 4),
}
_HF = "https://huggingface.co/{}/blob/main/config.json"
PRESET_SOURCES = {
    "paper-4l": "the paper, section 1.1 (../shared/seeds); vocabulary assumed",
    "llama-2-7b": _HF.format("meta-llama/Llama-2-7b-hf"),
    "llama-2-13b": _HF.format("meta-llama/Llama-2-13b-hf"),
    "llama-2-70b": _HF.format("meta-llama/Llama-2-70b-hf"),
    "llama-3-8b": _HF.format("meta-llama/Meta-Llama-3-8B"),
    "llama-3-70b": _HF.format("meta-llama/Meta-Llama-3-70B"),
    "llama-3.1-8b": _HF.format("meta-llama/Llama-3.1-8B"),
    "llama-3.1-70b": _HF.format("meta-llama/Llama-3.1-70B"),
    "mistral-7b": _HF.format("mistralai/Mistral-7B-v0.1"),
    "qwen2-7b": _HF.format("Qwen/Qwen2-7B"),
    "gemma-7b": _HF.format("google/gemma-7b"),
    "mixtral-8x7b": _HF.format("mistralai/Mixtral-8x7B-v0.1"),
    "tiny": "fa-pool's own, for CPU tests",
}
PAPER_VOCAB_NOTE = "vocabulary 32000 assumed (the paper gives none)"
