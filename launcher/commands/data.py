"""`sa-megatron data preprocess|inspect`: tokenize corpora into Megatron .bin/.idx, and look inside one."""

import argparse

from launcher.commands.arguments import positive_int, rng_seed

SAMPLE_TOKENS = 64


def split_shares(text: str) -> tuple[float, float, float]:
    """"98,1,1" -> train, valid, test shares, by the config's own data.split rules."""
    from sa_megatron.config.validate import parse_split
    from sa_megatron.errors import ConfigError

    try:
        return tuple(parse_split(text))
    except ConfigError:
        raise argparse.ArgumentTypeError("expected three finite, non-negative train,valid,test shares, not all "
                                         f"zero, like 98,1,1; got '{text}'") from None


def add_corpus_arguments(parser) -> None:
    """How corpus files are read; shared with `tokenizer train`."""
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text or JSONL (.jsonl/.json) files")
    parser.add_argument("--doc-boundary", choices=["file", "line", "blank-line"], default="file",
                        help="plain text: one document per file, per line, or per blank-line-separated paragraph")
    parser.add_argument("--json-key", default="text", help="JSONL field holding the document text")
    parser.add_argument("--skip-invalid-utf8", action="store_true",
                        help="skip documents that are not valid UTF-8 (counted) instead of failing")


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="preprocess corpora into Megatron datasets, inspect them")
    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser("preprocess", help="tokenize into PREFIX.bin + PREFIX.idx (+ PREFIX.json)")
    add_corpus_arguments(run)
    run.add_argument("--tokenizer", required=True, metavar="MODEL", help="sentencepiece .model")
    run.add_argument("--output-prefix", required=True, metavar="PREFIX")
    run.add_argument("--workers", type=positive_int, default=1, help="tokenizer processes")
    run.add_argument("--split", type=split_shares, metavar="TRAIN,VALID,TEST",
                     help="write PREFIX_train, PREFIX_valid and PREFIX_test in these proportions (a zero share is "
                          "not written) instead of PREFIX; needs --split-by")
    run.add_argument("--split-by", choices=["documents", "files"],
                     help="documents: each split draws documents from every file; files: whole files are dealt to "
                          "the splits (the shares count files)")
    run.add_argument("--split-seed", type=rng_seed, help="seed of the split assignment (default 1234)")
    run.set_defaults(handler=preprocess_command)
    inspect = actions.add_parser("inspect", help="print documents, tokens, dtype and a decoded sample")
    inspect.add_argument("prefix")
    inspect.add_argument("--tokenizer", metavar="MODEL", help="decode a sample with this .model")
    inspect.set_defaults(handler=inspect_command)


def preprocess_command(args) -> None:
    from sa_megatron.data.preprocess import preprocess, preprocess_split

    options = dict(workers=args.workers, doc_boundary=args.doc_boundary, json_key=args.json_key,
                   skip_invalid_utf8=args.skip_invalid_utf8)
    split = held_out_split(args)
    if split is None:
        summaries = {args.output_prefix: preprocess(args.input, args.tokenizer, args.output_prefix, **options)}
    else:
        summaries = {f"{args.output_prefix}_{name}": summary for name, summary in
                     preprocess_split(args.input, args.tokenizer, args.output_prefix, split, **options).items()}
    for prefix, summary in summaries.items():
        skipped = summary.skipped_invalid_utf8
        print(f"wrote {prefix}.bin/.idx: {summary.documents} documents, {summary.tokens} tokens, {summary.dtype}"
              + (f" ({skipped} documents with invalid UTF-8 skipped in its input files)" if skipped else ""))


def held_out_split(args):
    """The HeldOutSplit the split flags ask for, or None without --split."""
    from sa_megatron.data.preprocess import HeldOutSplit
    from sa_megatron.data.splits import DEFAULT_SPLIT_SEED
    from sa_megatron.errors import DataError

    if args.split is None:
        if args.split_by or args.split_seed is not None:
            raise DataError("--split-by and --split-seed need --split TRAIN,VALID,TEST (e.g. --split 98,1,1)")
        return None
    if args.split_by is None:
        raise DataError("--split needs --split-by documents (each split draws documents from every file) or "
                        "--split-by files (whole files go to one split)")
    seed = DEFAULT_SPLIT_SEED if args.split_seed is None else args.split_seed
    return HeldOutSplit(args.split, args.split_by, seed)


def inspect_command(args) -> None:
    from sa_megatron.data import check_dataset_tokenizer
    from sa_megatron.data.indexed_dataset import IndexedDataset
    from sa_megatron.data.preprocess import read_sidecar
    from sa_megatron.data.splits import shares_text
    from sa_megatron.data.tokenizer import load_tokenizer
    from sa_megatron.errors import DataError

    dataset = IndexedDataset(args.prefix)
    print(f"{args.prefix}: {len(dataset)} documents, {dataset.num_tokens} tokens, dtype {dataset.dtype.name}")
    sidecar = read_sidecar(args.prefix)
    if sidecar:
        print(f"tokenizer: vocab_size={sidecar['vocab_size']} sha256={sidecar['tokenizer_sha256']}")
    if sidecar and "split" in sidecar:
        split = sidecar["split"]
        print(f"split: {split['name']} of --split {shares_text(split['shares'])} --split-by {split['by']} "
              f"--split-seed {split['seed']}")
    if args.tokenizer and len(dataset):
        tokenizer = load_tokenizer(args.tokenizer)
        check_dataset_tokenizer(args.prefix, tokenizer.vocab_size, tokenizer.sha256)
        sample = dataset.get(0)[:SAMPLE_TOKENS]
        # The sidecar may vouch for a .bin it did not describe; sentencepiece would raise IndexError on such ids.
        outside = [int(i) for i in sample if not 0 <= i < tokenizer.vocab_size]
        if outside:
            raise DataError(f"{args.prefix}.bin: document 0 holds token id {outside[0]}, outside the tokenizer's "
                            f"{tokenizer.vocab_size} ids; preprocess it again with the run's tokenizer")
        print(f"sample (first {SAMPLE_TOKENS} tokens of document 0): {tokenizer.decode(sample)!r}")
