"""Attention speed and memory, side by side, printed as tables.

CPU section: SA fwd+bwd time and peak RSS growth of the eager, dense and chunked backends beside torch SDPA's
softmax (the time SA competes with), each case in its own subprocess so one case's allocations never hide another's
high-water mark.
GPU section (only with CUDA): TFLOP/s and peak memory of Triton {softmax, sa, sa_raw} vs torch SDPA (flash and
cuDNN backends), flash_attn when importable, and eager SA where it fits. FLOPs follow FlashAttention's convention:
forward 4·B·H·N²·D (half if causal), backward 2.5x forward.

    python -m benchmarks.attention --quick          # fast CPU run (from the repository root)
    python -m benchmarks.attention --section gpu    # GPU tables only
    python -m benchmarks.attention --section check --out FILE   # benchmarks/gpu_check.sh: correctness + table

GPU rows use batch x heads >= 64 (enough programs to fill an H100/H200) and time the forward as training runs it
(inputs require grad: the statistics for the backward are saved).
"""
import argparse
from functools import partial
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import torch

from kernels.api import sa_attention
from kernels.chunked import chunked_attention
from kernels.eager import eager_attention

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Column name: (backend, variant). SA's three backends beside the softmax that SDPA runs.
CPU_CASES = {"sdpa softmax": ("sdpa", "softmax"), "eager sa": ("eager", "sa"), "dense sa": ("dense", "sa"),
             "chunked sa": ("chunked", "sa")}
# fp32 N x N tensors per head each backend keeps alive at its peak, to skip cases that would not fit: eager about
# 12 (scores, masks, weights, grads), dense 1 (w and s over the causal half); chunked and sdpa none.
SCORE_COPIES = {"eager": 12, "dense": 1}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["cpu", "gpu", "all", "check"], default="all")
    parser.add_argument("--out", help="--section check: results file (markdown)")
    parser.add_argument("--quick", action="store_true", help="CPU: N = 1k, 2k only; GPU: N = 1k, 4k only")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (overrides the defaults)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4, help="CPU section heads (GPU uses 16 at d=64, 8 at 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per case (median reported)")
    parser.add_argument("--eager-max-gib", type=float, default=6.0, help="skip eager cases estimated above this")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one CPU case in this process
    return parser.parse_args()


def score_matrices_gib(batch, heads, n, backend="eager"):
    return SCORE_COPIES.get(backend, 0) * batch * heads * n * n * 4 / 2**30  # fp32 scores for every input dtype


# ---------------------------------------------------------------- CPU


def run_cpu_case(args):
    """Measure one (backend, N) case in this process; print a JSON line."""
    name, n = args.case.split(":")
    backend, variant = CPU_CASES[name]
    n = int(n)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, n, 64, generator=gen).requires_grad_() for _ in range(3))
    dout = torch.randn(args.batch, args.heads, n, 64, generator=gen)
    options = dict(variant=variant, causal=True)
    if backend == "chunked":
        options["chunk_size"] = args.chunk_size
        attention = chunked_attention
    else:
        attention = partial(sa_attention, backend=backend)
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


