"""Memory: peak RSS of a trial on the embedded model, RSS across consecutive trials in one process, and a trial's
measured peak against `tli.memory`'s estimate (what `--gpus-per-trial auto` relies on).

Each trial is the sweep's own worker path (`tli.sweep.trial.run_trial` with one `WorkerCache`, as a
Ray worker runs it, on a smoke sweep's inputs and settings): attach LoRA at layer 2, train one epoch on
the smoke pairs (16 trained pairs less the validation split: 2 steps), evaluate pre/post at layers 2 and
L (200 bootstrap resamples), measure drift on 2 + 2 drift samples of 8 tokens (made once, as a smoke
sweep makes them), then `unload()` the LoRA layers. RSS (psutil, else /proc/self/status VmRSS) is read
after every trial; the process peak (getrusage ru_maxrss) is read after model load and after the first
trial. The check: RSS after the last trial minus RSS after trial 3 (allocator warm-up done) stays
under `--tolerance-mb`.

    .venv/bin/python -m benchmarks.bench_memory               # 20 trials, a minute or two
    .venv/bin/python -m benchmarks.bench_memory --smoke-test  # 5 trials
    .venv/bin/python -m benchmarks.bench_memory --estimate gemma3-270m  # one trial at layer L: peak vs estimate

The estimate check (`--estimate MODEL`, its own process per model): RSS after imports, then the model loaded,
the peak RSS counter reset (`/proc/self/clear_refs`: the loader's transient copies are not a trial's), one smoke
trial at the deepest target layer L (the most activations), the peak (VmHWM) minus the RSS after imports: the
model and the trial together, as `tli.memory.trial_peak` counts them on the CPU (no CUDA context), plus host
memory a GPU never holds, chiefly the tokenizer (measured by loading one first, reported apart).
"""

from __future__ import annotations

import dataclasses
import gc
import resource
from collections.abc import Sequence
from pathlib import Path

from benchmarks import _common
from benchmarks._common import print_table
from tli import drift, memory, models
from tli.config import ModelConfig
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import load_inputs
from tli.sweep.trial import WorkerCache, has_lora, run_trial
from tli.sweep.tuner import base_settings

MODULE = "benchmarks.bench_memory"
MB = 1024 * 1024


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise


def high_water_bytes() -> int:
    """The peak RSS since the last `reset_high_water` (VmHWM of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def reset_high_water() -> None:
    """Reset this process's peak RSS to its current RSS (Linux: 5 > /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """The process's peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(n_trials: int, tolerance_mb: float, model_name: str = "smollm2-135m") -> dict[str, object]:
    config = SweepConfig(model=ModelConfig(model=model_name, device="cpu"), smoke_test=True)
    cache = WorkerCache()
    start_rss = rss_bytes()
    cache.model(config.model)
    after_load, peak_after_load = rss_bytes(), peak_rss_bytes()
    prompts = {language: texts[:2] for language, texts in drift.DEFAULT_PROMPTS.items()}  # as a smoke sweep's
    samples = drift.make_samples(*cache.model(config.model), prompts, new_tokens=8)
    inputs = dataclasses.replace(load_inputs(config), drift_samples=samples)
    base = base_settings(config).replace(inputs_digest=inputs.digest)
    rss, peak_after_first = [], None
    for trial in range(n_trials):
        record = run_trial(base.replace(target_layer=2, seed=trial), inputs, cache)
        if record.row["status"] != "ok":
            raise RuntimeError(f"trial {trial + 1} failed: {record.row['error']}")
        del record
        gc.collect()
        rss.append(rss_bytes())
        if trial == 0:
            peak_after_first = peak_rss_bytes()
    warm = min(2, n_trials - 1)  # trial 3 (index 2): allocator and caches warmed up
    growth_mb = (rss[-1] - rss[warm]) / MB
    rows = [
        {"measure": "RSS before model load", "MB": start_rss / MB},
        {"measure": "RSS after model load", "MB": after_load / MB},
        {"measure": "peak RSS after model load (ru_maxrss)", "MB": peak_after_load / MB},
        {"measure": "peak RSS after trial 1 (ru_maxrss): a trial's peak", "MB": peak_after_first / MB},
        {"measure": "peak RSS of trial 1 above the loaded model", "MB": (peak_after_first - after_load) / MB},
        *({"measure": f"RSS after trial {i + 1}", "MB": value / MB} for i, value in enumerate(rss)),
        {"measure": f"growth, trial {warm + 1} -> trial {n_trials} (tolerance {tolerance_mb:g})", "MB": growth_mb},
    ]
    return {
        "rows": rows,
        "rss_mb": [value / MB for value in rss],
        "growth_mb": growth_mb,
        "peak_trial_mb": peak_after_first / MB,
        "ok": growth_mb < tolerance_mb,
        "lora_left": has_lora(cache.models[config.model][0]),
    }


