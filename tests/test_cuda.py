"""What only a GPU can show (every test skips without CUDA; benchmarks/gpu_check.sh runs them on a lent GPU): a
trial on CUDA computes in bf16 and records its GPU, NF4 trains there, `--deterministic` repeats training bit for
bit, tli.memory's estimate covers what PyTorch reserves, and inside Ray a trial uses the GPU Ray gave it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tli import drift, memory, models
from tli.config import ModelConfig, TrainConfig
from tli.sweep import session
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import load_inputs
from tli.sweep.trial import WorkerCache, run_trial
from tli.sweep.tuner import base_settings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh)")

PROMPTS = {language: texts[:2] for language, texts in drift.DEFAULT_PROMPTS.items()}


def _trial(model: ModelConfig, pairs_file, **changes):
    """(settings, inputs with drift samples, cache) of a short trial of `model`."""
    config = SweepConfig(model=model, pairs=str(pairs_file), epochs=2, n_boot=100)
    cache = WorkerCache()
    samples = drift.make_samples(*cache.model(model), PROMPTS, new_tokens=6)
    inputs = dataclasses.replace(load_inputs(config), drift_samples=samples)
    settings = base_settings(config).replace(lr=1e-2, warmup_steps=0, inputs_digest=inputs.digest, **changes)
    return settings, inputs, cache


def test_auto_is_the_gpu_in_bf16_and_the_row_names_it(small_pairs):
    settings, inputs, cache = _trial(ModelConfig(model="smollm2-135m"), small_pairs[0])
    row = run_trial(settings, inputs, cache).row
    assert row["status"] == "ok", row["error"]
    assert row["device_resolved"].startswith("cuda") and row["compute_dtype"] == "bfloat16"
    assert row["gpu_name"] == torch.cuda.get_device_name(0) and row["gpu_id"] is not None
    assert 0 <= row["drift_floor_sw"] < row["drift_kl_sw"]  # bf16: the floor is measured, and drift is above it
    print(f"drift {row['drift_kl_sw']:.3g} nats/token, floor {row['drift_floor_sw']:.3g} ({row['gpu_name']})")


@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_the_estimate_covers_what_pytorch_reserves(alias, small_pairs):
    model = ModelConfig(model=alias)
    settings, inputs, cache = _trial(model, small_pairs[0], target_layer=models.num_layers(alias))
    torch.cuda.reset_peak_memory_stats()
    row = run_trial(settings, inputs, cache).row
    assert row["status"] == "ok", row["error"]
    shape = memory.model_shape(models.model_config(alias))
    words = [*inputs.lexicon.swahili, *inputs.lexicon.english]
    tokens = max(len(ids) for ids in models.load_tokenizer(alias)(words)["input_ids"])
    estimate = memory.trial_peak(shape, memory.trial_shape(model, settings.train, True, tokens, 6))
    reserved, device_part = torch.cuda.max_memory_reserved(), estimate["peak"] - estimate["context"]
    print(f"{alias}: PyTorch reserved {reserved / 1e9:.2f} GB, estimated {device_part / 1e9:.2f} GB + context")
    assert reserved <= device_part / (1 - memory.SAFETY_MARGIN)  # auto's margin covers the allocator's slack


def test_nf4_on_cuda_trains(small_pairs):
    pytest.importorskip("bitsandbytes")
    model = ModelConfig(model="smollm2-135m", quantization="nf4")
    settings, inputs, cache = _trial(model, small_pairs[0])
    row = run_trial(settings, inputs, cache).row
    assert row["status"] == "ok", row["error"]  # not AdapterNoOp: LoRA B learnt and the embeddings moved
    assert row["target_trained_mean_diff"] != 0 and row["compute_dtype"] == "bfloat16"


def test_deterministic_training_repeats_bit_for_bit(small_pairs):
    from tli import train

    model, tokenizer = models.load_model(ModelConfig(model="smollm2-135m"))
    pairs = small_pairs[1][small_pairs[1]["split"] == "trained"]
    config = TrainConfig(target_layer=8, epochs=2, batch_size=4, warmup_steps=0, lr=1e-3, deterministic=True)
    runs = []
    for _ in range(2):
        peft_model, log = train.train_tli(model, tokenizer, pairs, config, progress=False)
        weights = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
        runs.append((log["loss"].tolist(), weights))
        model = peft_model.unload()
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][name], runs[1][1][name]) for name in runs[0][1])


def test_inside_ray_a_trial_uses_the_gpu_ray_gave_it_and_none_without():
    import ray

    with session.keep_loopback():  # 127.0.0.1 kept as given: every server on loopback only
        ray.init(
            num_cpus=2, num_gpus=torch.cuda.device_count(), _node_ip_address=session.LOOPBACK, include_dashboard=False
        )
    try:
        where = ray.remote(lambda: (ray.get_gpu_ids(), models.runs_on(ModelConfig())))
        ids, placement = ray.get(where.options(num_gpus=0.5).remote())
        assert len(ids) == 1 and placement["device_resolved"] == "cuda" and placement["gpu_id"] == str(ids[0])
        ids, placement = ray.get(where.options(num_gpus=0).remote())
        assert ids == [] and placement["device_resolved"] == "cpu" and placement["gpu_id"] is None
    finally:
        ray.shutdown()
