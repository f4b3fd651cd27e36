"""Deployment files are checked by the real tools: hadolint for the Dockerfile, docker-compose for the compose
file, bash for the sbatch and CI scripts. (Building and running the image for real: tests/test_docker.py, marker
`docker`; no GPU cluster runs here.)"""

import os
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


def test_dockerfile_defaults_to_cuda_takes_base_and_torch_as_build_args_and_runs_as_non_root():
    lines = [line.strip() for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    # The base is a build argument declared before FROM, defaulting to the CUDA image users get.
    assert instructions[0] == "ARG BASE_IMAGE=nvidia/cuda:12.8.0-cudnn-devel-ubuntu24.04", instructions[0]
    assert instructions[1] == "FROM ${BASE_IMAGE}", instructions[1]
    assert "ARG TORCH_REQUIREMENTS=requirements/gpu.txt" in instructions and "ARG TORCH_INDEX=" in instructions
    # DeepSpeed JIT-compiles its CPU comm op at the first init: without a C++ compiler the demo dies ("c++: not found").
    assert any("g++" in line for line in instructions), "the image needs a C++ compiler"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_files_are_valid_and_wire_tensorboard():
    cpu = run("docker-compose", "-f", "compose.yaml", "config")
    assert cpu.returncode == 0, cpu.stderr
    assert "tensorboard" in cpu.stdout and "6006" in cpu.stdout and "nvidia" not in cpu.stdout
    services = yaml.safe_load(cpu.stdout)["services"]
    # Every service builds the image itself: one without `build` would be pulled from a registry, where it is not.
    assert all(service["build"]["dockerfile"] == "docker/Dockerfile" for service in services.values()), services
    gpu = run("docker-compose", "-f", "compose.yaml", "-f", "compose.gpu.yaml", "config")
    assert gpu.returncode == 0, gpu.stderr
    assert "driver: nvidia" in gpu.stdout
    # TensorBoard on the loopback interface unless the user says otherwise; every service runs as a non-root uid.
    assert services["tensorboard"]["ports"] == ["127.0.0.1:6006:6006/tcp"], services["tensorboard"]["ports"]
    assert all(service["user"] == "1000:1000" for service in services.values()), services
    assert services["trainer"]["shm_size"] == "8gb"
    env = dict(os.environ, TENSORBOARD_BIND="0.0.0.0", HOST_UID="1234", HOST_GID="56")
    opened = subprocess.run(["docker-compose", "-f", "compose.yaml", "config"], cwd=REPO,
                            capture_output=True, text=True, env=env)
    services = yaml.safe_load(opened.stdout)["services"]
    assert services["tensorboard"]["ports"] == ["0.0.0.0:6006:6006/tcp"] and services["trainer"]["user"] == "1234:56"


def test_docker_build_context_leaves_out_environments_and_checkpoints():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored), ignored


def test_ci_base_image_script_parses_and_reads_the_mirror_from_apt_config():
    script = REPO / "docker" / "ci" / "make-base-image.sh"
    assert run("bash", "-n", str(script)).returncode == 0
    assert run("bash", "-n", str(REPO / ".ci" / "run")).returncode == 0
    # The mirror comes from the machine's apt sources at run time, not from a host name in the repository.
    assert "/etc/apt/sources.list" in script.read_text()
    assert not any(host in script.read_text() for host in ("deb.debian.org", "archive.ubuntu.com"))


def test_sbatch_script_parses_and_maps_slurm_ranks():
    script = REPO / "slurm" / "train.sbatch"
    assert run("bash", "-n", str(script)).returncode == 0
    text = script.read_text()
    assert "RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in text
    assert "#SBATCH --signal=USR1@" in text  # the trainer saves and exits on SIGUSR1
