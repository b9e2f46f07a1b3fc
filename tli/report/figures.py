"""The report's figures, each a function of the report's tables that returns PNG bytes (None when the sweep
does not vary what the figure is about). `matplotlib.figure.Figure` only: no pyplot, no global backend.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
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
    "svg.hashsalt": "tli",  # the SVG's element ids the same on every run
}
UNDATED = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}  # a rerun's vector files equal, byte for byte


class FigureFiles(bytes):
    """A figure's PNG bytes (what the report embeds) that also carry its `pdf` and `svg` renderings."""

    pdf: bytes
    svg: bytes


def png(fig: Figure) -> FigureFiles:
    """The figure as PNG (110 dpi), with its PDF and SVG (vector, for a paper; a panel's points beyond DENSE as one
    image in them, at 150 dpi) attached, laid out once.
    """
    if fig.get_layout_engine() is None:  # a figure with a key outside its panels lays itself out (constrained)
        fig.tight_layout()
    rendered = {}
    for kind in ("png", "pdf", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=110 if kind == "png" else 150, metadata=UNDATED.get(kind))
        rendered[kind] = buffer.getvalue()
        fig.set_layout_engine("none")  # laid out once: the vector files keep the PNG's layout
    files = FigureFiles(rendered["png"])
    files.pdf, files.svg = rendered["pdf"], rendered["svg"]
    return files


def label(values: dict[str, Any]) -> str:
    """'a=1, b=x' for settings {a: 1, b: x}; 'all trials' for none."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all trials"


MAX_KEYS = 10  # legend entries per key; beyond, groups are told apart by colour and marker (two keys)
MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "X", "h")
DENSE = 500  # points in a panel beyond which PDF and SVG hold them as one image (text and axes stay vector)


@dataclass(frozen=True)
class Groups:
    """A figure's groups (one per setting of the other condition columns), each styled, and the key naming them:
    at most 2 x MAX_KEYS + 4 legend entries, or a colour bar for a numeric column, whatever the number of groups.
    """

    others: list[str]  # the columns that make a group
    names: list[str]  # each group's label, in drawing order
    colours: np.ndarray  # [groups, 4] RGBA
    markers: list[str]  # [groups]
    entries: list[tuple[Any, str]]  # legend (handle, label)
    colourbar: tuple[Any, str] | None = None  # (ScalarMappable, label): a numeric column of more than MAX_KEYS values

    def __len__(self) -> int:
        return len(self.names)

    @property
    def crowded(self) -> bool:
        return len(self) > MAX_KEYS

    def of(self, rows: pd.DataFrame) -> np.ndarray:
        """[rows] each row's group (its index in `names`)."""
        order = {name: i for i, name in enumerate(self.names)}
        return np.array([order[name] for name in _labels(rows, self.others)], dtype=int)

    def draw_key(self, fig: Figure) -> None:
        """The legend (or colour bar) outside the panels, on the right (the figure needs layout="constrained")."""
        if self.entries:
            handles, labels = zip(*self.entries)
            fig.legend(handles, labels, loc="outside right upper", fontsize=7)
        if self.colourbar is not None:
            fig.colorbar(self.colourbar[0], ax=fig.axes, label=self.colourbar[1], location="right", shrink=0.5)


def _labels(rows: pd.DataFrame, others: list[str]) -> list[str]:
    """Each row's group label ('a=1, b=x'; 'all trials' without `others`)."""
    if not others:
        return ["all trials"] * len(rows)
    return [label(dict(zip(others, values))) for values in rows[others].itertuples(index=False)]


def groups_of(rows: pd.DataFrame, others: list[str]) -> Groups:
    """The groups of `rows` by the `others` columns, in sorted order. Up to MAX_KEYS groups: one colour and one
    legend entry each. More: colour by the column of most values (a colour bar when numeric and more than
    MAX_KEYS), marker by the setting of the rest (MARKERS, repeated beyond 10, said in the key), so the key grows
    with the values, not with their product.
    """
    keys = rows[others].drop_duplicates().sort_values(others, na_position="last") if others else pd.DataFrame([{}])
    names = _labels(keys, others)
    if len(names) <= MAX_KEYS:
        shades = np.array(colours(len(names)))
        entries = [(_handle({"color": c}), name) for name, c in zip(names, shades)] if others else []
        return Groups(others, names, shades, ["o"] * len(names), entries)
    coloured = max(others, key=lambda c: rows[c].nunique(dropna=False))  # the first on a tie
    colour_of, entries, colourbar = _colour_key(rows[coloured], coloured)
    marked = [c for c in others if c != coloured]
    setting = [  # what a marker names: the values of the other columns (one column: its value alone)
        str(values[0]) if len(marked) == 1 else label(dict(zip(marked, values)))
        for values in keys[marked].itertuples(index=False)
    ]
    settings = list(dict.fromkeys(setting))  # in the groups' (sorted) order
    marker_of = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(settings)}
    if marked:
        entries.append((_handle({"color": "none"}), ", ".join(marked) + ":"))
        entries += [(_handle({"color": "grey", "marker": marker_of[name]}), name) for name in settings[:MAX_KEYS]]
        if len(settings) > MAX_KEYS:
            entries.append((_handle({"color": "none"}), f"markers repeat: {len(settings)} settings"))
    shades = np.array([colour_of.get(str(value), (0.5, 0.5, 0.5, 1.0)) for value in keys[coloured]])
    return Groups(others, names, shades, [marker_of[name] for name in setting], entries, colourbar)


