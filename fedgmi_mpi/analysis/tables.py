"""``fedgmi analyze``: a run's headline numbers as text, JSON or CSV, and one comparison table
over several logs (grouped by algorithm and budget, mean and spread over seeds)."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from .reader import Run

WORST_CLIENTS = 5
# (column, label, digits) of the comparison table
COMPARED = (
    ("proportion_mae", "MAE", 4), ("proportion_mae_unseen", "MAE unseen", 4),
    ("proportion_mae_dirichlet", "MAE vs Dirichlet", 4), ("proportion_mae_heldout", "MAE held out", 4),
    ("assignment_accuracy", "assignment", 4),
    ("adjusted_rand_index", "ARI", 4), ("accuracy", "accuracy", 4), ("accuracy_p10", "acc. p10", 4),
    ("heldout_mixture_log_likelihood", "held-out LL", 2), ("uplink_mib_per_client", "uplink MiB/client", 2),
    ("wall_time_s", "wall s", 1),
)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def headline(run: Run) -> dict[str, Any]:
    """The numbers ``fedgmi analyze`` prints for one log, flat (JSON- and CSV-ready)."""
    out: dict[str, Any] = {"log": str(run.path), "status": run.status, "algorithm": run.algorithm, "seed": run.seed,
                           "budget": run.budget, "scenario": run.attrs.get("scenario", ""),
                           "clients": int(len(run.seen)), "clients_unseen": int((~run.seen).sum()),
                           "components": run.num_components}
    final, best = run.final(), run.best()
    out["final_phase"] = run.final_phase
    out["final_round"] = int(final["round"]) if final is not None else None
    out["final_train_round"] = int(final["train_round"]) if final is not None else None
    out["best_round"] = int(best["round"]) if best is not None else None
    out["best_train_round"] = int(best["train_round"]) if best is not None else None
    out["best_proportion_mae"] = _number(best["proportion_mae"]) if best is not None else math.nan
    out["best_accuracy"] = _number(best["accuracy"]) if best is not None else math.nan
    out["matching"] = [int(v) for v in run.matching] if run.matching is not None else None
    names = [c for c in run.scores.columns if c not in ("phase", "row", "round", "train_round", "matching")]
    for name in names:
        out[name] = _number(final[name]) if final is not None and name in final else math.nan
    rounds = run.rounds
    train = rounds.phase == "train"
    seen = max(int(run.seen.sum()), 1)
    out["rounds"] = int(len(rounds))
    out["train_rounds"] = int(train.sum())
    out["bytes_up_total"] = int(rounds.bytes_up.sum())
    out["bytes_down_total"] = int(rounds.bytes_down.sum())
    out["uplink_mib_per_client"] = float(rounds.bytes_up[train].sum() / seen / 2**20)
    out["downlink_mib_per_client"] = float(rounds.bytes_down[train].sum() / seen / 2**20)
    summary = json.loads(run.attrs["summary"]) if "summary" in run.attrs else {}
    out["wall_time_s"] = float(summary.get("wall_time_s", rounds.wall_time.sum() if "wall_time" in rounds else math.nan))
    out["worst_clients"] = worst_clients(run)
    out["events"] = len(run.events)
    return out


def worst_clients(run: Run, count: int = WORST_CLIENTS) -> list[dict[str, Any]]:
    """The clients with the largest proportion error (lowest accuracy where there is no truth)."""
    clients = run.clients[run.clients.reported] if "reported" in run.clients else run.clients
    if clients.empty or "accuracy" not in clients:
        return []
    if "proportion_mae" in clients and clients.proportion_mae.notna().any():
        ranked = clients.sort_values("proportion_mae", ascending=False)
    else:
        ranked = clients.sort_values("accuracy")
    keep = [c for c in ("client", "seen", "proportion_mae", "proportion_max_error", "assignment_accuracy", "accuracy")
            if c in ranked]
    return [{k: (bool(v) if k == "seen" else int(v) if k == "client" else _number(v)) for k, v in row.items()}
            for row in ranked[keep].head(count).to_dict("records")]


def fmt(value: Any, digits: int = 4) -> str:
    value = _number(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_text(head: dict[str, Any]) -> str:
    """One log's summary, readable."""
    k = head["components"]
    lines = [f"{head['log']}  ({head['status']})",
             f"  {head['algorithm']}, seed {head['seed']}, budget {head['budget']}; {head['scenario']}",
             f"  final round {head['final_round']} (train round {head['final_train_round']}, {head['final_phase']}); "
             f"best round {head['best_round']} (train round {head['best_train_round']}: MAE {fmt(head['best_proportion_mae'])}, "
             f"accuracy {fmt(head['best_accuracy'])})"]
    if head["matching"] is not None:
        pairs = ", ".join(f"true {t} <- " + (f"learned {k_}" if k_ >= 0 else "none") for t, k_ in enumerate(head["matching"]))
        lines.append(f"  matching (Hungarian, final evaluation; used for every metric below): {pairs}")
    lines.append("                                     seen      unseen")
    rows = [("proportion MAE vs actual counts", "proportion_mae"), ("proportion RMSE vs actual counts", "proportion_rmse"),
            ("proportion max error vs actual", "proportion_max_error"),
            ("proportion MAE vs Dirichlet draw", "proportion_mae_dirichlet"),
            ("proportion RMSE vs Dirichlet draw", "proportion_rmse_dirichlet"),
            ("proportion max error vs Dirichlet", "proportion_max_error_dirichlet"),
            ("assignment accuracy", "assignment_accuracy"), ("adjusted Rand index", "adjusted_rand_index"),
            ("personalised accuracy, mean", "accuracy"), ("personalised accuracy, 10th pct", "accuracy_p10"),
            ("held-out mixture log-lik. (nats)", "heldout_mixture_log_likelihood"),
            ("responsibilities vs exact, MAD", "responsibility_mad"),
            ("argmax agrees with exact", "responsibility_agreement")]
    for label, key in rows:
        if key.startswith("responsibility") and math.isnan(_number(head.get(key, math.nan))):
            continue  # only scenarios with exact densities have them
        digits = 2 if "log_likelihood" in key else 4
        lines.append(f"  {label:34s} {fmt(head.get(key), digits):>8s}  {fmt(head.get(key + '_unseen'), digits):>8s}")
    if not math.isnan(_number(head.get("proportion_mae_heldout", math.nan))):
        lines.append(f"  held out (seen clients' test samples, E-step alone): proportion MAE "
                     f"{fmt(head['proportion_mae_heldout'])}, assignment {fmt(head['assignment_accuracy_heldout'])}")
    heldout = [head.get(f"heldout_log_likelihood_c{t}") for t in range(k)]
    if any(not math.isnan(_number(v)) for v in heldout):
        label = "true component" if head["matching"] is not None else "component"
        lines.append("  held-out log-likelihood per " + label + ": "
                     + ", ".join(f"{t}: {fmt(v, 2)}" for t, v in enumerate(heldout)))
    if head["worst_clients"]:
        lines.append("  worst clients: " + "; ".join(
            f"{c['client']}{'' if c.get('seen', True) else ' (unseen)'} MAE {fmt(c.get('proportion_mae'))} "
            f"acc {fmt(c.get('accuracy'), 3)}" for c in head["worst_clients"]))
    lines.append(f"  rounds {head['rounds']} ({head['train_rounds']} training); "
                 f"bytes up {head['bytes_up_total'] / 2**20:.1f} MiB, "
                 f"down {head['bytes_down_total'] / 2**20:.1f} MiB; training uplink {head['uplink_mib_per_client']:.2f} MiB "
                 f"per seen client; wall time {head['wall_time_s']:.1f} s")
    return "\n".join(lines)


