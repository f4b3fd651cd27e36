"""`train(config)`: the pretraining loop every rank runs (DeepSpeed engine, eval, checkpoints, stop signals).

Per-step losses are appended by rank 0 to `checkpoint.save_dir/losses.jsonl` (when save_dir is set), one JSON
object per line: {"step", "loss", "lr"}. A resumed run appends; steps redone after a crash appear again and the
last line for a step wins.

A step whose loss or gradient norm is not finite is skipped on every rank (`nonfinite.py`); after
`training.max_bad_steps_in_a_row` of them the run stops with a one-line report, `TrainResult.diverged`, and the CLI
exits with `DIVERGED_EXIT_CODE`.
"""

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from sa_megatron.config import Config, to_dict, with_logging_resolved
from sa_megatron.parallel import rng_tracker, topology
from sa_megatron.training import checkpoint
from sa_megatron.training.batches import build_datasets, micro_batches
from sa_megatron.training.distributed import any_rank, init_distributed, world_size_from_env
from sa_megatron.training.engine import build_engine
from sa_megatron.training.grad_norm import global_grad_norm
from sa_megatron.training.nonfinite import BadStepCounter, NonFiniteState, is_bad_step
from sa_megatron.training.universal import universal_checkpoint_info
from sa_megatron.training.preflight import check_run_config, resolve_vocab
from sa_megatron.training.rng import seed_everything
from sa_megatron.training.signals import StopRequest


@dataclass
class TrainResult:
    iteration: int  # optimizer steps done in total, including those before a resume
    consumed_samples: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) → mean loss of its global batch
    eval_losses: dict[int, float] = field(default_factory=dict)
    grad_norms: dict[int, float] = field(default_factory=dict)  # step → global grad norm, at log steps
    resumed_from: Optional[int] = None  # the checkpoint's iteration, None for a fresh start
    stopped_by_signal: bool = False
    skipped_steps: list[int] = field(default_factory=list)  # steps whose update was skipped (non-finite)
    diverged: Optional[str] = None  # the one-line report when the NaN/inf policy stopped the run

    @property
    def final_loss(self) -> Optional[float]:
        return self.losses[max(self.losses)] if self.losses else None


def train(config: Config) -> TrainResult:
    # Catch stop signals from the very start: Slurm may send one while DeepSpeed is still starting up.
    with StopRequest() as stop:
        return _train(config, stop)


def _train(config: Config, stop: StopRequest) -> TrainResult:
    from sa_megatron.data import load_tokenizer
    from sa_megatron.model import flops_per_token

    check_run_config(config, world_size_from_env())
    tokenizer = load_tokenizer(config.tokenizer.model)
    config, padded_vocab = resolve_vocab(config, tokenizer)
    config = with_logging_resolved(config)  # checkpoints record where the run's TensorBoard logs went
    init_distributed(config.parallel.backend, config.parallel.socket_ifname, config.parallel.init_timeout_s)
    p = config.parallel
    topology.init_topology(p.tensor_parallel, p.pipeline_parallel, p.sequence_parallel)
    dp_size, dp_rank = topology.data_parallel_world_size(), topology.data_parallel_rank()
    train_data, valid_data = build_datasets(config, tokenizer.sha256)

    identity = checkpoint.run_identity(config, padded_vocab, dp_size, tokenizer.sha256)
    save_dir = config.checkpoint.save_dir
    # Checked before the engine exists: a checkpoint of another layout is refused early, or loaded in universal form.
    universal = checkpoint.resumes_through_universal(save_dir, identity) if save_dir else False
    engine, steps = build_engine(config, padded_vocab, dp_size, load_universal=universal)
    # Dropout streams (the model's init seeds itself per layer): Megatron's offset per pipeline stage; the
    # tensor-parallel stream differs per tensor rank on top of it.
    stage_seed = config.training.seed + 100 * topology.pipeline_stage()
    seed_everything(stage_seed)
    rng_tracker.seed_tensor_parallel_stream(stage_seed)
    resumed = checkpoint.resume_latest(engine, save_dir, identity) if save_dir else None
    if save_dir:  # after resume_latest, which refuses a save_dir of another tokenizer
        checkpoint.store_tokenizer(save_dir, tokenizer)
    start = resumed["iteration"] if resumed else 0
    result = TrainResult(iteration=start, consumed_samples=start * config.training.global_batch_size,
                         resumed_from=start if resumed else None)
    if resumed and dist.get_rank() == 0:
        print(f"resumed from {save_dir} at step {start}", flush=True)
        if start >= config.training.train_iters:
            print(f"nothing left to train: training.train_iters is {config.training.train_iters}; raise it to "
                  "train further, or use a new checkpoint.save_dir to start over", flush=True)

    metrics = None
    if dist.get_rank() == 0:
        from sa_megatron.training.metrics import MetricsLogger

        metrics = MetricsLogger(config, flops_per_token(config.model, padded_vocab), dist.get_world_size(),
                                start_iter=start)
        metrics.log_config(to_dict(config))
    run = _Run(config, engine, steps, dp_rank, dp_size, metrics, identity)
    try:
        run.loop(train_data, valid_data, result, stop)
    finally:
        if metrics is not None:
            metrics.close()
    return result


