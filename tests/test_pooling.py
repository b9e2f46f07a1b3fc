"""Pooling protocols and batched extraction."""

import numpy as np
import pytest
import torch

from tli import pooling, scan
from tli.errors import TliError


def test_pooling_weights_select_the_documented_positions():
    attention = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    special = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1]])  # row 0: BOS + 2 content tokens; row 1: one token
    expected = {
        "mean": [[1 / 3, 1 / 3, 1 / 3, 0], [1, 0, 0, 0]],
        "mean_content": [[0, 0.5, 0.5, 0], [1, 0, 0, 0]],
        "mean_skip_first": [[0, 0.5, 0.5, 0], [1, 0, 0, 0]],
        "last": [[0, 0, 1, 0], [1, 0, 0, 0]],
    }
    for mode, weights in expected.items():
        torch.testing.assert_close(
            pooling.pooling_weights(attention, special, mode), torch.tensor(weights, dtype=torch.float32)
        )
    with pytest.raises(TliError, match="unknown pooling"):
        pooling.pooling_weights(attention, special, "max")


def test_pool_is_a_weighted_mean():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(pooling.pool(hidden, weights), torch.stack([hidden[0, :2].mean(0), hidden[1, 2]]))


def test_token_counts_are_the_positions_mean_pools(tiny_llama):
    """A word's token count n is what `mean` pools: its first position (the sink) weighs 1 / n."""
    _, tokenizer = tiny_llama
    words = ["bahari", "a", "kitabu cha mwalimu", "habari za asubuhi"]
    counts = pooling.token_counts(tokenizer, words)
    encoded = pooling.tokenize(tokenizer, words)
    np.testing.assert_array_equal(counts, encoded["attention_mask"].sum(dim=1).numpy())
    weights = pooling.pooling_weights(encoded["attention_mask"], encoded["special_tokens_mask"], "mean")
    np.testing.assert_allclose(weights[:, 0].numpy(), 1 / counts)
    assert counts.dtype == np.int64 and counts[1] < counts[2]


@pytest.mark.parametrize("mode", pooling.POOLING_MODES)
def test_batched_embeddings_equal_one_word_at_a_time(tiny_llama, mode):
    model, tokenizer = tiny_llama
    words = ["bahari", "thin", "kitabu cha mwalimu", "a", "-refu", "habari za asubuhi"]
    batched = pooling.embed_words(model, tokenizer, words, [0, 2, 4], [mode], batch_size=4)[mode]
    for layer, vectors in batched.items():
        single = np.concatenate(
            [pooling.embed_words(model, tokenizer, [w], [layer], [mode])[mode][layer] for w in words]
        )
        np.testing.assert_allclose(vectors, single, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_real_model_batched_scan_matches_and_shows_the_mean_pooling_artifact(embedded_dir, small_pairs):
    """SmolLM2 (no BOS): mean pooling puts matched and mismatched pairs near 1 in middle layers alike."""
    from tli.config import ModelConfig, ScanConfig
    from tli.models import load_model

    model, tokenizer = load_model(ModelConfig(model=str(embedded_dir)))
    _, pairs = small_pairs
    table = scan.scan_layers(model, tokenizer, pairs, ScanConfig(pooling="mean", layers=(2, 15, 30)), progress=False)
    middle = table.set_index("layer").loc[15]
    assert middle["cosine_mean"] > 0.99 and middle["cosine_mismatched"] > 0.99
    assert abs(middle["gap"]) < 0.01
    words = list(pairs["swahili"])
    batched = pooling.embed_words(model, tokenizer, words, [15], ["mean_content"], batch_size=8)["mean_content"][15]
    single = np.concatenate(
        [pooling.embed_words(model, tokenizer, [w], [15], ["mean_content"])["mean_content"][15] for w in words]
    )
    cosine = (batched * single).sum(1) / np.linalg.norm(batched, axis=1) / np.linalg.norm(single, axis=1)
    assert np.all(np.abs(cosine - 1) < 1e-4)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-2)  # activations reach ~3e4 here


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_mean_content_pools_what_the_authors_code_pools_on_the_paper_words(model):
    """The author's evaluation drops the ids of BOS, EOS and pad wherever they occur; `mean_content` drops the
    tokens the tokenizer added (its special-tokens mask): the same positions on all 1,372 words of the paper's pairs.
    """
    from tli import data, models

    tokenizer = models.load_tokenizer(model)
    pairs = data.load_pairs()
    encoded = pooling.tokenize(tokenizer, [*pairs["swahili"], *pairs["english"]])
    ours = pooling.pooling_weights(encoded["attention_mask"], encoded["special_tokens_mask"], "mean_content") > 0
    dropped = [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None]
    authors = encoded["attention_mask"].bool() & ~torch.isin(encoded["input_ids"], torch.tensor(dropped))
    assert len(encoded["input_ids"]) == 1372
    torch.testing.assert_close(ours, authors)
