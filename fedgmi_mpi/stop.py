"""A stop request by signal: SIGUSR1 (Slurm's warning before a time limit) or SIGTERM (a
preemption) sets a flag instead of killing the process; the run loop reads it between rounds
(rank 0 decides). Light on purpose: ``python -m fedgmi_mpi run`` installs it before importing
anything heavy, so a signal that comes while a rank starts does not kill it."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.previous: dict = {}

    def install(self) -> "StopRequest":
        if not self.previous:
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        self.signal_name = None

    def _handle(self, number: int, frame) -> None:
        self.signal_name = signal.Signals(number).name

    def __call__(self) -> bool:
        return self.signal_name is not None


REQUEST = StopRequest()
