"""Errors a user can act on. The CLI prints them as one line, without a traceback, and exits with `exit_code`."""

EXIT_NOT_BLESSED = 5  # a normal outcome for a scheduled run: the candidate was worse, nothing was pushed


class PetpipeError(Exception):
    """A user-facing error whose message names the file, line or field at fault."""

    exit_code = 2


class DataError(PetpipeError):
    """The input data set is missing, malformed or unreadable."""


class ConfigError(PetpipeError):
    """A configuration file or flag is invalid."""


class DataThresholdError(DataError):
    """More records were quarantined than data.max_bad_fraction allows (the quarantine has been written)."""

    exit_code = 3


class ValidationError(DataError):
    """The statistics of the new data have severe anomalies (the report has been written); nothing was trained."""

    exit_code = 4