class _Run:
    """The state one `train` call threads through its steps."""

    def __init__(self, config: Config, engine, steps, dp_rank: int, dp_size: int, metrics, identity: dict):
        self.config, self.engine, self.steps, self.metrics, self.identity = config, engine, steps, metrics, identity
        self.universal_info = universal_checkpoint_info(config.model, identity["model_shape"]["padded_vocab_size"])
        self.dp_rank, self.dp_size = dp_rank, dp_size
        save_dir = config.checkpoint.save_dir
        self.loss_log = Path(save_dir) / "losses.jsonl" if save_dir and dist.get_rank() == 0 else None
        self.interval_losses, self.interval_start = [], time.perf_counter()
        self.stage0_grad_norm = None
        self.bad_steps = BadStepCounter(config.training.max_bad_steps_in_a_row)

    def loop(self, train_data, valid_data, result: TrainResult, stop: StopRequest) -> None:
        t, ckpt = self.config.training, self.config.checkpoint
        saved_at = result.iteration
        for step in range(result.iteration + 1, t.train_iters + 1):
            log_now = step % self.config.logging.log_interval == 0
            batches = micro_batches(train_data, step - 1, self.config, self.dp_rank, self.dp_size)
            loss, lr, attention_stats = self.train_step(batches, log_now)
            result.iteration, result.consumed_samples = step, step * t.global_batch_size
            result.losses[step] = loss
            self.record_loss(step, loss, lr)
            if self.check_finite(step, loss, result):
                return
            if log_now:
                result.grad_norms[step] = self.grad_norm()
                self.log_interval(step, lr, result.grad_norms[step], attention_stats)
            paused_at = time.perf_counter()  # evaluation and saving do not count toward throughput
            if t.eval_interval and step % t.eval_interval == 0:
                result.eval_losses[step] = self.evaluate(valid_data, step)
            stop_now = any_rank(stop.requested)
            if ckpt.save_dir and (stop_now or (ckpt.save_interval and step % ckpt.save_interval == 0)):
                if not self.save(step, loss, result):
                    return
                saved_at = step
            self.interval_start += time.perf_counter() - paused_at
            if stop_now:
                result.stopped_by_signal = True
                if self.metrics is not None:
                    saved = "the checkpoint resumes from there" if ckpt.save_dir else "no checkpoint.save_dir: not saved"
                    print(f"stopped by signal after step {step}; {saved}", flush=True)
                return
        if result.losses and t.eval_interval and result.iteration % t.eval_interval:
            result.eval_losses[result.iteration] = self.evaluate(valid_data, result.iteration)
        if ckpt.save_dir and saved_at != result.iteration:
            self.save(result.iteration, result.losses[result.iteration], result)

    def train_step(self, batches, log_now: bool) -> tuple[float, float, Optional[dict]]:
        """One optimizer step over this rank's micro-batches: (global-batch mean loss, lr used, attention stats)."""
        want_stats = log_now and self.config.logging.attention_stats
        stats = {"row_mass": self.steps.row_mass(batches[0])} if want_stats else None
        lr = self.engine.get_lr()[0]
        loss = self.steps.train(batches, (lambda: self.record_gradient_stats(stats)) if log_now else None)
        return loss, lr, stats

    def record_gradient_stats(self, stats: Optional[dict]) -> None:
        from deepspeed.utils import safe_get_full_grad

        if stats is not None:
            unscale = 1.0 / (self.loss_scale() or 1.0)  # before engine.step(), fp16 gradients carry the loss scale
            stats["qk_grad_norm"] = [(q * unscale, k * unscale)
                                     for q, k in self.steps.qk_grad_norms(safe_get_full_grad)]
        if self.config.parallel.zero_stage == 0 and self.steps.gate is None:
            # DeepSpeed reports the global norm only from its ZeRO/mixed-precision optimizers; at stage 0 the
            # gradients are whole and already averaged over data-parallel ranks.
            self.stage0_grad_norm = global_grad_norm(self.engine.module)

    @torch.no_grad()
    def evaluate(self, valid_data, step: int) -> float:
        """Mean loss over eval_iters global batches; evaluation k reads the k-th block of validation batches."""
        t = self.config.training
        first = (-(-step // t.eval_interval) - 1) * t.eval_iters
        loss = statistics.fmean(
            self.steps.eval_loss(micro_batches(valid_data, index, self.config, self.dp_rank, self.dp_size))
            for index in range(first, first + t.eval_iters)
        )
        if self.metrics is not None:
            self.metrics.log_eval(step, loss)
        return loss

    def log_interval(self, step: int, lr: float, grad_norm: Optional[float], attention_stats: Optional[dict]) -> None:
        """Report the steps since the previous log line (rank 0 holds the logger; the others only reset)."""
        now = time.perf_counter()
        if self.metrics is not None:
            losses, t = self.interval_losses, self.config.training
            self.metrics.log_train(
                step, loss=statistics.fmean(losses), lr=lr, grad_norm=grad_norm,
                loss_scale=self.loss_scale(), tokens=len(losses) * t.global_batch_size * self.config.model.seq_length,
                elapsed_s=now - self.interval_start, attention_stats=attention_stats)
        self.interval_losses, self.interval_start = [], now

    def grad_norm(self) -> Optional[float]:
        """Global gradient norm before clipping, of the last step (the same on every rank)."""
        norm = self.engine.get_global_grad_norm()  # a float or a 0-d tensor, depending on the ZeRO stage
        if norm is None:
            return self.steps.gate.grad_norm if self.steps.gate is not None else self.stage0_grad_norm
        return float(norm)

    def check_finite(self, step: int, loss: float, result: TrainResult) -> bool:
        """Record a skipped step; True when it is one bad step too many and the run has stopped."""
        bad = is_bad_step(loss, self.engine.was_step_applied(), self.config.training.precision)
        if bad:
            result.skipped_steps.append(step)
            if self.metrics is not None:
                self.metrics.log_skipped_step(step, loss, self.grad_norm(), len(result.skipped_steps),
                                              self.bad_steps.in_a_row + 1, self.bad_steps.limit)
        if not self.bad_steps.record(bad):
            return False
        self.stop_diverged(result, f"{self.bad_steps.limit} steps in a row with a non-finite loss or gradient "
                                   f"norm (training.max_bad_steps_in_a_row): step {step}, loss {_number(loss)}, "
                                   f"grad norm {_number(self.grad_norm())}")
        return True

    def stop_diverged(self, result: TrainResult, why: str) -> None:
        save_dir = self.config.checkpoint.save_dir
        good = checkpoint.newest_complete_checkpoint(save_dir) if save_dir else None
        result.diverged = f"training diverged: {why}; last good checkpoint: {good or 'none'}"
        if self.metrics is not None:
            print(f"{result.diverged}", file=sys.stderr, flush=True)

    def loss_scale(self) -> Optional[float]:
        if self.config.training.precision != "fp16":
            return None
        # DeepSpeed's own accessor: the scale lives in a different place in each of its fp16 optimizers.
        return self.engine._get_optimizer_loss_scale()

    def record_loss(self, step: int, loss: float, lr: float) -> None:
        self.interval_losses.append(loss)
        if self.loss_log is not None:
            with open(self.loss_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")

    def save(self, step: int, loss: float, result: TrainResult) -> bool:
        """Save a checkpoint, unless step `step` was skipped as non-finite: its weights are those of the last good
        step, and the newest checkpoint must always be one worth resuming from. False when the state is not finite,
        nothing was written and the run has stopped."""
        ckpt = self.config.checkpoint
        if self.bad_steps.in_a_row:
            if self.metrics is not None:
                print(f"not saving step {step}: it was skipped (non-finite); the newest checkpoint stays "
                      f"{checkpoint.newest_complete_checkpoint(ckpt.save_dir) or 'none'}", flush=True)
            return True
        try:
            path = checkpoint.save_checkpoint(self.engine, ckpt.save_dir, step,
                                              step * self.config.training.global_batch_size, self.identity,
                                              ckpt.keep_last, self.universal_info, last_loss=loss)
        except NonFiniteState as err:
            self.stop_diverged(result, str(err))
            return False
        if self.metrics is not None:
            print(f"saved checkpoint {path}", flush=True)
        return True


def _number(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{value:.4g}"
