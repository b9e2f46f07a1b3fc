"""The paper's Tables 1 and 2, computed the paper's way from the seed-averaged pairs."""

from __future__ import annotations

import pandas as pd

from tli.report.results import Results
from tli.report.significance import at_target


def table1(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 for some significance rows (at the target layer): n pairs, mean cosine before and
    after, the improvement with its CI, t and p (seed-averaged pairs).
    """
    columns = ["set", "n", "n_seeds", "mean_pre", "mean_post", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm"]
    return (
        at_target(rows)[columns]
        .rename(columns={"n": "N", "mean_pre": "pre-TLI", "mean_post": "post-TLI", "mean_diff": "improvement"})
        .reset_index(drop=True)
    )


def table2(results: Results, trial_ids: list[str], k: int = 10) -> pd.DataFrame:
    """The paper's Table 2: the k largest and k smallest per-pair cosine gains at the target layer, each pair
    averaged over `trial_ids` (a condition's seeds); sets ending in _all are left out (their pairs repeat).
    """
    trials = results.ok[results.ok["trial_id"].isin(trial_ids)][["trial_id", "target_layer"]]
    columns = ["set", "eval_layer", "pair_id", "swahili", "english", "category", "cosine_pre", "cosine_post"]
    pairs = results.tables("pairs", list(trials["trial_id"]), columns).merge(trials, on="trial_id")
    pairs = pairs[(pairs["eval_layer"] == pairs["target_layer"]) & ~pairs["set"].str.endswith("_all")]
    keys = ["set", "pair_id", "swahili", "english", "category"]
    means = pairs.groupby(keys, dropna=False)[["cosine_pre", "cosine_post"]].mean().reset_index()
    means["gain"] = means["cosine_post"] - means["cosine_pre"]
    means = means.sort_values("gain", ascending=False, kind="stable").drop(columns="pair_id")
    top, bottom = means.head(k), means.tail(k).iloc[::-1]
    bottom = bottom[~bottom.index.isin(top.index)]
    return pd.concat([top.assign(rank="largest"), bottom.assign(rank="smallest")], ignore_index=True)[
        ["rank", "set", "swahili", "english", "category", "cosine_pre", "cosine_post", "gain"]
    ]
