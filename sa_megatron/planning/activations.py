"""Activation memory: the bytes a forward pass saves for backward, per micro-batch.

The accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
redone for this model's layers instead of GPT-3's: per block and micro-batch of b sequences of s tokens, hidden h,
MLP width f, a heads, tensor-parallel size t and activation element size e bytes, the block saves

    replicated on every TP rank (divided by t with sequence parallelism):
        4·h·e    inputs of the two norms and of the two input projections (QKV, first MLP linear)
        norm statistics (fp32 mean + rstd for layernorm, rstd for rmsnorm), dropout masks (1 byte) when p > 0
        (on CPU, measured by the tests: RMSNorm also keeps its normalized output and dropout an input-dtype mask)
    split over TP ranks (divided by t):
        3·h·e    the fused QKV output (v is a view of it, which keeps the whole buffer alive), or for the eager core
                 the contiguous copies of q, kᵀ, v that its matmuls make
        2·h·e    rotated q and k (rope only, fused and chunked cores: the rotation makes new tensors)
        h·e      input of the attention output projection (a transposed copy of the core's output)
        2·f·e    gelu MLP (its input, and the second linear's input); 4·f·e for SwiGLU (gate, silu(gate), up, product)
        attention core state, by core:
          fused (Triton, GPU): fp32 output (+ fp32 standard-softmax output for `sa`) and per-row statistics.
              The fused kernel never materializes the s×s score matrix, so Korthikanti's 5·a·s/h term is dropped.
          chunked (PyTorch, O(s·chunk)): the same, with int64 arg-min/max.
          dense (PyTorch, CPU): fp32 per-row statistics with int64 arg-min/max for `sa`, and per head
              the fp32 softmax s and (`sa`, `sa_raw`) weights w over the visible scores (causal: the blocks of
              `DENSE_BLOCK_ROWS` query rows against the keys they see).
          eager (materializes s×s, CPU reference and DAPE-V2): `FP32_SCORE_MATRICES[variant]` fp32 s×s matrices per head
              (plus their e-byte cast when e < 4) — the 5·a·s/h term of the paper, in this code's count.

All counts are elements that actually stay alive until backward (tests/test_plan.py checks them against
`torch.autograd.graph.saved_tensors_hooks` on a real forward, storages counted once).
"""
from dataclasses import dataclass
from typing import Literal

from kernels.dense import DENSE_BLOCK_ROWS
from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.mlp import ffn_hidden_size
from sa_megatron.model.position import DapeScoreMLP

AttentionCore = Literal["fused", "chunked", "dense", "eager"]

FP32, INT64, INT32, BOOL = 4, 8, 4, 1
# Per-row statistics kept for backward, bytes per head per token: fused saves lse (+ a, δ in fp32 and int32
# argmin/argmax for `sa`); chunked saves lse (+ x_min, x_max in fp32 and int64 argmin/argmax for `sa`).
ROW_STATISTICS = {
    "fused": {"sa": 3 * FP32 + 2 * INT32, "sa_raw": FP32, "softmax": FP32},
    "chunked": {"sa": 3 * FP32 + 2 * INT64, "sa_raw": FP32, "softmax": FP32},
    "dense": {"sa": 3 * FP32 + 2 * INT64, "sa_raw": 0, "softmax": 0},  # x_min, x_max, δ and the arg-min/max
    # eager `sa`: argmin/argmax gather indices (int64), the two `where` conditions (bool) and δ (fp32).
    "eager": {"sa": 2 * INT64 + 2 * BOOL + FP32, "sa_raw": 0, "softmax": 0},
}
# fp32 s×s matrices the eager path keeps per head besides the weights that multiply v: softmax its probabilities;
# sa_raw x and s; sa the masked scores for max and min (gather keeps its input), s, x − a and (x − a)/δ.
FP32_SCORE_MATRICES = {"softmax": 1, "sa_raw": 2, "sa": 5}


