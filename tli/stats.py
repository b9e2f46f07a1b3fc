"""Alignment metrics and paired significance tests for Swahili-English word embeddings.

Rows i of `src` (Swahili, [n, d]) and `tgt` (English, [n, d]) are a translation pair.

Why centre per language: hidden states of a causal LM share a large common component (the
attention sink / BOS direction dominates mean-pooled states), so raw cosines sit near 1 for
matched and mismatched pairs alike; a raw cosine near 1 says nothing about lexical alignment.
Subtracting one joint mean over all 2n vectors removes the shared part but leaves the
language-identity direction (mean(src) - mean(tgt)) in: every Swahili vector then points away
from every English vector, and matched pairs can score *below* mismatched ones. Subtracting
each language's own mean removes both, so matched-vs-mismatched compares word identity only.
`cosine_joint_centered` is kept under that explicit name for comparison.

Inputs may be numpy arrays, lists or torch tensors; all are converted to float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

_EPS = 1e-12  # norm floor: a zero row stays zero and has cosine 0 with everything


def _as_array(x) -> np.ndarray:
    """float64 numpy copy of an array-like or a (possibly bf16, GPU, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double()
    return np.asarray(x, dtype=np.float64)


def _as_pair(src, tgt) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 [n, d]; ValueError unless the shapes are equal and 2-D."""
    src, tgt = _as_array(src), _as_array(tgt)
    if src.ndim != 2 or src.shape != tgt.shape:
        raise ValueError(f"src and tgt must both be [n, d]; got {src.shape} and {tgt.shape}")
    return src, tgt


def l2_normalize(x) -> np.ndarray:
    """x_i / max(||x_i||, eps) for each row of x [n, d]."""
    x = _as_array(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def cosine_matrix(src, tgt) -> np.ndarray:
    """[n, m] matrix of cos(src_i, tgt_j)."""
    return l2_normalize(src) @ l2_normalize(tgt).T


def matched_cosines(src, tgt) -> np.ndarray:
    """[n] vector of cos(src_i, tgt_i)."""
    src, tgt = _as_pair(src, tgt)
    return np.sum(l2_normalize(src) * l2_normalize(tgt), axis=1)


def _off_diagonal_mean(sim: np.ndarray) -> float:
    """Mean of sim[i, j] over i != j ([n, n]); NaN for n < 2."""
    n = len(sim)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1))) if n > 1 else float("nan")


def mismatched_cosine(src, tgt) -> float:
    """Mean of cos(src_i, tgt_j) over all n(n-1) pairs i != j; NaN for n < 2."""
    return _off_diagonal_mean(cosine_matrix(*_as_pair(src, tgt)))


def center_per_language(src, tgt) -> tuple[np.ndarray, np.ndarray]:
    """(src - mean(src), tgt - mean(tgt)): each language minus its own mean vector."""
    src, tgt = _as_pair(src, tgt)
    return src - src.mean(axis=0), tgt - tgt.mean(axis=0)


def center_jointly(src, tgt) -> tuple[np.ndarray, np.ndarray]:
    """(src - m, tgt - m) with m the one mean over all 2n vectors."""
    src, tgt = _as_pair(src, tgt)
    mean = np.concatenate([src, tgt]).mean(axis=0)
    return src - mean, tgt - mean


def _labels(gold: Sequence[str] | None, n: int) -> np.ndarray:
    """Gold label per row ([n]); the row index when gold is None."""
    if gold is None:
        return np.arange(n)
    if len(gold) != n:
        raise ValueError(f"gold has {len(gold)} labels for {n} rows")
    return np.asarray(gold, dtype=object)


def _retrieval_accuracy(scores: np.ndarray, gold: Sequence[str] | None) -> float:
    """Fraction of rows i whose argmax_j scores[i, j] has the gold label of i."""
    labels = _labels(gold, len(scores))
    return float(np.mean(labels[np.argmax(scores, axis=1)] == labels))


def precision_at_1(src, tgt, gold: Sequence[str] | None = None) -> float:
    """P@1 of Swahili->English nearest-neighbour retrieval by cosine over all rows of tgt.

    Correct when the retrieved j has gold[j] == gold[i] (default: j == i); ties go to the lowest j.
    """
    src, tgt = _as_pair(src, tgt)
    return _retrieval_accuracy(cosine_matrix(src, tgt), gold)


def _mean_top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """[n] mean of the k largest entries of each row of sim [n, m]."""
    return np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def _csls(sim: np.ndarray, k: int) -> np.ndarray:
    """CSLS scores [n, n] from the cosine matrix sim [n, n], k clipped to n."""
    k = min(k, len(sim))
    return 2 * sim - _mean_top_k(sim, k)[:, None] - _mean_top_k(sim.T, k)[None, :]


def csls_precision_at_1(src, tgt, k: int = 10, gold: Sequence[str] | None = None) -> float:
    """P@1 of retrieval by CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y) (Conneau et al. 2018, MUSE).

    r_T(x): mean cosine of x to its k nearest tgt rows; r_S(y): mean cosine of y to its k nearest
    src rows; k is clipped to n.
    """
    src, tgt = _as_pair(src, tgt)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _retrieval_accuracy(_csls(cosine_matrix(src, tgt), k), gold)


def alignment_metrics(src, tgt, gold: Sequence[str] | None = None, k: int = 10) -> dict[str, float]:
    """All per-layer alignment numbers for paired rows of src, tgt [n, d] (see module docstring).

    One raw and one per-language-centred cosine matrix [n, n] serve every number.
    """
    src, tgt = _as_pair(src, tgt)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(src)
    raw = cosine_matrix(src, tgt)
    centred = cosine_matrix(*center_per_language(src, tgt))
    cosines = np.diag(raw)
    mismatched = _off_diagonal_mean(raw)
    matched_centred = float(np.diag(centred).mean())
    centred_mismatched = _off_diagonal_mean(centred)
    return {
        "cosine_mean": float(cosines.mean()),
        "cosine_std": float(np.std(cosines, ddof=1)) if n > 1 else float("nan"),
        "cosine_mismatched": mismatched,
        "gap": float(cosines.mean()) - mismatched,
        "cosine_centered": matched_centred,
        "cosine_centered_mismatched": centred_mismatched,
        "centered_gap": matched_centred - centred_mismatched,
        "cosine_joint_centered": float(matched_cosines(*center_jointly(src, tgt)).mean()),
        "p_at_1": _retrieval_accuracy(raw, gold),
        "p_at_1_csls": _retrieval_accuracy(_csls(raw, k), gold),
        "p_at_1_centered": _retrieval_accuracy(centred, gold),
        "n_pairs": n,
    }


def _bootstrap_ci(diff: np.ndarray, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """BCa bootstrap CI of mean(diff), resampling with np.random.default_rng(seed)."""
    result = stats.bootstrap((diff,), np.mean, n_resamples=n_boot, confidence_level=confidence,
                             method="BCa", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_tests(pre, post, n_boot: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, float]:
    """Paired comparison of post vs pre ([n] each, e.g. per-pair cosines before/after training).

    Returns n, mean_pre, mean_post, mean_diff (post - pre), ci_low/ci_high (seeded BCa bootstrap
    CI of mean_diff, `scipy.stats.bootstrap`; NaN when n_boot is 0), t/p (two-sided `scipy.stats.ttest_rel`),
    wilcoxon_p (two-sided `scipy.stats.wilcoxon`) and d_z = mean(diff) / std(diff, ddof=1).

    Degenerate inputs give NaN instead of warnings: n < 2 -> everything but n and the means is
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
    out = {"n": n, "mean_pre": nan, "mean_post": nan, "mean_diff": nan, "ci_low": nan,
           "ci_high": nan, "t": nan, "p": nan, "wilcoxon_p": nan, "d_z": nan}
    if n == 0:
        return out
    mean_diff = float(diff.mean())
    out.update(mean_pre=float(pre.mean()), mean_post=float(post.mean()), mean_diff=mean_diff)
    if n < 2:
        return out
    if np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    if np.ptp(diff) <= 1e-12 * np.abs(diff).max():  # zero variance: t and d_z undefined
        out.update(ci_low=mean_diff, ci_high=mean_diff)
        return out
    test = stats.ttest_rel(post, pre)
    ci_low, ci_high = _bootstrap_ci(diff, n_boot, seed, confidence) if n_boot > 0 else (nan, nan)
    out.update(ci_low=ci_low, ci_high=ci_high, t=float(test.statistic), p=float(test.pvalue),
               d_z=mean_diff / float(np.std(diff, ddof=1)))
    return out


def adjust_pvalues(p, method: str) -> np.ndarray:
    """Multiple-comparison adjusted p-values ("holm", "fdr_bh", ...: statsmodels multipletests).

    Same shape as p; NaN entries are passed through and excluded from the family.
    """
    p = _as_array(p)
    flat = p.ravel()
    adjusted = flat.copy()
    ok = ~np.isnan(flat)
    if ok.any():
        adjusted[ok] = multipletests(flat[ok], method=method)[1]
    return adjusted.reshape(p.shape)


def t_test_p_from_t(t: float, n: int) -> float:
    """Two-sided p = 2 * sf(|t|, df=n-1) of a paired t statistic with n pairs; NaN for n < 2.

    Uses the survival function, so p stays exact far below 1e-16 (t = 54.88, n = 623 -> 1.33e-240).
    """
    if n < 2:
        return float("nan")
    return float(min(1.0, 2.0 * stats.t.sf(abs(t), df=n - 1)))