def _colour_key(values: pd.Series, column: str) -> tuple[dict[str, Any], list[tuple[Any, str]], tuple | None]:
    """({value as text: RGBA}, legend entries, colour bar or None) of one column: sequential colours (viridis) for
    numbers, distinct ones otherwise; entries up to MAX_KEYS values, beyond that a colour bar (numbers) or the first
    MAX_KEYS values and a count.
    """
    from matplotlib import cm, colormaps
    from matplotlib.colors import Normalize

    ordered = _order(values)
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in ordered)
    if numeric and len(ordered) > MAX_KEYS:
        scale = cm.ScalarMappable(Normalize(min(ordered), max(ordered)), colormaps["viridis"])
        return {str(v): scale.to_rgba(v) for v in ordered}, [], (scale, column)
    shades = [colormaps["viridis"](x) for x in np.linspace(0, 0.9, len(ordered))] if numeric else colours(len(ordered))
    colour_of = {str(v): c for v, c in zip(ordered, shades)}
    entries = [(_handle({"color": "none"}), f"{column}:")]
    entries += [(_handle({"color": colour_of[str(v)]}), str(v)) for v in ordered[:MAX_KEYS]]
    if len(ordered) > MAX_KEYS:
        entries.append((_handle({"color": "none"}), f"... {len(ordered) - MAX_KEYS} more values"))
    return colour_of, entries, None


def _handle(style: dict[str, Any]):
    """A legend handle: a marker of `style` (a square without one), no line."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", ms=5, **({"marker": "s"} | style))


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


def _points(ax, x, y, group: np.ndarray, groups: Groups, interval=None, layers=None, line: str = "-") -> None:
    """Points y at x, each in its group's colour and marker, with `interval` (low, high) as vertical bars, as a few
    collections (one per marker, one of intervals) whatever the number of groups; with `layers` (integers, one per
    point), lines (`line` style) join each group's points at consecutive layers, never across a layer not measured.
    """
    from matplotlib.collections import LineCollection

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shade = groups.colours[group]
    if len(x) > DENSE:  # below the axes' rasterization threshold: one image in PDF and SVG, text and axes vector
        ax.set_rasterization_zorder(1.9)
    z = 1.5 if len(x) > DENSE else 2.5
    if interval is not None:
        ax.vlines(x, *interval, colors=shade, lw=0.6 if groups.crowded else 1.0, zorder=z)
    for marker in dict.fromkeys(groups.markers):
        drawn = np.array([groups.markers[g] == marker for g in group], dtype=bool)
        size = 9 if groups.crowded else 16
        ax.scatter(x[drawn], y[drawn], c=shade[drawn], marker=marker, s=size, zorder=z + 0.2)
    if layers is None:
        return
    segments, segment_shades = [], []
    for g in np.unique(group):
        mine = np.flatnonzero(group == g)
        mine = mine[np.argsort(layers[mine], kind="stable")]
        for run in _runs(layers[mine]):
            if run.stop - run.start > 1:
                segments.append(np.column_stack([x[mine[run]], y[mine[run]]]))
                segment_shades.append(groups.colours[g])
    width = 0.5 if groups.crowded else 1.0
    ax.add_collection(LineCollection(segments, colors=segment_shades, lw=width, linestyles=line, zorder=z + 0.1))


def _gain(rows: pd.DataFrame, prefix: str) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(gain, (CI low, CI high)) of `{prefix}diff` (the raw cosine's `mean_diff`)."""
    gain = rows["mean_diff" if not prefix else f"{prefix}diff"].to_numpy(float)
    return gain, (rows[f"{prefix}ci_low"].to_numpy(float), rows[f"{prefix}ci_high"].to_numpy(float))


def dodge(n: int, slot: float, step: float = 0.08) -> np.ndarray:
    """Offsets of `n` groups drawn side by side at one position: `step` apart, narrowed so that all stay within
    70% of `slot` (the distance to the next position): groups never reach a neighbouring position.
    """
    spacing = min(step, 0.7 / max(n, 1)) * slot
    return spacing * (np.arange(n) - (n - 1) / 2)


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
    fig = layer_gain_figure(sig, by)
    return None if fig is None else png(fig)


