"""The run configuration: one dataclass per section, one docstring (`doc=`) per field.

YAML files are merged into these by `sa_megatron.config.load_config`; cross-field rules live in
`sa_megatron.config.validate`. Field defaults describe a small GPT that trains on a laptop.
"""

from dataclasses import dataclass, field, fields
from typing import Literal, Optional


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field: low..high, each end included unless marked open. Every int and float
    field states one (`validate` checks them all, and `config fields` prints them); the upper ends are generous
    sanity bounds, there to catch typos like 1e30 before they reach an allocator or a loop."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"


def _number(x: float) -> str:
    """Bounds as people write them: 3, 0.5, 1e+12, 2**32."""
    if float(x).is_integer() and abs(x) >= 2**16 and (int(x) & (int(x) - 1)) == 0:
        return f"2**{int(x).bit_length() - 1}"
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e7 else f"{x:g}"


def doc(default, text: str, valid: Optional[Range] = None):
    """A dataclass field with a default, a one-line description shown by `config fields`, and for numbers the valid
    range (null, where a field allows it, is always valid)."""
    metadata = {"doc": text, "valid": valid}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


SIZE = Range(1, 2**24)  # widths, lengths, vocabularies, batch sizes
COUNT = Range(1, 10**12)  # steps and intervals
EVERY = Range(0, 10**12)  # intervals where 0 means "off"
RANKS = Range(1, 2**16)


@dataclass
class ModelConfig:
    num_layers: int = doc(2, "Transformer blocks.", valid=Range(1, 10**4))
    hidden_size: int = doc(128, "Width of the residual stream.", valid=SIZE)
    num_attention_heads: int = doc(4, "Attention heads; must divide hidden_size.", valid=Range(1, 2**16))
    ffn_hidden_size: Optional[int] = doc(None, "MLP inner width; null = 4*hidden (gelu) or 8/3*hidden rounded to 64 (swiglu).", valid=SIZE)
    seq_length: int = doc(128, "Training context length in tokens.", valid=SIZE)
    max_position_embeddings: Optional[int] = doc(None, "Rows of the learned position table; null = seq_length.", valid=SIZE)
    vocab_size: Optional[int] = doc(None, "Tokenizer vocabulary; null = read from tokenizer.model.", valid=SIZE)
    make_vocab_size_divisible_by: int = doc(128, "Pad the embedding rows to a multiple of this times tensor_parallel (Megatron convention).", valid=Range(1, 2**16))
    norm: Literal["layernorm", "rmsnorm"] = doc("layernorm", "Normalization layer.")
    norm_eps: float = doc(1e-5, "Epsilon of the normalization layers.", valid=Range(0, 1, low_open=True))
    mlp: Literal["gelu", "swiglu"] = doc("gelu", "MLP activation.")
    bias: bool = doc(True, "Use biases in linear layers.")
    tie_embeddings: bool = doc(True, "Share the input embedding with the output head.")
    position_encoding: Literal["learned", "rope", "alibi", "kerple", "none", "dapev2-kerple"] = doc(
        "rope", "Position encoding; alibi/kerple are attention biases, dapev2-kerple runs on the eager attention path only.")
    rope_base: float = doc(10000.0, "RoPE frequency base.", valid=Range(1, 1e12, low_open=True))
    attention: Literal["softmax", "sa", "sa_raw"] = doc("sa", "Attention weighting: softmax, SA-Softmax (normalized), or raw x*softmax(x).")
    attention_eps: float = doc(1e-6, "Epsilon in the SA-Softmax normalizer (max - min + eps).", valid=Range(0, 1, low_open=True))
    attention_backend: Literal["auto", "triton", "dense", "chunked", "eager"] = doc("auto", "Attention core: auto = torch SDPA for softmax without Kerple, else triton on GPU, on CPU dense up to 512×512 scores, else chunked; eager is the autograd reference.")
    init_method: Literal["small_init", "normal"] = doc(
        "small_init", "Init of input-side weights (embeddings, QKV, MLP in): GPT-NeoX small_init N(0, sqrt(2/(5h))) or N(0, init_std).")
    output_init_method: Literal["wang_init", "scaled_normal", "normal"] = doc(
        "wang_init", "Init of residual-output projections (attention out, MLP out): GPT-NeoX wang_init N(0, 2/(L*sqrt(h))), Megatron's N(0, init_std/sqrt(2L)), or N(0, init_std).")
    init_std: float = doc(0.02, "Std of the 'normal' and 'scaled_normal' init methods.", valid=Range(0, 10, low_open=True))
    hidden_dropout: float = doc(0.0, "Dropout on the residual branches and embeddings.", valid=Range(0, 1, high_open=True))


@dataclass
class ParallelConfig:
    tensor_parallel: int = doc(1, "Tensor-parallel ranks (Megatron column/row split).", valid=RANKS)
    pipeline_parallel: int = doc(1, "Pipeline stages (DeepSpeed PipelineModule, 1F1B schedule); ZeRO stage 0 or 1.", valid=RANKS)
    sequence_parallel: bool = doc(False, "Megatron's sequence parallelism: norms, dropout and residuals hold 1/tensor_parallel of the sequence.")
    zero_stage: int = doc(0, "DeepSpeed ZeRO stage 0-3; pipeline_parallel > 1 takes stages 0-1, tensor_parallel > 1 stages 0-2.", valid=Range(0, 3))
    backend: Literal["auto", "gloo", "nccl"] = doc("auto", "torch.distributed backend; auto = nccl on GPU, gloo on CPU.")
    socket_ifname: Optional[str] = doc(
        None, "Network interface(s) gloo and NCCL use between nodes, e.g. 'eth0' or 'ib0,ib1' (sets GLOO_SOCKET_IFNAME "
              "and NCCL_SOCKET_IFNAME); null = those variables from the environment, else the libraries' own choice.")
    init_timeout_s: float = doc(
        180.0, "Seconds the rendezvous may take (master reachable, every rank joined) before each rank fails with a "
               "one-line message naming MASTER_ADDR, MASTER_PORT and the missing ranks.", valid=Range(0, 86400, low_open=True))


