"""Read a run log into arrays and pandas DataFrames: ``run = load("run.h5")``.

Reads logs of every algorithm, finished (``run.h5``) or not (``run.h5.partial``: a run still going,
read under SWMR, or one that died). Learned components are matched to true ones by the Hungarian
method on each scored round's pooled confusion of the seen clients (the matching the run itself
logged); every metric of that round uses that one matching, and ``run.matching`` is the final one.

What a Run holds (C clients, K components; proportions columns are in *true* component order
after matching, ``t0..t{K-1}``, or in learned order when there is no truth):
  rounds      one row per communication round: phase, train_round, wall and compute time, bytes
  scores      one row per scored round (train and evaluate phases): proportion MAE/RMSE/max error
              against the actual counts and the Dirichlet draw, assignment accuracy, adjusted Rand
              index, accuracy mean and 10th percentile, held-out log-likelihoods; seen and unseen
  clients     one row per client at the final evaluation: its scores and proportions
  components  one row per component at the final evaluation: the matching, held-out
              log-likelihood, assignment recall and precision, mean proportions
  arrays      the raw datasets by path ("evaluate/proportions", "truth/component_counts", ...)
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ..errors import UserError
from .metrics import (adjusted_rand_index, aligned, assignment_accuracy, heldout_scores, in_true_order, match_components,
                      proportion_errors, responsibility_agreement)

SCORED_PHASES = ("train", "evaluate")


def resolve(path: str | Path) -> Path:
    """The log itself, or its ``.partial`` while the run goes on (or after it died)."""
    path = Path(path)
    if path.is_file():
        return path
    partial = path.with_name(path.name + ".partial")
    if partial.is_file():
        return partial
    raise UserError(f"no log at {path}" + ("" if path.suffix == ".partial" else " (nor a .partial beside it)"))


def open_log(path: Path) -> h5py.File:
    """Open read-only; under SWMR first so a file a run is writing (or left behind) opens too. A
    ``.partial`` is only ever opened under SWMR (a few tries while the writer is mid-flush): a
    plain reader must not hold a file a run is still writing."""
    for attempt in range(5 if path.suffix == ".partial" else 1):
        try:
            return h5py.File(path, "r", libver="latest", swmr=True)
        except OSError as exc:
            if path.suffix == ".partial" and attempt == 4:
                raise UserError(f"{path} cannot be read under SWMR: {exc}") from None
            time.sleep(0.2 * (path.suffix == ".partial"))
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 log: {exc}") from None


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_arrays(file: h5py.File) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            node.refresh() if file.swmr_mode else None
            arrays[name] = node[()]

    file.visititems(visit)
    return arrays


def align_rows(arrays: dict[str, np.ndarray], groups: list[str]) -> None:
    """A run that is writing flushes a round dataset by dataset: a reader may see one more row in
    some than in others. Keep the rows every dataset of a group has."""
    for group in groups:
        names = [name for name in arrays if name.startswith(group + "/") and arrays[name].ndim >= 1]
        if names:
            rows = min(len(arrays[name]) for name in names)
            for name in names:
                arrays[name] = arrays[name][:rows]


@dataclass
class Run:
    path: Path
    status: str  # "complete", or "incomplete" (a .partial log: the run is going on, or died)
    attrs: dict[str, Any]
    config: dict[str, Any]
    algorithm: str
    seed: int
    budget: str
    num_components: int
    seen: np.ndarray  # [C] bool
    has_truth: bool
    rounds: pd.DataFrame
    scores: pd.DataFrame
    clients: pd.DataFrame
    components: pd.DataFrame
    matching: np.ndarray | None  # learned component matched to true component t, final evaluation
    confusion: np.ndarray | None  # [true, learned] pooled over the seen clients, final evaluation
    events: list[str]
    arrays: dict[str, np.ndarray] = field(repr=False)
    final_phase: str = "evaluate"

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".partial")

    def final(self) -> pd.Series | None:
        """The scores of the final evaluation (the last scored round if there was none)."""
        rows = self.scores[self.scores.phase == self.final_phase]
        return None if rows.empty else rows.iloc[-1]

    def best(self) -> pd.Series | None:
        """The evaluation round with the lowest proportion MAE (highest accuracy without truth)."""
        rows = self.scores[self.scores.phase == self.final_phase]
        if rows.empty:
            return None
        if rows.proportion_mae.notna().any():
            return rows.loc[rows.proportion_mae.idxmin()]
        return rows.loc[rows.accuracy.idxmax()] if rows.accuracy.notna().any() else rows.iloc[-1]

    def proportions(self, phase: str = "evaluate", row: int = -1) -> np.ndarray:
        """[C, K] estimated proportions of one scored row, columns in true-component order (NaN for
        a true component no learned one matches; learned components left over are not shown)."""
        perm = self._permutation(phase, row)
        return _by_true(self.arrays[f"{phase}/proportions"][row], perm)

    def _permutation(self, phase: str, row: int) -> np.ndarray:
        perm = self.arrays.get(f"{phase}/summary/permutation")
        if perm is not None and len(perm) and perm[row].max() >= 0:
            return perm[row].astype(np.int64)
        return np.arange(self.num_components)


def _budget(attrs: dict[str, Any]) -> str:
    up, down = attrs.get("uplink_bits"), attrs.get("downlink_bits")
    if up is None or (float(up) >= 32 and float(down) >= 32):
        return "dense"
    parts = []
    if float(up) < 32:
        parts.append(f"up {float(up):g} bit")
    if float(down) < 32:
        parts.append(f"down {float(down):g} bit")
    return ", ".join(parts)


def _rounds_frame(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    phase_index = arrays["rounds/phase"].astype(int)
    phases = arrays["_phases"]
    names = [phases[i] for i in phase_index]
    frame = pd.DataFrame({"round": np.arange(len(names)), "phase": names})
    frame["train_round"] = np.cumsum([n == "train" for n in names])
    for column in ("wall_time", "compute_time", "downlink_cap", "uplink_cap", "mpi_broadcast_bytes",
                   "mpi_reduce_bytes", "mpi_gather_bytes"):
        if f"rounds/{column}" in arrays:
            frame[column] = arrays[f"rounds/{column}"][: len(frame)]
    for column in ("bytes_down", "bytes_up", "bytes_catch_up"):
        if f"rounds/{column}" in arrays:
            per_client = arrays[f"rounds/{column}"][: len(frame)]
            frame[column] = per_client.sum(1)
            frame[f"{column}_max_client"] = per_client.max(1) if per_client.size else 0
    if "rounds/participated" in arrays:
        frame["participants"] = arrays["rounds/participated"][: len(frame)].sum(1)
    frame["elapsed"] = frame.wall_time.cumsum() if "wall_time" in frame else np.nan
    frame["bytes_up_cumulative"] = frame.bytes_up.cumsum()
    frame["bytes_down_cumulative"] = frame.bytes_down.cumsum()
    return frame


@dataclass
class _Truth:
    actual: np.ndarray | None  # [C, K] proportions of the actual training samples
    dirichlet: np.ndarray | None  # [C, K]


def _row_scores(arrays: dict[str, np.ndarray], phase: str, row: int, seen: np.ndarray, truth: _Truth,
                k: int) -> tuple[dict[str, float], np.ndarray | None]:
    """Scores of one scored row and its matching (None without truth or proportions)."""
    accuracy = arrays[f"{phase}/accuracy"][row]
    reported = ~np.isnan(accuracy)
    out: dict[str, float] = {"clients_reported": int(reported.sum())}
    proportions = arrays.get(f"{phase}/proportions")
    proportions = None if proportions is None else proportions[row]
    confusion = arrays.get(f"{phase}/confusion")
    confusion = None if confusion is None else confusion[row]
    has_props = proportions is not None and not np.isnan(proportions[seen & reported]).all()
    perm = None
    if has_props and confusion is not None and truth.actual is not None and (seen & reported).any():
        logged = arrays.get(f"{phase}/summary/permutation")
        perm = logged[row].astype(np.int64) if logged is not None and logged[row].min() >= 0 else None
        if perm is None:
            perm = match_components(confusion[seen & reported].sum(0))
    for suffix, mask in (("", seen & reported), ("_unseen", ~seen & reported)):
        values = accuracy[mask]
        out["accuracy" + suffix] = float(values.mean()) if values.size else np.nan
        out["accuracy_p10" + suffix] = float(np.percentile(values, 10)) if values.size else np.nan
        for reference_name, reference in (("", truth.actual), ("_dirichlet", truth.dirichlet)):
            scores = {"mae": np.nan, "rmse": np.nan, "max_error": np.nan}
            if perm is not None and reference is not None and mask.any():
                scores = proportion_errors(proportions[mask], reference[mask], perm)
            for name, value in scores.items():
                key = "proportion_" + name + reference_name + suffix
                out[key] = value
        pooled = confusion[mask].sum(0) if confusion is not None and mask.any() else None
        has_counts = pooled is not None and pooled.sum() > 0 and truth.actual is not None
        out["assignment_accuracy" + suffix] = assignment_accuracy(pooled, perm) if has_counts and perm is not None else np.nan
        out["adjusted_rand_index" + suffix] = adjusted_rand_index(pooled) if has_counts else np.nan
        for name in ("mixture_log_likelihood", "heldout_mixture_log_likelihood"):
            values = arrays.get(f"{phase}/{name}")
            values = None if values is None else values[row][mask]
            out[name + suffix] = float(np.nanmean(values)) if values is not None and values.size else np.nan
    estimated, exact = arrays.get(f"{phase}/responsibilities"), arrays.get("truth/exact_responsibilities")
    if estimated is not None and exact is not None and perm is not None:
        for suffix, mask in (("", seen & reported), ("_unseen", ~seen & reported)):
            scores = responsibility_agreement(estimated[row][mask], exact[mask], perm) if mask.any() else {}
            out.update({name + suffix: value for name, value in scores.items()})
    heldout_proportions, heldout_confusion = (arrays.get(f"{phase}/heldout_proportions"),
                                              arrays.get(f"{phase}/heldout_confusion"))
    if heldout_proportions is not None and heldout_confusion is not None and perm is not None:
        mask = seen & reported
        out.update(heldout_scores(heldout_proportions[row][mask], heldout_confusion[row][mask], perm))
    heldout, mass = arrays.get(f"{phase}/heldout_log_likelihood"), arrays.get(f"{phase}/heldout_mass")
    order = perm if perm is not None else np.arange(k)
    if heldout is not None and mass is not None:
        per_component = _pooled_heldout(heldout[row][reported], mass[row][reported])
        for t, value in enumerate(_by_true(per_component, order)):
            out[f"heldout_log_likelihood_c{t}"] = float(value)
    return out, perm


def _by_true(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """values [..., K learned] in true order: the matched learned component's, NaN where a true
    component has no match (fewer components learned than true)."""
    taken = values[..., np.maximum(order, 0)].astype(np.float64)
    return np.where(order >= 0, taken, np.nan)


def _agreeing(confusion: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Samples assigned to their true component's match, from confusion [..., K true, K learned]."""
    rows = np.flatnonzero(perm >= 0)
    return confusion[..., rows, perm[rows]].sum(-1)


