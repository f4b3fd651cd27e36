"""Per-step communication volume of one device and the pipeline bubble, for one layout.

Volumes are bytes sent by one rank per optimizer step. A ring all-reduce of a buffer over n ranks sends 2(n−1)/n
of it per rank; an all-gather or a reduce-scatter sends (n−1)/n.
"""
from dataclasses import dataclass


def ring_all_reduce_fraction(ranks: int) -> float:
    return 2 * (ranks - 1) / ranks


def bubble_fraction(pipeline_parallel: int, micro_batches: int) -> float:
    """Idle share of a 1F1B pipeline step: (p − 1) / (m + p − 1), m = micro-batches per pipeline per step."""
    return (pipeline_parallel - 1) / (micro_batches + pipeline_parallel - 1)


@dataclass(frozen=True)
class StepTraffic:
    tensor_parallel: float  # activations all-reduced inside a tensor-parallel group (stays inside a node)
    data_parallel: float  # gradient reduction, plus ZeRO's parameter all-gathers
    pipeline: float  # activations and their gradients sent to the neighbouring stages


def tensor_parallel_bytes(tensor_parallel: int, layers: int, micro_batches: int, activation_bytes: int,
                          recompute: bool, embedding_or_head: int) -> float:
    """Each block all-reduces a (b, s, h) activation twice in forward (attention and MLP outputs) and twice in
    backward (their inputs' gradients), twice more when checkpointing recomputes the forward; the embedding and the
    head add one each (`embedding_or_head` of them on this stage). Sequence parallelism replaces each all-reduce
    with an all-gather plus a reduce-scatter: the same volume."""
    per_layer = 6 if recompute else 4
    collectives = micro_batches * (layers * per_layer + embedding_or_head)
    return collectives * ring_all_reduce_fraction(tensor_parallel) * activation_bytes


def data_parallel_bytes(data_parallel: int, gradient_bytes: int, weight_bytes: int, zero_stage: int) -> float:
    """Gradients are all-reduced (or reduce-scattered, stage 2-3: half of it) once per step; from stage 1 each
    rank's updated parameter shard is all-gathered back, and stage 3 gathers the weights in forward and backward."""
    if data_parallel == 1:
        return 0.0
    share = (data_parallel - 1) / data_parallel
    gradients = gradient_bytes * (share if zero_stage >= 2 else 2 * share)
    gathers = {0: 0, 1: 1, 2: 1, 3: 2}[zero_stage]
    return gradients + gathers * share * weight_bytes


def pipeline_bytes(pipeline_parallel: int, micro_batches: int, activation_bytes: int, tensor_parallel: int) -> float:
    """What the busiest stage sends: an inner stage sends each micro-batch's output forward and its input's gradient
    backward; with two stages each sends one of them. A tensor rank sends 1/tp of each activation: its sequence
    shard, or without sequence parallelism the slice DeepSpeed partitions it into (rebuilt by an all-gather over the
    tensor group on arrival). Measured by benchmarks/parallel.py."""
    if pipeline_parallel == 1:
        return 0.0
    sends = 2 if pipeline_parallel > 2 else 1
    return sends * micro_batches * activation_bytes / tensor_parallel
