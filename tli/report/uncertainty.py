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

  {prefix}vs_shuffled_diff/ci_low/ci_high/p                 a condition's gain minus that of its shuffled control
                                                            (`against_shuffled`: the same settings trained on
                                                            deranged translations), on the same pairs and seeds

`mde` is the gain a two-sided test at 5% would detect with 80% power (2.80 se): a gain whose CI includes 0 is
"not detectable above" it. `{prefix}mde_10_seeds` (`projected_mde`) is that MDE projected to PROJECTED_SEEDS seeds
by the variance components of the set's seeds x headword means (`tli.stats.projected_se_ratio`): close to `mde`,
more seeds cannot answer, more pairs might; well below it, a rough and optimistic figure (a seed component from 2
degrees of freedom at 3 seeds).
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
PROJECTED_SEEDS = 10  # `mde_10_seeds`: what this many seeds could detect


def per_seed_gains(pairs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per set x evaluation layer x trial x pair: the post - pre gain of each GAINS metric, with the trial's seed and
    the pair's Swahili headword (its cluster); `_matrix` averages the trials of one seed.
    """
    seeds = pairs["trial_id"].map(dict(zip(trials["trial_id"], trials["seed"])))
    return pairs[["set", "eval_layer", "pair_id", "swahili"]].assign(
        seed=seeds.to_numpy(), **{metric: pairs[f"{metric}_post"] - pairs[f"{metric}_pre"] for metric in GAINS.values()}
    )


def _matrix(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values [S, n, K] over seeds x pairs x GAINS, each the mean over the seed's trials, NaN where a seed lacks a
    pair; headwords [n]; pair ids [n]), seeds and pairs in ascending order.
    """
    seed_index = np.unique(rows["seed"].to_numpy(), return_inverse=True)[1].ravel()
    pair_ids, pair_index = np.unique(rows["pair_id"].to_numpy(), return_inverse=True)
    gains = rows[list(GAINS.values())].to_numpy(float)
    sums, counts = (np.zeros((int(seed_index.max()) + 1, len(pair_ids), len(GAINS))) for _ in range(2))
    np.add.at(sums, (seed_index, pair_index.ravel()), np.nan_to_num(gains))  # trials of one seed: averaged
    np.add.at(counts, (seed_index, pair_index.ravel()), ~np.isnan(gains))
    headwords = np.empty(len(pair_ids), dtype=object)
    headwords[pair_index.ravel()] = rows["swahili"].to_numpy()
    with np.errstate(invalid="ignore"):
        return sums / counts, headwords, pair_ids  # NaN (0 / 0) where a seed lacks a pair


def _columns(prefix: str) -> dict[str, str]:
    """The significance columns of one gain: the raw cosine's have the historic names."""
    names = {key: f"{prefix}{key}" for key in ("diff", "se", "ci_low", "ci_high", "p", "mde")}
    names["projected_mde"] = projected_mde(prefix)
    return names | ({"diff": "mean_diff", "p": "cosine_p"} if not prefix else {})


def projected_mde(prefix: str) -> str:
    """The significance column of a gain's MDE projected to PROJECTED_SEEDS seeds."""
    return f"{prefix}mde_{PROJECTED_SEEDS}_seeds"


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

    A set's replicates are `stats.group_replicates` at position 0, the trained set's in a comparison at position 1:
    `stats.seed_pair_bootstrap([set], ...)` and `seed_pair_bootstrap([set, trained], [1, -1], ...)`, each computed
    once per condition for all its evaluation layers (the same pairs at every layer: the same draws).
    """
    matrices = {key: _matrix(rows) for key, rows in gains.groupby(["set", "eval_layer"], sort=False)}
    own = _replicates(matrices, n_boot, seed, 0)
    reference = {key: m for key, m in matrices.items() if key[0] == REFERENCE}
    against = _replicates(reference, n_boot, seed, 1) if len(matrices) > len(reference) else {}
    out = []
    for (name, layer), (values, headwords, _) in matrices.items():
        row: dict = {"set": name, "eval_layer": layer}
        for k, (prefix, found) in enumerate(zip(GAINS, _inference(_estimate(values), own[name, layer]))):
            names = _columns(prefix)
            row |= {names[key]: found[key] for key in ("se", "ci_low", "ci_high", "p")}
            row[names["mde"]] = stats.minimum_detectable_effect(found["se"])
            ratio = stats.projected_se_ratio(values[:, :, k], PROJECTED_SEEDS, headwords)
            row[names["projected_mde"]] = row[names["mde"]] * ratio
        if (REFERENCE, layer) in against and name != REFERENCE:
            replicates = own[name, layer] - against[REFERENCE, layer]
            row |= _against_reference(values, matrices[REFERENCE, layer][0], replicates)
        out.append(row)
    return pd.DataFrame(out)


def _replicates(matrices: dict, n_boot: int, seed: int, position: int) -> dict[tuple, np.ndarray]:
    """{(set, layer): [n_boot, K] replicates}: the layers of a set that hold the same pairs in one computation."""
    joint: dict[tuple, list] = {}
    for (name, layer), (values, headwords, pair_ids) in matrices.items():
        joint.setdefault((name, values.shape[0], tuple(pair_ids)), []).append((layer, values, headwords))
    found = {}
    for (name, *_), parts in joint.items():
        stacked = np.concatenate([values for _, values, _ in parts], axis=2)  # [S, n, layers x K]
        replicates = stats.group_replicates(stacked, parts[0][2], n_boot, seed, position)
        for i, (layer, _, _) in enumerate(parts):
            found[name, layer] = replicates[:, i * len(GAINS) : (i + 1) * len(GAINS)]
    return found


def _against_reference(values: np.ndarray, reference: np.ndarray, replicates: np.ndarray) -> dict[str, float]:
    """The COMPARED gains of a set (values [S, n, K]) minus those of the reference set: difference, CI (from the
    difference's `replicates`), TOST.
    """
    estimates = _estimate(values) - _estimate(reference)
    found = _inference(estimates, replicates)
    reference_gain = _estimate(reference)
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


def against_shuffled(gains: dict[tuple, pd.DataFrame], by: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    """Per condition trained on true translations that has a shuffled control (the condition with the same `by`
    values but `translations` deranged) x set x evaluation layer: each COMPARED gain minus the control's, with its
    CI and p (`{prefix}vs_shuffled_*`; empty without a `translations` column or a control).

    `gains`: `per_seed_gains` of each condition, keyed by its `by` values in `by`'s order. The two conditions
    score the same pairs with the same seeds, so the difference is taken per seed and pair, d[s, i] = gain_true[s, i]
    - gain_shuffled[s, i], and bootstrapped as one group (`stats.group_replicates`: seeds, then headwords): the
    comparison a protocol's gain needs before it can be called lexical. Only the seeds both have count
    (`vs_shuffled_seeds`: a failed trial drops its seed from the comparison, not the comparison); a set whose pairs
    differ between the two (another candidate pool, so other centred gaps) is left out.
    """
    if "translations" not in by:
        return pd.DataFrame()
    at = by.index("translations")
    out = []
    for key, control in gains.items():
        partner = (*key[:at], "true", *key[at + 1 :])  # the same settings, trained on the true translations
        real = gains.get(partner) if key[at] == "deranged" else None
        if real is None:
            continue
        for (name, layer), rows in real.groupby(["set", "eval_layer"], sort=False):
            other = control[(control["set"] == name) & (control["eval_layer"] == layer)]
            seeds = set(rows["seed"]) & set(other["seed"])
            if not seeds or set(rows["pair_id"]) != set(other["pair_id"]):
                continue
            rows, other = rows[rows["seed"].isin(seeds)], other[other["seed"].isin(seeds)]
            (values, headwords, _), (reference, _, _) = _matrix(rows), _matrix(other)
            row = dict(zip(by, partner)) | {"set": name, "eval_layer": layer, "vs_shuffled_seeds": len(seeds)}
            replicates = stats.group_replicates(values - reference, headwords, n_boot, seed, 0)
            found = _inference(_estimate(values) - _estimate(reference), replicates)
            for prefix in COMPARED:
                k = list(GAINS).index(prefix)
                row |= {f"{prefix}vs_shuffled_{part}": found[k][part] for part in ("diff", "ci_low", "ci_high", "p")}
            out.append(row)
    return pd.DataFrame(out)
