"""`sa-megatron generate`: continue a prompt with a trained checkpoint."""

import sys

from launcher.commands.arguments import positive_int, rng_seed, utf8_text


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="sample text from a checkpoint")
    parser.add_argument("--load", required=True, metavar="DIR", help="checkpoint directory written by training")
    parser.add_argument("--tokenizer", metavar="MODEL",
                        help="the sentencepiece .model to use instead of the copy kept with the checkpoint (for "
                             "checkpoints without one); refused unless it is the one trained with (sha256)")
    parser.add_argument("--prompt", type=utf8_text, default="", help="text to continue (empty = start a new document)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=100,
                        help="at most this many, and at most what the context leaves after the prompt")
    parser.add_argument("--max-context", type=positive_int, default=None, metavar="TOKENS",
                        help="tokens (prompt + new) the model attends over. Default: the position table for learned "
                             "positions (also the most allowed), else 4 x the training seq_length (rope, alibi, "
                             "kerple and none extrapolate; eval measures how well). A longer prompt keeps its newest "
                             "tokens, at least half the context; what is cut is said on stderr")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens; 0 = all")
    parser.add_argument("--top-p", type=float, default=0.95, help="keep the smallest set with this much probability")
    parser.add_argument("--seed", type=rng_seed, default=0)
    parser.set_defaults(handler=run_generate)


def run_generate(args) -> None:
    from sa_megatron.eval.context import generation_context
    from sa_megatron.eval.generate import generate
    from sa_megatron.training.checkpoint import checkpoint_tokenizer, load_for_inference

    loaded = load_for_inference(args.load)
    generation = generate(
        loaded.model, checkpoint_tokenizer(loaded, args.tokenizer), args.prompt,
        context=generation_context(loaded.config.model, args.max_context), max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    for note in generation.notes:
        print(f"note: {note}", file=sys.stderr)
    print(args.prompt + generation.text)
