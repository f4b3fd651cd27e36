"""Checkpoints written at TP2, PP2, TP2×PP2 and TP2×DP2 (real gloo ranks) load for inference as the run's TP=1 model.

Tolerance: logits within atol 1e-4 of the one-process run's after 2 steps in fp32. The layouts sum the same
gradients in another order (tensor-parallel all-reduces, pipeline micro-batches, data ranks), so their losses agree
to ~1e-7, and Adam's second step (m/√v) enlarges those rounding differences in parameters with small gradients:
observed max |Δlogit| 8.1e-6 (TP2), 1.7e-6 (PP2), 2.1e-6 (TP2×PP2), 7.7e-6 (TP2×DP2) on logits up to 2.7.
Merging the tensor ranks in the wrong order moves them by over 1 (by 1.7 for one layer's QKV alone); a missing
layer fails to load.
"""

import json
import shutil

import pytest
import torch

from launcher.cli import main
from sa_megatron.config import from_dict
from sa_megatron.errors import CheckpointError
from sa_megatron.training.checkpoint import load_for_inference
from sa_megatron.training.loop import train
from tests.training.launch import run_ranks
from tests.training.tiny_run import tiny_config_dict

pytestmark = pytest.mark.distributed

STEPS = 2
# The tiny model as it is (tied embedding and head, rope), and with an untied head and per-head Kerple parameters,
# so that every kind of sharded parameter and the head's own pipeline layer file are merged.
MODELS = {"tied": {}, "untied-kerple": {"tie_embeddings": False, "position_encoding": "kerple"}}
# name: (ranks, model, parallel section); the layouts of one rank count train in one launch. Data parallelism is what
# the ranks leave over: TP2 with ZeRO 2 on 4 ranks shards the optimizer over 2 data ranks.
LAYOUTS = {
    "tp2": (2, "tied", {"tensor_parallel": 2}),
    "pp2": (2, "tied", {"pipeline_parallel": 2, "zero_stage": 1}),
    "tp2pp2": (4, "untied-kerple", {"tensor_parallel": 2, "pipeline_parallel": 2, "zero_stage": 1}),
    "tp2dp2": (4, "tied", {"tensor_parallel": 2, "zero_stage": 2}),
}


def run_config(corpus, save_dir, model: str, parallel: dict) -> dict:
    return tiny_config_dict(*corpus, model=MODELS[model], parallel=parallel, training={"train_iters": STEPS},
                            checkpoint={"save_dir": str(save_dir), "save_interval": 0})


@pytest.fixture(scope="module")
def layouts(corpus, tmp_path_factory):
    """{layout name: save_dir}, trained in one launch per rank count."""
    work = tmp_path_factory.mktemp("layouts")
    for nproc in sorted({ranks for ranks, _, _ in LAYOUTS.values()}):
        launch = work / f"launch{nproc}"
        launch.mkdir()
        configs = [run_config(corpus, work / name, model, parallel)
                   for name, (ranks, model, parallel) in LAYOUTS.items() if ranks == nproc]
        (launch / "configs.json").write_text(json.dumps(configs))
        run_ranks(nproc, ["-m", "tests.training.rank_worker", str(launch / "configs.json"), str(launch)], launch)
    return {name: work / name for name in LAYOUTS}


@pytest.fixture(scope="module")
def references(corpus, tmp_path_factory, one_rank_world):
    """{model: save_dir} of the same runs in this one process (TP=1, PP=1, ZeRO 0)."""
    work = tmp_path_factory.mktemp("tp1")
    for model in MODELS:
        train(from_dict(run_config(corpus, work / model, model, {})))
    return {model: work / model for model in MODELS}


def logits(model) -> torch.Tensor:
    """On a fixed batch: 2 sequences of 32 random ids."""
    tokens = torch.randint(0, 320, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_loads_as_the_one_process_model(layout, layouts, references):
    model = load_for_inference(layouts[layout], device="cpu").model
    expected = load_for_inference(references[LAYOUTS[layout][1]], device="cpu").model
    assert [(n, t.shape, t.dtype) for n, t in model.state_dict().items()] == \
        [(n, t.shape, t.dtype) for n, t in expected.state_dict().items()]
    torch.testing.assert_close(logits(model), logits(expected), rtol=0, atol=1e-4)


def test_cli_eval_and_generate_read_a_tp2pp2_checkpoint(layouts, references, corpus, tmp_path, capsys):
    _, prefix = corpus
    runs = {"tp2pp2": layouts["tp2pp2"], "tp1": references[LAYOUTS["tp2pp2"][1]]}
    results, texts = {}, {}
    for name, save_dir in runs.items():
        output = tmp_path / f"{name}.json"
        assert main(["eval", "--load", str(save_dir), "--data", prefix, "--lengths", "16,32",
                     "--max-windows", "2", "--output", str(output)]) == 0
        results[name] = json.loads(output.read_text())["results"]
        capsys.readouterr()
        assert main(["generate", "--load", str(save_dir), "--prompt", "First Citizen:", "--max-new-tokens", "8",
                     "--temperature", "0"]) == 0
        texts[name] = capsys.readouterr().out
    for ours, theirs in zip(results["tp2pp2"], results["tp1"]):
        assert ours["windows"] == theirs["windows"] and ours["ppl"] == pytest.approx(theirs["ppl"], rel=1e-5)
    assert texts["tp2pp2"] == texts["tp1"] and texts["tp1"].startswith("First Citizen:")


@pytest.mark.parametrize("damage", ["missing", "damaged"])
@pytest.mark.parametrize("layout,shard", [("tp2", "mp_rank_01_model_states.pt"),
                                          ("tp2pp2", "layer_03-model_01-model_states.pt")])
def test_missing_or_damaged_shard_is_a_one_line_error(damage, layout, shard, layouts, tmp_path):
    step = tmp_path / "step_2"
    shutil.copytree(layouts[layout] / "step_2", step)
    path = step / "engine" / shard
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{shard} is {damage}.*earlier one") as error:
        load_for_inference(step)
    assert "\n" not in str(error.value)