@dataclass(frozen=True)
class ActivationShape:
    """What sets activation sizes besides the model: micro-batch, parallelism, element size, attention core."""
    micro_batch: int
    tensor_parallel: int
    sequence_parallel: bool
    element_bytes: int  # 4 for fp32 training, 2 for bf16 / fp16
    attention_core: AttentionCore
    on_gpu: bool = True  # CUDA keeps bool dropout masks and runs RMSNorm fused; CPU eager torch does neither


def attention_core_on_gpu(config: ModelConfig) -> AttentionCore:
    """The core a GPU run uses: `auto`/`triton` pick the fused kernel; DAPE-V2 always runs eager."""
    if config.position_encoding == "dapev2-kerple":
        return "eager"
    return config.attention_backend if config.attention_backend in ("eager", "chunked", "dense") else "fused"


def block_bytes(config: ModelConfig, shape: ActivationShape) -> int:
    """Bytes one TransformerBlock saves for backward on one rank, for one micro-batch."""
    h, f, a = config.hidden_size, ffn_hidden_size(config), config.num_attention_heads
    e, t, tokens = shape.element_bytes, shape.tensor_parallel, shape.micro_batch * config.seq_length
    replicated = 4 * h * e + 2 * _norm_extra_bytes(config, shape) + 2 * _dropout_mask_bytes(config, shape)
    if shape.attention_core == "eager":
        # matmul copies its non-contiguous (B, H, s, D) q, kᵀ, v views: it saves those copies, not the QKV buffer.
        qkv = 3 * h * e
    else:
        # The fused and chunked cores save q, k, v as given: v (and q, k without rope) are views that keep the whole
        # QKV output alive; rope's rotated q and k are new tensors.
        qkv = 3 * h * e + (2 * h * e if config.position_encoding == "rope" else 0)
    mlp = (4 if config.mlp == "swiglu" else 2) * f * e
    core = a * ROW_STATISTICS[shape.attention_core][config.attention]
    if shape.attention_core not in ("eager", "dense"):
        core += h * FP32 * (2 if config.attention == "sa" else 1)  # fp32 output (+ standard-softmax output)
    split = qkv + core + h * e + mlp
    per_token = (replicated / t if shape.sequence_parallel else replicated) + split / t
    return round(tokens * per_token) + _score_matrix_bytes(config, shape)


def _norm_extra_bytes(config: ModelConfig, shape: ActivationShape) -> int:
    """Per token, what a norm saves beyond its input: fp32 statistics, and on CPU RMSNorm's normalized output (its
    composite implementation keeps it for the weight's gradient)."""
    if config.norm == "layernorm":
        return 2 * FP32  # mean, rstd
    return FP32 + (0 if shape.on_gpu else config.hidden_size * shape.element_bytes)


def _dropout_mask_bytes(config: ModelConfig, shape: ActivationShape) -> int:
    """Per token, one dropout mask: bool on CUDA, the input's dtype on CPU; none when p = 0."""
    if config.hidden_dropout == 0:
        return 0
    return config.hidden_size * (BOOL if shape.on_gpu else shape.element_bytes)


def _score_matrix_bytes(config: ModelConfig, shape: ActivationShape) -> int:
    """The s×s terms of the eager and dense cores (zero for the fused and chunked cores)."""
    s, heads, b = config.seq_length, config.num_attention_heads // shape.tensor_parallel, shape.micro_batch
    if shape.attention_core == "dense":
        matrices = 1 if config.attention == "softmax" else 2  # s, and w
        return b * heads * _dense_visible_scores(s) * matrices * FP32
    if shape.attention_core != "eager":
        return 0
    weights = shape.element_bytes if shape.element_bytes < FP32 else (0 if config.attention == "softmax" else FP32)
    matrices = FP32_SCORE_MATRICES[config.attention] * FP32 + weights  # weights: cast to e bytes, or fp32 (softmax: s)
    total = b * heads * s * s * matrices + s * s * BOOL  # + the causal mask
    if config.position_encoding in ("kerple", "dapev2-kerple"):
        # The Kerple bias -p·log1p(a·d) is built per head for all (i, j): its log1p input and output, and d.
        total += (2 * heads + 1) * s * s * FP32
    if config.position_encoding == "dapev2-kerple":
        # DAPE-V2's score MLP keeps its input (heads wide) and its hidden layer before and after gelu, per (i, j).
        total += b * s * s * (heads + 2 * DapeScoreMLP.WIDTH) * FP32
    return total


