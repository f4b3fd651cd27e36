"""MFU's peak: the override, else the datasheet table for bf16/fp16 on a known GPU, else none."""
import pytest
import torch

from sa_megatron.training.peak_flops import peak_tflops_per_device, table_peak_tflops


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_table_knows_common_accelerators_by_their_cuda_names(name, tflops):
    assert table_peak_tflops(name) == tflops


def test_override_wins_everywhere():
    assert peak_tflops_per_device(123.0, "fp32") == 123.0
    assert peak_tflops_per_device(123.0, "bf16") == 123.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU case")
def test_no_mfu_on_cpu_without_an_override():
    assert peak_tflops_per_device(0.0, "bf16") is None
    assert peak_tflops_per_device(0.0, "fp32") is None
