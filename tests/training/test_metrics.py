"""MetricsLogger: every scalar read back from real TensorBoard event files, plus the console line."""

import functools
import math
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sa_megatron.config import Config, load_config, run_name, tensorboard_logdir, tensorboard_run_dir
from sa_megatron.errors import ConfigError
from sa_megatron.training.metrics import LENGTH_PREFIX, MetricsLogger, format_duration, perplexity

MEMORY_TAG = "x_memory/peak_gpu_allocated_gb" if torch.cuda.is_available() else "x_memory/rss_gb"
STATS = {"row_mass": [0.9, 1.3], "qk_grad_norm": [(0.1, 0.2), (0.3, 0.4)]}


def make_config(tmp_path, *, precision="fp32", peak=0.0, tensorboard=True, train_iters=100) -> Config:
    config = Config()
    config.training.train_iters = train_iters
    config.training.precision = precision
    config.logging.peak_tflops_per_device = peak
    config.logging.tensorboard = tensorboard
    config.logging.tensorboard_dir = str(tmp_path / "tb")
    config.logging.run_name = "tiny"
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

    got = scalars(read_events(tmp_path / "tb" / "tiny"))
    tflops = 6e6 * 20_000 / 4.0 / 2 / 1e12
    expected = {
        "train/loss": 4.5, "train/ppl": math.exp(4.5), "train/lr": 3e-4, "train/grad_norm": 1.25,
        "train/loss_scale": 65536.0, "train/tokens_per_sec": 5000.0, "train/tflops_per_device": tflops,
        "train/mfu": tflops / 50.0,
        "x_attention/row_mass/layer_0": 0.9, "x_attention/row_mass/layer_1": 1.3,
        "x_grad_norm/query/layer_0": 0.1, "x_grad_norm/key/layer_0": 0.2,
        "x_grad_norm/query/layer_1": 0.3, "x_grad_norm/key/layer_1": 0.4,
    }
    assert set(got) == set(expected) | {MEMORY_TAG}
    for tag, value in expected.items():
        assert got[tag][10] == pytest.approx(value, rel=1e-6), tag
    assert got[MEMORY_TAG][10] > 0


def test_mfu_needs_peak_and_loss_scale_needs_fp16(tmp_path):
    logger = MetricsLogger(make_config(tmp_path, train_iters=10), flops_per_token=1e6, num_devices=1)
    logger.log_train(1, loss=2.0, lr=1e-3, grad_norm=0.5, loss_scale=1.0, tokens=100, elapsed_s=1.0)
    logger.close()

    tags = set(scalars(read_events(tmp_path / "tb" / "tiny")))
    assert "train/mfu" not in tags
    assert "train/loss_scale" not in tags
    assert not any(tag.startswith(("x_attention/", "x_grad_norm/")) for tag in tags)


def test_eval_and_config_text(tmp_path):
    logger = MetricsLogger(make_config(tmp_path, train_iters=10), flops_per_token=1e6, num_devices=1)
    logger.log_config({"model": {"hidden_size": 64}, "training": {"train_iters": 10}})
    logger.log_eval(5, 3.0)
    logger.close()

    events = read_events(tmp_path / "tb" / "tiny")
    got = scalars(events)
    assert got["valid/loss"] == {5: pytest.approx(3.0)}
    assert got["valid/ppl"] == {5: pytest.approx(math.exp(3.0), rel=1e-6)}
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


def test_tensorboard_logs_go_under_the_save_dir_by_default_into_a_folder_named_after_the_run(tmp_path, capsys):
    config = Config()
    config.checkpoint.save_dir = str(tmp_path / "ckpt" / "125M")
    assert tensorboard_logdir(config) == str(tmp_path / "ckpt" / "125M" / "tensorboard")
    run_dir = tmp_path / "ckpt" / "125M" / "tensorboard" / "125M"
    assert tensorboard_run_dir(config) == run_dir

    logger = MetricsLogger(config, flops_per_token=1e6, num_devices=1)
    logger.log_train(1, loss=2.0, lr=1e-3, grad_norm=0.5, loss_scale=None, tokens=100, elapsed_s=1.0)
    logger.close()
    assert scalars(read_events(run_dir))["train/loss"] == {1: 2.0}
    assert [p.name for p in (tmp_path / "ckpt" / "125M" / "tensorboard").iterdir()] == ["125M"]
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line == (f"TensorBoard: run 125M logs to {run_dir}; view it with "
                          f"tensorboard --logdir {tmp_path / 'ckpt' / '125M' / 'tensorboard'}")


def test_tensorboard_settings():
    config = Config()
    assert tensorboard_logdir(config) is None and run_name(config) == "run"  # no save_dir, no logdir: no logs
    config.checkpoint.save_dir = "ckpt/125M/"
    assert (tensorboard_logdir(config), run_name(config)) == (str(Path("ckpt/125M/tensorboard")), "125M")
    config.logging.tensorboard_dir, config.logging.run_name = "/tb", "sa-rope"
    assert tensorboard_run_dir(config) == Path("/tb/sa-rope")
    config.logging.tensorboard = False
    assert tensorboard_logdir(config) is None and tensorboard_run_dir(config) is None
    for bad in ("a/b", "..", ""):
        with pytest.raises(ConfigError, match=f"logging.run_name '{re.escape(bad)}' must be one folder name"):
            load_config([], [f"logging.run_name='{bad}'"])


