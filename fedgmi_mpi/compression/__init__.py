from __future__ import annotations

from ..config import Config
from .base import Compressor
from .identity import Identity


def build(config: Config) -> Compressor:
    return {"none": Identity}[config.compression.name]()
