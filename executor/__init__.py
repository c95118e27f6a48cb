"""Executor: runs a plan.json for real with torch.distributed (FA Pool and static TP x PP).

    fapool run --plan plan.json [--verify] [--json]   # torchrun on local ranks, gloo on CPU
    torchrun --nproc-per-node N -m executor --plan plan.json  # the same entry on a cluster

`fapool run` launches ``python -m torch.distributed.run --standalone ... -m executor`` in a
session of its own and watches it (executor.launch): a rank that raises, dies or stalls
ends the whole run within the timeout with one line naming the rank, nothing left behind.

Modules: model (weights, norm, FFN), parallel (Megatron TP), attention (flash-attn / SDPA,
bottom-right causal blocks, LSE merge), groups (process groups), pool (FA Pool prefill and
decode), fapool (base ranks), pipeline (static baseline), reference (single-process check),
measure (timers, heartbeat), engine (one case on every rank), report (summary, store),
launch (local torchrun launcher + watchdog), cli (`fapool run`).

Fault injection for tests: FAPOOL_FAULT=raise:R | exit:R | hang:R makes rank R raise,
exit at once, or sleep forever at the start of the first timed request.
Nothing here imports torch at import time except the modules that run inside ranks.
"""
