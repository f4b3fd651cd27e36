"""Docker for real: build the image on a local base with a CPU torch, `docker-compose up` the demo for a few steps,
read its train/loss scalars back through the TensorBoard service on 127.0.0.1, check who owns what it wrote, and
take down what was started. Needs a Docker engine; skipped without one, except under CI=true, where it must run.
Deselected by default (marker `docker`; a build takes minutes): `.venv/bin/python -m pytest -q -m docker tests/test_docker.py`.
Env: SA_MEGATRON_BASE_IMAGE (default: made by docker/ci/make-base-image.sh when missing; that needs root and
debootstrap), DATA_DIR (default ../shared/data), SA_MEGATRON_TEST_UID/GID (the uid:gid the containers run as when the
test runs as root; default 1000:1000).

The compose file's path resolution needs only the docker-compose binary (no engine, no build) and runs in `make test`.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "compose.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IMAGE = "sa-megatron:docker-test"
TRAIN_ITERS = 4


def unavailable(reason: str):
    """Skip, except in CI, where the Docker test must run."""
    if IN_CI:
        pytest.fail(f"CI=true but the Docker test cannot run: {reason}")
    pytest.skip(reason)


def sh(*command, env=None, timeout=600, check=True):
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "local"


def free_port(preferred: int = 6006) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free port")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def bind_sources(services) -> dict:
    """{container path: host path} of every service's bind mounts, as `docker-compose config` resolved them."""
    return {volume.split(":")[1]: volume.split(":")[0] for service in services.values()
            for volume in service.get("volumes", [])}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_up_from_the_checkout_resolves_relative_data_and_runs_dirs_from_the_checkout():
    """What the README says to type, from the checkout root: the compose file is found without -f, and a relative
    DATA_DIR or RUNS_DIR means a folder relative to the checkout (compose resolves them from the file's folder)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "RUNS_DIR", "COMPOSE_FILE")}
    default = sh("docker-compose", "config", env=env)
    assert bind_sources(yaml.safe_load(default.stdout)["services"]) == {
        "/workspace/shared/data": str(REPO.parent / "shared" / "data"), "/workspace/sa-megatron/runs": str(REPO / "runs")}
    relative = sh("docker-compose", "config", env=dict(env, DATA_DIR="./some/relative/path", RUNS_DIR="../elsewhere/runs"))
    assert bind_sources(yaml.safe_load(relative.stdout)["services"]) == {
        "/workspace/shared/data": str(REPO / "some" / "relative" / "path"),
        "/workspace/sa-megatron/runs": str(REPO.parent / "elsewhere" / "runs")}


@pytest.fixture(scope="module")
def engine_env():
    """The environment for docker/docker-compose: Debian's CLI first (a newer CLI without buildx refuses legacy
    builds), the classic builder (what docker-compose v1 drives through the API)."""
    env = dict(os.environ, PATH=f"/usr/bin:/bin:/usr/sbin:/sbin:{os.environ.get('PATH', '')}",
               DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool, path=env["PATH"]) is None:
            unavailable(f"{tool} is not installed (apt-get install docker.io docker-compose)")
    info = subprocess.run(["docker", "info"], env=env, capture_output=True, text=True)
    if info.returncode != 0:
        lines = [line.strip() for line in (info.stdout + info.stderr).splitlines() if line.strip()]
        why = next((line for line in lines if "cannot connect" in line.lower() or "denied" in line.lower()),
                   lines[0] if lines else "`docker info` failed")
        unavailable(f"no Docker engine is reachable (start dockerd): {why[:300]}")
    return env


@pytest.fixture(scope="module")
def base_image(engine_env):
    image = os.environ.get("SA_MEGATRON_BASE_IMAGE") or f"sa-megatron-ci/base:{host_codename()}"
    if sh("docker", "image", "inspect", image, env=engine_env, check=False).returncode == 0:
        return image
    if os.environ.get("SA_MEGATRON_BASE_IMAGE"):
        unavailable(f"SA_MEGATRON_BASE_IMAGE={image} does not exist locally")
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        unavailable(f"no local base image {image}, and making one needs root and debootstrap "
                    "(docker/ci/make-base-image.sh)")
    pip = Path(sys.executable).parent / "pip"
    sh(str(REPO / "docker" / "ci" / "make-base-image.sh"), image, env=dict(engine_env, PIP=str(pip)), timeout=1800)
    return image


@pytest.mark.docker
def test_compose_trains_the_demo_as_the_host_user_and_tensorboard_serves_its_loss(engine_env, base_image, tmp_path):
    data = Path(os.environ.get("DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (data / "tinyshakespeare" / "input.txt").is_file():
        unavailable(f"no corpus at {data}/tinyshakespeare/input.txt (set DATA_DIR)")
    if os.geteuid() == 0:  # root's files would be root's anyway: run as an ordinary uid to test that path
        uid, gid = int(os.environ.get("SA_MEGATRON_TEST_UID", 1000)), int(os.environ.get("SA_MEGATRON_TEST_GID", 1000))
    else:
        uid, gid = os.getuid(), os.getgid()
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, uid, gid)  # what a user's checkout has: a runs/ of their own (a no-op when not root)
    port = free_port()
    args = ["--work-dir", "runs/demo", "--set", f"training.train_iters={TRAIN_ITERS}", "--set", "training.eval_interval=2",
            "--set", "checkpoint.save_interval=2", "--set", "logging.log_interval=1", "--set", "schedule.warmup_iters=1"]
    env = dict(engine_env, SA_MEGATRON_IMAGE=IMAGE, HOST_UID=str(uid), HOST_GID=str(gid), RUNS_DIR=str(runs),
               DATA_DIR=str(data), TENSORBOARD_PORT=str(port), TRAIN_ARGS=" ".join(args))
    env.pop("TENSORBOARD_BIND", None)  # the default is what is under test
    compose = ["docker-compose", "-p", f"samegatrontest{os.getpid()}", "-f", str(COMPOSE_FILE)]
    timings = {}

    start = time.monotonic()
    sh(*compose, "build", "--build-arg", f"BASE_IMAGE={base_image}",
       "--build-arg", "TORCH_REQUIREMENTS=requirements/cpu.txt", "trainer", env=env, timeout=3600)
    timings["build"] = time.monotonic() - start
    image = json.loads(sh("docker", "image", "inspect", IMAGE, env=env).stdout)[0]
    assert image["Config"]["User"] not in ("", "0", "root"), image["Config"]["User"]

    try:
        start = time.monotonic()
        sh(*compose, "up", "-d", "--no-build", env=env)
        trainer = sh(*compose, "ps", "-q", "trainer", env=env).stdout.strip()
        board = sh(*compose, "ps", "-q", "tensorboard", env=env).stdout.strip()
        assert trainer and board

        code = sh("docker", "wait", trainer, env=env, timeout=1800).stdout.strip()
        logs = sh("docker", "logs", trainer, env=env)
        log = logs.stdout + logs.stderr
        # A missing compiler shows here as "c++: not found" from DeepSpeed's JIT build of its shm comm op.
        assert code == "0", f"trainer exited {code}:\n{log[-6000:]}"
        timings["train"] = time.monotonic() - start
        assert "$ sa-megatron generate" in log, log[-3000:]

        # TensorBoard: published on 127.0.0.1 only, serving the run's train/loss.
        bindings = json.loads(sh("docker", "inspect", board, env=env).stdout)[0]["NetworkSettings"]["Ports"]["6006/tcp"]
        assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], bindings
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"
        run, deadline, last_error = None, time.monotonic() + 180, None
        while time.monotonic() < deadline:
            try:
                tags = get_json(f"{base}/tags")
                run = next((name for name, run_tags in tags.items() if "train/loss" in run_tags), None)
                if run is not None:
                    break
            except OSError as err:  # not listening yet, or reset while starting
                last_error = err
            time.sleep(2)
        board_log = sh("docker", "logs", board, env=env, check=False)
        assert run is not None, f"no train/loss served ({last_error}); tensorboard log:\n{board_log.stderr[-3000:]}"
        query = urllib.parse.urlencode({"run": run, "tag": "train/loss"})
        points = get_json(f"{base}/scalars?{query}")  # [[wall_time, step, value], ...]
        timings["up_to_scalars"] = time.monotonic() - start
        assert sorted(step for _, step, _ in points) == list(range(1, TRAIN_ITERS + 1)), points
        assert all(0 < value < 20 for _, _, value in points), points

        # Who ran it, and who owns what it wrote to the bind-mounted runs/.
        users = {json.loads(sh("docker", "inspect", c, env=env).stdout)[0]["Config"]["User"] for c in (trainer, board)}
        assert users == {f"{uid}:{gid}"}, users
        written = [p for p in (runs / "demo").rglob("*")]
        assert any(p.name.startswith("events.out.tfevents") for p in written), written
        assert any(p.name == "COMPLETE" for p in written), written
        strangers = [(str(p), p.stat().st_uid, p.stat().st_gid) for p in written
                     if (p.stat().st_uid, p.stat().st_gid) != (uid, gid)]
        assert not strangers, strangers
    finally:
        down = sh(*compose, "down", "--volumes", "--remove-orphans", env=env, check=False)
        print(f"docker test timings (s): {({k: round(v, 1) for k, v in timings.items()})}; image "
              f"{image['Size'] / 1e9:.2f} GB; down exited {down.returncode}")
    assert down.returncode == 0, down.stderr
    left = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={compose[2]}", env=env).stdout
    assert not left.strip(), left
