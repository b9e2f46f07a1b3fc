"""Rendering: the report as a list of blocks, written as Markdown and as one self-contained HTML page.

Every table goes through one renderer, `table_text`: GitHub Markdown, HTML for the page, LaTeX (booktabs) beside
it, laid out as tabulate lays them out. Figures are PNG bytes: files under figures/ for the Markdown, data: URIs in
the HTML. Every file is written atomically (`tli.files.Folder`), on a local disk or an object store.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tli.files import Folder

STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.45;color:#222}"
    "table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;overflow-x:auto}"
    "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f0f0f0}"
    "img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#555}"
)


@dataclass(frozen=True)
class Plot:
    """One figure block: its file name, PNG bytes (None: skipped, for `reason`) and caption."""

    name: str
    data: bytes | None
    caption: str
    reason: str = ""


Block = tuple[str, Any]  # ("h1" | "h2" | "p", text), ("table", DataFrame) or ("figure", Plot)


def _is_p(column: str) -> bool:
    """A p-value column: `p`, `*_p`, and their corrections `*_holm`, `*_bh` (not `p_at_1`, a precision); the
    compact table's `<effect> p` and `<effect> p (Holm)`.
    """
    return column in ("p", "p_holm", "p_bh") or column.endswith(("_p", "_p_holm", "_p_bh", " p", " p (Holm)"))


def column_cells(values: pd.Series, column: str) -> list[str]:
    """One column's cells in one format: p-values to 3 decimals (below 0.001: `<0.001`); other floats to 4
    decimals, or, in a column whose largest magnitude is below 0.001 (drift near its floor), all as `1.23e-05`;
    lists joined, missing values empty. The exact numbers stay in significance.csv.
    """
    numbers = pd.to_numeric(values, errors="coerce") if values.dtype == object else values
    floats = pd.api.types.is_float_dtype(numbers) and not pd.api.types.is_bool_dtype(values)
    tiny = floats and 0 < np.nanmax(np.abs(numbers.to_numpy(float)), initial=0) < 1e-3
    if values.dtype.kind == "f":  # a float column: the same cells, without a type check per value
        spec, p = ".2e" if tiny else ".4f", _is_p(column)
        return [
            "" if v != v else "<0.001" if p and v < 1e-3 else f"{v:.3f}" if p else f"{v:{spec}}"
            for v in values.tolist()
        ]

    def one(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(map(str, value))
        if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)) and _is_p(column):
            return "<0.001" if value < 1e-3 else f"{value:.3f}"
        if isinstance(value, (float, np.floating)):
            return f"{value:.2e}" if tiny else f"{value:.4f}"
        return str(value)

    return [one(value) for value in values]


def table_text(table: pd.DataFrame, fmt: str = "github") -> str:
    """The table as `github` Markdown, `html` or `latex_booktabs` (numbers right-aligned), laid out as tabulate lays
    out these formats (`_layout`; tabulate itself for a cell of several lines).
    """
    header = [str(c) for c in table.columns]
    columns = [column_cells(table.iloc[:, i], c) for i, c in enumerate(header)]
    if fmt == "github":
        columns = [[cell.replace("|", "\\|") for cell in cells] for cells in columns]
    right = [
        pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) for c in table.columns
    ]
    if any("\n" in text or "\r" in text for text in [*header, *(cell for cells in columns for cell in cells)]):
        cells = pd.DataFrame(dict(zip(header, columns)), index=table.index)
        align = ["right" if r else "left" for r in right]
        return cells.to_markdown(index=False, tablefmt=fmt, disable_numparse=True, colalign=align or None)
    return _layout(header, columns, right, fmt)


def _layout(header: list[str], columns: list[list[str]], right: list[bool], fmt: str) -> str:
    """The github, html and latex_booktabs layouts of tabulate for one-line text cells, without its per-cell type
    inference (a minute for a 16,000-row significance table; tests compare the two): cells stripped, each column as
    wide as its widest cell or its header plus 2, right- or left-aligned, then escaped (HTML, LaTeX).
    """
    columns = [[cell.strip() for cell in cells] for cells in columns]
    right = right if any(columns) else [False] * len(right)  # tabulate aligns the headers of no rows left
    widths = [max([len(name) + 2, *map(len, cells)]) for name, cells in zip(header, columns)]
    padded = [
        [f"{text:>{width}}" if r else f"{text:<{width}}" for text in [name, *cells]]
        for name, cells, width, r in zip(header, columns, widths, right)
    ]
    rows = [list(row) for row in zip(*padded)] or [[]]
    if fmt == "github":
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])
    if fmt == "html":
        styles = [' style="text-align: right;"' if r else "" for r in right]

        def html_row(tag: str, row: list[str]) -> str:
            return "<tr>" + "".join(f"<{tag}{a}>{html.escape(c)}</{tag}>" for a, c in zip(styles, row)) + "</tr>"

        body = [html_row("td", row) for row in rows[1:]]
        return "\n".join(
            ["<table>", "<thead>", html_row("th", rows[0]), "</thead>", "<tbody>", *body, "</tbody>", "</table>"]
        )
    if fmt == "latex_booktabs":
        from tabulate import LATEX_ESCAPE_RULES

        rules = str.maketrans(LATEX_ESCAPE_RULES)
        lines = [" " + " & ".join(c.translate(rules) for c in row) + " \\\\" for row in rows]
        begin = "\\begin{tabular}{" + "".join("r" if r else "l" for r in right) + "}"
        return "\n".join([begin, "\\toprule", lines[0], "\\midrule", *lines[1:], "\\bottomrule", "\\end{tabular}"])
    raise ValueError(f"unknown table format {fmt!r}")


def markdown(blocks: list[Block]) -> str:
    """The report as GitHub Markdown (figures as figures/<name> links)."""
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + content)
        elif kind == "p":
            out.append(content)
        elif kind == "table":
            out.append(table_text(content))
        elif content.data is None:
            out.append(f"Figure skipped ({content.caption}): {content.reason}.")
        else:
            out.append(f"![{content.caption}](figures/{content.name})\n\n*{content.caption}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escaped text with `code` and *emphasis* as HTML (no emphasis inside code: `gap_*` stays as written)."""
    parts = re.split(r"`([^`]+)`", text)  # odd items: code
    return "".join(
        f"<code>{html.escape(part)}</code>"
        if i % 2
        else re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", html.escape(part))
        for i, part in enumerate(parts)
    )


