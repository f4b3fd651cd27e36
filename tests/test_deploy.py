"""Deployment files are checked by the real tools: hadolint for the Dockerfile, docker-compose for the compose
file, bash for the sbatch script. (No Docker engine or GPU cluster runs here; images are built on real hosts.)"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*command, cwd=REPO):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = run(str(hadolint), "docker/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_file_is_valid_and_wires_tensorboard():
    result = run("docker-compose", "config", cwd=REPO / "docker")
    assert result.returncode == 0, result.stderr
    assert "tensorboard" in result.stdout and "6006" in result.stdout


def test_sbatch_script_parses_and_maps_slurm_ranks():
    script = REPO / "slurm" / "train.sbatch"
    assert run("bash", "-n", str(script)).returncode == 0
    text = script.read_text()
    assert "RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in text
    assert "#SBATCH --signal=USR1@" in text  # the trainer saves and exits on SIGUSR1
