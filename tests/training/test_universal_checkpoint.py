"""A checkpoint resumes at another layout through DeepSpeed's universal form (`sa-megatron checkpoint convert`).

A TP2×PP2 ZeRO-1 run (4 ranks, one data-parallel replica) is converted and resumed as DP2 ZeRO-1 (2 ranks): tensor,
pipeline and data-parallel sizes all change, the vocabulary padding stays the same (make_vocab_size_divisible_by 32).
The resumed steps match an uninterrupted one-process run within rtol 1e-5, the layouts' tolerance
(test_parallel_layouts.py): the optimizer states were merged and re-split, not reset (a restarted Adam moves the
loss by ~1e-2 in these steps).
"""
import json
import os
import pty
import subprocess
import sys

import numpy as np
import pytest

from sa_megatron.config import from_dict
from sa_megatron.training.loop import train
from sa_megatron.training.universal import run_showing_progress
from tests.training.launch import REPO, child_env, run_ranks
from tests.training.tiny_run import tiny_config_dict

pytestmark = pytest.mark.distributed

SAVED_AT, STEPS = 3, 5
ZERO1 = {"zero_stage": 1}


def config(corpus, parallel: dict, save_dir, steps: int) -> dict:
    return tiny_config_dict(*corpus, parallel={**ZERO1, **parallel},
                            training={"train_iters": steps, "micro_batch_size": 1, "global_batch_size": 4},
                            checkpoint={"save_dir": str(save_dir), "save_interval": 0})


def run_job(work, nproc: int, raw: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "configs.json").write_text(json.dumps([raw]))
    run_ranks(nproc, ["-m", "tests.training.rank_worker", str(work / "configs.json"), str(work)], work)
    return {int(step): loss for step, loss in json.loads((work / "rank_0.json").read_text())[0]["losses"].items()}


def convert(save_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", "checkpoint", "convert", str(save_dir)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=300)


def test_tp2_pp2_checkpoint_resumes_as_dp2_after_convert(corpus, tmp_path, one_rank_world):
    save_dir = tmp_path / "run"
    run_job(tmp_path / "tp2pp2", 4, config(corpus, {"tensor_parallel": 2, "pipeline_parallel": 2}, save_dir, SAVED_AT))

    converted = convert(save_dir)
    assert converted.returncode == 0, converted.stderr
    assert (save_dir / f"step_{SAVED_AT}" / "universal").is_dir()

    resumed = run_job(tmp_path / "dp2", 2, config(corpus, {}, save_dir, STEPS))
    straight = train(from_dict(config(corpus, {}, tmp_path / "straight", STEPS))).losses
    assert sorted(resumed) == list(range(SAVED_AT + 1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [straight[s] for s in sorted(resumed)],
                               rtol=1e-5)


def test_convert_refuses_a_folder_without_checkpoints(tmp_path):
    result = convert(tmp_path)
    assert result.returncode == 2 and "holds no complete checkpoint" in result.stderr.strip().splitlines()[-1]


def test_converter_output_is_shown_on_a_terminal_else_captured():
    converter = [sys.executable, "-c", "import sys; print('*** 1. Extracting ZeRO fragments', file=sys.stderr)"]
    assert run_showing_progress(converter).stderr.strip() == "*** 1. Extracting ZeRO fragments"
    terminal, terminal_side = pty.openpty()
    shown = subprocess.run([sys.executable, "-c", "from sa_megatron.training.universal import run_showing_progress; "
                            f"assert run_showing_progress({converter!r}).stderr is None"],
                           cwd=REPO, stderr=terminal_side, timeout=120)
    os.close(terminal_side)
    assert shown.returncode == 0 and "*** 1. Extracting ZeRO fragments" in os.read(terminal, 4096).decode()
