"""TLI training: truncated forward equals the full one; settings are validated; the base is restorable."""

import pytest
import torch

from tli import loss, surgery, train
from tli.errors import TliError


def _lora_gradients(model, tokenizer, pairs, config):
    torch.manual_seed(config.seed)
    peft_model = train.attach_lora(model, config)
    peft_model.train()
    rows = torch.arange(6)
    mask = loss.false_negative_mask(list(pairs["swahili"]), list(pairs["english"]))
    value = train.batch_loss(peft_model, tokenizer, pairs, rows, config, mask)
    value.backward()
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    peft_model.unload()
    return value.item(), grads


def test_truncated_and_full_forward_give_identical_loss_and_gradients(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    _, pairs = small_pairs
    config = train.TrainConfig(target_layer=2, dropout=0.0, margin=2.0)
    loss_truncated, grads_truncated = _lora_gradients(model, tokenizer, pairs, config)
    loss_full, grads_full = _lora_gradients(model, tokenizer, pairs, train.TrainConfig(**{**vars(config), "full_forward": True}))
    assert loss_truncated == pytest.approx(loss_full, abs=1e-6) and loss_truncated > 0
    assert grads_truncated.keys() and set(grads_truncated) <= set(grads_full)
    for name, grad in grads_truncated.items():
        torch.testing.assert_close(grad, grads_full[name], rtol=1e-4, atol=1e-7)
    # blocks at or above the target layer get no gradient in the full forward pass either
    assert all(".layers.2." not in n and ".layers.3." not in n for n in grads_full)


def test_training_logs_every_step_and_unload_restores_the_base(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    _, pairs = small_pairs
    trained_rows = pairs[pairs["split"] == "trained"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = train.TrainConfig(target_layer=3, epochs=2, batch_size=4, warmup_steps=1, lr=1e-2)
    peft_model, log = train.train_tli(model, tokenizer, trained_rows, config, progress=False)
    assert list(log.columns) == ["step", "epoch", "loss", "lr", "seconds"]
    assert len(log) == 2 * 4 and log["epoch"].tolist() == [1] * 4 + [2] * 4
    assert log["lr"].iloc[0] == 0.0 and log["lr"].max() == pytest.approx(1e-2)
    lora_blocks = {n.split(".layers.")[1].split(".")[0] for n, _ in peft_model.named_parameters() if "lora_" in n}
    assert lora_blocks == {"0", "1", "2"}
    restored = peft_model.unload()
    assert not any("lora_" in n for n, _ in restored.named_parameters())
    for name, value in restored.named_parameters():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_same_seed_same_losses(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    trained_rows = small_pairs[1][small_pairs[1]["split"] == "trained"]
    config = train.TrainConfig(target_layer=2, epochs=1, batch_size=4, seed=3)
    runs = []
    for _ in range(2):
        peft_model, log = train.train_tli(model, tokenizer, trained_rows, config, progress=False)
        runs.append(log["loss"].tolist())
        model = peft_model.unload()
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"target_layer": 9}, "out of range"),
        ({"target_layer": 0}, "embedding output"),
        ({"rank": 0}, "rank must be > 0"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"pooling": "max"}, "unknown pooling"),
    ],
)
def test_impossible_settings_are_errors(changes, message):
    with pytest.raises(TliError, match=message):
        train.TrainConfig(**changes).validate(n_layers=4)


def test_unknown_target_module_is_an_error(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(TliError, match="c_attn not in this model"):
        train.attach_lora(model, train.TrainConfig(target_modules=("c_attn",)))
    assert surgery.num_layers(model) == 4
