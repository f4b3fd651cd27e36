"""Read a study's finished runs back: eval.json, losses.jsonl and the TensorBoard scalars the trainer wrote."""

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sa_megatron.study.spec import Study
from sa_megatron.training.metrics import QK_GRAD_NORM_PREFIX, ROW_MASS_PREFIX

LEGACY_PREFIXES = {"attention/row_mass/": ROW_MASS_PREFIX, "grad_norm/": QK_GRAD_NORM_PREFIX}


@dataclass
class RunResult:
    name: str
    attention: str
    position_encoding: str
    seed: int
    ppl: dict = field(default_factory=dict)  # mode ("whole" | "last") → {length: ppl}
    losses: dict = field(default_factory=dict)  # step → loss (the last line for a step wins, as in a resume)
    scalars: dict = field(default_factory=dict)  # TensorBoard tag → [(step, value)]
    diverged: Optional[str] = None


def collect(study: Study) -> tuple[list[RunResult], list[str]]:
    """(results of evaluated or diverged runs, names of the runs not finished yet)."""
    done, missing = [], []
    for run in study.runs:
        config = study.run_config(run, {"checkpoint.save_dir": "-", "logging.tensorboard_dir": "-"})
        run_dir = study.study_dir / "runs" / run.name
        result = RunResult(run.name, config.model.attention, config.model.position_encoding, config.training.seed)
        diverged, eval_path = run_dir / "diverged.txt", run_dir / "eval.json"
        if diverged.is_file():
            result.diverged = diverged.read_text().strip()
        elif eval_path.is_file():
            recorded = json.loads(eval_path.read_text())
            result.ppl = {mode: {r["length"]: r["ppl"] for r in recorded[mode]} for mode in ("whole", "last")}
        else:
            missing.append(run.name)
            continue
        result.losses = _losses(run_dir / "checkpoints" / "losses.jsonl")
        result.scalars = _scalars(study.study_dir / "tensorboard" / run.name)
        done.append(result)
    return done, missing


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample std (None with one seed: the spread is unknown)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _losses(path: Path) -> dict:
    losses = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            losses[record["step"]] = record["loss"]
    return dict(sorted(losses.items()))


def _scalars(logdir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not logdir.is_dir():
        return {}
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0 = keep every point
    accumulator.Reload()
    wanted = [tag for tag in accumulator.Tags()["scalars"]
              if _current_name(tag).startswith((ROW_MASS_PREFIX, QK_GRAD_NORM_PREFIX))]
    # A resumed run logs into the same folder again; the last value for a step wins, as with losses.
    return {_current_name(tag): sorted({e.step: e.value for e in accumulator.Scalars(tag)}.items()) for tag in wanted}


def _current_name(tag: str) -> str:
    """Runs trained before the tags were renamed (so that TensorBoard lists them after train/ and valid/) still plot."""
    for old, new in LEGACY_PREFIXES.items():
        if tag.startswith(old):
            return new + tag[len(old):]
    return tag