def page(blocks: list[Block], title: str) -> str:
    """The report as one self-contained HTML page: figures embedded as base64 PNG data: URIs."""
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(content)}</p>")
        elif kind == "table":
            out.append(table_text(content, "html"))
        elif content.data is None:
            out.append(f"<p>{_inline(f'Figure skipped ({content.caption}): {content.reason}.')}</p>")
        else:
            data = base64.b64encode(content.data).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(content.caption)}">'
                f"<figcaption>{html.escape(content.caption)}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(out)}</body></html>\n"
    )


EFFECTS = {"": "cosine", "gap_alike_": "gap (alike)", "centered_gap_alike_": "centred gap (alike)"}  # the verdict's
EFFECT_P = {  # the p shown beside each effect: the family-corrected test where the table has it
    "": ("cosine_p_holm", "p_holm", "p"),
    "gap_alike_": ("gap_alike_p_holm", "gap_alike_p"),
    "centered_gap_alike_": ("centered_gap_alike_p_holm", "centered_gap_alike_p"),
}


def with_ci(sig: pd.DataFrame, diff: str, prefix: str) -> list[str]:
    """Per row, a gain (column `diff`) and its 95% CI (`{prefix}ci_low`, `{prefix}ci_high`) as `0.0620 [0.0270,
    0.0950]`: the three columns' cells in one format (`column_cells` of them as one column); '' without a gain.
    """
    together = pd.concat([sig[c] for c in (diff, f"{prefix}ci_low", f"{prefix}ci_high")], ignore_index=True)
    cells = np.array(column_cells(together, diff), dtype=object).reshape(3, len(sig))
    return [f"{g} [{lo}, {hi}]" if g else "" for g, lo, hi in cells.T]


def compact_significance(sig: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The columns a paper shows: the condition, set, layer, n, then per effect (raw cosine, and the gap and centred
    gap over alike non-translations, which the verdict tests)
    its gain as `0.0620 [0.0270, 0.0950]` (`with_ci`) and its p, headed `p (Holm)` where Holm-corrected within its
    family.
    """
    keep = [c for c in [*by, "set", "eval_layer", "n_seeds", "n", "mean_pre", "mean_post"] if c in sig]
    table = sig[keep].copy()
    for prefix, name in EFFECTS.items():
        diff = "mean_diff" if not prefix else f"{prefix}diff"
        if diff not in sig:
            continue
        table[f"{name} gain [95% CI]"] = with_ci(sig, diff, prefix)
        p = next((c for c in EFFECT_P[prefix] if c in sig), None)
        if p is not None:
            table[f"{name} p{' (Holm)' if p.endswith('_holm') else ''}"] = sig[p].to_numpy()
    return table


def latex(table: pd.DataFrame) -> str:
    """The table as a LaTeX `tabular` with booktabs rules (needs the booktabs package), cells as in Markdown."""
    return table_text(table, "latex_booktabs") + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "table"


def write(out: Folder, blocks: list[Block], significance: pd.DataFrame, title: str, by: list[str]) -> dict[str, str]:
    """Write to `out` (returns {kind: URI}): significance.csv/.md (every column), significance_compact.md/.tex
    (`compact_significance`), tables/NN-<heading>.tex beside every table of the report, figures/ as PNG, PDF
    and SVG, report.md and report.html.
    """
    compact = compact_significance(significance, by)
    written = {
        "significance_csv": out.write_table("significance.csv", significance),
        "significance_md": out.write_bytes("significance.md", (table_text(significance) + "\n").encode()),
        "significance_compact_md": out.write_bytes("significance_compact.md", (table_text(compact) + "\n").encode()),
        "significance_compact_tex": out.write_bytes("significance_compact.tex", latex(compact).encode()),
    }
    for folder in ("tables", "figures"):  # an earlier report's: a table or figure this report lacks must not stay
        out.delete(folder)
    heading, number = "report", 0
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            heading = content
        elif kind == "table":
            number += 1
            name = f"tables/{number:02d}-{_slug(heading)}.tex"
            written[name] = out.write_bytes(name, latex(content).encode())
        elif kind == "figure" and content.data is not None:
            stem = content.name.rsplit(".", 1)[0]
            written[content.name] = out.write_bytes(f"figures/{content.name}", content.data)
            for suffix in ("pdf", "svg"):
                data = getattr(content.data, suffix, None)
                if data is not None:
                    written[f"{stem}.{suffix}"] = out.write_bytes(f"figures/{stem}.{suffix}", data)
    written["report_md"] = out.write_bytes("report.md", markdown(blocks).encode())
    written["report_html"] = out.write_bytes("report.html", page(blocks, title).encode())
    return written
