"""The NaN/inf policy: a step with a non-finite loss or gradient norm is skipped, too many in a row stop the run
(exit code 3 from the CLI), and no checkpoint ever holds such a step.

Two honest ways to get non-finite steps, neither touching the code under test:
- a learning rate of 1e4, which makes every loss from the third step on NaN (a real divergence);
- one outlier weight: the input embedding row of a token that appears in exactly one step's batches is set to
  float32's largest value, so only that step's forward overflows (a layer norm sums the row to inf) — the classic
  "rare token meets a bad weight" loss spike.
"""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from sa_megatron.config import from_dict
from sa_megatron.data import load_tokenizer
from sa_megatron.training.batches import build_datasets, micro_batches
from sa_megatron.training.checkpoint import load_for_inference
from sa_megatron.training.loop import train
from sa_megatron.training.preflight import resolve_vocab
from tests.training.launch import read_log, start_ranks, wait_all
from tests.training.tiny_run import tiny_config_dict

DIVERGE = {"lr": 1e4, "min_lr": 0.0}


def config(corpus, save_dir, train_iters, optimizer=None, **sections):
    sections["checkpoint"] = {"save_dir": str(save_dir), "save_interval": 1, **sections.get("checkpoint", {})}
    sections["training"] = {"train_iters": train_iters, **sections.get("training", {})}
    return tiny_config_dict(*corpus, optimizer={**{"lr": 1e-3, "min_lr": 1e-4}, **(optimizer or {})}, **sections)


def weights_are_finite(checkpoint) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in load_for_inference(checkpoint).model.parameters())


@pytest.mark.usefixtures("one_rank_world")
@pytest.mark.parametrize("zero_stage", [0, 1])  # 0: our gate; 1: DeepSpeed's ZeRO optimizer skips by itself
def test_forced_divergence_stops_keeps_last_good_checkpoint_and_resumes(zero_stage, corpus, tmp_path, capsys):
    save_dir = tmp_path / "run"
    parallel = {"zero_stage": zero_stage}
    result = train(from_dict(config(corpus, save_dir, 20, DIVERGE, parallel=parallel, checkpoint={"keep_last": 1})))

    assert result.diverged and result.iteration < 20
    bad = result.skipped_steps
    assert bad == list(range(bad[0], bad[0] + 3)) and bad[-1] == result.iteration  # 3 in a row, then the stop
    assert all(not math.isfinite(result.losses[step]) or math.isinf(result.grad_norms.get(step, math.inf))
               for step in bad)
    good = bad[0] - 1
    assert all(math.isfinite(result.losses[step]) for step in range(1, bad[0]))
    # keep_last=1 and nothing saved after the good step: its checkpoint is the one left, with finite weights.
    assert sorted(p.name for p in save_dir.glob("step_*")) == [f"step_{good}"]
    assert weights_are_finite(save_dir / f"step_{good}")
    metadata = json.loads((save_dir / f"step_{good}" / "metadata.json").read_text())
    assert metadata["last_loss"] == result.losses[good]
    report = [line for line in capsys.readouterr().err.splitlines() if "training diverged" in line]
    assert len(report) == 1 and f"step {bad[-1]}, loss nan" in report[0], report
    assert report[0].endswith(f"last good checkpoint: {save_dir / f'step_{good}'}")

    # The run resumes from the last good checkpoint (here with a sane learning rate) and trains on.
    resumed = train(from_dict(config(corpus, save_dir, good + 2, parallel=parallel)))
    assert resumed.resumed_from == good and not resumed.diverged
    assert sorted(resumed.losses) == [good + 1, good + 2]


def steps_reading(tokens_by_step: dict, token: int) -> list[int]:
    return [step for step, tokens in tokens_by_step.items() if token in tokens]


def rare_token(config_dict: dict, steps: range, spike: int) -> int:
    """A token that the inputs of step `spike` contain and those of the other `steps` do not."""
    tokenizer = load_tokenizer(config_dict["tokenizer"]["model"])
    cfg, _ = resolve_vocab(from_dict(config_dict), tokenizer)
    train_data, _ = build_datasets(cfg, tokenizer.sha256)
    inputs = {step: set(np.concatenate([b[:, :-1].reshape(-1).numpy() for b in
                                        micro_batches(train_data, step - 1, cfg, 0, 1)]).tolist())
              for step in steps}
    candidates = sorted(t for t in inputs[spike] if steps_reading(inputs, t) == [spike])
    assert candidates, "no token occurs in the spike step only"
    return candidates[0]


