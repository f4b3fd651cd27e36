"""`sa-megatron slurm submit CONFIG... --nodes N --gpus-per-node G --time T`: submit a training run to Slurm.

The run's folder (--run-dir, else checkpoint.save_dir) receives the resolved config (`config.yaml`) and the rendered
batch script (`train.sbatch`: slurm/train.sbatch with this command's #SBATCH lines). `sbatch` gets an argument list,
never a shell string, and the job reads the written config file: a value with spaces, quotes or `$(...)` reaches the
trainer exactly as written, because no shell ever sees it.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from launcher.commands.arguments import positive_int
from launcher.commands.config import add_config_arguments

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "slurm" / "train.sbatch"
DEFAULT_SIGNAL_LEAD_S = 300
DEFAULT_MAX_RESTARTS = 20


def non_negative_int(text: str) -> int:
    import argparse

    if not re.fullmatch(r"\d+", text):
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return int(text)


def register(subparsers) -> None:
    parser = subparsers.add_parser("slurm", help="submit training runs to a Slurm cluster")
    actions = parser.add_subparsers(dest="action", required=True)
    submit = actions.add_parser(
        "submit", help="write the resolved config and batch script into the run's folder, then sbatch it",
        description="Checks the parallel layout against NODES × tasks per node, writes RUN_DIR/config.yaml and "
                    "RUN_DIR/train.sbatch, and submits the script with sbatch. The job requeues itself when Slurm's "
                    "time-limit warning stops it (it saves first) and resumes from its newest checkpoint, until "
                    "training.train_iters is reached.")
    add_config_arguments(submit)
    submit.add_argument("--nodes", type=positive_int, required=True, help="nodes to allocate")
    submit.add_argument("--gpus-per-node", type=non_negative_int, required=True,
                        help="GPUs per node; one task per GPU. 0 = a CPU cluster (give --ntasks-per-node)")
    submit.add_argument("--ntasks-per-node", type=positive_int, default=None,
                        help="ranks per node (default: --gpus-per-node; required when it is 0)")
    submit.add_argument("--cpus-per-task", type=positive_int, default=None,
                        help="CPUs per rank, also OMP_NUM_THREADS (default 8 with GPUs, 1 without)")
    submit.add_argument("--time", required=True, help="time limit of one run of the job, in Slurm's format "
                                                       "(e.g. 24:00:00 or 2-00:00:00); the job requeues itself")
    submit.add_argument("--partition", help="Slurm partition")
    submit.add_argument("--account", help="Slurm account")
    submit.add_argument("--job-name", default="sa-megatron", help="job name (default sa-megatron)")
    submit.add_argument("--run-dir", help="the run's folder (default: checkpoint.save_dir; when that is unset, "
                                          "checkpoints go to RUN_DIR/checkpoints)")
    submit.add_argument("--signal-lead", type=positive_int, default=DEFAULT_SIGNAL_LEAD_S, metavar="SECONDS",
                        help="seconds before the time limit at which Slurm sends SIGUSR1, so the run saves and "
                             f"requeues; leave room for one step plus a checkpoint (default {DEFAULT_SIGNAL_LEAD_S})")
    submit.add_argument("--max-restarts", type=non_negative_int, default=DEFAULT_MAX_RESTARTS,
                        help=f"requeues allowed before the job stops for good (default {DEFAULT_MAX_RESTARTS})")
    submit.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                        help="one more argument passed to sbatch as is (repeatable), e.g. --sbatch-arg=--qos=high")
    submit.add_argument("--dry-run", action="store_true",
                        help="write config.yaml and train.sbatch and print the sbatch command; submit nothing")
    submit.set_defaults(handler=run_submit)


def run_submit(args) -> int:
    import yaml

    from sa_megatron.config import load_config, tensorboard_logdir, to_dict, validate
    from sa_megatron.errors import UserInputError

    config = load_config(args.configs, args.overrides)
    tasks_per_node = args.ntasks_per_node or args.gpus_per_node
    if not tasks_per_node:
        raise UserInputError("--gpus-per-node 0 (a CPU cluster) needs --ntasks-per-node: the ranks per node")
    if args.gpus_per_node and tasks_per_node != args.gpus_per_node:
        raise UserInputError(f"--ntasks-per-node {tasks_per_node} differs from --gpus-per-node {args.gpus_per_node}:"
                             " the script runs one rank per GPU")
    if not args.time.strip():
        raise UserInputError("--time must be a Slurm time limit such as 24:00:00")
    _check_layout(config, args.nodes, tasks_per_node, validate)

    run_dir = args.run_dir or config.checkpoint.save_dir
    if not run_dir:
        raise UserInputError("give --run-dir or set checkpoint.save_dir: a requeued job resumes from its checkpoints")
    run_dir = Path(run_dir).resolve()
    if config.checkpoint.save_dir is None:
        config.checkpoint.save_dir = str(run_dir / "checkpoints")
    if config.logging.tensorboard and config.logging.tensorboard_dir is None:
        config.logging.tensorboard_dir = str(run_dir / "tensorboard")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path, script_path = run_dir / "config.yaml", run_dir / "train.sbatch"
    config_path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    log_pattern = str(run_dir / "slurm-%j.out")
    script_path.write_text(render_script(args, tasks_per_node, log_pattern))

    command = ["sbatch", "--parsable", *args.sbatch_args, str(script_path), str(config_path)]
    logdir = tensorboard_logdir(config)
    tensorboard = shlex.join(["tensorboard", "--logdir", logdir]) if logdir else "off (logging.tensorboard is false)"
    print(f"run folder: {run_dir}  (config.yaml, train.sbatch)")
    print(f"layout: {args.nodes} node(s) × {tasks_per_node} rank(s) = {args.nodes * tasks_per_node} ranks, "
          f"tensor_parallel={config.parallel.tensor_parallel} pipeline_parallel={config.parallel.pipeline_parallel}")
    if args.dry_run:
        print(f"dry run, not submitted: {shlex.join(command)}")
        return 0
    job_id = submit(command, "the job")
    print(f"submitted job {job_id}")
    print(f"log: {log_pattern.replace('%j', job_id)}  (appends across requeues)")
    print(f"watch: squeue -j {job_id}; tail -f {shlex.quote(log_pattern.replace('%j', job_id))}")
    print(f"tensorboard: {tensorboard}")
    return 0


def submit(command: list[str], what: str) -> str:
    """Run `sbatch --parsable ...` (an argv list: no shell); returns the job id."""
    from sa_megatron.errors import UserInputError

    # The submitter's environment travels with the job (sbatch's default --export=ALL); the script runs this
    # command's Python, so the job sees the same installation.
    env = {**os.environ, "SA_MEGATRON_PYTHON": sys.executable}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        raise UserInputError("sbatch not found on PATH: run this on a Slurm login node (or use --dry-run)") from None
    if result.returncode != 0:
        raise UserInputError(f"sbatch refused {what}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def _check_layout(config, nodes: int, tasks_per_node: int, validate) -> None:
    """The config's tensor × pipeline layout must fit the allocation, with each tensor group inside one node."""
    from sa_megatron.errors import ConfigError

    tp = config.parallel.tensor_parallel
    if tp > tasks_per_node or tasks_per_node % tp:
        raise ConfigError(f"parallel.tensor_parallel={tp} must divide the {tasks_per_node} ranks per node: tensor-"
                          "parallel groups exchange activations every layer and stay inside one node")
    validate(config, nodes * tasks_per_node)