def peak_against_estimate(model_name: str) -> dict[str, object]:
    """One smoke trial of `model_name` on the CPU at target layer L: its measured peak RSS above the process's
    imports, and tli.memory's estimate of it, in bytes, with the estimate's parts.
    """
    before_tokenizer = rss_bytes()
    tokenizer_copy = models.load_tokenizer(model_name)  # kept: the cache loads its own copy
    before_load = rss_bytes()
    config = SweepConfig(model=ModelConfig(model=model_name, device="cpu"), smoke_test=True)
    cache = WorkerCache()
    model, tokenizer = cache.model(config.model)
    prompts = {language: texts[:2] for language, texts in drift.DEFAULT_PROMPTS.items()}  # as a smoke sweep's
    samples = drift.make_samples(model, tokenizer, prompts, new_tokens=8)
    inputs = dataclasses.replace(load_inputs(config), drift_samples=samples)
    n_layers = models.num_layers(model_name)
    settings = base_settings(config).replace(target_layer=n_layers, inputs_digest=inputs.digest)
    words = [*inputs.lexicon.swahili, *inputs.lexicon.english]
    word_tokens = max(len(ids) for ids in tokenizer(words, add_special_tokens=True)["input_ids"])
    shape = memory.trial_shape(settings.model, settings.train, False, word_tokens, 8)
    parts = memory.trial_peak(memory.model_shape(model.config), shape)
    del model
    gc.collect()
    reset_high_water()
    row = run_trial(settings, inputs, cache).row
    if row["status"] != "ok":
        raise RuntimeError(f"the trial failed: {row['error']}")
    measured, tokenizer_bytes = high_water_bytes() - before_load, before_load - before_tokenizer
    del tokenizer_copy
    return {
        "model": model_name,
        "measured": measured,
        "tokenizer": tokenizer_bytes,  # host memory only: never on a GPU
        "measured_less_tokenizer": measured - tokenizer_bytes,
        "estimated": parts["peak"],
        **parts,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = _common.parser(__doc__, "5 trials")
    parser.add_argument("--trials", type=int, default=20, help="consecutive trials (default: %(default)s)")
    parser.add_argument("--tolerance-mb", type=float, default=50.0, help="allowed growth (default: %(default)s MB)")
    parser.add_argument("--estimate", metavar="MODEL", help="instead: one trial's peak against tli.memory's estimate")
    args = _common.parse(parser, argv)
    if args.estimate:
        result = peak_against_estimate(args.estimate)
        rows = [{"part": name, "MiB": value / MB} for name, value in result.items() if name != "model"]
        print_table(f"memory: a smoke trial of {args.estimate} at layer L, CPU, against tli.memory", rows, MODULE, argv)
        return result
    if args.smoke_test:
        args.trials = 5
    result = run(args.trials, args.tolerance_mb)
    print_table(
        f"memory: {args.trials} consecutive trials in one process (layer 2, smoke pairs)", result["rows"], MODULE, argv
    )
    verdict = "no growth beyond tolerance" if result["ok"] else "GROWTH beyond tolerance"
    print(f"{verdict}: {result['growth_mb']:.1f} MB; LoRA left in the cached model: {result['lora_left']}")
    return result


if __name__ == "__main__":
    main()
