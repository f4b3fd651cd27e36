"""The language-model loss on (vocabulary-parallel) logits."""
import torch
import torch.nn.functional as F

from sa_megatron.parallel import tensor_parallel_world_size, vocab_parallel_cross_entropy


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32. logits (B, N, V/tp), labels (B, N) global ids (already shifted by the
    data pipeline). reduction "mean" → scalar over all tokens, "none" → (B, N) per-token loss (for loss masks).

    With the whole vocabulary on this rank, torch's fused cross-entropy does the same math ~1.5× faster on CPU than
    the vocabulary-parallel one (which needs its three all-reduces only across tensor ranks)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if tensor_parallel_world_size() > 1:
        losses = vocab_parallel_cross_entropy(logits, labels)
        return losses.mean() if reduction == "mean" else losses
    # At least fp32 (fp64 stays fp64): the exp-sum over a large vocabulary is not safe in 16 bits.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    losses = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction=reduction)
    return losses if reduction == "mean" else losses.view(labels.shape)
