"""Attention speed and memory, side by side, printed as tables.

CPU section: chunked vs eager SA, fwd+bwd time and peak RSS growth, each case in its own subprocess so one
case's allocations never hide another's high-water mark.
GPU section (only with CUDA): TFLOP/s and peak memory of Triton {softmax, sa, sa_raw} vs torch SDPA (flash and
cuDNN backends), flash_attn when importable, and eager SA where it fits. FLOPs follow FlashAttention's convention:
forward 4·B·H·N²·D (half if causal), backward 2.5x forward.

    python -m benchmarks.attention --quick          # fast CPU run (from the repository root)
    python -m benchmarks.attention --section gpu    # GPU tables only
"""
import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import torch

from kernels.chunked import chunked_attention
from kernels.eager import eager_attention

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CPU_BACKENDS = {"eager": eager_attention, "chunked": chunked_attention}
# Eager keeps about this many fp32 N x N tensors per head alive at its peak (scores, masks, weights, grads).
EAGER_SCORE_COPIES = 12


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["cpu", "gpu", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="CPU: N = 1k, 2k only; GPU: N = 1k, 4k only")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (overrides the defaults)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4, help="CPU section heads (GPU uses 16 at d=64, 8 at 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per case (median reported)")
    parser.add_argument("--eager-max-gib", type=float, default=6.0, help="skip eager cases estimated above this")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one CPU case in this process
    return parser.parse_args()


def eager_estimate_gib(batch, heads, n):
    return EAGER_SCORE_COPIES * batch * heads * n * n * 4 / 2**30  # fp32 scores for every input dtype


# ---------------------------------------------------------------- CPU


def run_cpu_case(args):
    """Measure one (backend, N) case in this process; print a JSON line."""
    backend, n = args.case.split(":")
    n = int(n)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, n, 64, generator=gen).requires_grad_() for _ in range(3))
    dout = torch.randn(args.batch, args.heads, n, 64, generator=gen)
    options = dict(variant="sa", causal=True)
    if backend == "chunked":
        options["chunk_size"] = args.chunk_size
    attention = CPU_BACKENDS[backend]
    # The first, untimed call sets the memory high-water mark and warms up the allocator and thread pool.
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    attention(q, k, v, **options).backward(dout)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        q.grad = k.grad = v.grad = None
        start = time.perf_counter()
        attention(q, k, v, **options).backward(dout)
        times.append(time.perf_counter() - start)
    print(json.dumps({"ms": 1e3 * statistics.median(times), "peak_mib": (peak_kib - baseline_kib) / 1024}))


