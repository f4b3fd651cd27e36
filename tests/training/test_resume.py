"""Checkpoints in a 1-rank world run inside pytest: exact resume, fallback past damaged checkpoints, mismatches."""

import json
import logging
import os
import shutil
import signal
import threading
import time

import pytest
import torch

from sa_megatron.errors import CheckpointError
from sa_megatron.training.checkpoint import checkpoint_tokenizer, load_for_inference
from sa_megatron.training.loop import train
from tests.training.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_rank_world")

# Dropout on, so a resume that failed to restore the RNG streams would change the losses.
DROPOUT = {"hidden_dropout": 0.1}


def run(corpus, train_iters, save_dir=None, model=None, **sections):
    sections.setdefault("checkpoint", {})
    if save_dir is not None:
        sections["checkpoint"] = {"save_dir": str(save_dir), "save_interval": 2, **sections["checkpoint"]}
    return train(tiny_config(*corpus, model={**DROPOUT, **(model or {})}, training={"train_iters": train_iters},
                             **sections))


@pytest.fixture(scope="module")
def straight(corpus):
    return run(corpus, 6)


@pytest.fixture(scope="module")
def saved(corpus, tmp_path_factory):
    """A save_dir holding step_2 and step_4 of the same run, stopped by train_iters=4."""
    save_dir = tmp_path_factory.mktemp("saved") / "run"
    run(corpus, 4, save_dir)
    return save_dir


@pytest.fixture
def save_dir(saved, tmp_path):
    """A private copy of `saved` that a test may damage."""
    return shutil.copytree(saved, tmp_path / "run")


def test_checkpoint_directory_layout(saved, corpus):
    assert sorted(p.name for p in saved.iterdir()) == ["latest", "losses.jsonl", "step_2", "step_4", "tensorboard",
                                                       "tokenizer.model"]
    assert (saved / "latest").read_text().strip() == "step_4"
    step = saved / "step_4"
    assert sorted(p.name for p in step.iterdir()) == ["COMPLETE", "engine", "metadata.json", "rng"]
    metadata = json.loads((step / "metadata.json").read_text())
    assert metadata["iteration"] == 4 and metadata["consumed_samples"] == 16
    assert metadata["parallel_layout"] == {"tensor_parallel": 1, "pipeline_parallel": 1, "data_parallel": 1,
                                           "zero_stage": 0}
    from sa_megatron.data import load_tokenizer

    assert metadata["tokenizer_sha256"] == load_tokenizer(corpus[0]).sha256
    assert (saved / "tokenizer.model").read_bytes() == corpus[0].read_bytes()  # the run keeps its tokenizer
    assert metadata["config"]["model"]["vocab_size"] == load_tokenizer(corpus[0]).vocab_size
    assert metadata["config"]["logging"]["run_name"] == "run"  # recorded for `eval --tensorboard-dir`


def test_resume_continues_exactly(straight, save_dir, corpus):
    resumed = run(corpus, 6, save_dir, checkpoint={"keep_last": 2})
    assert resumed.resumed_from == 4
    assert resumed.losses == {5: straight.losses[5], 6: straight.losses[6]}  # bit for bit
    rows = [json.loads(line) for line in (save_dir / "losses.jsonl").read_text().splitlines()]
    assert {row["step"]: row["loss"] for row in rows} == straight.losses
    assert sorted(p.name for p in save_dir.glob("step_*")) == ["step_4", "step_6"]  # keep_last=2


def test_finished_run_trains_nothing_and_says_so(save_dir, corpus, capsys):
    again = run(corpus, 4, save_dir)
    assert again.resumed_from == 4 and again.losses == {}
    out = capsys.readouterr().out
    assert f"resumed from {save_dir} at step 4" in out
    assert "nothing left to train: training.train_iters is 4" in out


def damage_truncated_engine_file(step):
    path = step / "engine" / "mp_rank_00_model_states.pt"
    path.write_bytes(path.read_bytes()[:100])


def damage_missing_marker(step):
    (step / "COMPLETE").unlink()


def damage_corrupt_metadata(step):
    (step / "metadata.json").write_text('{"iteration": ')


@pytest.mark.parametrize("damage", [damage_truncated_engine_file, damage_missing_marker, damage_corrupt_metadata])
def test_damaged_latest_checkpoint_falls_back_to_previous(damage, straight, save_dir, corpus, caplog):
    damage(save_dir / "step_4")
    with caplog.at_level(logging.WARNING, logger="sa_megatron.training.checkpoint"):
        resumed = run(corpus, 6, save_dir)
    assert resumed.resumed_from == 2
    assert [r.getMessage() for r in caplog.records if "step_4" in r.getMessage()], caplog.text
    assert resumed.losses == {s: straight.losses[s] for s in (3, 4, 5, 6)}