def render_script(args, tasks_per_node: int, log_pattern: str) -> str:
    """slurm/train.sbatch with its #SBATCH lines replaced by this submission's (none holds a config value)."""
    cpus = args.cpus_per_task or (8 if args.gpus_per_node else 1)
    directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}", f"--ntasks-per-node={tasks_per_node}"]
    if args.gpus_per_node:
        directives.append(f"--gpus-per-node={args.gpus_per_node}")
    directives += [f"--cpus-per-task={cpus}", f"--time={args.time}", f"--signal=USR1@{args.signal_lead}",
                   "--requeue", "--open-mode=append", f"--output={log_pattern}"]
    if args.partition:
        directives.append(f"--partition={args.partition}")
    if args.account:
        directives.append(f"--account={args.account}")
    directives = [_sbatch_line(d) for d in directives]
    lines = TEMPLATE.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    body = [line for line in lines[first:] if not line.startswith("#SBATCH")]
    rendered = [*lines[:first], *directives,
                "# written by `sa-megatron slurm submit`; the job reads its config from the file given as argument",
                f"export SA_MEGATRON_MAX_RESTARTS={args.max_restarts}", *body]
    return "\n".join(rendered) + "\n"


def _sbatch_line(directive: str) -> str:
    """`#SBATCH --name=value`; sbatch reads a value with blanks when it is in double quotes (it allows no escapes)."""
    from sa_megatron.errors import UserInputError

    if any(c in directive for c in '"\n\r'):
        raise UserInputError(f"a Slurm option in the batch script cannot hold a double quote or a line break: "
                             f"{directive!r}")
    name, _, value = directive.partition("=")
    return f'#SBATCH {name}="{value}"' if any(c.isspace() for c in value) else f"#SBATCH {directive}"
