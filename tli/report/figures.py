"""The report's figures, each a function of the report's tables that returns PNG bytes (None when the sweep
does not vary what the figure is about). `matplotlib.figure.Figure` only: no pyplot, no global backend.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tli.evaluate import SETS
from tli.report.conditions import PROTOCOL
from tli.report.selection import competing
from tli.report.significance import at_target
from tli.report.verdict import protocol_name

GAINS = {  # significance-table prefix -> label: the gains the verdict tests
    "": "raw cosine gain",
    "gap_alike_": "gap gain (over alike\nnon-translations)",
    "centered_gap_alike_": "centred gap gain\n(alike)",
}


# Fit for a paper: small type (a two-column page shows figures at about half their width), text kept as text
# in PDF (TrueType, editable and searchable) and SVG. Figures are drawn inside matplotlib.rc_context(PAPER_STYLE).
PAPER_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7,
    "figure.titlesize": 10,
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
}


class FigureFiles(bytes):
    """A figure's PNG bytes (what the report embeds) that also carry its `pdf` and `svg` renderings."""

    pdf: bytes
    svg: bytes


def png(fig: Figure) -> FigureFiles:
    """The figure as PNG (110 dpi), with its PDF and SVG (vector, for a paper) attached."""
    fig.tight_layout()
    rendered = {}
    for kind in ("png", "pdf", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=110, metadata={"Date": None} if kind == "pdf" else None)
        rendered[kind] = buffer.getvalue()
    files = FigureFiles(rendered["png"])
    files.pdf, files.svg = rendered["pdf"], rendered["svg"]
    return files


