"""`sa-megatron plan`: rank the tensor × pipeline × data layouts of a cluster for a config, with memory per GPU."""

import contextlib
import json
import sys

from launcher.commands.arguments import positive_int
from launcher.commands.config import add_config_arguments

DEFAULT_VOCAB_SIZE = 32000
RANKING = ("layouts that fit come first, then the smallest pipeline bubble, then the least estimated "
           "communication time (bytes over --intra-node-gbps / --inter-node-gbps)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="rank parallel layouts for a cluster by memory per GPU, pipeline bubble and communication",
        description="Lists every tensor × pipeline × data-parallel layout of NODES × GPUS_PER_NODE devices that the "
                    "config allows, with memory per GPU (weights, gradients, optimizer states under the configured "
                    "precision and ZeRO stage, activations of the busiest pipeline stage), the pipeline bubble and "
                    f"per-step communication. Ranking: {RANKING}. A layout fits when its total stays within 90% of "
                    "--gpu-memory-gib: 10% is left to the CUDA context, NCCL, DeepSpeed's buckets and "
                    "fragmentation.")
    add_config_arguments(parser)
    parser.add_argument("--nodes", type=positive_int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=positive_int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense peak TFLOP/s of one GPU for a rough step-time column "
                             "(default: logging.peak_tflops_per_device; 0 = no estimate)")
    parser.add_argument("--intra-node-gbps", type=float, default=300.0,
                        help="collective bandwidth of one GPU inside a node, GB/s (default 300, NVLink)")
    parser.add_argument("--inter-node-gbps", type=float, default=40.0,
                        help="network bandwidth of one GPU across nodes, GB/s (default 40, 400 Gb/s per GPU)")
    parser.add_argument("--vocab-size", type=positive_int, default=None,
                        help="vocabulary when model.vocab_size is null and no tokenizer.model is set "
                             f"(default {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--sequence-parallel", action="store_true",
                        help="count activations with sequence parallelism (default: parallel.sequence_parallel)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run_plan)


def run_plan(args) -> int:
    # DeepSpeed (imported by the model) logs to stdout; keep stdout for the plan, so `--json` output parses.
    with contextlib.redirect_stdout(sys.stderr):
        plan, config, cluster, vocab_size, sequence_parallel = _make_plan(args)
    if args.json:
        print(json.dumps(_as_json(plan, cluster), indent=2))
    else:
        _print_table(plan, config, cluster, vocab_size, sequence_parallel)
    return 0


def _make_plan(args):
    from sa_megatron.config import load_config
    from sa_megatron.errors import UserInputError
    from sa_megatron.planning import Cluster, plan_layouts

    for name in ("gpu_memory_gib", "intra_node_gbps", "inter_node_gbps"):
        if not getattr(args, name) > 0:  # also refuses nan
            raise UserInputError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if args.peak_tflops is not None and not args.peak_tflops >= 0:
        raise UserInputError(f"--peak-tflops must be zero or positive, got {args.peak_tflops}")
    config = load_config(args.configs, args.overrides)
    vocab_size = _vocab_size(config, args.vocab_size)
    peak = config.logging.peak_tflops_per_device if args.peak_tflops is None else args.peak_tflops
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu_memory_gib, args.intra_node_gbps,
                      args.inter_node_gbps, peak)
    sequence_parallel = args.sequence_parallel or getattr(config.parallel, "sequence_parallel", False)
    plan = plan_layouts(config, vocab_size, cluster, sequence_parallel)
    if not plan.layouts:
        raise UserInputError(f"no valid layout for {args.nodes} × {args.gpus_per_node} GPUs; e.g. "
                             f"{plan.skipped[0] if plan.skipped else 'none'}")
    return plan, config, cluster, vocab_size, sequence_parallel


def _vocab_size(config, from_argument):
    """model.vocab_size, else --vocab-size, else the tokenizer's, else the default (said on stderr)."""
    if config.model.vocab_size is not None:
        return config.model.vocab_size
    if from_argument is not None:
        return from_argument
    if config.tokenizer.model is not None:
        from sa_megatron.data import load_tokenizer

        return load_tokenizer(config.tokenizer.model).vocab_size
    print(f"note: model.vocab_size is null and no tokenizer.model is set; assuming {DEFAULT_VOCAB_SIZE} "
          "(pass --vocab-size)", file=sys.stderr)
    return DEFAULT_VOCAB_SIZE


