"""Reading and scoring runs. ``from fedgmi_mpi.analysis import load; run = load("run.h5")``
gives a run's rounds, scores, clients and components as pandas DataFrames (see ``reader.py``);
``read_model`` the saved global model; ``infer_clients`` inference for new clients.

The runtime imports only ``metrics`` and ``summary`` from here, so a run never imports pandas:
the rest is loaded on first use.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"load": "reader", "Run": "reader", "read_model": "model", "SavedModel": "model", "infer_clients": "infer",
         "headline": "tables", "comparison": "tables", "write_report": "report", "snapshot": "watch"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
