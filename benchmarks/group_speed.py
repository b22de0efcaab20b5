"""What batching clients buys, and how close to the machine's limit a round runs; prints ratios,
asserts nothing.

  python benchmarks/group_speed.py [--clients 8,32,128] [--group 0] [--device cpu]

For each number of clients on one rank, one training round's client updates (E-step with 16
importance samples, proportion EM, personalised test accuracy, 2 epochs of local Adam), timed:
- one by one (the sequential reference, ``runtime.batched=false``),
- as batched groups (``--group``: clients per group, 0: the automatic size for the device),
for the default FedGMI model and for a small one where per-operation overhead dominates (hidden
16, latent 2, 2 importance samples). Then the FLOP rate of a batched round (matmul FLOPs counted
by torch's FlopCounterMode) against a bare batched matmul of the model's largest shape on the same
device: how much of the device's arithmetic the simulator uses.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedgmi_mpi import config as config_mod
from fedgmi_mpi import scenarios
from fedgmi_mpi.algorithms import build as build_algorithm
from fedgmi_mpi.algorithms.base import Broadcast, pack
from fedgmi_mpi.runtime.device import group_size

WORKLOADS = {
    "default FedGMI": [],
    "small model": ["model.hidden=16", "model.latent=2", "algorithm.estep_samples=2", "algorithm.test_samples=1"],
}


def setup(clients: int, extra: list[str], device: torch.device):
    config = config_mod.load(None, [f"scenario.num_clients={clients}", "scenario.unseen_clients=0", *extra])
    scenario = scenarios.build(config)
    algorithm = build_algorithm(config, scenario, device)
    broadcast = Broadcast("train", 1, pack([np.array([0.0, 0.0, 1.0]), np.zeros((0, 0))]),  # after warm-up, untempered
                          model=algorithm.initial_model())
    return algorithm, scenario.clients, broadcast


def one_round(algorithm, clients, broadcast, size: int) -> float:
    states = [algorithm.init_client(c) for c in clients]
    started = time.perf_counter()
    for start in range(0, len(clients), size):
        algorithm.group_update(broadcast, clients[start:start + size], states[start:start + size])
    if algorithm.device.type == "cuda":
        torch.cuda.synchronize(algorithm.device)
    return time.perf_counter() - started


def best_of(repeats: int, run) -> float:
    run()  # warm-up: allocations, kernel selection
    return min(run() for _ in range(repeats))


def matmul_rate(device: torch.device, batch: int, rows: int, width: int) -> float:
    """GFLOP/s of a bare baddbmm [batch, rows, width] x [batch, width, width] on the device."""
    a = torch.randn(batch, rows, width, device=device)
    w = torch.randn(batch, width, width, device=device)
    b = torch.randn(batch, 1, width, device=device)

    def run() -> float:
        started = time.perf_counter()
        for _ in range(20):
            torch.baddbmm(b, a, w)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    return 20 * 2 * batch * rows * width * width / best_of(3, run) / 1e9


def timed_round(clients: int, device: torch.device) -> float:
    algorithm, data, broadcast = setup(clients, [], device)
    return best_of(3, partial(one_round, algorithm, data, broadcast, group_size(0, algorithm, device)))


def corun(copies: int, device: str) -> None:
    command = [sys.executable, __file__, "--time-one-round", "20", "--device", device]
    alone = float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    together = [float(p.communicate()[0]) for p in processes]
    print(f"one round of 20 default clients: {alone:.2f} s alone, {', '.join(f'{t:.2f}' for t in together)} s "
          f"with {copies} copies at once -> throughput {copies * alone / max(together):.2f}x "
          f"(the ceiling for 1 -> {copies} worker ranks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="8,32,128")
    parser.add_argument("--group", type=int, default=0, help="clients per batched group (0: automatic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corun", type=int, default=0, help="only measure N concurrent processes against one")
    parser.add_argument("--time-one-round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.time_one_round:
        print(timed_round(args.time_one_round, device))
        return
    if args.corun:
        corun(args.corun, args.device)
        return
    print(f"device {device}, {args.threads} thread(s)")
    print(f"{'workload':16s} {'clients':>7s} {'group':>5s} {'one by one/s':>13s} {'batched/s':>10s} {'ratio':>6s}")
    for label, extra in WORKLOADS.items():
        for clients in [int(c) for c in args.clients.split(",")]:
            algorithm, data, broadcast = setup(clients, extra, device)
            size = args.group or group_size(0, algorithm, device)
            sequential = best_of(2, partial(one_round, algorithm, data, broadcast, 1))
            batched = best_of(2, partial(one_round, algorithm, data, broadcast, size))
            print(f"{label:16s} {clients:7d} {size:5d} {clients / sequential:13.1f} {clients / batched:10.1f} "
                  f"{sequential / batched:5.2f}x", flush=True)
    # How much of the device's arithmetic a batched default round uses.
    algorithm, data, broadcast = setup(32, [], device)
    size = args.group or group_size(0, algorithm, device)
    with FlopCounterMode(display=False) as counter:
        one_round(algorithm, data, broadcast, size)
    flops = counter.get_total_flops()
    seconds = best_of(2, partial(one_round, algorithm, data, broadcast, size))
    h = algorithm.shape.hidden
    peak = matmul_rate(device, size * algorithm.num_components, 16 * algorithm.max_train, h)
    print(f"default round, 32 clients in groups of {size}: {flops / 32 / 1e6:.0f} MFLOP (matmuls) a client, "
          f"{flops / seconds / 1e9:.1f} GFLOP/s achieved")
    print(f"bare baddbmm of the decoder's shape [{size * algorithm.num_components} x {16 * algorithm.max_train} x {h}] "
          f"@ [{h} x {h}]: {peak:.1f} GFLOP/s -> the round runs at {flops / seconds / 1e9 / peak:.0%} of it")


if __name__ == "__main__":
    main()
