"""Errors that mean "the user gave us something wrong".

The CLI prints these as one line (no traceback): the message must name the file, field or
argument at fault and say what was expected.
"""


class UserInputError(Exception):
    """Bad input from the user: config, data, checkpoint or command line."""


class ConfigError(UserInputError):
    """A config file or override is invalid."""


class DataError(UserInputError):
    """A corpus, tokenizer or dataset file is missing, malformed or inconsistent."""


class CheckpointError(UserInputError):
    """A checkpoint is missing, incomplete or does not match the run."""


class RendezvousError(UserInputError):
    """The ranks of a multi-process run could not meet: wrong MASTER_ADDR/port/interface, or a rank never started."""
