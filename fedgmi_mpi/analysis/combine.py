"""``fedgmi combine``: one estimate from several training starts of the same run.

Why: which of two look-alike components (the 0- and 180-degree rotations of the digits) takes
the samples both explain is settled early in training, by the start (``training_seed``), and
stays settled. One start's proportion MAE on the default scenario moves by up to 0.0038 from
that alone, as much as the gap to the oracle (docs/algorithm.md, "Restarts"); starts err in
different directions, so their mean errs less than a typical start.

How, with no truth: each log's saved model runs the E-steps on the clients' samples exactly as
the run's final evaluation did (``infer``: the start's own noise streams), giving every sample's
responsibilities under that start. Component labels are arbitrary per start, so every start is
matched to the first by the Hungarian method on co-assignment, sum_i r_first[i, a] r_start[i, b]
over all samples of all clients. The combined responsibilities are the mean of the matched ones
and a client's combined proportions the mean of its starts' proportions (each start's are the
mean of its own responsibilities, so the two agree). The spread, max - min over the starts of a
client's proportion of a component, is the part of the estimate training's randomness decides.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .. import config as config_mod
from ..atomic import check_new_file, write_atomically
from ..errors import UserError
from .infer import ClientInference, infer_clients
from .metrics import assignment_accuracy, confusion, match_components, proportion_mae
from .model import SavedModel, read_model

POSTERIOR_DRAWS = 100  # infer's Gibbs sampler is not used here; the fewest draws it takes
DIFFERENT_PER_START = {"training_seed"}  # what may differ between the starts of one run
IGNORED = ("runtime",)  # how a run was executed, not what it computed
SCORE_COLUMNS = {"proportion_mae_seen": "MAE seen", "proportion_mae_unseen": "MAE unseen",
                 "proportion_mae_all": "MAE", "assignment_accuracy_seen": "assignment seen",
                 "assignment_accuracy_unseen": "assignment unseen", "assignment_accuracy_all": "assignment"}


@dataclass
class Combined:
    logs: list[Path]
    training_seeds: list[int]
    clients: np.ndarray  # [C] client ids in the data
    seen: np.ndarray  # [C] bool: the client trained in the runs (all False for clients of another file)
    matchings: np.ndarray  # [S, K] start s's component matched to the first start's component j
    start_proportions: np.ndarray  # [S, C, K] each start's proportions, in the first start's component order
    proportions: np.ndarray  # [C, K] the combined estimate
    spread: np.ndarray  # [C, K] max - min over the starts
    responsibilities: list[np.ndarray]  # per client [n, K], combined
    sample_index: list[np.ndarray]  # per client: the data rows the E-steps used
    scores: dict[str, Any] | None  # against the data's truth, where it has one


def check_same_run(models: list[SavedModel]) -> None:
    """The logs must be starts of one run: the same config but for the training seed."""
    if len(models) < 2:
        raise UserError("combine needs at least two logs (training starts of the same run)")

    def comparable(model: SavedModel) -> dict[str, Any]:
        return {k: v for k, v in model.config.items() if k not in DIFFERENT_PER_START and k not in IGNORED}

    first = models[0]
    seeds = [training_seed(m) for m in models]
    for model in models[1:]:
        if comparable(model) != comparable(first):
            keys = sorted(_differing(comparable(first), comparable(model)))
            raise UserError(f"{model.path.name} is not a start of the same run as {first.path.name}: "
                            f"they differ in {', '.join(keys)} (only training_seed may differ)")
        if model.description != first.description:
            raise UserError(f"{model.path.name} and {first.path.name} saved different models "
                            f"(K {model.num_components} and {first.num_components}): rerun with a fixed K")
    if len(set(seeds)) < len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise UserError(f"training_seed {twice[0]} appears in two logs: the same start twice adds nothing")


def training_seed(model: SavedModel) -> int:
    value = int(model.config.get("training_seed", -1))
    return int(model.config.get("seed", 0)) if value < 0 else value


def _differing(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key in set(a) | set(b):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            out |= _differing(left, right, f"{prefix}{key}.")
        elif left != right:
            out.add(f"{prefix}{key}")
    return out


def scenario_arrays(model: SavedModel) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The run's own clients, rebuilt from its config (scenarios are deterministic in the seed),
    and which of them trained (in the order of their ids)."""
    from .. import scenarios
    from ..scenarios import npz_file

    # only the scenario is needed: keys of an older version's config (its algorithm's) are left out
    scenario = scenarios.build(config_mod.from_mapping(model.config, unknown=[]))
    arrays = npz_file.to_arrays(scenario)
    seen = {c.client_id: c.seen for c in scenario.clients}
    return arrays, np.array([seen[cid] for cid in np.unique(arrays["client"])])


def match_to_first(first: list[ClientInference], other: list[ClientInference]) -> np.ndarray:
    """m with other's component m[j] matched to first's component j (max co-assignment)."""
    co = sum(a.responsibilities.T @ b.responsibilities for a, b in zip(first, other))
    rows, cols = linear_sum_assignment(-co)
    return cols[np.argsort(rows)]


