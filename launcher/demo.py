"""`make demo`: prepare tinyshakespeare, train a tiny SA-Softmax GPT on CPU, evaluate it, sample from it.

Every step runs the same `sa-megatron` command a user would type, and prints it first. A re-run reuses what is
still current: the prepared data (without needing the corpus again), and eval's and generate's outputs when they were
written after the newest checkpoint with the same arguments.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

from sa_megatron.config import load_config
from sa_megatron.errors import DataError, UserInputError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "runs" / "demo.yaml"
DATA_RECORD = "demo-data.json"  # in WORK/data: the files the demo prepared, so a re-run finds them without the corpus


class StepFailed(Exception):
    """A demo step exited non-zero (`code`); it has already printed why."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def run(*args: str, stdout_copy: Optional[Path] = None) -> None:
    """Run `sa-megatron ARGS`; with `stdout_copy`, its stdout is also written there."""
    command = ["sa-megatron", *args]
    print(f"\n$ {shlex.join(command)}", flush=True)
    capture = {} if stdout_copy is None else {"stdout": subprocess.PIPE, "text": True}
    done = subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=REPO, **capture)
    if stdout_copy is not None:
        print(done.stdout, end="", flush=True)
        stdout_copy.write_text(done.stdout, encoding="utf-8")
    if done.returncode != 0:
        message = f"demo: `sa-megatron {args[0]}` failed with exit code {done.returncode} (its output is above)"
        raise StepFailed(message, done.returncode)


def run_unless_current(output: Path, checkpoints: Path, *args: str, stdout_copy: bool = False) -> None:
    """Run `sa-megatron ARGS` (which writes `output`) unless `output` was written after the newest checkpoint by the
    same arguments, as its `.args.json` stamp records."""
    stamp = output.with_name(f"{output.name}.args.json")
    newest = newest_checkpoint_marker(checkpoints)
    if output.is_file() and newest is not None and is_current(stamp, list(args), newest):
        print(f"\n{args[0]}: skipped, {output} is current (written after {newest.parent.name}, same arguments)",
              flush=True)
        return
    run(*args, stdout_copy=output if stdout_copy else None)
    stamp.write_text(json.dumps({"args": list(args)}) + "\n", encoding="utf-8")  # after the output it vouches for


def newest_checkpoint_marker(save_dir: Path) -> Optional[Path]:
    """The COMPLETE marker of the newest complete checkpoint in `save_dir`: its mtime says when that one was done."""
    from sa_megatron.training import checkpoint_files as files

    newest = next((step for step in files.step_dirs(save_dir) if files.is_complete(step)), None)
    return None if newest is None else newest / files.MARKER


def is_current(stamp: Path, args: list, newest_marker: Path) -> bool:
    """Whether `stamp` records `args` and was written after `newest_marker`."""
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        return recorded.get("args") == args and stamp.stat().st_mtime > newest_marker.stat().st_mtime
    except (OSError, ValueError, AttributeError):  # missing, unreadable or not a record: not current
        return False


def demo_data(data_dir: Path, config, corpus: Optional[str]):
    """(tokenizer, train prefix, valid prefix): the ones `data_dir` already holds when they are intact and no corpus
    was named, else prepared from the corpus (a download at worst) and recorded for the next run."""
    from sa_megatron.data import default_corpus_dir, prepare_corpus

    prepared = None if corpus else prepared_data(data_dir, config)
    if prepared is not None:
        print(f"Using the corpus prepared in {data_dir} (its datasets' sidecars match the tokenizer's sha256)",
              flush=True)
        return prepared
    source = default_corpus_dir(corpus)  # resolved once: it may mean a download
    print(f"Preparing the corpus from {source} ...", flush=True)
    tokenizer, train_prefix, valid_prefix = prepare_corpus(
        data_dir, source_dir=source, vocab_size=config.tokenizer.vocab_size, model_type=config.tokenizer.model_type,
    )
    record = {"vocab_size": config.tokenizer.vocab_size, "model_type": config.tokenizer.model_type,
              "tokenizer": Path(tokenizer).name, "train": Path(train_prefix).name, "valid": Path(valid_prefix).name}
    (data_dir / DATA_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return tokenizer, train_prefix, valid_prefix


def prepared_data(data_dir: Path, config):
    """What DATA_RECORD names, when made for this tokenizer config and every dataset's sidecar names the tokenizer's
    sha256 and matches its .bin's size; else None."""
    from sa_megatron.data.tokenizer import model_sha256

    try:
        record = json.loads((data_dir / DATA_RECORD).read_text(encoding="utf-8"))
        if (record["vocab_size"], record["model_type"]) != (config.tokenizer.vocab_size, config.tokenizer.model_type):
            return None
        tokenizer = data_dir / record["tokenizer"]
        sha256 = model_sha256(tokenizer.read_bytes())
        prefixes = [str(data_dir / record[split]) for split in ("train", "valid")]
    except (OSError, ValueError, KeyError, TypeError):  # no record, or one that is not ours
        return None
    if not all(dataset_made_by(prefix, sha256) for prefix in prefixes):
        return None
    return tokenizer, *prefixes


def dataset_made_by(prefix: str, tokenizer_sha256: str) -> bool:
    """Whether PREFIX.bin/.idx are whole and PREFIX.json says they were tokenized by this tokenizer."""
    import numpy as np

    from sa_megatron.data.preprocess import read_sidecar

    try:
        sidecar = read_sidecar(prefix)
        bin_size = Path(f"{prefix}.bin").stat().st_size
    except (DataError, OSError):
        return False
    return (sidecar is not None and sidecar["tokenizer_sha256"] == tokenizer_sha256
            and bin_size == sidecar["tokens"] * np.dtype(sidecar["dtype"]).itemsize
            and Path(f"{prefix}.idx").is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", help="corpus folder (default: $SA_MEGATRON_DATA, ../shared/data, else a download)")
    parser.add_argument("--work-dir", default="runs/demo", help="where data, checkpoints and logs go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        demo(args)
    except UserInputError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    except StepFailed as err:
        print(err, file=sys.stderr)
        return err.code
    return 0


def demo(args) -> None:
    work = REPO / args.work_dir
    config = load_config([DEMO_CONFIG], args.overrides)
    tokenizer, train_prefix, valid_prefix = demo_data(work / "data", config, args.data)
    checkpoints, tensorboard = work / "checkpoints", work / "tensorboard"
    run_settings = [
        f"data.paths=[{train_prefix}]", f"tokenizer.model={tokenizer}",
        f"checkpoint.save_dir={checkpoints}", f"logging.tensorboard_dir={tensorboard}",
        *args.overrides,
    ]
    run("train", str(DEMO_CONFIG), *[arg for item in run_settings for arg in ("--set", item)])
    length, results = config.model.seq_length, work / "eval.json"
    lengths = f"{length},{2 * length},{4 * length}"
    run_unless_current(results, checkpoints, "eval", "--load", str(checkpoints), "--data", str(valid_prefix),
                       "--lengths", lengths, "--tensorboard-dir", str(tensorboard), "--output", str(results))
    run_unless_current(work / "generate.log", checkpoints, "generate", "--load", str(checkpoints), "--prompt", "ROMEO:",
                       "--max-new-tokens", "80", "--seed", "0", stdout_copy=True)
    tensorboard_cli = Path(sys.executable).parent / "tensorboard"
    print(f"\nDone. Open the TensorBoard logs with:\n  {tensorboard_cli} --logdir {tensorboard}\n"
          "and browse to http://localhost:6006")


if __name__ == "__main__":
    sys.exit(main())
