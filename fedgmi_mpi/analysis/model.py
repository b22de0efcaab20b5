"""The global model a log keeps in ``/model`` (plain datasets and a JSON description; no pickle),
rebuilt for inference and for drawing samples, on CPU and without MPI."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..models import DensityModel, from_description, vae
from .reader import open_log, resolve


@dataclass
class SavedModel:
    path: Path
    description: dict[str, Any]
    parameters: np.ndarray  # float32 [rows, row_size]
    control: np.ndarray  # float32: the evaluation round's control payload
    round: int  # communication round of the evaluation that used it
    train_round: int
    config: dict[str, Any]
    seed: int
    max_train: int  # the run's canonical padded sample counts (the largest client's)
    max_test: int
    matching: np.ndarray | None  # the run's final matching: learned component matched to true component t
    devices: tuple[str, ...] = ()  # the device of each rank (rank 0 first), from a finished log's summary

    @property
    def device_type(self) -> str | None:
        """``cuda`` or ``cpu``: where the run's clients were computed (None: not recorded, e.g. an
        unfinished or older log). An MPI run's server rank is on the CPU whatever its workers use."""
        if not self.devices:
            return None
        return "cuda" if any(device.startswith("cuda") for device in self.devices) else "cpu"

    @property
    def kind(self) -> str:
        return str(self.description.get("kind", "?"))

    @property
    def num_components(self) -> int:
        return int(self.description["num_components"])

    def vae(self, device: torch.device | str = "cpu") -> tuple[vae.Params, DensityModel]:
        """The K VAEs as parameters [1, K, ...] (a group of one) and the model (architecture and
        likelihood from the description; older logs: mlp, bernoulli), checked against this code's layout."""
        if self.kind != "vae_mixture":
            raise UserError(f"{self.path}: the saved model is a {self.kind!r} model (algorithm "
                            f"{self.description.get('algorithm')}); inference needs FedGMI's mixture of VAEs "
                            "(algorithm fedgmi or oracle)")
        d = self.description
        model = from_description(d)
        layout = model.layout
        stored = [(t["name"], tuple(t["shape"])) for t in d["tensors"]]
        if stored != list(zip(layout.names, layout.shapes)) or self.parameters.shape != (model.num_components,
                                                                                          layout.per_component):
            raise UserError(f"{self.path}: the saved model's layout does not match this version's VAE "
                            f"(stored {len(stored)} tensors, parameters {self.parameters.shape})")
        matrix = torch.as_tensor(self.parameters, device=device).unsqueeze(0)
        return layout.unflatten(matrix), model

    @torch.no_grad()
    def sample_images(self, per_component: int, seed: int = 0) -> np.ndarray:
        """[K, n, D] means of p(x | z) (sigmoid of the logits, or the Gaussian's means), z ~ N(0, I):
        what each inherent distribution looks like to its VAE."""
        params, model = self.vae()
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(1, 1, model.num_components, per_component, model.latent, generator=generator)
        return model.decode_mean(params, z)[0, 0].numpy()


def read_model(path: str | Path) -> SavedModel:
    """The model stored in a log; a log without one (older schema, or no evaluation round yet)
    raises UserError."""
    resolved = resolve(path)
    with open_log(resolved) as file:
        if "model" not in file:
            raise UserError(f"{resolved} holds no saved model (written before fedgmi saved models in the log, "
                            "or not a fedgmi log)")
        group = file["model"]
        for _ in range(50):  # a live run may be rewriting the model: read until its round vouches for it
            for name in ("round", "parameters", "control", "control_length", "train_round"):
                if file.swmr_mode:
                    group[name].refresh()
            round_index = int(group["round"][0])
            parameters = group["parameters"][()]
            length = int(group["control_length"][0])
            control = group["control"][:length]
            if file.swmr_mode:
                group["round"].refresh()
            if round_index >= 0 and int(group["round"][0]) == round_index:
                break
            if round_index < 0 and not np.isfinite(parameters).all():  # never written: no evaluation yet
                break
            time.sleep(0.1)
        if round_index < 0:
            raise UserError(f"{resolved} holds no model yet: no evaluation round has run")
        train_round = int(group["train_round"][0])
        description = json.loads(group.attrs["description"])
        config = json.loads(file.attrs.get("config", "{}"))
        seed = int(file.attrs.get("training_seed", file.attrs.get("seed", 0)))  # the evaluation noise's seed
        max_train = int(file["clients/num_train"][()].max())
        max_test = int(file["clients/num_test"][()].max())
        matching = None
        if "evaluate/summary/permutation" in file:  # the matching of the evaluation that used this model
            rows, rounds = file["evaluate/summary/permutation"], file["evaluate/round"]
            if file.swmr_mode:
                rows.refresh()
                rounds.refresh()
            same = np.flatnonzero(rounds[: len(rows)] == round_index)
            if len(same) and rows[same[-1]].min() >= 0:
                matching = rows[same[-1]].astype(np.int64)
        devices = tuple(json.loads(file.attrs.get("summary", "{}")).get("rank_device", ()))
    if not np.all(np.isfinite(parameters)):
        raise UserError(f"{resolved}: the saved model has non-finite parameters")
    return SavedModel(resolved, description, parameters, control, round_index, train_round, config, seed, max_train, max_test,
                      matching, devices)
