"""`sa-megatron train` as users run it: real ranks, a SIGTERM mid-run, and one-line errors for bad input."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.training.launch import REPO, child_env, read_log, run_ranks, start_ranks, wait_all
from tests.training.tiny_run import tiny_config_dict

CLI = ["-m", "launcher.cli", "train"]


def write_config(path, corpus, **sections):
    path.write_text(yaml.safe_dump(tiny_config_dict(*corpus, **sections)))
    return str(path)


def losses_by_step(save_dir) -> dict:
    """losses.jsonl with the last row winning, as documented for resumed runs."""
    rows = [json.loads(line) for line in (save_dir / "losses.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.mark.distributed
def test_sigterm_saves_exits_zero_and_resumes_bit_for_bit(corpus, tmp_path):
    steps = 40
    sections = dict(model={"hidden_dropout": 0.1}, parallel={"zero_stage": 2}, training={"train_iters": steps},
                    checkpoint={"save_interval": 0}, logging={"log_interval": 1000})
    straight_dir, stopped_dir = tmp_path / "straight", tmp_path / "stopped"
    straight = write_config(tmp_path / "straight.yaml", corpus, **sections)
    stopped = write_config(tmp_path / "stopped.yaml", corpus, **sections)
    overrides = lambda d: ["--set", f"checkpoint.save_dir={d}"]  # noqa: E731

    (tmp_path / "logs").mkdir()
    run_ranks(2, [*CLI, straight, *overrides(straight_dir)], tmp_path / "logs")

    procs = start_ranks(2, [*CLI, stopped, *overrides(stopped_dir)], tmp_path)
    deadline = time.monotonic() + 120
    while not ((stopped_dir / "losses.jsonl").exists() and len(losses_by_step(stopped_dir)) >= 3):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), read_log(tmp_path, 0)
        time.sleep(0.02)
    for proc in procs:  # what Slurm does before a time limit: every task gets the signal
        proc.send_signal(signal.SIGTERM)
    assert wait_all(procs) == [0, 0], read_log(tmp_path, 0) + read_log(tmp_path, 1)
    stop_step = len(losses_by_step(stopped_dir))
    assert stop_step < steps and "stopped by signal" in read_log(tmp_path, 0)
    assert (stopped_dir / "latest").read_text().strip() == f"step_{stop_step}"

    run_ranks(2, [*CLI, stopped, *overrides(stopped_dir)], tmp_path / "logs")
    assert losses_by_step(stopped_dir) == losses_by_step(straight_dir)  # bit for bit, dropout included


def run_cli(*args, env_extra=None):
    return subprocess.run([sys.executable, *CLI, *args], cwd=REPO, env=child_env(**(env_extra or {})),
                          capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("overrides, env, message", [
    (["training.global_batch_size=6"], {"WORLD_SIZE": "2"},
     "training.global_batch_size (6) must be divisible by micro_batch_size × data_parallel = 2 × 2"),
    (["parallel.tensor_parallel=2"], {},
     "world size 1 is not tensor_parallel × pipeline_parallel × data_parallel = 2 × 1 × data_parallel for a whole "
     "data_parallel: launch a multiple of 2 ranks, e.g. torchrun --nproc_per_node 2"),
    (["parallel.tensor_parallel=2", "parallel.zero_stage=3"], {"WORLD_SIZE": "2"},
     "parallel.zero_stage=3 cannot be combined with tensor_parallel=2"),
    (["training.precision=bf16"], {}, "training.precision=bf16 needs parallel.zero_stage >= 1"),
    (["tokenizer.model=/nonexistent/tok.model"], {}, "/nonexistent/tok.model: no such tokenizer file"),
    (["model.vocab_size=100"], {}, "model.vocab_size (100) is smaller than the vocabulary of tokenizer"),
    (["checkpoint.keep_last=0"], {}, "checkpoint.keep_last is 0, outside its valid range [1, 1000000]"),
])
def test_bad_config_fails_with_one_line(overrides, env, message, corpus, tmp_path):
    config = write_config(tmp_path / "run.yaml", corpus)
    result = run_cli(config, *[arg for item in overrides for arg in ("--set", item)], env_extra=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("sa-megatron train: error: ") and message in last_line, result.stderr


def test_missing_dataset_fails_with_one_line(corpus, tmp_path):
    config = write_config(tmp_path / "run.yaml", corpus, data={"paths": [str(tmp_path / "missing")]})
    result = run_cli(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("sa-megatron train: error: ") and "missing" in last_line, result.stderr


def test_single_process_run_succeeds(corpus, tmp_path):
    config = write_config(tmp_path / "run.yaml", corpus, training={"train_iters": 2}, logging={"log_interval": 1})
    result = run_cli(config, "--set", f"checkpoint.save_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stdout and (tmp_path / "run" / "step_2" / "COMPLETE").is_file()
