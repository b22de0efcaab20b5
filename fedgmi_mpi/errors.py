"""Errors that mean "the user asked for something we cannot do" (exit code 2, one line)."""


class UserError(Exception):
    """Bad input: a config value, a path, a data file. The CLI prints one line and exits 2."""


class Stopped(Exception):
    """A run stopped between rounds on request (a signal) after writing a checkpoint: every rank
    raises it alike (the round loop, then the session with the whole story); the CLI prints one
    line and exits 3 (resumable)."""

    def __init__(self, rounds: int, message: str = ""):
        super().__init__(message or f"stopped after round {rounds - 1}")
        self.rounds = rounds  # communication rounds done
