"""`slurm/train.sbatch` on a real single-node Slurm cluster (slurm-wlm + munge, started by slurm/local/start-cluster.sh):
two CPU tasks train data-parallel, and Slurm's SIGUSR1 makes every rank save and exit 0; with no restarts left
(SA_MEGATRON_MAX_RESTARTS=0) the job then ends without requeueing itself. The requeue itself, across two nodes, is
tests/training/test_slurm_2node.py's."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.training.launch import REPO, child_env
from tests.training.tiny_run import tiny_config_dict

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting slurmctld/slurmd needs root"),
]
SBATCH = Path(REPO) / "slurm" / "train.sbatch"
# The script asks for 8 GPUs per node; a CPU laptop cluster overrides that on the command line, as users would.
CPU_OVERRIDES = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]


@pytest.fixture(scope="module")
def cluster():
    subprocess.run(["bash", str(Path(REPO) / "slurm" / "local" / "start-cluster.sh")], check=True, timeout=600)


def job_env(**extra: str) -> dict:
    # Slurm exports the submitter's environment to the tasks: put this venv first on PATH.
    return child_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra)


def submit(tmp_path, corpus, train_iters: int, **env: str) -> tuple[str, Path]:
    save_dir = tmp_path / "checkpoints"
    raw = tiny_config_dict(*corpus, training={"train_iters": train_iters}, checkpoint={"save_dir": str(save_dir)})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = ["sbatch", "--parsable", *CPU_OVERRIDES, f"--output={tmp_path}/job-%j.out", f"--chdir={REPO}",
               str(SBATCH), str(config)]
    result = subprocess.run(command, env=job_env(**env), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0], save_dir


def job_details(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def job_state(job_id: str) -> tuple[str, str]:
    shown = job_details(job_id)
    return re.search(r"JobState=(\S+)", shown).group(1), re.search(r"ExitCode=(\S+)", shown).group(1)


def job_report(tmp_path, job_id) -> str:
    """What a failed assertion shows: Slurm's view of the job (state, Reason=) and the job's own output."""
    output = next((tmp_path / name for name in (f"job-{job_id}.out", f"slurm-{job_id}.out")
                   if (tmp_path / name).is_file()), tmp_path / f"job-{job_id}.out")
    return job_details(job_id) + (output.read_text() if output.is_file() else "(no job output yet)")


def wait_for(predicate, timeout: float, what: str, report):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n{report()}")


def wait_until_ended(tmp_path, job_id: str) -> None:
    wait_for(lambda: job_state(job_id)[0] not in ("PENDING", "RUNNING", "COMPLETING"), 300, "the job to end",
             lambda: job_report(tmp_path, job_id))


def test_cli_submit_trains_data_parallel_on_two_tasks(cluster, corpus, tmp_path):
    """`sa-megatron slurm submit`: the job reads the written config, so values no shell may touch arrive as written."""
    save_dir = tmp_path / "checkpoints"
    odd = tmp_path / """tb "quoted" 'single' $(touch PWNED) `touch PWNED2` x"""
    raw = tiny_config_dict(*corpus, training={"train_iters": 4}, checkpoint={"save_dir": str(save_dir)},
                           logging={"log_interval": 2, "tensorboard_dir": str(odd)})
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "launcher.cli", "slurm", "submit", str(tmp_path / "in.yaml"),
               "--nodes", "1", "--gpus-per-node", "0", "--ntasks-per-node", "2", "--time", "10",
               "--run-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"submitted job (\d+)", result.stdout).group(1)
    assert f"log: {tmp_path}/slurm-{job_id}.out" in result.stdout, result.stdout
    assert "tensorboard --logdir" in result.stdout, result.stdout
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["logging"]["tensorboard_dir"] == str(odd)
    wait_until_ended(tmp_path, job_id)
    assert job_state(job_id) == ("COMPLETED", "0:0"), job_report(tmp_path, job_id)
    assert list((odd / "checkpoints").glob("events.out.tfevents.*")), job_report(tmp_path, job_id)  # run: save_dir's name
    assert not list(Path(REPO).glob("PWNED*")) and not list(tmp_path.glob("PWNED*"))
    metadata = json.loads((save_dir / "step_4" / "metadata.json").read_text())
    assert metadata["parallel_layout"]["data_parallel"] == 2, metadata
    assert [json.loads(line)["step"] for line in (save_dir / "losses.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert "training.train_iters reached" in job_report(tmp_path, job_id)


def test_slurm_sigusr1_saves_and_stops_when_no_restart_is_left(cluster, corpus, tmp_path):
    job_id, save_dir = submit(tmp_path, corpus, train_iters=100_000, SA_MEGATRON_MAX_RESTARTS="0")
    losses = save_dir / "losses.jsonl"

    def training_started() -> bool:
        assert job_state(job_id)[0] in ("PENDING", "RUNNING"), job_report(tmp_path, job_id)
        return losses.is_file() and len(losses.read_text().splitlines()) >= 2

    wait_for(training_started, 300, "training to start", lambda: job_report(tmp_path, job_id))
    # What `#SBATCH --signal=USR1@300` does before the time limit: signal every task of the job step.
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    wait_until_ended(tmp_path, job_id)
    # Every rank saved and exited 0; the script then refuses to requeue (no restarts left) and fails the job.
    assert job_state(job_id) == ("FAILED", "1:0"), job_report(tmp_path, job_id)
    refusal = "not requeued: the job already restarted 0 times (SA_MEGATRON_MAX_RESTARTS=0)"
    assert refusal in job_report(tmp_path, job_id)
    saved = sorted(int(p.name.split("_")[1]) for p in save_dir.glob("step_*") if (p / "COMPLETE").is_file())
    assert saved and 2 <= saved[-1] < 100_000, saved
    assert "stopped by signal" in job_report(tmp_path, job_id)