def measure_cpu_case(args, backend, n):
    command = [sys.executable, "-m", "benchmarks.attention", "--case", f"{backend}:{n}", "--batch", str(args.batch),
               "--heads", str(args.heads), "--repeats", str(args.repeats), "--chunk-size", str(args.chunk_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_section(args):
    lengths = args.lengths or ([1024, 2048] if args.quick else [1024, 2048, 4096, 8192, 16384])
    torch_threads = torch.get_num_threads()
    print(f"\nCPU: SA attention fwd+bwd, causal, fp32, batch {args.batch}, heads {args.heads}, d 64, "
          f"chunk {args.chunk_size}, {torch_threads} threads, median of {args.repeats}")
    print(f"{'N':>6} | {'eager ms':>9} {'chunked ms':>10} {'ratio':>6} | {'eager MiB':>9} {'chunked MiB':>11} "
          f"{'ratio':>6}")
    for n in lengths:
        chunked = measure_cpu_case(args, "chunked", n)
        eager = None
        if eager_estimate_gib(args.batch, args.heads, n) <= args.eager_max_gib:
            eager = measure_cpu_case(args, "eager", n)
        print(f"{n:>6} | {_cell(eager, 'ms', 9)} {chunked['ms']:>10.1f} {_ratio(chunked, eager, 'ms')} | "
              f"{_cell(eager, 'peak_mib', 9)} {chunked['peak_mib']:>11.1f} {_ratio(chunked, eager, 'peak_mib')}")
    print("ratio = chunked / eager; '-' = eager skipped (estimated over --eager-max-gib)")


def _cell(result, key, width):
    return f"{result[key]:>{width}.1f}" if result else f"{'-':>{width}}"


def _ratio(chunked, eager, key):
    return f"{chunked[key] / eager[key]:>6.2f}" if eager and eager[key] > 0 else f"{'-':>6}"


# ---------------------------------------------------------------- GPU


def attention_flops(batch, heads, n, head_dim, causal, backward):
    forward = 4 * batch * heads * n * n * head_dim * (0.5 if causal else 1.0)
    return forward * (3.5 if backward else 1.0)


def gpu_peers(causal):
    """name -> attention(q, k, v) on bf16 CUDA tensors; peers that cannot run here are left out."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.triton_attention import triton_attention

    def sdpa(backend):
        def attention(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return attention

    peers = {f"triton {variant}": (lambda variant: lambda q, k, v: triton_attention(
        q, k, v, variant=variant, causal=causal))(variant) for variant in ("softmax", "sa", "sa_raw")}
    peers["sdpa flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
    peers["sdpa cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    try:
        from flash_attn import flash_attn_func
        peers["flash_attn"] = lambda q, k, v: flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal).transpose(1, 2)
    except ImportError:
        pass
    peers["eager sa"] = lambda q, k, v: eager_attention(q, k, v, variant="sa", causal=causal)
    return peers


def time_cuda(fn, repeats):
    """Median milliseconds of fn() and the peak memory (GiB) it allocated above what was live before."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    live = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - live) / 2**30


def measure_gpu_peer(attention, q, k, v, dout, backward, repeats):
    def forward_only():
        with torch.no_grad():
            attention(q, k, v)

    def forward_backward():
        torch.autograd.grad(attention(q, k, v), (q, k, v), dout)
    try:
        return time_cuda(forward_backward if backward else forward_only, repeats)
    except Exception as error:  # noqa: BLE001 - unsupported backend, out of memory, Triton out of resources
        torch.cuda.empty_cache()
        return str(error).splitlines()[0][:40]


def gpu_section(args):
    lengths = args.lengths or ([1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384])
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    print(f"\nGPU: {torch.cuda.get_device_name(0)}, bf16, batch {args.batch}, median of {args.repeats}; "
          f"ratio = TFLOP/s / sdpa flash TFLOP/s")
    for head_dim, heads in ((64, 16), (128, 8)):
        for causal in (True, False):
            for backward in (False, True):
                print(f"\nd={head_dim} heads={heads} causal={causal} {'fwd+bwd' if backward else 'fwd'}")
                print(f"{'N':>6} {'peer':<14} {'TFLOP/s':>8} {'ratio':>6} {'peak GiB':>9}")
                for n in lengths:
                    gpu_rows(args, n, heads, head_dim, causal, backward, total_gib)


def gpu_rows(args, n, heads, head_dim, causal, backward, total_gib):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(args.batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16,
                                 generator=gen) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    flops = attention_flops(args.batch, heads, n, head_dim, causal, backward)
    results = {}
    for name, attention in gpu_peers(causal).items():
        if name == "eager sa" and eager_estimate_gib(args.batch, heads, n) > min(args.eager_max_gib, total_gib / 2):
            results[name] = "skipped: would not fit"
            continue
        results[name] = measure_gpu_peer(attention, q, k, v, dout, backward, args.repeats)
    flash = results.get("sdpa flash")
    flash_tflops = flops / flash[0] / 1e9 if isinstance(flash, tuple) else None
    for name, result in results.items():
        if isinstance(result, str):
            print(f"{n:>6} {name:<14} {result}")
            continue
        tflops = flops / result[0] / 1e9
        ratio = f"{tflops / flash_tflops:>6.2f}" if flash_tflops else f"{'-':>6}"
        print(f"{n:>6} {name:<14} {tflops:>8.1f} {ratio} {result[1]:>9.2f}")


def main():
    args = parse_args()
    if args.case:
        run_cpu_case(args)
        return
    if args.section in ("cpu", "all"):
        cpu_section(args)
    if args.section in ("gpu", "all"):
        if torch.cuda.is_available():
            gpu_section(args)
        else:
            print("\nGPU section skipped: CUDA is not available")


if __name__ == "__main__":
    main()
