"""The paper's quantized protocols on the CPU: NF4 (bitsandbytes) scan and short training on the embedded models;
the FP4 evaluation with the adapter merged into the 4-bit weights (the paper's Table 1) on a tiny random model.

NF4 changes the weights, so results are compared with fp32 within a tolerance (the README states the
measured distance), never for equality; a merge into 4-bit weights is checked against bitsandbytes' own
quantisation of the sum, computed here.
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from tli import adapters, data, pooling, surgery
from tli.cli import main
from tli.config import ModelConfig, ScanConfig, TrainConfig
from tli.models import load_model
from tli.scan import scan_layers
from tli.train import train_tli

from conftest import tiny_model

pytestmark = pytest.mark.slow

MODELS = ("smollm2-135m", "gemma3-270m")


def _trained_pairs(n: int):
    """N trained pairs spread over the default dataset."""
    trained = data.split_sets(data.load_pairs())["trained"]
    return trained.iloc[:: len(trained) // n].head(n).reset_index(drop=True)


def _load(alias: str, quantization: str):
    return load_model(ModelConfig(model=alias, device="cpu", quantization=quantization))


def test_bitsandbytes_cpu_kernel_notice_is_silenced():
    # bitsandbytes logs it at import (on CPUs with AVX512-BF16), and peft imports bitsandbytes.
    command = [sys.executable, "-c", "import tli.cli, bitsandbytes"]
    stderr = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    assert "kernels-community" not in stderr
    ops_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    record = ops_logger.makeRecord(
        ops_logger.name,
        logging.WARNING,
        __file__,
        0,
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s",
        ("x",),
        None,
    )
    assert not ops_logger.filter(record)
    other = ops_logger.makeRecord(ops_logger.name, logging.WARNING, __file__, 0, "something else", (), None)
    assert ops_logger.filter(other)  # only that one notice is dropped


@pytest.mark.parametrize("alias", MODELS)
def test_nf4_scan_is_finite_and_close_to_fp32(alias):
    pairs = _trained_pairs(64)  # centred figures of fewer pairs move by up to 0.1 under NF4
    config = ScanConfig(pooling="mean_content")
    tables = {}
    for quantization in ("none", "nf4"):
        model, tokenizer = _load(alias, quantization)
        n_layers = surgery.num_layers(model)
        if quantization == "nf4":
            import bitsandbytes as bnb

            assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        tables[quantization] = scan_layers(model, tokenizer, pairs, config, progress=False)
        del model
    fp32, nf4 = tables["none"], tables["nf4"]
    assert list(nf4["layer"]) == list(fp32["layer"]) == list(range(n_layers + 1))
    numeric = [c for c in nf4.columns if c not in ("layer_name", "pooling")]
    assert np.isfinite(nf4[numeric].to_numpy(dtype=float)).all()
    np.testing.assert_allclose(nf4["cosine_mean"], fp32["cosine_mean"], atol=0.05)
    np.testing.assert_allclose(nf4["centered_gap"], fp32["centered_gap"], atol=0.06)


@pytest.mark.parametrize("alias", MODELS)
def test_nf4_short_training_is_finite_and_close_to_fp32(alias):
    pairs = _trained_pairs(24)
    config = TrainConfig(target_layer=2, epochs=1, batch_size=8, warmup_steps=0, lora_dropout=0.0)
    logs = {}
    for quantization in ("none", "nf4"):
        model, tokenizer = _load(alias, quantization)
        peft_model, logs[quantization] = train_tli(model, tokenizer, pairs, config, progress=False)
        lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter learnt something
        del model, peft_model
    fp32, nf4 = logs["none"], logs["nf4"]
    assert len(nf4) == 1 + 3 and np.isfinite(nf4["loss"]).all()
    # Steps 0 and 1 run the base model (LoRA B starts at zero): NF4 and fp32 see the same batches.
    assert abs(nf4["loss"].iat[0] - fp32["loss"].iat[0]) < 0.05 and abs(nf4["loss"].iat[1] - fp32["loss"].iat[1]) < 0.05


# --- the paper's Table 1 evaluation: FP4, the adapter merged into the 4-bit weights ---------------


@pytest.fixture(scope="module")
def tiny_fp4_dir(tmp_path_factory, embedded_dir):
    """A 4-block random Llama of hidden size 64 (bitsandbytes' CPU kernels need rows of at least one 64-block)."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    folder = tmp_path_factory.mktemp("tiny-fp4")
    tiny_model("llama", len(tokenizer), tokenizer.pad_token_id, hidden_size=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_fp4_is_the_author_s_bitsandbytes_config(tiny_fp4_dir):
    import bitsandbytes as bnb

    model, _ = load_model(ModelConfig(model=str(tiny_fp4_dir), device="cpu", dtype="float16", quantization="fp4"))
    linear = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear) == 4 * 7  # q, k, v, o, gate, up, down of 4 blocks
    assert {m.weight.quant_state.quant_type for m in linear} == {"fp4"}
    assert {m.compute_dtype for m in linear} == {torch.float32}  # BitsAndBytesConfig(load_in_4bit=True)'s default
    assert surgery.decoder(model).norm.weight.dtype == torch.float16  # the other modules in fp16, as the author's


def _peft_with_known_lora(model):
    """`model` with a LoRA on q_proj and v_proj whose B is large enough to survive a 4-bit requantisation."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * 0.05
    return peft_model.eval()


def test_merging_into_fp4_weights_after_a_pass_is_bitsandbytes_quantisation_of_the_sum(tiny_fp4_dir):
    """Merged weight = Q(D(W) + (alpha / r) B A), with D/Q bitsandbytes' own FP4 (de)quantisation, computed here,
    after an eval-mode pass without gradients (where bitsandbytes' AVX512-BF16 kernel would have repacked the
    weights into a layout PEFT's merge misreads: tli keeps it off on every 4-bit CPU load).
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from peft.utils.integrations import dequantize_bnb_weight

    model, tokenizer = load_model(ModelConfig(model=str(tiny_fp4_dir), device="cpu", quantization="fp4"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    layer = surgery.decoder(model).layers[1].self_attn.q_proj
    base = dequantize_bnb_weight(layer.weight, state=layer.weight.quant_state).float().clone()
    peft_model = _peft_with_known_lora(model)
    pooling.embed_words(peft_model, tokenizer, ["habari"], [2], ["mean"])  # the pre-TLI pass, on this load
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    delta = surgery.decoder(peft_model.base_model.model).layers[1].self_attn.q_proj.get_delta_weight("default").float()
    merged = adapters.merged(peft_model)
    layer = surgery.decoder(merged).layers[1].self_attn.q_proj
    got = dequantize_bnb_weight(layer.weight, state=layer.weight.quant_state).float()
    quantised, state = bnbf.quantize_4bit(base + delta, quant_type="fp4", blocksize=layer.weight.quant_state.blocksize)
    torch.testing.assert_close(got, bnbf.dequantize_4bit(quantised, state).float())
    assert (got - base).abs().max() > 0.01  # the LoRA survived the requantisation here


def test_evaluate_fp4_with_the_adapter_merged(tiny_fp4_dir, small_pairs, tmp_path):
    """`tli evaluate --quantization fp4 --merge-adapter --dtype float16`: the author's Table 1 evaluation runs on the
    CPU, the pre-TLI pass and the merge on one load; its pre-TLI pass equals the unmerged FP4 evaluation's, and
    evaluation.json records the protocol.
    """
    pairs_path, _ = small_pairs
    adapter = tmp_path / "adapter"
    train = ["train", "--model", str(tiny_fp4_dir), "--pairs", str(pairs_path), "--epochs", "1", "--rank", "4"]
    assert main([*train, "--lr", "0.05", "--warmup-steps", "0", "--output", str(adapter)]) == 0
    tables = {}
    for name, merge in (("merged", ["--merge-adapter"]), ("unmerged", [])):
        out = tmp_path / name
        flags = ["--quantization", "fp4", "--dtype", "float16", "--device", "cpu", "--n-boot", "200", *merge]
        assert main(["evaluate", "--adapter", str(adapter), *flags, "--output", str(out)]) == 0
        tables[name] = pd.read_csv(out / "pairs.csv")
        record = json.loads((out / "evaluation.json").read_text())
        assert record["model"]["quantization"] == "fp4" and record["evaluate"]["merge_adapter"] == bool(merge)
        summary = pd.read_csv(out / "summary.csv")
        assert np.isfinite(summary[["mean_pre", "mean_post", "gap_alike_diff", "centered_gap_alike_diff"]]).all().all()
    merged, unmerged = tables["merged"], tables["unmerged"]
    np.testing.assert_allclose(merged["cosine_pre"], unmerged["cosine_pre"], atol=1e-6)  # the same base, twice
    assert not np.allclose(merged["cosine_post"], merged["cosine_pre"])  # the merged adapter changed something


# --- NF4 trials on the CPU train after eval-mode passes (the sweep embeds the pre-TLI sets first) -------


def _nf4_trial(folder, pairs_file):
    """(settings, inputs with drift samples, a fresh worker cache) of an NF4 trial on the CPU at layer 2."""
    import dataclasses

    from tli import drift
    from tli.sweep.flags import SweepConfig
    from tli.sweep.inputs import load_inputs
    from tli.sweep.trial import WorkerCache
    from tli.sweep.tuner import base_settings

    model = ModelConfig(model=str(folder), device="cpu", quantization="nf4")
    config = SweepConfig(model=model, pairs=str(pairs_file), epochs=2, n_boot=100)
    cache = WorkerCache()
    prompts = {language: texts[:1] for language, texts in drift.DEFAULT_PROMPTS.items()}
    samples = drift.make_samples(*cache.model(model), prompts, new_tokens=4)  # an eval-mode pass, as a sweep's
    inputs = dataclasses.replace(load_inputs(config), drift_samples=samples)
    settings = base_settings(config).replace(lr=1e-2, warmup_steps=0, inputs_digest=inputs.digest)
    return settings, inputs, cache


def test_an_nf4_trial_on_the_cpu_trains_after_eval_mode_passes(tiny_fp4_dir, small_pairs):
    """The sweep embeds the pre-TLI sets in eval mode before training; bitsandbytes must not repack the 4-bit
    weights for its autograd-less CPU kernel then (tli keeps that kernel off), or LoRA would never learn.
    """
    import bitsandbytes as bnb
    from safetensors.torch import load

    from tli.sweep.trial import run_trial

    settings, inputs, cache = _nf4_trial(tiny_fp4_dir, small_pairs[0])
    record = run_trial(settings, inputs, cache, keep_adapter=True)
    row = record.row
    assert row["status"] == "ok", row["error"]
    lora_b = {name: t for name, t in load(record.adapter["adapter_model.safetensors"]).items() if "lora_B" in name}
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b.values())  # every LoRA layer learnt
    assert row["target_trained_mean_diff"] != 0 and row["drift_kl_sw"] > 0 and row["drift_kl_en"] > 0
    assert (row["device_resolved"], row["compute_dtype"]) == ("cpu", "float32")
    model = cache.models[settings.model][0]
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_an_nf4_trial_that_cannot_train_is_an_error_not_a_result(tiny_fp4_dir, small_pairs, monkeypatch):
    """With the repacking kernel left on (a CPU with AVX512-BF16, as this issue measured), LoRA B stays 0: the
    trial is stored as an error saying so, never as `ok` with post = pre.
    """
    from bitsandbytes.functional import has_avx512bf16

    from tli import models
    from tli.sweep.trial import run_trial

    if not has_avx512bf16():
        pytest.skip("this CPU lacks AVX512-BF16: bitsandbytes never repacks here")
    monkeypatch.setattr(models, "_keep_4bit_trainable_on_cpu", lambda model: None)
    settings, inputs, cache = _nf4_trial(tiny_fp4_dir, small_pairs[0])
    row = run_trial(settings, inputs, cache).row
    assert row["status"] == "error" and "training left every LoRA B weight at 0" in row["error"]
