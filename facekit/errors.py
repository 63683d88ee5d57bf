"""Errors that the CLI turns into one clear line instead of a traceback."""


class FacekitError(Exception):
    """A problem the user can fix; the CLI prints it on one line and exits 1."""

    exit_code = 1


class UsageError(FacekitError):
    """A bad option, name or path given on the command line; the CLI exits 2."""

    exit_code = 2
