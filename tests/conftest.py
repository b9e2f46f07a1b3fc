"""Shared fixtures: a tiny random Llama (from a config, nothing downloaded) and the embedded model."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from tli import data, models
from tli.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def load_ablation(name: str):
    """An ablations/ script as a module (the folder holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"ablation_{name}", ROOT / "ablations" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def tli_logging_untouched():
    """Fails a test that leaves the `tli` logger quieter than it found it (restoring it): later tests' caplog
    would see none of tli's warnings, far from the cause.
    """
    log = logging.getLogger("tli")
    before = (log.level, log.disabled, log.propagate)
    yield
    after = (log.level, log.disabled, log.propagate)
    log.setLevel(before[0])
    log.disabled, log.propagate = before[1:]
    assert after == before, f"the test changed the tli logger's (level, disabled, propagate) from {before} to {after}"


@pytest.fixture(scope="session")
def embedded_dir():
    """The embedded SmolLM2-135M as a safetensors folder (converted from its GGUF on first use)."""
    return models.embedded_model_dir("smollm2-135m")


def tiny_model(
    family: str, vocab_size: int = 96, pad_token_id: int = 0, n_blocks: int = 4, hidden_size: int = 32
) -> torch.nn.Module:
    """A random causal LM of `family` ("llama" or "gemma3"; hidden 32, intermediate twice that) in float32 eval mode
    with sdpa attention.

    The Gemma 3 one alternates sliding-window (window 3) and full-attention blocks, so a truncated forward
    pass is exact only if it keeps each block's mask and rotary embedding.
    """
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_blocks,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=pad_token_id,
    )
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    else:
        layer_types = ["sliding_attention", "full_attention"] * (n_blocks // 2) + ["sliding_attention"] * (n_blocks % 2)
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, sliding_window=3, layer_types=layer_types))
    model.config._attn_implementation = "sdpa"
    return model.float().eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_dir):
    """A 4-block random Llama (hidden 32) with the SmolLM2 tokenizer, saved as safetensors."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", len(tokenizer), tokenizer.pad_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_llama(tiny_llama_dir):
    return models.load_model(ModelConfig(model=str(tiny_llama_dir)))


@pytest.fixture(scope="session")
def small_pairs(tmp_path_factory):
    """16 trained + 6 control pairs of the default dataset, as a TSV file and a frame."""
    pairs = data.load_pairs()
    sets = data.split_sets(pairs)
    subset = pd.concat([sets["trained"].iloc[::39].head(16), sets["control"].head(6)], ignore_index=True)
    path = tmp_path_factory.mktemp("pairs") / "small.tsv"
    data.write_pairs(subset, path)
    return path, data.load_pairs(path)
