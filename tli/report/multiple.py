"""Multiple comparisons: which p-values of the significance table are corrected together, and how.

A *family* is one set at one evaluation layer across every condition of the sweep: the rows at each
condition's target layer form one family per set ("trained @ target"), the rows at a fixed layer another
("control @ layer 18"). Within a family, Holm's step-down correction (`tli.stats.holm`) adjusts each tested p:
the paper's t-test `p` (-> `p_holm`), the two-level bootstrap p-values (`cosine_p`, `gap_p`, `centered_gap_p`,
and `gap_alike_p`, `centered_gap_alike_p`, which the verdict uses -> `*_holm`), the comparisons with the shuffled
control (`vs_shuffled_p`, `centered_gap_alike_vs_shuffled_p`) and McNemar's tests of raw and
centred P@1 (`p_at_1_mcnemar_p`, `p_at_1_centered_mcnemar_p` -> `*_holm`). Sets are not pooled into one family: they
answer different questions, and they overlap (control is a subset of control_all).
"""

from __future__ import annotations

import pandas as pd

from tli import stats

CORRECTED = {  # p -> its Holm-corrected column
    "p": "p_holm",
    "cosine_p": "cosine_p_holm",
    "gap_p": "gap_p_holm",
    "centered_gap_p": "centered_gap_p_holm",
    "gap_alike_p": "gap_alike_p_holm",
    "centered_gap_alike_p": "centered_gap_alike_p_holm",
    "vs_shuffled_p": "vs_shuffled_p_holm",  # a condition's gain minus its shuffled control's
    "centered_gap_alike_vs_shuffled_p": "centered_gap_alike_vs_shuffled_p_holm",
    "p_at_1_mcnemar_p": "p_at_1_mcnemar_p_holm",  # retrieval (tli.evaluate.RETRIEVAL_TESTED)
    "p_at_1_centered_mcnemar_p": "p_at_1_centered_mcnemar_p_holm",
}
ALPHA = 0.05  # the family-wise error rate the verdict holds


def family(row: pd.Series) -> str:
    """'<set> @ target' for a row at its condition's target layer, else '<set> @ layer k'."""
    where = "target" if "target" in str(row["layer_role"]) else f"layer {int(row['eval_layer'])}"
    return f"{row['set']} @ {where}"


def correct(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `family` (see the module docstring), `family_size` and each CORRECTED p Holm-adjusted
    within its family (NaN p-values pass through and do not count).
    """
    table = table.assign(family=[family(row) for _, row in table.iterrows()])
    table["family_size"] = table.groupby("family")["set"].transform("size")
    for column, corrected in CORRECTED.items():
        if column in table:
            table[corrected] = table.groupby("family")[column].transform(
                lambda p: pd.Series(stats.adjust_pvalues(p.to_numpy(float), "holm"), index=p.index)
            )
    return table


def description(sig: pd.DataFrame) -> str:
    """One sentence naming the families of a significance table and their sizes."""
    sizes = sig.groupby("family")["family_size"].first()
    shown = ", ".join(f"{name} ({size})" for name, size in sizes.items())
    return (
        "Multiple comparisons: each p is Holm-corrected (`*_holm`, family-wise error "
        f"{ALPHA:.0%}) within its family, one set at one evaluation layer across every condition of the sweep; "
        f"families (tests): {shown}."
    )
