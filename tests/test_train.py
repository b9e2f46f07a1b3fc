"""TLI training: steps and batches, the log, seeds, settings validated, the base restorable. (Truncated against
full forward passes, losses and LoRA gradients: test_surgery.py, on both model families.)
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tli import data, lora, loss, pooling, surgery, train
from tli.config import TrainConfig
from tli.errors import TliError


def test_training_logs_every_step_and_unload_restores_the_base(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    _, pairs = small_pairs
    trained_rows = pairs[pairs["split"] == "trained"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(target_layer=3, epochs=2, batch_size=4, warmup_steps=1, lr=1e-2)
    peft_model, log = train.train_tli(model, tokenizer, trained_rows, config, progress=False)
    assert list(log.columns) == list(train.LOG_COLUMNS)
    assert len(log) == 1 + 2 * 4 and log["epoch"].tolist() == [0] + [1] * 4 + [2] * 4  # step 0: before any update
    assert log["step"].tolist() == list(range(9)) and log["seconds"].is_monotonic_increasing
    assert log["lr"].iloc[1] == 0.0 and log["lr"].max() == pytest.approx(1e-2) and np.isnan(log["lr"].iloc[0])
    assert np.isnan(log["grad_norm"].iloc[0]) and (log["grad_norm"].iloc[1:] > 0).all()
    norms = log["lora_norm"].tolist()  # step 1 trains at lr 0 (warm-up): the update appears at step 2
    assert norms[:2] == [0.0, 0.0] and all(n > 0 for n in norms[2:])
    assert norms[-1] == pytest.approx(lora.update_norm(peft_model))
    np.testing.assert_allclose(log["loss_minus_margin"], log["loss"] - config.margin)
    assert log["active_hinges"].between(0, 1).all() and log[list(train.LOG_COLUMNS)].iloc[1:].notna().all().all()
    lora_blocks = {n.split(".layers.")[1].split(".")[0] for n, _ in peft_model.named_parameters() if "lora_" in n}
    assert lora_blocks == {"0", "1", "2"}
    restored = peft_model.unload()
    assert not any("lora_" in n for n, _ in restored.named_parameters())
    for name, value in restored.named_parameters():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_a_warm_up_longer_than_training_warns_with_the_peak_it_reaches(tiny_llama, small_pairs, caplog):
    """The issue's case: 50 warm-up steps, fewer steps in all: the warning's peak is the log's largest lr."""
    model, tokenizer = tiny_llama
    trained_rows = small_pairs[1][small_pairs[1]["split"] == "trained"]  # 16 pairs, batch 8: 2 steps an epoch
    config = TrainConfig(target_layer=2, epochs=2, batch_size=8, warmup_steps=50, lr=2e-4)
    with caplog.at_level("WARNING", logger="tli.train"):
        peft_model, log = train.train_tli(model, tokenizer, trained_rows, config, progress=False)
    peft_model.unload()
    warning = " ".join(r.getMessage() for r in caplog.records if "warm-up" in r.getMessage())
    assert "50 warm-up steps but only 4 steps in all (16 pairs, batch 8, 2 epochs)" in warning
    assert f"peaks at {log['lr'].max():.2g} and never reaches --lr 0.0002" in warning  # 2e-4 * 3 / 50 = 1.2e-05
    assert log["lr"].max() == pytest.approx(2e-4 * 3 / 50)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tli.train"):
        train.train_tli(model, tokenizer, trained_rows, dataclasses.replace(config, warmup_steps=2), progress=False)
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]


