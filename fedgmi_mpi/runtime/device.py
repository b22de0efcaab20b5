"""Which torch device a rank computes on."""
from __future__ import annotations

import torch

from ..errors import UserError


def choose_device(requested: str, local_rank: int) -> torch.device:
    """``auto``: cuda:(local_rank mod #GPUs) when CUDA is present, else CPU. ``cuda``: the same
    but an error without a GPU. ``cuda:N`` and ``cpu`` are taken as given."""
    if requested == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if requested == "auto":
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}") if available else torch.device("cpu")
    if not available:
        raise UserError(f"runtime.device={requested} but torch sees no CUDA device (use auto or cpu)")
    if requested == "cuda":
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    index = requested.split(":", 1)[1]
    if not index.isdigit() or int(index) >= torch.cuda.device_count():
        raise UserError(f"runtime.device={requested}: this node has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(requested)


# On a CPU a group's activations should stay near the caches: beyond about this much a bigger
# group buys nothing (benchmarks/group_speed.py: the default model peaks at 4-8 clients a group, a
# small one at 32). A GPU takes as many clients as half its free memory holds.
CPU_GROUP_BYTES = 256 * 2**20
CPU_GROUP_MAX = 64


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2**30


def group_size(requested: int, algorithm: object, device: torch.device) -> int:
    """``runtime.group_size`` when given; else from the algorithm's own estimate of a client's peak
    memory in a group: as many clients as half the free memory holds, and on a CPU no more than
    CPU_GROUP_BYTES of activations."""
    if requested:
        return requested
    per_client = max(1, getattr(algorithm, "memory_per_client", lambda: 0)())
    fits = free_memory(device) // 2 // per_client
    if device.type == "cpu":
        fits = min(fits, CPU_GROUP_BYTES // per_client, CPU_GROUP_MAX)
    return int(max(1, min(fits, 8192)))
