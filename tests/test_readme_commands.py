"""README.md's command blocks, run as written (issue 13 item 1).

Every command in README's indented code blocks (a `$ ` prompt marks the command in a block that shows output; `#`
lines are output or comments; a trailing backslash continues a command) is classified by COMMANDS below: it runs here,
or it is skipped with the reason and the test that covers it instead. A README command that no entry classifies fails
the test, and so does an entry that no longer matches a README command.

A command runs through bash in a temporary folder laid out like the checkout (`configs/`, `.venv`, and `corpus/` with
two real books), with the venv's bin first on PATH as after `source .venv/bin/activate`: `sa-megatron` is the venv's
entry point, `torchrun` the real one with the README's process count (CPU, gloo). The only edits to a command are its
entry's `scale` pairs and `append`: sizes a CPU needs smaller, and paths a test cannot write. World sizes and the
config files' batch sizes stay as written, so a config whose batch sizes fail at the README's world size fails here.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from sa_megatron.training.distributed import free_port
from tests.training.launch import REPO, child_env

README = Path(REPO) / "README.md"
BOOKS = Path(REPO).parent / "shared" / "data" / "gutenberg"
CORPUS = ["alice_in_wonderland_pg11.txt", "frankenstein_pg84.txt"]  # 0.6 MB: a 1% split still holds a few windows
COMMAND_TIMEOUT_S = 600  # an 8-rank run takes 40-100 s on a loaded 2-core machine


@dataclass(frozen=True)
class Run:
    """A README command run here. `pattern` (a regex matched at its start) picks it out of the README."""

    name: str
    pattern: str
    expect: str = ""  # printed (stdout or stderr) by a successful run
    needs: tuple[str, ...] = ()  # commands whose outputs it uses: they run first
    scale: tuple[tuple[str, str], ...] = ()  # (README text, what runs here); each must occur in the command
    append: str = ""  # further arguments a CPU needs


@dataclass(frozen=True)
class Skip:
    """A README line in a command block that does not run here, and why."""

    pattern: str
    reason: str


# The CPU-sized 125M model: the README's 8 ranks and 125M.yaml's batches (256 sequences, micro batch 4) stay.
CPU_125M = ("--set model.num_layers=2 --set model.hidden_size=96 --set model.seq_length=32 "
            "--set training.train_iters=2")

# In README order.
COMMANDS = [
    Skip(r"(softmax|sa_raw|sa):\s+w = ", "the attention formulas, not a command"),
    Skip(r"make demo\b", "installs .venv and trains for minutes; tests/test_demo.py runs the demo's job end to end"),
    Skip(r"make test\b", "runs this suite (CI's .ci/run runs `make test`)"),
    Run("activate", r"source \.venv/bin/activate$"),
    Run("tokenizer", r"sa-megatron tokenizer train ", expect="wrote tok/spm.model",
        scale=(("--vocab-size 32000", "--vocab-size 500"),)),  # 32,000 pieces need more text than a CPU test reads
    Run("preprocess", r"sa-megatron data preprocess ", expect="wrote data/corpus_valid.bin/.idx", needs=("tokenizer",)),
    Run("inspect", r"sa-megatron data inspect ", expect="sample (first", needs=("preprocess",)),
    Run("config-show", r"sa-megatron config show ", expect="train_iters: 1000"),
    Run("train-125M", r"torchrun --nproc_per_node 8 -m launcher\.cli train configs/models/125M\.yaml ",
        expect="saved checkpoint ckpt/125M/step_2", needs=("preprocess",), append=CPU_125M),
    Run("eval", r"sa-megatron eval ", expect="length  windows", needs=("train-125M",),
        scale=(("--lengths 2048,4096,8192", "--lengths 32,64,128"),)),  # 1×, 2×, 4× the CPU model's 32 tokens
    Run("generate", r"sa-megatron generate ", expect="Once upon a time", needs=("train-125M",)),
    Run("plan", r"sa-megatron plan ", expect=" tp  pp   dp "),  # its table's header; the numbers are test_plan's
    Run("3d-parallel", r"torchrun --nproc_per_node 8 -m launcher\.cli train configs/models/tiny\.yaml ",
        expect="eval at step 2", needs=("preprocess",), append="--set training.train_iters=2"),
    Run("slurm-dry-run", r"sa-megatron slurm submit ", expect="dry run, not submitted: sbatch",
        scale=(("[--account A] [--dry-run]", "--dry-run"),  # README's optional flags: no Slurm here
               ("=/ckpt/2.7B", "={workspace}/ckpt/2.7B"))),  # the run folder it writes; / is not writable
    Skip(r"squeue -j 4242; tail -f ", "needs a Slurm cluster and a submitted job; tests/training/test_slurm.py "
                                      "submits real jobs to a local cluster"),
    Skip(r"tensorboard --logdir ", "a server that runs until stopped; tests/test_tensorboard_view.py serves real logs"),
]
RUNS = {entry.name: entry for entry in COMMANDS if isinstance(entry, Run)}


@dataclass(frozen=True)
class Command:
    line: int  # in README.md
    text: str  # continuation lines joined with a space


def code_blocks(markdown: str) -> list[list[tuple[int, str]]]:
    """Indented code blocks (lines indented 4 spaces after a blank line) as (line number, text without the indent)."""
    blocks, block, previous_blank = [], None, True
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("    ") and (block is not None or previous_blank):
            if block is None:
                block = []
                blocks.append(block)
            block.append((number, line[4:]))
        else:
            block = None
        previous_blank = not line.strip()
    return blocks


def block_commands(block: list[tuple[int, str]]) -> list[Command]:
    """In a block with `$ ` prompts only the prompted lines are commands (the rest is their output); elsewhere every
    line but `#` ones is. A trailing backslash continues a command on the next line."""
    prompted = any(text.startswith("$ ") for _, text in block)
    commands, parts, first_line = [], [], 0
    for number, text in block:
        if not parts:
            if (prompted and not text.startswith("$ ")) or text.startswith("#"):
                continue
            first_line, text = number, text.removeprefix("$ ")
        parts.append(text.strip().removesuffix("\\").strip())
        if not text.endswith("\\"):
            commands.append(Command(first_line, " ".join(parts)))
            parts = []
    return commands


def readme_commands() -> list[Command]:
    return [command for block in code_blocks(README.read_text(encoding="utf-8")) for command in block_commands(block)]


def entries_matching(command: Command) -> list:
    return [entry for entry in COMMANDS if re.match(entry.pattern, command.text)]


def readme_command(run: Run) -> Command:
    matches = [command for command in readme_commands() if re.match(run.pattern, command.text)]
    assert len(matches) == 1, f"README has {len(matches)} commands matching {run.name}'s pattern {run.pattern!r}"
    return matches[0]


def as_run_here(run: Run, command: Command, workspace: Path) -> str:
    text = command.text
    for written, scaled in run.scale:
        assert written in text, f"README line {command.line} no longer contains {written!r}: update COMMANDS"
        text = text.replace(written, scaled.replace("{workspace}", str(workspace)))
    return f"{text} {run.append}".rstrip()


def launches_ranks(run: Run) -> bool:
    """torchrun itself, or a command that needs its outputs."""
    return run.pattern.startswith("torchrun ") or any(launches_ranks(RUNS[need]) for need in run.needs)


@dataclass
class Outcome:
    command: Command
    run_here: str
    returncode: Optional[int]  # None: killed at the timeout
    output: str

    def report(self) -> str:
        return (f"README line {self.command.line}: {self.command.text}\nran as: {self.run_here}\n"
                f"exit code: {self.returncode}\n--- output (tail) ---\n{self.output[-4000:]}")


def run_in(workspace: Path, command: str) -> tuple[Optional[int], str]:
    """`bash -c COMMAND` in its own process group, so a timeout also ends torchrun's ranks."""
    # torchrun takes --master_port from PET_MASTER_PORT: the command stays as written, and runs of other tests do not
    # collide with it on the default port 29500.
    env = child_env(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                    PET_MASTER_PORT=str(free_port()))
    proc = subprocess.Popen(["bash", "-c", command], cwd=workspace, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output + f"\n[killed after {COMMAND_TIMEOUT_S} s]"
    return proc.returncode, output


class Session:
    """The README's commands in one workspace, each run once, after the commands it needs."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.outcomes: dict[str, Outcome] = {}

    def outcome(self, name: str) -> Outcome:
        if name not in self.outcomes:
            run = RUNS[name]
            for need in run.needs:
                needed = self.outcome(need)
                assert needed.returncode == 0, f"{name} needs {need}, which failed:\n{needed.report()}"
            command = readme_command(run)
            run_here = as_run_here(run, command, self.workspace)
            self.outcomes[name] = Outcome(command, run_here, *run_in(self.workspace, run_here))
        return self.outcomes[name]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    if not all((BOOKS / book).is_file() for book in CORPUS):
        pytest.skip(f"real corpora not found at {BOOKS} (see shared/data/README.md)")
    workspace = tmp_path_factory.mktemp("readme")
    (workspace / "corpus").mkdir()
    for book in CORPUS:
        shutil.copyfile(BOOKS / book, workspace / "corpus" / book)
    (workspace / "configs").symlink_to(Path(REPO) / "configs")
    (workspace / ".venv").symlink_to(sys.prefix)  # the environment running this test, for `source .venv/...`
    return Session(workspace)


def test_every_readme_command_is_classified_once_and_every_entry_matches_one():
    commands = readme_commands()
    unclassified = [f"line {c.line}: {c.text}" for c in commands if len(entries_matching(c)) != 1]
    assert not unclassified, "README commands matching no entry (or several) of COMMANDS:\n" + "\n".join(unclassified)
    stale = [entry.pattern for entry in COMMANDS if not any(re.match(entry.pattern, c.text) for c in commands)]
    assert not stale, f"COMMANDS entries that match no README command: {stale}"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.distributed] if launches_ranks(run) else []) for name, run in RUNS.items()])
def test_readme_command_runs_as_written(session, name):
    outcome = session.outcome(name)
    assert outcome.returncode == 0, outcome.report()
    assert RUNS[name].expect in outcome.output, outcome.report()
