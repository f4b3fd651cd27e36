"""Candidate (tensor, pipeline, data) layouts for a cluster, each with its memory, bubble and traffic, ranked.

A layout is valid when tp · pp · dp = nodes · gpus_per_node, tp ≤ gpus_per_node (a tensor group stays inside a
node, where the links are fast), tp divides the heads, pp divides the layers, the global batch splits into whole
micro-batches per data-parallel rank, and DeepSpeed allows its ZeRO stage there (2-3 only without pipeline
stages). Ranks are ordered as DeepSpeed's topology orders them: tensor fastest, then data, then pipeline.
"""
from dataclasses import dataclass
from typing import Optional

from sa_megatron.config import Config, padded_vocab_size
from sa_megatron.model import flops_per_token
from sa_megatron.planning.activations import (
    ActivationShape, attention_core_on_gpu, loss_workspace_bytes, stage_activation_bytes,
)
from sa_megatron.planning.communication import (
    StepTraffic, bubble_fraction, data_parallel_bytes, pipeline_bytes, tensor_parallel_bytes,
)
from sa_megatron.planning.model_states import gradient_reduce_bytes, model_state_bytes
from sa_megatron.planning.parameters import ModelParameters, count_model_parameters

GIB = 2**30
# Share of device memory left to the CUDA context, NCCL, DeepSpeed's gradient buckets and allocator fragmentation,
# none of which the model accounts for.
RESERVED_FRACTION = 0.10


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    intra_node_gbps: float  # GB/s one GPU reaches in collectives inside its node (NVLink)
    inter_node_gbps: float  # GB/s one GPU reaches across nodes (its share of the network)
    peak_tflops: float = 0.0  # dense peak per GPU for the step-time estimate; 0 = no estimate

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gib * (1 - RESERVED_FRACTION) * GIB


@dataclass(frozen=True)
class Layout:
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    micro_batches: int  # per pipeline per optimizer step (gradient accumulation steps)
    busiest_stage: int  # the pipeline stage with the most memory; the numbers below are its
    parameters_per_device: int
    memory: dict  # bytes: weights, gradients, optimizer, activations, workspace, total
    fits: bool
    bubble_fraction: float
    traffic: StepTraffic  # bytes per device per step
    communication_seconds: float
    step_seconds: Optional[float]  # None without a peak TFLOP/s

    def rank_key(self):
        """Fits first, then the smallest pipeline bubble, then the least estimated communication time."""
        return (not self.fits, round(self.bubble_fraction, 6), self.communication_seconds, self.memory["total"])


@dataclass(frozen=True)
class Plan:
    parameters: int  # the whole model, padded for the config's own tensor_parallel
    layouts: list  # ranked
    skipped: list  # one line per kind of layout left out, with why


def plan_layouts(config: Config, vocab_size: int, cluster: Cluster, sequence_parallel: bool) -> Plan:
    m = config.model
    counts: dict[int, ModelParameters] = {}

    def parameters(tp: int) -> ModelParameters:
        if tp not in counts:
            counts[tp] = count_model_parameters(m, padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, tp))
        return counts[tp]

    layouts, skipped = [], []
    for tp, pp, dp in _factorizations(cluster.world_size):
        reason = _invalid_reason(config, cluster, tp, pp, dp)
        if reason:
            skipped.append(f"tp={tp} pp={pp} dp={dp}: {reason}")
            continue
        layouts.append(_evaluate(config, vocab_size, parameters(tp), cluster, tp, pp, dp, sequence_parallel))
    layouts.sort(key=Layout.rank_key)
    return Plan(parameters(config.parallel.tensor_parallel).total, layouts, skipped)


