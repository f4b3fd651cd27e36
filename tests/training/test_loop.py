"""The loop's schedule of evaluations, in a 1-rank world inside pytest."""

import pytest

from sa_megatron.training.loop import train
from sa_megatron.training.metrics import memory_scalars
from tests.training.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_rank_world")


def test_evaluates_every_interval_and_after_the_last_step(corpus, capsys):
    result = train(tiny_config(*corpus, training={"train_iters": 5, "eval_interval": 2, "eval_iters": 2}))
    assert sorted(result.eval_losses) == [2, 4, 5]
    assert result.final_loss == result.losses[5] and sorted(result.losses) == [1, 2, 3, 4, 5]
    assert "eval at step 5" in capsys.readouterr().out


def scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_a_real_run_writes_every_tensorboard_scalar(corpus, tmp_path):
    train(tiny_config(*corpus, training={"train_iters": 4, "eval_interval": 2, "eval_iters": 1},
                      logging={"log_interval": 2, "tensorboard_dir": str(tmp_path / "tb"),
                               "peak_tflops_per_device": 1.0}))
    written = scalars(tmp_path / "tb" / "run")  # no save_dir or run_name: the run is called "run"
    expected = {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                "train/tflops_per_device", "train/mfu", *memory_scalars(), "valid/loss", "valid/ppl",
                *(f"{kind}/layer_{i}" for kind in ("x_attention/row_mass", "x_grad_norm/query", "x_grad_norm/key")
                  for i in range(2))}
    assert expected <= set(written), expected - set(written)
    assert set(written["train/loss"]) == {2, 4}
    assert all(0 < mass < 1 for i in range(2) for mass in written[f"x_attention/row_mass/layer_{i}"].values())


def test_grad_norm_at_zero_stage_0_equals_deepspeeds_at_stage_1(corpus, tmp_path):
    """Stage 0 norms are computed by us; ZeRO-1's come from DeepSpeed's optimizer: same run, same numbers."""
    norms = {}
    for stage in (0, 1):
        log_dir = tmp_path / f"stage{stage}"
        train(tiny_config(*corpus, parallel={"zero_stage": stage}, training={"train_iters": 2},
                          logging={"log_interval": 1, "tensorboard_dir": str(log_dir), "run_name": "grad"}))
        norms[stage] = scalars(log_dir / "grad")["train/grad_norm"]
    assert set(norms[0]) == {1, 2}
    for step in (1, 2):
        assert norms[0][step] == pytest.approx(norms[1][step], rel=1e-5)


def test_data_made_by_another_tokenizer_is_refused(corpus, other_tokenizer):
    from sa_megatron.errors import DataError

    with pytest.raises(DataError, match="tokenized with a different tokenizer"):
        train(tiny_config(other_tokenizer, corpus[1]))
