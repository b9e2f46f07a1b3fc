"""GPU path: seconds per trial of a Llama-3-8B-shaped model (random weights) in bf16 and NF4, needs CUDA.

The model is built from a LlamaConfig (hidden 4096, MLP 14336, 32 blocks, 32 heads, 8 KV heads,
vocab 128256; nothing downloaded), initialised on the GPU in bf16 and saved once as safetensors with
the embedded SmolLM2 tokenizer (its ids are < 128256), so both precisions load through tli's own
`models.load_model` (`--dtype bfloat16`, `--quantization nf4`). Each trial is the sweep's worker path
(`tli.sweep.trial.run_trial` with one `WorkerCache`: LoRA at the target layer, the paper's
hyperparameters on the 623 trained pairs less the validation split, evaluation at the target layer and L,
drift on the base model's continuations of the 16 default prompts, made once) at target layers 2, 16, 31.
Reported: train / eval / drift / total seconds per trial, peak GPU memory, GPU memory after each trial, and the
projected time of a 32-layer x 3-seed sweep on this one GPU (per-trial seconds interpolated over the
layers, trials run one after another).

    .venv/bin/python -m benchmarks.bench_gpu                      # needs ~35 GB disk for the weights
    .venv/bin/python -m benchmarks.bench_gpu --epochs 1 --layers 2  # a quicker look
Without CUDA it prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import print_table

MODULE = "benchmarks.bench_gpu"
LLAMA3_8B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)


def build_random_llama(folder: Path) -> Path:
    """Save a random-weight Llama-3-8B-shaped model (bf16) and a tokenizer to `folder`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tli import models

    tokenizer = AutoTokenizer.from_pretrained(models.embedded_model_dir("smollm2-135m"))
    config = LlamaConfig(
        **LLAMA3_8B_SHAPE,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def time_trials(folder: Path, dtype: str, quantization: str, layers: Sequence[int], epochs: int) -> list[dict]:
    """One trial per target layer, in one WorkerCache (the model loaded once), timed."""
    from tli import drift
    from tli.config import ModelConfig
    from tli.sweep.flags import SweepConfig
    from tli.sweep.inputs import load_inputs
    from tli.sweep.trial import WorkerCache, run_trial
    from tli.sweep.tuner import base_settings

    config = SweepConfig(model=ModelConfig(str(folder), "cuda", dtype, quantization), epochs=epochs)
    cache = WorkerCache()
    started = time.perf_counter()
    model, tokenizer = cache.model(config.model)
    load_s = time.perf_counter() - started
    inputs = dataclasses.replace(load_inputs(config), drift_samples=drift.make_samples(model, tokenizer))
    base = base_settings(config).replace(inputs_digest=inputs.digest)
    del model
    rows = []
    for layer in layers:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        row = run_trial(base.replace(target_layer=layer), inputs, cache).row
        torch.cuda.synchronize()
        if row["status"] != "ok":
            raise RuntimeError(f"trial at layer {layer} failed: {row['error']}")
        rows.append(
            {
                "precision": quantization if quantization != "none" else dtype,
                "target_layer": layer,
                "trial_s": time.perf_counter() - started,
                "train_s": row["train_seconds"],
                "eval_s": row["eval_seconds"],
                "drift_s": row["drift_seconds"],
                "model_load_s": load_s,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9,
                "gpu_gb_after": torch.cuda.memory_allocated() / 1e9,
            }
        )
        load_s = 0.0  # loaded once per worker
    del cache
    torch.cuda.empty_cache()
    return rows


def projected_sweep_minutes(rows: list[dict], n_layers: int = 32, seeds: int = 3) -> float:
    """Minutes of a layers 1..n_layers x seeds sweep, trial seconds interpolated linearly over the layer."""
    layers = [r["target_layer"] for r in rows]
    seconds = [r["trial_s"] for r in rows]
    per_layer = np.interp(np.arange(1, n_layers + 1), layers, seconds)
    return float(per_layer.sum() * seeds / 60)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[2, 16, 31])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per trial (default: the paper's 5)")
    parser.add_argument("--precisions", default="bfloat16,nf4", help="bfloat16 and/or nf4 (default: %(default)s)")
    parser.add_argument("--workdir", default=None, help="where the random weights are saved (default: a temp dir)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        message = (
            "bench_gpu: CUDA is not available on this machine: nothing measured. Run it on a GPU machine "
            "(see benchmarks/README.md, 'GPU path')."
        )
        print(message, file=sys.stderr)
        return {"skipped": message}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu-", dir=args.workdir) as scratch:
        folder = build_random_llama(Path(scratch) / "llama3-8b-shaped")
        for precision in args.precisions.split(","):
            dtype, quantization = ("bfloat16", "none") if precision == "bfloat16" else ("bfloat16", precision)
            rows += time_trials(folder, dtype, quantization, args.layers, args.epochs)
    projections = {
        p: projected_sweep_minutes([r for r in rows if r["precision"] == p])
        for p in dict.fromkeys(r["precision"] for r in rows)
    }
    print_table(f"GPU trials, Llama-3-8B shape, {args.epochs} epochs", rows, MODULE, argv)
    for precision, minutes in projections.items():
        print(
            f"projected 32-layer x 3-seed sweep, {precision}, one GPU, trials in sequence: {minutes:.1f} min "
            f"(target <= 15 min on one H100)"
        )
    return {"rows": rows, "projected_minutes": projections}


if __name__ == "__main__":
    sys.exit(2 if "skipped" in main() else 0)
