"""tli.stats against scipy/statsmodels, plain loops and constructed examples."""

import itertools
import warnings
from math import comb

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.spatial.distance import cosine as cosine_distance
from statsmodels.stats.multitest import multipletests

from tli.stats import (
    PAIR_METRICS,
    adjust_pvalues,
    alike_baseline,
    center_per_language,
    cosine_matrix,
    l2_normalize,
    mcnemar_exact,
    minimum_detectable_effect,
    pair_metrics,
    paired_tests,
    projected_se_ratio,
    retrieval_chance,
    seed_pair_bootstrap,
    seed_pair_components,
    set_metrics,
    tost,
    z_inference,
)


def t_test_p_from_t(t: float, n: int) -> float:
    """Two-sided p = 2 * sf(|t|, df=n-1) of a paired t statistic with n pairs (an independent reference)."""
    return float("nan") if n < 2 else float(min(1.0, 2.0 * sps.t.sf(abs(t), df=n - 1)))


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


def test_l2_normalize_unit_rows_and_torch_input():
    src, _ = _random()
    assert np.allclose(np.linalg.norm(l2_normalize(src), axis=1), 1.0)
    assert np.all(l2_normalize(np.zeros((2, 3))) == 0)
    tensor = torch.tensor(src, dtype=torch.bfloat16, requires_grad=True)
    assert np.allclose(l2_normalize(tensor), l2_normalize(tensor.detach().float().numpy()))


def test_cosine_matrix_vs_scipy():
    src, tgt = _random(n=4, seed=1)
    expected = [[_cos(s, t) for t in tgt] for s in src]
    assert np.allclose(cosine_matrix(src, tgt), expected)


# --- per-pair metrics against one fixed pool ------------------------------------------------------


def _pool(p=9, m=11, d=6, seed=0):
    """A random pool (p Swahili, m English words) and 7 pairs, some Swahili words with two glosses, with the alike
    baseline of English words of 1-3 tokens and two parts of speech (one unlabelled).
    """
    rng = np.random.default_rng(seed)
    src_pool, tgt_pool = rng.normal(size=(p, d)), rng.normal(size=(m, d))
    src_index = np.array([0, 1, 1, 2, 3, 3, 4])
    tgt_index = np.array([0, 1, 2, 3, 4, 5, 6])  # Swahili 1 glosses English 1 and 2, Swahili 3 English 4 and 5
    gold = np.zeros((7, m), dtype=bool)
    for s, t in zip(src_index, tgt_index):
        gold[src_index == s, t] = True
    tokens, pos = rng.integers(1, 4, size=m), rng.choice(["noun", "verb", ""], size=m)
    return src_pool, tgt_pool, src_index, tgt_index, gold, alike_baseline(gold, tgt_index, tokens, pos)


def _alike_by_loop(gold, tgt_index, tokens, pos) -> np.ndarray:
    """alike_baseline's rule, one pair and one word at a time."""
    out = np.zeros(gold.shape, dtype=bool)
    for i, t in enumerate(tgt_index):
        others = [j for j in range(gold.shape[1]) if not gold[i, j]]
        same_length = [j for j in others if tokens[j] == tokens[t]]
        same_kind = [j for j in same_length if pos is not None and pos[t] != "" and pos[j] == pos[t]]
        nearest = min((abs(tokens[j] - tokens[t]) for j in others), default=None)
        chosen = same_kind or same_length or [j for j in others if abs(tokens[j] - tokens[t]) == nearest]
        out[i, chosen] = True
    return out


