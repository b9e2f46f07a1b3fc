"""The trial memory estimate (`tli.memory`): its parts against independent counts on tiny models, the review's
figures for Llama-3-8B, the GPU share `--gpus-per-trial auto` takes, and measured CPU peaks of the embedded models.
"""

from __future__ import annotations

import dataclasses
import inspect
import tempfile

import pytest
import torch
from transformers import LlamaConfig

from tli import memory, surgery
from tli.config import TrainConfig
from tli.errors import TliError

from conftest import tiny_model

LLAMA3_8B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
GIB = 2**30
GPUS = {"A10G": 23028 * 2**20, "A100 80GB": 81920 * 2**20, "H100 80GB": 81559 * 2**20}  # nvidia-smi memory.total


@pytest.fixture(scope="module")
def llama():
    return memory.model_shape(LLAMA3_8B)


def test_llama3_8b_nf4_batch_8_is_the_reviews_7_to_8_5_gb(llama):
    assert llama.parameters == 8_030_261_248  # Llama-3-8B's published count
    peaks = [memory.trial_peak(llama, memory.TrialShape(target_layer=k, nf4=True))["peak"] for k in range(1, 33)]
    assert 7.0 * memory.GB <= min(peaks) and max(peaks) <= 8.5 * memory.GB
    assert peaks == sorted(peaks)  # deeper target layers keep more activations
    bf16 = memory.trial_peak(llama, memory.TrialShape(target_layer=32))
    assert 16.0 * memory.GB < bf16["weights"] < 16.1 * memory.GB and bf16["peak"] < 19 * memory.GB


def test_nf4_weights_by_hand(llama):
    parts = memory.trial_peak(llama, memory.TrialShape(nf4=True))
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)  # q, o; k, v; gate, up, down
    embeddings_and_head = 2 * 128256 * 4096
    norms = 32 * 2 * 4096 + 4096
    assert parts["weights"] == int(linear * (0.5 + 4 / 64) + (embeddings_and_head + norms) * 2)
    assert parts["dequantise"] == 2 * 4096 * 14336 * 2
    assert memory.trial_peak(llama, memory.TrialShape(nf4=True, cuda=False))["context"] == 0


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_weights_and_lora_match_a_real_model(family):
    """Weights: the bytes of a tiny model's parameters; LoRA: PEFT's trainable parameters (x 16 bytes)."""
    from tli.train import attach_lora

    model = tiny_model(family, vocab_size=64, pad_token_id=0, n_blocks=3)
    shape = memory.model_shape(model.config)
    parts = memory.trial_peak(shape, memory.TrialShape(target_layer=2, lora_rank=4, weight_bytes=4, compute_bytes=4))
    assert parts["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
    peft_model = attach_lora(model, TrainConfig(target_layer=2, lora_rank=4))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert parts["lora"] == trainable * 16


def test_nf4_weights_match_bitsandbytes_on_the_cpu():
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, vocab_size=512
    )
    with tempfile.TemporaryDirectory() as folder:
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)  # random weights
        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=nf4, device_map={"": "cpu"})
    parts = memory.trial_peak(memory.model_shape(config), memory.TrialShape(nf4=True, weight_bytes=4))
    measured = sum(p.numel() * p.element_size() for p in model.parameters())  # 4-bit codes, uint8 x 2 per byte
    states = [getattr(getattr(m, "weight", None), "quant_state", None) for m in model.modules()]
    absmax = sum(state.absmax.numel() * state.absmax.element_size() for state in states if state is not None)
    assert parts["weights"] == pytest.approx(measured + absmax, rel=1e-3)


def test_training_activations_grow_with_the_target_layer_and_full_forward(llama):
    at = {k: memory.trial_peak(llama, memory.TrialShape(target_layer=k, drift_tokens=0))["step"] for k in (8, 16)}
    per_block = 16 * 16 * (8 * 4096 + 3 * 14336) * 2  # 2b words x t tokens x (8 h + 3 i) x bf16
    assert at[16] - at[8] == 8 * per_block
    full = memory.trial_peak(llama, memory.TrialShape(target_layer=8, full_forward=True, drift_tokens=0))
    assert full["step"] == 32 * per_block + 16 * 16 * 128256 * 2
    assert full["lora"] == 32 * 16 * (4096 + 4096 + 4096 + 1024) * 16


