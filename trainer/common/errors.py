"""The three errors a user acts on, each with a message that names the bad value, the reason and the fix.

- :class:`ConfigError`: a configuration value (a ``TrainConfig`` field, a CLI flag, a pipeline file) is wrong.
- :class:`DataError`: a dataset problem, naming the file (and line).
- :class:`TrainingError`: training stopped; the message names the cause and the checkpoint ``--resume`` continues from.

They live here, below every stage, so that any stage can raise them and the CLI can catch them without importing the
stage that raised.
"""


class ConfigError(ValueError):
    """A bad configuration value, with the field, the reason and what to change."""


class DataError(ValueError):
    """A dataset problem, with the file (and line) and what to change."""


class TrainingError(RuntimeError):
    """Training stopped on an error; the message names the cause (the retriever, when it raised) and the checkpoint
    that ``resume`` continues from."""
