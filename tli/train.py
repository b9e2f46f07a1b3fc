"""TLI training: LoRA on the blocks below the target layer, a contrastive loss on its pooled embeddings.

Per step, a batch of b pairs is embedded at the target layer k (one forward pass of the 2b words,
stopped at block k), L2-normalised, and scored with the configured loss (`TrainConfig.loss`):
`tli.loss.triplet_margin_hardest_negative` (the paper's: Swahili anchors, English positives, the hardest
in-batch English negative) or `tli.loss.info_nce` (symmetric, every in-batch negative), false negatives
masked. With `translations` deranged (the shuffled control) the pairs are first permuted by
`tli.data.derange`. Blocks above k cannot change hidden_states[k], so LoRA is attached to blocks 1..k only
and the forward pass stops there; `full_forward` runs every block with LoRA everywhere, as a check (same
losses, same gradients, at any dropout: the LoRA layers above k draw no dropout numbers, and the dropout
stream is seeded after LoRA's initialisation, so the blocks below k draw the same numbers).

The log has one row per step s = 1..T: the step's batch as the model saw it before update s (`loss`, and
`loss.batch_dynamics`: open hinges, mean cosines of anchor and translation, hardest and every negative, raw
and per-language centred), the learning rate and the gradient norm of that update, and the norm of the LoRA
update after it (`tli.lora.update_norm`). Row s = 0 is the model before any update (LoRA B = 0: the base
model) on the first epoch's batches, each column the mean over those batches (no gradient, no learning rate).

A training run that left the model unchanged (every LoRA B still 0, or the target-layer embeddings of the
trained words the same with and without the adapter) is an `AdapterNoOp` error, never a result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from tli import data, lora, loss, pooling, surgery
from tli.config import TrainConfig
from tli.errors import TliError

logger = logging.getLogger(__name__)


NOOP_CHECK_WORDS = 64  # trained words whose target-layer embeddings must move


class TrainingDiverged(TliError):
    """The loss became NaN or infinite."""


class AdapterNoOp(TliError):
    """Training left the model as it was."""


def check_target_layer(config: TrainConfig, n_layers: int) -> None:
    """TliError unless 1 <= target layer <= L: LoRA needs a block below the target layer."""
    surgery.check_layer(config.target_layer, n_layers)


def attach_lora(model: nn.Module, config: TrainConfig) -> PeftModel:
    """Wrap `model` with fresh LoRA weights on the target modules of the blocks below the target layer."""
    n_layers = surgery.num_layers(model)
    block_modules = {name.rsplit(".", 1)[-1] for name, _ in surgery.decoder(model).layers[0].named_modules()}
    missing = [m for m in config.target_modules if m not in block_modules]
    if missing:
        raise TliError(f"target module(s) {', '.join(missing)} not in this model's blocks")
    blocks = range(n_layers) if config.full_forward else range(config.target_layer)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=list(blocks),
        layers_pattern="layers",
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    for block in surgery.decoder(peft_model).layers[config.target_layer :]:  # full_forward's blocks above k
        for module in block.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.lora_dropout:  # they cannot change hidden_states[k]: no dropout draws
                    module.lora_dropout[adapter] = nn.Identity()
    return peft_model


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Inside, with `enabled`, PyTorch runs deterministic kernels only (an operation without one raises); the
    previous mode is restored after. On CUDA it also needs CUBLAS_WORKSPACE_CONFIG (`models.resolve_device`
    sets it before cuBLAS starts).
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def check_changed_model(peft_model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame, config) -> None:
    """AdapterNoOp unless training changed the model: some LoRA B weight is not 0 (B starts at 0: LoRA adds
    nothing until a gradient reaches it), and the target layer's pooled embeddings (`pooling_train`) of the
    first NOOP_CHECK_WORDS trained words differ with the adapter on and off (one batch, the same kernels).
    """
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    if not any(bool(p.detach().abs().sum() > 0) for p in lora_b):
        raise AdapterNoOp(
            "training left every LoRA B weight at 0: no gradient reached the adapter, the model is unchanged"
        )
    words = list(dict.fromkeys([*pairs["swahili"], *pairs["english"]]))[:NOOP_CHECK_WORDS]
    encoded, layer, mode = pooling.tokenize(tokenizer, words), config.target_layer, config.pooling_train
    with torch.inference_mode():
        with peft_model.disable_adapter():
            before = pooling.pooled(peft_model, encoded, [layer], [mode])[mode][layer]
        after = pooling.pooled(peft_model, encoded, [layer], [mode])[mode][layer]
    if torch.equal(before, after):
        dtype = str(next(peft_model.parameters()).dtype).removeprefix("torch.")
        raise AdapterNoOp(
            f"the adapter leaves the layer-{layer} embeddings of the trained words unchanged (LoRA B is not 0, "
            f"but its effect is lost in the model's {dtype} arithmetic)"
        )


def batches(
    n_pairs: int, batch_size: int, epochs: int, generator: torch.Generator
) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, row indices) per step: a fresh seeded shuffle per epoch, cut into batches of `batch_size`.

    A last batch of a single pair (which has no in-batch negative) joins the batch before it.
    """
    for epoch in range(epochs):
        order = torch.randperm(n_pairs, generator=generator)
        starts = list(range(0, n_pairs, batch_size))
        if len(starts) > 1 and n_pairs - starts[-1] == 1:
            starts.pop()
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else n_pairs
            yield epoch, order[start:stop]


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Number of batches `batches` makes of one epoch."""
    full, rest = divmod(n_pairs, batch_size)
    return full + (rest > 1) if full else 1


LOG_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "lr",
    "seconds",  # since the first update began (0 at step 0)
    "loss_minus_margin",  # triplet loss - margin (NaN for InfoNCE): 0 where d(a, p) = d(a, hardest n) throughout
    "active_hinges",  # share of anchors whose triplet hinge is open (NaN for InfoNCE)
    *(f"{kind}cos_{name}" for kind in ("", "centered_") for name in ("positive", "hardest_negative", "negatives")),
    "grad_norm",  # L2 norm of every LoRA gradient of the step (NaN at step 0)
    "lora_norm",  # ||delta W|| of the whole LoRA update after the step (0 at step 0)
)


def batch_embeddings(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame, rows: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Swahili anchors [b, d], English positives [b, d]) of one batch: pooled at the target layer, L2-normalised,
    from one forward pass over its 2b words.
    """
    index = rows.tolist()
    words = [pairs["swahili"].iat[i] for i in index] + [pairs["english"].iat[i] for i in index]
    encoded = pooling.tokenize(tokenizer, words)
    layer = config.target_layer
    mode = config.pooling_train
    vectors = pooling.pooled(model, encoded, [layer], [mode], truncate=not config.full_forward)[mode][layer]
    anchor, positive = F.normalize(vectors, dim=-1).split(len(index))
    return anchor, positive