def layer_gain_figure(sig: pd.DataFrame, by: list[str]) -> Figure | None:
    """`gain_by_layer`'s figure: one colour (and marker, past MAX_KEYS groups: `groups_of`) per setting of the other
    condition columns, the groups side by side within a layer's slot (`dodge`), the key outside the panels.
    """
    rows = at_target(sig)
    if "target_layer" not in by or rows.empty:
        return None
    sets = [s for s in SETS if not s.endswith("_all") and (rows["set"] == s).any()]
    others = [c for c in by if c != "target_layer"]
    groups = groups_of(rows, others)
    offsets = dodge(len(groups), _slot(rows["target_layer"]))
    fig = Figure(figsize=(3.6 * len(sets) + (1.8 if others else 0), 8), layout="constrained")
    axes = fig.subplots(len(GAINS), len(sets), sharex=True, squeeze=False)
    for column, name in enumerate(sets):
        part = rows[rows["set"] == name]
        group, layers = groups.of(part), part["target_layer"].to_numpy(int)
        for r, prefix in enumerate(GAINS):
            gain, interval = _gain(part, prefix)
            _points(axes[r, column], layers + offsets[group], gain, group, groups, interval, layers)
        axes[0, column].set_title(f"{name} set")
        axes[-1, column].set_xlabel("target layer")
        axes[-1, column].xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[:, column]:
            ax.axhline(0, color="grey", lw=0.6)
    for r, label in enumerate(GAINS.values()):
        axes[r, 0].set_ylabel(f"{label}\n(95% CI)")
    if others:
        groups.draw_key(fig)
    fig.suptitle("gain at the target layer, pairs averaged over seeds")
    return fig


def _slot(layers: pd.Series) -> float:
    """The distance between neighbouring measured layers (1 for one layer): the room of a layer's groups."""
    distinct = np.unique(layers.to_numpy(int))
    return float(np.diff(distinct).min()) if len(distinct) > 1 else 1.0