def _by_loop(src_pool, tgt_pool, src_index, tgt_index, gold, alike, k):
    """Every per-pair metric, one pair at a time, from the definitions."""
    sw_mean, en_mean = src_pool.mean(axis=0), tgt_pool.mean(axis=0)
    joint = np.concatenate([src_pool, tgt_pool]).mean(axis=0)
    r_source = [np.mean(sorted((_cos(s, e) for s in src_pool), reverse=True)[:k]) for e in tgt_pool]
    out = {name: [] for name in PAIR_METRICS}
    for i, (s, t) in enumerate(zip(src_index, tgt_index)):
        x = src_pool[s]
        raw = np.array([_cos(x, e) for e in tgt_pool])
        centred = np.array([_cos(x - sw_mean, e - en_mean) for e in tgt_pool])
        r_target = np.mean(sorted(raw, reverse=True)[:k])
        csls = 2 * raw - r_target - np.array(r_source)
        others = ~gold[i]
        out["cosine"].append(raw[t])
        out["mismatched"].append(raw[others].mean())
        out["gap"].append(raw[t] - raw[others].mean())
        out["cosine_centered"].append(centred[t])
        out["mismatched_centered"].append(centred[others].mean())
        out["centered_gap"].append(centred[t] - centred[others].mean())
        out["mismatched_alike"].append(raw[alike[i]].mean())
        out["gap_alike"].append(raw[t] - raw[alike[i]].mean())
        out["mismatched_centered_alike"].append(centred[alike[i]].mean())
        out["centered_gap_alike"].append(centred[t] - centred[alike[i]].mean())
        out["cosine_joint_centered"].append(_cos(x - joint, tgt_pool[t] - joint))
        for kind, scores in (("", raw), ("_csls", csls), ("_centered", centred)):
            out[f"hit{kind}"].append(float(gold[i, int(np.argmax(scores))]))
            order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))  # descending, ties to the lower index
            rank = 1 + next(r for r, j in enumerate(order) if gold[i, j])
            out[f"hit5{kind}"].append(float(rank <= 5))
            out[f"hit10{kind}"].append(float(rank <= 10))
            out[f"rr{kind}"].append(1 / rank)
        g, m = gold[i].sum(), len(tgt_pool)
        out["chance"].append(g / m)
        for k in (5, 10):  # 1 - P(no gold among k draws without replacement)
            out[f"chance{k}"].append(1 - comb(m - g, k) / comb(m, k))
        out["rr_chance"].append(sum(comb(m - r, g - 1) / comb(m, g) / r for r in range(1, m - g + 2)))
    return {name: np.array(values) for name, values in out.items()}


@pytest.mark.parametrize("k", [1, 3, 100])
def test_pair_metrics_match_a_loop_over_the_definitions(k):
    pool = _pool(seed=k)
    got, expected = pair_metrics(*pool, k=k), _by_loop(*pool, k)
    assert list(got) == list(PAIR_METRICS)
    for name in PAIR_METRICS:
        np.testing.assert_allclose(got[name], expected[name], err_msg=name, atol=1e-12)


def test_a_perfect_retriever_scores_one_even_for_headwords_with_several_glosses():
    # three Swahili words; word 1 glosses English 1 and 2, whose vectors differ: the nearest one is always gold
    tgt_pool = np.eye(4)
    src_pool = np.array([[1.0, 0, 0, 0], [0, 1.0, 0.9, 0], [0, 0, 0, 1.0]])
    src_index, tgt_index = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 3])
    gold = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)
    alike = alike_baseline(gold, tgt_index, [1, 1, 1, 1])
    metrics = set_metrics(pair_metrics(src_pool, tgt_pool, src_index, tgt_index, gold, alike, k=1))
    assert metrics["p_at_1"] == 1.0  # one gold string per row would cap it at 0.75 here
    assert metrics["p_at_1_chance"] == pytest.approx(np.mean([1, 2, 2, 1]) / 4)


def test_a_set_scores_its_rows_as_the_whole_pool_does_whatever_its_size():
    """One candidate pool: a subset's per-pair numbers are those of the same pairs in a larger set."""
    src_pool, tgt_pool, src_index, tgt_index, gold, alike = _pool(seed=4)
    full = pair_metrics(src_pool, tgt_pool, src_index, tgt_index, gold, alike)
    subset = [0, 3, 6]
    part = pair_metrics(src_pool, tgt_pool, src_index[subset], tgt_index[subset], gold[subset], alike[subset])
    for name in PAIR_METRICS:
        np.testing.assert_allclose(part[name], full[name][subset], err_msg=name)
    assert set_metrics(part)["centered_gap"] == pytest.approx(full["centered_gap"][subset].mean())


