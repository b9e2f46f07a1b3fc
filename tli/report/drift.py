"""Drift against its reference: per condition and language, the mean KL(base || TLI) of the next-token distribution,
its 95% CI over the drift sequences, and the KL of an update of the same norms in random directions on the same
sequences (`tli.drift.drift_measures`), so a drift reads as large or small.

A trial's drift is *above* its reference when its CI lies above the random-direction KL, *below* when it lies under
it, *within* otherwise; a condition of several trials says so when they all agree, else *mixed*.
"""

from __future__ import annotations

import math

import pandas as pd

LANGUAGES = ("sw", "en")


INTERVAL = "95% CI over sequences, or seeds' range"  # the column: one trial's CI, or its condition's range


def versus_random(low: float, high: float, random: float) -> str:
    """'above', 'below' or 'within': the CI [low, high] against the random-direction KL ('' when one is NaN)."""
    if any(math.isnan(x) for x in (low, high, random)):
        return ""
    return "above" if low > random else "below" if high < random else "within"


def _interval(trials: pd.DataFrame, name: str) -> str:
    """The CI of one trial, or the range of several trials' drifts."""
    if len(trials) == 1:
        low, high = trials[f"{name}_ci_low"].iloc[0], trials[f"{name}_ci_high"].iloc[0]
        return "" if pd.isna(low) else f"{low:.3g} to {high:.3g}"
    values = trials[name].astype(float)
    return f"seeds {values.min():.3g} to {values.max():.3g}"


def _agreement(trials: pd.DataFrame, name: str) -> str:
    found = {
        versus_random(float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"]), float(row[f"{name}_random"]))
        for _, row in trials.iterrows()
    }
    return found.pop() if len(found) == 1 else "mixed"


def drift_table(ok: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per condition x language with a measured drift and its reference: the mean drift over the condition's
    trials, its 95% CI over sequences (one trial) or the range over its trials, the random-direction KL (mean), their
    ratio and `versus_random`.
    """
    rows = []
    for _, condition in conds.iterrows():
        trials = ok[ok["trial_id"].isin(condition["trial_ids"])]
        for language in LANGUAGES:
            name = f"drift_kl_{language}"
            if f"{name}_random" not in trials or trials[f"{name}_random"].isna().all():
                continue
            kl, random = trials[name].astype(float).mean(), trials[f"{name}_random"].astype(float).mean()
            rows.append(
                {c: condition[c] for c in by}
                | {
                    "language": language,
                    "n_trials": len(trials),
                    "drift (nats/token)": kl,
                    INTERVAL: _interval(trials, name),
                    "random directions": random,
                    "drift / random": kl / random if random > 0 else math.nan,
                    "vs random": _agreement(trials, name),
                }
            )
    return pd.DataFrame(rows)


def sentence(table: pd.DataFrame) -> str:
    """What the drift table says, in one sentence of counts."""
    counts = table["vs random"].value_counts()
    found = ", ".join(f"{counts[k]} {k}" for k in ("above", "within", "below", "mixed") if k in counts)
    return (
        "Drift is the mean per-token KL(base || TLI) of the next-token distribution on the base model's own "
        "continuations of Swahili and English prompts; its 95% CI is a percentile bootstrap over those sequences. "
        "The reference, on the same sequences, is the KL of the same adapter with every LoRA update replaced by one of "
        "the same norm in a random direction (seeded): what an update of that size does untrained. Against it "
        f"(condition x language): {found or 'nothing to compare'}."
    )
