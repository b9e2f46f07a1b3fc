"""Sweep overhead: a 6-trial sweep through `tli.sweep.tuner.run_sweep` (local Ray), its time split.

The grid is target layer 1, 2, 3 x seed 0, 1 (6 trials, 1 epoch each, 200 bootstrap resamples, drift
measured in every trial, 1 CPU per trial, so 2 trials at once on 2 cores). Before the sweep the driver
measures, once each and sequentially: loading the model and the base (pre-TLI) embeddings of the
evaluation layers (a worker's `WorkerCache`, as each worker builds it), then the experiment's drift
samples and its layer scan in every pooling mode, which it stores so that the sweep itself runs trials
only. The number of distinct worker processes in the trial rows is the number of model loads.
Overhead = 1 - sum(train + eval + drift seconds) / (wall seconds x concurrent trials).

    .venv/bin/python -m benchmarks.bench_sweep               # all 686 pairs, a few minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_sweep --smoke-test  # a smoke sweep's 22 pairs, same 6 trials, no drift

The smoke pairs go in through a pairs file, not `SweepConfig(smoke_test=True)`, which would cut the grid
to 2 trials (no worker reuse to see) and is the only way to a smoke sweep's 4 short drift samples: the
smoke test measures no drift (the full 16 samples take minutes to make and to score on a loaded CPU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import _common
from benchmarks._common import print_table
from tli import data, surgery
from tli.config import ModelConfig
from tli.sweep import tuner
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import ExperimentInputs, load_inputs, make_drift_samples, smoke_subset
from tli.sweep.store import ExperimentStore
from tli.sweep.trial import WorkerCache

MODULE = "benchmarks.bench_sweep"
PARAM_SPACE = {"target_layer": [1, 2, 3], "seed": [0, 1]}


def driver_costs(config: SweepConfig, inputs: ExperimentInputs) -> dict[str, float]:
    """Seconds of one worker's model load and base embeddings, and of the drift samples and the scan (stored)."""
    seconds, started = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        seconds[name], started = time.perf_counter() - started, time.perf_counter()

    cache = WorkerCache()
    model, _ = cache.model(config.model)
    lap("model_load_s")
    n_layers = surgery.num_layers(model)
    for layer in PARAM_SPACE["target_layer"]:  # as a worker asks for them: the target layer and L
        cache.pre_embeddings(config.model, inputs, config.pooling_eval, sorted({layer, n_layers}))
    lap("base_embeddings_s")
    del cache, model
    # the sweep's own task functions, called in-process: run_sweep finds their results stored and skips them
    store = ExperimentStore(config.location)
    if config.drift:
        samples = make_drift_samples(config.model, config.smoke_test, 1)
        inputs = dataclasses.replace(inputs, drift_samples=samples)
        store.write("drift_samples.parquet", inputs.drift_samples)
        lap("drift_samples_s")
    store.write("scan.parquet", tuner.scan_all_poolings(config.model, inputs.pairs, inputs.digest))
    lap("scan_s")
    return seconds


def run(smoke: bool, epochs: int, results_root: Path) -> dict[str, object]:
    results_root.mkdir(parents=True, exist_ok=True)
    pairs = data.write_pairs(smoke_subset(data.load_pairs()), results_root / "smoke_pairs.tsv") if smoke else None
    config = SweepConfig(
        model=ModelConfig(device="cpu"),
        pairs=pairs and str(pairs),
        experiment="bench_sweep",
        results=str(results_root),
        epochs=epochs,
        n_boot=200,
        drift=not smoke,
        cpus_per_trial=1.0,
    )
    costs = driver_costs(config, load_inputs(config))
    started = time.perf_counter()
    trials = tuner.run_sweep(PARAM_SPACE, config)
    wall = time.perf_counter() - started
    ok = trials[trials["status"] == "ok"]
    workers = ok["worker"].nunique()
    concurrency = min(len(ok), max(1, int((os.cpu_count() or 1) // config.cpus_per_trial)))
    parts = {name: float(ok[f"{name}_seconds"].sum()) for name in ("train", "eval", "drift")}
    useful, capacity = sum(parts.values()), wall * concurrency
    per_worker = costs["model_load_s"] + costs["base_embeddings_s"]
    rows = [
        {"part": "sweep wall time (run_sweep, Ray start to merged table)", "seconds": wall},
        {"part": f"capacity = wall x {concurrency} concurrent trials", "seconds": capacity},
        {"part": f"training, sum over {len(ok)} trials", "seconds": parts["train"]},
        {"part": f"evaluation, sum over {len(ok)} trials", "seconds": parts["eval"]},
        {"part": f"drift, sum over {len(ok)} trials", "seconds": parts["drift"]},
        {
            "part": f"model load, once per worker ({workers} workers; driver-measured {costs['model_load_s']:.1f} s)",
            "seconds": workers * costs["model_load_s"],
        },
        {
            "part": f"base embeddings, once per worker (driver-measured {costs['base_embeddings_s']:.1f} s)",
            "seconds": workers * costs["base_embeddings_s"],
        },
        {"part": "Ray scheduling, start-up and the rest", "seconds": capacity - useful - workers * per_worker},
        {"part": "overhead fraction = 1 - (train + eval + drift) / capacity", "seconds": 1 - useful / capacity},
    ]
    fixed = capacity - useful  # start-up, model loads, base embeddings: paid once per worker or sweep
    scaled = useful + parts["train"] * (5 / epochs - 1)  # the paper's 5 epochs: training scales, the rest does not
    rows.append(
        {
            "part": f"overhead fraction projected to 5 epochs (training x {5 / epochs:g})",
            "seconds": fixed / (fixed + scaled),
        }
    )
    rows += [
        {
            "part": "drift samples (a model load + sampling; once per sweep, before it)",
            "seconds": costs.get("drift_samples_s", float("nan")),
        },
        {
            "part": "layer scan, all poolings (a model load + scan; once per sweep, before it)",
            "seconds": costs["scan_s"],
        },
    ]
    return {
        "rows": rows,
        "overhead": 1 - useful / capacity,
        "workers": workers,
        "trials": len(trials),
        "ok": len(ok),
        "wall_s": wall,
        "useful_s": useful,
        "costs": costs,
        "trials_per_worker": ok.groupby("worker").size().tolist(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = _common.parser(__doc__, "a smoke sweep's 22 pairs (16 trained + 6 control)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per trial (default: %(default)s)")
    parser.add_argument("--results", default=None, help="results root (default: a temporary folder)")
    args = _common.parse(parser, argv)
    tli_log = logging.getLogger("tli")
    level = tli_log.level
    tli_log.setLevel(logging.ERROR)  # the trials' notes would bury the table; restored for an in-process caller
    try:
        with tempfile.TemporaryDirectory(prefix="bench_sweep-") as scratch:
            result = run(args.smoke_test, args.epochs, Path(args.results or scratch))
    finally:
        tli_log.setLevel(level)
    print_table(
        f"sweep: {result['trials']} trials ({result['ok']} ok), model loads = {result['workers']} workers, "
        f"trials per worker {result['trials_per_worker']}",
        result["rows"],
        MODULE,
        argv,
    )
    return result


if __name__ == "__main__":
    main()
