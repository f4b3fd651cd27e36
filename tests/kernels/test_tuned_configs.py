"""Block-size configs: the shipped table covers every case with an allowed config; no length re-tunes."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed (it has wheels for Linux only)")

from kernels import triton_common, tuned_configs  # noqa: E402
from kernels.triton_attention import _dot_precision  # noqa: E402


def test_table_has_one_allowed_config_per_case():
    table = tuned_configs.load_table()
    for kernel in tuned_configs.KERNELS:
        for variant in tuned_configs.VARIANTS:
            for block_d in tuned_configs.HEAD_DIM_BUCKETS:
                for dtype in (torch.float16, torch.bfloat16, torch.float32):
                    for causal in (False, True):
                        key = tuned_configs.table_key(kernel, variant, block_d, dtype, causal)
                        assert key in table, key
                        assert table[key] in tuned_configs.candidates(kernel, variant, dtype, block_d), key


def test_candidates_depend_on_dtype_and_prune_sa_spills():
    for kernel in tuned_configs.KERNELS:
        for block_d in tuned_configs.HEAD_DIM_BUCKETS:
            assert all(max(c.block_m, c.block_n) <= 64
                       for c in tuned_configs.candidates(kernel, "sa", torch.float32, block_d))
    sa_forward = tuned_configs.candidates("forward", "sa", torch.bfloat16, 128)
    assert (128, 64, 4) not in {c[:3] for c in sa_forward} and (128, 128, 8) not in {c[:3] for c in sa_forward}
    assert (64, 64, 4) in {c[:3] for c in sa_forward}
    assert (128, 128, 8) in {c[:3] for c in tuned_configs.candidates("forward", "softmax", torch.bfloat16, 128)}
    assert (32, 128, 4) not in {c[:3] for c in tuned_configs.candidates("dkdv", "sa_raw", torch.float16, 64)}
    assert (128, 32, 4) not in {c[:3] for c in tuned_configs.candidates("dq", "sa", torch.float16, 64)}


def test_generation_lengths_fall_in_few_buckets():
    # generate grows the window one token at a time: the autotune key must not change with every token.
    buckets = {tuned_configs.length_bucket(n) for n in range(1, 20_000)}
    assert len(buckets) == 16 and max(buckets) == 32_768
    assert tuned_configs.length_bucket(10**7) == tuned_configs.LENGTH_BUCKET_CAP


def test_interpreter_never_autotunes(monkeypatch):
    monkeypatch.setenv(tuned_configs.AUTOTUNE_ENV, "1")
    if triton_common.INTERPRET:
        assert not tuned_configs.autotune_requested()
        assert tuned_configs.select_config("forward", "sa", torch.float32, 16, True) == tuned_configs.INTERPRET_CONFIG


def test_kerple_log_is_fast_on_gpu_and_plain_under_the_interpreter():
    assert triton_common.libdevice is not None and hasattr(triton_common.libdevice, "fast_log2f")
    assert bool(triton_common.FAST_LOG) == (not triton_common.INTERPRET)


def test_fp32_dot_precision_follows_torch(monkeypatch):
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert _dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert _dot_precision(torch.float32) == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert _dot_precision(torch.bfloat16) == "tf32"
