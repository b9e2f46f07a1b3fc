"""Model surgery on tiny random models of both families (Llama; Gemma 3 with sliding-window and full-attention
blocks and a window shorter than the test sequences, so a truncated pass is exact only if it keeps each block's
mask and rotary embedding): layer numbering, truncation exactness, identical losses and LoRA gradients.
"""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tli import config, loss, pooling, surgery, train
from tli.config import TrainConfig
from tli.errors import TliError

from conftest import tiny_model


def test_truncated_hidden_states_equal_the_full_forward(tiny_llama):
    model, tokenizer = tiny_llama
    encoded = pooling.tokenize(tokenizer, ["bahari", "kitabu cha mwalimu", "thin"])
    with torch.no_grad():
        reference = model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], output_hidden_states=True
        ).hidden_states
        for layer in range(surgery.num_layers(model) + 1):
            got = surgery.hidden_states(model, encoded["input_ids"], encoded["attention_mask"], [layer])[layer]
            torch.testing.assert_close(got, reference[layer], rtol=0, atol=0)
        several = surgery.hidden_states(
            model, encoded["input_ids"], encoded["attention_mask"], [0, 2, 4], truncate=False
        )
    for layer in (0, 2, 4):
        torch.testing.assert_close(several[layer], reference[layer], rtol=0, atol=0)


def test_truncation_restores_the_model_and_removes_hooks(tiny_llama):
    model, _ = tiny_llama
    stack = surgery.decoder(model)
    blocks, norm = stack.layers, stack.norm
    with pytest.raises(RuntimeError):
        with surgery.truncated(model, 2), surgery.recording(model, [1]):
            assert len(stack.layers) == 2 and isinstance(stack.norm, torch.nn.Identity)
            raise RuntimeError("interrupted")
    assert stack.layers is blocks and stack.norm is norm
    assert not any(block._forward_hooks for block in blocks) and not stack.embed_tokens._forward_hooks


def test_layer_names_and_range(tiny_llama):
    model, _ = tiny_llama
    assert [config.layer_name(k, 4) for k in (0, 1, 4)] == ["embedding", "block 1", "block 4 + final norm"]
    with pytest.raises(TliError, match="layers 0..4"):
        surgery.check_layer(5, surgery.num_layers(model))


def test_unknown_architecture_is_a_clear_error():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(TliError, match=r"unsupported architecture 'gpt2'.*gemma3_text.*llama"):
        surgery.model_family(model)
    with pytest.raises(TliError, match="unsupported architecture"):
        surgery.num_layers(model)


# --- both families -------------------------------------------------------------------------------

FAMILIES = ("llama", "gemma3")
N_BLOCKS = 4


def tiny_batch() -> dict[str, torch.Tensor]:
    """Six right-padded sequences of 2..8 tokens (the first token plays BOS): [batch, pos] each."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([8, 2, 5, 7, 3, 6])
    input_ids = torch.randint(4, 96, (len(lengths), 8), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    special = torch.zeros_like(input_ids)
    special[:, 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "special_tokens_mask": special}


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


# --- surgery on tiny models of both families ----------------------------------------------------


def test_family_and_layer_count(family_model):
    family, model = family_model
    assert surgery.model_family(model) == family
    assert surgery.num_layers(model) == N_BLOCKS


def test_truncated_hidden_states_equal_full_forward(family_model):
    _, model = family_model
    batch = tiny_batch()
    with torch.no_grad():
        full = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states
        assert len(full) == N_BLOCKS + 1
        for k in range(N_BLOCKS + 1):
            cut = surgery.hidden_states(model, batch["input_ids"], batch["attention_mask"], [k], truncate=True)[k]
            torch.testing.assert_close(cut, full[k], msg=f"layer {k}")
        every = surgery.hidden_states(
            model, batch["input_ids"], batch["attention_mask"], range(N_BLOCKS + 1), truncate=False
        )
    for k in range(N_BLOCKS + 1):
        torch.testing.assert_close(every[k], full[k], msg=f"layer {k}, untruncated")
    assert len(surgery.decoder(model).layers) == N_BLOCKS  # restored after each call
    assert not isinstance(surgery.decoder(model).norm, torch.nn.Identity)


def test_gemma_layer_zero_is_the_scaled_embedding():
    model = tiny_model("gemma3")
    batch = tiny_batch()
    with torch.no_grad():
        layer0 = surgery.hidden_states(model, batch["input_ids"], batch["attention_mask"], [0])[0]
    expected = model.model.embed_tokens.weight[batch["input_ids"]] * math.sqrt(model.config.hidden_size)
    torch.testing.assert_close(layer0, expected)


@pytest.mark.parametrize("target_layer", [1, 3])
def test_truncated_training_loss_and_gradients_equal_full_forward(family_model, target_layer):
    _, model = family_model
    config = TrainConfig(target_layer=target_layer, lora_dropout=0.0, full_forward=True, lora_rank=4, lora_alpha=8)
    peft_model = train.attach_lora(model, config)  # LoRA on every block, so both passes see the same model
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make every LoRA gradient non-trivial
                parameter.normal_(std=0.1)
    batch = tiny_batch()

    def loss_and_gradients(truncate: bool):
        peft_model.zero_grad(set_to_none=True)
        vectors = pooling.pooled(peft_model, batch, [target_layer], ["mean"], truncate=truncate)["mean"][target_layer]
        anchor, positive = torch.nn.functional.normalize(vectors, dim=-1).split(3)
        value = loss.triplet_margin_hardest_negative(anchor, positive, margin=0.4)
        value.backward()
        grads = {
            name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for name, p in peft_model.named_parameters()
            if p.requires_grad
        }
        return value.detach(), grads

    truncated_loss, truncated_grads = loss_and_gradients(True)
    full_loss, full_grads = loss_and_gradients(False)
    assert truncated_loss > 0
    torch.testing.assert_close(truncated_loss, full_loss)
    nonzero = 0
    for name, grad in full_grads.items():
        torch.testing.assert_close(truncated_grads[name], grad, msg=name)
        nonzero += bool(grad.abs().sum() > 0)
    assert nonzero >= 2 * target_layer  # q_proj and v_proj LoRA of every block below the target learn
