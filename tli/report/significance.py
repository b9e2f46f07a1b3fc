"""The significance table: one row per condition x set x evaluation layer.

Seeds are replicates, not extra pairs: `n` counts unique pairs. The paper's tests (`t`, `p`, `wilcoxon_p`,
`d_z`: `tli.evaluate.summary_table`) run on each pair averaged over the condition's trials; every CI and the
p-values (`cosine_p`, `gap_p`, `centered_gap_p`, and the verdict's `gap_alike_p`, `centered_gap_alike_p`) come
from the two-level bootstrap over seeds and headword clusters (`tli.report.uncertainty`), corrected within the
families of `tli.report.multiple`. The spread across seeds is also its own column (`seed_sd_*`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from tli import baselines, stats
from tli.config import EvalConfig
from tli.errors import TliError
from tli.evaluate import SETS, summary_table
from tli.report import multiple, uncertainty
from tli.report.conditions import check_by, condition_columns, groups, same
from tli.report.results import Results

PAIR_METRICS = [
    f"{m}_{when}" for m in stats.PAIR_METRICS if m not in stats.CHANCE_METRICS for when in ("pre", "post")
] + list(stats.CHANCE_METRICS)
PAIR_COLUMNS = ["set", "eval_layer", "pair_id", "swahili", *PAIR_METRICS]  # what the table reads of pairs.parquet
SUMMARY_COLUMNS = ["set", "eval_layer", "n_removed", "n_candidates", *baselines.COLUMNS]  # ... and of summary.parquet


def _layer_roles(trials: pd.DataFrame, layer: int) -> str:
    """Which evaluation layer `layer` is for every trial of a condition: target, selection, final (L)."""
    roles = {"target": "eval_layer_target", "selection": "eval_layer_selection", "final": "eval_layer_final"}
    return ", ".join(
        name for name, column in roles.items() if column in trials and (trials[column].astype(float) == layer).all()
    )


def _seed_spread(gains: pd.DataFrame) -> pd.DataFrame:
    """Per set x layer: SD over seeds of each seed's mean cosine gain and centred-gap gain (NaN for one seed), from
    `uncertainty.per_seed_gains`.
    """
    per_seed = gains.groupby(["set", "eval_layer", "seed"])[["cosine", "centered_gap"]].mean()
    spread = per_seed.groupby(["set", "eval_layer"]).std(ddof=1)
    return spread.rename(
        columns={"cosine": "seed_sd_mean_diff", "centered_gap": "seed_sd_centered_gap_diff"}
    ).reset_index()


def condition_tests(
    pairs: pd.DataFrame, summary: pd.DataFrame, trials: pd.DataFrame, gains: pd.DataFrame, n_boot: int, seed: int
) -> pd.DataFrame:
    """One condition's rows: each pair averaged over the condition's trials, then `summary_table`'s tests on the
    unique pairs (n = pairs, not pairs x seeds; McNemar's test of P@1 there is the exact sign test of each pair's
    seed-averaged hit); CIs, bootstrap p-values, MDEs and the comparison with the trained set from
    `uncertainty.set_rows` on `gains` (`uncertainty.per_seed_gains`); the seed spread and the baselines
    (`tli.baselines`) beside them.
    """
    averaged = pairs.groupby(["set", "eval_layer", "pair_id"], sort=False)[PAIR_METRICS].mean().reset_index()
    removed = summary.groupby("set")["n_removed"].max().to_dict()
    table = summary_table(
        averaged,
        EvalConfig(seed=seed),
        int(trials["eval_layer_final"].max()),
        int(summary["n_candidates"].max()),
        removed,
        bootstrap=False,  # its CIs are replaced by the two-level ones
        paired=("",),  # and its gap and centred-gap tests by the bootstrap's p-values
    )
    replaced = [c for c in table if c.endswith(("ci_low", "ci_high")) or c in [f"{p}p" for p in uncertainty.GAINS if p]]
    table = table.drop(columns=replaced).merge(
        uncertainty.set_rows(gains, n_boot, seed), on=["set", "eval_layer"], how="left"
    )
    table = table.merge(_seed_spread(gains), on=["set", "eval_layer"], how="left")
    present = [c for c in baselines.COLUMNS if c in summary]  # the same in every trial of a condition
    if present:
        found = summary.groupby(["set", "eval_layer"], sort=False)[present].mean().reset_index()
        table = table.merge(found, on=["set", "eval_layer"], how="left")
    table.insert(2, "layer_role", [_layer_roles(trials, k) for k in table["eval_layer"]])
    table.insert(3, "n_trials", len(trials))
    table.insert(4, "n_seeds", trials["seed"].nunique())
    return table


FIRST_COLUMNS = [
    "set",
    "eval_layer",
    "layer_name",
    "layer_role",
    "family",
    "family_size",
    "n_trials",
    "n_seeds",
    "n",
    "n_removed",
    "mean_pre",
    "mean_post",
    "mean_diff",
    "se",
    "ci_low",
    "ci_high",
    "cosine_p",
    "cosine_p_holm",
    "mde",
    uncertainty.projected_mde(""),
    "t",
    "p",
    "p_holm",
    "wilcoxon_p",
    "d_z",
    "seed_sd_mean_diff",
    "gap_diff",
    "gap_se",
    "gap_ci_low",
    "gap_ci_high",
    "gap_p",
    "gap_p_holm",
    "gap_mde",
    uncertainty.projected_mde("gap_"),
    "centered_gap_diff",
    "centered_gap_se",
    "centered_gap_ci_low",
    "centered_gap_ci_high",
    "centered_gap_p",
    "centered_gap_p_holm",
    "centered_gap_mde",
    uncertainty.projected_mde("centered_gap_"),
    "seed_sd_centered_gap_diff",
    "gap_alike_diff",
    "gap_alike_se",
    "gap_alike_ci_low",
    "gap_alike_ci_high",
    "gap_alike_p",
    "gap_alike_p_holm",
    "gap_alike_mde",
    uncertainty.projected_mde("gap_alike_"),
    "centered_gap_alike_diff",
    "centered_gap_alike_se",
    "centered_gap_alike_ci_low",
    "centered_gap_alike_ci_high",
    "centered_gap_alike_p",
    "centered_gap_alike_p_holm",
    "centered_gap_alike_mde",
    uncertainty.projected_mde("centered_gap_alike_"),
    "vs_trained_diff",
    "vs_trained_ci_low",
    "vs_trained_ci_high",
    "vs_trained_margin",
    "vs_trained_tost_p",
    "centered_gap_alike_vs_trained_diff",
    "centered_gap_alike_vs_trained_ci_low",
    "centered_gap_alike_vs_trained_ci_high",
    "centered_gap_alike_vs_trained_margin",
    "centered_gap_alike_vs_trained_tost_p",
    "vs_shuffled_seeds",
    "vs_shuffled_diff",
    "vs_shuffled_ci_low",
    "vs_shuffled_ci_high",
    "vs_shuffled_p",
    "vs_shuffled_p_holm",
    "centered_gap_alike_vs_shuffled_diff",
    "centered_gap_alike_vs_shuffled_ci_low",
    "centered_gap_alike_vs_shuffled_ci_high",
    "centered_gap_alike_vs_shuffled_p",
    "centered_gap_alike_vs_shuffled_p_holm",
    "p_at_1_pre",
    "p_at_1_post",
    "p_at_1_chance",
]


def significance_table(
    results: Results, by: list[str] | None = None, n_boot: int = 10_000, seed: int = 0
) -> pd.DataFrame:
    """One row per condition x set x evaluation layer (columns: FIRST_COLUMNS, then every set mean before and
    after; a column no row has, e.g. the comparison with an absent trained set, is left out), each true-translation
    condition against its shuffled control where the sweep has one (`uncertainty.against_shuffled`); `*_holm`
    correct each p within its family (`multiple.correct`).
    """
    by = condition_columns(results.trials) if by is None else list(by)
    check_by(by, results.trials)
    empty = pd.DataFrame(columns=[*by, *FIRST_COLUMNS])
    if results.ok.empty:
        return empty
    frames, kept = [], {}  # kept: each condition's gains, where a shuffled control may need them
    with threadpool_limits(limits=1, user_api="blas"):  # the bootstrap's thin products: threads would only spin
        for values, trials in groups(results.ok, by):  # each condition's files, its columns only
            ids = list(trials["trial_id"])
            pairs = results.tables("pairs", ids, PAIR_COLUMNS)
            _check_columns(pairs, results.uri)
            summary = results.tables("summary", ids, SUMMARY_COLUMNS)
            if len(pairs) and len(summary):
                gains = uncertainty.per_seed_gains(pairs, trials)
                frames.append(condition_tests(pairs, summary, trials, gains, n_boot, seed).assign(**values))
                if "translations" in by:
                    kept[tuple(values.values())] = gains
        shuffled = uncertainty.against_shuffled(kept, by, n_boot, seed)
    if not frames:
        return empty
    table = pd.concat(frames, ignore_index=True)
    if len(shuffled):
        table = table.merge(shuffled, on=[*by, "set", "eval_layer"], how="left")
    table = multiple.correct(table)
    order = table["set"].map({name: i for i, name in enumerate(SETS)}).fillna(len(SETS))
    table = table.assign(_set=order).sort_values([*by, "_set", "eval_layer"], kind="stable")
    first = [c for c in FIRST_COLUMNS if c in table]
    rest = [c for c in table if c not in (*by, *FIRST_COLUMNS, "_set")]
    return table[[*by, *first, *rest]].reset_index(drop=True).copy()  # consolidated: it is sliced and concatenated


def _check_columns(pairs: pd.DataFrame, uri: str) -> None:
    """TliError when stored per-pair tables lack a column the table tests (trials run by an older tli)."""
    missing = [c for c in PAIR_COLUMNS if c not in pairs]
    if len(pairs) and missing:
        raise TliError(
            f"{uri}: the stored per-pair tables lack {len(missing)} column(s) this tli tests, e.g. "
            f"{', '.join(missing[:2])}: their trials were run by an older tli; rerun them (remove their trials/<id> "
            "folders and run the sweep again), or report them with the tli that ran them"
        )


def rows_of(sig: pd.DataFrame, condition: pd.Series, by: list[str]) -> pd.DataFrame:
    """The significance rows of one condition (a row of `conditions`)."""
    mask = np.ones(len(sig), dtype=bool)
    for c in by:  # `same` once per distinct value of the column, not once per row
        codes, uniques = pd.factorize(sig[c])
        matches = np.array([same(value, condition[c]) for value in uniques] + [same(None, condition[c])], dtype=bool)
        mask &= matches[codes]  # code -1 (a missing value) picks the last entry
    return sig[mask]


def at_target(sig: pd.DataFrame) -> pd.DataFrame:
    """Rows measured at their condition's target layer."""
    return sig[sig["layer_role"].str.contains("target")]
