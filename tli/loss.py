"""Contrastive losses for lexical injection, and what a batch of them says about training.

For a batch of n translation pairs with L2-normalised embeddings a_i (Swahili) and p_i (English):

    triplet (the paper's)  1/n * sum_i max(0, margin + max_{j != i, j not masked} a_i . p_j - a_i . p_i)
    InfoNCE (symmetric)    1/2 * (CE(S / t, I) + CE(S^T / t, I)),  S[i, j] = a_i . p_j, masked entries -inf

`batch_dynamics` reads one batch's similarities as the training log records them.

Pairs that share a Swahili or an English headword (bahari: ocean / bahari: sea) are false
negatives of each other; `false_negative_mask` marks them so the loss does not push them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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
    excluded = _excluded(n, mask, sim.device)
    hardest, has_negative = _hardest(sim, excluded)
    hinge = torch.relu(margin + hardest - sim.diagonal())  # [n]; -inf rows give 0
    return torch.where(has_negative, hinge, torch.zeros_like(hinge)).mean()


def _excluded(n: int, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Bool [n, n]: the diagonal, and the masked false negatives."""
    excluded = torch.eye(n, dtype=torch.bool, device=device)
    return excluded | mask.to(device) if mask is not None else excluded


def _hardest(sim: torch.Tensor, excluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max_{j not excluded} sim[i, j] per row, -inf for a row with no negative; which rows have one): [n], [n]."""
    return sim.masked_fill(excluded, float("-inf")).max(dim=1).values, ~excluded.all(dim=1)


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


def info_nce(
    anchor: torch.Tensor, positive: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives; a scalar.

    With S[i, j] = a_i . p_j / temperature and masked (false-negative) entries set to -inf,
    loss = 1/(2n) * sum_i [(log sum_j exp S[i, j] - S[i, i]) + (log sum_j exp S[j, i] - S[i, i])]:
    each Swahili word picks its translation among the batch's English words and each English word its
    translation among the Swahili ones. anchor, positive: [n, d], rows L2-normalised; mask: optional bool
    [n, n] (its diagonal is ignored). For n < 2 returns an attached 0, as the triplet loss does.
    """
    _check_inputs(anchor, positive, 0.0, mask)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = anchor.shape[0]
    if n < 2:
        return (anchor.sum() + positive.sum()) * 0.0
    logits = anchor @ positive.T / temperature  # [n, n]
    if mask is not None:
        off_diagonal = mask.to(logits.device) & ~torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    target = torch.arange(n, device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _mean(values: torch.Tensor) -> float:
    return values.double().mean().item() if values.numel() else float("nan")


def _similarities(anchor: torch.Tensor, positive: torch.Tensor, excluded: torch.Tensor) -> dict[str, float]:
    """Mean a_i . p_i, mean hardest negative max_{j not excluded} a_i . p_j (rows with one) and mean negative."""
    sim = anchor @ positive.T  # [n, n]
    hardest, has_negative = _hardest(sim, excluded)
    return {
        "positive": _mean(sim.diagonal()),
        "hardest_negative": _mean(hardest[has_negative]),
        "negatives": _mean(sim[~excluded]),
    }


@torch.no_grad()
def batch_dynamics(
    anchor: torch.Tensor, positive: torch.Tensor, margin: float, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """What one batch's embeddings say about training, as plain floats.

    `active_hinges`: the share of anchors with a negative whose triplet hinge is open,
    margin + max_j a_i . p_j - a_i . p_i > 0 (an open hinge passes gradient; the margin moves the loss only
    through them). `cos_positive`, `cos_hardest_negative`, `cos_negatives`: mean cosine of anchor and
    translation, of anchor and its hardest (not masked) in-batch negative, and of anchor and every
    (not masked) negative; `centered_` the same after centring each language on its batch mean,
    a - mean(a), p - mean(p), re-normalised (the language offset that raw cosines share removed).
    anchor, positive: [n, d] L2-normalised, n >= 2; mask as in `triplet_margin_hardest_negative`.
    """
    _check_inputs(anchor, positive, margin, mask)
    excluded = _excluded(anchor.shape[0], mask, anchor.device)
    sim = anchor @ positive.T
    hardest, has_negative = _hardest(sim, excluded)
    row = {"active_hinges": _mean((margin + hardest - sim.diagonal() > 0)[has_negative])}
    centered = [F.normalize(x - x.mean(dim=0), dim=-1) for x in (anchor, positive)]
    for prefix, (a, p) in (("cos_", (anchor, positive)), ("centered_cos_", centered)):
        row |= {prefix + name: value for name, value in _similarities(a, p, excluded).items()}
    return row
