"""Flags shared by `simulate`, `run`, `plan`: each option's help text lives here, once."""

from __future__ import annotations

import argparse

from calibration.errors import MAX_INT, InputError
from planner.cluster import ClusterSpec, resolve_cluster
from planner.hf_config import resolve_model
from planner.model import KV_PRECISIONS, PRECISIONS, ModelSpec
from planner.strategy import DECODE_KV_PLACEMENTS, FAPoolStrategy, StaticStrategy, Strategy
from planner.workload import DEFAULT_OUTPUT_LEN, PAPER_BATCH, Workload


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example epilogs' line breaks."""


def _int(text: str) -> int:
    """An integer flag: at most 2^40 in size (calibration.errors.MAX_INT)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"{text} is more than 2^40")
    return value


def add_model_options(p: argparse.ArgumentParser, default_model: str = "paper-4l",
                      precision: bool = True) -> None:
    """--model and its overrides; precision: --dtype / --kv-dtype too (`fapool run` has
    its own --dtype, the executor's torch dtype)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model,
                   help="preset (paper-4l, llama-2-7b, llama-3-8b, mistral-7b, qwen2-7b, "
                        "gemma-7b, mixtral-8x7b, ..., tiny), a HF config.json or a model "
                        "directory holding one (default %(default)s)")
    for name, what in (("layers", "transformer layers"), ("hidden", "hidden size"),
                       ("heads", "attention heads"), ("kv-heads", "K/V heads (GQA)"),
                       ("head-dim", "head dimension"), ("ffn", "FFN inner size"),
                       ("vocab", "vocabulary size")):
        g.add_argument(f"--{name}", type=_int, default=None, help=f"override the model's {what}")
    if not precision:
        return
    g.add_argument("--dtype", dest="precision", choices=sorted(PRECISIONS), default=None,
                   help="weights' precision (default: the model's, bf16 for presets); fp8: "
                        "FP8 weights on FP8 tensor cores (H100; A100 has none)")
    g.add_argument("--kv-dtype", dest="kv_precision", choices=sorted(KV_PRECISIONS),
                   default=None,
                   help="K/V cache precision (default: the activations')")


def add_cluster_options(p: argparse.ArgumentParser, default_cluster: str = "dgx-a100") -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", default=default_cluster,
                   help="cluster preset: dgx-a100, dgx-h100, local (default %(default)s)")
    g.add_argument("--nodes", type=_int, default=None, help="override the preset's node count")
    g.add_argument("--profile", default=None,
                   help="hardware profile name or YAML path (default: the cluster's own)")


def add_workload_options(p: argparse.ArgumentParser, default_seq: int = 16384) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--batch", type=_int, default=PAPER_BATCH,
                   help="sequences per batch (default %(default)s; the paper's is 1024)")
    g.add_argument("--seq-len", type=_int, default=default_seq,
                   help="input (prompt) tokens per sequence (default %(default)s)")
    g.add_argument("--output-len", type=_int, default=DEFAULT_OUTPUT_LEN,
                   help="generated tokens per sequence (default %(default)s; the paper gives "
                        "none)")


def add_strategy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("strategy")
    g.add_argument("--strategy", choices=("static", "fapool"), default="fapool",
                   help="static TP x PP, or FA Pool (default %(default)s)")
    g.add_argument("--tp", type=_int, default=8,
                   help="tensor-parallel degree: of each stage (static) or the base group "
                        "(fapool) (default %(default)s)")
    g.add_argument("--pp", type=_int, default=2, help="pipeline stages, static only (default %(default)s)")
    g.add_argument("--microbatches", type=_int, default=None,
                   help="micro-batches per batch in both phases (the phase flags below win)")
    g.add_argument("--prefill-microbatches", type=_int, default=None,
                   help="prefill's micro-batches (default: the smallest count whose "
                        "activations fit, at least one per stage)")
    g.add_argument("--decode-microbatches", type=_int, default=None,
                   help="decode's micro-batches (default: one per pipeline stage, 1 at PP=1; "
                        "FA Pool with a pool: prefill's count)")
    g.add_argument("--threshold", type=_int, default=4096,
                   help="sequence length at which the pool is activated (default %(default)s)")
    g.add_argument("--pool-gpus", type=_int, default=None,
                   help="fixed pool size (default: the rule min(ceil(seq/T), M))")
    g.add_argument("--tokens-per-pool-gpu", type=_int, default=512,
                   help="T in the pool rule (default %(default)s)")
    g.add_argument("--max-pool", type=_int, default=32,
                   help="M in the pool rule (default %(default)s)")
    g.add_argument("--decode-kv", choices=DECODE_KV_PLACEMENTS, default="split-batch",
                   help="where the pool keeps the K/V cache in decode (default %(default)s)")
    g.add_argument("--balanced", action="store_true",
                   help="head-tail causal load balancing of the pool's Q blocks")


def _microbatches(args) -> dict:
    """{microbatches, decode_microbatches} from --microbatches and the per-phase flags."""
    both = args.microbatches
    prefill = args.prefill_microbatches if args.prefill_microbatches is not None else both
    decode = args.decode_microbatches if args.decode_microbatches is not None else both
    return {"microbatches": prefill, "decode_microbatches": decode}


def model_from_args(args) -> ModelSpec:
    return resolve_model(args.model).with_overrides(
        layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
        head_dim=args.head_dim, ffn=args.ffn, vocab=args.vocab).with_precision(
        getattr(args, "precision", None), getattr(args, "kv_precision", None))


def cluster_from_args(args) -> ClusterSpec:
    return resolve_cluster(args.cluster, nodes=args.nodes, profile=args.profile)


def workload_from_args(args) -> Workload:
    return Workload(batch=args.batch, input_len=args.seq_len, output_len=args.output_len)


def strategy_from_args(args) -> Strategy:
    if args.strategy == "static":
        return StaticStrategy(tp=args.tp, pp=args.pp, **_microbatches(args))
    if args.strategy == "fapool":
        return FAPoolStrategy(base_tp=args.tp, threshold=args.threshold,
                              tokens_per_pool_gpu=args.tokens_per_pool_gpu,
                              max_pool=args.max_pool, pool_gpus=args.pool_gpus,
                              decode_kv=args.decode_kv, **_microbatches(args),
                              balanced=args.balanced)
    raise InputError("--strategy", f"unknown strategy {args.strategy!r}")


def specs_from_args(args):
    """(model, cluster, strategy, workload) from the shared flags, all validated."""
    return (model_from_args(args), cluster_from_args(args), strategy_from_args(args),
            workload_from_args(args))
