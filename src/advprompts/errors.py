"""The advprompts exception hierarchy.

Every error a user can cause (bad config, missing model, broken dataset, occupied output folder,
an output folder another process is writing, diverging optimisation) is an :class:`AdvPromptsError`
whose message is one line saying what is wrong and what to do. The CLI prints that line and exits
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AdvPromptsError(Exception):
    """Base class: a user-facing error with a one-line message naming the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        # Messages are printed as a single line by the CLI; fold accidental newlines.
        super().__init__(" ".join(str(message).split()))


class ConfigError(AdvPromptsError):
    """An unknown config key, a value of the wrong type or an invalid combination of settings."""


class ModelLoadError(AdvPromptsError):
    """A model folder or hub id that cannot be loaded (missing, incomplete, offline)."""


class DataError(AdvPromptsError):
    """An empty, unreadable or inconsistent dataset (missing column, corrupt image, bad mask)."""


class OutputExistsError(AdvPromptsError):
    """The output folder already holds a different run; pass --resume or --overwrite."""


class OutputLockedError(AdvPromptsError):
    """Another live process is writing the output folder (or this shard of it); the message names its pid."""


class ShardError(AdvPromptsError):
    """An invalid ``--shard i/n`` specification."""


class NaNLossError(AdvPromptsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


__all__ = [
    "AdvPromptsError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "NaNLossError",
    "OutputExistsError",
    "OutputLockedError",
    "ShardError",
]
