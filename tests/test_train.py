"""TLI training: steps and batches, the log, seeds, settings validated, the base restorable. (Truncated against
full forward passes, losses and LoRA gradients: test_surgery.py, on both model families.)
"""

import pytest
import torch

from tli import surgery, train
from tli.config import TrainConfig
from tli.errors import TliError


def test_training_logs_every_step_and_unload_restores_the_base(tiny_llama, small_pairs):
    model, tokenizer = tiny_llama
    _, pairs = small_pairs
    trained_rows = pairs[pairs["split"] == "trained"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(target_layer=3, epochs=2, batch_size=4, warmup_steps=1, lr=1e-2)
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
