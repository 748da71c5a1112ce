"""Errors a user can fix. Entry points print them as one line and exit non-zero, without a traceback."""


class SelfsupError(Exception):
    """A problem with the user's input that selfsup can name together with its fix."""


class ConfigError(SelfsupError, ValueError):
    """An invalid or inconsistent configuration."""


class DataError(SelfsupError):
    """Data that is missing, empty or unreadable."""