def test_damaged_checkpoint_is_set_aside_and_never_counted_by_pruning(straight, save_dir, corpus):
    damage_truncated_engine_file(save_dir / "step_4")
    resumed = run(corpus, 6, save_dir, checkpoint={"keep_last": 1})
    assert resumed.resumed_from == 2 and resumed.losses == {s: straight.losses[s] for s in (3, 4, 5, 6)}
    names = sorted(p.name for p in save_dir.iterdir())
    assert names[0].startswith("damaged-step_4.") and names[1:] == ["latest", "losses.jsonl", "step_6", "tensorboard",
                                                                    "tokenizer.model"], names
    assert run(corpus, 6, save_dir).resumed_from == 6


def test_no_fresh_start_on_top_of_a_half_loaded_engine(save_dir, corpus):
    shutil.rmtree(save_dir / "step_2")
    damage_truncated_engine_file(save_dir / "step_4")
    with pytest.raises(CheckpointError, match="no checkpoint in .* could be loaded"):
        run(corpus, 6, save_dir)
    assert run(corpus, 2, save_dir).resumed_from is None  # the damaged one was set aside: now a clean start


def test_leftovers_of_a_save_that_died_are_removed(save_dir, corpus):
    (save_dir / ".tmp-step_5" / "engine").mkdir(parents=True)
    run(corpus, 6, save_dir)
    assert not list(save_dir.glob(".tmp-*"))


def test_model_shape_mismatch_is_an_error(save_dir, corpus):
    with pytest.raises(CheckpointError, match=r"hidden_size 64 \(checkpoint\) vs 32 \(this run\)"):
        run(corpus, 6, save_dir, model={"hidden_size": 32})


def test_parallel_layout_mismatch_is_an_error(save_dir, corpus):
    with pytest.raises(CheckpointError, match=r"zero_stage 0 \(checkpoint\) vs 1 \(this run\)"):
        run(corpus, 6, save_dir, parallel={"zero_stage": 1})


def test_data_order_mismatch_is_an_error(save_dir, corpus):
    with pytest.raises(CheckpointError, match=r"split '90,10,0' \(checkpoint\) vs '80,20,0' \(this run\)"):
        run(corpus, 6, save_dir, data={"split": "80,20,0"})


def test_checkpoint_of_the_consecutive_document_split_is_refused(save_dir, corpus):
    """Checkpoints from before the interleaved data.split record no method: their run trained on other documents."""
    for metadata_file in save_dir.glob("step_*/metadata.json"):
        metadata = json.loads(metadata_file.read_text())
        del metadata["data_order"]["document_split"]
        metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"document_split None \(checkpoint\) vs 'interleaved' \(this run\)"):
        run(corpus, 6, save_dir)


def test_stop_signal_saves_and_stops_after_the_current_step(corpus, tmp_path):
    save_dir = tmp_path / "run"
    losses = save_dir / "losses.jsonl"

    def signal_after_first_step():
        while not (losses.exists() and losses.read_text().count("\n") >= 1):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_after_first_step, daemon=True).start()
    stopped = run(corpus, 500, save_dir, checkpoint={"save_interval": 0})
    assert stopped.stopped_by_signal and stopped.iteration < 500
    assert (save_dir / "latest").read_text().strip() == f"step_{stopped.iteration}"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # our handler is gone after train returns


def test_load_for_inference(saved, corpus):
    model, config, tokenizer_sha256, checkpoint = load_for_inference(saved)
    assert config.tokenizer.model == str(corpus[0]) and config.model.hidden_size == 64
    assert checkpoint == saved / "step_4"
    assert tokenizer_sha256 == checkpoint_tokenizer(load_for_inference(saved)).sha256
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    step_2 = load_for_inference(saved / "step_2").model
    assert any((a != b).any() for a, b in zip(model.parameters(), step_2.parameters()))


def test_load_for_inference_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_for_inference(tmp_path)


@pytest.mark.parametrize("damage", [damage_truncated_engine_file, lambda step: (step / "metadata.json").write_text("{}")])
def test_load_for_inference_of_a_damaged_checkpoint_is_an_error(save_dir, damage):
    damage(save_dir / "step_4")
    with pytest.raises(CheckpointError, match=r"step_4 could not be loaded .*earlier one"):
        load_for_inference(save_dir)


def test_checkpoint_tokenizer_refuses_a_different_tokenizer(save_dir, other_tokenizer):
    loaded = load_for_inference(save_dir)
    with pytest.raises(CheckpointError, match=r"tokenizer .*other.model is not the one checkpoint .*step_4 was "
                                              r"trained with \(sha256 \w{12}…, not \w{12}…\); pass the .model"):
        checkpoint_tokenizer(loaded, other_tokenizer)
    shutil.copyfile(other_tokenizer, save_dir / "tokenizer.model")  # a copy replaced by hand
    with pytest.raises(CheckpointError, match=r"tokenizer.model is not the one .* pass --tokenizer MODEL"):
        checkpoint_tokenizer(loaded)