def test_eta_uses_mean_step_time_of_timed_steps_only(tmp_path, capsys):
    logger = MetricsLogger(make_config(tmp_path, tensorboard=False, train_iters=1100), flops_per_token=1.0,
                           num_devices=1, start_iter=1000)
    logger.log_train(1010, loss=1.0, lr=1e-4, grad_norm=None, loss_scale=None, tokens=10, elapsed_s=10.0)
    logger.log_train(1020, loss=1.0, lr=1e-4, grad_norm=None, loss_scale=None, tokens=10, elapsed_s=30.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("ETA 1m30s")  # 90 steps × 1 s
    assert lines[1].endswith("ETA 2m40s")  # 80 steps × (40 s / 20 steps)


def tensorboard_compare(a: str, b: str) -> int:
    """TensorBoard 2.21's tag order (the time-series dashboard's `compareTagNames`, minified as `Qy` in
    tensorboard/webfiles.zip's index.js): runs of digits compare as numbers, '/' and digits sort before any other
    character, other characters by code."""
    def is_digit(c):
        return "0" <= c <= "9"

    def number_end(text, i):  # digits, then optionally ".digits", then optionally "e", a sign and digits
        state = "natural"
        for i in range(i, len(text)):
            c = text[i]
            if state in ("natural", "real") and c in "eE":
                state = "sign"
            elif state == "natural" and c == ".":
                state = "real"
            elif state == "sign" and (is_digit(c) or c in "+-"):
                state = "exponent"
            elif not is_digit(c) or state == "sign":
                return i
        return len(text)

    def number(text):
        try:
            return float(text)
        except ValueError:
            return math.nan  # JavaScript's Number() of "1e" is NaN, which compares neither way

    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if is_digit(a[i]) and is_digit(b[j]):
            start_a, start_b = i, j
            i, j = number_end(a, i + 1), number_end(b, j + 1)
            x, y = number(a[start_a:i]), number(b[start_b:j])
            if x != y and not math.isnan(x) and not math.isnan(y):
                return -1 if x < y else 1
            continue
        a_breaks, b_breaks = a[i] == "/" or is_digit(a[i]), b[j] == "/" or is_digit(b[j])
        if a_breaks != b_breaks:
            return -1 if a_breaks else 1
        if not a_breaks and a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def tensorboard_groups(tags) -> list[str]:
    """The tag groups in the order TensorBoard shows them (it opens the first two)."""
    groups = []
    for tag in sorted(tags, key=functools.cmp_to_key(tensorboard_compare)):
        if tag.split("/", 1)[0] not in groups:
            groups.append(tag.split("/", 1)[0])
    return groups


def test_tensorboard_comparator_port():
    ordered = ["a/b", "a/layer_2", "a/layer_10", "a/layer_1e3", "a_b/c", "ab/c", "b", "x1.5", "x2"]
    assert sorted(reversed(ordered), key=functools.cmp_to_key(tensorboard_compare)) == ordered


def test_loss_lr_and_throughput_come_first_in_tensorboard(tmp_path):
    """Every scalar the trainer writes (plus the eval command's): train/ and valid/ are the two groups TensorBoard
    lists first and opens; the per-layer diagnostics and memory come after them."""
    logger = MetricsLogger(make_config(tmp_path, precision="fp16", peak=50.0), flops_per_token=6e6, num_devices=1)
    logger.log_train(10, loss=4.5, lr=3e-4, grad_norm=1.25, loss_scale=2.0, tokens=100, elapsed_s=1.0,
                     attention_stats={"row_mass": [0.9] * 12, "qk_grad_norm": [(0.1, 0.2)] * 12})
    logger.log_skipped_step(11, math.nan, None, 1, 1, 3)
    logger.log_eval(10, 3.0)
    logger.close()
    tags = [*scalars(read_events(tmp_path / "tb" / "tiny")), f"{LENGTH_PREFIX}ppl", f"{LENGTH_PREFIX}ppl_at_128"]

    groups = tensorboard_groups(tags)
    assert groups[:3] == ["train", "valid", "valid_length"], groups
    assert set(groups[3:]) == {"x_attention", "x_grad_norm", "x_memory"}, groups
    train = [tag for tag in tags if tag.startswith("train/")]
    assert {"train/loss", "train/lr", "train/tokens_per_sec", "train/grad_norm"} <= set(train)


def test_helpers():
    assert perplexity(1000.0) == math.inf
    assert [format_duration(s) for s in (0, 59.4, 133, 3600 + 5 * 60 + 7)] == ["0s", "59s", "2m13s", "1h05m"]
