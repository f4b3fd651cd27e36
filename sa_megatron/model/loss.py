"""The language-model loss on (vocabulary-parallel) logits."""
import torch

from sa_megatron.parallel import vocab_parallel_cross_entropy


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32. logits (B, N, V/tp), labels (B, N) global ids (already shifted by the
    data pipeline). reduction "mean" → scalar over all tokens, "none" → (B, N) per-token loss (for loss masks)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    losses = vocab_parallel_cross_entropy(logits, labels)
    return losses.mean() if reduction == "mean" else losses
