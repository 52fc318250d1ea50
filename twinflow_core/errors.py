"""Errors a user can fix. Each carries a one-line message naming what is wrong and where."""


class TwinflowError(Exception):
    """Base of user-fixable errors: the CLI prints the message on one line, no traceback, exit 2."""


class ConfigError(TwinflowError, ValueError):
    """A configuration value, key or combination is invalid."""


class DataError(TwinflowError, ValueError):
    """Input data (an image, a caption, a metadata row, a bucket) is missing or malformed."""
