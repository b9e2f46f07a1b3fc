"""Conditions: the settings that vary across a sweep's ok trials, one row per setting of them, and the paper's
defaults among them (the condition fixed in advance).

A *condition* is one setting of the `by` columns (default: every trial setting that varies across the ok
trials, seed excepted). Seeds are replicates: a condition pools its seeds.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tli.errors import TliError
from tli.report.results import Results
from tli.sweep.settings import TrialSettings, plain, setting_names
from tli.sweep.trial import OUTCOMES

PROTOCOL = ("pooling_train", "pooling_eval", "mask_false_negatives", "translations")  # each one present is reported
MODEL = ("model", "device", "dtype", "quantization")  # every model present is reported
NOT_CONDITIONS = ("seed", "device")  # seed: the replicate; device does not change what a trial measures
DERIVED = {"lora_alpha": "lora_rank"}  # a setting derived from another when not set (alpha = 2 x rank)


def _copies(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns determine each other (e.g. lora_alpha = 2 x lora_rank in every trial)."""
    return len(set(zip(a, b))) == a.nunique() == b.nunique()


def condition_names() -> list[str]:
    """What can tell conditions apart: the experiment (in a report over several) and every trial setting."""
    return ["experiment", *setting_names()]


def condition_columns(trials: pd.DataFrame) -> list[str]:
    """Every trial setting that varies across the ok trials: seed and device excepted, and a DERIVED setting that
    only follows the one it derives from (lora_alpha = 2 x lora_rank). Settings that happen to vary together, as
    every setting of a search does (each trial draws its own), are each a condition column.
    """
    ok = trials[trials["status"] == "ok"].astype(str)
    columns: list[str] = []
    for name in condition_names():
        if name not in ok or name in NOT_CONDITIONS or ok[name].nunique() < 2:
            continue
        source = DERIVED.get(name)
        if source in columns and _copies(ok[name], ok[source]):
            continue
        columns.append(name)
    return columns


def check_by(by: list[str], trials: pd.DataFrame) -> None:
    """TliError naming the `by` columns that are not trial settings."""
    unknown = [c for c in by if c not in condition_names() or c not in trials]
    if unknown:
        known = ", ".join(c for c in condition_names() if c in trials)
        raise TliError(f"unknown --by column(s) {', '.join(unknown)}; trial settings: {known}")


def groups(frame: pd.DataFrame, by: list[str]):
    """(values of `by`, rows) per condition, in sorted order (a missing value is a value)."""
    if not by:
        yield {}, frame
        return
    for key, rows in frame.groupby(by, dropna=False, sort=True):
        yield dict(zip(by, key)), rows


def constant(values: pd.Series) -> Any:
    """The one value of a column (None when it varies or is missing)."""
    unique = values.dropna().unique()
    return plain(unique[0]) if len(unique) == 1 else None


def conditions(results: Results, by: list[str]) -> pd.DataFrame:
    """One row per condition: its `by` values, protocol and target layer, trials, seeds, mean (and SD over
    trials) of the validation objective, loss and drift, and its `trial_ids`.
    """
    rows = []
    for values, trials in groups(results.ok, by):
        row = values | {c: constant(trials[c]) for c in ("target_layer", *PROTOCOL) if c not in values and c in trials}
        row |= {
            "n_trials": len(trials),
            "n_seeds": trials["seed"].nunique(),
            "objective_sd": float(trials["objective"].std(ddof=1)) if len(trials) > 1 else math.nan,
        }
        row |= {c: float(trials[c].astype(float).mean()) for c in OUTCOMES if c in trials}
        rows.append(row | {"trial_ids": list(trials["trial_id"])})
    return pd.DataFrame(rows)


def same(value: Any, default: Any) -> bool:
    """Whether a stored setting equals a default (None and NaN alike; floats up to rounding)."""
    value, default = plain(value), plain(default)
    if default is None or (isinstance(default, float) and math.isnan(default)):
        return value is None or (isinstance(value, float) and math.isnan(value))
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, (int, float)):
        return math.isclose(value, default, rel_tol=1e-9)
    return str(value) == str(default)


def defaults_of(by: list[str]) -> dict[str, Any]:
    """The paper's defaults (`TrialSettings()`) of the `by` columns that fix a condition in advance: protocol,
    model and experiment columns excepted (every protocol, model and experiment present is reported).
    """
    defaults = TrialSettings().row()
    return {c: defaults[c] for c in by if c not in PROTOCOL and c not in MODEL and c != "experiment"}


def at_defaults(conds: pd.DataFrame, by: list[str]) -> pd.Series:
    """How many of each condition's `by` settings are at the paper's defaults (`defaults_of(by)`)."""
    defaults = defaults_of(by)
    counts = [sum(same(row[c], value) for c, value in defaults.items()) for _, row in conds.iterrows()]
    return pd.Series(counts, index=conds.index, dtype=int)


def prespecified(conds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The conditions fixed in advance: those with every `by` setting at `defaults_of(by)` (one per protocol and
    model present; empty when the sweep has none).
    """
    return conds[at_defaults(conds, by) == len(defaults_of(by))]


def unlike_defaults(results: Results, by: list[str]) -> dict[str, Any]:
    """Settings fixed across the ok trials whose value differs from the paper's defaults (e.g. a smoke test's
    single epoch).
    """
    defaults, ok = TrialSettings().row(), results.ok
    skip = {*by, *PROTOCOL, *MODEL, *NOT_CONDITIONS, "n_boot", "drift", "inputs_digest"}  # not settings of the method
    fixed = {
        c: constant(ok[c]) for c in setting_names() if c in ok and c not in skip and ok[c].astype(str).nunique() == 1
    }
    return {c: v for c, v in fixed.items() if not same(v, defaults[c])}