def _factorizations(world: int):
    for tp in range(1, world + 1):
        if world % tp == 0:
            for pp in range(1, world // tp + 1):
                if world // tp % pp == 0:
                    yield tp, pp, world // (tp * pp)


def _invalid_reason(config: Config, cluster: Cluster, tp: int, pp: int, dp: int) -> Optional[str]:
    m, t = config.model, config.training
    if tp > cluster.gpus_per_node:
        return f"tensor group larger than a node ({cluster.gpus_per_node} GPUs)"
    if m.num_attention_heads % tp:
        return f"{m.num_attention_heads} heads do not split over {tp} tensor ranks"
    if m.position_encoding == "dapev2-kerple" and tp > 1:
        return "dapev2-kerple mixes all heads and needs tensor_parallel=1"
    if m.num_layers % pp:
        return f"{m.num_layers} layers do not split over {pp} stages"
    if pp > 1 and config.parallel.zero_stage >= 2:
        return f"ZeRO stage {config.parallel.zero_stage} cannot run with pipeline stages"
    if t.global_batch_size % (t.micro_batch_size * dp):
        return (f"global batch {t.global_batch_size} is not a multiple of micro batch {t.micro_batch_size} × "
                f"data parallel {dp}")
    return None


def _evaluate(config: Config, vocab_size: int, parameters: ModelParameters, cluster: Cluster,
              tp: int, pp: int, dp: int, sequence_parallel: bool) -> Layout:
    m, t, zero = config.model, config.training, config.parallel.zero_stage
    padded = padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, tp)
    element_bytes = 4 if t.precision == "fp32" else 2
    shape = ActivationShape(t.micro_batch_size, tp, sequence_parallel, element_bytes, attention_core_on_gpu(m))
    micro_batches = t.global_batch_size // (t.micro_batch_size * dp)
    checkpointing = t.activation_checkpointing

    def stage_memory(stage: int) -> dict:
        states = model_state_bytes(parameters.stage_parameters(stage, tp, pp), t.precision, zero, dp,
                                   parameters.largest_module(tp))
        memory = dict(weights=states.weights, gradients=states.gradients, optimizer=states.optimizer,
                      activations=stage_activation_bytes(m, shape, padded, stage, pp, micro_batches, checkpointing),
                      workspace=loss_workspace_bytes(m, shape, padded) if stage == pp - 1 else 0)
        memory["total"] = sum(memory.values())
        return memory

    memories = [stage_memory(stage) for stage in range(pp)]
    busiest = max(range(pp), key=lambda stage: memories[stage]["total"])
    stage_params = parameters.stage_parameters(busiest, tp, pp)
    hidden_bytes = t.micro_batch_size * m.seq_length * m.hidden_size * element_bytes
    traffic = StepTraffic(
        tensor_parallel=0.0 if tp == 1 else tensor_parallel_bytes(
            tp, m.num_layers // pp, micro_batches, hidden_bytes, checkpointing,
            embedding_or_head=(busiest == 0) + (busiest == pp - 1)),
        data_parallel=data_parallel_bytes(dp, stage_params * gradient_reduce_bytes(t.precision),
                                          stage_params * element_bytes, zero),
        pipeline=pipeline_bytes(pp, micro_batches, hidden_bytes, tp),
    )
    # Groups that span more ranks than a node holds cross the network.
    dp_link = cluster.inter_node_gbps if tp * dp > cluster.gpus_per_node else cluster.intra_node_gbps
    pp_link = cluster.inter_node_gbps if cluster.nodes > 1 and tp * dp >= cluster.gpus_per_node \
        else cluster.intra_node_gbps
    communication = (traffic.tensor_parallel / cluster.intra_node_gbps + traffic.data_parallel / dp_link
                     + traffic.pipeline / pp_link) / 1e9
    bubble = bubble_fraction(pp, micro_batches)
    step = None
    if cluster.peak_tflops > 0:
        # Ideal compute at the full peak (×4/3 with recomputation), stretched by the bubble, plus unoverlapped traffic.
        flops = flops_per_token(m, padded) * t.global_batch_size * m.seq_length * (4 / 3 if checkpointing else 1)
        step = flops / (cluster.world_size * cluster.peak_tflops * 1e12) / (1 - bubble) + communication
    memory = memories[busiest]
    return Layout(tp, pp, dp, micro_batches, busiest, stage_params, memory, memory["total"] <= cluster.usable_bytes,
                  bubble, traffic, communication, step)
