"""Dense 16-bit tensor-core peaks of common accelerators, for MFU when `logging.peak_tflops_per_device` is unset.

Numbers are NVIDIA's datasheet dense (not 2:4-sparse) bf16/fp16 TFLOP/s per GPU. fp32 runs get no automatic MFU:
their peak depends on TF32 being allowed (`torch.backends.cuda.matmul.allow_tf32`), so they need the override.
"""
from typing import Optional

import torch

# Checked in order: the first (substring, TFLOP/s) whose substring is in the device name wins, so the more specific
# names (PCIe, NVL) come before the family name.
DENSE_16BIT_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),  # also GH200
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def table_peak_tflops(device_name: str) -> Optional[float]:
    """The dense bf16/fp16 peak of the named device, or None when the table does not know it."""
    for pattern, tflops in DENSE_16BIT_TFLOPS:
        if pattern.lower() in device_name.lower():
            return tflops
    return None


def peak_tflops_per_device(override: float, precision: str) -> Optional[float]:
    """The peak MFU divides by: the override when set (> 0), else the table's for this run's GPU in bf16/fp16,
    else None (CPU, fp32, or a GPU the table does not list: no MFU)."""
    if override > 0:
        return override
    if precision == "fp32" or not torch.cuda.is_available():
        return None
    return table_peak_tflops(torch.cuda.get_device_name())
