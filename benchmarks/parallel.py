"""Parallel layouts on CPU (gloo, real processes, one thread per rank): tokens/s of the real trainer
(`sa_megatron.training.loop.train`) and bytes communicated per step per rank, measured, beside `sa-megatron plan`'s
prediction for the same model and layout.

Each world size is one launch of real ranks (tests/training/launch.py), every rank running this file's worker,
which trains each layout of that size in turn. The worker wraps torch.distributed's collectives and point-to-point
calls (benchmarks/_comm_counter.py) and the trainer's `_Run.train_step`, so for every step it records the step's
wall time and, per process group (tensor / data / pipeline), the bytes this rank sends under the planner's own
accounting (ring all-reduce 2(n−1)/n of the tensor, all-gather / reduce-scatter (n−1) shards, a send its tensor),
plus the bytes its write() system calls wrote (/proc/self/io wchar: gloo's TCP transport on the wire). The first
`--warmup` steps and the last step (which logs, and so adds a gradient-norm reduction) are not measured.

Columns: tok/s of the median measured step (global batch tokens / step time of the slowest rank) and "best", of the
fastest one (less disturbed by other processes on a shared machine); ×1p, relative to the one-process run's same
number (ranks beyond the core count share cores: on 2 cores the 4-rank layouts measure oversubscription too). Per
traffic kind (tensor group, data group, pipeline p2p): MB (1e6 bytes) sent per step, measured on the busiest rank of
the stage the planner reports (its busiest by memory), the planner's MB, and measured/predicted. "other": measured
traffic on no tensor or data group and not p2p (the tied embedding's gradient all-reduced between the first and
last stage, the loss broadcast to every stage). "wire": that rank's bytes written per step.

    python -m benchmarks.parallel                          # all layouts, 8 measured steps
    python -m benchmarks.parallel --layouts 1p TP2 DP2 --steps 4
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

MODEL = {"num_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "seq_length": 128}
MICRO_BATCH, GLOBAL_BATCH = 2, 8
ZERO1 = {"zero_stage": 1}
# name: (ranks, parallel section)
LAYOUTS = {
    "1p": (1, {}),
    "TP2": (2, {"tensor_parallel": 2}),
    "TP2+SP": (2, {"tensor_parallel": 2, "sequence_parallel": True}),
    "PP2": (2, {"pipeline_parallel": 2, **ZERO1}),
    "DP2": (2, {}),
    "DP2 ZeRO-1": (2, ZERO1),
    "TP2xPP2": (4, {"tensor_parallel": 2, "pipeline_parallel": 2, **ZERO1}),
    "TP2xPP2+SP": (4, {"tensor_parallel": 2, "pipeline_parallel": 2, "sequence_parallel": True, **ZERO1}),
    "PP2xDP2": (4, {"pipeline_parallel": 2, **ZERO1}),
}
DEFAULT_LAYOUTS = ["1p", "TP2", "TP2+SP", "PP2", "DP2", "DP2 ZeRO-1", "TP2xPP2", "PP2xDP2"]
KINDS = ("tensor", "data", "pipeline")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=DEFAULT_LAYOUTS)
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured first steps (default 2)")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per layout (default 8)")
    parser.add_argument("--work-dir", default=None, help="where the tiny corpus and logs go (default: a temp dir)")
    parser.add_argument("--details", action="store_true", help="also print every rank's traffic per call kind")
    return parser.parse_args()


def layout_config(tokenizer, prefix, name: str, warmup: int, steps: int) -> dict:
    from tests.training.tiny_run import tiny_config_dict

    iters = warmup + steps + 1
    return tiny_config_dict(
        tokenizer, prefix, model=MODEL, parallel=LAYOUTS[name][1],
        training={"train_iters": iters, "micro_batch_size": MICRO_BATCH, "global_batch_size": GLOBAL_BATCH},
        schedule={"warmup_iters": 1, "decay_iters": iters},
        logging={"log_interval": iters, "attention_stats": False},
    )


# ---------------------------------------------------------------------------------------------- the rank worker
def rank_groups(rank: int, tp: int, pp: int, world: int) -> dict:
    """This rank's tensor / data / pipeline-stage rank sets: tensor fastest, then data, then pipeline."""
    dp = world // (tp * pp)
    t, d, p = rank % tp, rank // tp % dp, rank // (tp * dp)
    return {"tensor": [tp * (d + dp * p) + i for i in range(tp)],
            "data": [t + tp * (i + dp * p) for i in range(dp)],
            "stages": [t + tp * (d + dp * i) for i in range(pp)]}  # collectives over stages: "other", not p2p


