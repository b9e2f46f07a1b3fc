"""Contrastive loss for lexical injection: triplet margin with the hardest in-batch negative.

For a batch of n translation pairs with L2-normalised embeddings a_i (Swahili) and p_i (English):

    loss = 1/n * sum_i max(0, margin + max_{j != i, j not masked} a_i . p_j - a_i . p_i)

Pairs that share a Swahili or an English headword (bahari: ocean / bahari: sea) are false
negatives of each other; `false_negative_mask` marks them so the loss does not push them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_inputs(anchor: torch.Tensor, positive: torch.Tensor, margin: float, mask: torch.Tensor | None) -> None:
    """Raise ValueError unless anchor/positive are equal [n, d], margin >= 0 and mask is bool [n, n]."""
    if anchor.ndim != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"anchor and positive must both be [n, d]; got {tuple(anchor.shape)} and {tuple(positive.shape)}"
        )
    if not margin >= 0:  # also rejects NaN
        raise ValueError(f"margin must be >= 0, got {margin}")
    n = anchor.shape[0]
    if mask is not None and (mask.shape != (n, n) or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor of shape [{n}, {n}]; got {mask.dtype} {tuple(mask.shape)}")


def triplet_margin_hardest_negative(
    anchor: torch.Tensor, positive: torch.Tensor, margin: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over i of max(0, margin + max_{j != i, ~mask[i, j]} a_i . p_j - a_i . p_i); a scalar.

    anchor, positive: [n, d], rows already L2-normalised. mask: optional bool [n, n], True where
    (i, j) is a false negative to exclude; the diagonal is always excluded. A row with no negative
    left contributes 0 (the mean still divides by n). For n < 2 returns a 0 that stays attached
    to the graph of both inputs.
    """
    _check_inputs(anchor, positive, margin, mask)
    n = anchor.shape[0]
    if n < 2:
        return (anchor.sum() + positive.sum()) * 0.0
    sim = anchor @ positive.T  # [n, n], sim[i, j] = a_i . p_j
    excluded = torch.eye(n, dtype=torch.bool, device=sim.device)
    if mask is not None:
        excluded = excluded | mask.to(sim.device)
    hardest = sim.masked_fill(excluded, float("-inf")).max(dim=1).values  # [n]
    hinge = torch.relu(margin + hardest - sim.diagonal())  # [n]; -inf rows give 0
    has_negative = ~excluded.all(dim=1)  # [n]
    return torch.where(has_negative, hinge, torch.zeros_like(hinge)).mean()


def _word_ids(words: Sequence[str]) -> torch.Tensor:
    """Integer id per word, equal ids for equal words: [n] long."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(word, len(index)) for word in words], dtype=torch.long)


def false_negative_mask(swahili: Sequence[str], english: Sequence[str]) -> torch.Tensor:
    """Bool [n, n]: True at (i, j), i != j, where rows i and j share the Swahili or the English word."""
    if len(swahili) != len(english):
        raise ValueError(f"swahili and english differ in length: {len(swahili)} != {len(english)}")
    sw, en = _word_ids(swahili), _word_ids(english)
    shared = (sw[:, None] == sw[None, :]) | (en[:, None] == en[None, :])  # [n, n]
    return shared & ~torch.eye(len(swahili), dtype=torch.bool)
