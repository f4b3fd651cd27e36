"""SA-Megatron: GPT pretraining with Self-Adjust Softmax attention."""

__version__ = "0.1.0"
