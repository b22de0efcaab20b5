"""A testing aid: make one rank fail at one round in a chosen way, set from the environment.

    FEDGMI_FAULT=<kind>:<rank>:<round>[,<kind>:<rank>:<round>...]     e.g. FEDGMI_FAULT=kill:2:30

kinds (``round`` is the communication round, the row of the log's /rounds):
  raise      the rank raises: a worker while computing its clients, rank 0 while aggregating
  kill       the rank sends itself SIGKILL while computing its clients (a node that dies)
  stall      the rank sleeps forever while computing its clients (a hung device or deadlock);
             runtime.round_timeout_s is what ends the job
  nan        the rank's first client of the round uploads a NaN in component 0
  disk_full  rank 0's log write of the round fails with ENOSPC (a full disk)

The tests in tests/test_faults.py use it under mpiexec; it is not for production runs (a run
with FEDGMI_FAULT set says so on stderr).
"""
from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass

from ..errors import UserError

KINDS = ("raise", "kill", "stall", "nan", "disk_full")
VARIABLE = "FEDGMI_FAULT"


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    round: int


@functools.lru_cache(maxsize=8)  # asked several times a round: parse each value once
def parse(text: str) -> tuple[Fault, ...]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in KINDS or not parts[1].isdigit() or not parts[2].isdigit():
            raise UserError(f"{VARIABLE}={text!r}: expected <kind>:<rank>:<round> with kind one of "
                            f"{', '.join(KINDS)} (a testing aid, see runtime/faults.py)")
        faults.append(Fault(parts[0], int(parts[1]), int(parts[2])))
    return tuple(faults)


def planned() -> tuple[Fault, ...]:
    return parse(os.environ.get(VARIABLE, ""))


def _due(kind: str, rank: int, round_index: int) -> bool:
    return any(f.kind == kind and f.rank == rank and f.round == round_index for f in planned())


def in_client_work(rank: int, round_index: int) -> None:
    """Called on a worker rank before it computes its clients of the round."""
    if _due("raise", rank, round_index):
        raise RuntimeError(f"injected failure ({VARIABLE}): rank {rank} raises in round {round_index}")
    if _due("kill", rank, round_index):
        sys.stderr.write(f"injected failure ({VARIABLE}): rank {rank} kills itself in round {round_index}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if _due("stall", rank, round_index):
        sys.stderr.write(f"injected failure ({VARIABLE}): rank {rank} stalls in round {round_index}\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)


def in_aggregation(rank: int, round_index: int) -> None:
    if _due("raise", rank, round_index):
        raise RuntimeError(f"injected failure ({VARIABLE}): the server raises in round {round_index}")


def corrupts_upload(rank: int, round_index: int) -> bool:
    return _due("nan", rank, round_index)


def before_log_write(round_index: int) -> None:
    if _due("disk_full", 0, round_index):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {VARIABLE})")