def comparison(heads: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (algorithm, budget): the seeds, and mean and standard deviation of each compared column."""
    frame = pd.DataFrame(heads)
    records = []
    for (algorithm, budget), group in frame.groupby(["algorithm", "budget"], sort=False):
        record: dict[str, Any] = {"algorithm": algorithm, "budget": budget, "logs": len(group),
                                  "seeds": " ".join(str(s) for s in sorted(group.seed))}
        for column, _, _ in COMPARED:
            values = pd.to_numeric(group[column], errors="coerce").dropna() if column in group else pd.Series(dtype=float)
            record[column] = float(values.mean()) if len(values) else math.nan
            record[column + "_sd"] = float(values.std(ddof=0)) if len(values) > 1 else math.nan
        records.append(record)
    return pd.DataFrame.from_records(records)


def format_comparison(table: pd.DataFrame) -> str:
    header = "| algorithm | budget | logs | " + " | ".join(label for _, label, _ in COMPARED) + " |"
    lines = [header, "|" + "---|" * (3 + len(COMPARED))]
    for record in table.to_dict("records"):
        cells = []
        for column, _, digits in COMPARED:
            mean, spread = record[column], record[column + "_sd"]
            cells.append(fmt(mean, digits) + ("" if math.isnan(spread) else f" ± {spread:.{digits}f}"))
        lines.append(f"| {record['algorithm']} | {record['budget']} | {record['logs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(heads: list[dict[str, Any]]) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    document: dict[str, Any] = {"logs": [clean(h) for h in heads]}
    if len(heads) > 1:
        document["comparison"] = clean(comparison(heads).to_dict("records"))
    return json.dumps(document, indent=2)


def to_csv(heads: list[dict[str, Any]]) -> str:
    flat = [{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in h.items()} for h in heads]
    return pd.DataFrame(flat).to_csv(index=False)
