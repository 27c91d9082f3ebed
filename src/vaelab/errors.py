"""Errors a user can cause: train.py prints their message as one line and exits non-zero."""


class VaelabError(Exception):
    """A problem with the user's config, data or files; the message says what to do."""


class DatasetNotFoundError(VaelabError):
    """A dataset's files are missing and cannot be downloaded."""


class ConfigError(VaelabError):
    """A config value that cannot work (a size an architecture cannot take, say)."""
