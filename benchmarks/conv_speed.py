"""Seconds per FedGMI training round for a group of clients, the convolutional VAE against the MLP
on the same 28x28 inputs; prints the figures and their ratio, asserts nothing.

  python benchmarks/conv_speed.py [--clients 8] [--components 4] [--samples 100] [--side 28]
                                  [--channels 32] [--repeats 2] [--device cpu] [--threads 1]

One round is what a rank does for one batched group in a training round after the warm-up: the
E-step (16 importance samples), proportion EM, personalised test accuracy on the test samples,
and 2 epochs of local Adam on the responsibility-weighted ELBO (the defaults of the config).
The images are random noise in [0, 1]: the arithmetic, not the fit, is measured.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedgmi_mpi import config as config_mod
from fedgmi_mpi.algorithms import build as build_algorithm
from fedgmi_mpi.algorithms.base import Broadcast, pack
from fedgmi_mpi.scenarios.base import ClientData, Scenario


def scenario(clients: int, components: int, samples: int, side: int) -> Scenario:
    rng = np.random.default_rng(0)
    pixels = side * side
    data = [ClientData(client_id=c, x_train=rng.uniform(0, 1, (samples, pixels)).astype(np.float32),
                       y_train=rng.integers(0, 10, samples), x_test=rng.uniform(0, 1, (samples // 2, pixels)).astype(np.float32),
                       y_test=rng.integers(0, 10, samples // 2)) for c in range(clients)]
    return Scenario(name="benchmark", clients=data, num_components=components, num_classes=10, input_dim=side * side,
                    metadata={"image_shape": (side, side)})


def seconds_per_round(architecture: str, args: argparse.Namespace, device: torch.device) -> tuple[float, int]:
    config = config_mod.load(None, [f"model.architecture={architecture}", f"model.channels={args.channels}",
                                    f"scenario.num_components={args.components}"])
    data = scenario(args.clients, args.components, args.samples, args.side)
    algorithm = build_algorithm(config, data, device)
    broadcast = Broadcast("train", 1, pack([np.array([0.0, 0.0, 1.0]), np.zeros((0, 0))]),  # after warm-up, untempered
                          model=algorithm.initial_model())

    def one_round() -> float:
        states = [algorithm.init_client(c) for c in data.clients]
        started = time.perf_counter()
        algorithm.group_update(broadcast, data.clients, states)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    one_round()  # warm-up: allocations, kernel selection
    return min(one_round() for _ in range(args.repeats)), algorithm.layout.per_component


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="clients in the group (G)")
    parser.add_argument("--components", type=int, default=4, help="K")
    parser.add_argument("--samples", type=int, default=100, help="training samples per client (and half as many test)")
    parser.add_argument("--side", type=int, default=28, help="images side x side")
    parser.add_argument("--channels", type=int, default=32, help="model.channels of the conv VAE")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (the best counts), after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as runtime.threads_per_rank)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"FedGMI training round, one group of G={args.clients} clients, K={args.components}, {args.samples} samples each, "
          f"{args.side}x{args.side} images, {device}, {args.threads} thread(s), best of {args.repeats}")
    results = {}
    for architecture in ("mlp", "conv"):
        seconds, size = seconds_per_round(architecture, args, device)
        results[architecture] = seconds
        print(f"  {architecture:5s} {size:8d} parameters per component   {seconds:8.3f} s/round")
    print(f"  conv / mlp: {results['conv'] / results['mlp']:.1f}x")


if __name__ == "__main__":
    main()
