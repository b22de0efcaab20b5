"""``fedgmi watch LOG.h5``: follow a run while it writes its log (SWMR), until it ends.

Reads only the rounds' bookkeeping and the summary scores each time, never the clients'
proportions and likelihoods, by reopening the file under SWMR; when the run ends its
``.partial`` becomes ``LOG.h5`` and the watch prints the run's summary (``fedgmi analyze``) and returns."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from ..errors import UserError
from .reader import align_rows, open_log, resolve
from .tables import fmt


def snapshot(path: str | Path) -> dict[str, Any]:
    """Where the run stands: rounds done, phase, the latest scores, bytes and time so far."""
    resolved = resolve(path)
    with open_log(resolved) as file:
        if "rounds/phase" not in file:
            raise UserError(f"{resolved} is not a fedgmi run log")

        def dataset(name: str):
            node = file[name]
            if file.swmr_mode:
                node.refresh()
            return node

        status = int(dataset("status")[0])
        phases = json.loads(file["rounds/phase"].attrs["phases"])
        arrays = {f"rounds/{name}": dataset(f"rounds/{name}")[()]
                  for name in ("phase", "wall_time", "bytes_up", "bytes_down")}
        scored = [phase for phase in ("train", "evaluate") if f"{phase}/summary/proportion_mae" in file]
        for phase in scored:
            for name in ("round", "summary/proportion_mae", "summary/assignment_accuracy", "summary/accuracy"):
                if f"{phase}/{name}" in file:
                    arrays[f"{phase}/{name}"] = dataset(f"{phase}/{name}")[()]
        align_rows(arrays, ["rounds", *scored])  # a look mid-round may find some datasets a row ahead
        phase_rows, wall = arrays["rounds/phase"], arrays["rounds/wall_time"]
        rounds = len(phase_rows)
        config = json.loads(file.attrs.get("config", "{}"))
        out: dict[str, Any] = {
            "log": str(resolved), "complete": status == 1 and resolved.suffix != ".partial",
            "algorithm": str(file.attrs.get("algorithm", "?")), "rounds": rounds,
            "train_rounds": int((phase_rows == phases.index("train")).sum()) if "train" in phases else 0,
            "train_rounds_total": int(config.get("algorithm", {}).get("rounds", 0)),
            "phase": phases[phase_rows[-1]] if rounds else "starting",
            "elapsed_s": float(wall.sum()), "last_round_s": float(wall[-1]) if rounds else math.nan,
            "bytes_up": int(arrays["rounds/bytes_up"].sum()), "bytes_down": int(arrays["rounds/bytes_down"].sum()),
            "events": len(dataset("events")),
        }
        for phase in scored:
            if len(arrays[f"{phase}/round"]):
                scores = {name: float(arrays[f"{phase}/summary/{name}"][-1]) for name in
                          ("proportion_mae", "assignment_accuracy", "accuracy") if f"{phase}/summary/{name}" in arrays}
                out[phase] = {"round": int(arrays[f"{phase}/round"][-1]), **scores}
    return out


def format_snapshot(state: dict[str, Any]) -> str:
    total = max(state["train_rounds_total"], 1)
    done = int(20 * min(state["train_rounds"], total) / total)
    text = (f"[{state['phase']:8s}] [{'#' * done}{'.' * (20 - done)}] train {state['train_rounds']}/"
            f"{state['train_rounds_total']}  round {state['rounds']}  {state['elapsed_s']:.0f}s")
    for phase, label in (("train", "last train"), ("evaluate", "last evaluation")):
        scores = state.get(phase)
        if scores:
            text += f"  | {label} (round {scores['round']}): " + "  ".join(
                f"{short} {fmt(scores.get(name))}" for name, short in
                (("proportion_mae", "MAE"), ("assignment_accuracy", "assign"), ("accuracy", "acc")))
    return text


def watch(path: str | Path, interval: float, echo: Callable[[str], None], stale_after: float = 300.0,
          timeout: float | None = None, appear_within: float = 120.0, give_up_after: float = 1800.0) -> dict[str, Any]:
    """Print a line whenever the run moves on; return its last snapshot once it has ended (or
    after ``timeout`` seconds). Waits ``appear_within`` seconds for the log to appear. Says so
    once if nothing has moved for ``stale_after`` seconds (a run that died leaves its ``.partial``
    as it was) and gives up, raising UserError, after ``give_up_after`` seconds without a new round."""
    started = last_change = time.monotonic()
    shown, warned = None, False
    while True:
        try:
            state = snapshot(path)
        except UserError:
            # A job just launched has not created its log yet, and between the run's rename of
            # .partial and our look neither name may be there for a moment: wait for it a while.
            if time.monotonic() - started > appear_within:
                raise
            time.sleep(min(interval, 0.5))
            continue
        key = (state["rounds"], state["complete"])
        if key != shown:
            echo(format_snapshot(state))
            shown, last_change, warned = key, time.monotonic(), False
        if state["complete"]:
            return state
        now = time.monotonic()
        if not warned and now - last_change > stale_after:
            echo(f"note: no new round for {now - last_change:.0f} s; the run may have died (its .partial stays readable)")
            warned = True
        if now - last_change > give_up_after:
            raise UserError(f"no new round in {state['log']} for {now - last_change:.0f} s: the run seems to have died "
                            f"(its log stays readable: fedgmi analyze {state['log']})")
        if timeout is not None and now - started > timeout:
            return state
        time.sleep(interval)
