"""tli.lora on a tiny random Llama: the update norm against PEFT's own delta weights, random directions of the same
norms (seeded, restored on leaving).
"""

import pytest
import torch

from tli import lora, train
from tli.config import TrainConfig


@pytest.fixture()
def peft_model(tiny_llama):
    """LoRA (rank 4, alpha 16: scale 4) below layer 3, with random A and B."""
    model, _ = tiny_llama
    wrapped = train.attach_lora(model, TrainConfig(target_layer=3, lora_rank=4, lora_alpha=16))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return wrapped


def _deltas(model) -> dict[str, torch.Tensor]:
    """PEFT's own delta W of every adapted module (`get_delta_weight`: scale x B @ A, formed in full)."""
    return {name: module.get_delta_weight(adapter).double() for name, module, adapter in lora.lora_layers(model)}


def test_update_norm_is_the_norm_of_peft_s_delta_weights(peft_model):
    deltas = _deltas(peft_model)
    assert len(deltas) == 3 * 2  # blocks 0..2 x (q_proj, v_proj)
    expected = torch.sqrt(sum(delta.pow(2).sum() for delta in deltas.values())).item()
    assert lora.update_norm(peft_model) == pytest.approx(expected, rel=1e-6)  # PEFT forms delta W in float32


def test_a_fresh_adapter_has_no_update(tiny_llama):
    model, _ = tiny_llama
    assert lora.update_norm(train.attach_lora(model, TrainConfig(target_layer=2))) == 0.0  # B starts at zero
    assert lora.update_norm(model) == 0.0  # LoRA-less models too


def test_random_directions_keep_each_module_s_norm_and_restore_the_trained_weights(peft_model):
    trained = _deltas(peft_model)
    saved = {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_" in name}
    with lora.random_directions(peft_model, seed=3):
        random = _deltas(peft_model)
    with lora.random_directions(peft_model, seed=3):
        again = _deltas(peft_model)
    with lora.random_directions(peft_model, seed=4):
        other = _deltas(peft_model)
    for name, delta in trained.items():
        assert random[name].norm().item() == pytest.approx(delta.norm().item(), rel=1e-5)  # float32 weights
        cosine = (random[name] * delta).sum() / (random[name].norm() * delta.norm())
        assert abs(cosine.item()) < 0.5  # another direction
        torch.testing.assert_close(random[name], again[name], rtol=0, atol=0)  # seeded
        assert not torch.allclose(random[name], other[name])
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(parameter, saved[name], rtol=0, atol=0)


def test_random_directions_restore_the_weights_after_an_error(peft_model):
    saved = {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_" in name}
    with pytest.raises(RuntimeError, match="inside"), lora.random_directions(peft_model, seed=0):
        raise RuntimeError("inside")
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(parameter, saved[name], rtol=0, atol=0)


def test_a_zero_update_stays_zero_in_random_directions(tiny_llama):
    model, _ = tiny_llama
    fresh = train.attach_lora(model, TrainConfig(target_layer=2))
    with lora.random_directions(fresh, seed=0):
        assert lora.update_norm(fresh) == 0.0
