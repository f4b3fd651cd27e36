"""The loop's schedule of evaluations, in a 1-rank world inside pytest."""

import pytest

from sa_megatron.training.loop import train
from tests.training.tiny_run import tiny_config

pytestmark = pytest.mark.usefixtures("one_rank_world")


def test_evaluates_every_interval_and_after_the_last_step(corpus, capsys):
    result = train(tiny_config(*corpus, training={"train_iters": 5, "eval_interval": 2, "eval_iters": 2}))
    assert sorted(result.eval_losses) == [2, 4, 5]
    assert result.final_loss == result.losses[5] and sorted(result.losses) == [1, 2, 3, 4, 5]
    assert "eval at step 5" in capsys.readouterr().out
