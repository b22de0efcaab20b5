"""Errors that mean "the user asked for something we cannot do" (exit code 2, one line)."""


class UserError(Exception):
    """Bad input: a config value, a path, a data file. The CLI prints one line and exits 2."""
