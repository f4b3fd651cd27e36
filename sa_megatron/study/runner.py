"""Run a study locally: prepare the data, then train and evaluate each run in turn, rewriting the report after each.

Layout under the study dir:
    data/                       tokenizer + train / held-out datasets (when the study has a corpus section)
    runs/NAME/checkpoints/      the run's checkpoint.save_dir (auto-resume; losses.jsonl)
    runs/NAME/eval.json         length-extrapolation results of its final checkpoint
    runs/NAME/diverged.txt      the trainer's report when the NaN/inf policy stopped the run (not retried)
    tensorboard/NAME/           the run's TensorBoard logs: `tensorboard --logdir STUDY_DIR/tensorboard`
    report.md, *.png

A run is trained when its newest complete checkpoint reached training.train_iters (however it got there: locally or
in a Slurm array task), and evaluated when eval.json records that checkpoint and the current eval settings.
"""

import fnmatch
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sa_megatron.config import Config
from sa_megatron.errors import UserInputError
from sa_megatron.study.spec import RunSpec, Study
from sa_megatron.training.checkpoint import newest_complete_checkpoint
from sa_megatron.training.checkpoint_files import read_metadata


class StudyInterrupted(UserInputError):
    """A stop signal ended a run early; it saved, and running the study again resumes it."""


@dataclass
class PlannedRun:
    spec: RunSpec
    config: Config
    run_dir: Path

    @property
    def save_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def trained_steps(self) -> int:
        newest = newest_complete_checkpoint(self.save_dir) if self.save_dir.is_dir() else None
        metadata = read_metadata(newest) if newest else None
        return metadata["iteration"] if metadata else 0

    def is_trained(self) -> bool:
        return self.trained_steps() >= self.config.training.train_iters

    def diverged(self) -> Optional[str]:
        path = self.run_dir / "diverged.txt"
        return path.read_text().strip() if path.is_file() else None


def select_runs(study: Study, only: Optional[str]) -> list[RunSpec]:
    """The runs whose name matches PATTERN (a glob; plain text matches anywhere in the name)."""
    if not only:
        return study.runs
    pattern = only if any(c in only for c in "*?[") else f"*{only}*"
    chosen = [run for run in study.runs if fnmatch.fnmatchcase(run.name, pattern)]
    if not chosen:
        raise UserInputError(f"--only {only!r} matches none of the runs: {', '.join(r.name for r in study.runs)}")
    return chosen


def prepare(study: Study) -> tuple[dict, str]:
    """The per-run data settings and the held-out prefix (preparing the corpus once, reused afterwards)."""
    if study.corpus is None:
        return {}, study.eval.data
    from sa_megatron.study.corpus import prepare_study_corpus

    c = study.corpus
    tokenizer, train_prefix, held_out = prepare_study_corpus(study.study_dir / "data", c.train, c.held_out,
                                                             c.vocab_size)
    return {"data.paths": [train_prefix], "tokenizer.model": str(tokenizer)}, held_out


def plan(study: Study, runs: list[RunSpec], data_settings: dict) -> list[PlannedRun]:
    planned = []
    for run in runs:
        run_dir = study.study_dir / "runs" / run.name
        paths = {**data_settings, "checkpoint.save_dir": str(run_dir / "checkpoints"),
                 "logging.tensorboard_dir": str(study.study_dir / "tensorboard"), "logging.run_name": run.name}
        planned.append(PlannedRun(run, study.run_config(run, paths), run_dir))
    return planned


def run_local(study: Study, planned: list[PlannedRun], held_out: str) -> None:
    from sa_megatron.study.evaluate import eval_settings, evaluate_run
    from sa_megatron.study.report import write_report

    started = time.perf_counter()
    for index, run in enumerate(planned, 1):
        tag = f"[{index}/{len(planned)}] {run.spec.name}"
        settings = eval_settings(study.eval, run.config.model.seq_length, held_out)
        if run.diverged():
            print(f"{tag}: diverged earlier, skipped ({run.run_dir / 'diverged.txt'})", flush=True)
            continue
        eval_path = run.run_dir / "eval.json"
        if run.is_trained() and _evaluated(eval_path, settings, run.save_dir):
            print(f"{tag}: finished earlier, skipped", flush=True)
            continue
        run_started = time.perf_counter()
        if not run.is_trained():
            done = run.trained_steps()
            what = f"resuming at step {done}" if done else "training"
            print(f"{tag}: {what} ({run.config.training.train_iters} steps) | study {_elapsed(started)}", flush=True)
            if not _train(run):
                write_report(study)
                continue
        print(f"{tag}: evaluating at lengths {', '.join(map(str, settings['lengths']))}", flush=True)
        results = evaluate_run(run.save_dir, held_out, settings, eval_path)
        ppl = ", ".join(f"{r['length']}: {r['ppl']:.2f}" for r in results["whole"])
        print(f"{tag}: done in {_elapsed(run_started)} | ppl {ppl} | study {_elapsed(started)}", flush=True)
        write_report(study)  # after every run, so an unfinished study still has a report of what finished


def _train(run: PlannedRun) -> bool:
    """Train (or resume) one run; False when it diverged."""
    from sa_megatron.training.loop import train

    run.run_dir.mkdir(parents=True, exist_ok=True)
    result = train(run.config)
    if result.stopped_by_signal:
        raise StudyInterrupted(f"run {run.spec.name} stopped by a signal at step {result.iteration} and saved; "
                               "run the study again to resume it")
    if result.diverged:
        (run.run_dir / "diverged.txt").write_text(result.diverged + "\n")
        print(f"{run.spec.name}: {result.diverged}; the report lists it as diverged", flush=True)
        return False
    return True


def _evaluated(eval_path: Path, settings: dict, save_dir: Path) -> bool:
    try:
        recorded = json.loads(eval_path.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("settings") == settings and recorded.get("checkpoint") == str(newest_complete_checkpoint(save_dir))


def _elapsed(since: float) -> str:
    seconds = int(time.perf_counter() - since)
    return f"{seconds // 60}m{seconds % 60:02d}s"
