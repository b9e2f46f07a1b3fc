"""Multiple comparisons: which p-values of the significance table are corrected together, and how."""

from __future__ import annotations

import pandas as pd

from tli import stats


def correct(table: pd.DataFrame) -> pd.DataFrame:
    """`p_holm`/`p_bh`: the raw-cosine `p` corrected across every row of the table (Holm; Benjamini-Hochberg)."""
    return table.assign(
        p_holm=stats.adjust_pvalues(table["p"].to_numpy(float), "holm"),
        p_bh=stats.adjust_pvalues(table["p"].to_numpy(float), "fdr_bh"),
    )
