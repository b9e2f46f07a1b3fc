"""The selection rule: the condition with the highest mean validation objective among those whose objectives compare,
ties going to the paper's defaults.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from tli.report.conditions import at_defaults, same
from tli.sweep.settings import TrialSettings

COMPARABLE = (  # objectives compare only where these agree (same measure, same set, not a control)
    "pooling_eval",
    "heldout_category",
    "translations",  # a shuffled control is never selected: only true translations compete
)


def competing(conds: pd.DataFrame) -> pd.DataFrame:
    """The conditions whose validation objectives compare: where a COMPARABLE setting varies (another evaluation
    pooling, or the validation set left when another category is held out, puts objectives on other scales), only
    those at the paper's default of it.
    """
    defaults = TrialSettings().row()
    for column in COMPARABLE:
        if column in conds and conds[column].astype(str).nunique() > 1:
            conds = conds[conds[column].map(lambda value, c=column: same(value, defaults[c]))]
    return conds


def selected(conds: pd.DataFrame, by: list[str]) -> pd.Series | None:
    """The `competing` condition with the highest mean validation objective (None when none has one). On a tie, the
    one with the most `by` settings at the paper's defaults (`at_defaults`), then the first row of `conds`.
    """
    conds = competing(conds)
    scores = conds["objective"].astype(float) if "objective" in conds else pd.Series(dtype=float)
    if scores.isna().all():
        return None
    best = conds[_equal(scores, scores.max())]
    return best.loc[at_defaults(best, by).idxmax()]


def tied(conds: pd.DataFrame, chosen: pd.Series) -> pd.DataFrame:
    """The other `competing` conditions whose mean objective equals the selected one's (relative tolerance 1e-9):
    the validation objective does not separate them from it.
    """
    others = competing(conds).drop(index=chosen.name)
    return others[_equal(others["objective"].astype(float), chosen["objective"])]


def runner_up(conds: pd.DataFrame, chosen: pd.Series) -> pd.Series | None:
    """The `competing` condition with the highest mean objective below the selected one's (its ties left out);
    None when there is none.
    """
    others = competing(conds).drop(index=[chosen.name, *tied(conds, chosen).index])
    scores = others["objective"].astype(float).dropna()
    return None if scores.empty else others.loc[scores.idxmax()]


def separation(chosen: pd.Series, other: pd.Series) -> float:
    """Welch's two-sided p that two conditions' mean objectives differ, from each one's mean, SD over trials and
    trial count (`objective`, `objective_sd`, `n_trials`): t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2), Welch-
    Satterthwaite degrees of freedom. NaN when either has fewer than two trials.
    """
    if min(chosen["n_trials"], other["n_trials"]) < 2:
        return math.nan
    moments = [(float(c["objective"]), float(c["objective_sd"]), int(c["n_trials"])) for c in (chosen, other)]
    return float(stats.ttest_ind_from_stats(*moments[0], *moments[1], equal_var=False).pvalue)


def _equal(objectives: pd.Series, value: float) -> pd.Series:
    """Which objectives equal `value` up to a relative tolerance of 1e-9 (NaN equals nothing)."""
    return objectives.map(lambda objective: math.isclose(objective, value, rel_tol=1e-9)).astype(bool)
