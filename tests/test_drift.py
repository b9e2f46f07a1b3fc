"""Drift (`tli.drift`) on tiny random Llama and Gemma 3 models with the SmolLM2 tokenizer.

The models are built from configs (random weights, nothing downloaded); a fresh LoRA adapter has
zero B matrices, so it must not move the model at all, and random B matrices must.
"""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from tli import drift, lora, train
from tli.config import TrainConfig
from tli.errors import TliError

from conftest import tiny_model

FAMILIES = ("llama", "gemma3")
PROMPTS = {"sw": ("Leo asubuhi nilikwenda", "Watoto wanapenda"), "en": ("This morning I went", "Children like")}
COLUMNS = ["language", "prompt", "text", "input_ids", "n_prompt_tokens"]


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(params=FAMILIES)
def model(request, tokenizer):
    return tiny_model(request.param, len(tokenizer), tokenizer.pad_token_id)


def with_adapter(model: torch.nn.Module, random_b: bool):
    """`model` wrapped with LoRA below layer 2 (dropout on, to check eval mode); B random if asked."""
    peft_model = train.attach_lora(model, TrainConfig(target_layer=2, lora_rank=4, lora_dropout=0.5))
    if random_b:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return peft_model.eval()  # new LoRA dropout modules start in training mode


def logits(model: torch.nn.Module, input_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([input_ids]), use_cache=False).logits[0].double()  # [pos, vocab]


def test_sampler_draws_from_the_softmax():
    probs = torch.tensor([0.1, 0.2, 0.0, 0.7])
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([drift._sample(probs.log(), generator) for _ in range(20_000)])
    frequencies = torch.bincount(draws, minlength=4) / len(draws)
    assert frequencies[2] == 0
    torch.testing.assert_close(frequencies, probs, rtol=0, atol=0.01)


def test_samples_are_the_seeded_continuations(model, tokenizer):
    samples = drift.make_samples(model, tokenizer)
    assert list(samples.columns) == COLUMNS
    assert list(samples["language"]) == ["sw"] * 8 + ["en"] * 8
    assert list(samples["prompt"]) == list(drift.DEFAULT_PROMPTS["sw"] + drift.DEFAULT_PROMPTS["en"])
    eos = drift._eos_ids(model, tokenizer)
    for row in samples.itertuples():
        prompt_ids = tokenizer(row.prompt)["input_ids"]
        assert row.input_ids[: row.n_prompt_tokens] == prompt_ids
        n_new = len(row.input_ids) - row.n_prompt_tokens
        assert n_new == 24 or (1 <= n_new < 24 and row.input_ids[-1] in eos)
        assert row.text.startswith(row.prompt)
        assert all(type(i) is int for i in row.input_ids)


def test_samples_are_reproducible_for_a_seed(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6)
    pd.testing.assert_frame_equal(drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6), samples)
    other = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6, seed=1)
    assert all(a != b for a, b in zip(other["input_ids"], samples["input_ids"]))


def test_samples_come_from_the_base_model_and_survive_parquet_and_json(model, tokenizer):
    base_samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6)
    peft_model = with_adapter(model, random_b=True)
    peft_model.train()
    pd.testing.assert_frame_equal(drift.make_samples(peft_model, tokenizer, PROMPTS, new_tokens=6), base_samples)
    assert peft_model.training
    buffer = io.BytesIO()
    base_samples.to_parquet(buffer)
    from_parquet = pd.read_parquet(io.BytesIO(buffer.getvalue()))
    from_json = pd.read_json(io.StringIO(base_samples.to_json(orient="records")), orient="records")
    expected = drift.drift_kl(peft_model, base_samples)
    assert drift.drift_kl(peft_model, from_parquet) == expected
    assert drift.drift_kl(peft_model, from_json) == expected


def test_kl_is_zero_for_a_fresh_adapter_and_positive_for_a_trained_one(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6)
    fresh = drift.drift_kl(with_adapter(model, random_b=False), samples)
    assert list(fresh) == ["drift_kl_sw", "drift_kl_en"]
    assert all(abs(value) < 1e-9 for value in fresh.values())
    moved = drift.drift_kl(
        with_adapter(
            tiny_model(model.config.model_type.split("_")[0], len(tokenizer), tokenizer.pad_token_id), random_b=True
        ),
        samples,
    )
    assert all(torch.isfinite(torch.tensor(value)) and value > 1e-6 for value in moved.values())


def test_kl_matches_torch_distributions(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6)
    peft_model = with_adapter(model, random_b=True)
    expected = {}
    for row in samples.iloc[[0, 3]].itertuples():
        with peft_model.disable_adapter():
            base = logits(peft_model, row.input_ids)
        tli = logits(peft_model, row.input_ids)
        positions = slice(row.n_prompt_tokens - 1, len(row.input_ids) - 1)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Categorical(logits=base[positions]),
            torch.distributions.Categorical(logits=tli[positions]),
        )
        expected[f"drift_kl_{row.language}"] = kl.mean().item()
    assert expected["drift_kl_sw"] > 0
    measured = drift.drift_kl(peft_model, samples.iloc[[0, 3]])
    assert measured == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_model_is_left_as_it_was(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=4)
    peft_model = with_adapter(model, random_b=True)
    ids = samples["input_ids"].iat[0]
    with peft_model.disable_adapter():
        base_before = logits(peft_model, ids)
    tli_before = logits(peft_model, ids)
    assert not torch.equal(base_before, tli_before)
    peft_model.train()
    dropout = [m for name, m in peft_model.named_modules() if name.endswith("lora_dropout.default")]
    dropout[0].eval()  # a mixed state is restored module by module
    drift.drift_kl(peft_model, samples)
    assert peft_model.training and not dropout[0].training and all(m.training for m in dropout[1:])
    peft_model.eval()
    torch.testing.assert_close(logits(peft_model, ids), tli_before, rtol=0, atol=0)  # adapter still on


