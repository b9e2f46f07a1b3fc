"""The training check: trials whose triplet loss never left its margin."""

from __future__ import annotations

import pandas as pd

MARGIN_TOLERANCE = 0.01  # a final loss above margin - this has not left its margin


def loss_at_margin(ok: pd.DataFrame) -> pd.Series:
    """Per ok trial: whether its final (last batch's) triplet loss is not below margin - MARGIN_TOLERANCE, for a
    margin above MARGIN_TOLERANCE: the loss nearly identical pooled vectors give, d(a, p) ≈ d(a, n) for every
    anchor a, translation p and hardest in-batch negative n.
    """
    if ok.empty or not {"final_loss", "margin"} <= set(ok):
        return pd.Series(False, index=ok.index)
    margin = ok["margin"].astype(float)
    return (margin > MARGIN_TOLERANCE) & (ok["final_loss"].astype(float) >= margin - MARGIN_TOLERANCE)
