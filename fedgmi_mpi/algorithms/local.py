"""Local training: every client trains its own classifier on its own samples and never
communicates (no model goes down or up). Its model is private state: it stays on the client's home
rank (4 bytes x 26,122 parameters by default) and is never shared or logged."""
from __future__ import annotations

import numpy as np
import torch

from ..scenarios.base import ClientData
from .base import Broadcast, ClientUpload, UploadLayout, no_upload
from .classifiers import ClassifierBaseline, ServerState


class Local(ClassifierBaseline):
    name = "local"

    def client_private_spec(self) -> dict[str, tuple[int, ...]]:
        return {"params": (self.layout.per_component,)}

    def init_private(self, client: ClientData) -> dict[str, np.ndarray]:
        # Every client starts from the same seeded initial model: built locally, no bytes.
        if not hasattr(self, "_initial"):
            self._initial = self.initial_model()[0]
        return {"params": self._initial.copy()}

    def configure(self, state: ServerState) -> Broadcast | None:
        broadcast = super().configure(state)
        if broadcast is not None:
            broadcast.model = None  # nothing travels
        return broadcast

    def upload_layout(self, broadcast: Broadcast) -> UploadLayout:
        return UploadLayout(0, 0, 0)

    def start(self, broadcast: Broadcast, states: list[dict[str, np.ndarray]]) -> torch.Tensor:
        own = np.stack([s["params"] for s in states])
        return torch.as_tensor(own, device=self.device).unsqueeze(1)  # [G, 1, P]

    def uploads(self, deltas, weights, clients, states, trained, metrics, params, batch, resp) -> list[ClientUpload]:
        for state, own in zip(states, trained[:, 0].cpu().numpy()):
            state["params"][:] = own
        return [no_upload(m) for m in metrics]

