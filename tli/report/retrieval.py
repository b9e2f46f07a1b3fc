"""Retrieval as the field reports it, beside two baselines on the same pool, and the translation probe.

retrieval_rows   per condition x set at its target layer: centred P@1, P@5, P@10 and MRR before and after, chance,
                 McNemar's test of P@1 (Holm-corrected within its family), the orthographic and Procrustes baselines
sentences        one tested sentence per condition x set: does retrieval follow? (and where the model stands
                 against the baselines before TLI)
probe_rows       per condition x set x direction: the translation probe (`tli.probe`), each pair averaged over
                 the condition's trials, McNemar's exact test as the sign test of those averages
"""

from __future__ import annotations

import pandas as pd

from tli import probe
from tli.report.conditions import groups
from tli.report.multiple import ALPHA
from tli.report.results import Results
from tli.report.significance import at_target

RETRIEVAL_SETS = ("trained", "validation", "heldout", "control", "unseen")  # leak-free sets (and trained)
RETRIEVAL_COLUMNS = [
    "set",
    "n",
    "p_at_1_chance",
    "p_at_1_centered_pre",
    "p_at_1_centered_post",
    "p_at_1_centered_gained",
    "p_at_1_centered_lost",
    "p_at_1_centered_mcnemar_p_holm",
    "p_at_5_centered_pre",
    "p_at_5_centered_post",
    "p_at_10_centered_pre",
    "p_at_10_centered_post",
    "mrr_centered_pre",
    "mrr_centered_post",
    "mrr_chance",
    "orthographic_p_at_1",
    "orthographic_p_at_5",
    "orthographic_p_at_10",
    "orthographic_mrr",
    "procrustes_p_at_1",
    "procrustes_p_at_5",
    "procrustes_p_at_10",
    "procrustes_mrr",
]
PROBE_SETS = ("trained", "validation", "heldout", "control", "unseen")
PROBE_COLUMNS = ["n", "accuracy_pre", "accuracy_post", "accuracy_gained", "accuracy_lost", "accuracy_mcnemar_p"]
PROBE_COLUMNS += ["mrr_pre", "mrr_post", "mrr_chance", "logprob_pre", "logprob_post", "logprob_diff", "logprob_p"]
PROBE_READ = [
    "set",
    "direction",
    "pair_id",
    *(f"{m}_{w}" for m in ("correct", "rr", "logprob") for w in ("pre", "post")),
]


def retrieval_rows(sig: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The significance rows at each condition's target layer, RETRIEVAL_SETS only, RETRIEVAL_COLUMNS present."""
    rows = at_target(sig)
    rows = rows[rows["set"].isin(RETRIEVAL_SETS)]
    return rows[[*by, *(c for c in RETRIEVAL_COLUMNS if c in rows)]].reset_index(drop=True)


def _percent(value: float) -> str:
    return f"{value:.1%}" if pd.notna(value) else "n/a"


def sentence(row: pd.Series, label: str) -> str:
    """Does centred retrieval follow on this set (McNemar, Holm-corrected), and how the model's P@1 before TLI
    compares with the orthographic and Procrustes baselines.
    """
    p = row.get("p_at_1_centered_mcnemar_p_holm", float("nan"))
    gained, lost = int(row.get("p_at_1_centered_gained", 0)), int(row.get("p_at_1_centered_lost", 0))
    pre, post = row["p_at_1_centered_pre"], row["p_at_1_centered_post"]
    if pd.notna(p) and p < ALPHA:
        verdict = "rises" if post > pre else "falls"
    else:
        verdict = "does not change detectably"
    text = (
        f"{label}, `{row['set']}` ({int(row['n'])} pairs): centred P@1 {_percent(pre)} → {_percent(post)} "
        f"(chance {_percent(row['p_at_1_chance'])}; pairs gained {gained}, lost {lost}; McNemar exact p = {p:.3g}, "
        f"Holm-corrected): retrieval {verdict}."
    )
    if "orthographic_p_at_1" in row and pd.notna(row["orthographic_p_at_1"]):
        text += f" Spelling alone (orthographic) reaches {_percent(row['orthographic_p_at_1'])}"
        if pd.notna(row.get("procrustes_p_at_1")):
            text += f", a Procrustes map of the frozen model {_percent(row['procrustes_p_at_1'])}"
        text += (
            "; the model before TLI is "
            + ("above" if pre > row["orthographic_p_at_1"] else "not above")
            + " spelling alone."
        )
    return text


def probe_rows(results: Results, by: list[str]) -> pd.DataFrame:
    """Per condition x set x direction: `tli.probe.probe_summary` of the condition's probe tables, each pair
    averaged over its trials (with one seed, McNemar's exact test; with several, the exact sign test of each pair's
    seed-averaged correctness), and `n_trials`. Empty when no trial ran the probe.
    """
    if "translation_probe" not in results.ok:  # trials stored before the probe existed
        return pd.DataFrame()
    ran = results.ok[results.ok["translation_probe"].fillna(False).astype(bool)]
    frames = []
    for values, trials in groups(ran, by):
        table = results.tables("probe", list(trials["trial_id"]), [*PROBE_READ, "rr_chance"])
        if table.empty or "correct_pre" not in table:
            continue
        averaged = table.groupby(["set", "direction", "pair_id"], sort=False)[[*PROBE_READ[3:], "rr_chance"]].mean()
        summary = probe.probe_summary(averaged.reset_index())
        summary = summary[summary["set"].isin(PROBE_SETS)].drop(columns="n_excluded")
        frames.append(summary.assign(n_trials=len(trials), **values))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[[*by, "set", "direction", "n_trials", *PROBE_COLUMNS]]
