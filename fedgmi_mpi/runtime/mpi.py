"""The MPI transport: rank 0 is the server, ranks 1..N-1 host groups of clients.

Only mpi4py's buffer (uppercase) collectives are used. They are issued non-blocking and waited
on with :func:`wait`, which sleeps between progress checks: MPICH busy-polls inside a blocking
collective, so an idle server on an oversubscribed node would otherwise eat a core the workers
need.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..errors import UserError
from .loop import COLLECTIVES, END, STOP, Message

HEADER = 5  # what follows (0 a message, 1 END, 2 STOP), phase index, round, message length, cohort size (-1: every client)
MESSAGE_BYTES = 512
ACTIONS = {END: 1, STOP: 2}


class RoundTimeout(RuntimeError):
    """A rank waited longer than runtime.round_timeout_s in one collective: another rank is
    stalled or gone. Raising brings the whole job down (MPI_Abort) instead of hanging."""


def mpi():
    from mpi4py import MPI  # imported lazily: the serial path and the tests need no MPI

    return MPI


def wait(request, max_sleep: float, timeout: float = 0.0, what: str = "a collective") -> None:
    """Complete a request, sleeping between checks (exponential backoff up to max_sleep seconds);
    after ``timeout`` seconds (0: never) raise RoundTimeout (the watchdog for a stalled rank)."""
    if max_sleep <= 0 and timeout <= 0:
        request.Wait()
        return
    started = time.monotonic()
    sleep = 2e-5
    while not request.Test():
        if timeout > 0 and time.monotonic() - started > timeout:
            raise RoundTimeout(f"waited {timeout:g} s in {what} (runtime.round_timeout_s): another rank is stalled "
                               "or gone; bringing the job down")
        if max_sleep > 0:
            time.sleep(sleep)
            sleep = min(sleep * 2, max_sleep)


def broadcast_bytes(comm, data: bytes | None, max_sleep: float, timeout: float) -> bytes:
    """Rank 0's bytes (a checkpoint file) on every rank; the others pass None."""
    MPI = mpi()
    root = comm.Get_rank() == 0
    length = np.array([len(data) if root else 0], dtype=np.int64)
    wait(comm.Ibcast(length, root=0), max_sleep, timeout, "the checkpoint broadcast")
    buffer = np.frombuffer(data, dtype=np.uint8).copy() if root else np.empty(int(length[0]), np.uint8)
    wait(comm.Ibcast([buffer, MPI.BYTE], root=0), max_sleep, timeout, "the checkpoint broadcast")
    return buffer.tobytes()


