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
