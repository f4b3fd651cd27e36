"""`sa-megatron tokenizer train|info`: train a sentencepiece tokenizer, or describe a .model file."""

from launcher.commands.data import add_corpus_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train or inspect a sentencepiece tokenizer")
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train a tokenizer that round-trips text exactly (byte fallback)")
    add_corpus_arguments(train)
    train.add_argument("--vocab-size", type=int, required=True, help="real vocabulary size (the model pads it for TP)")
    train.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    train.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model")
    train.add_argument("--input-sentence-size", type=int, default=1_000_000,
                       help="lines sampled from the corpus for training (bounds memory and time)")
    train.set_defaults(handler=train_command)
    info = actions.add_parser("info", help="print vocabulary size, special ids and sha256 of a .model")
    info.add_argument("model")
    info.set_defaults(handler=info_command)


def train_command(args) -> None:
    from sa_megatron.data.corpus import CorpusReader
    from sa_megatron.data.tokenizer import load_tokenizer, train_tokenizer

    reader = CorpusReader(args.input, args.doc_boundary, args.json_key, args.skip_invalid_utf8)
    path = train_tokenizer(read_with_progress(reader), args.output, args.vocab_size, args.model_type,
                           args.input_sentence_size)
    for file, count in reader.skipped.items():
        print(f"skipped {count} documents with invalid UTF-8 in {file}")
    tokenizer = load_tokenizer(path)
    print(f"wrote {path}: vocab_size={tokenizer.vocab_size} sha256={tokenizer.sha256}")


def read_with_progress(reader):
    """The reader's documents, with a bar over the bytes read on stderr when it is a terminal: reading is most of the
    time on a large corpus (sentencepiece then trains on its sample of lines, which `--input-sentence-size` bounds)."""
    from tqdm import tqdm

    total = sum(path.stat().st_size for path in reader.paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="read corpus", disable=None) as progress:
        for document in reader:
            progress.update(reader.bytes_read - progress.n)
            yield document
        progress.update(reader.bytes_read - progress.n)  # the last file's trailing blank lines


def info_command(args) -> None:
    from sa_megatron.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    print(f"{args.model}: vocab_size={tokenizer.vocab_size} eod_id={tokenizer.eod_id} pad_id={tokenizer.pad_id} "
          f"sha256={tokenizer.sha256}")
