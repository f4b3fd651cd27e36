"""`sa-megatron study --slurm`: the unfinished runs as one Slurm job array, one run per task.

The array script is slurm/train.sbatch rendered by `sa-megatron slurm submit`'s own renderer (same srun launch,
signal, save-and-requeue), plus `--array` and one line that picks task i's config from a list file: line i+1 of
STUDY_DIR/slurm/configs.txt. sbatch gets an argument list; the configs are files, so no value meets a shell.
Once the array has finished, running the study again locally evaluates the runs and writes the report.
"""

import argparse
import os
import shlex

import yaml

from sa_megatron.config import to_dict
from sa_megatron.errors import UserInputError

PICK_CONFIG = 'set -- "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$1")"  # this task\'s run config'


def submit_array(study, planned, args) -> int:
    from launcher.commands.slurm import DEFAULT_MAX_RESTARTS, DEFAULT_SIGNAL_LEAD_S, render_script, submit

    todo = [run for run in planned if not run.is_trained() and not run.diverged()]
    if not todo:
        print("every selected run is trained; run the study without --slurm to evaluate and report")
        return 0
    if not args.time:
        raise UserInputError("--slurm needs --time, the time limit of one task (e.g. 12:00:00); tasks requeue")
    slurm_dir = (study.study_dir / "slurm").resolve()
    slurm_dir.mkdir(parents=True, exist_ok=True)
    config_paths = []
    for run in todo:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        path = (run.run_dir / "config.yaml").resolve()
        config = to_dict(run.config)
        # Absolute paths: the tasks may start in another directory.
        config["checkpoint"]["save_dir"] = str(run.save_dir.resolve())
        config["logging"]["tensorboard_dir"] = os.path.abspath(config["logging"]["tensorboard_dir"])
        config["data"]["paths"] = [os.path.abspath(p) for p in config["data"]["paths"]]
        config["tokenizer"]["model"] = os.path.abspath(config["tokenizer"]["model"])
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        config_paths.append(str(path))
    list_path = slurm_dir / "configs.txt"
    list_path.write_text("\n".join(config_paths) + "\n")

    tasks = args.gpus_per_node or 1
    render_args = argparse.Namespace(
        job_name=f"study-{study.name}", nodes=1, gpus_per_node=args.gpus_per_node, cpus_per_task=None,
        time=args.time, signal_lead=DEFAULT_SIGNAL_LEAD_S, partition=args.partition, account=args.account,
        max_restarts=DEFAULT_MAX_RESTARTS)
    script = render_script(render_args, tasks, str(slurm_dir / "task-%A_%a.out")).splitlines()
    script.insert(next(i for i, line in enumerate(script) if line.startswith("# written by")),
                  f"#SBATCH --array=0-{len(todo) - 1}")
    script.insert(next(i for i, line in enumerate(script) if line.startswith("export SA_MEGATRON_MAX_RESTARTS")),
                  PICK_CONFIG)
    script_path = slurm_dir / "study.sbatch"
    script_path.write_text("\n".join(script) + "\n")

    command = ["sbatch", "--parsable", *args.sbatch_args, str(script_path), str(list_path)]
    print(f"{len(todo)} run(s) as array tasks 0-{len(todo) - 1}: " + ", ".join(r.spec.name for r in todo))
    if args.dry_run:
        print(f"dry run, not submitted: {shlex.join(command)}")
        return 0
    job = submit(command, "the job array")
    print(f"submitted job array {job}; logs: {slurm_dir}/task-{job}_<task>.out; when it is done, run "
          f"`sa-megatron study {study.path}` to evaluate and write the report")
    return 0
