"""The study file: base config + grid, where the data comes from, and how each run is evaluated.

    name: cpu-small
    configs: [../models/tiny.yaml]         # merged left to right (paths relative to the study file)
    config: {training: {train_iters: 300}}  # then these sections, as in any config file
    grid:                                   # every combination is one run; shorthands or any section.key
      attention: [softmax, sa, sa_raw]      # model.attention
      position_encoding: [rope, alibi]      # model.position_encoding
      seed: [1, 2]                          # training.seed
    corpus:                                 # build tokenizer + datasets from books (else give eval.data and
      train: [gutenberg/*.txt]              #   set data.paths / tokenizer.model in the config)
      held_out: gutenberg/alice_in_wonderland_pg11.txt
      vocab_size: 2048
      dir: null                             # default: $SA_MEGATRON_DATA, else ../shared/data
    eval: {multiples: [1, 2, 4, 8, 16], score_last: null, eval_tokens: null}  # null: training length; all tokens
    study_dir: runs/studies/cpu-small       # relative to the current directory

Everything is checked, and every run's config built and validated, before anything trains.
"""

import difflib
import glob
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sa_megatron.config import Config, from_dict, load_config, to_dict, validate
from sa_megatron.config.loader import _read_yaml
from sa_megatron.config.schema import SECTIONS
from sa_megatron.errors import ConfigError

SHORTHANDS = {"attention": "model.attention", "position_encoding": "model.position_encoding", "seed": "training.seed"}
TOP_LEVEL = ("name", "configs", "config", "grid", "corpus", "eval", "study_dir")
CORPUS_KEYS = ("train", "held_out", "vocab_size", "dir")
EVAL_KEYS = ("data", "multiples", "score_last", "eval_tokens")
# The study sets these per run; a grid over them would break its layout.
RESERVED = ("checkpoint.save_dir", "logging.tensorboard_dir", "logging.run_name", "data.paths", "tokenizer.model")


@dataclass
class CorpusSpec:
    train: list[Path]
    held_out: Path
    vocab_size: int


@dataclass
class EvalSpec:
    multiples: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    score_last: Optional[int] = None  # None = the training length
    eval_tokens: Optional[int] = None  # evaluate the first this many held-out tokens at every length; None = all
    data: Optional[str] = None  # a held-out PREFIX when the study has no corpus section


@dataclass
class RunSpec:
    name: str
    settings: dict  # "section.key" → value, one per grid axis


@dataclass
class Study:
    path: Path
    name: str
    base: dict  # the merged base config as plain data
    grid: list[tuple[str, list]]
    corpus: Optional[CorpusSpec]
    eval: EvalSpec
    study_dir: Path
    runs: list[RunSpec]

    def run_config(self, run: RunSpec, paths: dict) -> Config:
        """The run's config: base, then its grid values, then the study's per-run paths ("section.key" → value)."""
        raw = {section: dict(values) for section, values in self.base.items()}
        for key, value in {**run.settings, **paths}.items():
            section, name = key.split(".")
            raw[section][name] = value
        try:
            config = from_dict(raw)
            validate(config)
        except ConfigError as err:
            raise ConfigError(f"{self.path}: run {run.name}: {err}") from None
        return config


def load_study(path, study_dir: Optional[str] = None) -> Study:
    path = Path(path)
    raw = _read_yaml(path)
    _check_keys(path, raw, TOP_LEVEL, "top-level key")
    if not isinstance(raw.get("grid"), dict) or not raw["grid"]:
        raise ConfigError(f"{path}: 'grid' must map config fields to lists of values, e.g. attention: [softmax, sa]")
    name = str(raw.get("name") or path.stem)
    base = _base_config(path, raw)
    grid = [_grid_axis(path, key, values) for key, values in raw["grid"].items()]
    corpus = _corpus(path, raw.get("corpus"))
    evaluation = _eval(path, raw.get("eval"))
    if corpus is None and evaluation.data is None:
        raise ConfigError(f"{path}: give a 'corpus' section (books to prepare) or 'eval: {{data: PREFIX}}' "
                          "(a held-out dataset no run trains on)")
    runs = [RunSpec(_run_name(grid, combo), {key: value for (key, _), value in zip(grid, combo)})
            for combo in itertools.product(*(values for _, values in grid))]
    if len({run.name for run in runs}) != len(runs):
        raise ConfigError(f"{path}: the grid repeats a value, so two runs would share a name")
    study = Study(path, name, base, grid, corpus, evaluation,
                  # Absolute: checkpoints record their data paths, and a run may resume from another directory.
                  Path(study_dir or raw.get("study_dir") or f"runs/studies/{name}").absolute(), runs)
    placeholders = {key: "placeholder" for key in ("checkpoint.save_dir", "logging.tensorboard_dir")}
    for run in runs:  # every run's config must validate before the first one trains
        study.run_config(run, placeholders)
    return study


