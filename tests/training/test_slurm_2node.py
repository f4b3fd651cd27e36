"""`sa-megatron slurm submit` on a real two-node Slurm cluster (slurm/local/start-cluster.sh --nodes 2: slurmctld and
two slurmd in network namespaces joined by a bridge, so gloo traffic between the nodes crosses it).

- TP2 inside each node × DP2 across the nodes (4 ranks) runs to COMPLETED through one requeue in the middle: the test
  shortens the job's time limit once training runs, Slurm sends the --signal warning, the run saves, the script
  requeues the job, and the restart resumes. Its per-step losses are bit-identical to the same layout run
  uninterrupted on one node.
- A job whose master address is wrong fails within parallel.init_timeout_s with a one-line message naming the
  address, port and rank.

The cluster is torn down afterwards when this module started it.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.training.launch import REPO, child_env, run_ranks
from tests.training.tiny_run import tiny_config_dict

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.multinode,  # minutes: run by .ci/run with -m multinode, not by `make test`
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and slurmctld/slurmd need root"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("nsenter") is None,
                       reason="needs iproute2 (ip) and util-linux (nsenter, unshare)"),
]
START = Path(REPO) / "slurm" / "local" / "start-cluster.sh"
SLURM_CONF = "/etc/slurm-sam2/slurm.conf"
CTLD_PID = Path("/run/slurm-sam2/slurmctld.pid")
SIGNAL_LEAD_S = 120
TRAIN_ITERS = 900  # ~60 s of steps here: the time-limit warning (up to 30 s late) lands while the run trains


@pytest.fixture(scope="module")
def two_nodes():
    already_up = CTLD_PID.is_file() and Path(f"/proc/{CTLD_PID.read_text().strip()}").exists()
    subprocess.run(["bash", str(START), "--nodes", "2"], check=True, timeout=600)
    yield
    if not already_up:
        subprocess.run(["bash", str(START), "--nodes", "2", "--stop"], check=True, timeout=120)


def slurm_env(**extra: str) -> dict:
    # Slurm exports the submitter's environment to the tasks: this venv first on PATH, this cluster's slurm.conf.
    return child_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", SLURM_CONF=SLURM_CONF, **extra)


def submit(config: dict, run_dir: Path, *, env: dict = None, time_limit: str = "10") -> str:
    run_dir.mkdir(parents=True)
    (run_dir / "in.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "launcher.cli", "slurm", "submit", str(run_dir / "in.yaml"), "--nodes", "2",
               "--gpus-per-node", "0", "--ntasks-per-node", "2", "--time", time_limit,
               "--signal-lead", str(SIGNAL_LEAD_S), "--run-dir", str(run_dir)]
    result = subprocess.run(command, cwd=REPO, env=env or slurm_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted job (\d+)", result.stdout).group(1)


def show_job(job_id: str) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", job_id], env=slurm_env(), capture_output=True,
                           text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def report(run_dir: Path, job_id: str) -> str:
    log = run_dir / f"slurm-{job_id}.out"
    return f"{show_job(job_id)}\n" + (log.read_text()[-6000:] if log.is_file() else "(no job log yet)")


def wait_for(predicate, timeout: float, what: str, run_dir: Path, job_id: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n{report(run_dir, job_id)}")


def ended(job_id: str) -> bool:
    return show_job(job_id).get("JobState") not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING")


def seconds(slurm_time: str) -> int:
    """Slurm's [D-]HH:MM:SS as seconds."""
    days, _, clock = slurm_time.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def last_loss_per_step(path: Path) -> dict[int, float]:
    losses = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


def run_config(corpus, save_dir: Path, **parallel) -> dict:
    return tiny_config_dict(*corpus, parallel={"tensor_parallel": 2, **parallel},
                            training={"train_iters": TRAIN_ITERS},
                            checkpoint={"save_dir": str(save_dir), "save_interval": 0},
                            logging={"log_interval": 100})