def launched_tasks() -> int | None:
    """How many tasks the launcher says it started, where it says so."""
    for var in ("SLURM_NTASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value) if var != "MPI_LOCALNRANKS" else None
    return None


def local_rank(comm) -> int:
    """This rank's index among the ranks on its node (for choosing a GPU)."""
    MPI = mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    rank = node.Get_rank()
    node.Free()
    for var in ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return rank


def agree_on_errors(comm, error: str | None) -> str | None:
    """Every rank passes the error it met (or None); all return the lowest rank's error, or None.

    Lets a check that may fail on some ranks only (a missing file on one node, an unwritable
    log on rank 0) end the job cleanly on every rank instead of leaving others in a collective.
    """
    MPI = mpi()
    flag = np.array([0 if error is None else 1], dtype=np.int32)
    any_error = np.zeros(1, dtype=np.int32)
    comm.Allreduce(flag, any_error, op=MPI.MAX)
    if not any_error[0]:
        return None
    mine = np.zeros(MESSAGE_BYTES, dtype=np.uint8)
    if error is not None:
        raw = error.encode("utf-8", "replace")[:MESSAGE_BYTES]
        mine[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    everyone = np.zeros((comm.Get_size(), MESSAGE_BYTES), dtype=np.uint8)
    comm.Allgather(mine, everyone)
    for row in everyone:
        if row.any():
            return bytes(row).rstrip(b"\0").decode("utf-8", "replace")
    return None


class MPITransport:
    def __init__(self, comm, phases: list[str], poll_interval_ms: float, timeout_s: float = 0.0):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        if self.size < 2:
            raise UserError("the MPI runtime needs at least 2 ranks (rank 0 serves, the others host clients)")
        self.is_server = self.rank == 0
        self.workers = self.size - 1
        self.worker = self.rank - 1
        self.phases = phases
        self.max_sleep = poll_interval_ms / 1000.0
        self.timeout = timeout_s
        self.moved = dict.fromkeys(COLLECTIVES, 0)  # bytes the last round's collectives delivered (rank 0's count)

    def _wait(self, request, what: str) -> None:
        wait(request, self.max_sleep, self.timeout, f"{what} (rank {self.rank})")

    def broadcast(self, message: Message | str | None) -> Message | str:
        """The downlink channel's bytes, as they are, to every rank (one header, one byte buffer),
        and the round's cohort when there is one; or END / STOP alone in the header."""
        MPI = mpi()
        header = np.zeros(HEADER, dtype=np.int64)
        if self.is_server:
            if isinstance(message, str):
                header[0] = ACTIONS[message]
            else:
                cohort = -1 if message.cohort is None else len(message.cohort)
                header[1:] = (self.phases.index(message.phase), message.round, message.data.size, cohort)
        self._wait(self.comm.Ibcast(header, root=0), "the broadcast")
        if header[0]:
            return {code: action for action, code in ACTIONS.items()}[int(header[0])]
        data = np.ascontiguousarray(message.data, dtype=np.uint8) if self.is_server else np.empty(int(header[3]), np.uint8)
        self._wait(self.comm.Ibcast([data, MPI.BYTE], root=0), "the broadcast")
        cohort = None
        if header[4] >= 0:
            cohort = (np.ascontiguousarray(message.cohort, dtype=np.int64) if self.is_server
                      else np.empty(int(header[4]), np.int64))
            self._wait(self.comm.Ibcast([cohort, MPI.INT64_T], root=0), "the broadcast")
        self.moved["broadcast"] = (header.nbytes + data.nbytes + (0 if cohort is None else cohort.nbytes)) * (self.size - 1)
        if self.is_server:
            return message
        return Message(self.phases[int(header[1])], int(header[2]), data, cohort)

    def reduce_sum(self, local: np.ndarray) -> np.ndarray | None:
        """One reduce of the int64 fixed-point sums; every worker sends a buffer of the same size."""
        MPI = mpi()
        total = np.zeros_like(local) if self.is_server else None
        self._wait(self.comm.Ireduce([local, MPI.INT64_T], [total, MPI.INT64_T] if self.is_server else None,
                                     op=MPI.SUM, root=0), "the reduce")
        self.moved["reduce"] = local.nbytes * (self.size - 1)
        return total

    def share_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray:
        """One all-gather of the round's per-client rows (metrics, client state, bytes): rank 0 logs
        them, every rank updates its table of client states."""
        MPI = mpi()
        received, mine, sizes, displacements = self._rows(rows, counts)
        self._wait(self.comm.Iallgatherv([mine, MPI.DOUBLE], [received, sizes, displacements, MPI.DOUBLE]),
                   "the all-gather")
        self.moved["gather"] = received.nbytes * (self.size - 1)
        return received

    def gather_rows(self, rows: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """The workers' rows on rank 0 only (a checkpoint's per-client state), one gather."""
        MPI = mpi()
        received, mine, sizes, displacements = self._rows(rows, counts)
        self._wait(self.comm.Igatherv([mine, MPI.DOUBLE], [received, sizes, displacements, MPI.DOUBLE]
                                      if self.is_server else None, root=0), "the checkpoint gather")
        return received if self.is_server else None

    def _rows(self, rows: np.ndarray, counts: list[int]) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        width = rows.shape[1]
        sizes = [0] + [count * width for count in counts]
        displacements = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        received = np.empty((sum(counts), width), dtype=np.float64)
        mine = np.ascontiguousarray(rows, dtype=np.float64) if not self.is_server else np.empty((0, width))
        return received, mine, sizes, displacements