def poison_embedding_row(checkpoint, token: int) -> None:
    """Set the input embedding row of `token` to float32's largest (finite) value in a ZeRO-0 checkpoint."""
    path = checkpoint / "engine" / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=False)
    (name,) = [key for key, value in state["module"].items() if value.dim() == 2 and key.startswith("0.")]
    state["module"][name][token] = torch.finfo(torch.float32).max
    torch.save(state, path)


@pytest.mark.usefixtures("one_rank_world")
def test_single_spike_is_skipped_and_training_continues_identically_on_resume(corpus, tmp_path):
    spike, last = 5, 8
    options = {"model": {"tie_embeddings": False},  # a tied head would put the outlier row into every step's logits
               "training": {"seed": 3}}  # a data order where step 5 reads a token steps 3-8 otherwise do not
    start_dir, save_dir = tmp_path / "start", tmp_path / "run"
    train(from_dict(config(corpus, start_dir, 2, **options, checkpoint={"save_interval": 2})))
    token = rare_token(config(corpus, start_dir, last, **options), range(3, last + 1), spike)
    poison_embedding_row(start_dir / "step_2", token)
    shutil.copytree(start_dir, save_dir)

    straight = train(from_dict(config(corpus, save_dir, last, **options, checkpoint={"save_interval": 2})))
    assert straight.skipped_steps == [spike] and not straight.diverged
    assert not math.isfinite(straight.losses[spike])
    assert all(math.isfinite(loss) for step, loss in straight.losses.items() if step != spike)
    rows = [json.loads(line) for line in (save_dir / "losses.jsonl").read_text().splitlines()]
    lr = {row["step"]: row["lr"] for row in rows}
    assert lr[spike + 1] == lr[spike] != lr[spike - 1]  # the lr schedule did not advance on the skipped step
    assert sorted(p.name for p in save_dir.glob("step_*")) == ["step_4", "step_6", "step_8"]

    for resume_at in (4, 6):  # before the spike (it is met and skipped again) and after it
        again = tmp_path / f"from_{resume_at}"
        shutil.copytree(save_dir, again)
        for later in range(resume_at + 2, last + 1, 2):
            shutil.rmtree(again / f"step_{later}")
        resumed = train(from_dict(config(corpus, again, last, **options, checkpoint={"save_interval": 2})))
        assert resumed.resumed_from == resume_at
        expected = {step: loss for step, loss in straight.losses.items() if step > resume_at}
        assert {s: str(v) for s, v in resumed.losses.items()} == {s: str(v) for s, v in expected.items()}
        assert resumed.skipped_steps == [s for s in [spike] if s > resume_at]


@pytest.mark.distributed
def test_pipeline_divergence_exits_3_on_every_rank(corpus, tmp_path):
    """PP2 at ZeRO-0: the gate runs inside DeepSpeed's train_batch, the loss lives on the last stage only."""
    import yaml

    save_dir = tmp_path / "run"
    raw = config(corpus, save_dir, 20, DIVERGE, parallel={"pipeline_parallel": 2},
                 training={"micro_batch_size": 1, "global_batch_size": 4, "max_bad_steps_in_a_row": 2},
                 checkpoint={"save_interval": 2})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    codes = wait_all(start_ranks(2, ["-m", "launcher.cli", "train", str(tmp_path / "run.yaml")], tmp_path), 240)
    logs = [read_log(tmp_path, rank) for rank in range(2)]
    assert codes == [3, 3], logs
    report = [line for line in logs[0].splitlines() if line.startswith("training diverged")]
    assert len(report) == 1 and "last good checkpoint: " + str(save_dir / "step_") in report[0], logs[0]
    good = int(report[0].rsplit("step_", 1)[1])
    assert max(int(p.name.split("_")[1]) for p in save_dir.glob("step_*")) == good  # nothing saved after it
    assert weights_are_finite(save_dir / f"step_{good}")
    assert "Traceback" not in logs[0] + logs[1]
