"""`sa-megatron checkpoint convert DIR`: make a checkpoint resumable at another tensor/pipeline/data-parallel size."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("checkpoint", help="work on training checkpoints")
    actions = parser.add_subparsers(dest="action", required=True)
    convert = actions.add_parser(
        "convert", help="write a checkpoint's universal form (DeepSpeed's), which a run at another layout resumes from")
    convert.add_argument("load", metavar="DIR", help="a save_dir (its newest complete checkpoint) or one step_N dir")
    convert.set_defaults(handler=run_convert)


def run_convert(args) -> None:
    from pathlib import Path

    from sa_megatron.training.checkpoint import complete_checkpoint
    from sa_megatron.training.universal import convert_to_universal

    universal = convert_to_universal(complete_checkpoint(Path(args.load)))
    print(f"wrote {universal}: start the run with the same checkpoint.save_dir at the new layout to resume from it")
