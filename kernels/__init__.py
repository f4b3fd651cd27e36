"""Attention cores: fused Triton SA-Softmax, chunked PyTorch, eager reference; one entry, ``sa_attention``."""
from kernels.api import sa_attention

__all__ = ["sa_attention"]