def _dense_visible_scores(s: int) -> int:
    """Scores the dense core keeps per head under the causal mask: each block of rows against the keys it sees."""
    return sum(min(DENSE_BLOCK_ROWS, s - start) * min(start + DENSE_BLOCK_ROWS, s)
               for start in range(0, s, DENSE_BLOCK_ROWS))


def block_input_bytes(config: ModelConfig, shape: ActivationShape) -> int:
    """What a checkpointed block keeps: its input only (sequence-split with sequence parallelism)."""
    split = shape.tensor_parallel if shape.sequence_parallel else 1
    return shape.micro_batch * config.seq_length * config.hidden_size * shape.element_bytes // split


def embedding_bytes(config: ModelConfig, shape: ActivationShape) -> int:
    """The embedding stage: int64 local token ids and the out-of-shard mask (+ a dropout mask)."""
    return shape.micro_batch * config.seq_length * (INT64 + BOOL + _dropout_mask_bytes(config, shape))


def output_bytes(config: ModelConfig, shape: ActivationShape, padded_vocab_size: int) -> int:
    """The output stage and loss: final norm input and output, and the fp32 softmax over this rank's vocabulary
    slice with int64 labels and their mask, which the vocabulary-parallel cross-entropy keeps."""
    h, e, t = config.hidden_size, shape.element_bytes, shape.tensor_parallel
    norm = 2 * h * e + _norm_extra_bytes(config, shape)
    loss = padded_vocab_size // t * FP32 + INT64 + BOOL
    return shape.micro_batch * config.seq_length * ((norm / t if shape.sequence_parallel else norm) + loss)


def loss_workspace_bytes(config: ModelConfig, shape: ActivationShape, padded_vocab_size: int) -> int:
    """Transient peak of the loss forward on the last stage, beyond what it saves: the logits, their fp32 copy
    (the same tensor in fp32 training) and the shifted logits, each as large as the vocabulary slice."""
    vocab = padded_vocab_size // shape.tensor_parallel
    per_token = shape.element_bytes + FP32 + (FP32 if shape.element_bytes < FP32 else 0)
    return shape.micro_batch * config.seq_length * vocab * per_token


def stage_activation_bytes(config: ModelConfig, shape: ActivationShape, padded_vocab_size: int, stage: int,
                           pipeline_parallel: int, micro_batches: int, checkpointing: bool) -> int:
    """Activations held by one rank of pipeline stage `stage` at its peak under the 1F1B schedule.

    Stage i runs min(pp − i, m) forwards before its first backward, so it holds that many micro-batches; with
    activation checkpointing each holds only its blocks' inputs, plus one block's full activations while that
    block is recomputed in backward.
    """
    layers = config.num_layers // pipeline_parallel
    per_block = block_input_bytes(config, shape) if checkpointing else block_bytes(config, shape)
    per_micro_batch = layers * per_block
    if stage == 0:
        per_micro_batch += embedding_bytes(config, shape)
    if stage == pipeline_parallel - 1:
        per_micro_batch += output_bytes(config, shape, padded_vocab_size)
    in_flight = min(pipeline_parallel - stage, micro_batches)
    recompute = block_bytes(config, shape) if checkpointing else 0
    return in_flight * per_micro_batch + recompute
