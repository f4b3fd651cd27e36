"""argparse value types shared by the subcommands: a bad value is refused before any work, naming what was expected."""

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def positive_ints(text: str) -> list[int]:
    """"256,512,1024" -> [256, 512, 1024]."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got '{text}'")
    return values


def rng_seed(text: str) -> int:
    """A seed torch.Generator accepts: 0 <= seed < 2**64."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**64), got '{text}'")
    return value


def utf8_text(text: str) -> str:
    """Command-line text that is valid UTF-8 (Python keeps other argv bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = text[err.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"expected UTF-8 text; byte 0x{byte.hex()} at character {err.start} "
                                         "is not valid UTF-8") from None
    return text
