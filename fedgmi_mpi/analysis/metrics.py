"""Scoring learned components against the truth (evaluation only; never used in training).

Component labels are arbitrary, so learned components are first matched to true ones with the
Hungarian method on the pooled confusion matrix of hard assignments. The run may fit a different
number of components than the truth has (``algorithm.num_components``): then the matching pairs
min(K true, K learned) of them; a true component left unmatched is estimated at 0 and a learned
one left over is compared with 0, so mass on a spare component counts as error.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion(true_components: np.ndarray, responsibilities: np.ndarray, num_components: int) -> np.ndarray:
    """[true K, learned K] counts of argmax assignments."""
    learned = responsibilities.argmax(1)
    out = np.zeros((num_components, responsibilities.shape[1]))
    np.add.at(out, (true_components, learned), 1.0)
    return out


def match_components(pooled_confusion: np.ndarray) -> np.ndarray:
    """Matching p with learned component p[t] matched to true component t (max agreement) from a
    [true K, learned K] confusion; p[t] = -1 where fewer components were learned than are true."""
    rows, cols = linear_sum_assignment(-pooled_confusion)
    perm = np.full(pooled_confusion.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    return perm


def in_true_order(estimated: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """estimated [..., K learned] -> [..., K true]: column t is the learned component matched to
    t, 0 where none is (a NaN row stays NaN)."""
    if estimated.shape[-1] == len(perm) and (perm >= 0).all():
        return estimated[..., perm]
    return np.where(perm >= 0, 1.0, 0.0) * estimated[..., np.maximum(perm, 0)]


def aligned(estimated: np.ndarray, reference: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimated [..., K learned] and reference [..., K true] side by side in true order
    (in_true_order), then the learned components left over against 0. With K learned = K true
    this is estimated[..., perm] and reference itself."""
    learned = estimated.shape[-1]
    if learned == len(perm) and (perm >= 0).all():
        return estimated[..., perm], reference
    spare = np.setdiff1d(np.arange(learned), perm[perm >= 0])
    estimated_out = np.concatenate([in_true_order(estimated, perm), estimated[..., spare]], axis=-1)
    reference_out = np.concatenate([reference, np.zeros(reference.shape[:-1] + (len(spare),))], axis=-1)
    return estimated_out, reference_out


def assignment_accuracy(pooled_confusion: np.ndarray, perm: np.ndarray) -> float:
    rows = np.flatnonzero(perm >= 0)
    return float(pooled_confusion[rows, perm[rows]].sum() / max(pooled_confusion.sum(), 1))


def proportion_mae(estimated: np.ndarray, actual: np.ndarray, perm: np.ndarray) -> float:
    """Mean absolute error over clients and components after matching: estimated[:, perm[t]] vs actual[:, t]."""
    return proportion_errors(estimated, actual, perm)["mae"]


def proportion_errors(estimated: np.ndarray, reference: np.ndarray, perm: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and the largest absolute error over clients and components, after matching."""
    if estimated.size == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "max_error": float("nan")}
    matched, reference = aligned(estimated, reference, perm)
    error = matched - reference
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error**2).mean())),
            "max_error": float(np.abs(error).max())}


def responsibility_agreement(estimated: np.ndarray, exact: np.ndarray, perm: np.ndarray) -> dict[str, float]:
    """Estimated responsibilities [..., K] (learned order) against exact ones [..., K] (true
    order) over the rows that both have: mean absolute difference per entry, and the share of
    samples whose most responsible component agrees."""
    matched, exact = aligned(estimated, exact, perm)
    matched, exact = matched.reshape(-1, exact.shape[-1]), exact.reshape(-1, exact.shape[-1])
    rows = ~(np.isnan(matched).any(1) | np.isnan(exact).any(1))
    if not rows.any():
        return {"responsibility_mad": float("nan"), "responsibility_agreement": float("nan")}
    return {"responsibility_mad": float(np.abs(matched[rows] - exact[rows]).mean()),
            "responsibility_agreement": float((matched[rows].argmax(1) == exact[rows].argmax(1)).mean())}


def adjusted_rand_index(contingency: np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings from their contingency table
    (here [true, learned] counts); 1 = the same partition, ~0 = chance. Label-free: no matching."""
    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    n = contingency.sum()
    if n < 2:
        return float("nan")
    index = pairs(contingency)
    rows, cols = pairs(contingency.sum(1)), pairs(contingency.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    best = (rows + cols) / 2
    return 1.0 if best == expected else float((index - expected) / (best - expected))


def heldout_scores(proportions: np.ndarray, confusion: np.ndarray, perm: np.ndarray) -> dict[str, float]:
    """The held-out E-step's scores from its proportions [C, K] and confusion [C, K true, K] over
    the clients to score: the true shares of each client's test samples are its confusion's row
    sums, so a log needs nothing else. Clients without test samples do not count."""
    counts = confusion.sum(2)
    scored = counts.sum(1) > 0
    if not scored.any():
        return {"proportion_mae_heldout": float("nan"), "assignment_accuracy_heldout": float("nan")}
    actual = counts[scored] / counts[scored].sum(1, keepdims=True)
    return {"proportion_mae_heldout": proportion_mae(proportions[scored], actual, perm),
            "assignment_accuracy_heldout": assignment_accuracy(confusion[scored].sum(0), perm)}