def test_wrong_master_address_fails_within_the_timeout(two_nodes, corpus, tmp_path):
    run_dir = tmp_path / "run"
    config = run_config(corpus, run_dir / "checkpoints", socket_ifname="eth0", init_timeout_s=15)
    # 10.77.0.99 is on the bridge's subnet but nobody has it: every rank's connection attempt goes unanswered.
    job_id = submit(config, run_dir, env=slurm_env(SA_MEGATRON_MASTER_ADDR="10.77.0.99"))
    wait_for(lambda: ended(job_id), 240, "the job to fail", run_dir, job_id)
    job = show_job(job_id)
    assert job["JobState"] == "FAILED", report(run_dir, job_id)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    message = re.search(r"sa-megatron train: error: rank (\d) of 4 (could not .*?) MASTER_ADDR=10\.77\.0\.99 "
                        r"MASTER_PORT=(\d+) within 15 s \(parallel\.init_timeout_s\)", log)
    assert message, log[-6000:]
    assert int(message.group(3)) == 20000 + int(job_id) % 40000  # the port comes from the job id
    # Interpreter and DeepSpeed start-up take most of it; the rendezvous itself gives up after 15 s.
    print(f"wrong master: job {job_id} FAILED after {job['RunTime']}: {message.group(0)}")
    assert seconds(job["RunTime"]) < 150, report(run_dir, job_id)


def test_two_node_tp2_dp2_requeues_mid_run_and_matches_the_uninterrupted_run(two_nodes, corpus, tmp_path):
    run_dir = tmp_path / "run"
    save_dir = run_dir / "checkpoints"
    job_id = submit(run_config(corpus, save_dir, socket_ifname="eth0"), run_dir)
    losses = save_dir / "losses.jsonl"

    def training() -> bool:
        assert not ended(job_id), report(run_dir, job_id)
        return losses.is_file() and len(losses.read_text().splitlines()) >= 2

    wait_for(training, 300, "training to start", run_dir, job_id)
    # A short time limit: end it 1-2 minutes from now, so Slurm's warning (--signal=USR1@120) is due at once and sent
    # by the controller's next time-limit check (every 30 s), with a minute left to save and requeue.
    elapsed = seconds(show_job(job_id)["RunTime"])
    minutes = math.ceil((elapsed + 60) / 60)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], env=slurm_env(), check=True)
    started = time.monotonic()
    # The shortened limit would stay with the requeued job (Slurm keeps an updated TimeLimit): give it back the
    # submitted one once the requeue happened, as a real job has its full limit at each start.
    wait_for(lambda: show_job(job_id).get("Restarts") == "1" or ended(job_id), 300, "the requeue", run_dir, job_id)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], env=slurm_env(), check=True)
    wait_for(lambda: ended(job_id), 600, "the job to complete", run_dir, job_id)
    job = show_job(job_id)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), report(run_dir, job_id)
    # One log across both starts: the requeue after the signal, the resume, the completion.
    assert log.count(f"sa-megatron: job {job_id} start") == 2 and "on node[1-2]" in log, log[-6000:]
    assert "stopped by signal and saved" in log and "requeueing (restart 1 of at most 20)" in log, log[-6000:]
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", log).group(1))
    assert 2 <= resumed < TRAIN_ITERS, log[-6000:]
    assert "training.train_iters reached" in log, log[-6000:]
    print(f"2-node job {job_id}: signal and requeue after step {resumed}, COMPLETED "
          f"{time.monotonic() - started:.0f} s after the time limit was shortened (run time of the last start "
          f"{job['RunTime']})")

    # The same layout, uninterrupted, on one node (4 local ranks).
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    configs = reference_dir / "configs.json"
    configs.write_text(json.dumps([run_config(corpus, reference_dir / "checkpoints")]))
    run_ranks(4, ["-m", "tests.training.rank_worker", str(configs), str(reference_dir)], reference_dir, timeout=400)
    reference = {int(step): loss for step, loss in
                 json.loads((reference_dir / "rank_0.json").read_text())[0]["losses"].items()}
    slurm_losses = last_loss_per_step(losses)
    assert sorted(slurm_losses) == list(range(1, TRAIN_ITERS + 1))
    mismatched = [step for step in reference if slurm_losses[step] != reference[step]]
    assert not mismatched, [(s, slurm_losses[s], reference[s]) for s in mismatched[:5]]