def _check_keys(path: Path, raw: dict, known, what: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
            raise ConfigError(f"{path}: unknown {what} '{key}'; {hint}")


def _base_config(path: Path, raw: dict) -> dict:
    files = raw.get("configs") or []
    if not isinstance(files, list):
        raise ConfigError(f"{path}: 'configs' must be a list of config files, got {files!r}")
    inline = raw.get("config") or {}
    if not isinstance(inline, dict):
        raise ConfigError(f"{path}: 'config' must be a mapping of sections, got {inline!r}")
    try:
        base = to_dict(load_config([path.parent / f for f in files], validate_config=False))
        from_dict(inline)  # names the unknown section or key, with a did-you-mean
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for section, values in inline.items():
        base[section].update(values or {})
    return base


def _grid_axis(path: Path, key, values) -> tuple[str, list]:
    full = SHORTHANDS.get(key, key)
    section, _, name = str(full).partition(".")
    if section not in SECTIONS or name not in typing.get_type_hints(SECTIONS[section]):
        known = list(SHORTHANDS) + [f"{s}.{k}" for s, cls in SECTIONS.items() for k in typing.get_type_hints(cls)]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "expected attention, position_encoding, seed or section.key"
        raise ConfigError(f"{path}: unknown grid key '{key}'; {hint}")
    if full in RESERVED:
        raise ConfigError(f"{path}: grid key '{key}' is set by the study for each run and cannot vary")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: grid key '{key}' must list one or more values, got {values!r}")
    return full, values


def _run_name(grid, combo) -> str:
    """e.g. sa-rope-s1; other axes read key=value (e.g. lr=0.001)."""
    parts = []
    for (key, _), value in zip(grid, combo):
        if key == "training.seed":
            parts.append(f"s{value}")
        elif key in ("model.attention", "model.position_encoding"):
            parts.append(str(value))
        else:
            parts.append(f"{key.split('.')[1]}={value}")
    return "-".join(parts)


def _corpus(path: Path, raw) -> Optional[CorpusSpec]:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "train" not in raw or "held_out" not in raw:
        raise ConfigError(f"{path}: 'corpus' must give 'train' (file globs) and 'held_out' (one file)")
    _check_keys(path, raw, CORPUS_KEYS, "corpus key")
    from sa_megatron.data import default_corpus_dir

    root = default_corpus_dir(raw.get("dir"))
    held_out = root / str(raw["held_out"])
    patterns = raw["train"] if isinstance(raw["train"], list) else [raw["train"]]
    train = sorted({Path(p) for pattern in patterns for p in glob.glob(str(root / str(pattern)))} - {held_out})
    if not held_out.is_file():
        raise ConfigError(f"{path}: corpus.held_out {held_out} is not a file")
    if not train:
        raise ConfigError(f"{path}: corpus.train {patterns} matches no file under {root} besides the held-out one")
    vocab_size = raw.get("vocab_size", 2048)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ConfigError(f"{path}: corpus.vocab_size must be an integer, got {vocab_size!r}")
    return CorpusSpec(train, held_out, vocab_size)


def _eval(path: Path, raw) -> EvalSpec:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: 'eval' must be a mapping, got {raw!r}")
    _check_keys(path, raw, EVAL_KEYS, "eval key")
    spec = EvalSpec(**{key: raw[key] for key in EVAL_KEYS if raw.get(key) is not None})
    positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    if not isinstance(spec.multiples, list) or not spec.multiples or not all(map(positive, spec.multiples)):
        raise ConfigError(f"{path}: eval.multiples must list positive integers, got {spec.multiples!r}")
    for key in ("score_last", "eval_tokens"):
        value = getattr(spec, key)
        if value is not None and not positive(value):
            raise ConfigError(f"{path}: eval.{key} must be a positive integer, got {value!r}")
    return spec
