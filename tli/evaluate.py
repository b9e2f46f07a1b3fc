"""Evaluation: per-pair cosines before and after TLI, their statistics, and the controls beside them.

For each evaluation set (trained, control, held-out) and evaluation layer, the summary row holds
`stats.alignment_metrics` before (`*_pre`) and after (`*_post`) and the paired tests of the
per-pair cosines (`stats.paired_tests`: mean_pre, mean_post, mean_diff, ci_low, ci_high, t, p,
wilcoxon_p, d_z). The per-pair table (one row per set x layer x pair) holds raw and
per-language-centred cosines before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from tli import pooling, stats, surgery
from tli.scan import embed_pairs

Embeddings = dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]  # set -> layer -> (swahili, english)


@dataclass
class EvalConfig:
    """`tli evaluate`: how TLI's effect is measured."""

    pooling: str = field(default="mean_content", metadata={"help": "pooling for evaluation (the author's code: mean_content)"})
    layers: tuple[int, ...] = field(default=(), metadata={"help": "evaluation layers (default: the target layer and L)"})
    batch_size: int = field(default=64, metadata={"help": "words per forward pass"})
    n_boot: int = field(default=10_000, metadata={"help": "bootstrap resamples for the CI of the mean difference"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    csls_k: int = field(default=10, metadata={"help": "neighbourhood size of CSLS retrieval"})

    def eval_layers(self, target_layer: int, n_layers: int) -> list[int]:
        layers = list(self.layers) or sorted({target_layer, n_layers})
        for k in layers:
            surgery.check_layer(k, n_layers)
        pooling.check_pooling(self.pooling)
        return layers


def embed_sets(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[str, pd.DataFrame],
    layers: Sequence[int],
    config: EvalConfig,
) -> Embeddings:
    """Pooled embeddings of every set at every evaluation layer (inference mode)."""
    return {name: embed_pairs(model, tokenizer, rows, layers, config.pooling, config.batch_size) for name, rows in sets.items()}


def pair_table(sets: dict[str, pd.DataFrame], pre: Embeddings, post: Embeddings) -> pd.DataFrame:
    """One row per set x layer x pair: cosine_pre/post and per-language-centred cosine_centered_pre/post."""
    frames = []
    for name, rows in sets.items():
        for layer in pre[name]:
            before, after = pre[name][layer], post[name][layer]
            frame = rows[["swahili", "english", "category", "pos"]].copy()
            frame.insert(0, "eval_layer", layer)
            frame.insert(0, "set", name)
            frame["cosine_pre"] = stats.matched_cosines(*before)
            frame["cosine_post"] = stats.matched_cosines(*after)
            frame["cosine_centered_pre"] = stats.matched_cosines(*stats.center_per_language(*before))
            frame["cosine_centered_post"] = stats.matched_cosines(*stats.center_per_language(*after))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summary_table(
    sets: dict[str, pd.DataFrame], pre: Embeddings, post: Embeddings, pairs: pd.DataFrame, config: EvalConfig, n_layers: int
) -> pd.DataFrame:
    """One row per set x layer: alignment metrics pre/post and paired tests of the per-pair cosines."""
    rows = []
    for (name, layer), group in pairs.groupby(["set", "eval_layer"], sort=False):
        gold = list(sets[name]["english"])
        before = stats.alignment_metrics(*pre[name][layer], gold=gold, k=config.csls_k)
        after = stats.alignment_metrics(*post[name][layer], gold=gold, k=config.csls_k)
        tests = stats.paired_tests(group["cosine_pre"], group["cosine_post"], n_boot=config.n_boot, seed=config.seed)
        row = {"set": name, "eval_layer": layer, "layer_name": surgery.layer_name(layer, n_layers)} | tests
        row |= {f"{metric}_pre": value for metric, value in before.items() if metric != "n_pairs"}
        row |= {f"{metric}_post": value for metric, value in after.items() if metric != "n_pairs"}
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_adapter(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[str, pd.DataFrame],
    target_layer: int,
    config: EvalConfig,
    pre: Embeddings | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-pair table) of the base model (adapter disabled, or the given `pre`) against the adapted one."""
    n_layers = surgery.num_layers(peft_model)
    layers = config.eval_layers(target_layer, n_layers)
    peft_model.eval()
    if pre is None:
        with peft_model.disable_adapter():
            pre = embed_sets(peft_model, tokenizer, sets, layers, config)
    post = embed_sets(peft_model, tokenizer, sets, layers, config)
    return compare(sets, pre, post, config, n_layers)


def compare(
    sets: dict[str, pd.DataFrame], pre: Embeddings, post: Embeddings, config: EvalConfig, n_layers: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-pair table) from embeddings before and after TLI."""
    pairs = pair_table(sets, pre, post)
    return summary_table(sets, pre, post, pairs, config, n_layers), pairs
