"""Entry point of the `sa-megatron` console script.

Each subcommand lives in `launcher/commands/<name>.py` and registers its parser there. Command
modules import heavy libraries (torch, deepspeed) inside their handlers so `--help` stays instant.
"""

import argparse
import importlib
import sys

from sa_megatron.errors import UserInputError

COMMANDS = ["config", "tokenizer", "data", "train", "eval", "generate", "plan", "slurm", "checkpoint", "study"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sa-megatron", description="GPT pretraining with Self-Adjust Softmax attention."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"launcher.commands.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserInputError as err:
        print(f"sa-megatron {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
