"""Deterministic random streams.

Every stream is derived from (seed, purpose, id) with numpy's SeedSequence, so a client's
randomness does not depend on which rank hosts it or on how many clients share that rank.
"""
from __future__ import annotations

import numpy as np
import torch

# Purposes keep streams for different uses independent even for the same client id.
SCENARIO = 1
CLIENT_TRAIN = 2
SERVER = 3
CLIENT_EVAL = 4
COMPRESSION = 5
COHORT = 6  # the server's draws of who takes part in a round
SELECTION = 7  # a client's split of its samples into halves when K is chosen from the data


def numpy_rng(seed: int, purpose: int, *ids: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, purpose, *ids])))


def torch_generator(seed: int, purpose: int, *ids: int, device: torch.device | str = "cpu") -> torch.Generator:
    seq = np.random.SeedSequence([seed, purpose, *ids])
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return gen
