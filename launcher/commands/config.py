"""`sa-megatron config show|fields`: print the resolved config, or document every field."""

import dataclasses
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
    show = actions.add_parser("show", help="print the resolved config as YAML, after the same checks as train")
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
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")


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