def _pooled_heldout(heldout: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """[K] each component's held-out log-likelihood pooled over clients, weighted by the mass it claims."""
    weights = np.nan_to_num(mass)
    total = weights.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(heldout) * weights).sum(0) / total, np.nan)


def _scores_frame(arrays: dict[str, np.ndarray], rounds: pd.DataFrame, seen: np.ndarray, truth: _Truth,
                  k: int) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray | None]]:
    records, perms = [], {}
    for phase in SCORED_PHASES:
        if f"{phase}/accuracy" not in arrays or f"{phase}/round" not in arrays:
            continue
        round_index = arrays[f"{phase}/round"]
        rows = min(len(round_index), len(arrays[f"{phase}/accuracy"]))
        for row in range(rows):
            scores, perm = _row_scores(arrays, phase, row, seen, truth, k)
            perms[(phase, row)] = perm
            communication_round = int(round_index[row])
            train_round = int(rounds.train_round.iloc[communication_round]) if communication_round < len(rounds) else np.nan
            records.append({"phase": phase, "row": row, "round": communication_round, "train_round": train_round,
                            "matching": " ".join(map(str, perm)) if perm is not None else "", **scores})
    # a run that has not scored a round yet (still initialising) still gets the columns it will have
    frame = pd.DataFrame.from_records(records, columns=None if records else ["phase", "row", "round", "train_round",
                                                                             "matching", "proportion_mae", "accuracy"])
    if not frame.empty:
        frame = frame.sort_values(["round", "phase"], kind="stable").reset_index(drop=True)
    return frame, perms


