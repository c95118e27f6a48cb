"""Workload of one simulation: a batch of equal-length sequences."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from calibration.errors import positive_int

# The paper gives no output length; we assume 128 generated tokens per sequence
# (`--output-len` changes it; `fapool paper` states it).
DEFAULT_OUTPUT_LEN = 128
PAPER_BATCH = 1024


@dataclass(frozen=True)
class Workload:
    """batch sequences of input_len prompt tokens, each generating output_len tokens."""

    batch: int = PAPER_BATCH
    input_len: int = 4096
    output_len: int = DEFAULT_OUTPUT_LEN

    def __post_init__(self):
        positive_int(self.batch, "workload.batch")
        positive_int(self.input_len, "workload.seq_len")
        positive_int(self.output_len, "workload.output_len")

    @property
    def decode_context(self) -> int:
        """Context length of the decode step we simulate: the middle of generation, so its
        time is the average TPOT over the output (K/V reads grow linearly with context)."""
        return self.input_len + self.output_len // 2

    @property
    def total_tokens(self) -> int:
        return self.batch * (self.input_len + self.output_len)

    def to_dict(self) -> dict:
        return asdict(self)
