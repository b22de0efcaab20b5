"""The client-to-server channel. A compressor turns a client's float32 model delta into what the
server would decode, and says how many bytes it would have put on the wire. It runs between the
algorithm's client_update and the rank's sum, so neither the algorithm nor the runtime knows
which compressor is in use."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Compressor(Protocol):
    name: str

    def init_client(self, client_id: int) -> Any: ...

    def roundtrip(self, delta: np.ndarray, client_state: Any, round_index: int, client_id: int) -> tuple[np.ndarray, int]:
        """(decoded delta as the server sees it, bytes sent)."""
        ...
