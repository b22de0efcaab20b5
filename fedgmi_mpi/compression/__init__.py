"""The communication budget: which codec each direction uses, the byte caps, and the channels.

``compression.uplink_bits`` / ``downlink_bits`` are bits per parameter of the whole model per
training round; 32 means dense (the float32 model, weights on top, no cap). Below 32 the cap is
``ceil(bits * model_parameters / 8)`` bytes per client and round, everything included. A method of
``auto`` takes the first of AUTO_ORDER that can carry every row of the model within the cap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..algorithms.base import Algorithm, ModelLayout
from ..config import Config
from ..errors import UserError
from .base import Codec
from .casts import BFloat16, Float16, Float32
from .channel import DOWNLINK_HEADER, Downlink, Plan, Segments, Uplink, uplink_header_bytes
from .hadamard import RotationQuantiser
from .qsgd import StochasticQuantiser
from .randk import RandK
from .topk import TopK

DENSE_BITS = 32.0
AUTO_ORDER = ("fp16", "hadamard")


# One line per method; the names are checked by config.validate (config.COMPRESSION_METHODS).
CODECS = {
    "none": lambda value_bits, unbiased: Float32(unbiased),
    "fp16": lambda value_bits, unbiased: Float16(unbiased),
    "bf16": lambda value_bits, unbiased: BFloat16(unbiased),
    "qsgd": lambda value_bits, unbiased: StochasticQuantiser(unbiased=unbiased),
    "hadamard": lambda value_bits, unbiased: RotationQuantiser(unbiased),
    "topk": TopK,
    "randk": RandK,
}


def codec(method: str, value_bits: int = 8, unbiased: bool = True) -> Codec:
    """``unbiased``: the mode (see compression.base); error feedback and the downlink need False."""
    return CODECS[method](value_bits, unbiased)


def _fixed_rate(chosen: Codec, layout: ModelLayout) -> bool:
    """Casts send a row whole or not at all: under a cap they must carry every row, or they would
    silently drop components."""
    return chosen.min_bytes(layout.row_size) == chosen.max_bytes(layout.row_size)


def _needed(chosen: Codec, header: int, layout: ModelLayout, all_rows: bool) -> int:
    """The smallest cap with which the codec sends what it must: every row (the downlink; casts,
    which cannot shrink a row) or one row (the uplink drops its lightest rows when it must)."""
    row_min = Plan(chosen, Segments.of(layout, whole=False)).row_min
    return header + (layout.rows if all_rows else 1) * row_min


def _resolve(direction: str, method: str, bits: float, value_bits: int, header: int, layout: ModelLayout,
             all_rows: bool, unbiased: bool) -> tuple[Codec, int | None]:
    """The codec and cap for one direction, or a UserError naming the smallest budget that works."""
    key = f"compression.{direction}"
    if bits >= DENSE_BITS and method in ("auto", "none"):
        return Float32(), None
    if method == "none":
        raise UserError(f"{key}=none sends the float32 model: it needs {direction}_bits=32, got {bits:g}")
    cap = math.ceil(bits * layout.parameters / 8)  # a named method at 32 bits is held to 32 bits, all included
    candidates = [codec(m, value_bits, unbiased) for m in (AUTO_ORDER if method == "auto" else (method,))]
    whole = [all_rows or _fixed_rate(c, layout) for c in candidates]
    for chosen, must_carry_all in zip(candidates, whole):
        if _needed(chosen, header, layout, must_carry_all) <= cap:
            return chosen, cap
    needed = min(_needed(c, header, layout, w) for c, w in zip(candidates, whole))
    smallest = math.ceil(needed * 8 / layout.parameters * 1e4) / 1e4  # rounded up: this many bits always fit
    if direction == "downlink":
        what = "the control values and every component"
    else:
        what = "the masses and " + ("every component whole" if all(whole) else "one value per tensor of one component")
    raise UserError(f"compression.{direction}_bits={bits:g} is too small for {direction}={method} to send {what} "
                    f"of this model ({layout.parameters} parameters): the smallest budget that works is {smallest:g}")


@dataclass
class Channels:
    uplink: Uplink
    downlink: Downlink
    attributes: dict[str, Any]  # for the log's root attributes


def build(config: Config, algorithm: Algorithm) -> Channels:
    """Both channels for a run; raises UserError (before any work) for a budget that cannot work."""
    c = config.compression
    layout = algorithm.model_layout()
    up_header = uplink_header_bytes(layout, capped=True)
    up_codec, up_cap = _resolve("uplink", c.uplink, c.uplink_bits, c.value_bits, up_header, layout, all_rows=False,
                                unbiased=True)
    feedback = up_codec.biased if c.error_feedback == "auto" else c.error_feedback == "on"
    if feedback:  # a fed-back error must shrink every round: the contractive mode
        up_codec = codec(up_codec.name, c.value_bits, unbiased=False)
    down_header = DOWNLINK_HEADER + layout.control_bytes
    # The replica of what clients hold feeds the downlink's error back every round: contractive too.
    down_codec, down_cap = _resolve("downlink", c.downlink, c.downlink_bits, c.value_bits, down_header, layout,
                                    all_rows=True, unbiased=False)
    uplink = Uplink(up_codec, layout, up_cap, config.run_seed, select=c.select_components,
                    threshold=c.selection_threshold, error_feedback=feedback, residual_dtype=c.residual_dtype)
    downlink = Downlink(down_codec, layout, down_cap, config.run_seed, algorithm.initial_model())

    def detail(chosen: Codec, cap: int | None, header: int) -> str:
        if cap is None:
            return "dense float32"
        plan = Plan(chosen, Segments.of(layout, whole=False))
        _, rows = plan.rows(cap - header, np.ones(layout.rows), proportional=False)
        largest = int(np.argmax(plan.segments.sizes))
        budget = int(plan.segment_budgets(int(rows[0]))[largest])
        return (f"{chosen.describe(plan.segments.sizes[largest], budget)} on the largest tensor when all "
                f"{layout.rows} rows share the cap equally")

    attributes = {
        "model_parameters": layout.parameters,
        "uplink_bits": c.uplink_bits, "downlink_bits": c.downlink_bits,
        "uplink_method": up_codec.name, "downlink_method": down_codec.name,
        "uplink_method_detail": detail(up_codec, up_cap, up_header),
        "downlink_method_detail": detail(down_codec, down_cap, down_header),
        "uplink_cap_bytes": -1 if up_cap is None else up_cap,
        "downlink_cap_bytes": -1 if down_cap is None else down_cap,
        "error_feedback": bool(feedback), "select_components": bool(uplink.select),
        "selection_threshold": c.selection_threshold,
    }
    return Channels(uplink, downlink, attributes)
