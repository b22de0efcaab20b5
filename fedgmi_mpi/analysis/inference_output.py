"""What ``fedgmi infer`` prints and writes (.npz arrays or .json)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..atomic import check_new_file, write_atomically
from .infer import ClientInference, Scores
from .model import SavedModel


def check_target(out: str | None) -> Path | None:
    return None if out is None else check_new_file(Path(out), (".npz", ".json"))


def format_table(model: SavedModel, results: list[ClientInference], scores: Scores | None, level: float,
                 used_labels: bool = False) -> str:
    k = model.num_components
    order = scores.matching if scores is not None else np.arange(k)
    label = "true component" if scores is not None else "component"
    lines = [f"model: {model.description.get('algorithm')} from {model.path.name}, evaluation round {model.round} "
             f"(train round {model.train_round}); columns: {label} " + " ".join(str(t) for t in range(k))
             + (f" (learned {' '.join(map(str, order))}, matching from {scores.matching_source})" if scores else ""),
             f"{'client':>6s} {'n':>5s}  proportions [{level:.0%} interval]" + " " * max(0, 9 * k - 30)
             + "  mixture LL  accuracy"]
    for r in results:
        cells = "  ".join(f"{r.proportions[j]:.3f}[{r.lower[j]:.2f},{r.upper[j]:.2f}]" for j in order)
        accuracy = "n/a" if math.isnan(r.accuracy) else f"{r.accuracy:.3f}"
        lines.append(f"{r.client:6d} {len(r.sample_index):5d}  {cells}  {r.mixture_log_likelihood:10.2f}  {accuracy:>8s}")
    if used_labels:
        lines.append("samples scored by p_k(x) p_k(y|x) with their labels (--labels)")
    if scores is not None:
        lines.append(f"against the file's truth ({len(results)} clients, {scores.intervals} intervals per truth):")
        lines.append(f"  proportion MAE vs actual counts {scores.mae_actual:.4f}, vs Dirichlet draw {scores.mae_dirichlet:.4f}")
        lines.append(f"  {level:.0%} intervals of the proportions holding the Dirichlet draw: {scores.coverage:.3f}; "
                     f"of the sample shares holding the actual counts: {scores.share_coverage:.3f}")
    return "\n".join(lines)


def write(target: Path, model: SavedModel, results: list[ClientInference], scores: Scores | None, level: float,
          prior: float, used_labels: bool = False) -> Path:
    """Per client: the estimate, posterior mean/sd, intervals, mixture log-likelihood, accuracy;
    per sample: its row in the data file, client, responsibilities and assignment. Components in
    the model's (learned) order; ``matching`` maps true component t to learned matching[t]."""
    arrays = {
        "client": np.array([r.client for r in results]),
        "proportions": np.stack([r.proportions for r in results]),
        "posterior_mean": np.stack([r.posterior_mean for r in results]),
        "posterior_sd": np.stack([r.posterior_sd for r in results]),
        "lower": np.stack([r.lower for r in results]), "upper": np.stack([r.upper for r in results]),
        "share_lower": np.stack([r.share_lower for r in results]),
        "share_upper": np.stack([r.share_upper for r in results]),
        "mixture_log_likelihood": np.array([r.mixture_log_likelihood for r in results]),
        "accuracy": np.array([r.accuracy for r in results]),
        "sample_index": np.concatenate([r.sample_index for r in results]),
        "sample_client": np.concatenate([np.full(len(r.sample_index), r.client) for r in results]),
        "responsibilities": np.concatenate([r.responsibilities for r in results]),
        "assignment": np.concatenate([r.assignment for r in results]),
        "level": np.array(level), "prior": np.array(prior), "model_round": np.array(model.round),
        "used_labels": np.array(used_labels),
    }
    if scores is not None:
        arrays["matching"] = scores.matching
    if target.suffix == ".npz":
        return write_atomically(target, lambda temporary: np.savez_compressed(temporary, **arrays))

    def clean(value: float) -> float | None:
        return None if isinstance(value, float) and math.isnan(value) else value

    document = {
        "model": {"log": str(model.path), "round": model.round, "train_round": model.train_round,
                  "algorithm": model.description.get("algorithm")},
        "level": level, "prior": prior, "used_labels": used_labels,
        "matching": None if scores is None else scores.matching.tolist(),
        "scores": None if scores is None else {k: clean(v) for k, v in vars(scores).items() if k != "matching"},
        "clients": [{"client": r.client, "samples": len(r.sample_index), "proportions": r.proportions.tolist(),
                     "posterior_mean": r.posterior_mean.tolist(), "posterior_sd": r.posterior_sd.tolist(),
                     "lower": r.lower.tolist(), "upper": r.upper.tolist(), "share_lower": r.share_lower.tolist(),
                     "share_upper": r.share_upper.tolist(), "mixture_log_likelihood": r.mixture_log_likelihood,
                     "accuracy": clean(r.accuracy), "sample_index": r.sample_index.tolist(),
                     "responsibilities": r.responsibilities.round(6).tolist(), "assignment": r.assignment.tolist()}
                    for r in results],
    }
    return write_atomically(target, lambda temporary: temporary.write_text(json.dumps(document)))
