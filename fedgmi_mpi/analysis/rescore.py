"""A log's saved model scored again by the evaluation round's own code: for logs written before
runs scored the seen clients' held-out test samples (``proportion_mae_heldout``,
``assignment_accuracy_heldout``). The scenario is rebuilt from the log's config, and the
evaluation noise comes from the same per-client streams as in the run, so a log that already has
the scores gets them back to the last digit (tests/test_analysis.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import algorithms, scenarios
from ..config import apply, from_mapping, validate
from ..errors import UserError
from .model import read_model
from .summary import summarize

GROUP = 32  # clients computed at once: bounds the memory on a scenario of thousands


def final_evaluation(path: str | Path, device: torch.device | str = "cpu",
                     settings: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(the summary of the saved model's evaluation round run again, config keys left out).
    ``settings``: config keys changed for the rescoring, e.g. ``{"algorithm.eval_uses_labels": True}``
    (settings of the evaluation: the saved model stays the run's)."""
    saved = read_model(path)
    if saved.kind != "vae_mixture":
        raise UserError(f"{saved.path}: rescoring needs FedGMI's mixture of VAEs (algorithm fedgmi or oracle)")
    ignored: list[str] = []  # keys of an older version's config, left out
    config = from_mapping(saved.config, ignored)
    for key, value in (settings or {}).items():
        apply(config, key, value)
    validate(config)
    scenario = scenarios.build(config)
    algorithm = algorithms.build(config, scenario, torch.device(device), saved.num_components)
    clients = list(scenario.clients)
    broadcast = algorithm.plan.evaluation(saved.round, saved.parameters)
    uploads = []
    with torch.no_grad():  # in groups, as a worker rank would: each client's numbers are its own in any group
        for start in range(0, len(clients), GROUP):
            group = clients[start: start + GROUP]
            uploads += algorithm.group_update(broadcast, group, [algorithm.init_client(c) for c in group])
    metrics = {name: np.stack([upload.metrics[name] for upload in uploads]) for name in uploads[0].metrics}
    return summarize(metrics, scenario), ignored
