"""Scores of an evaluation round against the truth, for the log and the closing summary."""
from __future__ import annotations

import numpy as np

from ..scenarios.base import Scenario
from .metrics import assignment_accuracy, heldout_scores, match_components, proportion_mae, responsibility_agreement

SUMMARY_FIELDS = (
    "proportion_mae", "assignment_accuracy", "accuracy",
    "proportion_mae_unseen", "assignment_accuracy_unseen", "accuracy_unseen",
)
# the seen clients' test samples scored by their own E-step (FedGMI and the oracle): samples that no
# model trained on, so a model cannot be rewarded for having memorised them
HELDOUT_FIELDS = ("proportion_mae_heldout", "assignment_accuracy_heldout")
# where the scenario knows the exact densities (synthetic): per-sample responsibilities against the exact ones
EXACT_FIELDS = ("responsibility_mad", "responsibility_agreement", "responsibility_mad_unseen",
                "responsibility_agreement_unseen")


def summarize(metrics: dict[str, np.ndarray], scenario: Scenario) -> dict[str, float | np.ndarray]:
    """From per-client ``proportions`` [C, K], ``confusion`` [C, K true, K] and ``accuracy`` [C]
    (K: the components the algorithm fits, which may differ from the truth's).

    Only clients that reported (took part in the round) count. Learned components are matched to
    true ones once, on the seen clients' pooled confusion, and the same matching scores the unseen
    clients. NaN where there is no truth or no client.
    """
    reported = ~np.isnan(metrics["accuracy"])
    is_seen = np.array([c.seen for c in scenario.clients])
    seen, unseen = is_seen & reported, ~is_seen & reported
    k = scenario.num_components
    out: dict[str, float | np.ndarray] = {name: float("nan") for name in SUMMARY_FIELDS + EXACT_FIELDS + HELDOUT_FIELDS}
    out["permutation"] = np.full(k, -1, dtype=np.int64)
    accuracy = metrics["accuracy"]
    for suffix, mask in (("", seen), ("_unseen", unseen)):
        if mask.any():
            out["accuracy" + suffix] = float(np.mean(accuracy[mask]))
    actual = scenario.actual_proportions()
    # NaN proportions: the algorithm has none (a single global model); nothing to match or score
    if actual is None or not seen.any() or np.isnan(metrics["proportions"][seen]).all():
        return out
    perm = match_components(metrics["confusion"][seen].sum(0))
    out["permutation"] = perm
    for suffix, mask in (("", seen), ("_unseen", unseen)):
        if mask.any():
            out["assignment_accuracy" + suffix] = assignment_accuracy(metrics["confusion"][mask].sum(0), perm)
            out["proportion_mae" + suffix] = proportion_mae(metrics["proportions"][mask], actual[mask], perm)
    if "heldout_confusion" in metrics:
        out.update(heldout_scores(metrics["heldout_proportions"][seen], metrics["heldout_confusion"][seen], perm))
    exact = scenario.exact_responsibilities() if "responsibilities" in metrics else None
    if exact is not None:
        for suffix, mask in (("", seen), ("_unseen", unseen)):
            if mask.any():
                scores = responsibility_agreement(metrics["responsibilities"][mask], exact[mask], perm)
                out.update({name + suffix: value for name, value in scores.items()})
    return out
