"""The real embedded Gemma 3 270M: its shape and BOS, batched extraction, the scan contract shared with SmolLM2.
(Surgery on tiny random Gemma 3 and Llama models is in test_surgery.py.)
"""

import numpy as np
import pandas as pd
import pytest

from tli import cli, pooling, surgery
from tli.config import ModelConfig
from tli.models import load_model
from tli.stats import l2_normalize

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
    batched = pooling.embed_words(model, tokenizer, words, layers, [mode], batch_size=64)[mode]
    single = pooling.embed_words(model, tokenizer, words, layers, [mode], batch_size=1)[mode]
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
        assert (
            cli.main(
                [
                    "scan",
                    "--model",
                    alias,
                    "--pairs",
                    str(pairs_file),
                    "--pooling",
                    "mean_content",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
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