def _final_row(arrays: dict[str, np.ndarray]) -> tuple[str, int] | None:
    for phase in ("evaluate", "train"):
        if f"{phase}/accuracy" in arrays and len(arrays[f"{phase}/accuracy"]):
            return phase, len(arrays[f"{phase}/accuracy"]) - 1
    return None


def _clients_frame(arrays: dict[str, np.ndarray], phase: str, row: int, perm: np.ndarray | None, seen: np.ndarray,
                   truth: _Truth, k: int) -> pd.DataFrame:
    c = len(seen)
    frame = pd.DataFrame({"client": np.arange(c), "seen": seen,
                          "num_train": arrays["clients/num_train"], "num_test": arrays["clients/num_test"]})
    accuracy = arrays[f"{phase}/accuracy"][row]
    frame["reported"] = ~np.isnan(accuracy)
    frame["accuracy"] = accuracy
    for name in ("mixture_log_likelihood", "heldout_mixture_log_likelihood"):
        if f"{phase}/{name}" in arrays:
            frame[name] = arrays[f"{phase}/{name}"][row]
    order = perm if perm is not None else np.arange(k)
    proportions = arrays.get(f"{phase}/proportions")
    if proportions is not None and (perm is not None or proportions.shape[2] == k):
        for t, column in enumerate(in_true_order(proportions[row], order).T):
            frame[f"estimated_c{t}"] = column
        for label, reference in (("actual", truth.actual), ("dirichlet", truth.dirichlet)):
            if reference is None:
                continue
            for t in range(k):
                frame[f"{label}_c{t}"] = reference[:, t]
            # with a matching, learned components left over count against 0 (metrics.aligned)
            estimated, padded = aligned(proportions[row], reference, order)
            error = np.abs(estimated - padded)
            frame["proportion_mae" + ("" if label == "actual" else "_dirichlet")] = error.mean(1)
            frame["proportion_max_error" + ("" if label == "actual" else "_dirichlet")] = error.max(1)
    confusion = arrays.get(f"{phase}/confusion")
    if confusion is not None and perm is not None:
        per_client = confusion[row]
        totals = per_client.sum((1, 2))
        agree = _agreeing(per_client, perm)
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["assignment_accuracy"] = np.where(totals > 0, agree / totals, np.nan)
    return frame


