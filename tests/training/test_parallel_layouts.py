"""3D parallelism over real gloo processes reproduces the one-process run: tensor (TP), sequence (SP), pipeline (PP)
and data (DP) parallelism, alone and combined, with ZeRO-0 and ZeRO-1 under pipelines. Gradient clipping (at 1.0)
is active in these steps, so a wrong global norm changes the losses too.

Tolerance: losses and global grad norms within rtol 1e-5 of the one-process run for 5 steps in fp32. The layouts
compute the same sums in other orders (tensor-parallel partial products, sequence shards, micro-batches spread over
data-parallel ranks), which shows up as ~1e-7 relative; a wrong gradient scale, a shard counted twice or a missing
reduction shows up as 1e-3 or more from the first step.
"""
import json
import signal
import time

import numpy as np
import pytest

from sa_megatron.config import from_dict
from sa_megatron.training.loop import train
from tests.training.launch import read_log, run_ranks, start_ranks, wait_all
from tests.training.tiny_run import tiny_config_dict

pytestmark = pytest.mark.distributed

STEPS = 5
# One sequence per micro-batch: a pipeline then runs 4 micro-batches per step (2 per data-parallel rank at DP2).
BATCH = {"train_iters": STEPS, "micro_batch_size": 1, "global_batch_size": 4}
VARIANT = {"position_encoding": "kerple", "tie_embeddings": False, "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
ZERO1 = {"zero_stage": 1}

# name: (ranks, parallel section, model section)
LAYOUTS = {
    "TP2": (2, {"tensor_parallel": 2}, {}),
    "TP2+SP": (2, {"tensor_parallel": 2, "sequence_parallel": True}, {}),
    "TP2+SP variant": (2, {"tensor_parallel": 2, "sequence_parallel": True}, VARIANT),
    "PP2": (2, {"pipeline_parallel": 2}, {}),
    "TP2xPP2": (4, {"tensor_parallel": 2, "pipeline_parallel": 2}, {}),
    "PP4": (4, {"pipeline_parallel": 4}, {"num_layers": 4}),
    "PP2xDP2": (4, {"pipeline_parallel": 2, **ZERO1}, {}),
    "TP2xPP2xDP2": (8, {"tensor_parallel": 2, "pipeline_parallel": 2, "sequence_parallel": True, **ZERO1}, VARIANT),
}


def layout_config(corpus, parallel: dict, model: dict, **sections) -> dict:
    sections = {"training": BATCH, "logging": {"log_interval": 1}, **sections}
    return tiny_config_dict(*corpus, parallel=parallel, model=model, **sections)


def run_job(work, nproc: int, configs: list[dict], timeout: float = 400) -> list[dict]:
    """One process group of `nproc` ranks training each config in turn: rank 0's results, keys made int."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "configs.json").write_text(json.dumps(configs))
    run_ranks(nproc, ["-m", "tests.training.rank_worker", str(work / "configs.json"), str(work)], work, timeout)
    results = json.loads((work / "rank_0.json").read_text())
    return [{key: {int(step): value for step, value in result[key].items()} for key in ("losses", "grad_norms")}
            for result in results]


@pytest.fixture(scope="module")
def layouts(corpus, tmp_path_factory) -> dict:
    """{name: results}, one launch per world size."""
    results = {}
    for nproc in sorted({ranks for ranks, _, _ in LAYOUTS.values()}):
        names = [name for name, (ranks, _, _) in LAYOUTS.items() if ranks == nproc]
        configs = [layout_config(corpus, LAYOUTS[name][1], LAYOUTS[name][2]) for name in names]
        results.update(zip(names, run_job(tmp_path_factory.mktemp(f"world{nproc}"), nproc, configs)))
    return results


@pytest.fixture(scope="module")
def one_process(corpus, one_rank_world) -> dict:
    """{model section as JSON: results} of the one-process runs the layouts are compared with."""
    results = {}
    for _, _, model in LAYOUTS.values():
        key = json.dumps(model, sort_keys=True)
        if key not in results:
            result = train(from_dict(layout_config(corpus, {}, model)))
            results[key] = {"losses": result.losses, "grad_norms": result.grad_norms}
    return results


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reproduces_one_process_losses_and_grad_norms(name, layouts, one_process):
    reference = one_process[json.dumps(LAYOUTS[name][2], sort_keys=True)]
    for key in ("losses", "grad_norms"):
        assert sorted(layouts[name][key]) == list(range(1, STEPS + 1)), key
        np.testing.assert_allclose([layouts[name][key][s] for s in range(1, STEPS + 1)],
                                   [reference[key][s] for s in range(1, STEPS + 1)], rtol=1e-5, err_msg=key)


def test_resume_after_sigterm_at_tp2_pp2_is_bit_exact(corpus, tmp_path):
    """TP2×PP2 with sequence parallelism and dropout (so both random streams matter): SIGTERM mid-run saves and
    exits; a relaunch resumes and reproduces the uninterrupted run's losses bit for bit."""
    steps = 8
    parallel = {"tensor_parallel": 2, "pipeline_parallel": 2, "sequence_parallel": True, **ZERO1}
    model = {"hidden_dropout": 0.1}

    def config(save_dir):
        return layout_config(corpus, parallel, model, training={**BATCH, "train_iters": steps},
                             checkpoint={"save_dir": str(save_dir), "save_interval": 0})

    straight = run_job(tmp_path / "straight", 4, [config(tmp_path / "straight" / "ckpt")])[0]["losses"]

    save_dir = tmp_path / "interrupted" / "ckpt"
    work = save_dir.parent
    work.mkdir(parents=True)
    (work / "configs.json").write_text(json.dumps([config(save_dir)]))
    args = ["-m", "tests.training.rank_worker", str(work / "configs.json"), str(work)]
    procs = start_ranks(4, args, work)
    losses_file = save_dir / "losses.jsonl"
    deadline = time.monotonic() + 240
    while not (losses_file.exists() and losses_file.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), read_log(work, 0)
        time.sleep(0.05)
    for proc in procs:  # what Slurm does at a time limit: every rank gets the signal
        proc.send_signal(signal.SIGTERM)
    assert wait_all(procs) == [0, 0, 0, 0], read_log(work, 0)
    interrupted = json.loads((work / "rank_0.json").read_text())[0]["losses"]
    assert 2 <= len(interrupted) < steps, "the signal should have stopped the run early"

    resumed = run_job(tmp_path / "resumed", 4, [config(save_dir)])[0]["losses"]
    assert min(resumed) == len(interrupted) + 1 and max(resumed) == steps
    rows = [json.loads(line) for line in (save_dir / "losses.jsonl").read_text().splitlines()]
    assert {row["step"]: row["loss"] for row in rows} == straight  # bit for bit


def test_2_7b_shape_trains_at_tp2_pp2_dp2(corpus, tmp_path):
    """GPT-2.7B's depth and heads (32 layers, 32 heads) at a narrow width over 8 ranks: 2 steps, finite losses."""
    model = {"num_layers": 32, "num_attention_heads": 32, "hidden_size": 64}
    parallel = {"tensor_parallel": 2, "pipeline_parallel": 2, **ZERO1}
    result = run_job(tmp_path, 8, [layout_config(corpus, parallel, model, training={**BATCH, "train_iters": 2})])[0]
    assert sorted(result["losses"]) == [1, 2] and all(np.isfinite(list(result["losses"].values())))
