"""Pieces every algorithm's rounds share: who takes part when, and a group's samples on the device."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import rng as rngs
from ..config import AlgorithmConfig, Config
from ..scenarios.base import ClientData, Scenario
from .base import Broadcast, pack


class RoundPlan:
    """The schedule of training and evaluation rounds, and the clients in each: the cohort of a
    training round is drawn from the server's own stream for that round (every seen client by
    default); evaluation rounds involve every client, or a fixed draw of ``eval_clients``."""

    def __init__(self, cfg: AlgorithmConfig, scenario: Scenario, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.seen = np.array([c.client_id for c in scenario.clients if c.seen], dtype=np.int64)
        self.everyone = np.arange(len(scenario.clients), dtype=np.int64)
        self.evaluated = self.everyone
        if cfg.eval_clients and cfg.eval_clients < len(self.everyone):
            pick = rngs.numpy_rng(seed, rngs.COHORT, 0).choice(len(self.everyone), cfg.eval_clients, replace=False)
            self.evaluated = np.sort(self.everyone[pick])

    def cohort(self, train_round: int) -> np.ndarray:
        size = self.cfg.clients_per_round
        if not size or size >= len(self.seen):
            return self.seen
        return np.sort(rngs.numpy_rng(self.seed, rngs.COHORT, 1, train_round).choice(self.seen, size, replace=False))

    def next_phase(self, train_round: int, last_eval_train_round: int) -> str | None:
        """"evaluate", "train", or None when the run is over."""
        due = self.cfg.eval_every > 0 and train_round > 0 and train_round % self.cfg.eval_every == 0
        at_end = train_round >= self.cfg.rounds
        if (due or at_end) and last_eval_train_round != train_round:
            return "evaluate"
        return None if at_end else "train"

    def evaluation(self, round_index: int, model: np.ndarray | None) -> Broadcast:
        """An evaluation round: inference only on the model, for the evaluated clients."""
        return Broadcast("evaluate", round_index, pack([]), model=model, evaluation_only=True, cohort=self.evaluated)


class GroupAlgorithmBase:
    """What every algorithm here sets up: its config, the round plan, and the canonical padded
    sizes - every client's samples are padded to the largest client's, so a client's arithmetic
    is the same whichever group (and rank) computes it - and the one-client path as a group of one."""

    def __init__(self, config: Config, scenario: Scenario, device: torch.device | str = "cpu",
                 num_components: int | None = None):
        self.config = config
        self.cfg = config.algorithm
        self.seed = config.run_seed
        self.device = torch.device(device)
        # the components the algorithm fits (``algorithm.num_components``) and the truth's, which
        # scores them; the same unless the user (or the component selection) says otherwise
        self.num_components = num_components or scenario.num_components
        self.true_components = scenario.num_components
        self.plan = RoundPlan(self.cfg, scenario, self.seed)
        self.max_train = max(c.num_train for c in scenario.clients)
        self.max_test = max(len(c.x_test) for c in scenario.clients)
        self.input_dim = scenario.input_dim
        self.num_classes = scenario.num_classes

    model_kind = "stacked_networks"

    def model_description(self) -> dict:
        """What the log stores beside the model's parameters so a reader can rebuild it without
        this code's objects: the kind of model, the data's shape, each row's named tensors."""
        layout = self.layout
        return {"kind": self.model_kind, "algorithm": self.name, "input_dim": self.input_dim,
                "num_classes": self.num_classes, "num_components": self.num_components,
                "hidden": self.config.model.hidden, "latent": self.config.model.latent,
                "layers": [list(layer) for layer in layout.layers],
                "tensors": [{"name": name, "shape": list(shape)} for name, shape in zip(layout.names, layout.shapes)]}

    def client_update(self, broadcast, client: ClientData, state: dict[str, np.ndarray]):
        return self.group_update(broadcast, [client], [state])[0]


def client_generators(seed: int, clients: list[ClientData], purpose: int, round_index: int,
                      device: torch.device) -> list[torch.Generator]:
    """Each client's own stream for this round: its numbers do not depend on its group or rank."""
    return [rngs.torch_generator(seed, purpose, c.client_id, round_index, device=device) for c in clients]


@dataclass
class Batch:
    """A group's samples on the device, each client padded to the canonical sizes; masks say
    which rows are real."""

    x: torch.Tensor  # [G, N, D]
    y: torch.Tensor  # [G, N]
    mask: torch.Tensor  # [G, N] bool
    counts: torch.Tensor  # [G]
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_mask: torch.Tensor
    test_counts: torch.Tensor

    @classmethod
    def of(cls, clients: list[ClientData], max_train: int, max_test: int, device: torch.device) -> "Batch":
        def pad(arrays: list[np.ndarray], length: int, dtype) -> torch.Tensor:
            out = np.zeros((len(arrays), length, *arrays[0].shape[1:]), dtype=dtype)
            for g, a in enumerate(arrays):
                out[g, : len(a)] = a
            return torch.from_numpy(out).to(device)

        def mask(counts: list[int], length: int) -> torch.Tensor:
            return (torch.arange(length)[None, :] < torch.tensor(counts)[:, None]).to(device)

        train, test = [c.num_train for c in clients], [len(c.x_test) for c in clients]
        return cls(
            x=pad([c.x_train for c in clients], max_train, np.float32), y=pad([c.y_train for c in clients], max_train, np.int64),
            mask=mask(train, max_train), counts=torch.tensor(train, device=device),
            x_test=pad([c.x_test for c in clients], max_test, np.float32),
            y_test=pad([c.y_test for c in clients], max_test, np.int64),
            test_mask=mask(test, max_test), test_counts=torch.tensor(test, device=device),
        )
