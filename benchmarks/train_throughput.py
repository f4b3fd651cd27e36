"""Training tokens/s on CPU: our trainer (`sa-megatron train`, DeepSpeed, one process) against a minimal
plain-PyTorch loop on the same model, optimizer settings, batch shapes and step count, for softmax / sa / sa_raw.

Both sides run `warmup` untimed steps, then `steps` timed ones, and report tokens per second of their median step
(robust to other processes competing for the CPU). The plain loop times itself; the trainer's per-step numbers are
the ones it logs (TensorBoard `train/tokens_per_sec`, log_interval 1, attention stats off), read back from
its event files, so process start and DeepSpeed initialization are excluded from both. Data: tinyshakespeare
tokenized with the demo's 2048-token BPE (prepared once under --work-dir).

    python -m benchmarks.train_throughput                   # tiny and ~20M configs, all three attentions
    python -m benchmarks.train_throughput --configs tiny --steps 5
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sa_megatron.config import from_dict, padded_vocab_size
from sa_megatron.training.distributed import TORCHRUN_VARS

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = 2048
MODELS = {
    # configs/models/tiny.yaml: ~1M parameters besides the embedding.
    "tiny": {"num_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "seq_length": 128},
    # 6 × 12·512² ≈ 18.9M block parameters + a 2048 × 512 tied embedding ≈ 20M.
    "20M": {"num_layers": 6, "hidden_size": 512, "num_attention_heads": 8, "seq_length": 256},
}
BATCH = {"tiny": 8, "20M": 4}  # sequences per step: 1024 tokens per step for both


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--attentions", nargs="+", choices=["softmax", "sa", "sa_raw"],
                        default=["softmax", "sa", "sa_raw"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "benchmark-data"),
                        help="where the tokenizer and dataset are prepared (reused across runs)")
    return parser.parse_args()


def run_config(name: str, attention: str, tokenizer: Path, prefix: str, args) -> dict:
    batch = BATCH[name]
    return {
        "model": {**MODELS[name], "attention": attention, "position_encoding": "rope",
                  "make_vocab_size_divisible_by": 64},
        "data": {"paths": [prefix]},
        "tokenizer": {"model": str(tokenizer)},
        "schedule": {"warmup_iters": 1},
        "training": {"train_iters": args.warmup + args.steps, "micro_batch_size": batch, "global_batch_size": batch,
                     "eval_interval": 0},
        "logging": {"log_interval": 1, "attention_stats": False},
    }


def plain_tokens_per_sec(raw: dict, stream: torch.Tensor, warmup: int, steps: int) -> float:
    """The textbook loop: forward, loss, backward, clip, AdamW step (fused, as the trainer's)."""
    from sa_megatron.model import build_model, language_model_loss

    config = from_dict(raw)
    config.model.vocab_size = VOCAB
    m, o, t = config.model, config.optimizer, config.training
    torch.manual_seed(t.seed)
    model = build_model(m, padded_vocab_size(VOCAB, m.make_vocab_size_divisible_by, 1)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.adam_eps,
                                  weight_decay=o.weight_decay, fused=True)  # the trainer's AdamW kernel
    window = m.seq_length + 1
    durations = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        first = step * t.micro_batch_size * window
        tokens = stream[first:first + t.micro_batch_size * window].view(t.micro_batch_size, window)
        loss = language_model_loss(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        durations.append(time.perf_counter() - start)
    return t.micro_batch_size * m.seq_length / statistics.median(durations[warmup:])


def trainer_tokens_per_sec(raw: dict, work: Path, warmup: int) -> float:
    """Run `sa-megatron train` in its own process and read back the throughput it logged for the timed steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = work / "tb"
    raw = {**raw, "logging": {**raw["logging"], "tensorboard_dir": str(tensorboard), "run_name": "trainer"}}
    (work / "run.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same thread count as the plain loop here
    env["CUDA_VISIBLE_DEVICES"] = ""  # on CPU, like the plain loop, even on a GPU host
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "train", str(work / "run.yaml")], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"sa-megatron train failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    events = EventAccumulator(str(tensorboard / "trainer"), size_guidance={"scalars": 0})
    events.Reload()
    # Every step has the same token count, so the median step's rate is the median rate.
    return statistics.median(e.value for e in events.Scalars("train/tokens_per_sec") if e.step > warmup)


def main():
    args = parse_args()
    from sa_megatron.data import prepare_corpus
    from sa_megatron.eval.perplexity import load_token_stream

    tokenizer, train_prefix, _ = prepare_corpus(args.work_dir, vocab_size=VOCAB)
    stream = load_token_stream(train_prefix)
    # Other processes on the machine skew CPU timings: the load average says how much.
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
          f"{args.warmup} warmup + {args.steps} timed steps of 1024 tokens\n")
    header = f"{'config':<7} {'attention':<9} {'plain tok/s':>12} {'ours tok/s':>11} {'ours/plain':>11}"
    rows = []
    for name in args.configs:
        for attention in args.attentions:
            raw = run_config(name, attention, tokenizer, train_prefix, args)
            plain = plain_tokens_per_sec(raw, stream, args.warmup, args.steps)
            with tempfile.TemporaryDirectory() as work:
                ours = trainer_tokens_per_sec(raw, Path(work), args.warmup)
            rows.append(f"{name:<7} {attention:<9} {plain:>12.0f} {ours:>11.0f} {ours / plain:>11.2f}")
            print(rows[-1], flush=True)
    print("\n" + "\n".join([header, "-" * len(header), *rows]))


if __name__ == "__main__":
    main()
