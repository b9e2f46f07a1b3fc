"""GPU path: a Llama-3-8B-shaped model (random weights) in bf16 and NF4, needs CUDA: seconds per trial, GPU memory
against `tli.memory`'s estimate (what `--gpus-per-trial auto` reserves by), and 1, 2 and 4 trials sharing a GPU.

The model is built from a LlamaConfig (hidden 4096, MLP 14336, 32 blocks, 32 heads, 8 KV heads,
vocab 128256; nothing downloaded), initialised on the GPU in bf16 and saved once as safetensors with
the embedded SmolLM2 tokenizer (its ids are < 128256), so both precisions load through tli's own
`models.load_model` (`--dtype bfloat16`, `--quantization nf4`). Each trial is the sweep's worker path
(`tli.sweep.trial.run_trial` with one `WorkerCache`: LoRA at the target layer, the paper's
hyperparameters on the 623 trained pairs less the validation split, evaluation at the target layer and L,
drift on the base model's continuations of the 16 default prompts, made once) at target layers 2, 16, 31.

Reported per trial: train / eval / drift / total seconds; GPU memory: PyTorch's peak allocated and peak
reserved (the caching allocator's hold), the device's used memory after the trial (total - free: the
CUDA context included), and tli.memory's estimated peak of that trial (context included); the projected
time of a 32-layer x 3-seed sweep on this one GPU with trials one after another. Then, at one layer, n
trials at once on the GPU (n = 2, 4: one process each, as Ray runs n actors, each with its own CUDA
context; started together once every process has loaded its model; n = 1 is the trial above at that
layer, when it is one of --layers): the wall seconds of the n trials,
each one's seconds and peak reserved memory, the device's peak used memory (nvidia-smi, polled), and the
projected sweep time with n trials per GPU. A count that does not fit is reported as out of memory.

    .venv/bin/python -m benchmarks.bench_gpu                      # needs ~35 GB disk for the weights
    .venv/bin/python -m benchmarks.bench_gpu --quick              # gpu_check.sh's short run: nf4, 1 epoch
Without CUDA it prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import tempfile
import threading
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
SWEEP_TRIALS = 32 * 3  # the headline run: target layers 1..32 x 3 seeds
QUICK = [
    "--precisions",
    "nf4",
    "--epochs",
    "1",
    "--layers",
    "2,31",
    "--concurrent",
    "1,2,4",
    "--concurrent-layer",
    "16",
]


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


def _sweep_config(folder: Path, precision: str, epochs: int):
    from tli.config import ModelConfig
    from tli.sweep.flags import SweepConfig

    quantization = "none" if precision == "bfloat16" else precision
    return SweepConfig(model=ModelConfig(str(folder), "cuda", "bfloat16", quantization), epochs=epochs)


def _estimate_gb(settings, inputs) -> float:
    """tli.memory's estimate of one trial's peak on the GPU (what --gpus-per-trial auto reserves by), in GB."""
    from tli import memory
    from tli.sweep.resources import largest_peak

    return largest_peak([settings], inputs, smoke=False) / memory.GB


def _device_used_gb() -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 1e9


def time_trials(folder: Path, precision: str, layers: Sequence[int], epochs: int) -> tuple[list[dict], object]:
    """One trial per target layer, in one WorkerCache (the model loaded once), timed; also returns the inputs
    (drift samples made once) for the concurrent runs.
    """
    from tli import drift
    from tli.sweep.inputs import load_inputs
    from tli.sweep.trial import WorkerCache, run_trial
    from tli.sweep.tuner import base_settings

    config = _sweep_config(folder, precision, epochs)
    cache = WorkerCache()
    started = time.perf_counter()
    model, tokenizer = cache.model(config.model)
    load_s = time.perf_counter() - started
    inputs = dataclasses.replace(load_inputs(config), drift_samples=drift.make_samples(model, tokenizer))
    base = base_settings(config).replace(inputs_digest=inputs.digest)
    del model
    rows = []
    for layer in layers:
        settings = base.replace(target_layer=layer)
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        row = run_trial(settings, inputs, cache).row
        torch.cuda.synchronize()
        if row["status"] != "ok":
            raise RuntimeError(f"trial at layer {layer} failed: {row['error']}")
        rows.append(
            {
                "precision": precision,
                "target_layer": layer,
                "trial_s": time.perf_counter() - started,
                "train_s": row["train_seconds"],
                "eval_s": row["eval_seconds"],
                "drift_s": row["drift_seconds"],
                "model_load_s": load_s,
                "allocated_peak_gb": torch.cuda.max_memory_allocated() / 1e9,
                "reserved_peak_gb": torch.cuda.max_memory_reserved() / 1e9,
                "device_used_gb": _device_used_gb(),
                "estimate_gb": _estimate_gb(settings, inputs),
                "gpu": row["gpu_name"],
                "drift_kl_sw": row["drift_kl_sw"],
                "drift_floor_sw": row["drift_floor_sw"],
            }
        )
        load_s = 0.0  # loaded once per worker
    del cache
    torch.cuda.empty_cache()
    return rows, inputs


def projected_sweep_minutes(rows: list[dict], n_layers: int = 32, seeds: int = 3) -> float:
    """Minutes of a layers 1..n_layers x seeds sweep, trial seconds interpolated linearly over the layer."""
    layers = [r["target_layer"] for r in rows]
    seconds = [r["trial_s"] for r in rows]
    per_layer = np.interp(np.arange(1, n_layers + 1), layers, seconds)
    return float(per_layer.sum() * seeds / 60)


def _one_of_many(folder, precision, epochs, layer, seed, inputs, barrier, results) -> None:
    """A process of `concurrent_trials`: load, wait for the others, run one trial, put what it measured."""
    from tli.sweep.trial import WorkerCache, run_trial
    from tli.sweep.tuner import base_settings

    config = _sweep_config(folder, precision, epochs)
    try:
        cache = WorkerCache()
        cache.model(config.model)
        settings = base_settings(config).replace(target_layer=layer, seed=seed, inputs_digest=inputs.digest)
        barrier.wait()
        started = time.perf_counter()
        row = run_trial(settings, inputs, cache).row
        torch.cuda.synchronize()
        results.put(
            {
                "status": row["status"] if row["status"] == "ok" else f"error: {row['error']}",
                "trial_s": time.perf_counter() - started,
                "reserved_peak_gb": torch.cuda.max_memory_reserved() / 1e9,
            }
        )
    except torch.OutOfMemoryError:
        barrier.abort()
        results.put({"status": "out of memory", "trial_s": math.nan, "reserved_peak_gb": math.nan})


def _poll_used_gb(stop: threading.Event, peaks: list[float]) -> None:
    """The device's used memory (nvidia-smi, every 0.5 s), its maximum kept in peaks[0]."""
    command = ["nvidia-smi", "--id=0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    while not stop.is_set():
        try:
            used = float(subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.split()[0])
            peaks[0] = max(peaks[0], used * 2**20 / 1e9)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
        stop.wait(0.5)


def concurrent_trials(folder: Path, precision: str, layer: int, epochs: int, n: int, inputs) -> dict:
    """The wall seconds and memory of `n` trials at `layer` at once on GPU 0, one process each (as n Ray actors)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n + 1), context.Queue()
    processes = [
        context.Process(target=_one_of_many, args=(folder, precision, epochs, layer, seed, inputs, barrier, results))
        for seed in range(n)
    ]
    for process in processes:
        process.start()
    stop, peaks = threading.Event(), [0.0]
    poller = threading.Thread(target=_poll_used_gb, args=(stop, peaks), daemon=True)
    try:
        barrier.wait(timeout=900)  # every process has loaded its model
        poller.start()
        started = time.perf_counter()
        measured = [results.get(timeout=1800) for _ in processes]
        wall = time.perf_counter() - started
    except threading.BrokenBarrierError:
        measured, wall = [results.get(timeout=60)], math.nan
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    ok = all(m["status"] == "ok" for m in measured) and len(measured) == n
    return {
        "precision": precision,
        "trials_per_gpu": n,
        "status": "ok" if ok else "; ".join(sorted({m["status"] for m in measured if m["status"] != "ok"})),
        "wall_s": wall,
        "trial_s_mean": float(np.nanmean([m["trial_s"] for m in measured])),
        "reserved_peak_gb_max": float(np.nanmax([m["reserved_peak_gb"] for m in measured])),
        "device_used_peak_gb": peaks[0],
        "projected_sweep_min": SWEEP_TRIALS / n * wall / 60 if ok else math.nan,
    }


def alone(row: dict) -> dict:
    """A trial of `time_trials` as the one-trial-per-GPU row of the concurrency table."""
    return {
        "precision": row["precision"],
        "trials_per_gpu": 1,
        "status": "ok",
        "wall_s": row["trial_s"],
        "trial_s_mean": row["trial_s"],
        "reserved_peak_gb_max": row["reserved_peak_gb"],
        "device_used_peak_gb": row["device_used_gb"],
        "projected_sweep_min": SWEEP_TRIALS * row["trial_s"] / 60,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[2, 16, 31])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per trial (default: the paper's 5)")
    parser.add_argument("--precisions", default="bfloat16,nf4", help="bfloat16 and/or nf4 (default: %(default)s)")
    parser.add_argument("--concurrent", default="2,4", help="trials at once on the GPU (default: %(default)s)")
    parser.add_argument("--concurrent-layer", type=int, default=16, help="their target layer (default: %(default)s)")
    parser.add_argument("--workdir", default=None, help="where the random weights are saved (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help=f"gpu_check.sh's short run: {' '.join(QUICK)}")
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.quick:  # its flags first: any given after them wins
        args = parser.parse_args([*QUICK, *given])
    if not torch.cuda.is_available():
        message = (
            "bench_gpu: CUDA is not available on this machine: nothing measured. Run it on a GPU machine "
            "(see benchmarks/README.md, 'GPU path')."
        )
        print(message, file=sys.stderr)
        return {"skipped": message}
    rows, together = [], []
    with tempfile.TemporaryDirectory(prefix="bench_gpu-", dir=args.workdir) as scratch:
        folder = build_random_llama(Path(scratch) / "llama3-8b-shaped")
        for precision in args.precisions.split(","):
            measured, inputs = time_trials(folder, precision, args.layers, args.epochs)
            rows += measured
            together += [alone(row) for row in measured if row["target_layer"] == args.concurrent_layer]
            for n in (int(x) for x in args.concurrent.split(",") if x):
                together.append(concurrent_trials(folder, precision, args.concurrent_layer, args.epochs, n, inputs))
    projections = {
        p: projected_sweep_minutes([r for r in rows if r["precision"] == p])
        for p in dict.fromkeys(r["precision"] for r in rows)
    }
    print_table(f"GPU trials, Llama-3-8B shape, {args.epochs} epochs, one after another", rows, MODULE, argv)
    for precision, minutes in projections.items():
        print(f"projected 32-layer x 3-seed sweep, {precision}, one GPU, trials in sequence: {minutes:.1f} min")
    print_table(f"trials sharing one GPU at layer {args.concurrent_layer}", together, MODULE, argv)
    return {"rows": rows, "projected_minutes": projections, "concurrent": together}


if __name__ == "__main__":
    sys.exit(2 if "skipped" in main() else 0)
