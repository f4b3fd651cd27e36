"""Regenerate kernels/tuned_configs.json on a GPU: time every candidate config of each Triton attention kernel.

Launches use that table by default (kernels/tuned_configs.py), so tuning happens here, on purpose, once per GPU
type, and the result is committed: every run and every data-parallel rank then uses the same tiles.

    python -m benchmarks.tune_attention                          # bf16 + fp16, d = 64, 128; N = 4096
    python -m benchmarks.tune_attention --dtypes bf16 --head-dims 128 --length 8192
    python -m benchmarks.tune_attention --dry-run                # print the table, do not write it

Each (kernel, variant, head-dim bucket, dtype, causal) is timed at one representative shape (batch·heads enough to
fill the GPU). The forward is timed as in training (statistics saved); dK/dV and dQ by timing the backward with
the other kernel fixed at its table config. Entries not tuned keep their current values.
"""
import argparse
import datetime
import json
import sys

import torch

from kernels import tuned_configs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=sorted(DTYPES))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--variants", nargs="+", default=list(tuned_configs.VARIANTS),
                        choices=tuned_configs.VARIANTS)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--batch-heads", type=int, default=64, help="batch × heads of the timed shape")
    parser.add_argument("--dry-run", action="store_true")
    return parser.parse_args()


def require_cuda():
    if not torch.cuda.is_available():
        sys.exit("benchmarks.tune_attention times Triton kernels and needs a CUDA GPU; none is available here "
                 "(kernels/tuned_configs.json stays as it is)")


def time_ms(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=50)


def tune_case(variant, head_dim, dtype, causal, args):
    """{kernel: (best Config, ms)} for one case."""
    from kernels.triton_attention import _block_d, triton_attention

    block_d = _block_d(head_dim)
    gen = torch.Generator(device="cuda").manual_seed(0)
    n = args.length if dtype != torch.float32 else min(args.length, 2048)
    q, k, v, dout = (torch.randn(1, args.batch_heads, n, head_dim, device="cuda", dtype=dtype, generator=gen)
                     for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()

    def forward():
        return triton_attention(q, k, v, variant=variant, causal=causal)

    def backward():
        out = forward()
        return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    best = {}
    for kernel in tuned_configs.KERNELS:
        key = tuned_configs.table_key(kernel, variant, block_d, dtype, causal)
        timings = []
        for config in tuned_configs.candidates(kernel, variant, dtype, block_d):
            tuned_configs.OVERRIDES[key] = config
            try:
                ms = time_ms(forward) if kernel == "forward" else time_ms(backward())
            except Exception as error:  # noqa: BLE001 - out of shared memory / registers: not a candidate here
                print(f"  {key} {tuple(config)}: skipped ({str(error).splitlines()[0][:60]})")
                continue
            timings.append((ms, config))
            print(f"  {key} {tuple(config)}: {ms:.3f} ms")
        del tuned_configs.OVERRIDES[key]
        if timings:
            ms, config = min(timings)
            best[key] = (config, ms)
    return best


def main():
    args = parse_args()
    require_cuda()
    data = json.loads(tuned_configs.TABLE_PATH.read_text())
    for name in args.dtypes:
        for head_dim in args.head_dims:
            for variant in args.variants:
                for causal in (False, True):
                    for key, (config, ms) in tune_case(variant, head_dim, DTYPES[name], causal, args).items():
                        print(f"{key}: {tuple(config)} {ms:.3f} ms")
                        data["configs"][key] = list(config)
    data["gpu"] = torch.cuda.get_device_name(0)
    data["source"] = (f"benchmarks/tune_attention.py on {data['gpu']}, {datetime.date.today()}, N={args.length}, "
                      f"batch*heads={args.batch_heads}, dtypes {args.dtypes}, head dims {args.head_dims}; "
                      "other entries: default_config")
    if args.dry_run:
        print(json.dumps(data, indent=1, sort_keys=True))
        return
    tuned_configs.TABLE_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {tuned_configs.TABLE_PATH}")


if __name__ == "__main__":
    main()