def test_a_model_without_adapter_is_an_error(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=2)
    with pytest.raises(TliError, match="PeftModel"):
        drift.drift_kl(model, samples)


def test_a_bf16_models_log_probabilities_come_from_a_float32_lm_head(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=4)
    peft_model = with_adapter(model.to(torch.bfloat16), random_b=True)
    ids, m = samples["input_ids"].iat[0], samples["n_prompt_tokens"].iat[0]
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True)
    head = peft_model.get_output_embeddings().weight.float()
    expected = torch.log_softmax((out.hidden_states[-1][0, m - 1 : len(ids) - 1].float() @ head.T).double(), dim=-1)
    rounded = torch.log_softmax(out.logits[0, m - 1 : len(ids) - 1].double(), dim=-1)  # the model's bf16 logits
    with torch.inference_mode():
        [measured] = drift._continuation_log_probs(peft_model, [ids], [m])
    torch.testing.assert_close(measured, expected, rtol=0, atol=1e-6)
    assert (rounded - expected).abs().max() > 1e-4  # what the float32 head removes


def test_the_noise_floor_is_the_drift_of_the_adapter_scaled_down(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=4)
    peft_model = with_adapter(model, random_b=True)
    full = drift.drift_kl(peft_model, samples)
    floor = drift.noise_floor(peft_model, samples)
    assert list(floor) == ["drift_floor_sw", "drift_floor_en"]
    for language in ("sw", "en"):  # KL is quadratic in a small change: 1e-3 of the adapter, ~1e-6 of its drift
        # (to second order; a large drift saturates, so the ratio can be larger)
        ratio = floor[f"drift_floor_{language}"] / full[f"drift_kl_{language}"]
        assert 1e-7 < ratio < 1e-3
    assert drift.drift_kl(peft_model, samples) == full  # the adapter's scaling is restored exactly


def test_mean_ci_is_the_percentile_bootstrap_of_the_mean():
    values = np.random.default_rng(0).gamma(2.0, size=12)
    low, high = drift.mean_ci(values, n_boot=20_000, seed=0)
    resampled = np.random.default_rng(1).choice(values, size=(20_000, len(values))).mean(axis=1)  # by hand
    np.testing.assert_allclose([low, high], np.percentile(resampled, [2.5, 97.5]), rtol=0.03)
    assert low < values.mean() < high and (low, high) == drift.mean_ci(values, n_boot=20_000, seed=0)
    assert drift.mean_ci([0.3, 0.3, 0.3], n_boot=100, seed=0) == (0.3, 0.3)
    assert all(np.isnan(drift.mean_ci([0.3], n_boot=100, seed=0)))


def test_drift_measures_give_an_interval_and_a_random_direction_reference(model, tokenizer):
    samples = drift.make_samples(model, tokenizer, PROMPTS, new_tokens=6)
    peft_model = with_adapter(model, random_b=True)
    weights = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    measured = drift.drift_measures(peft_model, samples, n_boot=500, seed=0)
    assert list(measured) == [
        f"drift_kl_{language}{part}" for language in ("sw", "en") for part in ("", "_ci_low", "_ci_high", "_random")
    ]
    assert {k: measured[k] for k in ("drift_kl_sw", "drift_kl_en")} == drift.drift_kl(peft_model, samples)
    per_sequence = drift.sequence_kl(peft_model, samples)
    for language in ("sw", "en"):
        name = f"drift_kl_{language}"
        assert (measured[f"{name}_ci_low"], measured[f"{name}_ci_high"]) == drift.mean_ci(
            per_sequence[language], 500, 0
        )
        assert measured[f"{name}_ci_low"] <= measured[name] <= measured[f"{name}_ci_high"]
        assert measured[f"{name}_random"] > 1e-6 and measured[f"{name}_random"] != pytest.approx(measured[name])
    with lora.random_directions(peft_model, seed=0):  # the reference is that adapter's drift
        random = drift.drift_kl(peft_model, samples)
    assert random == {k: measured[f"{k}_random"] for k in random}
    for name, parameter in peft_model.named_parameters():  # the trained weights are back
        torch.testing.assert_close(parameter, weights[name], rtol=0, atol=0)
    same = tiny_model(model.config.model_type.split("_")[0], len(tokenizer), tokenizer.pad_token_id)
    fresh = drift.drift_measures(with_adapter(same, random_b=False), samples, n_boot=500, seed=0)
    assert all(abs(value) < 1e-9 for value in fresh.values())  # no update: no drift, and a zero reference
