#!/usr/bin/env bash
# One GPU check of the Triton SA kernels, at most 5 minutes of GPU time, one results file (markdown):
#   correctness against float64 eager on the GPU (bf16, fp16 softmax, fp32; every variant and bias at the table's
#   production tiles; d = 64/80/96/128/256; fused-QKV strides; GQA; a B·H = 256, N = 16k, d = 128 Kerple sa case
#   on its last slice), then a TFLOP/s table (B=4, H=16, d=128, N = 4k/8k/16k, causal, fwd and fwd+bwd) of Triton
#   softmax/sa/sa_raw against SDPA flash and cuDNN, with each Triton kernel's config, registers and spills.
#
#   benchmarks/gpu_check.sh [RESULTS_FILE]      (default: gpu_check_results.md in the working directory)
#
# Exit status: 0 all correct, 1 a correctness case failed, 2 no CUDA, 124 the 5-minute limit was hit.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check_results.md}"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: CUDA is not available here; this check needs a GPU" >&2
    exit 2
fi
"$python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))'
exec timeout 300 "$python" -m benchmarks.attention --section check --out "$out"
