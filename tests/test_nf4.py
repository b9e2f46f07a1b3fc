"""The paper's quantized protocol on the CPU: NF4 (bitsandbytes) scan and short training on the embedded models.

NF4 changes the weights, so results are compared with fp32 within a tolerance (the README states the
measured distance), never for equality.
"""

import logging
import subprocess
import sys

import numpy as np
import pytest

from tli import data, surgery
from tli.config import ModelConfig, ScanConfig, TrainConfig
from tli.models import load_model
from tli.scan import scan_layers
from tli.train import train_tli

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
    assert len(nf4) == 3 and np.isfinite(nf4["loss"]).all()
    # Step 1 runs the base model (LoRA B starts at zero): NF4 and fp32 see the same batch.
    assert abs(nf4["loss"].iat[0] - fp32["loss"].iat[0]) < 0.05
