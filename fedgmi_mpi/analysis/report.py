"""One self-contained HTML report of run logs: ``write_report(["run.h5"], Path("report.html"))``. Images are
embedded PNGs, CSS is inline, nothing refers to the network. Per-client detail is drawn for the first log, curves
and the headline table for every log; a plot with nothing to show (no truth, no proportions, no scored round yet)
becomes a sentence saying why."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from ..atomic import check_new_file, write_atomically  # noqa: E402
from ..errors import UserError  # noqa: E402
from . import tables  # noqa: E402
from .model import SavedModel, read_model  # noqa: E402
from .reader import Run, load  # noqa: E402

CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.4}h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;max-width:100%}th,td{border:1px solid #ccc;
padding:.25em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.differs td{background:#fff6d5}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}p.note{color:#8a5a00;font-style:italic}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em;white-space:pre-wrap}"""
TAB10 = plt.get_cmap("tab10").colors
NUMBER = re.compile(r"[-+]?\d+(\.\d*)?(e[-+]?\d+)?|–")  # right-aligned cells


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _figure(fig: plt.Figure, alt: str, caption: str) -> str:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)  # a long report would otherwise keep every figure alive
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _safe(draw: Callable[..., str], *args: Any) -> str:
    """A plot that fails becomes a visible sentence: one odd log must not cost the whole report."""
    try:
        return draw(*args)
    except Exception as exc:  # noqa: BLE001
        plt.close("all")
        return _note(f"could not draw this plot: {type(exc).__name__}: {exc}")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Cells are already escaped HTML."""
    def cell(c: str) -> str:
        return f'<td class="num">{c}</td>' if NUMBER.fullmatch(c) else f"<td>{c}</td>"
    classes = classes or [""] * len(rows)
    body = "".join(f'<tr class="{cls}">' + "".join(map(cell, row)) + "</tr>" for cls, row in zip(classes, rows))
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + f"</tr>{body}</table>"


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index, dtype=float)


def _headline(runs: list[Run]) -> str:
    header = ["log", "algorithm", "budget", "status", "train rounds", "prop. MAE seen", "prop. MAE unseen",
              "MAE vs Dirichlet", "assign. acc.", "adj. Rand", "accuracy", "accuracy p10", "wall time (s)",
              "MiB up", "MiB down"]
    rows = []
    for run in runs:
        head = tables.headline(run)  # the numbers `fedgmi analyze` prints
        rows.append([_esc(x) for x in (run.name, run.algorithm, run.budget, run.status,
                                       _fmt(head["final_train_round"]))] + [
            _fmt(head.get(k, np.nan)) for k in ("proportion_mae", "proportion_mae_unseen", "proportion_mae_dirichlet",
                                                "assignment_accuracy", "adjusted_rand_index", "accuracy", "accuracy_p10")]
            + [_fmt(head["wall_time_s"], 1), _fmt(head["bytes_up_total"] / 2**20, 1),
               _fmt(head["bytes_down_total"] / 2**20, 1)])
    notes = [_note(f"{run.name}: no scored round yet, so no scores.") for run in runs if run.final() is None]
    return _table(header, rows) + "".join(notes) + "<p>Scores of the final evaluation (seen clients unless marked " \
        "unseen); – means not measured: no truth, no proportions (a single global model) or no round yet.</p>"


CURVES = (("proportion_mae", "proportion MAE vs actual counts"), ("proportion_mae_dirichlet", "proportion MAE vs Dirichlet draw"),
          ("assignment_accuracy", "sample-assignment accuracy"), ("accuracy", "personalised test accuracy"))


def _curves(runs: list[Run]) -> str:
    if all(run.scores.empty for run in runs):
        return _note("No scored round in any log yet: nothing to plot over rounds.")
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for ax, (key, label) in zip(axes.flat, CURVES):
        drawn = False
        for i, run in enumerate(runs):
            for phase, style in (("train", dict(lw=1.2)), ("evaluate", dict(ls="--", marker="o", ms=5, lw=.8))):
                rows = run.scores[run.scores.phase == phase] if not run.scores.empty else run.scores
                values = _column(rows, key)
                if values.notna().any():
                    ax.plot(rows.train_round, values, color=TAB10[i % 10], **style)
                    drawn = True
        if not drawn:
            ax.text(.5, .5, "not measured\n(no truth or no proportions)", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
        ax.set(title=label, xlabel="training round", ylabel=label.split(" vs ")[0])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=.3)
    handles = [Line2D([], [], color=TAB10[i % 10], lw=2, label=run.name) for i, run in enumerate(runs)]
    handles += [Line2D([], [], color="k", lw=1.2, label="train rounds"),
                Line2D([], [], color="k", ls="--", marker="o", lw=.8, label="evaluation rounds")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), bbox_to_anchor=(.5, -.06))
    fig.tight_layout()
    return _figure(fig, "scores over training rounds", "Lower is better for the errors, higher for the accuracies; "
                   "lines are the scores logged during training, circles the evaluation rounds (proportions from scratch).")


def _no_proportions(run: Run) -> str | None:
    """Why there are no estimated and true proportions to compare, or None when there are."""
    c = run.clients
    if "estimated_c0" in c and "actual_c0" in c and c.estimated_c0.notna().any():
        return None
    if run.final() is None:
        return _note(f"{run.name}: no evaluation yet, so no proportions to show.")
    if not run.has_truth:
        return _note(f"{run.name}: the scenario holds no truth, so estimated proportions cannot be compared.")
    return _note(f"{run.name}: the {run.algorithm} algorithm estimates no mixture proportions.")


def _scatter(run: Run) -> str:
    if (missing := _no_proportions(run)) is not None:
        return missing
    c, k = run.clients[run.clients.reported], run.num_components
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    for ax, reference, label in zip(axes, ("actual", "dirichlet"), ("actual share of training samples", "Dirichlet draw")):
        if f"{reference}_c0" not in c:
            ax.text(.5, .5, "not logged", ha="center", transform=ax.transAxes)
            continue
        for t in range(k):
            for seen, marker in ((True, "o"), (False, "^")):
                rows = c[c.seen == seen]
                ax.scatter(rows[f"{reference}_c{t}"], rows[f"estimated_c{t}"], s=26 if seen else 40, marker=marker,
                           color=TAB10[t % 10], alpha=.75, edgecolors="k" if not seen else "none", linewidths=.6)
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
        ax.set(xlim=(-.03, 1.03), ylim=(-.03, 1.03), aspect="equal", xlabel=f"true proportion ({label})",
               ylabel="estimated proportion", title=f"estimated vs {label}")
        ax.grid(alpha=.3)
    handles = [Line2D([], [], ls="", marker="s", color=TAB10[t % 10], label=f"component {t}") for t in range(k)]
    handles += [Line2D([], [], ls="", marker="o", color="grey", label="seen client"),
                Line2D([], [], ls="", marker="^", color="grey", markeredgecolor="k", label="unseen client")]
    fig.legend(handles=handles, loc="center right", bbox_to_anchor=(1.1, .5))
    fig.tight_layout()
    return _figure(fig, "estimated against true proportions", f"{run.name}, final evaluation: one point per client and "
                   "component; points on the dotted diagonal are exact, triangles are clients never seen in training.")


def _bars(run: Run) -> str:
    if (missing := _no_proportions(run)) is not None:
        return missing
    k, per_row = run.num_components, 25  # more clients per row would shrink the labels below reading size
    chunks = [run.clients.iloc[i:i + per_row] for i in range(0, len(run.clients), per_row)]
    fig, axes = plt.subplots(len(chunks), 1, figsize=(12, 3.3 * len(chunks)), squeeze=False)
    for ax, c in zip(axes[:, 0], chunks):
        x = np.arange(len(c)) * 3.0
        for offset, prefix, style in ((0, "estimated", dict()), (1, "actual", dict(alpha=.55, hatch="//"))):
            bottom = np.zeros(len(c))
            for t in range(k):
                values = np.nan_to_num(c[f"{prefix}_c{t}"].to_numpy(float))
                ax.bar(x + offset, values, width=.95, bottom=bottom, color=TAB10[t % 10], edgecolor="white", lw=.3, **style)
                bottom += values
        ax.set_xticks(x + .5, [str(i) if s else f"{i}u" for i, s in zip(c.client, c.seen)])
        ax.set(xlim=(-1, 3 * per_row - 1), ylim=(0, 1.02), ylabel="proportion")
    axes[-1, 0].set_xlabel("client (u = unseen in training)")
    axes[0, 0].set_title("per-client proportions: estimated (solid, left) and actual (hatched, right)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=TAB10[t % 10], label=f"component {t}") for t in range(k)]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(.5, 0), ncol=k, fontsize=9, frameon=False)
    return _figure(fig, "per-client proportions", f"{run.name}, final evaluation: each client has a solid bar (estimated) "
                   "beside a hatched one (actual counts); matching colour heights mean a correct estimate.")


def _confusion(run: Run) -> str:
    if run.confusion is None or run.matching is None:
        return _note(f"{run.name}: no matching of learned to true components (no truth, no proportions or no "
                     "evaluation yet), so no confusion matrix.")
    counts = run.confusion[:, run.matching]  # column t: the learned component matched to true t
    k = len(counts)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(k + 3, .85 * k + 1.5))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for t in range(k):
        for j in range(k):
            ax.text(j, t, f"{counts[t, j]:.0f}", ha="center", va="center", fontsize=10,
                    color="white" if share[t, j] > .6 else "black")
    ax.set_xticks(range(k), [f"learned {m}" for m in run.matching], rotation=30)
    ax.set_yticks(range(k), [f"true {t}" for t in range(k)])
    ax.set(xlabel="learned component (ordered by the matching)", ylabel="true component", title="sample assignments")
    fig.colorbar(image, ax=ax, label="share of the true component's samples")
    fig.tight_layout()
    return _figure(fig, "confusion matrix", f"{run.name}, final evaluation, seen clients pooled: counts of training samples "
                   "by true component (rows) and learned component (columns); the diagonal is the agreement.")


def _heldout(runs: list[Run]) -> str:
    keyed = [run for run in runs if not run.scores.empty and "heldout_log_likelihood_c0" in run.scores
             and run.scores.heldout_log_likelihood_c0.notna().any()]
    if not keyed:
        return _note("No log holds per-component held-out log-likelihoods (a classifier baseline, or no scored round yet).")
    cols = min(len(keyed), 3)
    rows_n = math.ceil(len(keyed) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols + 1.5, 3.6 * rows_n), squeeze=False, sharey=True)
    for ax, run in zip(axes.flat, keyed):
        label = "true" if run.matching is not None else "learned"
        for t in range(run.num_components):
            for phase, style in (("train", dict(lw=1.2)), ("evaluate", dict(ls="", marker="o", ms=5))):
                rows = run.scores[run.scores.phase == phase]
                ax.plot(rows.train_round, _column(rows, f"heldout_log_likelihood_c{t}"), color=TAB10[t % 10],
                        label=f"{label} {t}" if phase == "train" else None, **style)
        ax.set(title=run.name, xlabel="training round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    values = np.concatenate([run.scores.filter(like="heldout_log_likelihood_c").to_numpy(float).ravel() for run in keyed])
    low, high = np.nanquantile(values, [.05, 1])  # the first rounds' plunge would flatten the differences that matter
    axes[0, 0].set_ylim(low - .05 * (high - low + 1e-9), high + .05 * (high - low + 1e-9))
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out log-likelihood / sample")
    for ax in list(axes.flat)[len(keyed):]:
        ax.axis("off")
    fig.tight_layout()
    return _figure(fig, "held-out log-likelihood per component", "Each component's log-likelihood of held-out samples, "
                   "pooled over clients by the mass they give it (higher is better); lines: training, circles: evaluations; "
                   "the lowest 5% of values (the first rounds) lie below the axis.")


def _bytes(runs: list[Run]) -> str:
    if len({run.budget for run in runs}) < 2:
        return _note(f"All logs share one communication budget ({runs[0].budget}); nothing to trade off.")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in zip(axes, ("proportion_mae", "accuracy"), ("final proportion MAE (seen)", "final accuracy (seen)")):
        for i, run in enumerate(runs):
            final = run.final()
            train = run.rounds[run.rounds.phase == "train"]
            x = float(_column(train, "bytes_up").sum()) / max(int(run.seen.sum()), 1)
            y = float(final.get(key, np.nan)) if final is not None else np.nan
            if not np.isnan(y) and x > 0:
                ax.scatter(x, y, color=TAB10[i % 10], s=50)
                ax.annotate(f"{run.budget} ({run.algorithm})", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set(xscale="log", xlabel="training uplink bytes per seen client", ylabel=label, title=label + " against bytes")
        ax.margins(x=.25, y=.15)  # room for the labels of the outermost points
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))  # within two decades a labelled 2 and 5 keep the scale readable
        ax.xaxis.set_minor_formatter(EngFormatter(unit="B") if np.ptp(np.log10(ax.get_xlim())) < 2 else NullFormatter())
        ax.grid(alpha=.3, which="both")
    fig.tight_layout()
    return _figure(fig, "bytes against error", "One point per log, labelled with its uplink/downlink budget: further left "
                   "is cheaper, lower MAE (left) and higher accuracy (right) are better. Logs without the score are absent.")


def _samples(run: Run, model: SavedModel | None) -> str:
    if model is None:
        return _note(f"{run.name}: no saved VAE model (a classifier baseline or no evaluation yet), so no samples.")
    try:
        images = model.sample_images(per_component=12, seed=0)
    except UserError as exc:
        return _note(f"{run.name}: no samples: {exc}")
    k, n, d = images.shape
    side = math.isqrt(d)
    if side * side != d:
        return _note(f"{run.name}: samples have {d} features, not a square number, so they cannot be shown as images.")
    order = list(run.matching) if run.matching is not None else list(range(k))
    fig, axes = plt.subplots(k, n, figsize=(n * .9, k * .95), squeeze=False)
    for t, learned in enumerate(order):
        for j, ax in enumerate(axes[t]):
            ax.imshow(images[learned, j].reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
        name = f"true {t}\n(learned {learned})" if run.matching is not None else f"learned {learned}"
        axes[t, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"12 samples per component (pixel means of the decoder, z ~ N(0, I)), {run.name}", fontsize=10)
    fig.tight_layout()
    return _figure(fig, "samples from each component's VAE", "One row per component, labelled with the true component it "
                   "is matched to: a row should look like one inherent distribution (e.g. one rotation of the digits).")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _compare(title: str, runs: list[Run], items: list[dict[str, Any]]) -> str:
    """Key-by-log table; rows whose values differ between logs are shaded."""
    keys = sorted(set().union(*items))
    rows, classes = [], []
    for key in keys:
        values = [item.get(key, "") for item in items]
        rows.append([_esc(key)] + [_pretty(v) for v in values])
        classes.append("differs" if len({json.dumps(v, default=str, sort_keys=True) for v in values}) > 1 else "")
    return _table([_esc(title)] + [_esc(run.name) for run in runs], rows, classes)


def _pretty(value: Any) -> str:
    if isinstance(value, str) and value[:1] == "{":  # a JSON attribute (versions, summary): one line a key
        try:
            items = json.loads(value).items()
        except ValueError:
            return _esc(value)
        return "<pre>" + _esc("\n".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {json.dumps(v)}"
                                         for k, v in sorted(items))) + "</pre>"
    return _esc(value)


def render(runs: list[Run], models: list[SavedModel | None]) -> str:
    """The whole report of ``runs`` (the first one detailed per client) as one HTML document."""
    if not runs:
        raise UserError("a report needs at least one log")
    first, model = runs[0], (models[0] if models else None)
    sections = [
        ("Final scores", _safe(_headline, runs)),
        ("Scores over training rounds", _safe(_curves, runs)),
        (f"Estimated against true proportions: {first.name}", _safe(_scatter, first)),
        (f"Per-client proportions: {first.name}", _safe(_bars, first)),
        (f"Confusion of true and learned components: {first.name}", _safe(_confusion, first)),
        ("Held-out log-likelihood per component", _safe(_heldout, runs)),
        ("Bytes against error", _safe(_bytes, runs)),
        (f"Samples from each component's VAE: {first.name}", _safe(_samples, first, model)),
        ("Configuration", "<p>Shaded rows differ between logs.</p>" * (len(runs) > 1)
         + _compare("setting", runs, [_flatten(run.config) for run in runs])),
        ("Provenance", _compare("attribute", runs, [{**{k: v for k, v in run.attrs.items() if k != "config"},
                                                      "status": run.status, "path": str(run.path)} for run in runs])),
    ]
    title = "fedgmi report: " + ", ".join(run.name for run in runs)
    body = "".join(f"<section><h2>{_esc(heading)}</h2>{content}</section>" for heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>{body}</body></html>\n")


def _model(path: str | Path) -> SavedModel | None:
    try:
        return read_model(path)
    except UserError:  # classifier baselines and runs not yet evaluated have no usable model
        return None


def write_report(paths: list[str | Path], out: Path) -> Path:
    """Load each log, render, and write ``out`` atomically; an existing ``out`` is refused, never replaced."""
    check_new_file(Path(out))
    text = render([load(path) for path in paths], [_model(path) for path in paths])
    # checked again: rendering takes seconds and the name may have been taken meanwhile
    return write_atomically(check_new_file(Path(out)), lambda temporary: temporary.write_text(text, encoding="utf-8"))
