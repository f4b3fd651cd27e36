"""Cross-entropy over vocabulary-parallel logits without gathering the vocabulary (Megatron's algorithm).

Each rank holds logits for its slice of the vocabulary. Three all-reduces over the tensor-parallel group give the
global row max (for stability), the logit of the target token (owned by exactly one rank) and the softmax
denominator; the gradient softmax − onehot is then computed locally.
"""
import torch
import torch.distributed as dist

from sa_megatron.parallel.comm import all_reduce_sum, group_size
from sa_megatron.parallel.topology import tensor_parallel_group, tensor_parallel_rank


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, group, vocab_start):
        # At least fp32 (fp64 stays fp64): the exp-sum over a large vocabulary is not safe in 16 bits.
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        row_max = logits.amax(dim=-1)
        if group_size(group) > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max.unsqueeze(-1)

        local_vocab = logits.shape[-1]
        local_labels = labels - vocab_start
        outside = (local_labels < 0) | (local_labels >= local_vocab)
        local_labels = local_labels.masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local_labels.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        all_reduce_sum(target_logit, group)

        exp = shifted.exp()
        sum_exp = all_reduce_sum(exp.sum(dim=-1), group)
        loss = sum_exp.log() - target_logit

        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local_labels, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_labels, outside = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local_labels.unsqueeze(-1), -(~outside).unsqueeze(-1).to(grad.dtype))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss in fp32 (fp64 for fp64 logits), shape of `labels`.

    `logits`: (..., vocab // tp), this rank's vocabulary slice; `labels`: global token ids. The gradient to `logits`
    has the logits' dtype."""
    local_vocab = logits.shape[-1]
    return _VocabParallelCrossEntropy.apply(logits, labels, tensor_parallel_group(),
                                            tensor_parallel_rank() * local_vocab)
