"""`sa-megatron eval`: perplexity of a checkpoint at several context lengths (length extrapolation)."""

import contextlib
import json
import os

from launcher.commands.arguments import positive_int, positive_ints


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="perplexity at several context lengths")
    parser.add_argument("--load", required=True, metavar="DIR", help="checkpoint directory written by training")
    parser.add_argument("--data", required=True, metavar="PREFIX", help="evaluation corpus PREFIX.bin/.idx")
    parser.add_argument("--lengths", required=True, type=positive_ints, metavar="L1,L2,...",
                        help="window lengths in tokens, e.g. 256,512,1024")
    parser.add_argument("--score-last", type=positive_int, default=None, metavar="K",
                        help="score only the last K tokens of each window (default: the whole window)")
    parser.add_argument("--max-windows", type=positive_int, default=None, metavar="N", help="at most N windows per length")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="windows per forward pass")
    parser.add_argument("--output", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--tensorboard-dir", metavar="LOGDIR",
                        help="write valid_length/ppl_at_{L} scalars into LOGDIR/<the run's logging.run_name>: the "
                             "training run's own TensorBoard folder when LOGDIR is its logdir")
    parser.set_defaults(handler=run_eval)


def run_eval(args) -> None:
    from sa_megatron.data import check_dataset_tokenizer
    from sa_megatron.data.atomic import atomic_paths, check_writable_folder
    from sa_megatron.eval.perplexity import load_token_stream, perplexity_at_lengths
    from sa_megatron.training.checkpoint import load_for_inference

    if args.tensorboard_dir:
        check_writable_folder(args.tensorboard_dir)  # before the evaluation, whose results it would lose
    with contextlib.ExitStack() as stack:
        # Entered first, so an unwritable --output fails before the evaluation; the JSON appears whole or not at all.
        output = stack.enter_context(atomic_paths(args.output))[0] if args.output else None
        loaded = load_for_inference(args.load)
        check_dataset_tokenizer(args.data, loaded.config.model.vocab_size, loaded.tokenizer_sha256)
        needed = None if args.max_windows is None else args.max_windows * max(args.lengths) + 1
        stream = load_token_stream(args.data, max_tokens=needed)
        results = perplexity_at_lengths(loaded.model, loaded.config.model, stream, args.lengths,
                                        score_last=args.score_last, batch_size=args.batch_size,
                                        max_windows=args.max_windows, show_progress=progress_on_this_rank())

        print(f"{'length':>8} {'windows':>8} {'tokens':>10} {'nll':>8} {'ppl':>10}")
        for r in results:
            print(f"{r.length:>8} {r.windows:>8} {r.scored_tokens:>10} {r.mean_nll:>8.4f} {r.ppl:>10.2f}")
        if output:
            report = {"load": args.load, "data": args.data, "train_seq_length": loaded.config.model.seq_length,
                      "score_last": args.score_last, "results": [r.as_dict() for r in results]}
            output.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        from sa_megatron.config import run_name
        from sa_megatron.training.metrics import LENGTH_PREFIX

        with SummaryWriter(log_dir=os.path.join(args.tensorboard_dir, run_name(loaded.config))) as writer:
            for r in results:
                writer.add_scalar(f"{LENGTH_PREFIX}ppl_at_{r.length}", r.ppl, global_step=0)
                # The same numbers as one curve over length (x axis = tokens of context).
                writer.add_scalar(f"{LENGTH_PREFIX}ppl", r.ppl, global_step=r.length)


def progress_on_this_rank():
    """Progress bars on stderr when it is a terminal (None: tqdm's rule), and from rank 0 only under torchrun."""
    return None if os.environ.get("RANK", "0") == "0" else False
