"""Uncertainty across seeds and words: the two-level bootstrap behind the significance table's CIs and p-values,
the gain of each set against the trained set's (with an equivalence test), and what a null could have detected.

A condition's gain on a set is a mean over seeds and pairs. Both vary: another seed trains another adapter,
other words give other gains, and pairs sharing a Swahili headword are not independent. So the standard error
is the SD of `tli.stats.seed_pair_bootstrap` (seeds drawn with replacement, then headword clusters), and every
CI and p-value below is its normal approximation (`tli.stats.z_inference`):

  {prefix}se, {prefix}ci_low/high, {prefix}p, {prefix}mde   per gain (raw cosine: `se`, `ci_*`, `cosine_p`,
                                                            `mde`; gap: `gap_*`; centred gap: `centered_gap_*`;
                                                            both over alike non-translations: `*_alike_*`)
  {prefix}vs_trained_diff/ci_low/ci_high                    the set's gain minus the trained set's (same seed draw)
  {prefix}vs_trained_margin, {prefix}vs_trained_tost_p      TOST of |difference| < EQUIVALENCE_FRACTION x the
                                                            trained gain: small p, the gains are comparable
                                                            (COMPARED: the raw cosine, `vs_trained_*`, and the
                                                            centred gap over alike non-translations that the
                                                            verdict reads, `centered_gap_alike_vs_trained_*`)

`mde` is the gain a two-sided test at 5% would detect with 80% power (2.80 se): a gain whose CI includes 0 is
"not detectable above" it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tli import stats

GAINS = {  # significance prefix -> per-pair metric
    "": "cosine",
    "gap_": "gap",
    "centered_gap_": "centered_gap",
    "gap_alike_": "gap_alike",
    "centered_gap_alike_": "centered_gap_alike",
}
EQUIVALENCE_FRACTION = 0.5  # "comparable to the trained gain": within half of it, either way
COMPARED = ("", "centered_gap_alike_")  # compared with the trained set's: raw cosine, the verdict's centred gap
REFERENCE = "trained"


def per_seed_gains(pairs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per set x evaluation layer x seed x pair: the post - pre gain of each GAINS metric, trials of one seed
    averaged, with the pair's Swahili headword (its cluster).
    """
    gains = pairs[["trial_id", "set", "eval_layer", "pair_id", "swahili"]].assign(
        **{metric: pairs[f"{metric}_post"] - pairs[f"{metric}_pre"] for metric in GAINS.values()}
    )
    gains = gains.merge(trials[["trial_id", "seed"]], on="trial_id")
    keys = ["set", "eval_layer", "seed", "pair_id", "swahili"]
    return gains.groupby(keys, sort=False)[list(GAINS.values())].mean().reset_index()


def _matrix(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(values [S, n, K] over seeds x pairs x GAINS, NaN where a seed lacks a pair; headwords [n])."""
    wide = rows.set_index(["seed", "pair_id"])[list(GAINS.values())].unstack("pair_id")  # [S, K x n]
    pair_ids = wide.columns.get_level_values("pair_id").unique()
    values = np.stack([wide[metric][pair_ids].to_numpy(float) for metric in GAINS.values()], axis=-1)
    headwords = rows.drop_duplicates("pair_id").set_index("pair_id").loc[pair_ids, "swahili"].to_numpy()
    return values, headwords


def _columns(prefix: str) -> dict[str, str]:
    """The significance columns of one gain: the raw cosine's have the historic names."""
    names = {key: f"{prefix}{key}" for key in ("diff", "se", "ci_low", "ci_high", "p", "mde")}
    return names | ({"diff": "mean_diff", "p": "cosine_p"} if not prefix else {})


def _inference(estimates: np.ndarray, replicates: np.ndarray) -> list[dict[str, float]]:
    """Per metric: estimate, se (SD of the replicates) and its normal CI and p."""
    out = []
    for estimate, column in zip(estimates, replicates.T):
        se = float(np.std(column, ddof=1)) if len(column) > 1 else float("nan")
        out.append({"diff": float(estimate), "se": se} | stats.z_inference(float(estimate), se))
    return out


def _estimate(values: np.ndarray) -> np.ndarray:
    """[K]: the mean over pairs of each pair's mean over the seeds that have it."""
    return np.nanmean(np.nanmean(values, axis=0), axis=0)


def set_rows(gains: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Per set x evaluation layer of one condition: every `_columns` value of every gain, and each COMPARED
    gain against the trained set's at the same layer (empty columns where there is no trained set).
    """
    matrices = {key: _matrix(rows) for key, rows in gains.groupby(["set", "eval_layer"], sort=False)}
    out = []
    for (name, layer), (values, headwords) in matrices.items():
        row: dict = {"set": name, "eval_layer": layer}
        replicates = stats.seed_pair_bootstrap([(values, headwords)], n_boot=n_boot, seed=seed)
        for prefix, found in zip(GAINS, _inference(_estimate(values), replicates.reshape(n_boot, -1))):
            names = _columns(prefix)
            row |= {names[key]: found[key] for key in ("se", "ci_low", "ci_high", "p")}
            row[names["mde"]] = stats.minimum_detectable_effect(found["se"])
        if (REFERENCE, layer) in matrices and name != REFERENCE:
            row |= _against_reference((values, headwords), matrices[REFERENCE, layer], n_boot, seed)
        out.append(row)
    return pd.DataFrame(out)


def _against_reference(group, reference, n_boot: int, seed: int) -> dict[str, float]:
    """The COMPARED gains of `group` minus those of `reference` (seeds drawn together): difference, CI, TOST."""
    replicates = stats.seed_pair_bootstrap([group, reference], [1.0, -1.0], n_boot=n_boot, seed=seed)
    estimates = _estimate(group[0]) - _estimate(reference[0])
    found = _inference(estimates, replicates.reshape(n_boot, -1))
    reference_gain = _estimate(reference[0])
    row = {}
    for prefix, metric in GAINS.items():
        if prefix not in COMPARED:
            continue
        k = list(GAINS.values()).index(metric)
        margin = EQUIVALENCE_FRACTION * abs(float(reference_gain[k]))
        row |= {
            f"{prefix}vs_trained_diff": found[k]["diff"],
            f"{prefix}vs_trained_ci_low": found[k]["ci_low"],
            f"{prefix}vs_trained_ci_high": found[k]["ci_high"],
            f"{prefix}vs_trained_margin": margin,
            f"{prefix}vs_trained_tost_p": stats.tost(found[k]["diff"], found[k]["se"], margin),
        }
    return row