def _base_batches(model, tokenizer, pairs, config) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(anchor, positive, mask) of each batch of the first epoch, embedded by the model as it is (no LoRA)."""
    generator = torch.Generator().manual_seed(config.seed)
    mask = loss.false_negative_mask(list(pairs["swahili"]), list(pairs["english"]))
    out = []
    for epoch, rows in train.batches(len(pairs), config.batch_size, config.epochs, generator):
        if epoch > 0:
            break
        words = [*pairs["swahili"].iloc[rows.tolist()], *pairs["english"].iloc[rows.tolist()]]
        vectors = pooling.pooled(model, pooling.tokenize(tokenizer, words), [config.target_layer], ["mean"])
        anchor, positive = F.normalize(vectors["mean"][config.target_layer], dim=-1).split(len(rows))
        out.append((anchor, positive, mask[rows][:, rows]))
    return out


@pytest.mark.parametrize("objective", ["triplet", "infonce"])
@pytest.mark.parametrize("translations", ["true", "deranged"])
def test_step_0_is_the_base_model_on_the_first_epoch_s_batches(tiny_llama, small_pairs, objective, translations):
    model, tokenizer = tiny_llama
    rows = small_pairs[1][small_pairs[1]["split"] == "trained"]
    config = TrainConfig(
        target_layer=2, epochs=2, batch_size=4, warmup_steps=0, loss=objective, translations=translations
    )
    seen = data.derange(rows, config.seed) if translations == "deranged" else rows  # what training is given
    with torch.no_grad():
        expected = _base_batches(model, tokenizer, seen, config)
    losses = [
        loss.triplet_margin_hardest_negative(a, p, config.margin, m)
        if objective == "triplet"
        else loss.info_nce(a, p, config.temperature, m)
        for a, p, m in expected
    ]
    dynamics = pd.DataFrame([loss.batch_dynamics(a, p, config.margin, m) for a, p, m in expected]).mean()
    peft_model, log = train.train_tli(model, tokenizer, rows, config, progress=False)
    first, step0 = log.iloc[1], log.iloc[0]
    assert step0["loss"] == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)  # the mean over the batches
    assert first["loss"] == pytest.approx(losses[0].item(), rel=1e-5)  # step 1 sees the base model too (B = 0)
    for name in ("cos_positive", "cos_hardest_negative", "centered_cos_negatives"):
        assert step0[name] == pytest.approx(dynamics[name], rel=1e-5, abs=1e-7)
    if objective == "infonce":  # no margin, no hinges
        assert log[["loss_minus_margin", "active_hinges"]].isna().all().all()
    else:
        assert step0["active_hinges"] == pytest.approx(dynamics["active_hinges"])
    peft_model.unload()


def test_same_seed_same_losses(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    trained_rows = small_pairs[1][small_pairs[1]["split"] == "trained"]
    config = TrainConfig(target_layer=2, epochs=1, batch_size=4, seed=3)
    runs = []
    for _ in range(2):
        peft_model, log = train.train_tli(model, tokenizer, trained_rows, config, progress=False)
        runs.append(log["loss"].tolist())
        model = peft_model.unload()
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"target_layer": 0}, "target_layer must be >= 1"),
        ({"lora_rank": 0}, "lora_rank must be >= 1"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"pooling_train": "max"}, "'max' is not one of"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"lora_dropout": 1.0}, "lora_dropout must be >= 0 and < 1"),
        ({"lr": 0.0}, "lr must be > 0 and < 1"),
        ({"target_modules": ()}, "no LoRA target modules"),
        ({"loss": "contrastive"}, "'contrastive' is not one of triplet, infonce"),
        ({"temperature": 0.0}, "temperature must be > 0 and <= 10"),
        ({"translations": "shuffled"}, "'shuffled' is not one of true, deranged"),
    ],
)
def test_impossible_settings_are_errors(changes, message):
    with pytest.raises(TliError, match=message):
        TrainConfig(**changes)


def test_a_target_layer_beyond_the_model_is_an_error(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    with pytest.raises(TliError, match="layer 9 is out of range: this model has layers 0..4"):
        train.train_tli(model, tokenizer, small_pairs[1], TrainConfig(target_layer=9), progress=False)


@pytest.mark.parametrize(
    "n_pairs, batch_size, sizes",
    [
        (16, 8, [8, 8]),
        (17, 8, [8, 9]),
        (18, 8, [8, 8, 2]),
        (5, 8, [5]),
        (3, 2, [3]),
        (4, 2, [2, 2]),
    ],
)
def test_batches_never_leave_a_pair_without_negatives(n_pairs, batch_size, sizes):
    generator = torch.Generator().manual_seed(0)
    steps = list(train.batches(n_pairs, batch_size, 2, generator))
    assert (
        [len(rows) for epoch, rows in steps if epoch == 0]
        == sizes
        == [len(rows) for epoch, rows in steps if epoch == 1]
    )
    assert len(sizes) == train.steps_per_epoch(n_pairs, batch_size)
    for epoch in (0, 1):  # every pair once per epoch
        assert sorted(torch.cat([rows for e, rows in steps if e == epoch]).tolist()) == list(range(n_pairs))


def test_unknown_target_module_is_an_error(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(TliError, match="c_attn not in this model"):
        train.attach_lora(model, TrainConfig(target_modules=("c_attn",)))
    assert surgery.num_layers(model) == 4


def _trained(pairs):
    return pairs[pairs["split"] == "trained"]


def test_full_forward_trains_the_same_adapter_at_any_dropout(tiny_llama, small_pairs):
    """LoRA dropout 0.05 (the default): the blocks above the target layer draw no dropout numbers."""
    model, tokenizer = tiny_llama
    runs = {}
    for full_forward in (False, True):
        config = TrainConfig(target_layer=2, epochs=2, batch_size=4, warmup_steps=0, lr=1e-2, full_forward=full_forward)
        assert config.lora_dropout == 0.05
        peft_model, log = train.train_tli(model, tokenizer, _trained(small_pairs[1]), config, progress=False)
        below = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n and ".layers.0." in n}
        runs[full_forward] = log["loss"].tolist(), below
        model = peft_model.unload()
    assert runs[False][0] == runs[True][0] and len(set(runs[False][0])) > 1  # identical losses, step by step
    assert runs[False][1].keys() == runs[True][1].keys()
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=0, atol=0, msg=name)


def test_a_run_whose_adapter_never_learnt_is_an_error(tiny_llama, small_pairs, monkeypatch):
    model, tokenizer = tiny_llama
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)  # no gradient ever applied
    config = TrainConfig(target_layer=2, epochs=1, batch_size=4, warmup_steps=0, lr=1e-2)
    with pytest.raises(train.AdapterNoOp, match="training left every LoRA B weight at 0"):
        train.train_tli(model, tokenizer, _trained(small_pairs[1]), config, progress=False)


@pytest.mark.parametrize(("scale", "moved"), [(1e-30, False), (1e-2, True)])
def test_an_adapter_too_small_to_move_the_embeddings_is_a_no_op(tiny_llama, small_pairs, scale, moved):
    model, tokenizer = tiny_llama
    config = TrainConfig(target_layer=2, lora_rank=4)
    peft_model = train.attach_lora(model, config).eval()
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(scale)  # not 0, but 1e-30 of a change is lost in float32
    check = lambda: train.check_changed_model(peft_model, tokenizer, _trained(small_pairs[1]), config)  # noqa: E731
    if moved:
        check()
    else:
        with pytest.raises(train.AdapterNoOp, match="leaves the layer-2 embeddings of the trained words unchanged"):
            check()


def test_deterministic_kernels_are_switched_on_for_training_only(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    seen = []
    with train.deterministic_kernels(True):
        seen.append(torch.are_deterministic_algorithms_enabled())
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()
    logs = []
    for deterministic in (False, True):  # the CPU is deterministic anyway: the same numbers either way
        config = TrainConfig(
            target_layer=2, epochs=1, batch_size=4, warmup_steps=0, lr=1e-2, deterministic=deterministic
        )
        peft_model, log = train.train_tli(model, tokenizer, _trained(small_pairs[1]), config, progress=False)
        logs.append(log["loss"].tolist())
        model = peft_model.unload()
    assert logs[0] == logs[1] and not torch.are_deterministic_algorithms_enabled()
