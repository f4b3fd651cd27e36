"""`sa-megatron generate`: continue a prompt with a trained checkpoint."""

from launcher.commands.arguments import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="sample text from a checkpoint")
    parser.add_argument("--load", required=True, metavar="DIR", help="checkpoint directory written by training")
    parser.add_argument("--prompt", default="", help="text to continue (empty = start a new document)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens; 0 = all")
    parser.add_argument("--top-p", type=float, default=0.95, help="keep the smallest set with this much probability")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_generate)


def run_generate(args) -> None:
    from sa_megatron.eval.context import max_context
    from sa_megatron.eval.generate import generate
    from sa_megatron.training.checkpoint import checkpoint_tokenizer, load_for_inference

    loaded = load_for_inference(args.load)
    completion = generate(
        loaded.model, checkpoint_tokenizer(loaded), args.prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        context_limit=max_context(loaded.config.model),
    )
    print(args.prompt + completion)