def combine(paths: list[str | Path], arrays: dict[str, np.ndarray] | None = None, device: str = "cpu") -> Combined:
    """Combine the starts in ``paths``; ``arrays`` (a data file's) default to the runs' own clients."""
    models = [read_model(path) for path in paths]
    check_same_run(models)
    if arrays is None:
        arrays, seen = scenario_arrays(models[0])
    else:
        seen = np.zeros(len(np.unique(arrays.get("client", np.zeros(1, dtype=np.int64)))), dtype=bool)
    clients = np.unique(arrays["client"]) if "client" in arrays else np.zeros(1, dtype=np.int64)
    starts = [infer_clients(model, arrays, clients, draws=POSTERIOR_DRAWS, burn_in=0, device=device)
              for model in models]
    matchings = np.stack([np.arange(models[0].num_components)] + [match_to_first(starts[0], s) for s in starts[1:]])
    start_proportions = np.stack([[r.proportions[m] for r in results] for results, m in zip(starts, matchings)])
    responsibilities = [np.mean([results[i].responsibilities[:, m] for results, m in zip(starts, matchings)], axis=0)
                        for i in range(len(clients))]
    combined = Combined(
        logs=[m.path for m in models], training_seeds=[training_seed(m) for m in models], clients=clients, seen=seen,
        matchings=matchings, start_proportions=start_proportions, proportions=start_proportions.mean(0),
        spread=start_proportions.max(0) - start_proportions.min(0), responsibilities=responsibilities,
        sample_index=[r.sample_index for r in starts[0]], scores=None)
    combined.scores = _scores(combined, starts, arrays)
    return combined


def _scores(combined: Combined, starts: list[list[ClientInference]], arrays: dict[str, np.ndarray]) -> dict | None:
    """Each start's and the combined proportion MAE (against the actual counts) and assignment
    accuracy, seen and unseen clients apart; each matched to the truth as a run's summary is,
    on the seen clients' pooled confusion (all clients' when none of them trained)."""
    if "component" not in arrays:
        return None
    true_k = int(arrays["component"].max()) + 1
    true = [arrays["component"][rows] for rows in combined.sample_index]
    actual = np.stack([np.bincount(t, minlength=true_k)[:true_k] / len(t) for t in true])
    groups = {"seen": combined.seen, "unseen": ~combined.seen} if combined.seen.any() else {"all": np.ones_like(combined.seen)}
    matched_on = combined.seen if combined.seen.any() else np.ones_like(combined.seen)

    def figures(proportions: np.ndarray, responsibilities: list[np.ndarray]) -> dict[str, float]:
        confusions = np.stack([confusion(t, r, true_k) for t, r in zip(true, responsibilities)])
        perm = match_components(confusions[matched_on].sum(0))
        out = {}
        for name, rows in groups.items():
            if rows.any():
                out[f"proportion_mae_{name}"] = proportion_mae(proportions[rows], actual[rows], perm)
                out[f"assignment_accuracy_{name}"] = assignment_accuracy(confusions[rows].sum(0), perm)
        return out

    per_start = [figures(np.stack([r.proportions for r in results]), [r.responsibilities for r in results])
                 for results in starts]
    return {"starts": per_start, "combined": figures(combined.proportions, combined.responsibilities)}


def format_text(combined: Combined) -> str:
    k = combined.proportions.shape[1]
    lines = [f"{len(combined.logs)} starts (training_seed {', '.join(map(str, combined.training_seeds))}) of one run; "
             f"components in the order of {combined.logs[0].name}",
             "component matched to it, per start: " + "; ".join(
                 f"{path.name}: {' '.join(map(str, m))}" for path, m in zip(combined.logs, combined.matchings)),
             f"{'client':>6s} {'seen':>4s}  combined proportions (spread over the starts)"]
    for i, cid in enumerate(combined.clients):
        cells = "  ".join(f"{combined.proportions[i, j]:.3f} ({combined.spread[i, j]:.3f})" for j in range(k))
        lines.append(f"{cid:6d} {'yes' if combined.seen[i] else 'no':>4s}  {cells}")
    lines.append(f"spread over the starts: mean {combined.spread.mean():.4f}, largest {combined.spread.max():.3f}")
    if combined.scores is not None:
        names = [n for n in SCORE_COLUMNS if n in combined.scores["combined"]]
        rows = [(path.name, s) for path, s in zip(combined.logs, combined.scores["starts"])]
        rows += [("mean of the starts", {n: float(np.mean([s[n] for s in combined.scores["starts"]])) for n in names}),
                 ("combined", combined.scores["combined"])]
        width = max(len(label) for label, _ in rows)
        lines.append("against the truth (each matched to the true components on its own assignments):")
        lines.append(f"  {'':{width}s}" + "".join(f"  {SCORE_COLUMNS[n]:>17s}" for n in names))
        for label, values in rows:
            lines.append(f"  {label:{width}s}" + "".join(f"  {values[n]:17.4f}" for n in names))
    return "\n".join(lines)


def check_target(out: str | Path) -> Path:
    return check_new_file(Path(out), (".npz", ".json"))


def write(combined: Combined, out: str | Path) -> Path:
    """.npz arrays or .json, components in the first start's order; written whole or not at all."""
    target = check_target(out)
    arrays = {
        "client": combined.clients, "seen": combined.seen, "training_seed": np.array(combined.training_seeds),
        "matching": combined.matchings, "start_proportions": combined.start_proportions,
        "proportions": combined.proportions, "spread": combined.spread,
        "sample_index": np.concatenate(combined.sample_index),
        "sample_client": np.concatenate([np.full(len(rows), cid) for rows, cid in zip(combined.sample_index,
                                                                                        combined.clients)]),
        "responsibilities": np.concatenate(combined.responsibilities),
    }
    if target.suffix == ".npz":
        write_atomically(target, lambda temporary: np.savez_compressed(temporary, **arrays))
    else:
        document = {"logs": [str(p) for p in combined.logs], "scores": combined.scores,
                    **{name: value.tolist() for name, value in arrays.items()}}
        write_atomically(target, lambda temporary: temporary.write_text(json.dumps(document)))
    return target