@pytest.mark.parametrize(
    ("gpu", "precision", "trials", "share"),
    [
        ("A10G", "nf4", 2, 0.5),
        ("A100 80GB", "nf4", 8, 0.125),
        ("H100 80GB", "nf4", 8, 0.125),
        ("A10G", "bf16", 1, 1.0),
        ("A100 80GB", "bf16", 4, 0.25),
        ("H100 80GB", "bf16", 4, 0.25),
    ],
)
def test_auto_share_of_llama3_8b_on_common_gpus(llama, gpu, precision, trials, share):
    peak = memory.trial_peak(llama, memory.TrialShape(target_layer=32, nf4=precision == "nf4"))["peak"]
    assert memory.trials_per_gpu(peak, GPUS[gpu]) == trials
    assert memory.gpu_share(trials) == share
    assert trials * share <= 1


def test_share_rounds_down_to_rays_resolution_and_a_trial_that_cannot_fit_is_refused():
    assert [memory.gpu_share(n) for n in (1, 2, 3, 6, 7)] == [1.0, 0.5, 0.3333, 0.1666, 0.1428]
    assert memory.trials_per_gpu(1 * memory.GB, 80 * memory.GB) == memory.MAX_TRIALS_PER_GPU
    with pytest.raises(TliError, match=r"a trial needs about 23.0 GB, more than the 21.6 GB usable of a 24.0 GB GPU"):
        memory.trials_per_gpu(int(23 * memory.GB), int(24 * memory.GB))


def test_shapes_are_frozen_records():
    shape = memory.TrialShape()
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape.target_layer = 3


def test_trial_shape_follows_the_settings():
    from tli.config import ModelConfig

    train = TrainConfig(target_layer=7, lora_rank=8, batch_size=4, full_forward=True)
    gpu = memory.trial_shape(ModelConfig(quantization="nf4"), train, True, word_tokens=9, drift_tokens=24)
    assert (gpu.target_layer, gpu.lora_rank, gpu.batch_size, gpu.word_tokens, gpu.drift_tokens) == (7, 8, 4, 9, 24)
    assert gpu.nf4 and gpu.cuda and gpu.full_forward and (gpu.weight_bytes, gpu.compute_bytes) == (2, 2)
    cpu = memory.trial_shape(ModelConfig(), TrainConfig(), False, word_tokens=9, drift_tokens=0)
    assert (cpu.weight_bytes, cpu.cuda, cpu.nf4) == (4, False, False)
    llama = memory.model_shape(LLAMA3_8B)
    drift = memory.trial_peak(llama, dataclasses.replace(cpu, drift_tokens=24))["step"]
    assert memory.trial_peak(llama, cpu)["step"] < drift == 13 * 24 * 128256 * 8 + 24 * 128256 * 4 + 8192 * 4096 * 4
    assert inspect.signature(surgery.lm_head_float32).parameters["chunk"].default == memory.HEAD_CHUNK


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_the_estimate_matches_a_trials_measured_peak_on_the_cpu(alias):
    """benchmarks.bench_memory --estimate, in its own process: one smoke trial at layer L. Measured on a loaded 2-core
    machine: SmolLM2 662 MiB estimated, 681 MiB measured (the tokenizer's 44 MiB apart); Gemma 3 1,270 / 1,345 MiB
    (tokenizer 320 MiB).
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        f"import json; from benchmarks import bench_memory as b; print(json.dumps(b.peak_against_estimate({alias!r})))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=900, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["context"] == 0 and result["weights"] > 0.75 * result["estimated"]
    assert 0.85 < result["estimated"] / result["measured_less_tokenizer"] < 1.1, result


def test_the_translation_probe_s_scoring_pass_counts_where_it_is_the_largest_transient():
    from tli.probe import LOGIT_BUDGET

    smollm2 = memory.ModelShape(30, 576, 1536, 49152, 0, 0, 0, (("q_proj", 576, 576), ("v_proj", 576, 192)))
    for compute_bytes, per_logit in ((4, 8), (2, 10)):  # logits, their float32 copy unless fp32, the log-softmax
        shape = memory.TrialShape(weight_bytes=compute_bytes, compute_bytes=compute_bytes)
        without = memory.trial_peak(smollm2, shape)["step"]
        assert without < LOGIT_BUDGET * per_logit  # drift of 24 tokens over 49,152 words: smaller
        assert memory.trial_peak(smollm2, dataclasses.replace(shape, probe=True))["step"] == LOGIT_BUDGET * per_logit
