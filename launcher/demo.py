"""`make demo`: prepare tinyshakespeare, train a tiny SA-Softmax GPT on CPU, evaluate it, sample from it.

Every step runs the same `sa-megatron` command a user would type, and prints it first.
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from sa_megatron.config import load_config
from sa_megatron.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "runs" / "demo.yaml"


class StepFailed(Exception):
    """A demo step exited non-zero (`code`); it has already printed why."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def run(*args: str) -> None:
    command = ["sa-megatron", *args]
    print(f"\n$ {shlex.join(command)}", flush=True)
    code = subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=REPO).returncode
    if code != 0:
        raise StepFailed(f"demo: `sa-megatron {args[0]}` failed with exit code {code} (its output is above)", code)


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
    from sa_megatron.data import default_corpus_dir, prepare_corpus

    work = REPO / args.work_dir
    config = load_config([DEMO_CONFIG], args.overrides)
    source = default_corpus_dir(args.data)  # resolved once: it may mean a download
    print(f"Preparing the corpus from {source} ...", flush=True)
    tokenizer, train_prefix, valid_prefix = prepare_corpus(
        work / "data", source_dir=source, vocab_size=config.tokenizer.vocab_size,
        model_type=config.tokenizer.model_type,
    )
    checkpoints, tensorboard = work / "checkpoints", work / "tensorboard"
    run_settings = [
        f"data.paths=[{train_prefix}]", f"tokenizer.model={tokenizer}",
        f"checkpoint.save_dir={checkpoints}", f"logging.tensorboard_dir={tensorboard}",
        *args.overrides,
    ]
    run("train", str(DEMO_CONFIG), *[arg for item in run_settings for arg in ("--set", item)])
    length = config.model.seq_length
    run("eval", "--load", str(checkpoints), "--data", str(valid_prefix),
        "--lengths", f"{length},{2 * length},{4 * length}", "--tensorboard-dir", str(tensorboard / "eval"))
    run("generate", "--load", str(checkpoints), "--prompt", "ROMEO:", "--max-new-tokens", "80", "--seed", "0")
    tensorboard_cli = Path(sys.executable).parent / "tensorboard"
    print(f"\nDone. Open the TensorBoard logs with:\n  {tensorboard_cli} --logdir {tensorboard}\n"
          "and browse to http://localhost:6006")


if __name__ == "__main__":
    sys.exit(main())
