"""`sa-megatron train CONFIG... [--set k=v]`: the per-rank training entry (launch it with torchrun, srun or alone).

When SA_MEGATRON_EXIT_REASON_FILE names a file, rank 0 writes why training ended into it: `stopped` (a SIGTERM or
SIGUSR1 made the run save and stop early: there is more to train), `finished` (training.train_iters reached) or
`diverged` (the NaN/inf policy stopped it; the exit code says so too). The Slurm script reads it to decide
whether the job requeues itself: only `stopped` does.
"""

import os

from launcher.commands.config import add_config_arguments

EXIT_REASON_FILE = "SA_MEGATRON_EXIT_REASON_FILE"


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
    from sa_megatron.training.nonfinite import DIVERGED_EXIT_CODE

    try:
        result = train(load_config(args.configs, args.overrides))
        reason_file = os.environ.get(EXIT_REASON_FILE)
        if reason_file and dist.get_rank() == 0:
            with open(reason_file, "w") as f:
                f.write("diverged\n" if result.diverged else "stopped\n" if result.stopped_by_signal else "finished\n")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # A diverged run must look neither finished nor misconfigured (2), and Slurm must not requeue it.
    return DIVERGED_EXIT_CODE if result.diverged else 0
