"""DP=2 over real gloo processes reproduces the DP=1 run under every ZeRO stage; its checkpoints load as fp32.

Tolerance: losses within rtol 1e-5 of DP=1 for 4 steps in fp32. DP=1 accumulates two micro-batches and DP=2
all-reduces two ranks' gradients, so only the summation order differs (observed: 4e-8 relative after 4 steps);
1e-5 leaves room for other CPUs and thread counts, while a wrong batch split or gradient scale shows up as ~1e-2.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from sa_megatron.config import from_dict
from sa_megatron.errors import CheckpointError
from sa_megatron.training.checkpoint import load_for_inference
from sa_megatron.training.loop import train
from tests.training.launch import run_ranks
from tests.training.tiny_run import tiny_config_dict

pytestmark = pytest.mark.distributed

STAGES = (0, 1, 2, 3)
STEPS = 4


def run_config(corpus, stage: int, save_dir) -> dict:
    return tiny_config_dict(*corpus, parallel={"zero_stage": stage}, training={"train_iters": STEPS},
                            checkpoint={"save_dir": str(save_dir), "save_interval": 0})


@pytest.fixture(scope="module")
def dp2(corpus, tmp_path_factory):
    """One 2-rank job training the same run under each ZeRO stage: {stage: (save_dir, losses)}."""
    work = tmp_path_factory.mktemp("dp2")
    configs = [run_config(corpus, stage, work / f"zero{stage}") for stage in STAGES]
    (work / "configs.json").write_text(json.dumps(configs))
    run_ranks(2, ["-m", "tests.training.rank_worker", str(work / "configs.json"), str(work)], work)
    per_rank = [json.loads((work / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert per_rank[0] == per_rank[1]  # every rank reports the all-reduced loss
    return {stage: (work / f"zero{stage}", {int(step): loss for step, loss in result["losses"].items()})
            for stage, result in zip(STAGES, per_rank[0])}


@pytest.fixture(scope="module")
def dp1(corpus, tmp_path_factory, one_rank_world):
    save_dir = tmp_path_factory.mktemp("dp1") / "run"
    return save_dir, train(from_dict(run_config(corpus, 0, save_dir))).losses


@pytest.mark.parametrize("stage", STAGES)
def test_dp2_reproduces_dp1_losses(stage, dp2, dp1):
    _, reference = dp1
    _, losses = dp2[stage]
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [reference[s] for s in sorted(reference)],
                               rtol=1e-5)


@pytest.mark.parametrize("stage", STAGES)
def test_dp2_checkpoint_loads_the_same_fp32_weights(stage, dp2, dp1):
    # ZeRO 1-3 shard the fp32 master weights over both ranks; load_for_inference must gather them all.
    reference = load_for_inference(dp1[0]).model
    model = load_for_inference(dp2[stage][0]).model
    for (name, expected), actual in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=name)


def test_zero0_dp2_checkpoint_resumes_at_dp1(dp2, corpus, tmp_path, one_rank_world):
    # The global batches do not depend on the data-parallel size, so continuing at DP=1 from the DP=2 checkpoint
    # matches an uninterrupted DP=1 run.
    stage = 0
    straight_config = run_config(corpus, stage, tmp_path / "straight")
    straight_config["training"]["train_iters"] = STEPS + 2
    straight = train(from_dict(straight_config))
    save_dir = shutil.copytree(dp2[stage][0], tmp_path / "resumed")
    config = run_config(corpus, stage, save_dir)
    config["training"]["train_iters"] = STEPS + 2
    resumed = train(from_dict(config))
    assert resumed.resumed_from == STEPS
    np.testing.assert_allclose([resumed.losses[s] for s in (STEPS + 1, STEPS + 2)],
                               [straight.losses[s] for s in (STEPS + 1, STEPS + 2)], rtol=1e-5)


def test_zero1_checkpoint_at_another_layout_is_refused_until_converted(dp2, corpus, tmp_path, one_rank_world):
    # ZeRO-1 partitions the optimizer over the data-parallel ranks: another layout needs the universal form.
    save_dir = shutil.copytree(dp2[1][0], tmp_path / "run")
    config = run_config(corpus, 1, save_dir)
    config["training"]["train_iters"] = STEPS + 1
    with pytest.raises(CheckpointError, match=r"written at tensor_parallel=1 × pipeline_parallel=1 × data_parallel=2, "
                                              r"this run is tensor_parallel=1 × pipeline_parallel=1 × data_parallel=1"
                                              r": run `sa-megatron checkpoint convert .*run`"):
        train(from_dict(config))
