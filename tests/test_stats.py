"""tli.stats against scipy/statsmodels, plain loops and constructed examples."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.spatial.distance import cosine as cosine_distance
from statsmodels.stats.multitest import multipletests

from tli.stats import (
    adjust_pvalues,
    alignment_metrics,
    center_jointly,
    center_per_language,
    csls_precision_at_1,
    l2_normalize,
    matched_cosines,
    mismatched_cosine,
    paired_tests,
    precision_at_1,
    t_test_p_from_t,
)


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _random(n=8, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


def _cos(u, v):
    return 1.0 - cosine_distance(u, v)


# --- cosines -------------------------------------------------------------------------------------

def test_l2_normalize_unit_rows():
    src, _ = _random()
    assert np.allclose(np.linalg.norm(l2_normalize(src), axis=1), 1.0)


def test_matched_cosines_vs_scipy():
    src, tgt = _random()
    assert np.allclose(matched_cosines(src, tgt), [_cos(s, t) for s, t in zip(src, tgt)])


def test_mismatched_cosine_vs_loop():
    src, tgt = _random(n=6)
    loop = [_cos(src[i], tgt[j]) for i in range(6) for j in range(6) if i != j]
    assert mismatched_cosine(src, tgt) == pytest.approx(np.mean(loop))
    assert np.isnan(mismatched_cosine(src[:1], tgt[:1]))


def test_torch_input_accepted():
    src, tgt = _random()
    expected = matched_cosines(src, tgt)
    src_t = torch.tensor(src, dtype=torch.float32, requires_grad=True)
    assert np.allclose(matched_cosines(src_t, torch.tensor(tgt)), expected, atol=1e-6)
    assert np.allclose(matched_cosines(src_t.bfloat16(), torch.tensor(tgt).bfloat16()), expected, atol=0.05)


def test_shape_mismatch_raises():
    src, tgt = _random()
    with pytest.raises(ValueError):
        matched_cosines(src, tgt[:, :3])
    with pytest.raises(ValueError):
        alignment_metrics(src[0], tgt[0])


# --- retrieval ------------------------------------------------------------------------------------

def test_precision_at_1_identity_and_permutation():
    src, _ = _random(n=10, d=16)
    assert precision_at_1(src, src.copy()) == 1.0
    derangement = np.roll(np.arange(10), 1)  # tgt_i = src_{i-1}: every nearest neighbour is wrong
    assert precision_at_1(src, src[derangement]) == 0.0


def test_precision_at_1_duplicate_english_words():
    src, _ = _random(n=4, d=6, seed=1)
    tgt = src.copy()
    tgt[3] = tgt[2]  # kubwa: big, mkubwa: big -> row 3 retrieves row 2 (ties go to the lowest index)
    src[3] = src[2] + 1e-3
    assert precision_at_1(src, tgt) == pytest.approx(0.75)
    assert precision_at_1(src, tgt, gold=["a", "b", "big", "big"]) == 1.0
    with pytest.raises(ValueError):
        precision_at_1(src, tgt, gold=["a"])


def _csls_loop(src, tgt, k, gold=None):
    """MUSE CSLS written out with Python loops over rows and sorted lists."""
    n = len(src)
    k = min(k, n)
    sim = [[_cos(src[i], tgt[j]) for j in range(n)] for i in range(n)]
    r_t = [np.mean(sorted(sim[i], reverse=True)[:k]) for i in range(n)]
    r_s = [np.mean(sorted((sim[i][j] for i in range(n)), reverse=True)[:k]) for j in range(n)]
    labels = list(range(n)) if gold is None else list(gold)
    hits = 0
    for i in range(n):
        scores = [2 * sim[i][j] - r_t[i] - r_s[j] for j in range(n)]
        hits += labels[int(np.argmax(scores))] == labels[i]
    return hits / n


@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_csls_vs_loop(k):
    rng = np.random.default_rng(k)
    src = rng.normal(size=(12, 4))
    tgt = src + rng.normal(scale=0.8, size=(12, 4))
    tgt[:, 0] += 1.5  # a shared offset creates hubs, so CSLS and plain NN disagree on some rows
    gold = [str(i % 9) for i in range(12)]
    assert csls_precision_at_1(src, tgt, k=k) == pytest.approx(_csls_loop(src, tgt, k))
    assert csls_precision_at_1(src, tgt, k=k, gold=gold) == pytest.approx(_csls_loop(src, tgt, k, gold))


def test_csls_identity_is_perfect():
    src, _ = _random(n=10, d=16)
    assert csls_precision_at_1(src, src.copy(), k=3) == 1.0
    with pytest.raises(ValueError):
        csls_precision_at_1(src, src, k=0)


# --- centring -------------------------------------------------------------------------------------

def test_per_language_centring_zero_means():
    src, tgt = _random()
    src_c, tgt_c = center_per_language(src, tgt)
    assert np.allclose(src_c.mean(axis=0), 0) and np.allclose(tgt_c.mean(axis=0), 0)
    src_j, tgt_j = center_jointly(src, tgt)
    assert np.allclose(np.concatenate([src_j, tgt_j]).mean(axis=0), 0)
    assert not np.allclose(src_j.mean(axis=0), 0)


def test_english_shift_changes_raw_but_not_per_language_centred():
    src, tgt = _random(seed=2)
    shifted = tgt + np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    before, after = alignment_metrics(src, tgt), alignment_metrics(src, shifted)
    for key in ("cosine_centered", "cosine_centered_mismatched", "centered_gap", "p_at_1_centered"):
        assert after[key] == pytest.approx(before[key])
    assert after["cosine_mean"] != pytest.approx(before["cosine_mean"])
    assert after["cosine_joint_centered"] != pytest.approx(before["cosine_joint_centered"])


def test_joint_centring_can_rank_matched_below_mismatched():
    # Swahili mean (1, -0.5), English mean (0.5, 0.5), joint mean (0.75, 0): the language offset
    # survives joint centring. Per language: a = ±(0, -0.5), b = ±(0.5, -0.5), cos(a_i, b_i) = 1/√2.
    src = np.array([[1.0, -1.0], [1.0, 0.0]])
    tgt = np.array([[1.0, 0.0], [0.0, 1.0]])
    joint_src, joint_tgt = center_jointly(src, tgt)
    # matched: cos((.25,-1), (.25,0)) and cos((.25,0), (-.75,1)) = -0.6
    assert matched_cosines(joint_src, joint_tgt).mean() < mismatched_cosine(joint_src, joint_tgt)
    metrics = alignment_metrics(src, tgt)
    assert metrics["cosine_centered"] == pytest.approx(1 / np.sqrt(2))
    assert metrics["cosine_centered_mismatched"] == pytest.approx(-1 / np.sqrt(2))
    assert metrics["cosine_joint_centered"] == pytest.approx((0.0625 / (np.hypot(0.25, 1) * 0.25) - 0.6) / 2)


def test_alignment_metrics_keys_and_consistency():
    src, tgt = _random(n=9, seed=3)
    gold = [f"w{i % 7}" for i in range(9)]
    metrics = alignment_metrics(src, tgt, gold=gold, k=4)
    assert list(metrics) == [
        "cosine_mean", "cosine_std", "cosine_mismatched", "gap", "cosine_centered",
        "cosine_centered_mismatched", "centered_gap", "cosine_joint_centered", "p_at_1", "p_at_1_csls",
        "p_at_1_centered", "n_pairs"]
    cosines = [_cos(s, t) for s, t in zip(src, tgt)]
    assert metrics["cosine_mean"] == pytest.approx(np.mean(cosines))
    assert metrics["cosine_std"] == pytest.approx(np.std(cosines, ddof=1))
    assert metrics["gap"] == pytest.approx(metrics["cosine_mean"] - metrics["cosine_mismatched"])
    assert metrics["centered_gap"] == pytest.approx(
        metrics["cosine_centered"] - metrics["cosine_centered_mismatched"])
    assert metrics["p_at_1"] == precision_at_1(src, tgt, gold)
    assert metrics["p_at_1_csls"] == pytest.approx(_csls_loop(src, tgt, 4, gold))
    assert metrics["p_at_1_centered"] == precision_at_1(*center_per_language(src, tgt), gold)
    assert metrics["n_pairs"] == 9


# --- paired tests ---------------------------------------------------------------------------------

def _pre_post(n=40, seed=0):
    rng = np.random.default_rng(seed)
    pre = rng.normal(0.3, 0.1, size=n)
    return pre, pre + rng.normal(0.05, 0.08, size=n)


def test_paired_tests_vs_scipy():
    pre, post = _pre_post()
    result = paired_tests(pre, post, n_boot=2000)
    diff = post - pre
    t_ref = sps.ttest_rel(post, pre)
    assert result["n"] == 40
    assert result["mean_pre"] == pytest.approx(pre.mean()) and result["mean_post"] == pytest.approx(post.mean())
    assert result["mean_diff"] == pytest.approx(diff.mean())
    assert result["t"] == pytest.approx(t_ref.statistic) and result["p"] == pytest.approx(t_ref.pvalue)
    assert result["wilcoxon_p"] == pytest.approx(sps.wilcoxon(post, pre).pvalue)
    assert result["d_z"] == pytest.approx(diff.mean() / np.sqrt(np.sum((diff - diff.mean()) ** 2) / 39))
    assert result["p"] == pytest.approx(t_test_p_from_t(result["t"], 40))


def test_bootstrap_ci_reproducible_and_contains_mean():
    pre, post = _pre_post(seed=1)
    first = paired_tests(pre, post, n_boot=3000, seed=7)
    again = paired_tests(pre, post, n_boot=3000, seed=7)
    other = paired_tests(pre, post, n_boot=3000, seed=8)
    assert (first["ci_low"], first["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert (first["ci_low"], first["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert first["ci_low"] < first["mean_diff"] < first["ci_high"]
    narrow = paired_tests(pre, post, n_boot=3000, seed=7, confidence=0.5)
    assert first["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < first["ci_high"]


def test_paired_tests_degenerate_inputs_give_nan_quietly():
    one = paired_tests([0.2], [0.5])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.3)
    assert all(np.isnan(one[key]) for key in ("ci_low", "ci_high", "t", "p", "wilcoxon_p", "d_z"))
    assert np.isnan(paired_tests([], [])["mean_diff"])
    pre = np.array([0.1, 0.4, 0.7, 0.2])
    constant = paired_tests(pre, pre + 0.1)  # diffs equal up to rounding
    assert np.isnan(constant["t"]) and np.isnan(constant["p"]) and np.isnan(constant["d_z"])
    assert constant["ci_low"] == constant["ci_high"] == pytest.approx(0.1)
    assert constant["wilcoxon_p"] == pytest.approx(sps.wilcoxon(np.full(4, 0.1)).pvalue)
    same = paired_tests(pre, pre)
    assert same["mean_diff"] == 0.0 and np.isnan(same["wilcoxon_p"]) and np.isnan(same["t"])
    with pytest.raises(ValueError):
        paired_tests([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_tests([1.0, np.nan], [1.0, 2.0])


# --- multiple comparisons and p from t ------------------------------------------------------------

def _holm_by_hand(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_adjust_pvalues():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    assert np.allclose(adjust_pvalues(p, "holm"), _holm_by_hand(list(p)))
    assert np.allclose(adjust_pvalues(p, "fdr_bh"), multipletests(p, method="fdr_bh")[1])
    with_nan = np.array([0.01, np.nan, 0.04, 0.03, np.nan, 0.005, 0.2])
    out = adjust_pvalues(with_nan, "holm")
    assert np.isnan(out[[1, 4]]).all()
    assert np.allclose(out[~np.isnan(with_nan)], _holm_by_hand(list(p)))
    assert np.isnan(adjust_pvalues([np.nan, np.nan], "fdr_bh")).all()


def test_p_from_t_matches_paper_table_1():
    # two-sided p, reported in the paper to three significant figures
    assert f"{t_test_p_from_t(54.8842, 623):.2e}" == "1.33e-240"
    assert f"{t_test_p_from_t(18.4525, 63):.2e}" == "7.17e-27"
    assert t_test_p_from_t(-2.0, 30) == pytest.approx(2 * sps.t.sf(2.0, 29))
    assert t_test_p_from_t(0.0, 10) == 1.0
    assert np.isnan(t_test_p_from_t(3.0, 1))


def test_paired_tests_without_bootstrap_keep_the_tests_and_leave_the_ci_undefined():
    rng = np.random.default_rng(3)
    pre = rng.normal(size=12)
    post = pre + rng.normal(0.2, 0.1, size=12)
    full, quick = paired_tests(pre, post, n_boot=500), paired_tests(pre, post, n_boot=0)
    assert np.isnan(quick["ci_low"]) and np.isnan(quick["ci_high"])
    assert {k: quick[k] for k in ("t", "p", "d_z", "mean_diff")} == {k: full[k] for k in ("t", "p", "d_z", "mean_diff")}