@dataclass
class DataConfig:
    paths: list[str] = doc([], "Dataset prefixes (PREFIX.bin + PREFIX.idx written by `sa-megatron data preprocess`).")
    weights: Optional[list[float]] = doc(None, "Blend weight per path; null = proportional to size.")
    split: str = doc("969,30,1", "Train,valid,test proportions of each dataset's documents.")
    cache_dir: Optional[str] = doc(None, "Where sample indices are cached; null = next to each dataset.")


@dataclass
class TokenizerConfig:
    model: Optional[str] = doc(None, "Path to a sentencepiece .model file.")
    vocab_size: int = doc(8000, "Vocabulary size when training a tokenizer.", valid=SIZE)
    model_type: Literal["bpe", "unigram"] = doc("bpe", "Sentencepiece algorithm when training a tokenizer.")


@dataclass
class OptimizerConfig:
    lr: float = doc(6e-4, "Peak learning rate (AdamW).", valid=Range(0, 1e4, low_open=True))
    min_lr: float = doc(6e-5, "Learning rate at the end of decay.", valid=Range(0, 1e4))
    weight_decay: float = doc(0.1, "AdamW weight decay; norms, biases and position-bias parameters are exempt.", valid=Range(0, 100))
    beta1: float = doc(0.9, "AdamW beta1.", valid=Range(0, 1, high_open=True))
    beta2: float = doc(0.95, "AdamW beta2.", valid=Range(0, 1, high_open=True))
    adam_eps: float = doc(1e-8, "AdamW epsilon.", valid=Range(0, 1, low_open=True))
    clip_grad: float = doc(1.0, "Global gradient-norm clip; 0 disables.", valid=Range(0, 1e9))


@dataclass
class ScheduleConfig:
    warmup_iters: int = doc(10, "Linear warmup steps.", valid=EVERY)
    decay_iters: Optional[int] = doc(None, "Steps over which lr decays to min_lr; null = training.train_iters.", valid=COUNT)
    decay_style: Literal["cosine", "linear", "constant"] = doc("cosine", "Shape of the decay after warmup.")


@dataclass
class TrainingConfig:
    train_iters: int = doc(100, "Optimizer steps to train.", valid=COUNT)
    micro_batch_size: int = doc(4, "Sequences per rank per forward pass.", valid=SIZE)
    global_batch_size: int = doc(8, "Sequences per optimizer step over all data-parallel ranks.", valid=SIZE)
    seed: int = doc(1234, "Seed for init, dropout and data order.", valid=Range(0, 2**32, high_open=True))
    precision: Literal["fp32", "bf16", "fp16"] = doc("fp32", "Training precision; fp16 uses a dynamic loss scale.")
    initial_loss_scale_power: int = doc(16, "fp16 only: the dynamic loss scale starts at 2**this.", valid=Range(0, 40))
    activation_checkpointing: bool = doc(False, "Recompute each block's activations in backward.")
    eval_interval: int = doc(50, "Steps between validation runs; 0 disables.", valid=EVERY)
    eval_iters: int = doc(10, "Batches per validation run.", valid=Range(0, 10**6))
    max_bad_steps_in_a_row: int = doc(
        3, "A step with a non-finite loss or gradient norm is skipped (no update); this many in a row stop the run "
           "with exit code 3 and a report naming the last good checkpoint.", valid=Range(1, 10**6))


@dataclass
class CheckpointConfig:
    save_dir: Optional[str] = doc(None, "Checkpoint directory; the run auto-resumes from its newest complete checkpoint.")
    save_interval: int = doc(50, "Steps between checkpoints; 0 = only at the end and on SIGTERM/SIGUSR1.", valid=EVERY)
    keep_last: int = doc(3, "Checkpoints kept; older ones are deleted after a new one is complete.", valid=Range(1, 10**6))


@dataclass
class LoggingConfig:
    log_interval: int = doc(10, "Steps between console lines and TensorBoard scalars.", valid=COUNT)
    tensorboard: bool = doc(True, "Write TensorBoard logs (to tensorboard_dir/run_name); false disables them.")
    tensorboard_dir: Optional[str] = doc(
        None, "TensorBoard logdir (what `tensorboard --logdir` opens; runs are its subfolders); "
              "null = checkpoint.save_dir/tensorboard, and no logs when save_dir is null too.")
    run_name: Optional[str] = doc(
        None, "The run's name in TensorBoard, a folder name: events go to tensorboard_dir/run_name; "
              "null = the name of checkpoint.save_dir's folder (ckpt/125M -> 125M), else 'run'.")
    peak_tflops_per_device: float = doc(0.0, "Peak dense TFLOP/s of one device for MFU (e.g. 989 for H100 bf16); 0 = the datasheet peak of a known GPU (A100, H100, H200, L40S, B200) in bf16/fp16, else no MFU.", valid=Range(0, 1e6))
    attention_stats: bool = doc(True, "Log per-layer q/k gradient norms and mean attention row mass.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


SECTIONS = {f.name: f.type for f in fields(Config)}