def test_an_english_shift_changes_raw_cosines_but_not_per_language_centred_ones():
    pool = _pool(seed=2)
    shifted = (pool[0], pool[1] + np.array([3.0, -1.0, 0.5, 2.0, 0.0, 1.0])) + pool[2:]
    before, after = pair_metrics(*pool), pair_metrics(*shifted)
    for name in ("cosine_centered", "mismatched_centered", "centered_gap", "centered_gap_alike", "hit_centered"):
        np.testing.assert_allclose(after[name], before[name])
    assert not np.allclose(after["cosine"], before["cosine"])


def test_joint_centring_can_rank_matched_below_mismatched():
    # Swahili mean (1, -0.5), English mean (0.5, 0.5), joint mean (0.75, 0): the language offset survives
    # joint centring, so matched pairs score below mismatched ones; per-language centring removes it.
    src, tgt = np.array([[1.0, -1.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    metrics = pair_metrics(src, tgt, [0, 1], [0, 1], np.eye(2, dtype=bool), ~np.eye(2, dtype=bool))
    assert metrics["cosine_joint_centered"].mean() < 0  # matched after joint centring: -0.6 and 0.24
    assert metrics["cosine_centered"] == pytest.approx([1 / np.sqrt(2)] * 2)
    assert metrics["mismatched_centered"] == pytest.approx([-1 / np.sqrt(2)] * 2)
    src_c, tgt_c = center_per_language(src, tgt)
    assert np.allclose(src_c.mean(axis=0), 0) and np.allclose(tgt_c.mean(axis=0), 0)


def test_set_metrics_are_means_of_the_pair_metrics():
    per_pair = pair_metrics(*_pool(seed=5))
    metrics = set_metrics(per_pair)
    assert metrics["cosine_mean"] == pytest.approx(per_pair["cosine"].mean())
    assert metrics["cosine_std"] == pytest.approx(np.std(per_pair["cosine"], ddof=1))
    assert metrics["gap"] == pytest.approx(metrics["cosine_mean"] - metrics["cosine_mismatched"])
    assert metrics["p_at_1"] == per_pair["hit"].mean() and metrics["n_pairs"] == 7


def test_alike_baseline_by_hand():
    """Six English words (tokens, part of speech); pairs 0-1 share Swahili word 0 (glosses English 0 and 1)."""
    tokens = np.array([2, 2, 2, 3, 2, 5])
    pos = np.array(["noun", "noun", "verb", "noun", "noun", ""], dtype=object)
    gold = np.zeros((4, 6), dtype=bool)
    gold[[0, 0, 1, 1], [0, 1, 0, 1]] = True
    gold[2, 3] = gold[3, 5] = True
    alike = alike_baseline(gold, [0, 1, 3, 5], tokens, pos)
    expected = [
        [0, 0, 0, 0, 1, 0],  # 2 tokens, noun: English 4 (0 and 1 are its glosses, 2 is a verb)
        [0, 0, 0, 0, 1, 0],
        [1, 1, 1, 0, 1, 0],  # 3 tokens, noun: no other word of 3 tokens; those of the nearest count, 2
        [0, 0, 0, 1, 0, 0],  # 5 tokens, unlabelled: the nearest count, 3
    ]
    np.testing.assert_array_equal(alike, np.array(expected, dtype=bool))
    without_pos = alike_baseline(gold, [0, 1, 3, 5], tokens)
    np.testing.assert_array_equal(without_pos[0], [0, 0, 1, 0, 1, 0])  # every 2-token non-gloss
    np.testing.assert_array_equal(alike_baseline(np.ones((1, 3), dtype=bool), [0], [1, 2, 3]), [[0, 0, 0]])


@pytest.mark.parametrize("seed", range(5))
def test_alike_baseline_matches_a_loop_over_its_rule(seed):
    rng = np.random.default_rng(seed)
    m, n = 30, 12
    tokens, pos = rng.integers(1, 7, size=m), rng.choice(["noun", "verb", "adjective", ""], size=m).astype(object)
    tgt_index = rng.choice(m, size=n, replace=False)
    gold = rng.random((n, m)) < 0.1
    gold[np.arange(n), tgt_index] = True
    for kinds in (pos, None):
        np.testing.assert_array_equal(
            alike_baseline(gold, tgt_index, tokens, kinds), _alike_by_loop(gold, tgt_index, tokens, kinds)
        )


def test_length_alone_makes_a_gap_that_the_alike_baseline_removes():
    """Vectors that depend on nothing but a word's token count (mean pooling's 1/n share of one sink vector, plus a
    word-specific direction orthogonal to everything else): translations whose lengths agree score a centred gap
    far above 0, though no word shares meaning with another; against non-translations of the same length, 0.
    """
    lengths_en = np.array([2, 2, 3, 3, 4, 4, 5, 5] * 2)  # 16 English words, lengths 2-5
    lengths_sw = lengths_en[:8]  # 8 Swahili words, each as long as its gloss (English word i)
    sink, content = np.zeros(40), np.zeros(40)
    sink[0], content[1] = 10.0, 1.0

    def vectors(lengths, offset):  # 1/n of the sink, (n-1)/n of a content direction, and a word's own direction
        own = np.eye(40)[offset : offset + len(lengths)]
        return (1 / lengths)[:, None] * sink + (1 - 1 / lengths)[:, None] * content + 0.5 * own

    sw, en = vectors(lengths_sw, 2), vectors(lengths_en, 12)
    tgt_index = np.arange(8)
    gold = np.eye(8, 16, dtype=bool)
    metrics = pair_metrics(sw, en, tgt_index, tgt_index, gold, alike_baseline(gold, tgt_index, lengths_en))
    assert metrics["centered_gap"].mean() > 0.3  # length passes for translation
    np.testing.assert_allclose(metrics["centered_gap_alike"], 0, atol=1e-12)  # ... not against words of its length
    np.testing.assert_allclose(metrics["gap_alike"], 0, atol=1e-12)


def test_the_lexicon_locates_rows_with_their_alike_baseline():
    """Parts of speech come from the pairs (one agreed label per English word, else none); token counts are given."""
    import pandas as pd

    from tli.evaluate import Lexicon

    pairs = pd.DataFrame(
        [
            ("bahari", "sea", "noun"),
            ("bahari", "ocean", "noun"),
            ("kimbia", "run", "verb"),
            ("mbio", "run", "noun"),  # 'run' labelled twice: no part of speech
            ("kubwa", "big", "unknown"),
            ("nyumba", "house", "noun"),
        ],
        columns=["swahili", "english", "pos"],
    )
    lexicon = Lexicon.from_pairs(pairs)
    assert lexicon.english == ("sea", "ocean", "run", "big", "house")
    assert lexicon.english_pos == ("noun", "noun", "", "", "noun")
    with pytest.raises(ValueError, match="token counts are unknown"):
        lexicon.locate(pairs)
    with pytest.raises(ValueError, match="4 token counts for 5"):
        lexicon.with_tokens([2, 2, 2, 2])
    located = lexicon.with_tokens([2, 3, 2, 2, 2]).locate(pairs)
    alike = located[3]
    np.testing.assert_array_equal(alike[0], [0, 0, 0, 0, 1])  # sea: 2 tokens, noun -> house (ocean is a gloss)
    np.testing.assert_array_equal(alike[1], [0, 0, 1, 1, 1])  # ocean: no other 3-token word -> the 2-token ones
    np.testing.assert_array_equal(alike[2], [1, 0, 0, 1, 1])  # run (no POS): 2-token words
    np.testing.assert_array_equal(located[2].sum(axis=1), [2, 2, 1, 1, 1, 1])  # gold: every gloss of the headword


def test_retrieval_chance_is_the_mean_over_every_ordering_of_the_candidates():
    m = 6
    for g in (1, 2, 3):
        orderings = list(itertools.permutations(range(m)))  # gold words: 0..g-1
        first = [1 + min(order.index(j) for j in range(g)) for order in orderings]
        chance = retrieval_chance(np.array([g]), m)
        assert chance["rr_chance"][0] == pytest.approx(np.mean([1 / r for r in first]))
        assert chance["chance5"][0] == pytest.approx(np.mean([r <= 5 for r in first]))
        assert chance["chance"][0] == pytest.approx(np.mean([r == 1 for r in first]))
        assert chance["chance10"][0] == 1.0  # 6 candidates: one is always among the first 10


def test_ranked_metrics_are_consistent_and_a_perfect_ranking_scores_one():
    got = pair_metrics(*_pool(seed=7))
    for kind in ("", "_csls", "_centered"):
        assert np.array_equal(got[f"hit{kind}"], (got[f"rr{kind}"] == 1).astype(float))
        assert np.all(got[f"hit{kind}"] <= got[f"hit5{kind}"]) and np.all(got[f"hit5{kind}"] <= got[f"hit10{kind}"])
    eye = np.eye(3, dtype=bool)
    perfect = set_metrics(pair_metrics(np.eye(3), np.eye(3), [0, 1, 2], [0, 1, 2], eye, ~eye))
    assert perfect["mrr"] == perfect["p_at_5"] == perfect["mrr_centered"] == 1.0
    assert perfect["mrr_chance"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_mcnemar_exact_matches_statsmodels_and_is_a_sign_test_on_averaged_outcomes():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(3)
    pre = rng.integers(0, 2, 40).astype(float)
    post = np.where(rng.random(40) < 0.3, 1 - pre, pre)
    got = mcnemar_exact(pre, post)
    table = [[np.sum((pre == a) & (post == b)) for b in (0, 1)] for a in (0, 1)]
    assert got["mcnemar_p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert (got["gained"], got["lost"]) == (table[0][1], table[1][0])
    averaged = mcnemar_exact([0, 0, 1, 1, 0], [1 / 3, 2 / 3, 1, 2 / 3, 0])  # 2 up, 1 down, 2 ties
    assert (averaged["gained"], averaged["lost"]) == (2, 1)
    assert averaged["mcnemar_p"] == pytest.approx(sps.binomtest(2, 3).pvalue)
    assert mcnemar_exact([1, 0], [1, 0])["mcnemar_p"] == 1.0  # no pair changed


def test_bad_shapes_are_errors():
    src_pool, tgt_pool, src_index, tgt_index, gold, alike = _pool()
    with pytest.raises(ValueError, match="gold"):
        pair_metrics(src_pool, tgt_pool, src_index, tgt_index, gold[:, :3], alike)
    with pytest.raises(ValueError, match="own translation"):
        pair_metrics(src_pool, tgt_pool, src_index, tgt_index, np.zeros_like(gold), alike)
    with pytest.raises(ValueError, match="pools"):
        pair_metrics(src_pool, tgt_pool[:, :2], src_index, tgt_index, gold, alike)
    with pytest.raises(ValueError, match="non-translations only"):
        pair_metrics(src_pool, tgt_pool, src_index, tgt_index, gold, alike | gold)
    with pytest.raises(ValueError, match="tokens must be"):
        alike_baseline(gold, tgt_index, [1, 2])


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
    assert np.allclose(adjust_pvalues(p, "holm"), multipletests(p, method="holm")[1])
    ties = np.array([0.01, 0.04, 0.01, 0.9, 0.04, 0.2])
    assert np.allclose(adjust_pvalues(ties, "holm"), multipletests(ties, method="holm")[1])
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


def exact_bootstrap_variance(values: np.ndarray) -> float:
    """The variance of sum(w_s v_i x_si) / (S n) over w ~ Multinomial(S, 1/S), v ~ Multinomial(n, 1/n), by hand:
    E[w w^T] = 1 1^T + I - 1 1^T / S (likewise for v), so E[theta^2] = sum(E[w w^T] * (X E[v v^T] X^T)) / (S n)^2.
    """
    n_seeds, n_pairs = values.shape

    def second_moment(k):
        return np.ones((k, k)) + np.eye(k) - np.ones((k, k)) / k

    squared = np.sum(second_moment(n_seeds) * (values @ second_moment(n_pairs) @ values.T)) / (n_seeds * n_pairs) ** 2
    return float(squared - values.mean() ** 2)


def test_seed_pair_bootstrap_matches_the_closed_form():
    values = np.random.default_rng(6).normal(size=(3, 20)) * np.array([[1.0], [1.5], [0.5]]) + np.array([[0], [1], [2]])
    replicates = seed_pair_bootstrap([(values, np.arange(20))], n_boot=40_000, seed=0)
    assert replicates.var() == pytest.approx(exact_bootstrap_variance(values), rel=0.03)


def test_seed_pair_bootstrap_variance_is_the_two_levels():
    """Values a_c + b_s: the bootstrap variance is var_pop(b) / S + var_pop(a) / C (independent draws of each)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.normal(scale=0.5, size=3)
    values = a[None, :] + b[:, None]  # [3 seeds, 40 pairs]
    replicates = seed_pair_bootstrap([(values, np.arange(40))], n_boot=40_000, seed=0)
    expected = np.var(b) / 3 + np.var(a) / 40
    assert replicates.var() == pytest.approx(expected, rel=0.03)
    assert replicates.mean() == pytest.approx(values.mean(), abs=0.01)
    assert np.array_equal(replicates, seed_pair_bootstrap([(values, np.arange(40))], n_boot=40_000, seed=0))
    one_seed = seed_pair_bootstrap([(values[:1], np.arange(40))], n_boot=40_000, seed=0)
    assert one_seed.var() == pytest.approx(np.var(a) / 40, rel=0.03)  # one seed: pairs only, the plain bootstrap


def test_seed_pair_bootstrap_clusters_pairs_that_share_a_headword():
    """Each pair duplicated under one headword: clustered, the variance is the undoubled one; unclustered, half."""
    a = np.random.default_rng(2).normal(size=30)
    doubled = np.repeat(a, 2)[None, :]
    clustered = seed_pair_bootstrap([(doubled, np.repeat(np.arange(30), 2))], n_boot=40_000, seed=0)
    naive = seed_pair_bootstrap([(doubled, np.arange(60))], n_boot=40_000, seed=0)
    assert clustered.var() == pytest.approx(np.var(a) / 30, rel=0.03)
    assert naive.var() == pytest.approx(np.var(a) / 60, rel=0.03)


def test_seed_pair_bootstrap_difference_shares_the_seed_draw():
    """Two sets shifted by the same seed effect: their difference carries no seed variance."""
    rng = np.random.default_rng(3)
    b, a1, a2 = rng.normal(size=4), rng.normal(size=25), rng.normal(size=35)
    groups = [(a1[None, :] + b[:, None], np.arange(25)), (a2[None, :] + b[:, None], np.arange(35))]
    difference = seed_pair_bootstrap(groups, [1.0, -1.0], n_boot=40_000, seed=0)
    assert difference.mean() == pytest.approx(a1.mean() - a2.mean(), abs=0.02)
    assert difference.var() == pytest.approx(np.var(a1) / 25 + np.var(a2) / 35, rel=0.03)
    with_nan = groups[0][0].copy()
    with_nan[0, 0] = np.nan  # a pair one seed lacks: averaged over the seeds that have it
    assert np.isfinite(seed_pair_bootstrap([(with_nan, np.arange(25))], n_boot=100)).all()
    with pytest.raises(ValueError):
        seed_pair_bootstrap([(groups[0][0], np.arange(24))], n_boot=10)
    stacked = np.stack([groups[0][0], 2 * groups[0][0]], axis=-1)  # K metrics at once: the same draws for each
    both = seed_pair_bootstrap([(stacked, np.arange(25))], n_boot=500, seed=5)
    assert both.shape == (500, 2) and np.allclose(both[:, 1], 2 * both[:, 0])
    assert np.allclose(both[:, 0], seed_pair_bootstrap([(groups[0][0], np.arange(25))], n_boot=500, seed=5))


def test_group_replicates_match_a_float64_computation_with_the_same_draws():
    """The float32 product on centred cluster sums gives each replicate within 1e-5 of the SE (a 10,000-replicate
    SE's own Monte Carlo error is about 0.7%), the weights being the cached draws, reused by a second call.
    """
    from tli import stats as tli_stats

    rng = np.random.default_rng(7)
    values = 0.4 + 0.05 * rng.normal(size=(3, 1_500, 2)) + 0.02 * rng.normal(size=(3, 1, 1))
    values[1, 3, 0] = np.nan  # a pair one seed lacks
    labels = rng.integers(0, 1_300, size=1_500)
    replicates = tli_stats.group_replicates(values, labels, n_boot=2_000, seed=3, position=1)
    seeds = tli_stats.seed_draws(3, 2_000, 3)
    clusters = tli_stats.cluster_draws(len(np.unique(labels)), 2_000, 3, 1).astype(np.float64)
    pair_weights = clusters[:, np.unique(labels, return_inverse=True)[1]]  # [B, n]
    present = ~np.isnan(values)
    numerator = np.einsum("bs,bn,snk->bk", seeds, pair_weights, np.where(present, values, 0.0))
    expected = numerator / np.einsum("bs,bn,snk->bk", seeds, pair_weights, present.astype(float))
    assert np.abs(replicates - expected).max() < 1e-5 * expected.std(axis=0).min()
    assert (
        tli_stats.cluster_draws.cache_info().hits >= 1 and not tli_stats.cluster_draws(1_300, 10, 0, 0).flags.writeable
    )
    assert (clusters.sum(axis=1) == clusters.shape[1]).all()  # C draws with replacement per replicate


def test_z_inference_tost_and_mde_match_statsmodels():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.weightstats import DescrStatsW, ztest, ztost

    x = np.random.default_rng(4).normal(0.05, 0.3, size=50)
    se = x.std(ddof=1) / np.sqrt(len(x))
    found = z_inference(x.mean(), se)
    low, high = DescrStatsW(x).zconfint_mean(alpha=0.05)
    assert (found["ci_low"], found["ci_high"]) == pytest.approx((low, high), rel=1e-12)
    assert found["p"] == pytest.approx(ztest(x)[1], rel=1e-12)
    assert tost(x.mean(), se, 0.1) == pytest.approx(ztost(x, -0.1, 0.1)[0], rel=1e-12)
    effect = NormalIndPower().solve_power(nobs1=len(x), alpha=0.05, power=0.8, ratio=0, alternative="two-sided")
    assert minimum_detectable_effect(se) == pytest.approx(effect * x.std(ddof=1), rel=1e-3)  # one tail ignored
    assert minimum_detectable_effect(1.0) == pytest.approx(sps.norm.ppf(0.975) + sps.norm.ppf(0.8))
    assert z_inference(0.1, 0.0) == pytest.approx({"ci_low": 0.1, "ci_high": 0.1, "p": np.nan}, nan_ok=True)
    assert np.isnan(tost(0.1, 0.1, 0.0))


def test_seed_pair_components_match_statsmodels_two_way_anova():
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(7)
    values = rng.normal(size=(4, 1)) + rng.normal(size=(1, 30)) * 2 + rng.normal(size=(4, 30)) * 0.5
    long = pd.DataFrame({"x": values.ravel(), "seed": np.repeat(np.arange(4), 30), "pair": np.tile(np.arange(30), 4)})
    table = anova_lm(smf.ols("x ~ C(seed) + C(pair)", long).fit())
    mean_square = table["sum_sq"] / table["df"]
    ms_seed, ms_pair, ms_residual = mean_square["C(seed)"], mean_square["C(pair)"], mean_square["Residual"]
    expected = ((ms_seed - ms_residual) / 30, (ms_pair - ms_residual) / 4, ms_residual)
    assert seed_pair_components(values) == pytest.approx(expected, rel=1e-10)
    with_gap = np.column_stack([values, [np.nan, 1.0, 2.0, 3.0]])  # a pair one seed lacks: dropped
    assert seed_pair_components(with_gap) == pytest.approx(expected, rel=1e-10)


def test_projected_se_ratio_by_hand_and_known_invariants():
    seeds_only = np.arange(3.0)[:, None] + np.zeros((3, 50))  # every pair moves with its seed alone
    assert projected_se_ratio(seeds_only, 10) == pytest.approx(np.sqrt(3 / 10))
    pairs_only = np.zeros((3, 1)) + np.linspace(-1, 1, 50)[None, :]  # seeds change nothing: more cannot help
    assert projected_se_ratio(pairs_only, 10) == pytest.approx(1.0)
    assert projected_se_ratio(pairs_only, 3) == pytest.approx(1.0)
    # components (var a, var b, var e) = (0.5, 2, 1) by construction: an exactly additive table plus a residual
    # with known mean square, so SE(10) / SE(3) = sqrt((0.5/10 + 2/n + 1/(10n)) / (0.5/3 + 2/n + 1/(3n))), n = 40
    rng = np.random.default_rng(0)
    a, b, e = rng.normal(size=3), rng.normal(size=40), rng.normal(size=(3, 40))
    a = (a - a.mean()) / a.std(ddof=1)
    b = (b - b.mean()) / b.std(ddof=1)
    e = e - e.mean(axis=1, keepdims=True) - e.mean(axis=0, keepdims=True) + e.mean()
    e /= np.sqrt(np.sum(e**2) / (2 * 39))
    table = np.sqrt(0.5 + 1 / 40) * a[:, None] + np.sqrt(2 + 1 / 3) * b[None, :] + e
    assert seed_pair_components(table) == pytest.approx((0.5, 2.0, 1.0), rel=1e-9)
    by_hand = np.sqrt((0.5 / 10 + 2 / 40 + 1 / 400) / (0.5 / 3 + 2 / 40 + 1 / 120))
    assert projected_se_ratio(table, 10) == pytest.approx(by_hand, rel=1e-9)
    assert np.isnan(projected_se_ratio(np.ones((1, 5)), 10)) and np.isnan(seed_pair_components(np.ones((1, 5)))[0])
    assert projected_se_ratio(np.full((3, 5), 0.1), 10) == 1.0  # nothing varies: more seeds change nothing
    assert projected_se_ratio(table, 3) == pytest.approx(1.0) and projected_se_ratio(table, 12) < by_hand


def test_seed_pair_components_truncate_at_zero_and_more_seeds_than_asked_widen():
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(3, 40))
    flat = noise - noise.mean(axis=1, keepdims=True)  # seed means equal: MS_seed = 0 < MS_res
    assert seed_pair_components(flat)[0] == 0.0
    seeded = rng.normal(size=(12, 1)) + rng.normal(size=(12, 40))
    assert projected_se_ratio(seeded, 10) > 1  # 12 seeds projected down to 10: a larger SE


def test_projected_se_ratio_with_clusters_is_that_of_the_cluster_means():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(3, 1)) * 0.3 + rng.normal(size=(3, 12))
    clusters = np.array(list("aabbbcddeeff"))
    means = np.column_stack([values[:, clusters == name].mean(axis=1) for name in np.unique(clusters)])
    assert projected_se_ratio(values, 10, clusters) == pytest.approx(projected_se_ratio(means, 10), rel=1e-12)
    values[0, 2] = np.nan  # a pair one seed lacks is dropped before the clusters are averaged
    kept = np.delete(np.arange(12), 2)
    means = np.column_stack(
        [values[:, kept][:, clusters[kept] == name].mean(axis=1) for name in np.unique(clusters[kept])]
    )
    assert projected_se_ratio(values, 10, clusters) == pytest.approx(projected_se_ratio(means, 10), rel=1e-12)
