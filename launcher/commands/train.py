"""`sa-megatron train CONFIG... [--set k=v]`: the per-rank training entry (launch it with torchrun, srun or alone)."""

from launcher.commands.config import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="pretrain a GPT (one process per rank; reads torchrun's RANK/WORLD_SIZE/MASTER_* variables)"
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run_train)


def run_train(args) -> int:
    import torch.distributed as dist

    from sa_megatron.config import load_config
    from sa_megatron.training.loop import train

    try:
        train(load_config(args.configs, args.overrides))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
