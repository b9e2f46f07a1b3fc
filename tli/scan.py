"""Layer scan: Swahili-English alignment of the base model at every layer, with its controls.

Per layer k (hidden_states[k]; 0 = embedding output, L = last block after the final norm) the
table holds the translations' cosine beside the mismatched-pair baseline, the per-language-centred
figures and retrieval P@1 (see `tli.stats.pair_metrics`). A raw cosine near 1 for translations
and mismatched pairs alike is the pooling artifact (BOS / first-position attention sink), not
alignment: read `gap` and `centered_gap`, and `gap_alike` and `centered_gap_alike`, whose baseline
holds only non-translations of the English word's token count (and part of speech): under `mean`
pooling the sink's share of a vector depends on that count, so the plain gaps can encode length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from tli import pooling, stats, surgery
from tli.config import ScanConfig, layer_name
from tli.evaluate import Lexicon


def scan_layers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    config: ScanConfig,
    progress: bool = True,
    modes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per pooling mode x layer: `layer`, `layer_name`, `pooling`, `stats.set_metrics` of every pair
    against the pool of all the file's words, and `n_candidates` (English words retrieved among).

    `modes` (default: `config.pooling` alone) share one forward pass per batch.
    """
    n_layers = surgery.num_layers(model)
    layers = list(config.layers) or list(range(n_layers + 1))
    for k in layers:
        surgery.check_layer(k, n_layers)
    modes = tuple(modes or (config.pooling,))
    lexicon = Lexicon.from_pairs(pairs)
    lexicon = lexicon.with_tokens(pooling.token_counts(tokenizer, lexicon.english))
    words = list(lexicon.swahili) + list(lexicon.english)
    vectors = pooling.embed_words(model, tokenizer, words, layers, modes, config.batch_size, progress)
    located, p = lexicon.locate(pairs), len(lexicon.swahili)
    rows = [
        {"layer": k, "layer_name": layer_name(k, n_layers), "pooling": mode}
        | stats.set_metrics(stats.pair_metrics(v[:p], v[p:], *located, k=config.csls_k))
        | {"n_candidates": len(lexicon.english)}
        for mode, by_layer in vectors.items()
        for k, v in by_layer.items()
    ]
    return pd.DataFrame(rows)


def plot_scan(table: pd.DataFrame, path: Path | BinaryIO, title: str = "") -> Path | BinaryIO:
    """`tli.report.figures.scan_figure` as a PNG: `path` is a PNG file's path, or a binary stream."""
    from tli.report.figures import scan_figure

    scan_figure(table, title).savefig(path, dpi=120, format="png")
    return path
