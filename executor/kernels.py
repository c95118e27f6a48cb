"""The executor's own kernels, as the microbenchmarks time them (calibrate what runs).

`fapool calibrate` hands this module to calibration.microbench (which never imports the
executor itself), so every compute point times the code a rank runs: attention through
executor.attention (bottom-right causal blocks, decode over a cache), norms through
executor.model.norm (fp32 RMSNorm), the activation as executor.model.ffn_partial applies it.
`host_overhead` times the executor's per-op host cost directly: the interpreter
(executor.program) running an op whose kernel does nothing, timer on.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from executor import attention
from executor.model import norm

HIDDEN = 4096


def attention_fn(device, dtype, batch, q_len, kv_len, heads, kv_heads, head_dim, causal):
    """(fn, impl): one attention call of the executor with these shapes, (b, s, H, d)."""
    q = torch.randn(batch, q_len, heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, kv_len, kv_heads, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    impl = "flash_attn" if attention.use_flash(q) else "sdpa"
    if causal:                          # the last q_len positions of kv_len (bottom-right)
        return (lambda: attention.causal_block(q, k, v)), impl
    return (lambda: attention.decode_full(q, k, v, kv_len)), impl   # sees every key


def memory_fn(device, dtype, kind, elements):
    """(fn, impl): the executor's memory-bound op of this kind over (elements / 4096, 4096)."""
    x = torch.randn(max(1, elements // HIDDEN), HIDDEN, device=device, dtype=dtype)
    if kind == "norm":
        weight = torch.ones(HIDDEN, device=device, dtype=dtype)
        return (lambda: norm(x, weight, "rmsnorm")), "executor.model.norm"
    if kind == "activation":
        return (lambda: F.gelu(x)), "gelu"
    out = torch.empty_like(x)
    return (lambda: out.copy_(x)), "copy"


def host_overhead(repeats: int = 2000) -> list:
    """Seconds per op the executor's interpreter spends around a kernel that does nothing:
    RankProgram.step_op dispatch, the timer's context and the recorder, as in a timed
    request.  Returns the per-op time of `repeats`-op batches (5 of them)."""
    from executor.measure import Timer
    from executor.program import RankProgram, Recorder
    from planner.schedule import compute

    class _Stub:                        # the least a RankProgram needs to run one op
        timer = Timer(torch.device("cpu"))

    prog = RankProgram.__new__(RankProgram)
    prog.rt, prog.recorder = _Stub(), Recorder()
    prog.prog, prog.at = [], 0           # nothing posted next: pack_qkv packs nothing
    prog.rt.timer.enabled = True
    op = compute("memory", "pack_qkv", 0, 0, bytes=0, kind="copy")   # its handler: no-op
    out = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            prog.step_op(op, 0, 0)
        out.append((time.perf_counter() - t0) / repeats)
    return out