def _components_frame(arrays: dict[str, np.ndarray], phase: str, row: int, perm: np.ndarray | None, seen: np.ndarray,
                      truth: _Truth, k: int, clients: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray | None]:
    order = perm if perm is not None else np.arange(k)
    frame = pd.DataFrame({"component": np.arange(k), "learned": order})
    reported = clients.reported.to_numpy()
    heldout, mass = arrays.get(f"{phase}/heldout_log_likelihood"), arrays.get(f"{phase}/heldout_mass")
    if heldout is not None and mass is not None:
        frame["heldout_log_likelihood"] = _by_true(_pooled_heldout(heldout[row][reported], mass[row][reported]), order)
        claimed = np.nan_to_num(mass[row][reported]).sum(0)
        frame["heldout_share"] = _by_true(claimed, order) / max(claimed.sum(), 1e-12)
    if "estimated_c0" in clients:
        mask = seen & reported
        frame["mean_estimated_seen"] = [clients[f"estimated_c{t}"][mask].mean() for t in range(k)]
        if "actual_c0" in clients:
            frame["mean_actual_seen"] = [clients[f"actual_c{t}"][mask].mean() for t in range(k)]
    pooled = None
    confusion = arrays.get(f"{phase}/confusion")
    if confusion is not None and perm is not None:
        pooled = confusion[row][seen & reported].sum(0)
        matched = np.array([pooled[t, perm[t]] if perm[t] >= 0 else 0.0 for t in range(k)])
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["recall"] = matched / pooled.sum(1)  # of the true component's samples, the share assigned to its match
            frame["precision"] = matched / _by_true(pooled.sum(0), perm)
    mass_train = arrays.get("train/server/responsibility_mass")
    if mass_train is not None and len(mass_train):
        last = mass_train[-1]
        frame["training_mass_share"] = _by_true(last, order) / max(last.sum(), 1e-12)
    return frame, pooled


