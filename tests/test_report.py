"""The aggregator on synthetic experiments: statistics against scipy/statsmodels on seed-averaged unique pairs, the
verdict on known answers, selection by validation, progress, bad input, the files (and their HTML in Chromium),
and t-SNE through `tli.sweep.replay` on a tiny model.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from test_stats import exact_bootstrap_variance

from tli import report
from tli import stats as tli_stats
from tli.errors import TliError
from tli.report import drift as report_drift
from tli.report import multiple, render, retrieval, sections, selection, significance, training, uncertainty, verdict

from conftest import load_ablation
from report_fixture import RANK_MARGIN_SPACE, make_results

N_BOOT = 200
ALWAYS = {"retrieval_baselines.png", "translation_probe.png"}  # drawn whenever the trials stored baselines / probe
BY = ["target_layer", "pooling_train", "pooling_eval"]


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """3 target layers x 3 protocols x 2 seeds: 16 ok, the first errored, the last not run yet."""
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def results(fixture_dir):
    return report.load_results(str(fixture_dir))


@pytest.fixture(scope="module")
def sig(results):
    return report.significance_table(results, n_boot=N_BOOT, seed=0)


@pytest.fixture(scope="module")
def conds(results):
    return report.conditions(results, BY)


@pytest.fixture(scope="module")
def rank_margin_dir(tmp_path_factory):
    """LoRA rank x margin x held-out category, one seed, every trial done."""
    return make_results(tmp_path_factory.mktemp("rank_margin"), RANK_MARGIN_SPACE, errored=0, unfinished=0)


@pytest.fixture(scope="module")
def built(fixture_dir, tmp_path_factory):
    """The aggregator's files, written with Ray and the sweep's tuner made unimportable."""
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("ray", "tli.sweep.tuner"):
            patch.setitem(sys.modules, name, None)  # `import ray` now raises ImportError
        assert load_ablation("aggregate").main([str(fixture_dir), "--out", str(out), "--n-boot", str(N_BOOT)]) == 0
    return out


def _condition(results, target_layer, pooling_eval):
    ok = results.ok
    return ok[(ok["target_layer"] == target_layer) & (ok["pooling_eval"] == pooling_eval)]


def _row(sig, target_layer, pooling_eval, name, eval_layer=None):
    rows = sig[
        (sig["target_layer"] == target_layer)
        & (sig["pooling_eval"] == pooling_eval)
        & (sig["set"] == name)
        & (sig["eval_layer"] == (target_layer if eval_layer is None else eval_layer))
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def _seed_matrix(results, trials, name, layer, metric) -> tuple[np.ndarray, np.ndarray]:
    """([seeds, pairs] gains of `metric`, one trial per seed; the pairs' Swahili headwords), built here by hand."""
    pairs = results.pairs.merge(trials[["trial_id", "seed"]], on="trial_id")
    pairs = pairs[(pairs["set"] == name) & (pairs["eval_layer"] == layer)].sort_values(["seed", "pair_id"])
    gains = (pairs[f"{metric}_post"] - pairs[f"{metric}_pre"]).to_numpy()
    n_seeds = pairs["seed"].nunique()
    return gains.reshape(n_seeds, -1), pairs["swahili"].to_numpy()[: len(pairs) // n_seeds]


def _averaged(results, trials, name, layer) -> pd.DataFrame:
    """The set's pairs at `layer`, each averaged over `trials` (computed here independently of tli.report)."""
    pairs = results.pairs[results.pairs["trial_id"].isin(trials["trial_id"])]
    pairs = pairs[(pairs["set"] == name) & (pairs["eval_layer"] == layer)]
    return pairs.groupby("pair_id").mean(numeric_only=True)


# --- statistics ---------------------------------------------------------------------------------


def test_default_conditions_are_the_varying_settings(results, rank_margin_dir):
    assert report.condition_columns(results.trials) == BY
    other = report.load_results(str(rank_margin_dir))
    assert report.condition_columns(other.trials) == ["lora_rank", "margin", "heldout_category"]  # alpha copies rank


def test_a_search_s_conditions_are_every_setting_it_drew(results):
    """An Optuna-style search: rank, margin and lr drawn with each trial, so each maps one-to-one onto target_layer;
    every one is a condition, and no trial at rank 4 / margin 0.494 is called the paper's defaults.
    """
    drawn = {1: (4, 0.494, 7.2e-4), 2: (8, 0.7, 1e-4), 3: (32, 0.25, 3e-4)}
    trials = results.trials.assign(
        lora_rank=results.trials["target_layer"].map(lambda t: drawn[t][0]),
        lora_alpha=results.trials["target_layer"].map(lambda t: 2 * drawn[t][0]),
        margin=results.trials["target_layer"].map(lambda t: drawn[t][1]),
        lr=results.trials["target_layer"].map(lambda t: drawn[t][2]),
    )
    search = dataclasses.replace(results, trials=trials)
    by = report.condition_columns(trials)
    assert by == ["target_layer", "lr", "lora_rank", "margin", "pooling_train", "pooling_eval"]
    assert report.prespecified(report.conditions(search, by), by).empty
    text = render.markdown(sections.header(search, by))
    assert "Conditions (`by`): target_layer, lr, lora_rank, margin, pooling_train, pooling_eval" in text


def test_cosine_tests_use_unique_pairs_averaged_over_seeds(results, sig):
    trials = _condition(results, 2, "mean_content")
    assert sorted(trials["seed"]) == [0, 1]
    row = _row(sig, 2, "mean_content", "trained")
    pairs = _averaged(results, trials, "trained", 2)
    pre, post = pairs["cosine_pre"].to_numpy(), pairs["cosine_post"].to_numpy()
    diff, test = post - pre, scipy_stats.ttest_rel(post, pre)
    assert row["n"] == len(pairs) == 18 and (row["n_trials"], row["n_seeds"]) == (2, 2)  # not 36 = pairs x seeds
    assert (row["mean_pre"], row["mean_post"], row["mean_diff"]) == pytest.approx(
        (pre.mean(), post.mean(), diff.mean())
    )
    assert (row["t"], row["p"]) == pytest.approx((test.statistic, test.pvalue))
    assert row["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(post, pre).pvalue)
    assert row["d_z"] == pytest.approx(diff.mean() / np.std(diff, ddof=1))
    values, headwords = _seed_matrix(results, trials, "trained", 2, "cosine")
    se = np.std(tli_stats.seed_pair_bootstrap([(values, headwords)], n_boot=N_BOOT, seed=0), ddof=1)
    z = scipy_stats.norm.ppf(0.975)
    assert (row["se"], row["ci_low"], row["ci_high"]) == pytest.approx((se, diff.mean() - z * se, diff.mean() + z * se))
    assert row["cosine_p"] == pytest.approx(2 * scipy_stats.norm.sf(diff.mean() / se))
    assert row["mde"] == pytest.approx((z + scipy_stats.norm.ppf(0.8)) * se)
    # more seeds: the MDE scaled by the seed x pair variance components' projection (2 seeds -> 10)
    assert row["mde_10_seeds"] == pytest.approx(row["mde"] * tli_stats.projected_se_ratio(values, 10, headwords))
    assert 0 < row["mde_10_seeds"] <= row["mde"]


def test_seed_variance_is_in_the_ci(results, sig):
    """Seeds 0 and 1 scale every gain by 1 and 1.25: the SE is the exact two-level bootstrap SE (up to Monte Carlo
    error), above the pairs-only SE of the seed-averaged pairs (the paper's t-test SE), which leaves that spread out.
    """
    for name in ("trained", "unseen"):
        row, trials = _row(sig, 2, "mean_content", name), _condition(results, 2, "mean_content")
        values, headwords = _seed_matrix(results, trials, name, 2, "cosine")
        assert len(set(headwords)) == values.shape[1]  # one pair per headword here: the closed form applies
        exact = np.sqrt(exact_bootstrap_variance(values))
        pairs_only = np.std(values.mean(axis=0), ddof=1) / np.sqrt(values.shape[1])
        assert row["se"] == pytest.approx(exact, rel=0.2) and exact > 1.2 * pairs_only


def test_gap_tests_set_means_and_seed_spread(results, sig, conds):
    trials = _condition(results, 3, "mean_content")
    row = _row(sig, 3, "mean_content", "control")
    pairs = _averaged(results, trials, "control", 3)
    for prefix, metric in (("gap_", "gap"), ("centered_gap_", "centered_gap")):
        gain = (pairs[f"{metric}_post"] - pairs[f"{metric}_pre"]).mean()
        values, headwords = _seed_matrix(results, trials, "control", 3, metric)
        se = np.std(tli_stats.seed_pair_bootstrap([(values, headwords)], n_boot=N_BOOT, seed=0), ddof=1)
        assert (row[f"{prefix}diff"], row[f"{prefix}se"]) == pytest.approx((gain, se))
        assert row[f"{prefix}p"] == pytest.approx(2 * scipy_stats.norm.sf(abs(gain) / se))
    assert (row["p_at_1_pre"], row["p_at_1_post"]) == pytest.approx((pairs["hit_pre"].mean(), pairs["hit_post"].mean()))
    assert row["p_at_1_chance"] == pytest.approx(pairs["chance"].mean())
    summary = results.summary[results.summary["trial_id"].isin(trials["trial_id"])]
    control = summary[(summary["set"] == "control") & (summary["eval_layer"] == 3)]
    assert row["n_removed"] == control["n_removed"].iloc[0] == 1  # sw_ctl7: en_noun0 is a trained word
    assert _row(sig, 3, "mean_content", "control_all")["n"] == row["n"] + 1
    assert row["seed_sd_mean_diff"] == pytest.approx(np.std(control["mean_diff"], ddof=1))  # one trial per seed
    one_seed = _row(sig, 1, "mean", "control")
    assert one_seed["n_seeds"] == 1 and np.isnan(one_seed["seed_sd_mean_diff"])


def test_corrections_within_families_match_statsmodels(sig):
    """A family: one set at the target layer (or at one fixed layer) across the 9 conditions."""
    trained = sig[(sig["set"] == "trained") & (sig["eval_layer"] == sig["target_layer"])]
    assert set(trained["family"]) == {"trained @ target"} and (trained["family_size"] == 9).all()
    final = sig[(sig["set"] == "control") & (sig["eval_layer"] == 4)]
    assert set(final["family"]) == {"control @ layer 4"} and len(final) == 9  # target layer 4 is not swept
    for family in (trained, final):
        for column in ("p", "cosine_p", "gap_p", "centered_gap_p"):
            tested = family[column].notna()
            assert tested.sum() >= 6 and family.loc[~tested, "mean_diff"].eq(0).all()  # untestable: no change at all
            expected = multipletests(family.loc[tested, column], method="holm")[1]
            assert family.loc[tested, f"{column}_holm" if column != "p" else "p_holm"].to_numpy() == pytest.approx(
                expected
            )
    assert sig.groupby("family")["family_size"].first().sum() == len(sig)


def test_a_family_is_one_set_at_one_layer_corrected_by_hand():
    """Four rows of two conditions: 'trained @ target' (both at their target layer), 'trained @ layer 4' and
    'control @ target' hold the rest; Holm by hand within each, a NaN p passes through and is not counted.
    """
    table = pd.DataFrame(
        {
            "set": ["trained", "trained", "trained", "trained", "control", "control"],
            "eval_layer": [2, 3, 4, 4, 2, 3],
            "layer_role": ["target", "target", "final", "final", "target", "target"],
            "cosine_p": [0.01, 0.04, 0.03, 0.02, 0.02, np.nan],
        }
    )
    corrected = multiple.correct(table)
    assert corrected["family"].tolist() == [
        "trained @ target",
        "trained @ target",
        "trained @ layer 4",
        "trained @ layer 4",
        "control @ target",
        "control @ target",
    ]
    assert corrected["family_size"].tolist() == [2, 2, 2, 2, 2, 2]
    # Holm: sorted p times (m, m-1, ...), running maximum: (0.01 x 2, 0.04 x 1) and (0.02 x 2, max(0.03 x 1, 0.04))
    np.testing.assert_allclose(corrected["cosine_p_holm"].to_numpy()[:4], [0.02, 0.04, 0.04, 0.04])
    assert corrected["cosine_p_holm"].iloc[4] == pytest.approx(0.02) and np.isnan(corrected["cosine_p_holm"].iloc[5])


def test_gain_against_the_trained_set_and_equivalence(results, sig):
    """The control set's gain minus the trained set's: difference, CI from the joint bootstrap, TOST by hand."""
    trials = _condition(results, 3, "mean_content")
    row, trained = _row(sig, 3, "mean_content", "control"), _row(sig, 3, "mean_content", "trained")
    for prefix, metric in (("", "cosine"), ("centered_gap_alike_", "centered_gap_alike")):
        gain = "mean_diff" if not prefix else f"{prefix}diff"
        groups = [_seed_matrix(results, trials, name, 3, metric) for name in ("control", "trained")]
        se = np.std(tli_stats.seed_pair_bootstrap(groups, [1.0, -1.0], n_boot=N_BOOT, seed=0), ddof=1)
        difference, margin = row[gain] - trained[gain], 0.5 * abs(trained[gain])
        assert (row[f"{prefix}vs_trained_diff"], row[f"{prefix}vs_trained_margin"]) == pytest.approx(
            (difference, margin)
        )
        z = scipy_stats.norm.ppf(0.975)
        low, high = row[f"{prefix}vs_trained_ci_low"], row[f"{prefix}vs_trained_ci_high"]
        assert (low, high) == pytest.approx((difference - z * se, difference + z * se))
        tost = max(scipy_stats.norm.sf((difference + margin) / se), scipy_stats.norm.cdf((difference - margin) / se))
        assert row[f"{prefix}vs_trained_tost_p"] == pytest.approx(tost)
    assert np.isnan(trained["vs_trained_diff"])  # the trained set is the reference


def test_the_comparison_with_the_trained_set_reads_the_verdict_s_centred_gap():
    """Known answer: a control set whose centred gap over every non-translation rises by 0.5 (length passing for
    translation) but over alike ones by 0.2, as the trained set's: `centered_gap_alike_vs_trained_*` finds a
    difference of 0, equivalent within the margin 0.1 (half the trained gain), and no comparison of the unmatched
    gap is made. Values a_c + b_s (pair effect, seed shift shared by both sets): the seeds cancel in the difference,
    so its bootstrap variance is var_pop(a_control) / C + var_pop(a_trained) / C = 2 x 0.05^2 / 30.
    """
    n, shifts = 30, (-0.01, 0.01)
    effect = np.where(np.arange(n) % 2 == 0, 0.05, -0.05)  # mean 0, population variance 0.05^2
    rows = []
    for name, unmatched, sign in (("trained", 0.2, 1), ("control", 0.5, -1)):
        for seed, shift in enumerate(shifts):
            noise = sign * effect + shift
            rows += [
                {"set": name, "eval_layer": 2, "seed": seed, "pair_id": i, "swahili": f"{name}{i}"}
                | {"cosine": 0.4 + noise[i], "gap": unmatched + noise[i], "centered_gap": unmatched + noise[i]}
                | {"gap_alike": 0.2 + noise[i], "centered_gap_alike": 0.2 + noise[i]}
                for i in range(n)
            ]
    table = uncertainty.set_rows(pd.DataFrame(rows), n_boot=20_000, seed=0).set_index("set")
    control = table.loc["control"]
    assert not any(c.startswith("centered_gap_vs_trained") for c in table)
    assert control["centered_gap_alike_vs_trained_diff"] == pytest.approx(0.0, abs=1e-12)
    assert control["centered_gap_alike_vs_trained_margin"] == pytest.approx(0.1)
    se = (control["centered_gap_alike_vs_trained_ci_high"] - control["centered_gap_alike_vs_trained_ci_low"]) / (
        2 * scipy_stats.norm.ppf(0.975)
    )
    assert se == pytest.approx(np.sqrt(2 * 0.05**2 / n), rel=0.03)
    assert control["centered_gap_alike_vs_trained_tost_p"] == pytest.approx(scipy_stats.norm.sf(0.1 / se))
    assert control["centered_gap_alike_vs_trained_tost_p"] < 1e-6 and np.isnan(table.loc["trained", "vs_trained_diff"])
    row = control.to_dict() | {"set": "control", "protocol": "author's code", "target_layer": 2, "n": n, "n_seeds": 2}
    row |= {"mean_diff": 0.4, "gap_alike_diff": 0.2, "centered_gap_alike_diff": 0.2, "verdict": "specific"}
    row |= {"cosine_p_holm": 0.001, "gap_alike_p_holm": 0.001, "centered_gap_alike_p_holm": 0.001}
    row |= {"p_at_1_pre": 0.1, "p_at_1_post": 0.2, "p_at_1_chance": 0.05}
    text = verdict.sentence(pd.Series(row))
    assert re.search(
        r"centred gap \(alike\) [+-]0\.0000 \(95% CI -0\.02\d\d to \+0\.02\d\d\), equivalent within ±0\.1000", text
    )
    assert re.search(r"its gains minus the trained set's: raw cosine [+-]0\.0000 .* equivalent within ±0\.2000", text)


def test_a_gain_against_its_shuffled_control_is_taken_per_seed_and_pair():
    """Known answer: the true-translation condition's centred gap (alike) gain is a_i + b_s + 0.10 + e_i and its
    shuffled control's a_i + b_s + 0.03 (pair effect a, seed shift b shared: the same words and seeds), so the
    difference is 0.07 + e_i per seed and pair: its bootstrap variance is var_pop(e) / n (the seeds and a cancel),
    and its p the normal tail of 0.07 / se. Raw cosines gain the same in both but for -e_i. A
    condition without a control, and a set whose pairs differ between the two, get no row; a seed the control lacks
    leaves the comparison to the seeds both have.
    """
    n, shifts = 40, (-0.02, 0.0, 0.02)
    pair = np.linspace(-0.1, 0.1, n)
    extra = np.where(np.arange(n) % 2 == 0, 0.05, -0.05)  # mean 0, population variance 0.05^2
    gains = {}
    for key, up, own in ((("true", 2), 0.10, extra), (("deranged", 2), 0.03, 0 * extra), (("true", 4), 0.1, extra)):
        rows = []
        for name in ("unseen", "control"):
            size = n if name == "unseen" or key[0] == "true" else n - 1  # control: the pools differ, no comparison
            for seed, shift in enumerate(shifts):
                rows += [
                    {"set": name, "eval_layer": 2, "seed": seed, "pair_id": i, "swahili": f"w{i}"}
                    | {metric: pair[i] + shift for metric in ("gap", "centered_gap", "gap_alike")}
                    | {"cosine": 0.01 + pair[i] + shift - own[i], "centered_gap_alike": up + pair[i] + shift + own[i]}
                    for i in range(size)
                ]
        gains[key] = pd.DataFrame(rows)
    table = uncertainty.against_shuffled(gains, ["translations", "target_layer"], n_boot=20_000, seed=0)
    (row,) = table.to_dict("records")  # ("true", 4) has no control; control pairs differ: no row
    assert (row["translations"], row["target_layer"], row["set"]) == ("true", 2, "unseen")
    assert row["centered_gap_alike_vs_shuffled_diff"] == pytest.approx(0.07)
    assert row["vs_shuffled_diff"] == pytest.approx(0.0, abs=1e-12)
    se = (row["centered_gap_alike_vs_shuffled_ci_high"] - row["centered_gap_alike_vs_shuffled_ci_low"]) / (
        2 * scipy_stats.norm.ppf(0.975)
    )
    assert se == pytest.approx(np.std(extra) / np.sqrt(n), rel=0.03)
    assert row["centered_gap_alike_vs_shuffled_p"] == pytest.approx(2 * scipy_stats.norm.sf(0.07 / se))
    assert row["vs_shuffled_seeds"] == 3
    control = gains[("deranged", 2)]
    gains[("deranged", 2)] = control[control["seed"] != 2]  # its seed-2 trial failed
    (row,) = uncertainty.against_shuffled(gains, ["translations", "target_layer"], n_boot=2_000, seed=0).to_dict(
        "records"
    )
    assert row["vs_shuffled_seeds"] == 2
    assert row["centered_gap_alike_vs_shuffled_diff"] == pytest.approx(0.07)
    assert uncertainty.against_shuffled(gains, ["target_layer"], n_boot=100, seed=0).empty  # no translations column


def test_unknown_by_column_is_an_error(results):
    with pytest.raises(TliError, match="unknown --by column"):
        report.significance_table(results, ["target_layer", "learning_rate"], n_boot=N_BOOT)


# --- selection, the condition fixed in advance, the verdict -------------------------------------


def test_selection_uses_validation_not_control(sig, conds):
    chosen = report.selected(conds, BY)
    assert (chosen["target_layer"], chosen["pooling_eval"]) == (3, "mean_content")
    control = significance.at_target(sig)[lambda t: (t["set"] == "control") & (t["pooling_eval"] == "mean_content")]
    best_on_control = control.loc[control["centered_gap_diff"].idxmax()]
    assert best_on_control["target_layer"] == 1  # what selecting on the control set would have picked


def test_ties_on_the_objective_are_named_and_go_to_the_paper_settings(results, conds):
    chosen = report.selected(conds, BY)
    assert selection.tied(conds, chosen).empty
    content = conds["pooling_eval"] == "mean_content"
    rival = conds[content & (conds["target_layer"] == 1)].index[0]  # a row above the chosen one
    incomparable = conds[~content].index[0]  # another evaluation pooling: its objective is on another scale
    assert rival < chosen.name
    level = conds.assign(
        objective=conds["objective"].where(~conds.index.isin([rival, incomparable]), chosen["objective"])
    )
    first = report.selected(level, BY)
    assert (first.name, selection.tied(level, first).index.tolist()) == (rival, [chosen.name])  # first row shown
    text = render.markdown(sections.selection(results, level, BY, first))
    assert "It ties with another condition on that objective (target_layer=3" in text
    assert "the most settings at the paper's defaults (on equal counts, the first row of the table)" in text
    paper = conds[content & (conds["target_layer"] == 2)].index[0]  # the paper's layer, below the rival
    assert rival < paper
    three = level.assign(objective=level["objective"].where(level.index != paper, chosen["objective"]))
    assert report.selected(three, BY).name == paper  # a tie goes to the paper's settings before the first row


def test_the_selection_says_whether_the_objective_separates_it_from_the_runner_up(results, conds):
    """Welch's p from the conditions' summaries equals scipy's on their trials' objectives; a tie is no runner-up."""
    chosen = report.selected(conds, BY)
    other = selection.runner_up(conds, chosen)
    rest = selection.competing(conds).drop(index=[chosen.name, other.name])
    assert (rest["objective"] < other["objective"]).all() and other["objective"] < chosen["objective"]
    objectives = results.ok.set_index("trial_id")["objective"]
    trials = [objectives[c["trial_ids"]].to_numpy(float) for c in (chosen, other)]
    expected = scipy_stats.ttest_ind(*trials, equal_var=False).pvalue
    assert selection.separation(chosen, other) == pytest.approx(expected, rel=1e-9)
    text = render.markdown(sections.selection(results, conds, BY, chosen))
    assert f"The runner-up, {sections.label(other, BY)}, has {other['objective']:.4f}" in text
    assert f"Welch's t-test p = {expected:.2g}" in text
    level = conds.assign(objective=conds["objective"].where(conds.index != other.name, chosen["objective"]))
    assert selection.runner_up(level, chosen).name != other.name  # tied with the selected: named as a tie instead


def test_overview_condenses_each_condition_at_its_target_layer(sig, conds, rank_margin_dir):
    table = report.overview(sig, conds, BY)
    assert len(table) == len(conds) == 9
    for _, row in table.iterrows():
        for name in ("trained", "control", "unseen"):
            found = _row(sig, row["target_layer"], row["pooling_eval"], name)
            cgap, p_at_1 = row[f"{name} cgap"], row[f"{name} cP@1"]
            assert cgap.startswith(f"{found['centered_gap_alike_pre']:.3f} → {found['centered_gap_alike_post']:.3f}")
            assert p_at_1 == f"{found['p_at_1_centered_pre']:.2%} → {found['p_at_1_centered_post']:.2%}"
            assert cgap.endswith(" ↑") == (found["centered_gap_alike_ci_low"] > 0)
            assert cgap.endswith(" ↓") == (found["centered_gap_alike_ci_high"] < 0)
    by_protocol = table.set_index(["target_layer", "pooling_eval"])
    assert by_protocol.loc[(3, "mean_content"), "trained cgap"].endswith(" ↑")  # 'pull': translations move together
    unchanged = by_protocol.xs("last", level="pooling_eval")["trained cgap"]  # 'none': nothing changes
    assert all(pre == post for pre, post in unchanged.str.split(" → "))
    assert table["objective"].tolist() == pytest.approx(conds["objective"].tolist())
    one_missing = [np.nan] + [0.5] * (len(conds) - 1)
    no_drift = conds.assign(drift_kl_sw=one_missing, drift_kl_en=one_missing)
    assert report.overview(sig, no_drift, BY)["drift sw / en"].tolist()[:2] == [" / ", "0.50 / 0.50"]
    first = (sig["target_layer"] == 1) & (sig["pooling_eval"] == "mean_content") & (sig["set"] == "unseen")
    partial = report.overview(sig[~first], conds, BY).set_index(["target_layer", "pooling_eval"])
    assert partial.loc[(1, "mean_content"), ["unseen cgap", "unseen cP@1"]].tolist() == ["", ""]  # that one only
    assert partial.drop(index=(1, "mean_content"))["unseen cgap"].str.contains(" → ").all()
    assert "nothing to show" in render.markdown(sections.at_a_glance(sig.assign(layer_role="final"), conds, BY))
    other = report.load_results(str(rank_margin_dir))
    by = report.condition_columns(other.trials)
    heldout = report.overview(report.significance_table(other, by, N_BOOT), report.conditions(other, by), by)
    assert heldout["heldout cgap"].str.contains(" → ").all()


@pytest.mark.parametrize(
    "start, end, state",
    [
        (0.005, -0.002, "never left the margin"),
        (0.08, 0.001, "descended onto the margin"),
        (-0.05, 0.0, "rose onto the margin"),
        (0.05, -0.2, "below the margin"),
        (0.0, 0.03, "above the margin"),
        (float("nan"), 0.0, ""),
    ],
)
def test_where_a_triplet_loss_ended_against_its_margin(start, end, state):
    assert training.margin_state(start, end) == state


def test_the_training_check_is_computed_from_the_logged_dynamics(results):
    ok = results.ok
    kinds = ok["pooling_eval"].value_counts()  # the fixture: mean descends, mean_content ends below, last never left
    states = training.margin_states(ok)
    assert (states[ok["pooling_eval"] == "mean"] == "descended onto the margin").all()
    assert (states[ok["pooling_eval"] == "mean_content"] == "below the margin").all()
    assert (states[ok["pooling_eval"] == "last"] == "never left the margin").all()
    text = " ".join(training.check(ok))
    assert f"Training check, {len(ok)} triplet trial(s)" in text
    assert f"{kinds['mean']} descended onto the margin (loss - margin +0.100 at step 0, +0.005 over" in text
    assert f"{kinds['last']} never left the margin (loss - margin +0.000 at step 0" in text
    assert "raw a·p 0.500 → 0.929, a·n_hard 0.600 → 0.934" in text  # step 0, then the last epoch's mean
    always = kinds["mean"] + kinds["last"]
    assert f"In {always} of {len(ok)} triplet trial(s) every hinge was open at every step (the fewest open" in text
    assert "margin on Gemma" not in text and "group(s) of trials identical but for the margin" not in text
    infonce = ok.assign(loss=np.where(ok["pooling_eval"] == "last", "infonce", "triplet"))
    text = " ".join(training.check(infonce))
    assert f"Training check, {len(ok) - kinds['last']} triplet trial(s)" in text and "never left" not in text
    assert f"{kinds['last']} InfoNCE trial(s) (no margin; the loss in nats" in text
    old = ok.drop(columns=[c for c in ok if c.startswith("train_") and c != "train_seconds"])
    assert "not possible here" in training.check(old)[0]


def test_trials_differing_only_in_margin_are_checked_for_one_adapter(rank_margin_dir):
    ok = report.load_results(str(rank_margin_dir)).ok  # the fixture's update norm follows the rank, not the margin
    found = training.margin_groups(ok)
    assert len(found) == 4 and all(group["margins"] == [0.2, 0.4] and group["same"] for group in found)
    text = " ".join(training.check(ok))
    assert "Of 4 group(s) of trials identical but for the margin (margins 0.2 and 0.4), every one trained one" in text
    moved = ok.assign(train_lora_norm_end=ok["train_lora_norm_end"] * np.where(ok["margin"] == 0.2, 1.0, 1.01))
    assert (
        "0 trained one adapter for every margin and 4 did not (final LoRA update norms differ by more than 1e-05, "
        "relative). In 4 of them every margin trained its own adapter."
    ) in " ".join(training.check(moved))


def test_margins_are_grouped_by_the_adapter_they_trained():
    norms = [1.97, 1.798, 1.798 * (1 + 5e-6), 1.798, 2.5]  # margin 0 and 1 apart; 0.1-0.3 within 1e-5
    assert training.adapters_by_norm([0, 0.1, 0.2, 0.3, 1], norms) == [(0,), (0.1, 0.2, 0.3), (1,)]
    assert training.adapters_by_norm([0.3, 0.1], [1.0, 1.0]) == [(0.1, 0.3)]
    assert training.adapters_by_norm([0.1, 0.2], [1.0, 1.0 + 2e-5]) == [(0.1,), (0.2,)]
    # steps of 8e-6 each within 1e-5 of the last, but 1.6e-5 from the first: not one adapter
    assert training.adapters_by_norm([0.1, 0.2, 0.3], [1.0, 1 + 8e-6, 1 + 1.6e-5]) == [(0.1, 0.2), (0.3,)]
    assert training.adapters_by_norm([0.1, 0.2, 0.3], [1.0, math.nan, 1.0]) == [(0.1, 0.3), (0.2,)]  # not logged
    found = [{"margins": [0, 0.1, 0.2], "adapters": [(0,), (0.1, 0.2)], "same": False}] * 3
    found += [{"margins": [0, 0.1, 0.2], "adapters": [(0,), (0.1,), (0.2,)], "same": False}]
    found += [{"margins": [0, 0.1, 0.2], "adapters": [(0, 0.1, 0.2)], "same": True}]
    assert training._same_adapters(found) == [
        "Of 5 group(s) of trials identical but for the margin (margins 0, 0.1 and 0.2), 1 trained one adapter for "
        "every margin and 4 did not (final LoRA update norms differ by more than 1e-05, relative). In 3 of them "
        "margin 0 trained its own; margins 0.1 and 0.2 shared one adapter. In 1 of them every margin trained its own "
        "adapter."
    ]


def test_dynamics_table_and_figures_per_condition(results, conds, built):
    table = training.dynamics_table(results.ok, conds, BY)
    assert len(table) == len(conds) and (table["loss"] == "triplet").all()
    row = table[(table["target_layer"] == 2) & (table["pooling_eval"] == "mean_content")].iloc[0]
    assert row["loss - margin"] == "+0.050 → -0.169" and row["open hinges (min)"] == "100% → 50% (50%)"
    text = (built / "report.md").read_text()
    assert "## What training did" in text and "margins 0.1 to 1.0" not in text
    drawn = sorted(f.name for f in (built / "figures").glob("training_*.png"))
    assert drawn == [f"training_{i:02d}.png" for i in range(1, len(conds) + 1)]
    from tli.report import figures

    log = results.tables("train_log", conds.iloc[0]["trial_ids"])
    assert figures.training_dynamics(log, ["infonce"], "x").startswith(b"\x89PNG")
    assert figures.training_dynamics(log.drop(columns=["cos_positive"]), ["triplet"], "x") is None


def test_drift_beside_its_interval_and_its_random_direction_reference(results, conds, built):
    table = report_drift.drift_table(results.ok, conds, BY)
    assert len(table) == 2 * len(conds) and set(table["language"]) == {"sw", "en"}
    sw, en = table[table["language"] == "sw"], table[table["language"] == "en"]
    assert (sw["vs random"] == "above").all() and (en["vs random"] == "below").all()
    np.testing.assert_allclose(sw["drift / random"], 4.0)
    one = conds[conds["n_trials"] == 1].index[0]  # a condition of one trial shows that trial's CI
    trial = results.ok.set_index("trial_id").loc[conds.loc[one, "trial_ids"][0]]
    shown = table[(table["language"] == "sw")].iloc[list(conds.index).index(one)][report_drift.INTERVAL]
    assert shown == f"{trial['drift_kl_sw_ci_low']:.3g} to {trial['drift_kl_sw_ci_high']:.3g}"
    assert table[report_drift.INTERVAL].str.startswith("seeds ").sum() == 2 * (conds["n_trials"] > 1).sum()
    assert report_drift.versus_random(0.1, 0.2, 0.15) == "within" and report_drift.versus_random(0.1, 0.2, 0.3) == (
        "below"
    )
    text = (built / "report.md").read_text()
    assert "## Drift against a reference" in text and f"{len(conds)} above, {len(conds)} below" in text


def test_prespecified_condition_is_the_papers_defaults(conds, rank_margin_dir):
    fixed = report.prespecified(conds, BY)
    assert fixed["target_layer"].tolist() == [2, 2, 2] and fixed["pooling_eval"].nunique() == 3  # every protocol
    other = report.load_results(str(rank_margin_dir))
    by = report.condition_columns(other.trials)
    assert report.prespecified(report.conditions(other, by), by).empty  # every trial holds a category out


def test_verdict_on_known_answers(sig, conds):
    table = verdict.verdict_table(sig, report.prespecified(conds, BY), BY)
    found = table.groupby("protocol")["verdict"].agg(set).to_dict()
    assert found == {
        "paper as written": {"not specific"},
        "author's code": {"specific"},
        "control: last token": {"no rise"},
    }
    assert set(table["set"]) == {"trained", "control", "control_all", "unseen"} and (table["target_layer"] == 2).all()
    several = table[table["n_seeds"] > 1]  # the projection to 10 seeds travels with the MDE into the sentences
    assert len(several) and (several["centered_gap_alike_mde_10_seeds"] <= several["centered_gap_alike_mde"]).all()
    undetected = several[~several.apply(lambda row: verdict.holds(row, "centered_gap_alike_"), axis=1)]
    assert len(undetected), several
    row = undetected.iloc[0]
    said = f"not detectable above {row['centered_gap_alike_mde']:.4f}, with 10 seeds about "
    assert said + f"{row['centered_gap_alike_mde_10_seeds']:.4f})" in verdict.sentence(row)


@pytest.mark.parametrize(
    "n, cosine, gap, centred, expected",  # (gain, Holm-corrected p) of each: raw cosine, gaps over alike pairs
    [
        (1, (0.1, 0.01), (0.1, 0.01), (0.1, 0.01), "untested"),
        (9, (0.1, 0.01), (np.nan, np.nan), (0.1, 0.01), "untested"),  # a gap not measured (an older store)
        (9, (0.0, np.nan), (0.1, 0.01), (0.1, 0.01), "no rise"),  # no change at all
        (9, (-0.1, 0.01), (0.1, 0.01), (0.1, 0.01), "no rise"),  # a significant fall
        (9, (0.1, 0.06), (0.1, 0.01), (0.1, 0.01), "no rise"),  # significant uncorrected, not after correction
        (9, (0.1, 0.01), (0.1, 0.01), (0.1, 0.049), "specific"),
        (9, (0.1, 0.01), (0.1, 0.01), (-0.1, 0.01), "partly specific"),
        (9, (0.1, 0.01), (0.1, 0.2), (0.1, np.nan), "not specific"),
    ],
)
def test_verdict_rule_uses_the_corrected_p_of_the_gaps_over_alike_pairs(n, cosine, gap, centred, expected):
    row = {"n": n, "mean_diff": cosine[0], "cosine_p_holm": cosine[1]}
    row |= {"gap_alike_diff": gap[0], "gap_alike_p_holm": gap[1]}
    row |= {"centered_gap_alike_diff": centred[0], "centered_gap_alike_p_holm": centred[1]}
    row |= {"gap_diff": 0.2, "gap_p_holm": 0.001, "centered_gap_diff": 0.2, "centered_gap_p_holm": 0.001}  # unused
    assert verdict.verdict(pd.Series(row)) == expected


def test_a_gain_that_does_not_hold_is_not_detectable_above_its_mde():
    row = {"protocol": "author's code", "target_layer": 2, "set": "unseen", "n": 1529, "n_seeds": 3, "verdict": "x"}
    for prefix, gain, p in (("", 0.008, 0.001), ("gap_alike_", 0.0001, 0.4), ("centered_gap_alike_", -0.011, 0.9)):
        diff = "mean_diff" if not prefix else f"{prefix}diff"
        p_column = f"{prefix or 'cosine_'}p_holm"
        row |= {diff: gain, p_column: p, f"{prefix}ci_low": gain - 0.01, f"{prefix}ci_high": gain + 0.01}
        row[f"{prefix}mde"] = 0.0123
    row |= {"p_at_1_pre": 0.001, "p_at_1_post": 0.002, "p_at_1_chance": 0.0005}
    text = verdict.sentence(pd.Series(row))
    assert "the raw cosine moves by +0.0080 (95% CI -0.0020 to +0.0180, Holm p 0.001)" in text
    assert "the gap over alike non-translations by +0.0001" in text and "not detectable above 0.0123)" in text
    assert text.count("not detectable above") == 2 and "unseen set (1529 pairs, each averaged over 3 seeds)" in text
    # with the projection to 10 seeds it is said beside the MDE, and not where the condition already had 10
    row["centered_gap_alike_mde_10_seeds"] = 0.0118
    assert "not detectable above 0.0123, with 10 seeds about 0.0118)" in verdict.sentence(pd.Series(row))
    assert "with 10 seeds" not in verdict.sentence(pd.Series(row | {"n_seeds": 10}))


def test_objectives_are_drawn_only_for_conditions_that_compete(conds, monkeypatch):
    """Three evaluation poolings: only mean_content (the paper's default) has objectives on the validation scale
    the figure draws; drift is drawn for all; with no competing condition the panel says why.
    """
    from matplotlib.collections import PathCollection

    from tli.report import figures

    def colours(ax) -> set[tuple]:  # of the points drawn (scatter collections)
        return {tuple(c) for s in ax.collections if isinstance(s, PathCollection) for c in s.get_facecolors()}

    drawn = []
    monkeypatch.setattr(figures, "png", lambda fig: drawn.append(fig) or b"")
    figures.objective_and_drift(conds, BY)
    objective, drift = drawn[-1].axes[:2]
    key = figures.groups_of(conds, BY[1:])
    colour = {name: tuple(c) for name, c in zip(key.names, key.colours)}
    assert colours(objective) == {colour["pooling_train=mean, pooling_eval=mean_content"]}
    assert colours(drift) == set(colour.values()) and len(colour) == 3
    figures.objective_and_drift(conds[conds["pooling_eval"] != "mean_content"], BY)
    objective = drawn[-1].axes[0]
    assert not colours(objective) and objective.get_title() == "objectives on other scales: not drawn"


def test_protocol_names():
    names = {
        ("mean", "mean", False): "paper as written",
        ("mean", "mean_content", False): "author's code",
        ("mean", "mean_content", True): "author's code + false-negative mask",
        ("mean_skip_first", "mean_skip_first", False): "control: first position dropped",
        ("last", "last", True): "control: last token",
        ("mean", "last", False): "train mean / eval last",
    }
    assert {key: verdict.protocol_name(*key) for key in names} == names
    assert verdict.protocol_name("mean", "mean_content", True, "deranged") == "control: shuffled pairs"
    assert verdict.protocol_name("mean", "mean", False, "deranged") == "control: shuffled pairs (paper as written)"
    assert verdict.protocol_name("mean", "mean", False, "true") == "paper as written"
    ranked = sorted(["control: last token", "control: shuffled pairs", "paper as written"], key=verdict.protocol_rank)
    assert ranked == ["paper as written", "control: shuffled pairs", "control: last token"]


def test_table2_ranks_pair_gains_of_the_selected_condition(results, conds):
    chosen = report.selected(conds, BY)
    table = report.table2(results, chosen["trial_ids"], k=5)
    assert table["rank"].tolist() == ["largest"] * 5 + ["smallest"] * 5
    assert table["gain"].iloc[:5].is_monotonic_decreasing and table["gain"].iloc[5:].is_monotonic_increasing
    assert table["gain"].to_numpy() == pytest.approx((table["cosine_post"] - table["cosine_pre"]).to_numpy())
    assert not table["set"].str.endswith("_all").any()


# --- progress and bad input ---------------------------------------------------------------------


def test_progress_with_an_unfinished_and_an_errored_trial(results, sig):
    line = report.progress_line(results)
    assert "17 of 18 planned trials done (16 ok, 1 errored)" in line and "1 not finished" in line
    errored = results.errors["trial_id"].iloc[0]
    assert errored not in set(results.pairs["trial_id"])
    per_condition = sig.drop_duplicates(BY)["n_trials"]
    assert per_condition.sum() == 16


@pytest.mark.parametrize("damage", ["trials.parquet", "missing trials.parquet"])
def test_corrupt_or_missing_trials_table_is_rebuilt(fixture_dir, results, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(fixture_dir, copy)
    name = damage.split()[-1]
    if damage.startswith("missing"):
        (copy / name).unlink()
    else:
        (copy / name).write_bytes(b"not a parquet file")
    again = report.load_results(str(copy))
    for kind in ("trials", "summary", "pairs"):
        assert getattr(again, kind).shape == getattr(results, kind).shape, kind
    assert len(again.notes) == 1 and name in again.notes[0] and "rebuilt" in again.notes[0]
    assert pd.read_parquet(copy / name).shape == results.trials.shape  # rewritten intact


def test_a_trial_whose_table_cannot_be_read_is_left_out_and_named(fixture_dir, results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fixture_dir, copy)
    damaged = results.ok["trial_id"].iloc[0]
    (copy / "summary.parquet" / f"{damaged}.parquet").write_bytes(b"not a parquet file")
    again = report.load_results(str(copy))
    assert damaged not in set(again.summary["trial_id"]) and len(again.pairs) == len(results.pairs)
    assert len(again.notes) == 1 and f"summary.parquet/{damaged}.parquet cannot be read" in again.notes[0]


def test_trials_committed_after_the_last_merge_are_merged(fixture_dir, results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fixture_dir, copy)
    trials = pd.read_parquet(copy / "trials.parquet")
    trials.iloc[1:].to_parquet(copy / "trials.parquet")  # as if the driver died before merging its last commit
    again = report.load_results(str(copy))
    assert again.trials.shape == results.trials.shape and again.pairs.shape == results.pairs.shape
    assert again.notes == ["the merged tables lacked 1 committed trial(s): rebuilt from trials/"]


def test_rebuild_notes_survive_a_library_that_disabled_existing_loggers(fixture_dir, tmp_path):
    import logging

    logging.getLogger("tli.sweep.store").disabled = True  # what logging.config.dictConfig({"version": 1}) does
    logging.disable(logging.CRITICAL)  # and what some libraries do to every logger
    copy = tmp_path / "copy"
    shutil.copytree(fixture_dir, copy)
    (copy / "trials.parquet").write_bytes(b"not a parquet file")
    try:
        assert any("trials.parquet is unreadable" in note for note in report.load_results(str(copy)).notes)
    finally:
        logging.getLogger("tli.sweep.store").disabled = False
        logging.disable(logging.NOTSET)


def test_report_says_what_was_rebuilt_or_ignored(fixture_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fixture_dir, copy)
    (copy / "trials.parquet").write_bytes(b"not a parquet file")
    (copy / "sweep_config.json").write_text("{not json")
    built = report.build_report(str(copy), str(tmp_path / "out"), n_boot=100)
    assert "17 trials done" in built.progress and "the number planned is unknown" in built.progress
    notes = [line for line in (tmp_path / "out" / "report.md").read_text().splitlines() if line.startswith("Data note")]
    assert len(notes) == 2 and "trials.parquet is unreadable" in notes[0] and "rebuilt" in notes[0]
    assert "sweep_config.json is unreadable" in notes[1]


def test_trials_stored_before_the_alike_baseline_are_an_error_not_a_verdict(fixture_dir, tmp_path):
    """Per-pair tables without the `*_alike` columns (an older tli): one line saying so, not 'not specific'."""
    copy = tmp_path / "copy"
    shutil.copytree(fixture_dir, copy)
    for path in (copy / "pairs.parquet").glob("*.parquet"):
        table = pd.read_parquet(path)
        table.drop(columns=[c for c in table if "_alike" in c]).to_parquet(path)
    with pytest.raises(TliError, match="lack 8 column.*run by an older tli"):
        report.significance_table(report.load_results(str(copy)), n_boot=N_BOOT)


def test_a_sweep_whose_trials_all_failed_reports_them(tmp_path):
    root = make_results(tmp_path, {"target_layer": [1, 2], "seed": [0]}, errored=2, unfinished=0)
    built = report.build_report(str(root), str(tmp_path / "out"), n_boot=100)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "2 of 2 planned trials done (0 ok, 2 errored)" in built.progress and built.significance.empty
    assert "No ok trial yet" in text and text.count("OutOfMemoryError") == 2


def _bad_input(tmp_path, case):
    target = tmp_path / "experiment"
    if case != "missing":
        target.mkdir()
    if case == "no_trials":
        (target / "trials").mkdir()
        (target / "sweep_config.json").write_text('{"planned": 3}')
    return target


@pytest.mark.parametrize(
    "case, message", [("missing", "does not exist"), ("empty", "no trial in"), ("no_trials", "no trial in")]
)
def test_one_line_error_for_missing_or_empty_dir(tmp_path, capsys, case, message):
    assert load_ablation("aggregate").main([str(_bad_input(tmp_path, case))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aggregate.py: error: ") and message in err


@pytest.mark.parametrize(
    "flags, message",
    [(["--n-boot", "-1"], "must be >= 100"), (["--by", "target_layer,learning_rate"], "unknown --by column")],
)
def test_one_line_error_for_bad_flags(fixture_dir, tmp_path, capsys, flags, message):
    argv = [str(fixture_dir), "--out", str(tmp_path / "out"), *flags]
    argv += [] if "--n-boot" in flags else ["--n-boot", "100"]
    code = load_ablation("aggregate").main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("aggregate.py: error: ") and message in err


# --- the files ----------------------------------------------------------------------------------


def test_paper_ready_tables_and_vector_figures(built, sig):
    """LaTeX (booktabs) beside every report table, a compact significance table, PDF and SVG beside each PNG."""
    tables = sorted((built / "tables").glob("*.tex"))
    assert len(tables) >= 3 and all("\\toprule" in t.read_text() and "\\bottomrule" in t.read_text() for t in tables)
    compact = (built / "significance_compact.tex").read_text()
    assert compact.startswith("\\begin{tabular}") and "centred gap (alike) gain [95\\% CI]" in compact
    md = (built / "significance_compact.md").read_text().splitlines()
    assert len(md) == 2 + len(sig) and len(md[0].split("|")) - 2 < 20  # one row per test, few columns
    for png in (built / "figures").glob("*.png"):
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
        assert b"<svg" in png.with_suffix(".svg").read_bytes()


def test_one_format_per_column():
    """Effects to fixed decimals, p-values in one format, a column of tiny values all in scientific notation."""
    table = pd.DataFrame({"gap_p_holm": [0.000878, 0.0019, 1.85e-05], "mean_diff": [0.1, 0.00012, -0.02]})
    table["drift"] = [1e-7, 2e-6, 3e-4]
    cells = [line.split("|")[1:-1] for line in render.table_text(table).splitlines()[2:]]
    assert [[c.strip() for c in row] for row in cells] == [
        ["<0.001", "0.1000", "1.00e-07"],
        ["0.002", "0.0001", "2.00e-06"],
        ["<0.001", "-0.0200", "3.00e-04"],
    ]


def test_compact_gain_and_its_ci_in_one_format_and_p_headed_by_its_correction():
    """A gain below 0.001 beside CI bounds above it: one format for the three (not 1.29e-04 [-0.0002, 0.0015])."""
    sig = pd.DataFrame(
        {
            "set": ["trained", "control"],
            "mean_diff": [0.0421, 0.0003],
            "ci_low": [0.03, -0.0004],
            "ci_high": [0.05, 0.0006],
            "cosine_p_holm": [0.0004, 0.43],
            "gap_alike_diff": [0.000129, 2.7e-05],
            "gap_alike_ci_low": [-0.0002, -0.0006],
            "gap_alike_ci_high": [0.0015, 0.0008],
            "gap_alike_p": [0.5, 0.9],
        }
    )
    compact = render.compact_significance(sig, [])
    assert list(compact.columns) == [
        "set",
        "cosine gain [95% CI]",
        "cosine p (Holm)",
        "gap (alike) gain [95% CI]",
        "gap (alike) p",
    ]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in render.table_text(compact).splitlines()[2:]]
    assert rows == [
        ["trained", "0.0421 [0.0300, 0.0500]", "<0.001", "0.0001 [-0.0002, 0.0015]", "0.500"],
        ["control", "0.0003 [-0.0004, 0.0006]", "0.430", "0.0000 [-0.0006, 0.0008]", "0.900"],
    ]


def test_report_files_and_embedded_figures(built, sig):
    for name in ("significance.csv", "significance.md", "report.md", "report.html"):
        assert (built / name).stat().st_size > 500, name
    figures = sorted(f.name for f in (built / "figures").glob("*.png") if not f.name.startswith("training_"))
    assert figures == [
        "gain_by_layer.png",
        "gain_by_protocol.png",
        "layer_scan.png",
        "objective_drift.png",
        "retrieval_baselines.png",
        "translation_probe.png",
    ]
    assert all(f.stat().st_size > 10_000 for f in (built / "figures").glob("*.png"))
    page = (built / "report.html").read_text()
    assert (
        len(re.findall(r'<img src="data:image/png;base64,', page)) == 6 + 9 and "figures/" not in page
    )  # 9 training figures
    assert len(pd.read_csv(built / "significance.csv")) == len(sig) == 9 * 5 * 2  # conditions x sets x eval layers
    text = (built / "report.md").read_text()
    for expected in (
        "17 of 18 planned trials",
        "OutOfMemoryError",
        "Verdict: specific",
        "Verdict: not specific",
        "Verdict: no rise",
        "Selected: target_layer=3",
        "*Fixed in advance* (paper as written",
        "*Selected by validation*",
        "0.3211 -> 0.4113",
        "`hidden_states[0..31]`",
        "StanNgugi/tli_project, commit e158b76",
        "Figure skipped (t-SNE)",
        "p_at_1_chance",
        "| set ",
        "at a glance",
        "| trained cgap ",
        "% (chance ",
    ):
        assert expected in text, expected
    assert "Training check, 16 triplet trial(s)" in text


def test_rank_margin_heat_map_and_heldout_bars(rank_margin_dir, tmp_path):
    built = report.build_report(str(rank_margin_dir), str(tmp_path / "out"), n_boot=100)
    figures = {f.name for f in (tmp_path / "out" / "figures").glob("*.png") if not f.name.startswith("training_")}
    swept = {"gain_by_lora_rank.png", "gain_by_margin.png"}
    assert figures == {"layer_scan.png", "rank_margin.png", "heldout.png", *swept, *ALWAYS}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "does not contain the condition fixed in advance" in text and not built.verdicts
    assert "Nothing is selected, although 8 conditions have an objective: heldout_category vary" in text
    assert "No Table 1 here: the sweep holds no condition fixed in advance and selects none" in text
    assert "What the author's code shows" not in text  # the layer and protocol are the paper's: nothing to say
    assert "8 of 8 planned trials done" in text


def test_heldout_bars_stay_readable_for_many_categories():
    """12 categories x 2 layers: panels stacked, so the figure grows by 0.9 in per category, not 2.4 in per panel."""
    from PIL import Image

    from tli.report import figures

    rows = [
        {"set": "heldout", "layer_role": "target", "heldout_category": f"category_{i}", "target_layer": layer}
        | {
            f"{p}{m}": v
            for p in ("", "centered_gap_alike_")
            for m, v in (("diff", 0.1), ("ci_low", 0.0), ("ci_high", 0.2))
        }
        for i in range(12)
        for layer in (2, 17)
    ]
    sig = pd.DataFrame(rows).rename(columns={"diff": "mean_diff"})
    width, height = Image.open(io.BytesIO(figures.heldout(sig, ["target_layer", "heldout_category"]))).size
    assert width == round(110 * (0.9 * 12 + 2 + 1.8)) and height == 110 * 7  # 1606 x 770 px: the key on the right


def _gain_rows(conditions: list[dict], sets=("trained", "control")) -> pd.DataFrame:
    """Significance rows at the target layer: every gain 0.1 (CI 0 to 0.2), shifted by the condition's index."""
    from tli.report import figures

    gains = {f"{p}{m}": v for p in figures.GAINS for m, v in (("diff", 0.1), ("ci_low", 0), ("ci_high", 0.2))}
    rows = [
        {"set": name, "layer_role": "target"} | condition | {k: v + 0.001 * i for k, v in gains.items()}
        for i, condition in enumerate(conditions)
        for name in sets
    ]
    return pd.DataFrame(rows).rename(columns={"diff": "mean_diff"})


def test_figures_stay_readable_at_50_conditions_per_layer(monkeypatch):
    """5 ranks x 10 margins at 4 target layers (200 conditions): every figure renders with no layout warning, its
    key fits in the figure beside the panels with at most 24 entries (colour: margin, marker: rank), each of the
    50 groups has its own colour and marker, and a group's points stay within its layer's slot (none reaches a
    neighbouring layer); the figures with one position per condition (retrieval baselines, translation probe) keep
    their panels at most 12 inches wide with at most 30 labelled conditions.
    """
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tli.report import figures

    by = ["target_layer", "lora_rank", "margin"]
    grid = [
        {"target_layer": t, "lora_rank": r, "margin": m, "objective": 0.1, "objective_sd": 0.01, "drift_kl_sw": 1.0}
        for t in (1, 2, 3, 4)
        for r in (4, 8, 16, 32, 64)
        for m in np.round(np.arange(0.1, 1.01, 0.1), 1)
    ]
    sig = _gain_rows(grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tight_layout's "not applied" warning among them
        fig = figures.layer_gain_figure(sig, by)
        drawn = figures.png(fig)
        conds = pd.DataFrame(grid)
        others = [figures.objective_and_drift(conds, by), figures.gain_by_axis(sig, by, "lora_rank")]
    assert drawn.startswith(b"\x89PNG") and all(o is not None and o.startswith(b"\x89PNG") for o in others)
    renderer = FigureCanvasAgg(fig).get_renderer()
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) <= 2 * figures.MAX_KEYS + 4 and texts[0] == "margin:" and "lora_rank:" in texts
    box = legend.get_window_extent(renderer)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    panels = [ax for ax in fig.axes if ax.get_title() or ax.get_xlabel() or ax.get_ylabel()]
    assert all(ax.get_window_extent(renderer).x1 <= box.x0 for ax in panels)  # the key covers no panel
    from matplotlib.collections import PathCollection

    points = [c for c in panels[0].collections if isinstance(c, PathCollection)]  # one scatter per marker
    styles = {(i, tuple(colour)) for i, c in enumerate(points) for colour in c.get_facecolors()}
    x = np.concatenate([c.get_offsets()[:, 0] for c in points])
    assert len(points) == 5 and len(x) == 200 and len(styles) == 50  # 4 layers x 50 groups, 50 styles
    assert np.all(np.abs(x - np.round(x)) < 0.4), x  # each group within its layer's slot
    assert len(panels[0].collections) <= 8  # a handful of artists per panel, not one per group

    drawn = []
    monkeypatch.setattr(figures, "png", lambda fig: drawn.append(fig) or b"")
    retrieval = sig.assign(
        p_at_1_centered_pre=0.01, p_at_1_centered_post=0.02, orthographic_p_at_1=0.05, procrustes_p_at_1=0.03
    ).assign(p_at_1_chance=0.001)
    figures.retrieval_baselines(retrieval, by)
    probe = pd.DataFrame(
        [
            c | {"set": s, "direction": d, "accuracy_pre": 0.1, "accuracy_post": 0.2}
            for c in grid
            for s in ("trained", "control")
            for d in ("sw_en", "en_sw")
        ]
    )
    figures.translation_probe(probe, by)
    assert len(drawn) == 2
    for fig in drawn:
        assert fig.get_figwidth() <= 12 * len(fig.axes)
        for ax in fig.axes:
            assert len(ax.get_xticks()) <= figures.MAX_TICKS and "every 7th labelled" in ax.get_xlabel()


def test_tables_render_as_tabulate_lays_them_out():
    """The renderer's own layout equals tabulate's (github, html, latex_booktabs) on awkward cells and on no rows
    (where its LaTeX column spec is valid, tabulate's is empty), and a cell of several lines goes through tabulate.
    """
    table = pd.DataFrame({"set": ["a|b"], "n": [3], "p": [0.0], "mean_diff": [0.12345], "x": [np.nan]})
    text = render.table_text(table)
    assert text.splitlines()[0].startswith("| set ") and "a\\|b" in text and "<0.001" in text and "0.1235" in text
    assert "<td" in render.table_text(table, "html")
    awkward = pd.DataFrame(
        {
            "set": ["trained_x", " a|b ", 'x<y & "q"', "50% {~^$#}\\"],
            "a long header name": [1, 22, 333, -4],
            "p": [0.0, 0.5, np.nan, 1e-5],
            "ok": [True, False, True, False],
            "pairs": [["a", "b"], [], ["c"], None],
        }
    )
    for frame in (awkward, awkward.iloc[:0], table):
        for fmt in ("github", "html", "latex_booktabs"):
            header = [str(c) for c in frame.columns]
            cells = [render.column_cells(frame.iloc[:, i], c) for i, c in enumerate(header)]
            if fmt == "github":
                cells = [[cell.replace("|", "\\|") for cell in column] for column in cells]
            align = [
                "right"
                if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
                else "left"
                for c in frame.columns
            ]
            expected = pd.DataFrame(dict(zip(header, cells))).to_markdown(
                index=False, tablefmt=fmt, disable_numparse=True, colalign=align
            )
            if fmt == "latex_booktabs" and frame.empty:  # tabulate writes \begin{tabular}{}, which LaTeX refuses
                expected = expected.replace("{tabular}{}", "{tabular}{" + "l" * len(header) + "}")
            assert render.table_text(frame, fmt) == expected, (fmt, len(frame))
    multiline = pd.DataFrame({"note": ["one\ntwo"], "n": [1]})
    assert "one" in render.table_text(multiline) and "two" in render.table_text(multiline)
    page = render.page([("p", "`gap_*` and `*_all` keep *no rise* for x<y")], "t")
    assert "<code>gap_*</code> and <code>*_all</code> keep <em>no rise</em> for x&lt;y" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_html_images_load_in_headless_chromium(built, tmp_path):
    page = (built / "report.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images]; document.title = "
        "'loaded ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + ' of ' + imgs.length; });</script>"
    )
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        path.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert "<title>loaded 15 of 15</title>" in dom, dom[:300]


# --- t-SNE through the sweep side ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("save_adapters, source", [("all", "stored with the results"), ("none", "retrained")])
def test_tsne_through_trial_embeddings_on_a_tiny_model(tmp_path, tiny_llama_dir, small_pairs, save_adapters, source):
    """One real trial (no Ray) on the tiny random Llama, committed as the sweep commits it; --tsne embeds it again."""
    from tli import config as configs
    from tli.config import ModelConfig, TrainConfig
    from tli.sweep.flags import SweepConfig
    from tli.sweep.inputs import load_inputs
    from tli.sweep.settings import TrialSettings
    from tli.sweep.store import ExperimentStore
    from tli.sweep.trial import WorkerCache, pack, run_trial

    sweep = SweepConfig(
        model=ModelConfig(model=str(tiny_llama_dir), device="cpu"), pairs=str(small_pairs[0]), n_boot=100, drift=False
    )
    inputs = load_inputs(sweep)
    settings = TrialSettings(
        model=sweep.model,
        train=TrainConfig(target_layer=2, epochs=1, warmup_steps=0),
        n_boot=100,
        drift=False,
        inputs_digest=inputs.digest,
    )
    record = run_trial(settings, inputs, WorkerCache(), keep_adapter=save_adapters == "all")
    assert record.row["status"] == "ok", record.row["error"]
    store = ExperimentStore(str(tmp_path / "tiny"))
    store.commit(pack(record), save_adapters, experiment="tiny")
    store.merge()
    store.write("sweep_config.json", {"sweep": configs.to_dict(sweep), "planned": 1})
    out = tmp_path / "out"
    argv = [store.uri, "--out", str(out), "--n-boot", "100", "--tsne", "--tsne-pairs", "12", "--device", "cpu"]
    assert load_ablation("aggregate").main(argv) == 0
    assert (out / "figures" / "tsne.png").stat().st_size > 10_000
    assert source in (out / "report.md").read_text()


def test_one_report_across_experiments(tmp_path, capsys):
    """`aggregate.py A B --out DIR`: conditions labelled by experiment, trials of equal settings kept apart."""
    space = {"target_layer": [1, 2], "seed": [0]}
    first = make_results(tmp_path, space, errored=0, unfinished=0, name="layers")
    second = make_results(tmp_path, space, errored=0, unfinished=0, name="layers_again")
    out = tmp_path / "paper"
    assert load_ablation("aggregate").main([str(first), str(second), "--out", str(out), "--n-boot", "100"]) == 0
    sig = pd.read_csv(out / "significance.csv")
    assert list(sig.columns[:2]) == ["experiment", "target_layer"]
    assert set(sig["experiment"]) == {"layers", "layers_again"}
    one = pd.read_csv(first / "report" / "significance.csv") if (first / "report").exists() else None
    assert one is None  # nothing written into the experiments themselves
    per_experiment = sig.groupby("experiment").size()
    assert per_experiment["layers"] == per_experiment["layers_again"]  # same settings, two trials each kept
    assert (
        "2 of 2 planned" not in (out / "report.md").read_text() and "4 of 4 planned" in (out / "report.md").read_text()
    )
    capsys.readouterr()
    assert load_ablation("aggregate").main([str(first), str(second)]) == 2  # where would the report go?
    assert "needs --out" in capsys.readouterr().err
    assert load_ablation("aggregate").main([str(first), str(first), "--out", str(tmp_path / "x")]) == 2
    assert "two results folders are named layers" in capsys.readouterr().err


def test_author_note_is_computed_from_the_author_s_files(tmp_path):
    """The paragraph's numbers are the author's files' (checked here with pandas/scipy), and follow the files."""
    from tli.report import author

    quantitative = pd.read_csv(author.FOLDER / "quantitative_results.csv")
    trained = quantitative[quantitative["group"] == "trained"]
    t = scipy_stats.ttest_rel(trained["sim_post_tli"], trained["sim_pre_tli"]).statistic
    text = author.note()
    assert "StanNgugi/tli_project, commit e158b76" in text
    assert f"trained {trained['sim_pre_tli'].mean():.4f} -> {trained['sim_post_tli'].mean():.4f} over 623 pairs" in text
    assert f"t = {t:.2f}" in text and "t = 54.88" in text and "t = 18.45" in text and "0.99998" in text
    assert "`hidden_states[0..31]`" in text
    small = quantitative.groupby("group").head(3).assign(sim_post_tli=lambda q: q["sim_pre_tli"] + [0.1, 0.2, 0.3] * 2)
    small.to_csv(tmp_path / "quantitative_results.csv", index=False)
    shutil.copy(author.FOLDER / "layer_alignment_results.csv", tmp_path)
    assert "over 3 pairs, paired t = 3.46" in author.note(tmp_path)  # mean 0.2, SD 0.1: t = 0.2 / (0.1 / sqrt 3)
    assert author.note(tmp_path / "missing") is None
    assert author.concerns(["target_layer"]) and author.concerns(["pooling_eval"]) and not author.concerns(["margin"])


def test_a_rank_only_sweep_draws_its_axis(tmp_path):
    """One target layer, ranks swept: the rank figure is drawn (categorical positions), nothing joins layers."""
    from tli.report import figures

    folder = make_results(tmp_path, {"lora_rank": [4, 16], "seed": [0]}, errored=0, unfinished=0, name="rank")
    report.build_report(str(folder), str(tmp_path / "out"), n_boot=100)
    drawn = {f.name for f in (tmp_path / "out" / "figures").glob("*.png")}
    assert drawn == {"layer_scan.png", "gain_by_lora_rank.png", "training_01.png", "training_02.png", *ALWAYS}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Figure skipped (Gain at the target layer by target layer" in text  # the layer figure needs layers
    assert "gain_by_lora_rank.png" in text and "Replication: the condition fixed in advance" in text
    assert figures.swept_axes(["target_layer", "pooling_eval", "lora_rank"]) == ["lora_rank", "protocol"]
    assert [(r.start, r.stop) for r in figures._runs(np.array([2, 17, 18]))] == [(0, 1), (1, 3)]  # 2 and 17 apart
    assert len(set(figures.colours(12))) == 12 and len(set(figures.colours(30))) == 30


def _report_places(tmp_path) -> dict[str, str]:
    """Two experiments side by side, a user's folder with files of its own, an earlier report."""
    space = {"target_layer": [1, 2], "seed": [0]}
    first = make_results(tmp_path / "results", space, errored=0, unfinished=0, name="first")
    make_results(tmp_path / "results", space, errored=0, unfinished=0, name="second")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "main.tex").write_text("\\\\documentclass{article}")
    (tmp_path / "first-link").symlink_to(first)
    return {"results": str(tmp_path / "results"), "tmp": str(tmp_path)}


REPORT_OUTS = [  # (arguments with {placeholders}, message): one line, nothing written anywhere
    ("{results}/first --out {results}/first", "is the experiment"),
    ("{results}/first --out {tmp}/first-link", "is the experiment"),
    ("{results}/first --out {results}/first/trials", "lies inside the experiment"),
    ("{results}/first --out {results}/first/summary.parquet", "lies inside the experiment"),
    ("{results}/first --out {results}", "holds the experiment"),
    ("{results}/first {results}/second --out {results}/first/report", "lies inside the experiment"),
    ("{results}/first --out {results}/second/report", "lies inside the experiment"),
    ("{results}/first --out {tmp}/paper", "holds files but no report"),
    ("{results}/first --by target_layer,target_layer --out {tmp}/r", "'target_layer' given twice"),
    ("{results}/first --out {tmp}/r --n-boot 200", "--n-boot given twice"),  # the test adds --n-boot 100
    ("s3:// --out {tmp}/r", "no bucket"),
    ("s3:/bucket/first --out {tmp}/r", "is neither a URI"),
]


@pytest.mark.parametrize("arguments, message", REPORT_OUTS, ids=[case[0] for case in REPORT_OUTS])
def test_a_report_never_writes_into_results_or_over_other_files(arguments, message, tmp_path, capsys):
    places = _report_places(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert load_ablation("aggregate").main([*arguments.format(**places).split(), "--n-boot", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aggregate.py: error: ") and message in err, err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_a_report_goes_to_its_experiment_s_report_folder_again_and_again(tmp_path):
    places = _report_places(tmp_path)
    for _ in range(2):  # the default folder, then an earlier report replaced
        assert load_ablation("aggregate").main([f"{places['results']}/first", "--n-boot", "100"]) == 0
    assert (Path(places["results"]) / "first" / "report" / "report.md").is_file()


# --- retrieval beside the baselines, and the translation probe (issue 23) -------------------------


def test_the_retrieval_rows_carry_mcnemar_and_both_baselines(sig):
    rows = retrieval.retrieval_rows(sig, BY)
    assert {"trained", "control", "unseen"} <= set(rows["set"]) and len(rows) == len(at_target_rows(sig))
    control = rows[rows["set"] == "control"]
    assert control[["orthographic_p_at_1", "procrustes_p_at_1", "mrr_chance"]].notna().all().all()
    assert rows["p_at_1_centered_mcnemar_p_holm"].between(0, 1).all()
    assert rows[rows["set"] == "trained"]["procrustes_p_at_1"].isna().all()  # fitted there: not scored
    row = rows.iloc[0].copy()
    row[["p_at_1_centered_pre", "p_at_1_centered_post", "p_at_1_centered_mcnemar_p_holm"]] = [0.1, 0.3, 0.001]
    assert "retrieval rises" in retrieval.sentence(row, "x")
    row["p_at_1_centered_mcnemar_p_holm"] = 0.2
    assert "does not change detectably" in retrieval.sentence(row, "x")


def at_target_rows(sig):
    target = sig[sig["layer_role"].str.contains("target")]
    return target[target["set"].isin(retrieval.RETRIEVAL_SETS)]


def test_the_probe_rows_find_what_the_fixture_made(results):
    """The fixture's "pull" trials translate every trained word after TLI (a third of the words before); the
    others translate as before.
    """
    rows = retrieval.probe_rows(results, BY)
    assert set(rows["direction"]) == {"sw_en", "en_sw"} and (rows["n_trials"] >= 1).all()
    pulled = rows[(rows["pooling_eval"] == "mean_content") & (rows["set"] == "trained")]
    assert (pulled["accuracy_post"] == 1.0).all() and (pulled["accuracy_pre"] < 0.5).all()
    assert (pulled["accuracy_lost"] == 0).all() and (pulled["accuracy_gained"] > 0).all()
    others = rows[(rows["pooling_eval"] != "mean_content") | (rows["set"] != "trained")]
    assert (others["accuracy_post"] == others["accuracy_pre"]).all() and (others["accuracy_mcnemar_p"] == 1).all()


def test_the_overview_shows_the_probe_on_the_trained_words(results, sig, conds):
    """Each condition's 'probe sw→en' / 'probe en→sw' cells are its probe table's trained rows: accuracy pre → post
    and the log-probability change, marked where its t-test's p < 0.05; absent without probe rows.
    """
    probed = retrieval.probe_rows(results, BY)
    table = report.overview(sig, conds, BY, probed)
    for _, row in table.iterrows():
        mine = probed[(probed[BY] == row[BY]).all(axis=1) & (probed["set"] == "trained")].set_index("direction")
        for direction, column in (("sw_en", "probe sw→en"), ("en_sw", "probe en→sw")):
            found = mine.loc[direction]
            accuracy, shift = row[column].split(", ")
            assert accuracy == f"{found['accuracy_pre']:.1%} → {found['accuracy_post']:.1%}"
            assert shift.startswith(f"{found['logprob_diff']:+.2f}")
            assert shift.endswith((" ↑", " ↓")) == (found["logprob_p"] < 0.05)
    pulled = table[table["pooling_eval"] == "mean_content"]["probe sw→en"]
    assert pulled.str.contains("→ 100.0%").all()  # the fixture's "pull" trials translate every trained word
    assert "probe sw→en" not in report.overview(sig, conds, BY, pd.DataFrame()).columns
    text = render.markdown(sections.at_a_glance(sig, conds, BY, probed))
    assert "the translation probe on the trained words" in text and "| probe sw→en" in text


def test_the_report_has_the_retrieval_and_probe_sections_and_figures(built):
    text = (built / "report.md").read_text()
    assert "## Retrieval beside two baselines" in text and "Spelling alone (orthographic) reaches" in text
    assert "## Translation probe" in text and "McNemar exact p" in text
    for name in ("retrieval_baselines", "translation_probe"):
        assert (built / "figures" / f"{name}.png").stat().st_size > 1000


def test_a_figure_s_vector_files_are_the_same_on_every_run():
    import matplotlib.pyplot as plt

    from tli.report import figures

    def draw() -> figures.FigureFiles:
        with plt.rc_context(figures.PAPER_STYLE):
            fig, ax = plt.subplots()
            ax.plot([1, 2, 3], [0.1, 0.3, 0.2], label="gain")
            ax.legend()
            return figures.png(fig)

    first, second = draw(), draw()
    assert first.pdf == second.pdf and first.svg == second.svg  # no date, no random element ids
