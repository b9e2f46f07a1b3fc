"""Sweep overhead: a 6-trial sweep through the runner (`tli.runner.run_sweep`, local Ray), time split.

The grid is target layer 1, 2, 3 x seed 0, 1 (6 trials, 1 epoch each, 200 bootstrap resamples,
1 CPU per trial, so 2 trials at once on 2 cores). Before the sweep the driver measures, once each
and sequentially: loading the model, the base (pre-TLI) embeddings of every pair at the evaluation
layers, and the sweep's layer scan in all pooling modes (its result is stored first, so the sweep
itself runs trials only). Each worker process loads the model once (`WorkerCache`) and computes the
base embeddings once: the number of distinct worker processes in the trial rows is the number of
model loads. Overhead = 1 - sum(train_seconds + eval_seconds) / (wall seconds x concurrent trials).

    .venv/bin/python -m benchmarks.bench_sweep               # all 686 pairs, a few minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_sweep --smoke-test  # the runner's 22 smoke pairs
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks import _common
from benchmarks._common import print_table
from tli import models, results, runner, surgery
from tli.scan import embed_pairs

MODULE = "benchmarks.bench_sweep"
PARAM_SPACE = {"target_layer": [1, 2, 3], "seed": [0, 1]}


def driver_costs(config: runner.SweepConfig, pairs, store_root: Path) -> dict[str, float]:
    """Seconds of one model load, one base-embedding pass and the layer scan (stored for the sweep)."""
    started = time.perf_counter()
    model, tokenizer = models.load_model(models.ModelConfig(config.model, config.device, config.dtype,
                                                            config.quantization))
    loaded = time.perf_counter()
    n_layers = surgery.num_layers(model)
    layers = sorted({k for k in PARAM_SPACE["target_layer"]} | {n_layers})
    embed_pairs(model, tokenizer, pairs, layers, config.pooling_eval)
    embedded = time.perf_counter()
    key = (config.model, config.device, config.dtype, config.quantization)
    scan = runner.scan_all_poolings(key, pairs)
    scanned = time.perf_counter()
    results.write_table(scan, store_root / "scan.parquet")  # run_sweep finds it and skips its own scan
    del model
    return {"model_load_s": loaded - started, "base_embeddings_s": embedded - loaded, "scan_s": scanned - embedded}


def run(smoke: bool, epochs: int, results_root: Path) -> dict[str, object]:
    config = runner.SweepConfig(experiment="bench_sweep", results=str(results_root), epochs=epochs, n_boot=200,
                                device="cpu", cpus_per_trial=1.0)
    pairs = runner.load_sweep_pairs(runner.SweepConfig(smoke_test=smoke))
    store = config.store()
    store.root.mkdir(parents=True, exist_ok=True)
    costs = driver_costs(config, pairs, store.root)
    started = time.perf_counter()
    trials = runner.run_sweep(PARAM_SPACE, config, pairs)
    wall = time.perf_counter() - started
    ok = trials[trials["status"] == "ok"]
    workers = ok["worker"].nunique()
    concurrency = min(len(ok), max(1, int(torch.multiprocessing.cpu_count() // config.cpus_per_trial)))
    useful = float((ok["train_seconds"] + ok["eval_seconds"]).sum())
    capacity = wall * concurrency
    overhead = 1 - useful / capacity
    per_worker = costs["model_load_s"] + costs["base_embeddings_s"]
    rows = [
        {"part": "sweep wall time (run_sweep, Ray start to merged table)", "seconds": wall},
        {"part": f"capacity = wall x {concurrency} concurrent trials", "seconds": capacity},
        {"part": f"training, sum over {len(ok)} trials", "seconds": float(ok["train_seconds"].sum())},
        {"part": f"evaluation, sum over {len(ok)} trials", "seconds": float(ok["eval_seconds"].sum())},
        {"part": f"model load, once per worker ({workers} workers; driver-measured {costs['model_load_s']:.1f} s)",
         "seconds": workers * costs["model_load_s"]},
        {"part": f"base embeddings, once per worker (driver-measured {costs['base_embeddings_s']:.1f} s)",
         "seconds": workers * costs["base_embeddings_s"]},
        {"part": "Ray scheduling, start-up and the rest", "seconds": capacity - useful - workers * per_worker},
        {"part": "overhead fraction = 1 - (train + eval) / capacity", "seconds": overhead},
        {"part": "layer scan, all poolings (once per sweep, measured before it)", "seconds": costs["scan_s"]},
    ]
    fixed = capacity - useful  # start-up, model loads, base embeddings: paid once per worker or sweep
    train_s = float(ok["train_seconds"].sum())
    for epochs_then in (5,):  # the paper's epochs: training scales, the fixed part does not
        scaled = useful + train_s * (epochs_then / epochs - 1)
        rows.append({"part": f"overhead fraction projected to {epochs_then} epochs (training x {epochs_then / epochs:g})",
                     "seconds": fixed / (fixed + scaled)})
    return {"rows": rows, "overhead": overhead, "workers": workers, "trials": len(trials), "ok": len(ok),
            "wall_s": wall, "useful_s": useful, "costs": costs,
            "trials_per_worker": ok.groupby("worker").size().tolist()}


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = _common.parser(__doc__, "the runner's 22 smoke pairs")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per trial (default: %(default)s)")
    parser.add_argument("--results", default=None, help="results root (default: a temporary folder)")
    args = _common.parse(parser, argv)
    logging.getLogger("tli").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench_sweep-") as scratch:
        result = run(args.smoke_test, args.epochs, Path(args.results or scratch))
    print_table(f"sweep: {result['trials']} trials ({result['ok']} ok), model loads = {result['workers']} workers, "
                f"trials per worker {result['trials_per_worker']}", result["rows"], MODULE, argv)
    return result


if __name__ == "__main__":
    main()
