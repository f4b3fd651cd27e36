"""`slurm/train.sbatch` on a real single-node Slurm cluster (slurm-wlm + munge, started by slurm/local/start-cluster.sh):
two CPU tasks train data-parallel, and Slurm's SIGUSR1 makes every rank save and exit 0."""

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


def job_env() -> dict:
    # Slurm exports the submitter's environment to the tasks: put this venv first on PATH.
    return child_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def submit(tmp_path, corpus, train_iters: int) -> tuple[str, Path]:
    save_dir = tmp_path / "checkpoints"
    raw = tiny_config_dict(*corpus, training={"train_iters": train_iters}, checkpoint={"save_dir": str(save_dir)})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = ["sbatch", "--parsable", *CPU_OVERRIDES, f"--output={tmp_path}/job-%j.out", f"--chdir={REPO}",
               str(SBATCH), str(config)]
    result = subprocess.run(command, env=job_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0], save_dir


def job_details(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def job_state(job_id: str) -> tuple[str, str]:
    shown = job_details(job_id)
    return re.search(r"JobState=(\S+)", shown).group(1), re.search(r"ExitCode=(\S+)", shown).group(1)


def job_report(tmp_path, job_id) -> str:
    """What a failed assertion shows: Slurm's view of the job (state, Reason=) and the job's own output."""
    output = tmp_path / f"job-{job_id}.out"
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


def test_sbatch_trains_data_parallel_on_two_tasks(cluster, corpus, tmp_path):
    job_id, save_dir = submit(tmp_path, corpus, train_iters=4)
    wait_until_ended(tmp_path, job_id)
    assert job_state(job_id) == ("COMPLETED", "0:0"), job_report(tmp_path, job_id)
    metadata = json.loads((save_dir / "step_4" / "metadata.json").read_text())
    assert metadata["parallel_layout"]["data_parallel"] == 2, metadata
    assert [json.loads(line)["step"] for line in (save_dir / "losses.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_slurm_sigusr1_saves_and_exits_zero(cluster, corpus, tmp_path):
    job_id, save_dir = submit(tmp_path, corpus, train_iters=100_000)
    losses = save_dir / "losses.jsonl"

    def training_started() -> bool:
        assert job_state(job_id)[0] in ("PENDING", "RUNNING"), job_report(tmp_path, job_id)
        return losses.is_file() and len(losses.read_text().splitlines()) >= 2

    wait_for(training_started, 300, "training to start", lambda: job_report(tmp_path, job_id))
    # What `#SBATCH --signal=USR1@300` does before the time limit: signal every task of the job step.
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    wait_until_ended(tmp_path, job_id)
    assert job_state(job_id) == ("COMPLETED", "0:0"), job_report(tmp_path, job_id)
    saved = sorted(int(p.name.split("_")[1]) for p in save_dir.glob("step_*") if (p / "COMPLETE").is_file())
    assert saved and 2 <= saved[-1] < 100_000, saved
    assert "stopped by signal" in job_report(tmp_path, job_id)
