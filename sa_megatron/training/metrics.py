"""The one place that turns training numbers into TensorBoard scalars and console lines (rank 0 only).

Throughput: `flops_per_token` is the model's training cost per token (forward + backward; the PaLM / Megatron
count of `model.accounting.flops_per_token`), so TFLOP/s per device = flops_per_token × tokens / elapsed /
num_devices / 1e12, and MFU divides that by `logging.peak_tflops_per_device` when the user sets it, else by the
datasheet peak of the run's GPU in bf16/fp16 (`peak_flops.py`); on CPU, in fp32 or on an unlisted GPU, no MFU.

Tag names: TensorBoard groups tags by the part before the first '/', lists the groups by name (digits and '/'
before other characters, then character codes) and opens the first two. So everything about the optimizer's progress
is under `train/` (loss, lr, grad norm, throughput) and validation under `valid/` (`eval` adds `valid_length/`):
those come first and open; the per-layer diagnostics and memory groups start with `x_` to sort after them.
"""

import math
import shlex
from typing import Optional

import torch
import yaml

from sa_megatron.config import Config, run_name, tensorboard_logdir, tensorboard_run_dir
from sa_megatron.training.peak_flops import peak_tflops_per_device


def perplexity(loss: float) -> float:
    """exp(loss), saturating to inf instead of raising for huge losses early in training."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def format_duration(seconds: float) -> str:
    """Compact human time: 45s, 2m13s, 3h05m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


ROW_MASS_PREFIX = "x_attention/row_mass/"  # + layer_{i}
QK_GRAD_NORM_PREFIX = "x_grad_norm/"  # + {query,key}/layer_{i}
LENGTH_PREFIX = "valid_length/"  # `sa-megatron eval`: ppl_at_{L}, and ppl over L


def memory_scalars() -> dict:
    """Peak accelerator memory on CUDA; the process's resident memory on CPU."""
    if torch.cuda.is_available():
        return {"x_memory/peak_gpu_allocated_gb": torch.cuda.max_memory_allocated() / 1e9}
    import psutil  # a DeepSpeed dependency, so always installed alongside it

    return {"x_memory/rss_gb": psutil.Process().memory_info().rss / 1e9}


def attention_scalars(attention_stats: dict) -> dict:
    """Per-layer attention row mass and query/key gradient norms (SA-Softmax rows do not sum to 1)."""
    scalars = {}
    for layer, mass in enumerate(attention_stats.get("row_mass", [])):
        scalars[f"{ROW_MASS_PREFIX}layer_{layer}"] = float(mass)
    for layer, (query_norm, key_norm) in enumerate(attention_stats.get("qk_grad_norm", [])):
        scalars[f"{QK_GRAD_NORM_PREFIX}query/layer_{layer}"] = float(query_norm)
        scalars[f"{QK_GRAD_NORM_PREFIX}key/layer_{layer}"] = float(key_norm)
    return scalars


class MetricsLogger:
    """Writes train/valid scalars to TensorBoard (into `tensorboard_run_dir(config)`, a folder named after the run,
    unless logging is off) and prints progress.

    `num_devices` is the world size; `tokens` passed to `log_train` counts tokens over all devices since the
    previous call, and `elapsed_s` is the wall time those steps took. `start_iter` is the step a resumed run
    starts from, so the ETA uses only steps this process actually timed.
    """

    def __init__(self, config: Config, flops_per_token: float, num_devices: int, *, start_iter: int = 0):
        self.flops_per_token = flops_per_token
        self.num_devices = num_devices
        self.total_iters = config.training.train_iters
        self.peak_tflops = peak_tflops_per_device(config.logging.peak_tflops_per_device, config.training.precision)
        self.logs_loss_scale = config.training.precision == "fp16"
        self._last_step = start_iter
        self._timed_steps = 0
        self._timed_seconds = 0.0
        self.writer = None
        run_dir = tensorboard_run_dir(config)
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir))
            print(f"TensorBoard: run {run_name(config)} logs to {run_dir}; view it with "
                  f"{shlex.join(['tensorboard', '--logdir', tensorboard_logdir(config)])}", flush=True)

    def log_config(self, config_dict: dict) -> None:
        """The resolved config as a YAML code block in TensorBoard's Text tab."""
        if self.writer is not None:
            text = yaml.safe_dump(config_dict, sort_keys=False)
            self.writer.add_text("config", f"```yaml\n{text}```", global_step=0)

    def log_train(self, step: int, *, loss: float, lr: float, grad_norm: Optional[float],
                  loss_scale: Optional[float], tokens: int, elapsed_s: float,
                  attention_stats: Optional[dict] = None) -> None:
        tokens_per_sec = tokens / elapsed_s
        tflops = self.flops_per_token * tokens / elapsed_s / self.num_devices / 1e12
        scalars = {
            "train/loss": loss,
            "train/ppl": perplexity(loss),
            "train/lr": lr,
            "train/tokens_per_sec": tokens_per_sec,
            "train/tflops_per_device": tflops,
        }
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        if self.logs_loss_scale and loss_scale is not None:
            scalars["train/loss_scale"] = loss_scale
        if self.peak_tflops is not None:
            scalars["train/mfu"] = tflops / self.peak_tflops
        scalars.update(memory_scalars())
        if attention_stats:
            scalars.update(attention_scalars(attention_stats))
        self._write(scalars, step)

        self._timed_steps += step - self._last_step
        self._timed_seconds += elapsed_s
        self._last_step = step
        eta = (self.total_iters - step) * self._timed_seconds / max(self._timed_steps, 1)
        print(f"step {step}/{self.total_iters} | loss {loss:.4f} | lr {lr:.1e} | "
              f"{tokens_per_sec:.0f} tok/s | ETA {format_duration(eta)}", flush=True)

    def log_skipped_step(self, step: int, loss: float, grad_norm: Optional[float], skipped_total: int,
                         in_a_row: int, limit: int) -> None:
        """A step whose update the NaN/inf policy skipped; `train/skipped_steps` counts them over the run."""
        self._write({"train/skipped_steps": skipped_total}, step)
        print(f"step {step} skipped: loss {loss:.4g}, grad norm {grad_norm if grad_norm is None else f'{grad_norm:.4g}'} "
              f"is not finite ({in_a_row} in a row; the run stops at {limit})", flush=True)

    def log_eval(self, step: int, loss: float) -> None:
        ppl = perplexity(loss)
        self._write({"valid/loss": loss, "valid/ppl": ppl}, step)
        print(f"eval at step {step} | loss {loss:.4f} | ppl {ppl:.2f}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None

    def _write(self, scalars: dict, step: int) -> None:
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step=step)