def objective(
    anchor: torch.Tensor, positive: torch.Tensor, config: TrainConfig, mask: torch.Tensor | None
) -> torch.Tensor:
    """The configured loss of one batch: the triplet loss at `margin`, or InfoNCE at `temperature`."""
    if config.loss == "triplet":
        return loss.triplet_margin_hardest_negative(anchor, positive, config.margin, mask)
    return loss.info_nce(anchor, positive, config.temperature, mask)


def batch_record(
    anchor: torch.Tensor, positive: torch.Tensor, value: torch.Tensor, config: TrainConfig, mask: torch.Tensor | None
) -> dict[str, float]:
    """One batch's log columns: `loss`, `loss_minus_margin` and `loss.batch_dynamics` (hinges NaN for InfoNCE)."""
    triplet = config.loss == "triplet"
    record = {"loss": value.item(), "loss_minus_margin": value.item() - config.margin if triplet else math.nan}
    record |= loss.batch_dynamics(anchor.detach(), positive.detach(), config.margin, mask)
    return record if triplet else record | {"active_hinges": math.nan}


def _batch_mask(mask: torch.Tensor | None, rows: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    return None if mask is None else mask[rows][:, rows].to(device)


@torch.no_grad()
def initial_record(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    steps: list[tuple[int, torch.Tensor]],
    config: TrainConfig,
    mask: torch.Tensor | None,
) -> dict[str, float]:
    """Log row 0: the mean `batch_record` over the first epoch's batches before any update, in eval mode (no
    dropout, the training RNG untouched), with no gradient and a zero LoRA update.
    """
    was_training = model.training
    model.eval()
    try:
        records = []
        for epoch, rows in steps:
            if epoch > 0:
                break
            anchor, positive = batch_embeddings(model, tokenizer, pairs, rows, config)
            batch_mask = _batch_mask(mask, rows, anchor.device)
            records.append(
                batch_record(anchor, positive, objective(anchor, positive, config, batch_mask), config, batch_mask)
            )
    finally:
        model.train(was_training)
    means = pd.DataFrame(records).mean().to_dict()
    return (
        {"step": 0, "epoch": 0, "lr": math.nan} | means | {"grad_norm": math.nan, "lora_norm": lora.update_norm(model)}
    )


def train_tli(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    config: TrainConfig,
    progress: bool = True,
    on_epoch_end: Callable[[pd.DataFrame], None] | None = None,
) -> tuple[PeftModel, pd.DataFrame]:
    """Train LoRA on `pairs`; returns (the PEFT model in eval mode, the log: LOG_COLUMNS, rows 0..T).

    `on_epoch_end(log so far)` is called after each epoch (the sweep reports it to Ray Tune). With
    `config.deterministic` the steps run deterministic kernels only. AdapterNoOp when the trained adapter leaves
    the model as it was (`check_changed_model`).
    """
    check_target_layer(config, surgery.num_layers(model))
    if len(pairs) < 2:
        raise TliError(f"{len(pairs)} training pair(s): in-batch negatives need at least 2")
    if config.translations == "deranged":
        pairs = data.derange(pairs, config.seed)
    torch.manual_seed(config.seed)
    peft_model = attach_lora(model, config)
    torch.manual_seed(config.seed)  # dropout's stream starts here, whatever full_forward's extra LoRA layers drew
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    per_epoch = steps_per_epoch(len(pairs), config.batch_size)
    total = config.epochs * per_epoch
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total)
    if config.warmup_steps >= total:  # step s trains at lr * (s - 1) / warmup_steps
        logger.warning(
            "%d warm-up steps but only %d steps in all (%d pairs, batch %d, %d epochs): the learning rate peaks "
            "at %.2g and never reaches --lr %.2g; lower --warmup-steps",
            config.warmup_steps,
            total,
            len(pairs),
            config.batch_size,
            config.epochs,
            config.lr * (total - 1) / config.warmup_steps,
            config.lr,
        )
    mask = (
        loss.false_negative_mask(list(pairs["swahili"]), list(pairs["english"]))
        if config.mask_false_negatives
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    steps = list(batches(len(pairs), config.batch_size, config.epochs, generator))
    with deterministic_kernels(config.deterministic):
        log = [initial_record(peft_model, tokenizer, pairs, steps, config, mask) | {"seconds": 0.0}]
        started = time.perf_counter()  # `seconds`: since the first update began (the step-0 pass not counted)
        peft_model.train()
        bar = tqdm(steps, total=total, desc=f"train @ layer {config.target_layer}", unit="step", disable=not progress)
        for step, (epoch, rows) in enumerate(bar, start=1):
            anchor, positive = batch_embeddings(peft_model, tokenizer, pairs, rows, config)
            batch_mask = _batch_mask(mask, rows, anchor.device)
            value = objective(anchor, positive, config, batch_mask)
            if not torch.isfinite(value):
                raise TrainingDiverged(f"loss is {value.item()} at step {step} (epoch {epoch + 1})")
            value.backward()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None]).item()
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            record = batch_record(anchor, positive, value, config, batch_mask)
            log.append(
                {"step": step, "epoch": epoch + 1, "lr": lr, "seconds": time.perf_counter() - started}
                | record
                | {"grad_norm": grad_norm, "lora_norm": lora.update_norm(peft_model)}
            )
            bar.set_postfix(loss=f"{value.item():.4f}", refresh=False)  # redrawn at tqdm's own pace
            if on_epoch_end is not None and step % per_epoch == 0:
                on_epoch_end(pd.DataFrame(log, columns=list(LOG_COLUMNS)))
    peft_model.eval()
    check_changed_model(peft_model, tokenizer, pairs, config)
    return peft_model, pd.DataFrame(log, columns=list(LOG_COLUMNS))
