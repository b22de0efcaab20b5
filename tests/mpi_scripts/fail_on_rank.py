"""Runs `fedgmi run` with a fault injected on one rank (FAIL_RANK) in a chosen phase (FAIL_PHASE)."""
import os
import sys

from mpi4py import MPI

from fedgmi_mpi.algorithms.fedgmi import FedGMI

FAIL_RANK = int(os.environ["FAIL_RANK"])
FAIL_PHASE = os.environ.get("FAIL_PHASE", "train")
original_group_update, original_aggregate = FedGMI.group_update, FedGMI.aggregate


def group_update(self, broadcast, clients, states):  # what the runtime calls, batched or one by one
    if MPI.COMM_WORLD.Get_rank() == FAIL_RANK and broadcast.phase == FAIL_PHASE:
        raise RuntimeError("injected failure on a worker")
    return original_group_update(self, broadcast, clients, states)


def aggregate(self, state, broadcast, summed):
    if MPI.COMM_WORLD.Get_rank() == FAIL_RANK and broadcast.phase == FAIL_PHASE:
        raise RuntimeError("injected failure on the server")
    return original_aggregate(self, state, broadcast, summed)


FedGMI.group_update, FedGMI.aggregate = group_update, aggregate

from fedgmi_mpi.cli import main  # noqa: E402

sys.argv = ["fedgmi", *sys.argv[1:]]
main()
