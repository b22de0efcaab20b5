"""What compression costs in time, per client and round; prints ratios, asserts nothing.

  python benchmarks/codec_speed.py [--clients 40] [--bits 8,1,0.25]

On the default model (K = 4 VAEs, 216,424 parameters) and deltas shaped like FedGMI's (per-tensor
scales, heavy tails), times one client's upload through the uplink channel - serialise under the
cap, decode as the server would, update the error-feedback residual - for every method and
budget, against one default client's training update (E-step + M-step) measured in the same
process. Also times the server's broadcast (compress once, every rank decodes).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedgmi_mpi import compression
from fedgmi_mpi import config as config_mod
from fedgmi_mpi import scenarios
from fedgmi_mpi.algorithms import build as build_algorithm
from fedgmi_mpi.algorithms.base import Broadcast, ClientUpload, pack
from fedgmi_mpi.compression.channel import Downlink, Uplink


def synthetic_deltas(layout, clients: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.repeat(10.0 ** rng.uniform(-4, -2, len(layout.segments)), layout.segments)
    return [(rng.standard_t(4, size=(layout.rows, layout.row_size)) * scales).astype(np.float32)
            for _ in range(clients)]


def client_update_ms(config) -> float:
    scenario = scenarios.build(config)
    algorithm = build_algorithm(config, scenario, "cpu")
    client = scenario.clients[0]
    state = algorithm.init_client(client)
    broadcast = Broadcast("train", 1, pack([np.array([0.0, 0.0, 1.0]), np.zeros((0, 0))]),  # after warm-up, untempered
                          model=algorithm.initial_model())
    algorithm.client_update(broadcast, client, state)
    started = time.perf_counter()
    for _ in range(5):
        algorithm.client_update(broadcast, client, state)
    return (time.perf_counter() - started) / 5 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--bits", default="8,1,0.25")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = config_mod.load(None, [])
    algorithm = build_algorithm(config, scenarios.build(config), "cpu")
    layout = algorithm.model_layout()
    deltas = synthetic_deltas(layout, args.clients)
    masses = np.random.default_rng(1).dirichlet([0.4] * layout.rows, size=args.clients) * 100
    train_ms = client_update_ms(config)
    print(f"one default client's training update (E-step + M-step): {train_ms:.1f} ms")
    print(f"{'method':10s} {'bits':>5s} {'upload ms/client':>17s} {'vs update':>10s} {'broadcast ms':>13s}")
    for bits in [float(b) for b in args.bits.split(",")]:
        cap = int(np.ceil(bits * layout.parameters / 8))
        for method in ("hadamard", "topk", "qsgd", "randk", "fp16"):
            biased = compression.codec(method).biased
            codec = compression.codec(method, 8, unbiased=not biased)
            if Uplink(codec, layout, cap, 0).plan.row_min * layout.rows + 4 * layout.rows > cap:
                continue
            uplink = Uplink(codec, layout, cap, 0, select=True, threshold=0.02, error_feedback=biased)
            states = [uplink.init_client() for _ in deltas]
            started = time.perf_counter()
            for cid, (delta, mass) in enumerate(zip(deltas, masses)):
                uplink.send(ClientUpload(delta, mass, np.zeros(0)), states[cid], cid, 3)
            upload_ms = (time.perf_counter() - started) / len(deltas) * 1e3
            downlink = Downlink(compression.codec(method, 8, unbiased=False), layout,
                                cap + 5 + layout.control_bytes, 0, algorithm.initial_model())
            model = algorithm.initial_model() + deltas[0]
            started = time.perf_counter()
            for round_index in range(5):
                data = downlink.encode(Broadcast("train", round_index, np.zeros(2, np.float32), model=model))
                downlink.decode("train", round_index, data)
            broadcast_ms = (time.perf_counter() - started) / 5 * 1e3
            print(f"{method:10s} {bits:5g} {upload_ms:17.1f} {upload_ms / train_ms:9.2f}x {broadcast_ms:13.1f}")


if __name__ == "__main__":
    main()
