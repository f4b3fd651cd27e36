"""Deployment files are checked by the real tools: hadolint for the Dockerfile, docker-compose for the compose
file, bash for the sbatch script. (No Docker engine or GPU cluster runs here; images are built on real hosts.)"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(*command, cwd=REPO):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = run(str(hadolint), "docker/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_files_are_valid_and_wire_tensorboard():
    cpu = run("docker-compose", "-f", "docker-compose.yml", "config", cwd=REPO / "docker")
    assert cpu.returncode == 0, cpu.stderr
    assert "tensorboard" in cpu.stdout and "6006" in cpu.stdout and "nvidia" not in cpu.stdout
    services = yaml.safe_load(cpu.stdout)["services"]
    # Every service builds the image itself: one without `build` would be pulled from a registry, where it is not.
    assert all(service["build"]["dockerfile"] == "docker/Dockerfile" for service in services.values()), services
    gpu = run("docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config", cwd=REPO / "docker")
    assert gpu.returncode == 0, gpu.stderr
    assert "driver: nvidia" in gpu.stdout


def test_docker_build_context_leaves_out_environments_and_checkpoints():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored), ignored


def test_sbatch_script_parses_and_maps_slurm_ranks():
    script = REPO / "slurm" / "train.sbatch"
    assert run("bash", "-n", str(script)).returncode == 0
    text = script.read_text()
    assert "RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in text
    assert "#SBATCH --signal=USR1@" in text  # the trainer saves and exits on SIGUSR1
