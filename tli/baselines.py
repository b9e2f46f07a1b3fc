"""Two baselines on TLI's own retrieval pool: what spelling alone, and a linear map on the frozen model, already give.

Both rank the same candidates as `tli.stats.pair_metrics` (every English word of the experiment, any gloss of a
Swahili word correct, ties to the lower index) and report the same P@1, P@5, P@10 and MRR:

  orthographic  sim(s, e) = 1 - lev(s, e) / max(|s|, |e|), the normalised edit distance (`rapidfuzz`'s
                Levenshtein.normalized_distance) of the spellings, casefolded, leading/trailing hyphens dropped
                ("-refu" -> "refu"): loanwords (hospitali / hospital) and shared names need no model at all.
  procrustes    sim(s, e) = cos(x_s W, y_e), x and y the frozen model's pooled vectors at the evaluation layer,
                each language minus its own pool mean and L2-normalised; W the orthogonal d x d map minimising
                ||X W - Y||_F over the training pairs (`scipy.linalg.orthogonal_procrustes`): what a map fitted
                on the same pairs gives without touching the model. Scored on every set but `trained` (the rows it
                is fitted on: NaN there); `control_all` and `heldout_all` keep rows that share a word with them.

`baseline_table` gives one row per set x evaluation layer (the orthographic numbers repeat at each layer), the
columns `{method}_{metric}` that `tli.evaluate.summary_table` puts beside the pre/post numbers.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tli import stats

METHODS = ("orthographic", "procrustes")
METRICS = {"p_at_1": "hit", "p_at_5": "hit5", "p_at_10": "hit10", "mrr": "rr"}  # column -> per-pair metric
COLUMNS = tuple(f"{method}_{metric}" for method in METHODS for metric in METRICS)


def spelling(word: str) -> str:
    """The form the edit distance compares: NFKC, casefolded, surrounding whitespace and hyphens stripped."""
    return unicodedata.normalize("NFKC", word).casefold().strip().strip("-").strip()


def orthographic_similarity(swahili: Sequence[str], english: Sequence[str]) -> np.ndarray:
    """[p, m] 1 - normalised Levenshtein distance between each Swahili and each English spelling (1: identical)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    distance = process.cdist(
        [spelling(w) for w in swahili], [spelling(w) for w in english], scorer=Levenshtein.normalized_distance
    )
    return 1.0 - np.asarray(distance, dtype=np.float64)


def procrustes_similarity(src_pool, tgt_pool, src_index, tgt_index) -> np.ndarray:
    """[p, m] cos(x_s W, y_e) with W the orthogonal map fitted on the pairs (src_index [n], tgt_index [n]) of the
    per-language-centred, L2-normalised pools src_pool [p, d] and tgt_pool [m, d].
    """
    from scipy.linalg import orthogonal_procrustes

    src, tgt = (stats.l2_normalize(x) for x in stats.center_per_language(src_pool, tgt_pool))
    rotation, _ = orthogonal_procrustes(src[np.asarray(src_index)], tgt[np.asarray(tgt_index)])
    return stats.cosine_matrix(src @ rotation, tgt)


def retrieval(sim: np.ndarray, src_index, gold: np.ndarray) -> dict[str, float]:
    """{P@1, P@5, P@10, MRR} (METRICS) of the rows src_index [n] of a pool similarity [p, m] with gold [n, m]."""
    ranked = stats.retrieval_metrics(stats.gold_rank(sim[np.asarray(src_index)], gold))
    return {column: float(np.mean(ranked[metric])) for column, metric in METRICS.items()}


def baseline_table(
    sets: dict[str, pd.DataFrame], lexicon, pre: dict[int, tuple[np.ndarray, np.ndarray]], train_rows: pd.DataFrame
) -> pd.DataFrame:
    """One row per set x layer of `pre` ({layer: (Swahili pool, English pool)} of the frozen model): `set`,
    `eval_layer` and every COLUMNS value; the Procrustes map of each layer is fitted on `train_rows`.
    `lexicon` is the experiment's `tli.evaluate.Lexicon` (the pool and its glosses).
    """
    orthographic = orthographic_similarity(lexicon.swahili, lexicon.english)
    fit_src, fit_tgt, _ = lexicon.indices(train_rows)
    mapped = {layer: procrustes_similarity(*pools, fit_src, fit_tgt) for layer, pools in pre.items()}
    located = {name: lexicon.indices(rows) for name, rows in sets.items()}
    out = []
    for name, (src_index, _, gold) in located.items():
        spelled = retrieval(orthographic, src_index, gold)
        for layer, sim in mapped.items():
            row = {"set": name, "eval_layer": layer} | {f"orthographic_{k}": v for k, v in spelled.items()}
            mapped_hits = retrieval(sim, src_index, gold) if name != "trained" else dict.fromkeys(METRICS, np.nan)
            row |= {f"procrustes_{k}": v for k, v in mapped_hits.items()}
            out.append(row)
    return pd.DataFrame(out, columns=["set", "eval_layer", *COLUMNS])
