"""Word embeddings from hidden states: tokenisation, pooling protocols, batched extraction.

Pooling modes (weights over the positions of one word, [batch, pos]):
  mean            every attended token, special tokens included (the paper's scan and training)
  mean_content    the tokens the tokenizer added (its special-tokens mask: BOS/EOS) excluded; the author's
                  evaluation drops the ids of BOS, EOS and pad wherever they occur: the same on the
                  paper's words for both embedded models, not for every tokenizer or word
  mean_skip_first position 0 excluded, whatever it is (the attention-sink control); a word of a
                  single token keeps that token (there is nothing else to pool)
  last            the last content (non-special) token
Padding is on the right, so position ids and causal attention of real tokens do not depend on
the batch: batched and one-at-a-time results agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import BatchEncoding, PreTrainedTokenizerBase

from tli import surgery
from tli.config import POOLING_MODES
from tli.errors import TliError


def check_pooling(mode: str) -> None:
    if mode not in POOLING_MODES:
        raise TliError(f"unknown pooling {mode!r}: use one of {', '.join(POOLING_MODES)}")


def tokenize(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> BatchEncoding:
    """input_ids, attention_mask and special_tokens_mask, [batch, pos], padded on the right."""
    tokenizer.padding_side = "right"
    return tokenizer(
        list(words), add_special_tokens=True, padding=True, return_tensors="pt", return_special_tokens_mask=True
    )


def token_counts(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> np.ndarray:
    """[n] int: the tokens of each word tokenised alone, special tokens included (the positions `mean` pools).

    Under `mean` pooling the first position's share of a word's vector is 1 / this count: the like-for-like
    baseline (`tli.stats.alike_baseline`) compares words of equal count.
    """
    return np.array([len(ids) for ids in tokenizer(list(words), add_special_tokens=True)["input_ids"]], dtype=np.int64)


def pooling_weights(attention_mask: torch.Tensor, special_tokens_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, pos] float weights, each row summing to 1, selecting the positions `mode` pools."""
    check_pooling(mode)
    attended = attention_mask.bool()
    content = attended & ~special_tokens_mask.bool()
    if mode == "mean":
        keep = attended
    elif mode == "mean_content":
        keep = content
    elif mode == "mean_skip_first":
        keep = attended.clone()
        keep[:, 0] &= attended.sum(dim=1) == 1  # a single-token word keeps its only token
    else:  # last
        positions = torch.arange(content.shape[1], device=content.device)
        last = torch.where(content, positions, -1).max(dim=1).values
        keep = positions[None, :] == last[:, None]
    counts = keep.sum(dim=1, keepdim=True)
    if (counts == 0).any():
        raise TliError(f"pooling {mode!r} leaves no token for some word (a word made only of special tokens?)")
    return keep.float() / counts


def pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over positions: [batch, pos, d] x [batch, pos] -> [batch, d], in float32."""
    return torch.einsum("bpd,bp->bd", hidden.float(), weights.to(hidden.device))


def pooled(
    model: nn.Module, encoded: BatchEncoding, layers: Sequence[int], modes: Sequence[str], truncate: bool = True
) -> dict[str, dict[int, torch.Tensor]]:
    """{mode: {layer: [batch, d]}}: one forward pass of a tokenised batch, pooled under each mode (differentiable)."""
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded["attention_mask"].to(device)
    weights = {m: pooling_weights(encoded["attention_mask"], encoded["special_tokens_mask"], m) for m in modes}
    states = surgery.hidden_states(model, input_ids, attention_mask, layers, truncate=truncate)
    return {m: {k: pool(h, weights[m]) for k, h in states.items()} for m in modes}


def embed_words(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    words: Sequence[str],
    layers: Sequence[int],
    modes: Sequence[str],
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, dict[int, np.ndarray]]:
    """{mode: {layer: [n_words, d]}} pooled embeddings, in the order of `words` (inference mode).

    Words are sorted by token length into batches (less padding), one forward pass per batch
    returns every requested layer under every pooling mode, and only the pooled vectors are kept.
    """
    for mode in modes:
        check_pooling(mode)
    order = np.argsort(token_counts(tokenizer, words), kind="stable")
    chunks: dict[tuple[str, int], list[np.ndarray]] = {(m, k): [] for m in modes for k in layers}
    starts = range(0, len(words), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress, leave=False):
            batch = [words[i] for i in order[start : start + batch_size]]
            for mode, vectors in pooled(model, tokenize(tokenizer, batch), layers, modes).items():
                for k, pooled_vectors in vectors.items():
                    chunks[mode, k].append(pooled_vectors.cpu().numpy())
    inverse = np.argsort(order, kind="stable")
    return {m: {k: np.concatenate(chunks[m, k])[inverse] for k in layers} for m in modes}
