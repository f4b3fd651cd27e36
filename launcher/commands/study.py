"""`sa-megatron study STUDY.yaml [--slurm] [--only PATTERN]`: a grid of runs, their length extrapolation, a report.

See sa_megatron/study/spec.py for the study file. Locally the runs train one after another in this process (each
an ordinary training run with its own checkpoint dir and TensorBoard subdir), each followed by its evaluation and a
fresh report.md; running it again skips finished runs and resumes unfinished ones.
"""

from launcher.commands.slurm import non_negative_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("study", help="train a grid of runs, evaluate length extrapolation, report")
    parser.add_argument("study", metavar="STUDY.yaml", help="the study file (e.g. configs/studies/cpu-small.yaml)")
    parser.add_argument("--only", metavar="PATTERN", help="only runs whose name matches (glob, or any substring)")
    parser.add_argument("--study-dir", metavar="DIR", help="where runs, logs and the report go (default: the "
                                                           "file's study_dir, else runs/studies/NAME)")
    parser.add_argument("--report", action="store_true", help="only write the report from the finished runs")
    slurm = parser.add_argument_group("Slurm (--slurm submits the unfinished runs as one job array)")
    slurm.add_argument("--slurm", action="store_true", help="submit instead of running locally")
    slurm.add_argument("--time", help="time limit of one array task, e.g. 12:00:00 (tasks requeue themselves)")
    slurm.add_argument("--gpus-per-node", type=non_negative_int, default=1, help="GPUs (= ranks) per run; 0 = one CPU rank")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--account", help="Slurm account")
    slurm.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                       help="one more argument passed to sbatch as is (repeatable)")
    slurm.add_argument("--dry-run", action="store_true", help="write the array script and print the sbatch command")
    parser.set_defaults(handler=run_study)


def run_study(args) -> int:
    from sa_megatron.study.report import write_report
    from sa_megatron.study.runner import plan, prepare, run_local, select_runs
    from sa_megatron.study.spec import load_study

    study = load_study(args.study, args.study_dir)  # every error in the file or a run's config: before any work
    runs = select_runs(study, args.only)
    if args.report:
        write_report(study)
        print(f"report: {study.study_dir / 'report.md'}")
        return 0
    data_settings, held_out = prepare(study)
    planned = plan(study, runs, data_settings)
    if args.slurm:
        from sa_megatron.study.slurm_array import submit_array

        return submit_array(study, planned, args)
    print(f"study {study.name}: {len(planned)} run(s) in {study.study_dir}; "
          f"tensorboard --logdir {study.study_dir / 'tensorboard'}", flush=True)
    try:
        run_local(study, planned, held_out)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    write_report(study)
    print(f"report: {study.study_dir / 'report.md'}")
    return 0
