"""Whether a dataset's token ids were made by a given tokenizer, so a run never trains or evaluates on foreign ids."""

from sa_megatron.data.indexed_dataset import IndexedDataset
from sa_megatron.data.preprocess import read_sidecar
from sa_megatron.errors import DataError

MAX_ID_SCAN_TOKENS = 1 << 24


def check_dataset_tokenizer(prefix: str, vocab_size: int, tokenizer_sha256: str | None) -> None:
    """Refuse PREFIX unless its ids come from this tokenizer (sha256, when given) and fit `vocab_size`.

    Our sidecar PREFIX.json names the tokenizer; data from other tools has none, so its ids are scanned instead.
    """
    sidecar = read_sidecar(prefix)
    if sidecar is None:
        built_with, source = 1 + max_token_id(IndexedDataset(prefix)), f"{prefix}.bin"
    else:
        built_with, source = sidecar["vocab_size"], f"{prefix}.json"
        recorded = sidecar["tokenizer_sha256"]
        if tokenizer_sha256 is not None and recorded != tokenizer_sha256:
            raise DataError(
                f"{source}: the data was tokenized with a different tokenizer (sha256 {recorded[:12]}…, not "
                f"{tokenizer_sha256[:12]}…); preprocess it again with the run's tokenizer"
            )
    if built_with > vocab_size:
        raise DataError(
            f"{source}: the data was tokenized with a vocabulary of {built_with} ids, larger than the "
            f"tokenizer's {vocab_size}; preprocess it again with the run's tokenizer"
        )


def max_token_id(dataset: IndexedDataset) -> int:
    """The largest id in the .bin (-1 when empty), read in slices so memory stays bounded."""
    tokens = dataset.tokens
    return max((int(tokens[i:i + MAX_ID_SCAN_TOKENS].max()) for i in range(0, len(tokens), MAX_ID_SCAN_TOKENS)),
               default=-1)
