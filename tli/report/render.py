"""Rendering: the report as a list of blocks, written as Markdown and as one self-contained HTML page.

Every table goes through one renderer, `DataFrame.to_markdown` (tabulate): GitHub Markdown, or HTML for the
page. Figures are PNG bytes: files under figures/ for the Markdown, data: URIs in the HTML. Every file is
written atomically (`tli.files.Folder`), on a local disk or an object store.
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
    return column == "p" or column.endswith("_p") or column in ("p_holm", "p_bh")


def cell(value: Any, column: str) -> str:
    """One table cell: p-values to 3 significant digits, other floats to 4 decimals, missing values empty."""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and _is_p(column):
        return "<1e-300" if value == 0 else f"{value:.3g}"  # 0 is a float underflow, not p = 0
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"  # drift KL: 4 decimals would read 0
    return str(value)


def table_text(table: pd.DataFrame, fmt: str = "github") -> str:
    """The table through tabulate: `github` Markdown or `html` (numbers right-aligned)."""
    cells = pd.DataFrame(
        [[cell(v, c) for c, v in zip(table.columns, row)] for row in table.itertuples(index=False)],
        columns=[str(c) for c in table.columns],
    )
    if fmt == "github":
        cells = cells.apply(lambda column: column.str.replace("|", "\\|", regex=False))
    align = [
        "right" if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) else "left"
        for c in table.columns
    ]
    return cells.to_markdown(index=False, tablefmt=fmt, disable_numparse=True, colalign=align or None)


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


def write(out: Folder, blocks: list[Block], significance: pd.DataFrame, title: str) -> dict[str, str]:
    """Write significance.csv/.md, figures/*.png, report.md and report.html to `out`; {kind: URI}."""
    written = {
        "significance_csv": out.write_table("significance.csv", significance),
        "significance_md": out.write_bytes("significance.md", (table_text(significance) + "\n").encode()),
    }
    for kind, content in blocks:
        if kind == "figure" and content.data is not None:
            written[content.name] = out.write_bytes(f"figures/{content.name}", content.data)
        elif kind == "figure":  # a figure not drawn this time: an earlier run's copy would mislead
            out.delete(f"figures/{content.name}")
    written["report_md"] = out.write_bytes("report.md", markdown(blocks).encode())
    written["report_html"] = out.write_bytes("report.html", page(blocks, title).encode())
    return written