def label(values: dict[str, Any]) -> str:
    """'a=1, b=x' for settings {a: 1, b: x}; 'all trials' for none."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all trials"


def _lines(rows: pd.DataFrame, others: list[str]):
    """(label, rows, colour) per setting of the `others` columns, each its own colour (`colours`)."""
    if not others:
        yield "all trials", rows, colours(1)[0]
        return
    groups = list(rows.groupby(others, dropna=False, sort=True))
    for (key, part), colour in zip(groups, colours(len(groups))):
        yield label(dict(zip(others, key if isinstance(key, tuple) else (key,)))), part, colour


def colours(n: int) -> list[tuple]:
    """`n` distinct colours: tab10 up to 10, tab20 up to 20, else n evenly spaced on turbo (no colour repeats)."""
    from matplotlib import colormaps

    if n <= 20:
        cycle = colormaps["tab10" if n <= 10 else "tab20"]
        return [cycle(i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.0, 1.0, n)]


def _runs(layers: np.ndarray) -> list[slice]:
    """Slices of ascending integer `layers` whose layers are consecutive: a line joins measured neighbours only."""
    edges = [0, *(np.flatnonzero(np.diff(layers) != 1) + 1), len(layers)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _errorbar(ax, x: np.ndarray, rows: pd.DataFrame, prefix: str, label: str, colour, layers=None) -> None:
    """Gain `{prefix}diff` (the raw cosine's `mean_diff`) against x with its 95% CI, as points; with `layers`
    (ascending, one per row), lines join runs of consecutive layers, never across a layer not measured.
    """
    mean = rows["mean_diff" if not prefix else f"{prefix}diff"].to_numpy(float)
    low, high = rows[f"{prefix}ci_low"].to_numpy(float), rows[f"{prefix}ci_high"].to_numpy(float)
    yerr = np.abs(np.vstack([mean - low, high - mean]))
    ax.errorbar(x, mean, yerr=yerr, marker="o", ms=4, capsize=3, ls="none", color=colour, label=label)
    for run in _runs(np.asarray(layers)) if layers is not None else []:
        ax.plot(np.asarray(x)[run], mean[run], color=colour, lw=1)


def layer_scan(scan: pd.DataFrame) -> bytes | None:
    """The paper's Figure 1 with its control: matched vs mismatched cosine by layer, every pooling mode."""
    if scan.empty:
        return None
    models = ", ".join(map(str, scan["model"].unique()))
    return png(scan_figure(scan, title=f"pre-TLI layer scan of {models} (dashed: mismatched-pair baseline)"))


def scan_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """Matched vs mismatched cosine per layer (raw and per-language centred): the paper's Figure 1 with its control."""
    fig = Figure(figsize=(11, 4))
    raw, centred = fig.subplots(1, 2, sharex=True)
    for mode, rows in table.groupby("pooling", sort=False):
        line = raw.plot(rows["layer"], rows["cosine_mean"], marker="o", ms=3, label=f"matched ({mode})")[0]
        raw.plot(
            rows["layer"], rows["cosine_mismatched"], ls="--", color=line.get_color(), label=f"mismatched ({mode})"
        )
        centred.plot(
            rows["layer"], rows["cosine_centered"], marker="o", ms=3, color=line.get_color(), label=f"matched ({mode})"
        )
        centred.plot(
            rows["layer"],
            rows["cosine_centered_mismatched"],
            ls="--",
            color=line.get_color(),
            label=f"mismatched ({mode})",
        )
    raw.set(title="raw cosine", xlabel="layer (hidden_states index; 0 = embeddings)", ylabel="mean cosine")
    centred.set(title="per-language centred cosine", xlabel="layer (hidden_states index; 0 = embeddings)")
    centred.axhline(0, color="grey", lw=0.5)
    raw.legend(fontsize=7)
    fig.suptitle(title or "Swahili-English alignment by layer (dashed: mismatched-pair baseline)")
    fig.tight_layout()
    return fig


def gain_by_layer(sig: pd.DataFrame, by: list[str]) -> bytes | None:
    """Per set (columns): raw cosine, gap and centred-gap gains (GAINS: over alike non-translations; rows) with 95%
    CIs, by target layer.
    """
    rows = at_target(sig)
    if "target_layer" not in by or rows.empty:
        return None
    sets = [s for s in SETS if not s.endswith("_all") and (rows["set"] == s).any()]
    others = [c for c in by if c != "target_layer"]
    fig = Figure(figsize=(3.6 * len(sets), 8))
    axes = fig.subplots(len(GAINS), len(sets), sharex=True, squeeze=False)
    for column, name in enumerate(sets):
        groups = list(_lines(rows[rows["set"] == name].sort_values("target_layer"), others))
        for i, (label, part, colour) in enumerate(groups):
            layers = part["target_layer"].to_numpy(int)
            x = layers + 0.08 * (i - (len(groups) - 1) / 2)
            for r, prefix in enumerate(GAINS):
                _errorbar(axes[r, column], x, part, prefix, label, colour, layers)
        axes[0, column].set_title(f"{name} set")
        axes[-1, column].set_xlabel("target layer")
        axes[-1, column].xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[:, column]:
            ax.axhline(0, color="grey", lw=0.6)
    for r, label in enumerate(GAINS.values()):
        axes[r, 0].set_ylabel(f"{label}\n(95% CI)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("gain at the target layer, pairs averaged over seeds")
    return png(fig)


def objective_and_drift(conds: pd.DataFrame, by: list[str]) -> bytes | None:
    """Validation objective (mean, SD over seeds) of the conditions whose objectives compare (`competing`: others
    are on other scales, so not on this axis) and drift (KL, Swahili and English prompts) of all, by target layer.
    """
    if "target_layer" not in by or conds.empty:
        return None
    others = [c for c in by if c != "target_layer"]
    compared = set(competing(conds).index)
    fig = Figure(figsize=(10, 3.8))
    objective, drift = fig.subplots(1, 2, sharex=True)
    for label, part, colour in _lines(conds.sort_values("target_layer"), others):
        layers = part["target_layer"].to_numpy(int)
        shown = part.index.isin(compared)
        if shown.any():
            objective.errorbar(
                layers[shown],
                part["objective"][shown],
                yerr=part["objective_sd"][shown].fillna(0),
                marker="o",
                ms=4,
                capsize=3,
                ls="none",
                color=colour,
                label=label,
            )
        for language, style in (("sw", "-"), ("en", "--")):
            if f"drift_kl_{language}" in part:
                kl = part[f"drift_kl_{language}"].to_numpy(float)
                drift.plot(layers, kl, marker="o", ms=3, ls="none", color=colour)
                for run in _runs(layers):
                    drift.plot(layers[run], kl[run], style, color=colour, lw=1)
    objective.set(
        xlabel="target layer",
        ylabel="validation centred gap gain, alike (± SD over seeds)",
        title="selection objective (conditions that compete)" if compared else "objectives on other scales: not drawn",
    )
    drift.set(xlabel="target layer", ylabel="KL(base || TLI), next-token", title="drift (solid: sw, dashed: en)")
    objective.xaxis.set_major_locator(MaxNLocator(integer=True))
    if compared:
        objective.legend(fontsize=7)
    return png(fig)


def axis_values(rows: pd.DataFrame, axis: str) -> pd.Series:
    """Each row's value on a swept axis: the setting itself, or for "protocol" its name (`protocol_name` when
    the three protocol settings are columns, else the protocol settings that are).
    """
    if axis != "protocol":
        return rows[axis]
    present = [c for c in PROTOCOL if c in rows]
    if {"pooling_train", "pooling_eval", "mask_false_negatives"} <= set(present):
        return pd.Series([protocol_name(**values) for values in rows[present].to_dict("records")], rows.index)
    named = [label(dict(zip(present, values))) for values in rows[present].itertuples(index=False)]
    return pd.Series(named, rows.index)


def swept_axes(by: list[str]) -> list[str]:
    """The axes that get a `gain_by_axis` figure: every condition column but target_layer and heldout_category (their
    own figures), the protocol settings as one axis "protocol".
    """
    axes = [c for c in by if c not in ("target_layer", "heldout_category", *PROTOCOL)]
    return axes + (["protocol"] if any(c in by for c in PROTOCOL) else [])


def _order(values: pd.Series) -> list:
    """The distinct values of an axis in order: numbers ascending, other values as strings ascending."""
    distinct = values.dropna().unique().tolist()
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return sorted(map(str, distinct))


def gain_by_axis(sig: pd.DataFrame, by: list[str], axis: str) -> bytes | None:
    """Per set (columns): raw cosine, gap and centred-gap gains (GAINS; rows) with 95% CIs at the target layer, at each
    value of one swept axis (categorical positions, points only: nothing is drawn between values not measured),
    one colour per setting of the other condition columns.
    """
    rows = at_target(sig)
    if rows.empty or axis not in swept_axes(by):
        return None
    rows = rows.assign(_value=axis_values(rows, axis))
    values = _order(rows["_value"])
    position = {str(v): i for i, v in enumerate(values)}
    others = [c for c in by if c not in (PROTOCOL if axis == "protocol" else (axis,))]
    sets = [s for s in SETS if not s.endswith("_all") and (rows["set"] == s).any()]
    fig = Figure(figsize=(max(3.6, 0.6 * len(values) + 1.5) * len(sets), 8))
    axes = fig.subplots(len(GAINS), len(sets), sharex=True, squeeze=False)
    for column, name in enumerate(sets):
        groups = list(_lines(rows[rows["set"] == name], others))
        width = 0.6 / max(1, len(groups))
        for i, (label, part, colour) in enumerate(groups):
            x = part["_value"].astype(str).map(position).to_numpy(float) + width * (i - (len(groups) - 1) / 2)
            for r, prefix in enumerate(GAINS):
                _errorbar(axes[r, column], x, part, prefix, label, colour)
        axes[0, column].set_title(f"{name} set")
        axes[-1, column].set_xticks(range(len(values)))
        axes[-1, column].set_xticklabels([str(v) for v in values], rotation=30, ha="right")
        axes[-1, column].set_xlabel(axis)
        for ax in axes[:, column]:
            ax.axhline(0, color="grey", lw=0.6)
    for r, name in enumerate(GAINS.values()):
        axes[r, 0].set_ylabel(f"{name}\n(95% CI)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"gain at the target layer by {axis}, pairs averaged over seeds")
    return png(fig)


def rank_margin(sig: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> bytes | None:
    """Heat maps over LoRA rank x margin: the validation objective and the control set's centred-gap gain (over
    alike non-translations).
    """
    if not {"lora_rank", "margin"} <= set(by):
        return None
    control = at_target(sig)[lambda t: t["set"] == "control"]
    panels = [
        (conds, "objective", "validation objective"),
        (control, "centered_gap_alike_diff", "control: centred gap gain (alike)"),
    ]
    fig = Figure(figsize=(10, 4))
    for ax, (table, value, title) in zip(fig.subplots(1, 2), panels):
        grid = table.pivot_table(index="lora_rank", columns="margin", values=value, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(float), cmap="viridis", aspect="auto")
        ax.set(
            xticks=range(grid.shape[1]),
            xticklabels=grid.columns,
            yticks=range(grid.shape[0]),
            yticklabels=grid.index,
            xlabel="margin",
            ylabel="LoRA rank",
            title=title,
        )
        middle = np.nanmean(grid.to_numpy(float))
        for (i, j), v in np.ndenumerate(grid.to_numpy(float)):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="black" if v > middle else "white", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.suptitle("LoRA rank x margin at the target layer (mean over the other settings)")
    return png(fig)


def heldout(sig: pd.DataFrame, by: list[str]) -> bytes | None:
    """Raw cosine and centred-gap gains (over alike non-translations; 95% CI) on each held-out category, never
    trained on.
    """
    rows = at_target(sig)[lambda t: t["set"] == "heldout"]
    if "heldout_category" not in by or rows.empty:
        return None
    categories = sorted(rows["heldout_category"].astype(str).unique())
    groups = list(_lines(rows, [c for c in by if c != "heldout_category"]))
    width = 0.8 / len(groups)
    fig = Figure(figsize=(max(7.0, 0.9 * len(categories) + 2), 7))  # panels stacked: the width grows with categories
    for ax, prefix in zip(fig.subplots(2, 1, sharex=True), ("", "centered_gap_alike_")):
        for i, (label, part, colour) in enumerate(groups):
            part = part.set_index(part["heldout_category"].astype(str)).reindex(categories)
            x = np.arange(len(categories)) + (i - (len(groups) - 1) / 2) * width
            mean = part["mean_diff" if not prefix else f"{prefix}diff"].to_numpy(float)
            err = np.abs(np.vstack([mean - part[f"{prefix}ci_low"], part[f"{prefix}ci_high"] - mean]))
            ax.bar(x, mean, width, yerr=err, capsize=3, label=label, color=colour)
        ax.set(xticks=range(len(categories)), ylabel=f"{GAINS[prefix]} (95% CI)")
        ax.axhline(0, color="grey", lw=0.6)
    fig.axes[1].set_xticklabels(categories, rotation=30, ha="right")
    fig.axes[1].set_xlabel("held-out category")
    fig.axes[0].legend(fontsize=7)
    fig.suptitle("held-out categories: does TLI transfer to words of a category never trained on?")
    return png(fig)


def _condition_labels(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    """Each row's condition as a short label (the values of `by`; 'all trials' without)."""
    return rows.apply(lambda row: ", ".join(str(row[c]) for c in by) or "all trials", axis=1)


def retrieval_baselines(rows: pd.DataFrame, by: list[str]) -> bytes | None:
    """Per set (panels): centred P@1 before (open) and after (filled) TLI at each condition's target layer, beside
    the orthographic and Procrustes baselines and chance on the same pool (categorical positions, points only).
    """
    needed = {"p_at_1_centered_pre", "orthographic_p_at_1", "procrustes_p_at_1"}
    if rows.empty or not needed <= set(rows):
        return None
    rows = rows.assign(_label=_condition_labels(rows, by))
    labels = list(dict.fromkeys(rows["_label"]))
    sets = list(dict.fromkeys(rows["set"]))
    fig = Figure(figsize=(max(3.6, 0.5 * len(labels) + 1.8) * len(sets), 3.8))
    marks = [
        ("p_at_1_centered_pre", "model before TLI (centred)", "o", "none"),
        ("p_at_1_centered_post", "model after TLI (centred)", "o", None),
        ("orthographic_p_at_1", "orthographic (edit distance)", "x", None),
        ("procrustes_p_at_1", "Procrustes map (frozen model)", "^", None),
        ("p_at_1_chance", "chance", "_", None),
    ]
    for ax, name in zip(fig.subplots(1, len(sets), squeeze=False)[0], sets):
        part = rows[rows["set"] == name]
        x = part["_label"].map({label: i for i, label in enumerate(labels)}).to_numpy(float)
        for (column, text, marker, face), colour in zip(marks, colours(len(marks))):
            kwargs = {"facecolors": face} if face else {}
            ax.scatter(x, 100 * part[column].to_numpy(float), marker=marker, color=colour, label=text, **kwargs)
        ax.set(title=f"{name} set", xticks=range(len(labels)), ylabel="P@1 (%)")
        ax.set_xticklabels(labels, rotation=30, ha="right")
    fig.axes[0].legend(fontsize=7)
    fig.suptitle("retrieval at the target layer beside two baselines on the same candidate pool")
    return png(fig)


def translation_probe(rows: pd.DataFrame, by: list[str]) -> bytes | None:
    """Per direction (panels): the translation probe's accuracy before (open) and after (filled) TLI, one colour
    per set, at each condition (categorical positions, points only).
    """
    if rows.empty:
        return None
    rows = rows.assign(_label=_condition_labels(rows, by))
    labels = list(dict.fromkeys(rows["_label"]))
    sets = list(dict.fromkeys(rows["set"]))
    directions = list(dict.fromkeys(rows["direction"]))
    fig = Figure(figsize=(max(3.6, 0.5 * len(labels) + 1.8) * len(directions), 3.8))
    width = 0.6 / max(1, len(sets))
    for ax, direction in zip(fig.subplots(1, len(directions), squeeze=False)[0], directions):
        for i, (name, colour) in enumerate(zip(sets, colours(len(sets)))):
            part = rows[(rows["direction"] == direction) & (rows["set"] == name)]
            x = part["_label"].map({label: j for j, label in enumerate(labels)}).to_numpy(float)
            x = x + width * (i - (len(sets) - 1) / 2)
            ax.scatter(x, 100 * part["accuracy_pre"], marker="o", facecolors="none", color=colour)
            ax.scatter(x, 100 * part["accuracy_post"], marker="o", color=colour, label=name)
        ax.set(title=direction.replace("_", " -> "), xticks=range(len(labels)), ylabel="words translated (%)")
        ax.set_xticklabels(labels, rotation=30, ha="right")
    fig.axes[0].legend(fontsize=7, title="set (open: before, filled: after)")
    fig.suptitle("translation probe: few-shot word translation, greedy, before and after TLI")
    return png(fig)


COSINE_LINES = {"positive": "anchor · translation", "hardest_negative": "anchor · hardest negative"}
COSINE_LINES |= {"negatives": "anchor · every negative"}


def training_dynamics(log: pd.DataFrame, losses: list[str], title: str) -> bytes | None:
    """One condition's training step by step (`tli.train.LOG_COLUMNS`, the mean over its trials at each step; step
    0, marked by a diamond, is the model before any update on the first epoch's batches): the loss (triplet: loss -
    margin; InfoNCE: its loss in nats, on its own axis: losses of both are never drawn on one), the share of open
    hinges, the mean cosines raw and per-language centred, the gradient norm and ||delta W||. `losses`: the
    condition's losses. None when the log has no dynamics.
    """
    if log.empty or "cos_positive" not in log:
        return None
    steps = log.groupby("step").mean(numeric_only=True)
    fig = Figure(figsize=(11, 5.6))
    (loss_ax, hinge_ax, raw_ax), (grad_ax, norm_ax, centred_ax) = fig.subplots(2, 3, sharex=True)

    def draw(ax, column: str, label: str | None = None, colour=None) -> None:
        line = ax.plot(steps.index, steps[column], lw=0.9, label=label, color=colour)[0]
        if 0 in steps.index:
            ax.plot([0], [steps.loc[0, column]], marker="D", ms=4, color=line.get_color())

    if losses == ["triplet"]:
        draw(loss_ax, "loss_minus_margin")
        loss_ax.axhline(0, color="grey", lw=0.6)
        loss_ax.set(title="triplet loss - margin (0: at the margin)", ylabel="cosine units")
        draw(hinge_ax, "active_hinges")
        hinge_ax.set(title="open hinges (share of anchors)", ylim=(-0.05, 1.05))
    else:
        if losses == ["infonce"]:
            draw(loss_ax, "loss")
        loss_ax.set(title="InfoNCE loss (nats)" if losses == ["infonce"] else "several losses: not on one axis")
        hinge_ax.set(title="no hinges: InfoNCE" if losses == ["infonce"] else "hinges: triplet only")
    for ax, kind, name in ((raw_ax, "", "raw"), (centred_ax, "centered_", "per-language centred")):
        for (column, label), colour in zip(COSINE_LINES.items(), colours(3)):
            draw(ax, f"{kind}cos_{column}", label, colour)
        ax.set(title=f"mean cosine, {name}")
    raw_ax.legend(fontsize=6)
    draw(grad_ax, "grad_norm")
    grad_ax.set(title="gradient norm (LoRA parameters)", xlabel="step")
    draw(norm_ax, "lora_norm")
    norm_ax.set(title="‖ΔW‖ of the LoRA update", xlabel="step")
    centred_ax.set(xlabel="step")
    for ax in (grad_ax, norm_ax, centred_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"what training did: {title} (◆ step 0, before any update)")
    return png(fig)


def _tsne(sw: np.ndarray, en: np.ndarray, seed: int) -> np.ndarray:
    """[2n, 2] t-SNE coordinates of the stacked rows (perplexity kept below the sample count; the exact method for
    up to 1,000 points: Barnes-Hut's OpenMP threads take seconds even on a few dozen points on a busy machine).
    """
    from sklearn.manifold import TSNE

    points = np.concatenate([sw, en]).astype(np.float64)
    perplexity = float(min(30.0, max(1.0, (len(points) - 1) / 3)))
    method = "exact" if len(points) <= 1000 else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method).fit_transform(
        points
    )


def tsne(embeddings: dict[str, Any], seed: int = 0) -> bytes:
    """The paper's Figures 2-3: t-SNE of Swahili and English embeddings before and after TLI, translations joined.

    `embeddings`: {"pre": (swahili [n, d], english [n, d]), "post": (...), "words": [n] labels, "title": str}.
    """
    words = embeddings.get("words")
    fig = Figure(figsize=(11, 5))
    axes = fig.subplots(1, 2)
    for ax, when in zip(axes, ("pre", "post")):
        sw, en = (np.asarray(v, dtype=np.float64) for v in embeddings[when])
        xy, n = _tsne(sw, en, seed), len(sw)
        for i in range(n):
            ax.plot(xy[[i, n + i], 0], xy[[i, n + i], 1], color="grey", lw=0.5, alpha=0.6)
        ax.scatter(xy[:n, 0], xy[:n, 1], s=14, label="Swahili", color="tab:orange")
        ax.scatter(xy[n:, 0], xy[n:, 1], s=14, label="English", color="tab:blue")
        for i, word in enumerate(words if words is not None and n <= 40 else []):
            ax.annotate(str(word), xy[i], fontsize=6)
        ax.set(title=f"{'before' if when == 'pre' else 'after'} TLI", xticks=[], yticks=[])
    axes[0].legend(fontsize=8)
    fig.suptitle(embeddings.get("title", "t-SNE of pair embeddings") + " (lines join translations)", fontsize=10)
    return png(fig)
