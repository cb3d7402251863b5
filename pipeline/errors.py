"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class PetpipeError(Exception):
    """A user-facing error whose message names the file, line or field at fault."""


class DataError(PetpipeError):
    """The input data set is missing, malformed or unreadable."""


class ConfigError(PetpipeError):
    """A configuration file or flag is invalid."""