def measure_cpu_case(args, name, n):
    command = [sys.executable, "-m", "benchmarks.attention", "--case", f"{name}:{n}", "--batch", str(args.batch),
               "--heads", str(args.heads), "--repeats", str(args.repeats), "--chunk-size", str(args.chunk_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_section(args):
    lengths = args.lengths or ([256, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192, 16384])
    torch_threads = torch.get_num_threads()
    print(f"\nCPU: attention fwd+bwd, causal, fp32, batch {args.batch}, heads {args.heads}, d 64, "
          f"chunk {args.chunk_size}, {torch_threads} threads, median of {args.repeats}; x = time / sdpa softmax's")
    print(f"{'N':>6} | " + " ".join(f"{name + ' ms':>15}" for name in CPU_CASES) + " | "
          + " ".join(f"{name + ' MiB':>16}" for name in CPU_CASES if name != "sdpa softmax"))
    for n in lengths:
        results = {name: measure_cpu_case(args, name, n) for name, (backend, _) in CPU_CASES.items()
                   if score_matrices_gib(args.batch, args.heads, n, backend) <= args.eager_max_gib}
        peer = results["sdpa softmax"]["ms"]
        times = [f"{results[name]['ms']:>8.1f} {results[name]['ms'] / peer:>5.2f}x" if name in results
                 else f"{'-':>15}" for name in CPU_CASES]
        memory = [f"{results[name]['peak_mib']:>16.1f}" if name in results else f"{'-':>16}"
                  for name in CPU_CASES if name != "sdpa softmax"]
        print(f"{n:>6} | {' '.join(times)} | {' '.join(memory)}")
    print("'-' = skipped (its score matrices estimated over --eager-max-gib)")


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
    def forward_only():  # as in training: inputs require grad, so the forward saves what the backward needs
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
    batch = max(args.batch, -(-64 // heads))  # batch x heads >= 64: one program per (block, head) must fill the GPU
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16,
                                 generator=gen) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    flops = attention_flops(batch, heads, n, head_dim, causal, backward)
    results = {}
    for name, attention in gpu_peers(causal).items():
        if name == "eager sa" and score_matrices_gib(batch, heads, n) > min(args.eager_max_gib, total_gib / 2):
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


# ---------------------------------------------------------------- GPU check (benchmarks/gpu_check.sh)


def check_cases():
    """(label, options for make_inputs, attention options, layout): one compile each, ~10 s; see gpu_check.sh."""
    cases = []
    for variant in ("softmax", "sa", "sa_raw"):
        for bias in (None, "alibi", "kerple"):
            cases.append((f"bf16 {variant} {bias} d128", dict(n_q=1000, head_dim=128, bias=bias,
                                                              dtype=torch.bfloat16), dict(variant=variant), "bhnd"))
    for head_dim, variant in ((64, "sa"), (80, "sa_raw"), (96, "sa"), (256, "softmax"), (256, "sa")):
        cases.append((f"bf16 {variant} kerple d{head_dim}", dict(n_q=777, head_dim=head_dim, bias="kerple",
                                                                 dtype=torch.bfloat16), dict(variant=variant), "bhnd"))
    for variant in ("softmax", "sa", "sa_raw"):
        cases.append((f"fp32 {variant} alibi d64", dict(n_q=513, head_dim=64, bias="alibi", dtype=torch.float32),
                      dict(variant=variant), "bhnd"))
    cases.append(("fp16 softmax kerple d128", dict(n_q=1000, head_dim=128, bias="kerple", dtype=torch.float16),
                  dict(variant="softmax"), "bhnd"))
    cases.append(("bf16 sa kerple d128 non-causal", dict(n_q=1000, head_dim=128, bias="kerple",
                                                         dtype=torch.bfloat16), dict(variant="sa", causal=False),
                  "bhnd"))
    cases.append(("bf16 sa kerple d128 fused-QKV strides", dict(n_q=1000, head_dim=128, bias="kerple",
                                                                dtype=torch.bfloat16), dict(variant="sa"), "fused"))
    cases.append(("bf16 sa alibi d128 GQA 8:2", dict(n_q=1000, head_dim=128, bias="alibi", heads=8,
                                                     dtype=torch.bfloat16), dict(variant="sa"), "gqa"))
    return cases


def _layout(inputs, layout):
    if layout == "fused":  # (B, N, H, 3, D) storage, as the model's QKV projection writes it, read in place
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        fused = torch.stack([t.transpose(1, 2) for t in (q, k, v)], dim=3).contiguous()
        inputs["q"], inputs["k"], inputs["v"] = (t.transpose(1, 2) for t in fused.unbind(3))
    elif layout == "gqa":
        for name in ("k", "v"):
            inputs[name] = inputs[name][:, :2].contiguous()
    return inputs


def _check_one(inputs, options):
    """max error / allowed error (tolerance rule of tests/kernels/reference.py) over out and grads."""
    from kernels.triton_attention import triton_attention
    from tests.kernels.reference import as_float64, floor_for, outputs_and_grads

    group = inputs["q"].shape[1] // inputs["k"].shape[1]

    def eager(q, k, v, **o):
        return eager_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), **o)
    options = dict(dict(causal=True), **options)
    ref = outputs_and_grads(eager, as_float64(inputs), **options)
    same = outputs_and_grads(eager, inputs, **options)
    got = outputs_and_grads(triton_attention, inputs, **options)
    worst = 0.0
    for name, want in ref.items():
        allowed = 2 * (same[name] - want).abs().max().item() + floor_for(inputs["q"].dtype, want)
        error = (got[name] - want).abs().max().item() if torch.isfinite(got[name]).all() else float("inf")
        worst = max(worst, error / allowed)
    return worst


def _big_kerple_case():
    """B·H = 256, N = 16k, d = 128, Kerple sa: the whole launch, checked on its last (batch, head) slice."""
    from kernels.triton_attention import triton_attention
    from tests.kernels.reference import floor_for

    n, head_dim = 16384, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(16, 16, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for _ in range(4))
    p = torch.rand(16, device="cuda", generator=gen) * 2 + 0.01
    a = torch.rand(16, device="cuda", generator=gen) + 0.01
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_attention(*leaves, variant="sa", causal=True, kerple=(p, a))
    out.backward(dout)
    got = [t[-1:, -1:].double() for t in (out.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad)]
    del out, leaves
    torch.cuda.empty_cache()
    worst = 0.0
    results = {}
    for dtype in (torch.float64, torch.bfloat16):
        sl = [t[-1:, -1:].to(dtype).requires_grad_() for t in (q, k, v)]
        o = eager_attention(*sl, variant="sa", causal=True, kerple=(p[-1:].to(dtype), a[-1:].to(dtype)))
        o.backward(dout[-1:, -1:].to(dtype))
        results[dtype] = [o.detach().double()] + [t.grad.double() for t in sl]
        del o, sl
        torch.cuda.empty_cache()
    for g, want, same in zip(got, results[torch.float64], results[torch.bfloat16]):
        allowed = 2 * (same - want).abs().max().item() + floor_for(torch.bfloat16, want)
        worst = max(worst, (g - want).abs().max().item() / allowed)
    return worst


def _kernel_report():
    from kernels import tuned_configs
    parts = []
    for name, launch in tuned_configs.LAST_LAUNCH.items():
        compiled = launch["compiled"]
        regs, spills = getattr(compiled, "n_regs", "?"), getattr(compiled, "n_spills", "?")
        parts.append(f"{name} {tuple(launch['config'])} regs {regs} spills {spills}")
    return "; ".join(parts)


def check_section(args):
    """Correctness on the GPU against float64 eager, then the TFLOP/s table; one markdown file."""
    from tests.kernels.reference import make_inputs

    start = time.time()
    lines = [f"# GPU check: {torch.cuda.get_device_name(0)}, {time.strftime('%Y-%m-%d %H:%M')}, "
             f"torch {torch.__version__}", "", "## Correctness (error / allowed; <= 1 passes)", "",
             "| case | worst ratio | ok | kernels: config (BLOCK_M, BLOCK_N, warps, stages), registers, spills |",
             "|---|---|---|---|"]
    failures = 0
    for label, input_options, options, layout in check_cases():
        inputs = _layout(make_inputs(device="cuda", **dict(dict(batch=2, heads=4), **input_options)), layout)
        try:
            worst = _check_one(inputs, options)
            report = _kernel_report()
        except Exception as error:  # noqa: BLE001 - one failing case must not hide the others
            worst, report = float("inf"), f"error: {str(error).splitlines()[0][:120]}"
        failures += not worst <= 1.0
        lines.append(f"| {label} | {worst:.3f} | {'yes' if worst <= 1.0 else 'NO'} | {report} |")
        print(lines[-1], flush=True)
    try:
        worst = _big_kerple_case()
    except Exception as error:  # noqa: BLE001
        worst = float("inf")
        print(f"big case failed: {error}")
    failures += not worst <= 1.0
    lines.append(f"| bf16 sa kerple B·H=256 N=16k d128 (last slice) | {worst:.3f} | "
                 f"{'yes' if worst <= 1.0 else 'NO'} | {_kernel_report()} |")
    print(lines[-1], flush=True)
    lines += ["", f"correctness: {failures} failing case(s), {time.time() - start:.0f} s", "",
              "## TFLOP/s, bf16, B=4, H=16, d=128, causal (FlashAttention FLOPs: fwd 4·B·H·N²·D/2, bwd 2.5x fwd)",
              "", "| N | pass | peer | TFLOP/s | / sdpa flash | kernels |", "|---|---|---|---|---|---|"]
    from kernels import tuned_configs
    for n in (4096, 8192, 16384):
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, dout = (torch.randn(4, 16, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
                         for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()
        for backward in (False, True):
            flops = attention_flops(4, 16, n, 128, True, backward)
            peers = {name: fn for name, fn in gpu_peers(True).items() if name != "eager sa"}
            rows, flash = [], None
            for name, attention in peers.items():
                tuned_configs.LAST_LAUNCH.clear()
                result = measure_gpu_peer(attention, q, k, v, dout, backward, 5)
                tflops = flops / result[0] / 1e9 if isinstance(result, tuple) else None
                flash = tflops if name == "sdpa flash" else flash
                rows.append((name, tflops, result, _kernel_report() if name.startswith("triton") else ""))
            for name, tflops, result, report in rows:
                ratio = f"{tflops / flash:.2f}" if tflops and flash else "-"
                value = f"{tflops:.1f}" if tflops else str(result)
                lines.append(f"| {n} | {'fwd+bwd' if backward else 'fwd'} | {name} | {value} | {ratio} | {report} |")
                print(lines[-1], flush=True)
        del q, k, v, dout
        torch.cuda.empty_cache()
    lines += ["", f"total {time.time() - start:.0f} s; targets: sa fwd+bwd time <= 1.25x sdpa flash "
              "(TFLOP/s ratio >= 0.8), sa_raw <= 1.1x (ratio >= 0.91), softmax on par with the Triton tutorial"]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return failures


def main():
    args = parse_args()
    if args.case:
        run_cpu_case(args)
        return
    if args.section == "check":
        if not torch.cuda.is_available():
            sys.exit("benchmarks.attention --section check runs the Triton kernels on a GPU; CUDA is not available")
        if not args.out:
            sys.exit("--section check needs --out FILE")
        sys.exit(1 if check_section(args) else 0)
    if args.section in ("cpu", "all"):
        cpu_section(args)
    if args.section in ("gpu", "all"):
        if torch.cuda.is_available():
            gpu_section(args)
        else:
            print("\nGPU section skipped: CUDA is not available")


if __name__ == "__main__":
    main()
