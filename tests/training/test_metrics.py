"""MetricsLogger: every scalar read back from real TensorBoard event files, plus the console line."""

import math
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sa_megatron.config import Config
from sa_megatron.training.metrics import MetricsLogger, format_duration, perplexity

MEMORY_TAG = "memory/peak_gpu_allocated_gb" if torch.cuda.is_available() else "memory/rss_gb"
STATS = {"row_mass": [0.9, 1.3], "qk_grad_norm": [(0.1, 0.2), (0.3, 0.4)]}


def make_config(tmp_path, *, precision="fp32", peak=0.0, tensorboard=True, train_iters=100) -> Config:
    config = Config()
    config.training.train_iters = train_iters
    config.training.precision = precision
    config.logging.peak_tflops_per_device = peak
    config.logging.tensorboard_dir = str(tmp_path / "tb") if tensorboard else None
    return config


def read_events(directory) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator) -> dict:
    """tag -> {step: value}"""
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_train_scalars_and_values(tmp_path):
    if torch.cuda.is_available():
        torch.ones(1, device="cuda")  # so the peak allocated is above 0 even when this test runs alone
    logger = MetricsLogger(make_config(tmp_path, precision="fp16", peak=50.0), flops_per_token=6e6,
                           num_devices=2)
    logger.log_train(10, loss=4.5, lr=3e-4, grad_norm=1.25, loss_scale=65536.0, tokens=20_000, elapsed_s=4.0,
                     attention_stats=STATS)
    logger.close()

    got = scalars(read_events(tmp_path / "tb"))
    tflops = 6e6 * 20_000 / 4.0 / 2 / 1e12
    expected = {
        "train/loss": 4.5, "train/ppl": math.exp(4.5), "train/lr": 3e-4, "train/grad_norm": 1.25,
        "train/loss_scale": 65536.0, "throughput/tokens_per_sec": 5000.0, "throughput/tflops_per_device": tflops,
        "throughput/mfu": tflops / 50.0,
        "attention/row_mass/layer_0": 0.9, "attention/row_mass/layer_1": 1.3,
        "grad_norm/query/layer_0": 0.1, "grad_norm/key/layer_0": 0.2,
        "grad_norm/query/layer_1": 0.3, "grad_norm/key/layer_1": 0.4,
    }
    assert set(got) == set(expected) | {MEMORY_TAG}
    for tag, value in expected.items():
        assert got[tag][10] == pytest.approx(value, rel=1e-6), tag
    assert got[MEMORY_TAG][10] > 0


def test_mfu_needs_peak_and_loss_scale_needs_fp16(tmp_path):
    logger = MetricsLogger(make_config(tmp_path, train_iters=10), flops_per_token=1e6, num_devices=1)
    logger.log_train(1, loss=2.0, lr=1e-3, grad_norm=0.5, loss_scale=1.0, tokens=100, elapsed_s=1.0)
    logger.close()

    tags = set(scalars(read_events(tmp_path / "tb")))
    assert "throughput/mfu" not in tags
    assert "train/loss_scale" not in tags
    assert not any(tag.startswith(("attention/", "grad_norm/")) for tag in tags)


def test_eval_and_config_text(tmp_path):
    logger = MetricsLogger(make_config(tmp_path, train_iters=10), flops_per_token=1e6, num_devices=1)
    logger.log_config({"model": {"hidden_size": 64}, "training": {"train_iters": 10}})
    logger.log_eval(5, 3.0)
    logger.close()

    events = read_events(tmp_path / "tb")
    got = scalars(events)
    assert got["eval/loss"] == {5: pytest.approx(3.0)}
    assert got["eval/ppl"] == {5: pytest.approx(math.exp(3.0), rel=1e-6)}
    (text_event,) = events.Tensors("config/text_summary")
    text = text_event.tensor_proto.string_val[0].decode()
    assert text.startswith("```yaml\n") and text.endswith("```")
    assert "hidden_size: 64" in text and "train_iters: 10" in text


def test_console_lines_without_tensorboard(tmp_path, capsys):
    logger = MetricsLogger(make_config(tmp_path, tensorboard=False, train_iters=200), flops_per_token=1e6,
                           num_devices=1)
    # 40 steps in 26.6 s -> 0.665 s/step -> 160 remaining steps take 106 s.
    logger.log_train(40, loss=4.12344, lr=3e-4, grad_norm=None, loss_scale=None, tokens=49_358, elapsed_s=26.6)
    logger.log_eval(40, 4.0)
    logger.close()

    train_line, eval_line = capsys.readouterr().out.splitlines()
    assert train_line == "step 40/200 | loss 4.1234 | lr 3.0e-04 | 1856 tok/s | ETA 1m46s"
    assert re.fullmatch(r"eval at step 40 \| loss 4\.0000 \| ppl 54\.60", eval_line)
    assert not (tmp_path / "tb").exists()


def test_eta_uses_mean_step_time_of_timed_steps_only(tmp_path, capsys):
    logger = MetricsLogger(make_config(tmp_path, tensorboard=False, train_iters=1100), flops_per_token=1.0,
                           num_devices=1, start_iter=1000)
    logger.log_train(1010, loss=1.0, lr=1e-4, grad_norm=None, loss_scale=None, tokens=10, elapsed_s=10.0)
    logger.log_train(1020, loss=1.0, lr=1e-4, grad_norm=None, loss_scale=None, tokens=10, elapsed_s=30.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("ETA 1m30s")  # 90 steps × 1 s
    assert lines[1].endswith("ETA 2m40s")  # 80 steps × (40 s / 20 steps)


def test_helpers():
    assert perplexity(1000.0) == math.inf
    assert [format_duration(s) for s in (0, 59.4, 133, 3600 + 5 * 60 + 7)] == ["0s", "59s", "2m13s", "1h05m"]
