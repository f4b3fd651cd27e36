"""Load YAML config files into the typed `Config`, merging left to right, then `--set` overrides.

A key given twice in one mapping is an error (YAML would silently keep the last). An empty file (nothing, or only
comments) is an error too: a run config that says nothing is almost always the wrong file.
"""

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from sa_megatron.config.schema import SECTIONS, Config
from sa_megatron.errors import ConfigError


def load_config(files=(), overrides=(), validate_config=True) -> Config:
    """Merge `files` (later wins), apply `overrides` ("section.key=value"), type-check and validate."""
    merged: dict = {}
    for path in files:
        _merge(merged, _read_yaml(Path(path)))
    for item in overrides:
        _merge(merged, _parse_override(item))
    config = from_dict(merged)
    if validate_config:
        from sa_megatron.config.validate import validate

        validate(config)
    return config


def from_dict(raw: dict) -> Config:
    """Build a `Config` from nested plain data, with did-you-mean errors for unknown keys."""
    sections = {}
    for name, values in raw.items():
        _check_known(name, SECTIONS, "config section")
        cls = SECTIONS[name]
        if not isinstance(values, dict):
            raise ConfigError(f"section '{name}' must be a mapping of keys to values, got {values!r}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            _check_known(key, hints, f"key in section '{name}'")
            kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
        sections[name] = cls(**kwargs)
    return Config(**sections)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); expected a UTF-8 YAML file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {_yaml_problem(err)}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; expected a mapping of sections such as 'model:' or 'training:'")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    # A section with nothing under it (`model:`) reads as null; it means "no keys", like an empty mapping.
    return {section: {} if values is None else values for section, values in data.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated within one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _parse_override(item: str) -> dict:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{item}' must look like section.key=value (e.g. training.train_iters=100)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': the value is not valid YAML ({_yaml_problem(err)}); "
                          "quote it to pass a string") from None
    return {parts[0]: {parts[1]: value}}


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The one-line cause of a YAML error; str(err) spans several lines with the offending text and a caret."""
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def _merge(into: dict, update: dict) -> None:
    for section, values in update.items():
        if isinstance(values, dict) and isinstance(into.get(section), dict):
            into[section].update(values)
        else:
            into[section] = values


def _check_known(name, known, what: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(str(name), list(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(known)}"
        raise ConfigError(f"unknown {what} '{name}'{hint}")


def _coerce(value, hint, where: str):
    """Check `value` against a type hint, converting only where YAML is ambiguous (int→float, '1e-4'→float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value