def load(path: str | Path) -> Run:
    """Read a log (or the ``.partial`` of a run going on or dead) into a :class:`Run`."""
    resolved = resolve(path)
    with open_log(resolved) as file:
        if "rounds" not in file or "clients" not in file:
            raise UserError(f"{resolved} is not a fedgmi run log (no /rounds or /clients)")
        attrs = {key: _decode(value) for key, value in file.attrs.items()}
        arrays = _read_arrays(file)
        arrays["_phases"] = json.loads(file["rounds/phase"].attrs["phases"])
        if resolved.suffix == ".partial":
            align_rows(arrays, ["rounds", *arrays["_phases"]])
        events = [_decode(e) for e in arrays.get("events", [])]
    complete = resolved.suffix != ".partial" and int(arrays["status"][0]) == 1
    config = json.loads(attrs.get("config", "{}"))
    seen = arrays["clients/seen"].astype(bool)
    counts = arrays.get("truth/component_counts")
    with np.errstate(invalid="ignore", divide="ignore"):
        actual = None if counts is None else counts / counts.sum(1, keepdims=True)
    truth = _Truth(actual, arrays.get("truth/true_proportions"))
    k = int(config.get("scenario", {}).get("num_components", 0)) or (
        actual.shape[1] if actual is not None else arrays.get("evaluate/proportions", np.zeros((0, 0, 1))).shape[2])
    rounds = _rounds_frame(arrays)
    scores, perms = _scores_frame(arrays, rounds, seen, truth, k)
    final = _final_row(arrays)
    if final is None:
        clients = pd.DataFrame({"client": np.arange(len(seen)), "seen": seen, "reported": False})
        components, pooled, perm, final_phase = pd.DataFrame(), None, None, "evaluate"
    else:
        final_phase, row = final
        perm = perms.get((final_phase, row))
        clients = _clients_frame(arrays, final_phase, row, perm, seen, truth, k)
        components, pooled = _components_frame(arrays, final_phase, row, perm, seen, truth, k, clients)
    return Run(path=resolved, status="complete" if complete else "incomplete", attrs=attrs, config=config,
               algorithm=str(attrs.get("algorithm", "?")), seed=int(attrs.get("seed", -1)), budget=_budget(attrs),
               num_components=k, seen=seen, has_truth=actual is not None, rounds=rounds, scores=scores,
               clients=clients, components=components, matching=perm, confusion=pooled, events=events, arrays=arrays,
               final_phase=final_phase)