def _as_json(plan, cluster) -> dict:
    from sa_megatron.planning import GIB

    layouts = []
    for layout in plan.layouts:
        layouts.append({
            "tensor_parallel": layout.tensor_parallel, "pipeline_parallel": layout.pipeline_parallel,
            "data_parallel": layout.data_parallel, "micro_batches": layout.micro_batches,
            "busiest_stage": layout.busiest_stage, "parameters_per_device": layout.parameters_per_device,
            "memory_gib": {key: round(value / GIB, 3) for key, value in layout.memory.items()},
            "fits": layout.fits, "bubble_fraction": round(layout.bubble_fraction, 5),
            "communication_gb_per_step": {"tensor_parallel": round(layout.traffic.tensor_parallel / 1e9, 3),
                                          "data_parallel": round(layout.traffic.data_parallel / 1e9, 3),
                                          "pipeline": round(layout.traffic.pipeline / 1e9, 3)},
            "communication_seconds": round(layout.communication_seconds, 4),
            "step_seconds": None if layout.step_seconds is None else round(layout.step_seconds, 3),
        })
    return {"parameters": plan.parameters, "usable_gib_per_gpu": round(cluster.usable_bytes / GIB, 2),
            "layouts": layouts, "skipped": plan.skipped}


def _print_table(plan, config, cluster, vocab_size, sequence_parallel) -> None:
    from sa_megatron.planning import GIB

    t = config.training
    print(f"{plan.parameters:,} parameters (vocab {vocab_size}); {cluster.nodes} × {cluster.gpus_per_node} GPUs of "
          f"{cluster.gpu_memory_gib:g} GiB ({cluster.usable_bytes / GIB:.1f} usable); {t.precision}, "
          f"ZeRO {config.parallel.zero_stage}, micro batch {t.micro_batch_size}, global batch {t.global_batch_size}, "
          f"activation checkpointing {'on' if t.activation_checkpointing else 'off'}, "
          f"sequence parallel {'on' if sequence_parallel else 'off'}")
    header = (f"{'tp':>3} {'pp':>3} {'dp':>4} {'m':>4}  {'weights':>8} {'grads':>8} {'optim':>8} {'activ':>8} "
              f"{'total':>8}  {'fits':<4} {'bubble':>7} {'TP GB':>8} {'DP GB':>8} {'PP GB':>7} {'comm s':>7}")
    with_step = cluster.peak_tflops > 0
    print(header + (f" {'step s':>7}" if with_step else ""))
    for layout in plan.layouts:
        mem = {key: value / GIB for key, value in layout.memory.items()}
        traffic = layout.traffic
        line = (f"{layout.tensor_parallel:>3} {layout.pipeline_parallel:>3} {layout.data_parallel:>4} "
                f"{layout.micro_batches:>4}  {mem['weights']:>8.1f} {mem['gradients']:>8.1f} {mem['optimizer']:>8.1f} "
                f"{mem['activations'] + mem['workspace']:>8.1f} {mem['total']:>8.1f}  {'yes' if layout.fits else 'no':<4} "
                f"{layout.bubble_fraction:>7.1%} {traffic.tensor_parallel / 1e9:>8.1f} "
                f"{traffic.data_parallel / 1e9:>8.1f} {traffic.pipeline / 1e9:>7.1f} {layout.communication_seconds:>7.2f}")
        print(line + (f" {layout.step_seconds:>7.2f}" if with_step else ""))
    print(f"memory in GiB per GPU for the busiest pipeline stage (activ includes the loss workspace); m = "
          f"micro-batches per step; traffic per GPU per step. Ranked: {RANKING}.")
    if plan.skipped:
        print(f"{len(plan.skipped)} layouts left out, e.g. {plan.skipped[0]}")
    if any("global batch" in reason for reason in plan.skipped):
        print("(to consider those, set training.global_batch_size to a multiple of micro_batch_size × data parallel)")