def worker(configs_path: str, out_dir: str) -> None:
    from benchmarks import _comm_counter as counter

    counter.install()  # before DeepSpeed starts: its backend keeps references to some of these functions
    from sa_megatron.config import from_dict
    from sa_megatron.training import loop

    records = []
    original_step = loop._Run.train_step

    def measured_step(self, batches, log_now):
        before, wire_before, start = counter.snapshot(), counter.wire_bytes(), time.perf_counter()
        out = original_step(self, batches, log_now)
        seconds = time.perf_counter() - start
        wire = [a - b for a, b in zip(counter.wire_bytes(), wire_before)]
        records.append({"seconds": seconds, "traffic": counter.difference(counter.snapshot(), before),
                        "wire_written": wire[0], "wire_read": wire[1]})
        return out

    loop._Run.train_step = measured_step
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = []
    for raw in json.loads(Path(configs_path).read_text()):
        p = raw["parallel"]
        counter.set_groups(rank_groups(rank, p.get("tensor_parallel", 1), p.get("pipeline_parallel", 1), world))
        records.clear()
        loop.train(from_dict(raw))
        results.append(list(records))
    Path(out_dir, f"rank_{rank}.json").write_text(json.dumps(results))


# ------------------------------------------------------------------------------------------------- the driver
def run_world(nproc: int, configs: list, work: Path) -> list:
    """[layout][rank] -> per-step records."""
    from tests.training.launch import run_ranks

    work.mkdir(parents=True, exist_ok=True)
    (work / "configs.json").write_text(json.dumps(configs))
    run_ranks(nproc, [str(Path(__file__).resolve()), "--worker", str(work / "configs.json"), str(work)], work,
              timeout=1800)
    per_rank = [json.loads((work / f"rank_{r}.json").read_text()) for r in range(nproc)]
    return [[per_rank[r][i] for r in range(nproc)] for i in range(len(configs))]


def planned(raw: dict, world: int, vocab_size: int):
    from sa_megatron.config import from_dict
    from sa_megatron.planning import Cluster, plan_layouts

    config = from_dict(raw)
    p = config.parallel
    plan = plan_layouts(config, vocab_size, Cluster(1, world, 80.0, 300.0, 40.0), p.sequence_parallel)
    dp = world // (p.tensor_parallel * p.pipeline_parallel)
    return next(layout for layout in plan.layouts
                if (layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel)
                == (p.tensor_parallel, p.pipeline_parallel, dp))


