"""`sa-megatron config show|fields`: print the resolved config, or document every field."""

import dataclasses
import re
import typing

import yaml

from launcher.commands.arguments import positive_int


def add_config_arguments(parser) -> None:
    """The CONFIG... and --set arguments shared by every command that reads a run config."""
    parser.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML files, merged left to right")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one field after the files (repeatable), e.g. --set training.train_iters=50",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="inspect configs")
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="print the resolved config as YAML, after the same checks as train (with "
                                           "tokenizer.model set: the model's vocabulary from it, and its padding)")
    add_config_arguments(show)
    show.add_argument("--world-size", type=positive_int, metavar="N",
                      help="also check the layout and batch rules for N ranks (torchrun's nproc × nodes)")
    show.set_defaults(handler=show_config)
    actions.add_parser("fields", help="list every field with its type, default and meaning").set_defaults(
        handler=list_fields
    )


def show_config(args) -> None:
    from sa_megatron.config import load_config, to_dict, validate

    config = load_config(args.configs, args.overrides)
    if args.world_size is not None:
        validate(config, args.world_size)
    comments = {}
    if config.tokenizer.model:
        config, comments = effective_vocab(config)
    print(commented_yaml(to_dict(config), comments), end="")


def commented_yaml(sections: dict, comments: dict) -> str:
    """The config as YAML, with a comment after each `comments[section][key]` line (one section at a time, so a key
    is found in its own section)."""
    text = ""
    for section, values in sections.items():
        part = yaml.safe_dump({section: values}, sort_keys=False)
        for key, comment in comments.get(section, {}).items():
            part = re.sub(rf"^  {key}: .*$", lambda line: f"{line[0]}  # {comment}", part, count=1, flags=re.M)
        text += part
    return text


def effective_vocab(config):
    """The config with model.vocab_size resolved from tokenizer.model as `train` does (and refused as it would be),
    and per section the comments that say so: the tokenizer's real size and the padded embedding size. The
    tokenizer section's vocab_size only sizes a tokenizer trained from the config, which a reader could take for
    the model's."""
    from sa_megatron.data import load_tokenizer
    from sa_megatron.training.preflight import resolve_vocab

    tokenizer = load_tokenizer(config.tokenizer.model)
    resolved, padded = resolve_vocab(config, tokenizer)
    pieces = f"tokenizer.model has {tokenizer.vocab_size} pieces"
    source = pieces if config.model.vocab_size is None else f"as set; {pieces}"
    padding = (f"the embedding pads it to {padded} rows (a multiple of make_vocab_size_divisible_by "
               f"{config.model.make_vocab_size_divisible_by} × tensor_parallel {config.parallel.tensor_parallel})")
    return resolved, {
        "model": {"vocab_size": f"{source}; {padding}"},
        "tokenizer": {"vocab_size": f"not the model's: sizes a tokenizer trained from this config (make demo); {pieces}"},
    }


def list_fields(args) -> None:
    from sa_megatron.config.schema import SECTIONS

    for section, cls in SECTIONS.items():
        print(f"{section}:")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            hint = hints[f.name]
            type_name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            valid = f"  valid {f.metadata['valid']}" if f.metadata.get("valid") else ""
            print(f"  {f.name}: {default!r}  [{type_name}]{valid}\n      {f.metadata['doc']}")
