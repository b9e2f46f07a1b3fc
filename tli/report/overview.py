"""Every condition at a glance: the centred gap (over alike non-translations) and centred P@1 at the target layer,
the translation probe on the trained words, drift and objective.
"""

from __future__ import annotations

import math

import pandas as pd

from tli.report.significance import at_target, rows_of

OVERVIEW_SETS = ("trained", "heldout", "control", "unseen")  # trained, then the leak-free sets
CGAP = "centered_gap_alike"  # the centred gap the verdict tests: over non-translations alike in length and kind
PROBE_SET = "trained"  # the probe at a glance: the words TLI trained on (every set: the report's probe table)
PROBE_DIRECTIONS = {"sw_en": "sw→en", "en_sw": "en→sw"}


def _before_after(row: pd.Series, metric: str, fmt: str) -> str:
    """'pre → post' of one significance row's metric in format `fmt` ('' when either is missing)."""
    pre, post = row[f"{metric}_pre"], row[f"{metric}_post"]
    return f"{pre:{fmt}} → {post:{fmt}}" if pd.notna(pre) and pd.notna(post) else ""


def _ci_mark(row: pd.Series) -> str:
    """' ↑' / ' ↓' when the gain of CGAP's 95% CI lies above / below 0, else ''."""
    return " ↑" if row[f"{CGAP}_ci_low"] > 0 else " ↓" if row[f"{CGAP}_ci_high"] < 0 else ""


def _nats(kl: float) -> str:
    """A drift KL to 2 decimals, or 2 significant digits below 0.01 (so a small drift does not read as 0)."""
    return "" if pd.isna(kl) else f"{kl:.2g}" if 0 < abs(kl) < 0.01 else f"{kl:.2f}"


def _probe_cells(probed: pd.DataFrame) -> dict[str, str]:
    """'probe sw→en' / 'probe en→sw' of one condition's probe rows (`retrieval.probe_rows`): on PROBE_SET, the
    translation accuracy pre → post and the gold translation's mean log-probability change in nats, ' ↑' / ' ↓'
    when its paired t-test gives p < 0.05 (uncorrected); '' where the condition has no such row.
    """
    cells = {}
    for direction, arrow in PROBE_DIRECTIONS.items():
        found = probed[(probed["set"] == PROBE_SET) & (probed["direction"] == direction)]
        if found.empty:
            cells[f"probe {arrow}"] = ""
            continue
        row = found.iloc[0]
        shift = row["logprob_diff"]
        mark = "" if not row["logprob_p"] < 0.05 else " ↑" if shift > 0 else " ↓"
        cells[f"probe {arrow}"] = f"{row['accuracy_pre']:.1%} → {row['accuracy_post']:.1%}, {shift:+.2f}{mark}"
    return cells


def overview(sig: pd.DataFrame, conds: pd.DataFrame, by: list[str], probed: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per condition, at its target layer: the per-language-centred gap over alike non-translations
    ('cgap', CGAP, marked by `_ci_mark`)
    and centred P@1 ('cP@1', in percent), pre → post, for each OVERVIEW_SETS set present (pairs averaged over
    seeds); with `probed` (`retrieval.probe_rows`, not empty) the probe on PROBE_SET (`_probe_cells`); the mean
    drift KL on Swahili / English text; the mean validation objective.
    """
    target = at_target(sig)
    names = [name for name in OVERVIEW_SETS if name in set(target["set"])]
    drift = all(c in conds and conds[c].notna().any() for c in ("drift_kl_sw", "drift_kl_en"))
    rows = []
    for _, condition in conds.iterrows():
        measured = rows_of(target, condition, by).drop_duplicates("set").set_index("set")
        row = {c: condition[c] for c in by}
        for metric, short, fmt in ((CGAP, "cgap", ".3f"), ("p_at_1_centered", "cP@1", ".2%")):
            for name in names:
                found = measured.loc[name] if name in measured.index else None
                mark = _ci_mark(found) if found is not None and short == "cgap" else ""
                row[f"{name} {short}"] = "" if found is None else _before_after(found, metric, fmt) + mark
        if probed is not None and not probed.empty:
            row |= _probe_cells(rows_of(probed, condition, by))
        if drift:
            row["drift sw / en"] = f"{_nats(condition['drift_kl_sw'])} / {_nats(condition['drift_kl_en'])}"
        rows.append(row | {"objective": condition.get("objective", math.nan)})
    return pd.DataFrame(rows)
