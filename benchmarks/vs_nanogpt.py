"""CPU training throughput side by side with karpathy/nanoGPT, interleaved in one run.

nanoGPT's `model.py` and `train.py` run unmodified from a work tree you fetch and pin yourself (this project does not
vendor it; measured against commit 3adf61e):

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT && git -C /tmp/nanoGPT checkout 3adf61e
    python -m benchmarks.vs_nanogpt --nanogpt-src /tmp/nanoGPT

Both train the same shape (6 layers, width 384, 6 heads, 256 tokens, batch 8, fp32, learned positions, no bias, tied
head, dropout 0, no torch.compile, 2 threads), as `../shared/bench/cpu_vs_nanogpt.sh` does: nanoGPT on its
character-level tinyshakespeare (65 symbols, written here in its own train.bin/val.bin/meta.pkl format), ours through
`sa-megatron train` on the demo's 2048-token BPE of the same text, for softmax and sa. Rounds alternate the runs so
load on the machine hits all alike; each run reports a step time every 10 steps after the first 10, and the table shows
medians. Model FLOP/s count both models with one formula (6·matmul weights + 12·L·h·s per token; nanoGPT's head has 65
rows, ours 2048), so the vocabulary difference is accounted for.
"""
import argparse
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sa_megatron.training.distributed import TORCHRUN_VARS

REPO = Path(__file__).resolve().parent.parent
NANOGPT_FILES = ("model.py", "train.py", "configurator.py", "config/train_shakespeare_char.py")
LAYERS, WIDTH, HEADS, SEQ, BATCH, BPE_VOCAB = 6, 384, 6, 256, 8, 2048


def flops_per_token(vocab: int) -> int:
    """6 · (L · 12h² + V·h) + 12 · L · h · s: the GPT matmul weights (gelu MLP, no bias) plus attention."""
    return 6 * (LAYERS * 12 * WIDTH * WIDTH + vocab * WIDTH) + 12 * LAYERS * WIDTH * SEQ


def prepare_nanogpt(src: Path, work: Path, corpus: Path) -> Path:
    """A copy of nanoGPT's files with its shakespeare_char dataset built from `corpus` (its prepare.py downloads)."""
    missing = [name for name in NANOGPT_FILES if not (src / name).is_file()]
    if missing:
        sys.exit(f"--nanogpt-src {src}: not a nanoGPT work tree (missing {', '.join(missing)})")
    for name in NANOGPT_FILES:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, work / name)
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    split = int(0.9 * len(ids))
    ids[:split].tofile(data / "train.bin")
    ids[split:].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return work


def run_nanogpt(work: Path, iters: int) -> list[float]:
    args = [sys.executable, "-u", "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            "--dtype=float32", "--eval_iters=1", "--eval_interval=100000", "--log_interval=10", f"--max_iters={iters}",
            "--always_save_checkpoint=False", "--wandb_log=False", f"--n_layer={LAYERS}", f"--n_head={HEADS}",
            f"--n_embd={WIDTH}", f"--block_size={SEQ}", f"--batch_size={BATCH}", "--dropout=0.0", "--bias=False",
            "--gradient_accumulation_steps=1", f"--out_dir={work / 'out'}"]
    out = _run(args, work)
    times = [(int(i), float(ms)) for i, ms in re.findall(r"^iter (\d+): .*time ([0-9.]+)ms", out, re.M)]
    return [BATCH * SEQ / (ms / 1000) for i, ms in times if i > 0]


def run_ours(tokenizer: Path, prefix: str, attention: str, iters: int) -> list[float]:
    settings = {
        "data.paths": f"[{prefix}]", "tokenizer.model": str(tokenizer),
        "model.num_layers": LAYERS, "model.hidden_size": WIDTH, "model.num_attention_heads": HEADS,
        "model.seq_length": SEQ, "model.position_encoding": "learned", "model.bias": "false",
        "model.attention": attention, "training.micro_batch_size": BATCH, "training.global_batch_size": BATCH,
        "training.train_iters": iters, "training.eval_interval": 0, "logging.log_interval": 10,
        "logging.attention_stats": "false", "logging.tensorboard": "false", "checkpoint.save_dir": "null",
    }
    args = [sys.executable, "-m", "launcher.cli", "train", str(REPO / "configs" / "runs" / "demo.yaml")]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    out = _run(args, REPO)
    return [float(tps) for step, tps in re.findall(r"^step (\d+)/\d+ \| .*\| (\d+) tok/s", out, re.M) if int(step) > 10]


def _run(args: list[str], cwd: Path) -> str:
    # Two threads each, CPU only, and none of a launcher's rank variables.
    env = {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="2", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} ... failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt-src", required=True, type=Path, help="a karpathy/nanoGPT work tree (3adf61e)")
    parser.add_argument("--iters", type=int, default=40, help="steps per run (the first 10 are not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three runs")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmark-data",
                        help="where the BPE dataset is prepared (reused)")
    args = parser.parse_args()

    from sa_megatron.data import default_corpus_dir, prepare_corpus

    tokenizer, prefix, _ = prepare_corpus(args.work_dir, vocab_size=BPE_VOCAB)
    corpus = default_corpus_dir() / "tinyshakespeare" / "input.txt"
    runs = {"nanoGPT": [], "ours softmax": [], "ours sa": []}
    with tempfile.TemporaryDirectory() as tmp:
        nano = prepare_nanogpt(args.nanogpt_src.resolve(), Path(tmp), corpus)
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            runs["nanoGPT"] += run_nanogpt(nano, args.iters)
            runs["ours softmax"] += run_ours(tokenizer, prefix, "softmax", args.iters)
            runs["ours sa"] += run_ours(tokenizer, prefix, "sa", args.iters)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    vocabs = {"nanoGPT": 65, "ours softmax": BPE_VOCAB, "ours sa": BPE_VOCAB}
    print(f"\n{'run':<14}{'tok/s':>9}{'x nanoGPT':>11}{'GFLOP/s':>10}{'x nanoGPT':>11}  samples")
    nano_flops = medians["nanoGPT"] * flops_per_token(65)
    for name, median in medians.items():
        flops = median * flops_per_token(vocabs[name])
        print(f"{name:<14}{median:>9.0f}{median / medians['nanoGPT']:>11.2f}{flops / 1e9:>10.1f}"
              f"{flops / nano_flops:>11.2f}  {len(runs[name])}")
    print(f"sa / softmax = {medians['ours sa'] / medians['ours softmax']:.2f}")


if __name__ == "__main__":
    main()