def summarize(name: str, ranks: list, raw: dict, layout, warmup: int) -> dict:
    """Steady-state numbers of one layout from every rank's step records."""
    measured = slice(warmup, -1)  # the last step logs (grad norm): left out
    steps = len(ranks[0][measured])
    slowest = [max(rank[i]["seconds"] for rank in ranks) for i in range(warmup, warmup + steps)]
    step_seconds = statistics.median(slowest)
    tokens = GLOBAL_BATCH * MODEL["seq_length"]

    def per_kind(rank_records) -> dict:
        """Median over measured steps of sent bytes per kind (tensor/data/pipeline/other), plus wire bytes."""
        out = dict.fromkeys((*KINDS, "other"), 0.0)
        sent = [dict.fromkeys(out, 0.0) for _ in rank_records[measured]]
        for step, record in zip(sent, rank_records[measured]):
            for key, (_, _, sent_bytes) in record["traffic"].items():
                group = key.split("/")[0]
                step[group if group in KINDS else "other"] += sent_bytes
        out = {kind: statistics.median(step[kind] for step in sent) for kind in out}
        out["wire"] = statistics.median(record["wire_written"] for record in rank_records[measured])
        return out

    p = raw["parallel"]
    tp, pp = p.get("tensor_parallel", 1), p.get("pipeline_parallel", 1)
    world = len(ranks)
    per_rank = [per_kind(records) for records in ranks]
    stage_ranks = [r for r in range(world) if r // (world // pp) == layout.busiest_stage]
    busiest = max(stage_ranks, key=lambda r: sum(per_rank[r][k] for k in KINDS))
    steady = {r: {key: value for key, value in ranks[r][-2]["traffic"].items()} for r in range(world)}
    return {"name": name, "world": world, "tokens_per_sec": tokens / step_seconds, "step_seconds": step_seconds,
            "best_tokens_per_sec": tokens / min(slowest),
            "measured": per_rank[busiest], "rank": busiest, "per_rank": per_rank, "calls": steady,
            "predicted": {"tensor": layout.traffic.tensor_parallel, "data": layout.traffic.data_parallel,
                          "pipeline": layout.traffic.pipeline},
            "busiest_stage": layout.busiest_stage, "micro_batches": layout.micro_batches, "tp": tp, "pp": pp}


def ratio(measured: float, predicted: float) -> str:
    if predicted == 0:
        return "-" if measured < 1 else "inf"
    return f"{measured / predicted:.2f}"


def table(rows: list, reference: float) -> str:
    head = (f"{'layout':<11} {'ranks':>5} {'tok/s':>6} {'x1p':>5} {'best':>6} {'x1p':>5} | "
            + " | ".join(f"{kind[:4] + ' MB':>7} {'plan':>6} {'ratio':>5}" for kind in KINDS)
            + f" | {'other':>6} {'wire MB':>7}")
    lines = [head, "-" * len(head)]
    for row in rows:
        m, p = row["measured"], row["predicted"]
        relative = f"{row['tokens_per_sec'] / reference[0]:.2f}" if reference else "-"
        best = f"{row['best_tokens_per_sec'] / reference[1]:.2f}" if reference else "-"
        lines.append(f"{row['name']:<11} {row['world']:>5} {row['tokens_per_sec']:>6.0f} {relative:>5} "
                     f"{row['best_tokens_per_sec']:>6.0f} {best:>5} | "
                     + " | ".join(f"{m[k] / 1e6:>7.3f} {p[k] / 1e6:>6.3f} {ratio(m[k], p[k]):>5}" for k in KINDS)
                     + f" | {m['other'] / 1e6:>6.3f} {m['wire'] / 1e6:>7.3f}")
    return "\n".join(lines)


def details(rows: list) -> str:
    lines = ["", "Per rank, one steady step: group/call: calls, local tensor MB, sent MB (planner's accounting)"]
    for row in rows:
        lines.append(f"{row['name']} (planner's busiest stage {row['busiest_stage']}, "
                     f"{row['micro_batches']} micro-batches per pipeline; table shows rank {row['rank']})")
        for rank, calls in row["calls"].items():
            parts = [f"{key}: {c}, {payload / 1e6:.3f}, {sent / 1e6:.3f}" for key, (c, payload, sent)
                     in sorted(calls.items())]
            lines.append(f"  rank {rank}: wire {row['per_rank'][rank]['wire'] / 1e6:.3f} MB; " + "; ".join(parts))
    return "\n".join(lines)


def main():
    args = parse_args()
    from sa_megatron.data import load_tokenizer
    from tests.training.tiny_run import make_corpus

    base = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="parallel-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    tokenizer, prefix = make_corpus(base)
    vocab_size = load_tokenizer(str(tokenizer)).vocab_size
    print(f"model {MODEL}, micro batch {MICRO_BATCH}, global batch {GLOBAL_BATCH}, fp32, vocab {vocab_size}; "
          f"{args.warmup} warmup + {args.steps} measured steps; gloo, OMP_NUM_THREADS=1 per rank; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = {}
    for world in sorted({LAYOUTS[name][0] for name in args.layouts}):
        names = [name for name in args.layouts if LAYOUTS[name][0] == world]
        configs = [layout_config(tokenizer, prefix, name, args.warmup, args.steps) for name in names]
        start = time.perf_counter()
        results = run_world(world, configs, base / f"world{world}")
        for name, raw, ranks in zip(names, configs, results):
            rows[name] = summarize(name, ranks, raw, planned(raw, world, vocab_size), args.warmup)
        print(f"  {world} rank(s): {', '.join(names)} in {time.perf_counter() - start:.0f} s, "
              f"load average {os.getloadavg()[0]:.1f} after", flush=True)
    ordered = [rows[name] for name in args.layouts]
    reference = (rows["1p"]["tokens_per_sec"], rows["1p"]["best_tokens_per_sec"]) if "1p" in rows else None
    print()
    print(table(ordered, reference))
    if args.details:
        print(details(ordered))
    (base / "results.json").write_text(json.dumps(ordered, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        main()
