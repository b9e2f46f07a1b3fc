"""Alignment metrics and paired significance tests for Swahili-English word embeddings.

Every pair is scored against one fixed retrieval pool: all Swahili and all English words of the
experiment (see `pair_metrics`), so P@1 can reach 1 when a headword has several glosses (any gloss
counts), chance is the same for every set, and set means do not depend on the set's size.

Why centre per language: hidden states of a causal LM share a large common component (the
attention sink / BOS direction dominates mean-pooled states), so raw cosines sit near 1 for
matched and mismatched pairs alike; a raw cosine near 1 says nothing about lexical alignment.
Subtracting one joint mean over both languages removes the shared part but leaves the
language-identity direction (mean(src) - mean(tgt)) in: every Swahili vector then points away
from every English vector, and matched pairs can score *below* mismatched ones. Subtracting
each language's own mean removes both, so matched-vs-mismatched compares word identity only.
`cosine_joint_centered` is kept under that explicit name for comparison.

Why a like-for-like baseline: under `mean` pooling the BOS/sink position's share of a pooled vector is
1 / (the word's token count), so even after centring a word's vector carries a component that encodes its
length; a translation and its gloss that happen to have similar lengths then score above the average
non-translation without sharing any meaning. `*_alike` compares each translation only with non-translations
alike in token count (and part of speech where the pairs label it): see `alike_baseline`.

Inputs may be numpy arrays, lists or torch tensors; all are converted to float64.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import special, stats
from statsmodels.stats.multitest import multipletests

_EPS = 1e-12  # norm floor: a zero row stays zero and has cosine 0 with everything


def _as_array(x) -> np.ndarray:
    """float64 numpy copy of an array-like or a (possibly bf16, GPU, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double()
    return np.asarray(x, dtype=np.float64)


def l2_normalize(x) -> np.ndarray:
    """x_i / max(||x_i||, eps) for each row of x [n, d]."""
    x = _as_array(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def cosine_matrix(src, tgt) -> np.ndarray:
    """[n, m] matrix of cos(src_i, tgt_j)."""
    return l2_normalize(src) @ l2_normalize(tgt).T


def center_per_language(src, tgt) -> tuple[np.ndarray, np.ndarray]:
    """(src - mean(src), tgt - mean(tgt)): each language minus its own mean vector."""
    src, tgt = _as_array(src), _as_array(tgt)
    return src - src.mean(axis=0), tgt - tgt.mean(axis=0)


def _mean_top_k(sim: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Mean of the k largest entries of `sim` along `axis` (k clipped to that axis' length)."""
    k = min(k, sim.shape[axis])
    return -np.mean(np.partition(-sim, k - 1, axis=axis).take(range(k), axis=axis), axis=axis)


PAIR_METRICS = (
    "cosine",
    "mismatched",
    "gap",
    "cosine_centered",
    "mismatched_centered",
    "centered_gap",
    "mismatched_alike",
    "gap_alike",
    "mismatched_centered_alike",
    "centered_gap_alike",
    "cosine_joint_centered",
    "hit",
    "hit_csls",
    "hit_centered",
    "chance",
    *(f"{name}{kind}" for name in ("hit5", "hit10", "rr") for kind in ("", "_csls", "_centered")),
    "chance5",
    "chance10",
    "rr_chance",
)
CHANCE_METRICS = ("chance", "chance5", "chance10", "rr_chance")  # per-pair metrics that training cannot change
RETRIEVAL = {"": "raw", "_csls": "csls", "_centered": "centred"}  # metric suffix -> PoolSimilarities matrix


def pair_metrics(
    src_pool, tgt_pool, src_index, tgt_index, gold: np.ndarray, alike: np.ndarray, k: int = 10
) -> dict[str, np.ndarray]:
    """Per-pair alignment numbers of n translation pairs, each against one fixed retrieval pool.

    src_pool [p, d] and tgt_pool [m, d] hold every Swahili and every English word of the experiment once;
    pair i is (src_pool[src_index[i]], tgt_pool[tgt_index[i]]); gold [n, m] (bool) marks every English word
    that is a correct translation of pair i's Swahili word (all its glosses); alike [n, m] (bool, from
    `alike_baseline`) marks the non-translations like pair i's English word. With c_ij = cos(s_i, e_j):

      cosine_i      c_i,t(i)                              (the paper's per-pair cosine)
      mismatched_i  mean of c_ij over the non-gold j      (the same word against non-translations)
      gap_i         cosine_i - mismatched_i
      *_centered    the same after subtracting each language's pool mean from its vectors (removes what
                    every word of a language shares: the attention sink, the language direction)
      mismatched_alike_i  mean of c_ij over the j of alike[i] (non-translations with the token count, and
                    the part of speech where labelled, of the pair's English word; see `alike_baseline`)
      gap_alike_i   cosine_i - mismatched_alike_i: what a translation gains over a non-translation of its
                    own length, so a length (or part-of-speech) similarity cannot pass for translation;
                    mismatched_centered_alike_i and centered_gap_alike_i the same after centring
      cosine_joint_centered_i  cosine after subtracting one mean of both pools (kept for comparison: it
                    leaves the language direction in)
      hit_i         1 if the nearest English word (argmax_j c_ij, lowest j on ties) is gold, else 0;
                    hit_csls_i by CSLS(s, e) = 2 cos(s, e) - r_T(s) - r_S(e) (MUSE; r_T(s): mean cosine of s
                    to its k nearest English pool words, r_S(e): of e to its k nearest Swahili pool words);
                    hit_centered_i after per-language centring
      chance_i      gold count of row i / m: the hit rate of a random pick
      rank_i        1 + the non-gold words ranked above the best-ranked gold word (similarity descending, ties
                    to the lower index, as argmax): hit_i = [rank_i = 1], hit5_i = [rank_i <= 5],
                    hit10_i = [rank_i <= 10], rr_i = 1 / rank_i (mean: MRR), each raw, `_csls` and `_centered`
      chance5_i, chance10_i, rr_chance_i   the same of a random ordering (`retrieval_chance`)

    Because the pool, not the evaluated set, supplies the candidates and the centring means, a set's mean of
    any of these does not depend on the set's size: sets of 20 and 623 pairs compare.
    """
    return PoolSimilarities.of(src_pool, tgt_pool, k).pair_metrics(src_index, tgt_index, gold, alike)


def alike_baseline(gold: np.ndarray, tgt_index, tokens, pos=None) -> np.ndarray:
    """[n, m] bool: the English words the like-for-like baseline of each of n pairs averages over.

    tokens [m]: each English pool word's token count (`tli.pooling.token_counts`); pos [m] (optional): its part
    of speech, "" where unlabelled. For pair i with English word t = tgt_index[i], among the non-gold words
    (~gold[i]), the first non-empty of
      1. those with tokens == tokens[t] and pos == pos[t]   (skipped when pos is not given or pos[t] is "")
      2. those with tokens == tokens[t]
      3. those whose token count is nearest to tokens[t] (|tokens - tokens[t]| minimal; both sides on a tie)
    A row is all False only when every pool word is a gold one (the baseline is then NaN, as `mismatched`).
    """
    gold = np.asarray(gold, dtype=bool)
    tgt_index, tokens = np.asarray(tgt_index), np.asarray(tokens, dtype=np.int64)
    if tokens.shape != (gold.shape[1],) or len(tgt_index) != len(gold):
        raise ValueError(f"tokens must be [m] = [{gold.shape[1]}] and tgt_index [n] = [{len(gold)}]")
    others = ~gold
    distance = np.abs(tokens[None, :] - tokens[tgt_index][:, None])  # [n, m]
    same_length = others & (distance == 0)
    chosen = same_length
    if pos is not None:
        pos = np.asarray(pos, dtype=object)
        own = pos[tgt_index][:, None]
        same_kind = same_length & (pos[None, :] == own) & (own != "")
        chosen = np.where(same_kind.any(axis=1, keepdims=True), same_kind, same_length)
    nearest = np.where(others, distance, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
    return np.where(chosen.any(axis=1, keepdims=True), chosen, others & (distance == nearest))


def gold_rank(sim, gold: np.ndarray) -> np.ndarray:
    """[n] 1-based rank of each row's best-ranked gold candidate when its candidates are sorted by `sim` [n, m]
    (descending; ties broken by the lower index, as np.argmax): 1 + the non-gold candidates ahead of it.
    """
    sim, gold = _as_array(sim), np.asarray(gold, dtype=bool)
    rows, columns = np.arange(len(sim)), np.arange(sim.shape[1])
    best = np.argmax(np.where(gold, sim, -np.inf), axis=1)  # [n]
    top = sim[rows, best][:, None]
    ahead = ~gold & ((sim > top) | ((sim == top) & (columns[None, :] < best[:, None])))
    return 1 + ahead.sum(axis=1)


def retrieval_metrics(rank) -> dict[str, np.ndarray]:
    """{hit, hit5, hit10, rr} of 1-based ranks [n]: [rank = 1], [rank <= 5], [rank <= 10], 1 / rank."""
    rank = np.asarray(rank, dtype=np.float64)
    hits = {"hit": rank == 1, "hit5": rank <= 5, "hit10": rank <= 10}
    return {name: hit.astype(float) for name, hit in hits.items()} | {"rr": 1.0 / rank}


def retrieval_chance(n_gold, m: int) -> dict[str, np.ndarray]:
    """{chance, chance5, chance10, rr_chance} [n] of a random ordering of m candidates, n_gold [n] of them gold:
    P(a gold word among the first k) = 1 - C(m - g, k) / C(m, k) (hypergeometric), and
    E[1 / rank of the first gold] = sum_{r=1}^{m-g+1} (1/r) C(m - r, g - 1) / C(m, g).
    """
    n_gold = np.asarray(n_gold, dtype=np.int64)
    out = {"chance": n_gold / m}
    for k in (5, 10):
        out[f"chance{k}"] = 1.0 - stats.hypergeom.pmf(0, m, n_gold, min(k, m))
    expected = {}
    for g in np.unique(n_gold):
        r = np.arange(1, m - g + 2)
        log_p = (
            special.gammaln(m - r + 1)
            - special.gammaln(g)
            - special.gammaln(m - r - g + 2)
            - (special.gammaln(m + 1) - special.gammaln(g + 1) - special.gammaln(m - g + 1))
        )  # log C(m - r, g - 1) - log C(m, g)
        expected[g] = float(np.sum(np.exp(log_p) / r))
    out["rr_chance"] = np.array([expected[g] for g in n_gold], dtype=np.float64)
    return out


def mcnemar_exact(pre, post) -> dict[str, float]:
    """Exact McNemar test of paired outcomes in [0, 1] ([n] each, e.g. a pair's hit before and after TLI).

    gained = #(post > pre), lost = #(post < pre); p = the two-sided exact binomial test of `gained` successes in
    gained + lost trials at 1/2 (`scipy.stats.binomtest`), 1 when no pair changed. On binary outcomes this is
    McNemar's exact test (statsmodels `mcnemar(exact=True)` gives the same p); on outcomes averaged over seeds it is
    the exact sign test of post - pre, the pair (not the pair x seed) the unit.
    """
    pre, post = _as_array(pre), _as_array(post)
    if pre.ndim != 1 or pre.shape != post.shape:
        raise ValueError(f"pre and post must both be [n]; got {pre.shape} and {post.shape}")
    gained, lost = int(np.sum(post > pre)), int(np.sum(post < pre))
    p = float(stats.binomtest(gained, gained + lost, 0.5).pvalue) if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "mcnemar_p": p}


@dataclass(frozen=True, eq=False)
class PoolSimilarities:
    """The pool x pool matrices `pair_metrics` reads: computed once per pool, shared by every set of pairs in it."""

    raw: np.ndarray  # [p, m] cos(s_i, e_j)
    centred: np.ndarray  # [p, m] the same after per-language centring
    csls: np.ndarray  # [p, m] 2 cos(s, e) - r_T(s) - r_S(e)
    src_joint: np.ndarray  # [p, d] Swahili vectors minus the joint mean, L2-normalised
    tgt_joint: np.ndarray  # [m, d] English vectors minus the joint mean, L2-normalised

    @classmethod
    def of(cls, src_pool, tgt_pool, k: int = 10) -> PoolSimilarities:
        src, tgt = _as_array(src_pool), _as_array(tgt_pool)
        if src.ndim != 2 or tgt.ndim != 2 or src.shape[1] != tgt.shape[1]:
            raise ValueError(f"pools must be [p, d] and [m, d]; got {src.shape} and {tgt.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        raw = cosine_matrix(src, tgt)
        joint_mean = np.concatenate([src, tgt]).mean(axis=0)
        return cls(
            raw=raw,
            centred=cosine_matrix(*center_per_language(src, tgt)),
            csls=2 * raw - _mean_top_k(raw, k, axis=1)[:, None] - _mean_top_k(raw, k, axis=0)[None, :],
            src_joint=l2_normalize(src - joint_mean),
            tgt_joint=l2_normalize(tgt - joint_mean),
        )

    def pair_metrics(self, src_index, tgt_index, gold: np.ndarray, alike: np.ndarray) -> dict[str, np.ndarray]:
        """`pair_metrics` of n pairs of this pool (see there)."""
        src_index, tgt_index, gold = np.asarray(src_index), np.asarray(tgt_index), np.asarray(gold, dtype=bool)
        alike = np.asarray(alike, dtype=bool)
        n, m = len(src_index), self.raw.shape[1]
        if gold.shape != (n, m) or len(tgt_index) != n or not gold[np.arange(n), tgt_index].all():
            raise ValueError("gold must be [n, m] and mark each pair's own translation")
        if alike.shape != (n, m) or (alike & gold).any():
            raise ValueError("alike must be [n, m] and mark non-translations only (see alike_baseline)")
        rows, raw, centred = np.arange(n), self.raw[src_index], self.centred[src_index]  # [n], [n, m], [n, m]

        def mismatched(sim, among=~gold):  # mean over `among`; NaN for a row without any (every word a gloss)
            count = among.sum(axis=1)
            total = np.where(among, sim, 0.0).sum(axis=1)
            return np.divide(total, count, out=np.full(n, np.nan), where=count > 0)

        out = {
            "cosine": raw[rows, tgt_index],
            "mismatched": mismatched(raw),
            "cosine_centered": centred[rows, tgt_index],
            "mismatched_centered": mismatched(centred),
        }
        out["gap"] = out["cosine"] - out["mismatched"]
        out["centered_gap"] = out["cosine_centered"] - out["mismatched_centered"]
        out["mismatched_alike"] = mismatched(raw, alike)
        out["mismatched_centered_alike"] = mismatched(centred, alike)
        out["gap_alike"] = out["cosine"] - out["mismatched_alike"]
        out["centered_gap_alike"] = out["cosine_centered"] - out["mismatched_centered_alike"]
        out["cosine_joint_centered"] = np.sum(self.src_joint[src_index] * self.tgt_joint[tgt_index], axis=1)
        for kind, matrix in RETRIEVAL.items():
            ranked = retrieval_metrics(gold_rank(getattr(self, matrix)[src_index], gold))
            out |= {f"{name}{kind}": values for name, values in ranked.items()}
        out |= retrieval_chance(gold.sum(axis=1), m)
        return {name: out[name] for name in PAIR_METRICS}


SET_METRICS = {  # set-level column -> the per-pair metric it averages
    "cosine_mean": "cosine",
    "cosine_mismatched": "mismatched",
    "gap": "gap",
    "cosine_centered": "cosine_centered",
    "cosine_centered_mismatched": "mismatched_centered",
    "centered_gap": "centered_gap",
    "cosine_mismatched_alike": "mismatched_alike",
    "gap_alike": "gap_alike",
    "cosine_centered_mismatched_alike": "mismatched_centered_alike",
    "centered_gap_alike": "centered_gap_alike",
    "cosine_joint_centered": "cosine_joint_centered",
    "p_at_1": "hit",
    "p_at_1_csls": "hit_csls",
    "p_at_1_centered": "hit_centered",
    "p_at_1_chance": "chance",
    **{f"p_at_{k}{kind}": f"hit{k}{kind}" for k in (5, 10) for kind in RETRIEVAL},
    **{f"mrr{kind}": f"rr{kind}" for kind in RETRIEVAL},
    "p_at_5_chance": "chance5",
    "p_at_10_chance": "chance10",
    "mrr_chance": "rr_chance",
}


def set_metrics(per_pair: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over a set's pairs of `pair_metrics` (P@1 = mean hit, P@5, P@10, MRR = mean rr), with cosine_std and
    n_pairs.
    """
    out = {column: float(np.mean(per_pair[name])) for column, name in SET_METRICS.items()}
    n = len(per_pair["cosine"])
    out["cosine_std"] = float(np.std(per_pair["cosine"], ddof=1)) if n > 1 else float("nan")
    return out | {"n_pairs": n}


def _bootstrap_ci(diff: np.ndarray, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """BCa bootstrap CI of mean(diff), resampling with np.random.default_rng(seed)."""
    result = stats.bootstrap(
        (diff,), np.mean, n_resamples=n_boot, confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed)
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_tests(
    pre, post, n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95, tests: bool = True
) -> dict[str, float]:
    """Paired comparison of post vs pre ([n] each, e.g. per-pair cosines before/after training).

    Returns n, mean_pre, mean_post, mean_diff (post - pre), ci_low/ci_high (seeded BCa bootstrap
    CI of mean_diff, `scipy.stats.bootstrap`; NaN when n_boot is 0), t/p (two-sided `scipy.stats.ttest_rel`),
    wilcoxon_p (two-sided `scipy.stats.wilcoxon`) and d_z = mean(diff) / std(diff, ddof=1).

    Degenerate inputs give NaN instead of warnings: n < 2 (or not `tests`) -> everything but n and the means is
    NaN; zero-variance differences (all equal up to rounding) -> t, p, d_z are NaN, the CI is
    [mean_diff, mean_diff], and wilcoxon_p is NaN when every difference is 0.
    """
    pre, post = _as_array(pre), _as_array(post)
    if pre.ndim != 1 or pre.shape != post.shape:
        raise ValueError(f"pre and post must both be [n]; got {pre.shape} and {post.shape}")
    if not (np.all(np.isfinite(pre)) and np.all(np.isfinite(post))):
        raise ValueError("pre and post must be finite")
    diff, n = post - pre, len(pre)
    nan = float("nan")
    out = {
        "n": n,
        "mean_pre": nan,
        "mean_post": nan,
        "mean_diff": nan,
        "ci_low": nan,
        "ci_high": nan,
        "t": nan,
        "p": nan,
        "wilcoxon_p": nan,
        "d_z": nan,
    }
    if n == 0:
        return out
    mean_diff = float(diff.mean())
    out.update(mean_pre=float(pre.mean()), mean_post=float(post.mean()), mean_diff=mean_diff)
    if n < 2 or not tests:
        return out
    if np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    if np.ptp(diff) <= 1e-12 * np.abs(diff).max():  # zero variance: t and d_z undefined
        out.update(ci_low=mean_diff, ci_high=mean_diff)
        return out
    test = stats.ttest_rel(post, pre)
    ci_low, ci_high = _bootstrap_ci(diff, n_boot, seed, confidence) if n_boot > 0 else (nan, nan)
    out.update(
        ci_low=ci_low,
        ci_high=ci_high,
        t=float(test.statistic),
        p=float(test.pvalue),
        d_z=mean_diff / float(np.std(diff, ddof=1)),
    )
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values of a 1-d array without NaN: sorted ascending, p_(i) (m - i + 1), running
    maximum, capped at 1 (statsmodels' "holm" gives the same numbers, but calls gc.collect() each time: 0.7 s
    per call in a process holding torch).
    """
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)))
    out = np.empty_like(stepped)
    out[order] = stepped
    return out


def adjust_pvalues(p, method: str) -> np.ndarray:
    """Multiple-comparison adjusted p-values ("holm": `holm`; "fdr_bh", ...: statsmodels multipletests).

    Same shape as p; NaN entries are passed through and excluded from the family.
    """
    p = _as_array(p)
    flat = p.ravel()
    adjusted = flat.copy()
    ok = ~np.isnan(flat)
    if ok.any():
        adjusted[ok] = holm(flat[ok]) if method == "holm" else multipletests(flat[ok], method=method)[1]
    return adjusted.reshape(p.shape)


# --- inference across seeds and pairs -------------------------------------------------------------


def seed_pair_bootstrap(groups: list[tuple[np.ndarray, np.ndarray]], coefs=None, n_boot: int = 10_000, seed: int = 0):
    """[n_boot] (or [n_boot, K]) bootstrap replicates of sum_g coefs[g] * mean_g, resampling seeds, then clusters.

    Each group g is (values [S, n_g] or [S, n_g, K], clusters [n_g]): the per-seed value of each of its pairs (K
    metrics at once; NaN where a seed lacks a pair) and each pair's cluster label (e.g. its Swahili headword:
    pairs sharing one are not independent). A replicate draws S seeds with replacement (the same draw for every
    group: seeds are shared), and within each group C_g clusters with replacement; mean_g* is the mean of the drawn
    seeds' values over the drawn clusters' pairs (a pair drawn w times counts w times). For values a_c + b_s its
    variance is var_pop(b) / S + var_pop(a) / C: the two levels of variation a mean over seeds and words has.
    Group g's replicates are `group_replicates(..., position=g)`: seeded, each group its own draws.
    """
    coefs = np.ones(len(groups)) if coefs is None else np.asarray(coefs, dtype=np.float64)
    replicates = [group_replicates(values, labels, n_boot, seed, g) for g, (values, labels) in enumerate(groups)]
    if len({r.shape for r in replicates}) != 1 or len({np.shape(values)[0] for values, _ in groups}) != 1:
        raise ValueError("every group must be values [S, n] or [S, n, K] with the same S and K, and clusters [n]")
    total = sum(coef * r for coef, r in zip(coefs, replicates))
    return total[:, 0] if np.ndim(groups[0][0]) == 2 else total


def group_replicates(values, labels, n_boot: int = 10_000, seed: int = 0, position: int = 0) -> np.ndarray:
    """[n_boot, K]: `seed_pair_bootstrap`'s replicates of one group's mean (values [S, n] or [S, n, K], cluster
    labels [n]): seed weights u [n_boot, S] (`seed_draws`, shared by every group) and cluster weights w [n_boot, C]
    (`cluster_draws` at `position`). With m_k the mean of the present values of metric k, and on the clusters'
    sums X[c, s, k] of present values minus m_k and counts N[c, s, k] of present values,

        mean*_bk = m_k + sum_s u_bs sum_c w_bc X[c, s, k] / sum_s u_bs sum_c w_bc N[c, s, k]

    one matrix product [n_boot, C] x [C, S x (K + K)] (the counts once when no value is NaN). The product runs in
    float32 on centred sums and exact integer weights: its rounding (about 1e-7 of a gain) lies far below the
    Monte Carlo error of a standard error from 10,000 replicates (about 0.7%). The draws depend only on the
    shapes and the seed, so they are made once and reused by every call.
    """
    values = _as_array(values)
    values = values[..., None] if values.ndim == 2 else values
    clusters = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    if values.ndim != 3 or values.shape[1] != len(clusters) or not len(clusters):
        raise ValueError("values must be [S, n] or [S, n, K] and clusters [n], n > 0")
    n_seeds, _, n_metrics = values.shape
    present = ~np.isnan(values)
    centre = np.nanmean(values.reshape(-1, n_metrics), axis=0)  # [K]
    sums = np.zeros((int(clusters.max()) + 1, n_seeds, n_metrics))
    np.add.at(sums, clusters, np.where(present, values - centre, 0.0).transpose(1, 0, 2))
    counts = np.zeros((len(sums), n_seeds, 1 if present.all() else n_metrics))
    np.add.at(counts, clusters, present.transpose(1, 0, 2)[..., : counts.shape[2]])
    table = np.concatenate([sums, counts], axis=2).reshape(len(sums), -1).astype(np.float32)  # [C, S x (K + K_n)]
    per_seed = (cluster_draws(len(sums), n_boot, seed, position) @ table).reshape(n_boot, n_seeds, -1)
    both = np.einsum("bs,bsj->bj", seed_draws(n_seeds, n_boot, seed), per_seed.astype(np.float64))
    return centre + both[:, :n_metrics] / both[:, n_metrics:]


_CHUNK = 1_000  # replicates drawn at a time (bounds the draws' index array: 8 KB x C)


@functools.lru_cache(maxsize=4)
def seed_draws(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, S] (read-only): how often each of S seeds is drawn in each replicate (S draws with replacement)."""
    return _frozen(_draws(np.random.default_rng([seed, 0]), n_seeds, n_boot).astype(np.float64))


@functools.lru_cache(maxsize=8)
def cluster_draws(n_clusters: int, n_boot: int, seed: int, position: int) -> np.ndarray:
    """[n_boot, C] float32 (read-only, integers): how often each of C clusters is drawn in each replicate (C
    draws with replacement), from the stream of (`seed`, `position`): one per group of a `seed_pair_bootstrap`.
    """
    return _frozen(_draws(np.random.default_rng([seed, position + 1]), n_clusters, n_boot).astype(np.float32))


def _frozen(array: np.ndarray) -> np.ndarray:
    """`array`, read-only (a cached value shared by every caller)."""
    array.flags.writeable = False
    return array


def _draws(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """[n_boot, n] counts of n uniform draws with replacement from n categories (multinomial(n, 1/n) rows)."""
    counts = np.empty((n_boot, n), dtype=np.min_scalar_type(n))
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        drawn = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        counts[start : start + size] = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
    return counts


def z_inference(estimate: float, se: float, confidence: float = 0.95) -> dict[str, float]:
    """Normal-approximation CI and two-sided p of an estimate with standard error `se`:
    ci = estimate -/+ z_{(1+confidence)/2} se, p = 2 (1 - Phi(|estimate| / se)). se 0 (every replicate equal):
    the CI is [estimate, estimate] and p NaN; se NaN: all NaN.
    """
    nan = float("nan")
    if not np.isfinite(se):
        return {"ci_low": nan, "ci_high": nan, "p": nan}
    if se <= 0:
        return {"ci_low": float(estimate), "ci_high": float(estimate), "p": nan}
    z = special.ndtri((1 + confidence) / 2)  # the standard normal's quantile and tail as scipy.stats.norm has them
    return {
        "ci_low": estimate - z * se,
        "ci_high": estimate + z * se,
        "p": float(2 * special.ndtr(-abs(estimate) / se)),
    }


def tost(estimate: float, se: float, margin: float) -> float:
    """Two one-sided tests (normal approximation) of equivalence |true difference| < margin: the larger of
    P(Z >= (estimate + margin) / se) and P(Z <= (estimate - margin) / se); small p: equivalent within the margin.
    NaN when se or margin is not a positive number.
    """
    if not (np.isfinite(se) and se > 0 and np.isfinite(margin) and margin > 0):
        return float("nan")
    return float(max(special.ndtr(-(estimate + margin) / se), special.ndtr((estimate - margin) / se)))


def minimum_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true effect a two-sided z-test at `alpha` detects with probability `power`:
    (z_{1-alpha/2} + z_{power}) se (2.80 se at the defaults; the negligible opposite tail ignored).
    """
    return float((special.ndtri(1 - alpha / 2) + special.ndtri(power)) * se) if np.isfinite(se) else float("nan")


def seed_pair_components(values) -> tuple[float, float, float]:
    """Method-of-moments variance components of a seeds x pairs table (values [S, n]; a pair some seed lacks is
    dropped) under the additive two-way model x_sp = mu + a_s + b_p + e_sp: (var a, var b, var e) from the mean
    squares MS_seed = n var_a + var_e, MS_pair = S var_b + var_e, MS_res = var_e; a negative estimate is 0, NaNs
    with fewer than 2 seeds or 2 whole pairs.
    """
    table, _ = _whole_pairs(values)
    n_seeds, n_pairs = table.shape
    if min(n_seeds, n_pairs) < 2:
        return float("nan"), float("nan"), float("nan")
    seed_means, pair_means, grand = table.mean(axis=1), table.mean(axis=0), table.mean()
    ms_seed = n_pairs * np.sum((seed_means - grand) ** 2) / (n_seeds - 1)
    ms_pair = n_seeds * np.sum((pair_means - grand) ** 2) / (n_pairs - 1)
    residuals = table - seed_means[:, None] - pair_means[None, :] + grand
    ms_residual = np.sum(residuals**2) / ((n_seeds - 1) * (n_pairs - 1))
    return max((ms_seed - ms_residual) / n_pairs, 0.0), max((ms_pair - ms_residual) / n_seeds, 0.0), ms_residual


def projected_se_ratio(values, seeds: int, clusters=None) -> float:
    """How the standard error of a seeds x pairs table's mean (values [S, n]) would scale with `seeds` seeds instead
    of S: SE(k) / SE(S), SE(k)^2 = var_a / k + var_b / m + var_e / (k m) by `seed_pair_components` of the table, or,
    with `clusters` [n] (the pairs' Swahili headwords), of its seeds x cluster means (m clusters: the unit that
    `seed_pair_bootstrap` draws). Near 1: the pairs, not the seeds, limit what the set can detect. Where seeds
    matter it is optimistic: the seed component rests on S - 1 degrees of freedom and is truncated at 0, and the
    bootstrap SE it scales holds only (S - 1) / S of the seed variance. 1 where nothing varies; NaN with fewer than
    2 seeds or 2 whole pairs.
    """
    table, labels = _whole_pairs(values, clusters)
    if min(table.shape) < 2:
        return float("nan")
    if np.ptp(table) == 0:
        return 1.0
    if labels is not None:
        names, index = np.unique(labels, return_inverse=True)
        sums = np.zeros((table.shape[0], len(names)))
        np.add.at(sums, (slice(None), index.ravel()), table)
        table = sums / np.bincount(index.ravel())
    var_seed, var_pair, var_residual = seed_pair_components(table)
    n_units = table.shape[1]

    def variance(k: int) -> float:
        return var_seed / k + var_pair / n_units + var_residual / (k * n_units)

    return float(np.sqrt(variance(seeds) / variance(table.shape[0])))


def _whole_pairs(values, clusters=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(values [S, n] as floats without the pairs some seed lacks, the `clusters` [n] labels of those kept)."""
    table = np.asarray(values, dtype=float)
    whole = ~np.isnan(table).any(axis=0)
    return table[:, whole], None if clusters is None else np.asarray(clusters)[whole]
