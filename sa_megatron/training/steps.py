"""How one optimizer step, one evaluation and the attention statistics run on the engine of a layout.

`DataParallelSteps` drives DeepSpeed's plain engine (pipeline_parallel = 1: data and tensor parallelism, ZeRO 0-3):
a forward and backward per micro-batch. `PipelineSteps` drives its PipelineEngine (pipeline_parallel > 1, ZeRO 0-1):
`train_batch` runs the 1F1B schedule over the micro-batches with the loss on the last stage, which DeepSpeed
averages over data-parallel ranks and broadcasts to every stage. Both give every rank per-layer statistics of the
whole model: each stage measures its own blocks (combined over its tensor ranks), and the pipeline group sums the
stages' disjoint parts.
"""
import math
from typing import Callable, Optional

import torch

from sa_megatron.model import language_model_loss
from sa_megatron.model.gpt import measuring_row_mass, qk_grad_squares
from sa_megatron.parallel import topology
from sa_megatron.parallel.comm import all_reduce_sum
from sa_megatron.training.distributed import all_reduce_mean
from sa_megatron.training.nonfinite import StepGate

# Runs once per step after the gradients are reduced and before the optimizer consumes them.
GradientHook = Optional[Callable[[], None]]


def _whole_model(per_layer: dict, num_layers: int, width: int) -> torch.Tensor:
    """(num_layers, width) float64 from this stage's {layer_number: values}, summed over the pipeline's stages."""
    table = torch.zeros(num_layers, width, dtype=torch.float64)
    for layer, values in per_layer.items():
        table[layer] = torch.as_tensor(values, dtype=torch.float64).reshape(width)
    return all_reduce_sum(table, topology.pipeline_group())


class _Steps:
    def __init__(self, engine, num_layers: int, gate: Optional[StepGate] = None):
        """`gate`: vetoes a step with a non-finite loss or gradient norm where DeepSpeed does not (`nonfinite.py`)."""
        self.engine, self.num_layers, self.gate = engine, num_layers, gate

    def qk_grad_norms(self, get_grad: Callable) -> list[tuple[float, float]]:
        squares = _whole_model(qk_grad_squares(self.engine.module, get_grad), self.num_layers, 2)
        return [tuple(row) for row in squares.sqrt().tolist()]

    def _row_mass_table(self, masses: dict) -> list[float]:
        return _whole_model(masses, self.num_layers, 1)[:, 0].tolist()


class DataParallelSteps(_Steps):
    def train(self, batches: list[torch.Tensor], on_gradients: GradientHook = None) -> float:
        """One optimizer step over this rank's micro-batches; the global-batch mean loss."""
        engine, losses = self.engine, []
        for tokens in batches:
            loss = self.loss(tokens.to(engine.device))
            engine.backward(loss)
            losses.append(loss.detach())  # no .item() here: on a GPU it would wait for every micro-batch
            if engine.is_gradient_accumulation_boundary():
                # Every micro-batch has the same token count, so the mean of means is the global-batch token mean.
                # Reduced before the step, so that the gate sees the loss every rank sees.
                mean_loss = all_reduce_mean(torch.stack(losses).double().mean().item())
                if on_gradients is not None:
                    on_gradients()
                if self.gate is not None:
                    self.gate.decide(math.isfinite(mean_loss))
            engine.step()
        return mean_loss

    @torch.no_grad()
    def eval_loss(self, batches: list[torch.Tensor]) -> float:
        self.engine.eval()
        losses = torch.stack([self.loss(tokens.to(self.engine.device)) for tokens in batches])
        self.engine.train()
        return all_reduce_mean(losses.double().mean().item())

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        return language_model_loss(self.engine(tokens[:, :-1]), tokens[:, 1:])

    @torch.no_grad()
    def row_mass(self, tokens: torch.Tensor) -> list[float]:
        model, inputs = self.engine.module, tokens[:, :-1].to(self.engine.device)
        with measuring_row_mass(model) as masses:
            if self.engine.zero_optimization_stage() == 3:
                import deepspeed

                # ZeRO-3 keeps only a shard of each parameter outside the engine's forward: gather them.
                with deepspeed.zero.GatheredParameters(list(model.parameters())):
                    model(inputs)
            else:
                model(inputs)
        return self._row_mass_table(masses)


class PipelineSteps(_Steps):
    def __init__(self, engine, num_layers: int, gate: Optional[StepGate] = None):
        super().__init__(engine, num_layers, gate)
        from deepspeed.runtime.pipe import schedule

        self._on_gradients: GradientHook = None
        # DeepSpeed runs the schedule's instructions through this table: ours calls the gradient hook and the gate
        # first, when the gradients are reduced over data-parallel ranks and not yet consumed.
        optimizer_step = type(engine)._INSTRUCTION_MAP[schedule.OptimizerStep]

        def hooked_optimizer_step(pipeline_engine, **kwargs):
            if self._on_gradients is not None:
                self._on_gradients()
            if self.gate is not None:
                # Only the last stage holds the loss (the sum of its micro-batches' losses) at this point.
                loss = pipeline_engine.total_loss if pipeline_engine.is_last_stage() else None
                self.gate.decide(loss is None or bool(torch.isfinite(loss).all()))
            optimizer_step(pipeline_engine, **kwargs)

        engine._INSTRUCTION_MAP = {**type(engine)._INSTRUCTION_MAP, schedule.OptimizerStep: hooked_optimizer_step}

    @staticmethod
    def _pairs(batches: list[torch.Tensor]):
        # The first stage reads the inputs, the last the labels.
        return iter([(tokens[:, :-1], tokens[:, 1:]) for tokens in batches])

    def train(self, batches: list[torch.Tensor], on_gradients: GradientHook = None) -> float:
        self._on_gradients = on_gradients
        try:
            return self.engine.train_batch(self._pairs(batches)).item()
        finally:
            self._on_gradients = None

    def eval_loss(self, batches: list[torch.Tensor]) -> float:
        loss = self.engine.eval_batch(self._pairs(batches), num_micro_batches=len(batches)).item()
        self.engine.train()
        return loss

    def row_mass(self, tokens: torch.Tensor) -> list[float]:
        with measuring_row_mass(self.engine.module) as masses:
            self.engine.eval_batch(self._pairs([tokens]), num_micro_batches=1)
        self.engine.train()
        return self._row_mass_table(masses)
