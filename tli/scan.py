"""Layer scan: Swahili-English alignment of the base model at every layer, with its controls.

Per layer k (hidden_states[k]; 0 = embedding output, L = last block after the final norm) the
table holds the matched cosine beside the mismatched-pair baseline, the per-language-centred
figures and retrieval P@1 (see `tli.stats.alignment_metrics`). A raw cosine near 1 for matched
and mismatched pairs alike is the pooling artifact (BOS / first-position attention sink), not
alignment: read `gap` and `centered_gap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PreTrainedTokenizerBase  # noqa: E402

from tli import pooling, stats, surgery  # noqa: E402


@dataclass
class ScanConfig:
    """`tli scan`: the pre-TLI layer scan."""

    pooling: str = field(default="mean", metadata={"help": f"pooling mode: {', '.join(pooling.POOLING_MODES)}"})
    layers: tuple[int, ...] = field(default=(), metadata={"help": "layers to scan, e.g. 0,2,10 (default: all 0..L)"})
    batch_size: int = field(default=64, metadata={"help": "words per forward pass"})
    csls_k: int = field(default=10, metadata={"help": "neighbourhood size of CSLS retrieval"})


def embed_pairs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    layers: Sequence[int],
    mode: str,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[int, tuple]:
    """{layer: (swahili [n, d], english [n, d])} pooled embeddings of the pairs' two columns."""
    return embed_pairs_modes(model, tokenizer, pairs, layers, (mode,), batch_size, progress)[mode]


def embed_pairs_modes(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    layers: Sequence[int],
    modes: Sequence[str],
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, dict[int, tuple]]:
    """{mode: {layer: (swahili [n, d], english [n, d])}} from one forward pass per batch."""
    n = len(pairs)
    words = list(pairs["swahili"]) + list(pairs["english"])
    vectors = pooling.embed_words_modes(model, tokenizer, words, layers, modes, batch_size, progress)
    return {m: {k: (v[:n], v[n:]) for k, v in by_layer.items()} for m, by_layer in vectors.items()}


def scan_layers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    config: ScanConfig,
    progress: bool = True,
    modes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per pooling mode x layer: `layer`, `layer_name`, `pooling` and `stats.alignment_metrics` columns.

    `modes` (default: `config.pooling` alone) share one forward pass per batch.
    """
    n_layers = surgery.num_layers(model)
    layers = list(config.layers) or list(range(n_layers + 1))
    modes = tuple(modes or (config.pooling,))
    embeddings = embed_pairs_modes(model, tokenizer, pairs, layers, modes, config.batch_size, progress)
    gold = list(pairs["english"])
    rows = [
        {"layer": k, "layer_name": surgery.layer_name(k, n_layers), "pooling": mode}
        | stats.alignment_metrics(src, tgt, gold=gold, k=config.csls_k)
        for mode, by_layer in embeddings.items()
        for k, (src, tgt) in by_layer.items()
    ]
    return pd.DataFrame(rows)


def plot_scan(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Matched vs mismatched cosine per layer (raw and per-language centred): the paper's Figure 1 with its control."""
    fig, (raw, centred) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for mode, rows in table.groupby("pooling", sort=False):
        line = raw.plot(rows["layer"], rows["cosine_mean"], marker="o", ms=3, label=f"matched ({mode})")[0]
        raw.plot(rows["layer"], rows["cosine_mismatched"], ls="--", color=line.get_color(), label=f"mismatched ({mode})")
        centred.plot(rows["layer"], rows["cosine_centered"], marker="o", ms=3, color=line.get_color(), label=f"matched ({mode})")
        centred.plot(
            rows["layer"], rows["cosine_centered_mismatched"], ls="--", color=line.get_color(), label=f"mismatched ({mode})"
        )
    raw.set(title="raw cosine", xlabel="layer (hidden_states index; 0 = embeddings)", ylabel="mean cosine")
    centred.set(title="per-language centred cosine", xlabel="layer (hidden_states index; 0 = embeddings)")
    centred.axhline(0, color="grey", lw=0.5)
    raw.legend(fontsize=7)
    fig.suptitle(title or "Swahili-English alignment by layer (dashed: mismatched-pair baseline)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