def objective_and_drift(conds: pd.DataFrame, by: list[str]) -> bytes | None:
    """Validation objective (mean, SD over seeds) of the conditions whose objectives compare (`competing`: others
    are on other scales, so not on this axis) and drift (KL, Swahili and English prompts) of all, by target layer;
    groups styled and placed as in `layer_gain_figure`.
    """
    if "target_layer" not in by or conds.empty:
        return None
    others = [c for c in by if c != "target_layer"]
    compared = competing(conds)
    groups = groups_of(conds, others)
    offsets = dodge(len(groups), _slot(conds["target_layer"]))
    fig = Figure(figsize=(10 + (1.8 if others else 0), 3.8), layout="constrained")
    objective, drift = fig.subplots(1, 2, sharex=True)
    if not compared.empty:
        group, layers = groups.of(compared), compared["target_layer"].to_numpy(int)
        mean, sd = compared["objective"].to_numpy(float), compared["objective_sd"].fillna(0).to_numpy(float)
        _points(objective, layers + offsets[group], mean, group, groups, (mean - sd, mean + sd))
    group, layers = groups.of(conds), conds["target_layer"].to_numpy(int)
    for language, line in (("sw", "-"), ("en", "--")):
        if f"drift_kl_{language}" in conds:
            kl = conds[f"drift_kl_{language}"].to_numpy(float)
            _points(drift, layers + offsets[group], kl, group, groups, layers=layers, line=line)
    objective.set(
        xlabel="target layer",
        ylabel="validation centred gap gain, alike (± SD over seeds)",
        title="selection objective (conditions that compete)"
        if not compared.empty
        else "objectives on other scales: not drawn",
    )
    drift.set(xlabel="target layer", ylabel="KL(base || TLI), next-token", title="drift (solid: sw, dashed: en)")
    objective.xaxis.set_major_locator(MaxNLocator(integer=True))
    if others:
        groups.draw_key(fig)
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
    groups styled and placed as in `layer_gain_figure`.
    """
    rows = at_target(sig)
    if rows.empty or axis not in swept_axes(by):
        return None
    rows = rows.assign(_value=axis_values(rows, axis))
    values = _order(rows["_value"])
    position = {str(v): i for i, v in enumerate(values)}
    others = [c for c in by if c not in (PROTOCOL if axis == "protocol" else (axis,))]
    sets = [s for s in SETS if not s.endswith("_all") and (rows["set"] == s).any()]
    groups = groups_of(rows, others)
    offsets = dodge(len(groups), 1.0, step=0.15)
    width = max(3.6, 0.6 * len(values) + 1.5) * len(sets) + (1.8 if others else 0)
    fig = Figure(figsize=(width, 8), layout="constrained")
    axes = fig.subplots(len(GAINS), len(sets), sharex=True, squeeze=False)
    for column, name in enumerate(sets):
        part = rows[rows["set"] == name]
        group = groups.of(part)
        x = part["_value"].astype(str).map(position).to_numpy(float) + offsets[group]
        for r, prefix in enumerate(GAINS):
            gain, interval = _gain(part, prefix)
            _points(axes[r, column], x, gain, group, groups, interval)
        axes[0, column].set_title(f"{name} set")
        axes[-1, column].set_xticks(range(len(values)))
        axes[-1, column].set_xticklabels([str(v) for v in values], rotation=30, ha="right")
        axes[-1, column].set_xlabel(axis)
        for ax in axes[:, column]:
            ax.axhline(0, color="grey", lw=0.6)
    for r, name in enumerate(GAINS.values()):
        axes[r, 0].set_ylabel(f"{name}\n(95% CI)")
    if others:
        groups.draw_key(fig)
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
    others = [c for c in by if c != "heldout_category"]
    groups = groups_of(rows, others)
    width = 0.8 / len(groups)
    group = groups.of(rows)
    x = rows["heldout_category"].astype(str).map({c: i for i, c in enumerate(categories)}).to_numpy(float)
    x += (group - (len(groups) - 1) / 2) * width
    size = (max(7.0, 0.9 * len(categories) + 2) + (1.8 if others else 0), 7)  # the width grows with categories
    fig = Figure(figsize=size, layout="constrained")  # panels stacked
    for ax, prefix in zip(fig.subplots(2, 1, sharex=True), ("", "centered_gap_alike_")):
        mean, (low, high) = _gain(rows, prefix)
        err = np.abs(np.vstack([mean - low, high - mean]))
        ax.bar(x, mean, width, yerr=err, capsize=0 if groups.crowded else 3, color=groups.colours[group])
        if groups.crowded:  # colour names one column; the marker on top names the rest
            for marker in dict.fromkeys(groups.markers):
                drawn = np.array([groups.markers[g] == marker for g in group], dtype=bool)
                ax.scatter(x[drawn], mean[drawn], marker=marker, s=9, color="black", zorder=3)
        ax.set(xticks=range(len(categories)), ylabel=f"{GAINS[prefix]} (95% CI)")
        ax.axhline(0, color="grey", lw=0.6)
    fig.axes[1].set_xticklabels(categories, rotation=30, ha="right")
    fig.axes[1].set_xlabel("held-out category")
    if others:
        groups.draw_key(fig)
    fig.suptitle("held-out categories: does TLI transfer to words of a category never trained on?")
    return png(fig)


def _condition_labels(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    """Each row's condition as a short label (the values of `by`; 'all trials' without)."""
    return rows.apply(lambda row: ", ".join(str(row[c]) for c in by) or "all trials", axis=1)


MAX_TICKS = 30  # condition labels on a categorical axis; beyond, every k-th condition is labelled


def _panel_width(n: int) -> float:
    """Inches of a panel with `n` conditions side by side: 0.5 each, from 3.6 up to 12 (past 20 conditions the
    points stay within it and the labels thin out: `_condition_ticks`).
    """
    return min(max(3.6, 0.5 * n + 1.8), 12.0)


def _condition_ticks(ax, labels: list[str]) -> None:
    """One tick per condition, at most MAX_TICKS of them labelled (every k-th, said in the axis label)."""
    step = -(-len(labels) // MAX_TICKS)
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], rotation=30 if step == 1 else 90, ha="right" if step == 1 else "center")
    if step > 1:
        ax.set_xlabel(f"condition ({len(labels)}; every {step}th labelled)")


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
    fig = Figure(figsize=(_panel_width(len(labels)) * len(sets), 3.8))
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
        ax.set(title=f"{name} set", ylabel="P@1 (%)")
        _condition_ticks(ax, labels)
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
    fig = Figure(figsize=(_panel_width(len(labels)) * len(directions), 3.8))
    width = 0.6 / max(1, len(sets))
    for ax, direction in zip(fig.subplots(1, len(directions), squeeze=False)[0], directions):
        for i, (name, colour) in enumerate(zip(sets, colours(len(sets)))):
            part = rows[(rows["direction"] == direction) & (rows["set"] == name)]
            x = part["_label"].map({label: j for j, label in enumerate(labels)}).to_numpy(float)
            x = x + width * (i - (len(sets) - 1) / 2)
            ax.scatter(x, 100 * part["accuracy_pre"], marker="o", facecolors="none", color=colour)
            ax.scatter(x, 100 * part["accuracy_post"], marker="o", color=colour, label=name)
        ax.set(title=direction.replace("_", " -> "), ylabel="words translated (%)")
        _condition_ticks(ax, labels)
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
