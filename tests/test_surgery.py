"""Model surgery on a tiny random Llama: layer numbering and truncation exactness."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tli import pooling, surgery
from tli.errors import TliError


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
        several = surgery.hidden_states(model, encoded["input_ids"], encoded["attention_mask"], [0, 2, 4], truncate=False)
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
    assert [surgery.layer_name(k, 4) for k in (0, 1, 4)] == ["embedding", "block 1", "block 4 + final norm"]
    with pytest.raises(TliError, match="layers 0..4"):
        surgery.check_layer(5, surgery.num_layers(model))


def test_unknown_architecture_is_a_clear_error():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(TliError, match="unsupported architecture 'gpt2'"):
        surgery.decoder(gpt2)
