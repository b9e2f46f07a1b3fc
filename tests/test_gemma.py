"""Gemma 3 beside Llama: model surgery on tiny random models of both families, and the real embedded Gemma 3.

The tiny models are built from configs (random weights, nothing downloaded). The Gemma 3 one mixes
sliding-window and full-attention blocks, with a window shorter than the test sequences, so that a
truncated forward pass is only exact if it keeps each block's mask and rotary embedding.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from tli import cli, loss, pooling, surgery, train
from tli.errors import TliError
from tli.models import ModelConfig, load_model
from tli.stats import l2_normalize

FAMILIES = ("llama", "gemma3")
N_BLOCKS = 4


def tiny_model(family: str) -> torch.nn.Module:
    """A random 4-block causal LM of `family`, in float32 eval mode, with sdpa attention."""
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=N_BLOCKS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        config = Gemma3TextConfig(
            **common, head_dim=8, sliding_window=3,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        )
        model = Gemma3ForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model.float().eval()


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
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=True).hidden_states
        assert len(full) == N_BLOCKS + 1
        for k in range(N_BLOCKS + 1):
            cut = surgery.hidden_states(model, batch["input_ids"], batch["attention_mask"], [k], truncate=True)[k]
            torch.testing.assert_close(cut, full[k], msg=f"layer {k}")
        every = surgery.hidden_states(model, batch["input_ids"], batch["attention_mask"], range(N_BLOCKS + 1),
                                      truncate=False)
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
    config = train.TrainConfig(target_layer=target_layer, dropout=0.0, full_forward=True, rank=4, alpha=8)
    peft_model = train.attach_lora(model, config)  # LoRA on every block, so both passes see the same model
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make every LoRA gradient non-trivial
                parameter.normal_(std=0.1)
    batch = tiny_batch()

    def loss_and_gradients(truncate: bool):
        peft_model.zero_grad(set_to_none=True)
        vectors = pooling.pooled(peft_model, batch, [target_layer], "mean", truncate=truncate)[target_layer]
        anchor, positive = torch.nn.functional.normalize(vectors, dim=-1).split(3)
        value = loss.triplet_margin_hardest_negative(anchor, positive, margin=0.4)
        value.backward()
        grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                 for name, p in peft_model.named_parameters() if p.requires_grad}
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


def test_unknown_architecture_is_a_clear_error():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(TliError, match=r"unsupported architecture 'gpt2'.*gemma3_text.*llama"):
        surgery.model_family(model)
    with pytest.raises(TliError, match="unsupported architecture"):
        surgery.num_layers(model)


# --- the real embedded Gemma 3 270M ------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma():
    return load_model(ModelConfig(model="gemma3-270m", device="cpu"))


@pytest.fixture(scope="module")
def some_pairs():
    from tli.data import load_pairs

    return load_pairs().iloc[::31].head(20).reset_index(drop=True)  # 20 pairs spread over the list


@pytest.mark.slow
def test_real_gemma_shape_and_bos(gemma):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert surgery.model_family(model) == "gemma3" and surgery.num_layers(model) == 18
    assert model.config.hidden_size == 640 and model.config.vocab_size == 262144
    assert tokenizer("maji")["input_ids"][0] == tokenizer.bos_token_id
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mean", "mean_content"])
def test_real_gemma_batched_equals_one_at_a_time(gemma, some_pairs, mode):
    model, tokenizer = gemma
    words = list(some_pairs["swahili"]) + list(some_pairs["english"])
    layers = list(range(19))
    batched = pooling.embed_words(model, tokenizer, words, layers, mode, batch_size=64)
    single = pooling.embed_words(model, tokenizer, words, layers, mode, batch_size=1)
    assert len({len(ids) for ids in tokenizer(words)["input_ids"]}) > 1  # the batch really is padded
    for k in layers:
        cosine = np.sum(l2_normalize(batched[k]) * l2_normalize(single[k]), axis=1)
        assert np.all(cosine > 1 - 1e-4), f"layer {k}: min cosine {cosine.min()}"
        n = len(some_pairs)
        matched_batched = np.sum(l2_normalize(batched[k][:n]) * l2_normalize(batched[k][n:]), axis=1)
        matched_single = np.sum(l2_normalize(single[k][:n]) * l2_normalize(single[k][n:]), axis=1)
        np.testing.assert_allclose(matched_batched, matched_single, atol=1e-4)


@pytest.mark.slow
def test_scan_contract_gemma_like_smollm2(some_pairs, tmp_path):
    """`tli scan --model gemma3-270m --pairs FILE --pooling mean_content --output OUT.csv` (a check relies on it)."""
    pairs_file = tmp_path / "pairs.tsv"
    some_pairs[["swahili", "english"]].to_csv(pairs_file, sep="\t", index=False)
    tables = {}
    for alias in ("gemma3-270m", "smollm2-135m"):
        out = tmp_path / f"{alias}.csv"
        assert cli.main(["scan", "--model", alias, "--pairs", str(pairs_file), "--pooling", "mean_content",
                         "--output", str(out)]) == 0
        tables[alias] = pd.read_csv(out)
    gemma_table, smol_table = tables["gemma3-270m"], tables["smollm2-135m"]
    assert list(gemma_table["layer"]) == list(range(19))
    assert list(smol_table["layer"]) == list(range(31))
    assert list(gemma_table.columns) == list(smol_table.columns)
    for column in ("cosine_centered", "cosine_centered_mismatched", "centered_gap", "p_at_1_centered"):
        assert column in gemma_table.columns
    assert (gemma_table["model"] == "gemma3-270m").all() and (gemma_table["pooling"] == "mean_content").all()
    numeric = gemma_table.drop(columns=["model", "layer_name", "pooling"])
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    assert gemma_table["layer_name"].iat[0] == "embedding"
    assert gemma_table["layer_name"].iat[-1] == "block 18 + final norm"
