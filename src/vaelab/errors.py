"""Errors a user can cause: train.py prints their message as one line and exits non-zero."""

from lightning.fabric.utilities.exceptions import MisconfigurationException


class VaelabError(Exception):
    """A problem with the user's config, data or files; the message says what to do."""


class DatasetNotFoundError(VaelabError):
    """A dataset's files are missing and cannot be downloaded."""


class ConfigError(VaelabError):
    """A config value that cannot work (a size an architecture cannot take, say)."""


def user_error(error: BaseException) -> VaelabError | None:
    """The user's mistake behind an exception (Hydra wraps errors raised while instantiating)."""
    while error is not None:
        if isinstance(error, VaelabError):
            return error
        if isinstance(error, MisconfigurationException):
            return ConfigError(str(error))
        error = error.__cause__ or error.__context__
    return None
