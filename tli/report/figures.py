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
from tli.report.significance import at_target

GAINS = {  # significance-table prefix -> label
    "": "raw cosine gain",
    "gap_": "gap gain (over mismatched pairs)",
    "centered_gap_": "centred gap gain",
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
    """(label, rows) per setting of the `others` columns."""
    if not others:
        yield "all trials", rows
        return
    for key, part in rows.groupby(others, dropna=False, sort=True):
        yield label(dict(zip(others, key))), part


def _errorbar(ax, x: pd.Series, rows: pd.DataFrame, prefix: str, label: str) -> None:
    """Gain `{prefix}diff` (the raw cosine's `mean_diff`) against x with its 95% CI."""
    mean = rows["mean_diff" if not prefix else f"{prefix}diff"].to_numpy(float)
    low, high = rows[f"{prefix}ci_low"].to_numpy(float), rows[f"{prefix}ci_high"].to_numpy(float)
    ax.errorbar(x, mean, yerr=np.abs(np.vstack([mean - low, high - mean])), marker="o", ms=4, capsize=3, label=label)


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
    """Per set (columns): raw cosine, gap and centred-gap gains (rows) with 95% CIs, by target layer."""
    rows = at_target(sig)
    if "target_layer" not in by or rows.empty:
        return None
    sets = [s for s in SETS if not s.endswith("_all") and (rows["set"] == s).any()]
    others = [c for c in by if c != "target_layer"]
    fig = Figure(figsize=(3.6 * len(sets), 8))
    axes = fig.subplots(len(GAINS), len(sets), sharex=True, squeeze=False)
    for column, name in enumerate(sets):
        groups = list(_lines(rows[rows["set"] == name], others))
        for i, (label, part) in enumerate(groups):
            x = part["target_layer"].astype(float) + 0.08 * (i - (len(groups) - 1) / 2)
            for r, prefix in enumerate(GAINS):
                _errorbar(axes[r, column], x, part, prefix, label)
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
    """Validation objective (mean, SD over seeds) and drift (KL, Swahili and English prompts) by target layer."""
    if "target_layer" not in by or conds.empty:
        return None
    others = [c for c in by if c != "target_layer"]
    fig = Figure(figsize=(10, 3.8))
    objective, drift = fig.subplots(1, 2, sharex=True)
    for label, part in _lines(conds.sort_values("target_layer"), others):
        x = part["target_layer"].astype(float)
        drawn = objective.errorbar(
            x, part["objective"], yerr=part["objective_sd"].fillna(0), marker="o", ms=4, capsize=3, label=label
        )
        for language, style in (("sw", "-"), ("en", "--")):
            if f"drift_kl_{language}" in part:
                drift.plot(x, part[f"drift_kl_{language}"], style, marker="o", ms=3, color=drawn.lines[0].get_color())
    objective.set(
        xlabel="target layer",
        ylabel="validation centred-gap gain (± SD over seeds)",
        title="selection objective (validation set, fixed layer)",
    )
    drift.set(xlabel="target layer", ylabel="KL(base || TLI), next-token", title="drift (solid: sw, dashed: en)")
    objective.xaxis.set_major_locator(MaxNLocator(integer=True))
    objective.legend(fontsize=7)
    return png(fig)


def rank_margin(sig: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> bytes | None:
    """Heat maps over LoRA rank x margin: the validation objective and the control set's centred-gap gain."""
    if not {"lora_rank", "margin"} <= set(by):
        return None
    control = at_target(sig)[lambda t: t["set"] == "control"]
    panels = [(conds, "objective", "validation objective"), (control, "centered_gap_diff", "control: centred gap gain")]
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
    """Raw cosine and centred-gap gains (95% CI) on each held-out category, never trained on."""
    rows = at_target(sig)[lambda t: t["set"] == "heldout"]
    if "heldout_category" not in by or rows.empty:
        return None
    categories = sorted(rows["heldout_category"].astype(str).unique())
    groups = list(_lines(rows, [c for c in by if c != "heldout_category"]))
    width = 0.8 / len(groups)
    fig = Figure(figsize=(max(7.0, 0.9 * len(categories) + 2), 7))  # panels stacked: the width grows with categories
    for ax, prefix in zip(fig.subplots(2, 1, sharex=True), ("", "centered_gap_")):
        for i, (label, part) in enumerate(groups):
            part = part.set_index(part["heldout_category"].astype(str)).reindex(categories)
            x = np.arange(len(categories)) + (i - (len(groups) - 1) / 2) * width
            mean = part["mean_diff" if not prefix else f"{prefix}diff"].to_numpy(float)
            err = np.abs(np.vstack([mean - part[f"{prefix}ci_low"], part[f"{prefix}ci_high"] - mean]))
            ax.bar(x, mean, width, yerr=err, capsize=3, label=label)
        ax.set(xticks=range(len(categories)), ylabel=f"{GAINS[prefix]} (95% CI)")
        ax.axhline(0, color="grey", lw=0.6)
    fig.axes[1].set_xticklabels(categories, rotation=30, ha="right")
    fig.axes[1].set_xlabel("held-out category")
    fig.axes[0].legend(fontsize=7)
    fig.suptitle("held-out categories: does TLI transfer to words of a category never trained on?")
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
