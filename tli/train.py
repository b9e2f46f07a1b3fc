"""TLI training: LoRA on the blocks below the target layer, triplet-margin loss on its pooled embeddings.

Per step, a batch of b pairs is embedded at the target layer k (one forward pass of the 2b words,
stopped at block k), L2-normalised, and scored with
`tli.loss.triplet_margin_hardest_negative` (Swahili anchors, English positives, the hardest
in-batch English negative, false negatives masked). Blocks above k cannot change hidden_states[k],
so LoRA is attached to blocks 1..k only and the forward pass stops there; `full_forward` runs every
block with LoRA everywhere, as a check (same losses, same gradients).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from tli import loss, pooling, surgery
from tli.errors import TliError


class TrainingDiverged(TliError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """`tli train`: LoRA + triplet-margin training at one target layer (defaults: the paper's)."""

    target_layer: int = field(default=2, metadata={"help": "hidden_states index whose embeddings are trained (1..L)"})
    epochs: int = field(default=5, metadata={"help": "passes over the training pairs"})
    batch_size: int = field(default=8, metadata={"help": "pairs per step (in-batch negatives)"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale alpha/r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata={"help": "LoRA target modules"})
    margin: float = field(default=0.4, metadata={"help": "triplet margin"})
    pooling: str = field(default="mean", metadata={"help": "pooling for training (the paper: mean, BOS included)"})
    seed: int = field(default=0, metadata={"help": "seeds LoRA initialisation, dropout and shuffling"})
    mask_false_negatives: bool = field(
        default=True, metadata={"help": "exclude in-batch negatives sharing the Swahili or English word"}
    )
    full_forward: bool = field(default=False, metadata={"help": "run every block (verification; slower)"})

    def validate(self, n_layers: int | None = None) -> None:
        """TliError for an impossible setting (the layer range is checked once `n_layers` is known)."""
        if n_layers is not None:
            surgery.check_layer(self.target_layer, n_layers)
        pooling.check_pooling(self.pooling)
        if self.target_layer == 0:
            raise TliError("target layer 0 is the embedding output: no block below it for LoRA to adapt")
        checks = [
            (self.rank > 0, f"LoRA rank must be > 0, got {self.rank}"),
            (self.alpha > 0, f"LoRA alpha must be > 0, got {self.alpha}"),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.epochs > 0 and self.batch_size > 0, "epochs and batch size must be > 0"),
            (self.lr > 0 and self.warmup_steps >= 0, "lr must be > 0 and warm-up steps >= 0"),
            (len(self.target_modules) > 0, "no LoRA target modules given"),
        ]
        for ok, message in checks:
            if not ok:
                raise TliError(message)


def attach_lora(model: nn.Module, config: TrainConfig) -> PeftModel:
    """Wrap `model` with fresh LoRA weights on the target modules of the blocks below the target layer."""
    n_layers = surgery.num_layers(model)
    block_modules = {name.rsplit(".", 1)[-1] for name, _ in surgery.decoder(model).layers[0].named_modules()}
    missing = [m for m in config.target_modules if m not in block_modules]
    if missing:
        raise TliError(f"target module(s) {', '.join(missing)} not in this model's blocks")
    blocks = range(n_layers) if config.full_forward else range(config.target_layer)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=list(blocks),
        layers_pattern="layers",
        bias="none",
    )
    return get_peft_model(model, lora)


def _steps(n_pairs: int, config: TrainConfig, generator: torch.Generator):
    """(epoch, row indices) for every step: a fresh seeded shuffle per epoch."""
    for epoch in range(config.epochs):
        order = torch.randperm(n_pairs, generator=generator)
        for start in range(0, n_pairs, config.batch_size):
            yield epoch, order[start : start + config.batch_size]


def batch_loss(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame, rows: torch.Tensor, config: TrainConfig,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The triplet loss of one batch of pairs (one forward pass over its Swahili and English words)."""
    index = rows.tolist()
    words = [pairs["swahili"].iat[i] for i in index] + [pairs["english"].iat[i] for i in index]
    encoded = pooling.tokenize(tokenizer, words)
    layer = config.target_layer
    vectors = pooling.pooled(model, encoded, [layer], config.pooling, truncate=not config.full_forward)[layer]
    anchor, positive = F.normalize(vectors, dim=-1).split(len(index))
    batch_mask = None if mask is None else mask[rows][:, rows].to(anchor.device)
    return loss.triplet_margin_hardest_negative(anchor, positive, config.margin, batch_mask)


def train_tli(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame, config: TrainConfig, progress: bool = True
) -> tuple[PeftModel, pd.DataFrame]:
    """Train LoRA on `pairs`; returns (the PEFT model in eval mode, the log: step, epoch, loss, lr, seconds)."""
    config.validate(surgery.num_layers(model))
    torch.manual_seed(config.seed)
    peft_model = attach_lora(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    total = config.epochs * math.ceil(len(pairs) / config.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total)
    mask = loss.false_negative_mask(list(pairs["swahili"]), list(pairs["english"])) if config.mask_false_negatives else None
    generator = torch.Generator().manual_seed(config.seed)
    log, started = [], time.perf_counter()
    peft_model.train()
    bar = tqdm(_steps(len(pairs), config, generator), total=total, desc=f"train @ layer {config.target_layer}",
               unit="step", disable=not progress)
    for step, (epoch, rows) in enumerate(bar, start=1):
        value = batch_loss(peft_model, tokenizer, pairs, rows, config, mask)
        if not torch.isfinite(value):
            raise TrainingDiverged(f"loss is {value.item()} at step {step} (epoch {epoch + 1})")
        value.backward()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.append({"step": step, "epoch": epoch + 1, "loss": value.item(), "lr": lr,
                    "seconds": time.perf_counter() - started})
        bar.set_postfix(loss=f"{value.item():.4f}", refresh=False)  # redrawn at tqdm's own pace
    peft_model.eval()
    return peft_model, pd.DataFrame(log)
