"""Rank 0's view of the run: writes each round to the log, prints progress, events and the end."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import numpy as np

from ..analysis.summary import summarize
from ..logs.checkpoint import disk_error
from ..logs.hdf5 import RunLog, partial_path
from ..scenarios.base import Scenario
from . import faults
from .loop import RoundRecord

SCORED_PHASES = ("train", "evaluate")


class LogWriteError(OSError):
    """The disk refused the log (full, gone read-only): the run stops; its checkpoint is intact."""


class Observer:
    def __init__(self, log: RunLog, scenario: Scenario, total_train_rounds: int, stream: TextIO = sys.stderr,
                 quiet: bool = False):
        self.log = log
        self.scenario = scenario
        self.total = total_train_rounds
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()
        self.started = time.perf_counter()
        self.train_rounds = 0
        self.rounds = 0
        self.last_phase = ""
        self.last_evaluation: dict[str, Any] | None = None
        self.bytes_down = 0.0
        self.bytes_up = 0.0
        self.bytes_catch_up = 0.0
        self.train_bytes_down = 0.0
        self.train_bytes_up = 0.0

    TOTALS = ("train_rounds", "rounds", "last_phase", "last_evaluation", "bytes_down", "bytes_up", "bytes_catch_up",
              "train_bytes_down", "train_bytes_up")

    def state(self) -> dict[str, Any]:
        """The running totals, for a checkpoint."""
        return {**{name: getattr(self, name) for name in self.TOTALS}, "elapsed": time.perf_counter() - self.started}

    def restore(self, state: dict[str, Any]) -> None:
        for name in self.TOTALS:
            setattr(self, name, state[name])
        self.started = time.perf_counter() - state["elapsed"]

    def __call__(self, record: RoundRecord) -> None:
        try:
            self._record(record)
        except (OSError, RuntimeError) as exc:
            reason = disk_error(exc)
            if reason is None:
                raise
            raise LogWriteError(f"cannot write the log {partial_path(self.log.out)}: {reason}") from exc

    def _record(self, record: RoundRecord) -> None:
        phase = record.broadcast.phase
        metrics = record.client_metrics
        summary = summarize(metrics, self.scenario) if phase in SCORED_PHASES and "confusion" in metrics else None
        faults.before_log_write(record.broadcast.round)
        self.log.write_round(phase, record.broadcast.round, record.wall_time, record.bytes_down, record.bytes_up,
                             metrics, record.aggregated.metrics, summary, record.downlink_cap, record.uplink_cap,
                             record.mpi_bytes, record.participants, record.catch_up, record.compute_time)
        self.rounds += 1
        self.bytes_down += float(np.nansum(record.bytes_down))
        self.bytes_up += float(np.nansum(record.bytes_up))
        if record.catch_up is not None:
            self.bytes_catch_up += float(record.catch_up.sum())
        if phase == "train":
            self.train_bytes_down += float(np.nansum(record.bytes_down))
            self.train_bytes_up += float(np.nansum(record.bytes_up))
        model = record.broadcast.model
        if phase == "evaluate" and model is not None and "model" in self.log.file:
            payload = record.broadcast.payload
            if len(payload) > len(self.log.file["model/control"]):  # the declared maximum was wrong: say so
                self.log.event(f"round {record.broadcast.round}: the control payload ({len(payload)} values) exceeds "
                               f"/model/control; the saved model has none")
                payload = payload[:0]
            self.log.save_model(record.broadcast.round, self.train_rounds, model, payload)
        for event in record.aggregated.events:
            self.log.event(event)
            self._line(f"warning: {event}")
        if phase == "train":
            self.train_rounds += 1
        elif phase == "evaluate":
            self.last_evaluation = summary
        self._progress(phase, record, summary)
        self.last_phase = phase

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def _progress(self, phase: str, record: RoundRecord, summary: dict[str, Any] | None) -> None:
        if self.quiet:
            return
        done = int(20 * self.train_rounds / max(self.total, 1))
        bar = "#" * done + "." * (20 - done)
        text = f"[{phase:8s}] [{bar}] train {self.train_rounds}/{self.total}  round {record.broadcast.round:4d}"
        if summary is not None:
            text += (f"  MAE {summary['proportion_mae']:.4f}  assign {summary['assignment_accuracy']:.3f}"
                     f"  acc {summary['accuracy']:.3f}")
        text += f"  {record.wall_time:.2f}s/round  {time.perf_counter() - self.started:.0f}s"
        if phase == "evaluate":
            self._line(text + "  (evaluation: inference only, proportions from scratch)")
        elif self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif phase != self.last_phase or (phase == "train" and self.train_rounds % 10 == 0):
            self._line(text)

    def closing_summary(self) -> dict[str, Any]:
        final = dict(self.last_evaluation or {})
        final.update(
            wall_time_s=time.perf_counter() - self.started, rounds=self.rounds, train_rounds=self.train_rounds,
            bytes_down_total=self.bytes_down, bytes_up_total=self.bytes_up,
            bytes_down_train=self.train_bytes_down, bytes_up_train=self.train_bytes_up,
            bytes_catch_up_total=self.bytes_catch_up,
        )
        return final


def format_summary(summary: dict[str, Any]) -> str:
    def fmt(name: str, digits: int = 4) -> str:
        value = summary.get(name, float("nan"))
        return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"

    lines = [
        "summary (final evaluation; learned components matched to true ones by the Hungarian method):",
        f"  proportion MAE vs actual counts   seen {fmt('proportion_mae')}   unseen {fmt('proportion_mae_unseen')}",
        f"  sample-assignment accuracy        seen {fmt('assignment_accuracy')}   unseen {fmt('assignment_accuracy_unseen')}",
        f"  personalised test accuracy        seen {fmt('accuracy')}   unseen {fmt('accuracy_unseen')}",
        *([f"  held out (seen clients' test samples, E-step alone): proportion MAE "
           f"{fmt('proportion_mae_heldout')}, assignment {fmt('assignment_accuracy_heldout')}"]
          if not np.isnan(summary.get("proportion_mae_heldout", np.nan)) else []),
        f"  rounds {summary['rounds']} ({summary['train_rounds']} training)   wall time {summary['wall_time_s']:.1f} s   "
        f"bytes down {summary['bytes_down_total'] / 2**20:.1f} MiB, up {summary['bytes_up_total'] / 2**20:.1f} MiB "
        f"(training rounds {summary['bytes_down_train'] / 2**20:.1f} / {summary['bytes_up_train'] / 2**20:.1f})"
        + (f", catch-up down {summary['bytes_catch_up_total'] / 2**20:.1f} MiB" if summary.get("bytes_catch_up_total") else ""),
    ]
    if not np.isnan(summary.get("responsibility_mad", np.nan)):
        lines.append(f"  responsibilities vs exact ones      mean abs. difference seen {fmt('responsibility_mad')}   "
                     f"unseen {fmt('responsibility_mad_unseen')}; argmax agrees seen {fmt('responsibility_agreement')}   "
                     f"unseen {fmt('responsibility_agreement_unseen')}")
    if "rank_cpu_s" in summary:
        shares = ", ".join(f"{cpu / max(wall, 1e-9):.0%}" for wall, cpu in zip(summary["rank_wall_s"], summary["rank_cpu_s"]))
        lines.append(f"  CPU busy per rank (rank 0 = server) {shares}")
    if "rank_peak_mb" in summary:
        lines.append(f"  peak memory per rank (MiB)          {', '.join(f'{m:.0f}' for m in summary['rank_peak_mb'])}")
    if any(device != "cpu" for device in summary.get("rank_device", [])):
        lines.append(f"  device per rank                     {', '.join(summary['rank_device'])}")
        lines.append(f"  peak GPU memory per rank (MiB)      "
                     f"{', '.join(f'{m:.0f}' for m in summary['rank_gpu_peak_mb'])}")
    return "\n".join(lines)
