"""The ablation runner: TLI trials as Ray Tune trials, on a laptop CPU or a GPU cluster.

One trial = one setting of the method (target layer, LoRA rank/alpha, margin, lr, seed, pooling for
training and evaluation, category held out): train LoRA with `tli.train.train_tli`, evaluate pre/post
with `tli.evaluate.evaluate_adapter` at the target layer and the last layer, store the results
(`tli.sweep_results.ResultStore`). `run_sweep(param_space, config)` runs a grid (or a search) of
trials; every script in `ablations/` is its param_space plus a call to `main_for`.

Each Ray worker process loads the base model once (`WorkerCache`) and reuses it across trials
(`reuse_actors=True`); after every trial the LoRA layers are removed (`PeftModel.unload`), and a model
left with LoRA by a failure is dropped, so no trial sees another's adapter. Pre-TLI embeddings depend
only on (model, pairs, pooling, layer): each worker computes them once and slices them per set.

A deterministic failure (`TliError`, e.g. target layer 0; `TrainingDiverged`, a NaN loss) is stored as
an `error` row and the sweep goes on; anything else (out of memory, a lost node) propagates so Tune
retries it (`FailureConfig(max_failures)`), and a trial that still fails becomes an `error` row too.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from tli import config as configs
from tli import data, results
from tli.errors import TliError
from tli.sweep_results import ResultStore, objective, wide_metrics

log = logging.getLogger(__name__)

SMOKE_AXIS_VALUES = 2  # --smoke-test keeps this many values of each grid axis (and one seed)
SMOKE_PAIRS = {"categories": 4, "per_category": 4, "control": 6}  # 16 trained + 6 control pairs


@dataclass
class SweepConfig:
    """Settings shared by every ablation script (the flags of `sweep_parser`)."""

    model: str = "smollm2-135m"
    """Embedded alias, local model folder or cached hub id (on a cluster: a path on the shared mount)."""
    pairs: str | None = None
    """Word-pair file (default: the paper's 623 trained + 63 control pairs)."""
    experiment: str = "sweep"
    """Results go to <results>/<experiment>/."""
    results: str = "results"
    """Results root; on a cluster a shared (NFS/EFS) path every node can write."""
    seeds: tuple[int, ...] = (0,)
    """Seeds: a grid axis unless the param_space names `seed` itself."""
    epochs: int = 5
    """Training epochs per trial (the paper: 5)."""
    pooling_eval: str = "mean_content"
    """Evaluation pooling unless the param_space sweeps it (the author's code: mean_content)."""
    n_boot: int = 10_000
    """Bootstrap resamples for the CI of the mean difference."""
    device: str = "auto"
    """Device inside each worker: auto (the GPU Ray assigns, else cpu), cpu, cuda."""
    dtype: str = "auto"
    """auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16."""
    quantization: str = "none"
    """none or nf4 (4-bit base model, as the paper trains Lugha-Llama-8B)."""
    address: str | None = None
    """Ray cluster to join (host:port or auto); None starts a local Ray and shuts it down after."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial (also its torch thread count)."""
    gpus_per_trial: float = 0.0
    """GPUs per trial, fractional to pack small models (0.25 = four trials per GPU)."""
    max_concurrent: int = 0
    """At most this many trials at once (0: as many as the resources allow)."""
    max_failures: int = 2
    """Retries of a trial that raised something other than a TliError (OOM, lost node)."""
    num_samples: int = 1
    """Trials a search (optuna_search.py) draws; ignored by grids."""
    smoke_test: bool = False
    """A tiny sweep: 16 trained + 6 control pairs, 2 values per axis, one seed, 1 epoch, 200 resamples."""
    verbose: bool = False
    """Log details and show the workers' output."""

    def validate(self) -> None:
        """TliError for a setting every trial would fail on, before Ray starts."""
        from tli import models, pooling

        pooling.check_pooling(self.pooling_eval)
        models.check_quantization(self.quantization)
        if not self.seeds:
            raise TliError("no seeds given")
        models.resolve_dtype(self.dtype, models.resolve_device(self.device))
        models.model_config(self.model)

    def store(self) -> ResultStore:
        return ResultStore(Path(self.results).expanduser().resolve() / self.experiment)


# --- trial settings -----------------------------------------------------------------------------

def trial_defaults(config: SweepConfig, pairs: pd.DataFrame) -> dict[str, Any]:
    """Every trial setting at its default (the paper's hyperparameters, `TrainConfig`'s defaults)."""
    from tli.train import TrainConfig

    train = TrainConfig()
    return {
        "model": config.model, "pairs_digest": pairs_digest(pairs), "target_layer": train.target_layer,
        "lora_rank": train.rank, "lora_alpha": None, "lora_dropout": train.dropout, "margin": train.margin,
        "lr": train.lr, "epochs": 1 if config.smoke_test else config.epochs, "batch_size": train.batch_size,
        "warmup_steps": 0 if config.smoke_test else train.warmup_steps, "seed": config.seeds[0],
        "pooling_train": train.pooling, "pooling_eval": config.pooling_eval, "heldout_category": None,
        "target_modules": ",".join(train.target_modules), "n_boot": 200 if config.smoke_test else config.n_boot,
        "dtype": config.dtype, "quantization": config.quantization,
    }


def normalize(settings: dict[str, Any]) -> dict[str, Any]:
    """Fill derived settings (lora_alpha None -> 2 * rank, as the paper's 16/32) and add `trial_id`."""
    settings = {key: value for key, value in settings.items() if key != "trial_id"}
    if settings.get("lora_alpha") is None:
        settings["lora_alpha"] = 2 * settings["lora_rank"]
    for key in ("target_layer", "lora_rank", "lora_alpha", "seed", "epochs", "batch_size"):
        settings[key] = int(settings[key])
    for key in ("lr", "margin", "lora_dropout"):
        settings[key] = float(settings[key])
    return settings | {"trial_id": trial_id(settings)}


def trial_id(settings: dict[str, Any]) -> str:
    """Stable id of a trial: sha1 of its settings as sorted JSON, first 12 hex digits."""
    text = json.dumps({k: v for k, v in settings.items() if k != "trial_id"}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def expand_grid(param_space: dict[str, list], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The cross product of the axes over `defaults`; an axis whose values are dicts sets several keys."""
    axes = [[value if isinstance(value, dict) else {name: value} for value in values]
            for name, values in param_space.items()]
    unknown = {key for axis in axes for value in axis for key in value} - set(defaults)
    if unknown:
        raise TliError(f"unknown trial setting(s) {', '.join(sorted(unknown))}; known: {', '.join(defaults)}")
    trials = {}
    for combination in itertools.product(*axes):
        settings = normalize(defaults | {k: v for part in combination for k, v in part.items()})
        trials.setdefault(settings["trial_id"], settings)
    return list(trials.values())


def grid_space(param_space: dict[str, list], config: SweepConfig) -> dict[str, list]:
    """The grid actually run: seeds added as an axis; in a smoke test, each axis cut to 2 values."""
    space = {name: list(values) for name, values in param_space.items()}
    space.setdefault("seed", list(config.seeds))
    if config.smoke_test:
        space = {name: values[: 1 if name == "seed" else SMOKE_AXIS_VALUES] for name, values in space.items()}
    return space


# --- pairs --------------------------------------------------------------------------------------

def load_sweep_pairs(config: SweepConfig) -> pd.DataFrame:
    """The sweep's pairs (a fresh 0..n-1 index); a smoke test keeps 4 pairs of each of the 4 largest categories."""
    pairs = data.load_pairs(config.pairs)
    if config.smoke_test:
        trained = pairs[pairs["split"] == "trained"]
        counts = trained["category"].value_counts()
        largest = sorted(counts.index, key=lambda c: (-counts[c], c))[: SMOKE_PAIRS["categories"]]
        keep = [trained[trained["category"] == c].head(SMOKE_PAIRS["per_category"]) for c in largest]
        keep.append(pairs[pairs["split"] == "control"].head(SMOKE_PAIRS["control"]))
        pairs = pd.concat(keep)
    return pairs.reset_index(drop=True)


def pairs_digest(pairs: pd.DataFrame) -> str:
    text = pairs[list(data.PAIR_COLUMNS)].to_csv(index=False)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def trial_sets(pairs: pd.DataFrame, heldout_category: str | None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(training rows, {set: rows}): trained, control and, with a held-out category, heldout.

    Rows keep the index of `pairs` (used to slice the cached embeddings).
    """
    trained = pairs[pairs["split"] == "trained"]
    sets = {"trained": trained, "control": pairs[pairs["split"] == "control"]}
    if heldout_category is not None:
        held = trained["category"] == heldout_category
        if not held.any():
            raise TliError(f"no trained pairs of category {heldout_category!r} to hold out")
        sets["trained"], sets["heldout"] = trained[~held], trained[held]
    sets = {name: rows for name, rows in sets.items() if len(rows)}
    if "trained" not in sets or len(sets["trained"]) < 2:
        raise TliError("fewer than 2 training pairs left")
    return sets["trained"], sets


# --- one trial, inside a worker process ---------------------------------------------------------

class WorkerCache:
    """What a worker process keeps across trials: loaded base models and pre-TLI embeddings."""

    def __init__(self):
        self.models: dict[tuple, tuple] = {}  # (model, device, dtype, quantization) -> (model, tokenizer)
        self.embeddings: dict[tuple, dict[int, tuple]] = {}  # (model key, pairs digest, pooling) -> layer -> (sw, en)
        self.trials = 0  # trials this process has run

    def model(self, key: tuple) -> tuple:
        from tli import models

        if key not in self.models:
            self.models[key] = models.load_model(models.ModelConfig(*key))
        return self.models[key]

    def pre_embeddings(self, key: tuple, digest: str, pairs: pd.DataFrame, pooling: str, layers: list[int]) -> dict:
        """{layer: (swahili, english)} of every row of `pairs` under the base model, computed once per layer."""
        from tli.scan import embed_pairs

        cached = self.embeddings.setdefault((key, digest, pooling), {})
        missing = [layer for layer in layers if layer not in cached]
        if missing:
            model, tokenizer = self.model(key)
            cached.update(embed_pairs(model, tokenizer, pairs, missing, pooling))
        return {layer: cached[layer] for layer in layers}


def has_lora(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def trial_train_config(settings: dict[str, Any]):
    """The `tli.train.TrainConfig` of a trial's settings (a trials.parquet row works too)."""
    from tli.train import TrainConfig

    return TrainConfig(
        target_layer=int(settings["target_layer"]), epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]), lr=float(settings["lr"]), warmup_steps=int(settings["warmup_steps"]),
        rank=int(settings["lora_rank"]), alpha=int(settings["lora_alpha"]), dropout=float(settings["lora_dropout"]),
        target_modules=tuple(str(settings["target_modules"]).split(",")), margin=float(settings["margin"]),
        pooling=settings["pooling_train"], seed=int(settings["seed"]),
    )


def execute_trial(settings: dict[str, Any], pairs: pd.DataFrame, cache: WorkerCache, device: str = "auto"):
    """Train and evaluate one trial; returns (row, summary, per-pair table). TliError for a bad setting."""
    from tli import evaluate, surgery, train

    train_config = trial_train_config(settings)
    train_config.validate()  # before loading anything: a bad setting fails in milliseconds
    key = (settings["model"], device, settings["dtype"], settings["quantization"])
    model, tokenizer = cache.model(key)
    if has_lora(model):
        raise RuntimeError("LoRA layers left in the cached base model")  # never expected: see finally below
    n_layers = surgery.num_layers(model)
    train_config.validate(n_layers)
    eval_config = evaluate.EvalConfig(pooling=settings["pooling_eval"], n_boot=settings["n_boot"], seed=settings["seed"])
    layers = eval_config.eval_layers(settings["target_layer"], n_layers)
    train_rows, sets = trial_sets(pairs, settings["heldout_category"])
    everything = cache.pre_embeddings(key, settings["pairs_digest"], pairs, settings["pooling_eval"], layers)
    pre = {name: {k: (sw[rows.index], en[rows.index]) for k, (sw, en) in everything.items()} for name, rows in sets.items()}
    sets = {name: rows.reset_index(drop=True) for name, rows in sets.items()}
    peft_model = None
    try:
        started = time.perf_counter()
        peft_model, train_log = train.train_tli(model, tokenizer, train_rows.reset_index(drop=True), train_config, progress=False)
        trained_at = time.perf_counter()
        summary, pair_table = evaluate.evaluate_adapter(peft_model, tokenizer, sets, settings["target_layer"], eval_config, pre=pre)
        evaluated_at = time.perf_counter()
    finally:
        if peft_model is not None:
            cache.models[key] = (peft_model.unload(), tokenizer)
        if has_lora(cache.models[key][0]):  # a failure inside train_tli after LoRA was attached
            del cache.models[key]
        cache.trials += 1
    row = {
        "status": "ok", "error": None, "n_train_pairs": len(train_rows), "final_loss": float(train_log["loss"].iloc[-1]),
        "train_seconds": trained_at - started, "eval_seconds": evaluated_at - trained_at,
        "worker_trial": cache.trials,  # 1 for the first trial of this worker process, 2 for the next...
    } | wide_metrics(summary, settings["target_layer"], n_layers)
    return row, summary, pair_table


_CACHE = WorkerCache()  # one per worker process: the reason trials reuse actors


def report(metrics: dict[str, Any]) -> None:
    """The one call into Ray's reporting API (`ray.tune.report` in Ray 2.60; it was `ray.air.session.report`,
    then `ray.train.report`). Keys must not clash with Tune's own (`trial_id`, `done`, ...)."""
    tune.report(metrics)


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()


def run_trial(settings: dict[str, Any], context: dict[str, Any], cache: WorkerCache = _CACHE) -> dict[str, Any]:
    """Run one trial (or return its stored ok row) and commit its files; TliErrors become error rows."""
    import torch

    torch.set_num_threads(context.get("threads", torch.get_num_threads()))  # one per reserved CPU
    settings = normalize(settings)
    store = ResultStore(context["store"])
    stored = store.row(settings["trial_id"])
    if stored is not None and stored["status"] == "ok":
        return stored
    row = trial_row(settings, context["experiment"])
    summary = pairs_table = None
    try:
        outcome, summary, pairs_table = execute_trial(settings, context["pairs"], cache, context["device"])
        row |= outcome
    except TliError as error:  # deterministic: retrying cannot help
        row |= {"status": "error", "error": f"{type(error).__name__}: {error}"}
    row |= {"objective": objective(row), "node": _node(), "worker": f"{socket.gethostname()}:{os.getpid()}",
            "finished_at": pd.Timestamp.now(tz="UTC").isoformat()}
    store.write_trial(row, summary, pairs_table)
    return row


def trial_row(settings: dict[str, Any], experiment: str) -> dict[str, Any]:
    heldout = settings["heldout_category"]
    return {"trial_id": settings["trial_id"], "experiment": experiment, "status": "error", "error": None} | settings | {
        "split": "paper" if heldout is None else f"heldout:{heldout}"} | _provenance()


_PROVENANCE: dict[str, str] = {}


def _provenance() -> dict[str, str]:
    if not _PROVENANCE:
        _PROVENANCE.update(results.provenance())
    return _PROVENANCE


def tune_trainable(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, one report."""
    row = run_trial(config["trial"], context)
    report({"tli_trial_id": row["trial_id"], "tli_status": row["status"], "objective": row["objective"]})


# --- the sweep, in the driver -------------------------------------------------------------------

def run_sweep(param_space: dict[str, Any], config: SweepConfig, pairs: pd.DataFrame | None = None,
              search_alg=None, metric: str = "objective", mode: str = "max") -> pd.DataFrame:
    """Run the trials of `param_space` and return the merged trials table.

    Without `search_alg`, `param_space` maps each axis to its list of values (a grid; dict values set
    several settings at once); trials already stored as ok are skipped. With a Tune searcher, it maps
    settings to Tune domains and `config.num_samples` trials are drawn.
    """
    pairs = (load_sweep_pairs(config) if pairs is None else pairs).reset_index(drop=True)  # row i = embedding i
    store = config.store()
    defaults = trial_defaults(config, pairs)
    if search_alg is None:
        planned = expand_grid(grid_space(param_space, config), defaults)
        done = {tid for tid, status in store.statuses().items() if status == "ok"}
        todo = [settings for settings in planned if settings["trial_id"] not in done]
        log.warning("%s: %d trials, %d already done, %d to run", config.experiment, len(planned), len(planned) - len(todo), len(todo))
        space, total = ({"trial": tune.grid_search(todo)} if todo else None), len(todo)
    else:
        if len(config.seeds) > 1:
            raise TliError("a search draws one seed per trial: pass one --seeds value (or sweep seeds with a grid)")
        space, total = {"trial": defaults | param_space}, config.num_samples
    results.write_json({"sweep": configs.to_dict(config), "param_space": param_space, "defaults": defaults,
                        "n_pairs": len(pairs)} | results.provenance(), store.root / "sweep_config.json")
    scan_needed = not _scan_done(store, config.model, defaults["pairs_digest"])
    if space is not None or scan_needed:
        with _ray_session(config):
            scan = _start_scan(config, pairs) if scan_needed else None
            if space is not None:
                axes = _swept_columns(param_space) + (["seed"] if len(config.seeds) > 1 else [])
                _fit(space, total, config, pairs, store, search_alg, metric, mode, axes)
            if scan is not None:
                import ray

                results.write_table(ray.get(scan), store.root / "scan.parquet")
    trials = store.merge()
    print(final_table(trials, param_space, store))
    return trials


class _ray_session:
    """Connect to `config.address` or start a local Ray; shut down only what this started."""

    def __init__(self, config: SweepConfig):
        self.config, self.started = config, False

    def __enter__(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.config.address, include_dashboard=False, log_to_driver=self.config.verbose,
                     logging_level=logging.INFO if self.config.verbose else logging.WARNING)
            self.started = True
        return self

    def __exit__(self, *exc_info):
        import ray

        if self.started:
            ray.shutdown()


def _fit(space, total, config: SweepConfig, pairs, store: ResultStore, search_alg, metric, mode, axes) -> None:
    context = {"store": str(store.root), "experiment": config.experiment, "pairs": pairs, "device": config.device,
               "threads": max(1, int(config.cpus_per_trial))}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, context=context),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, metric=metric if search_alg else None, mode=mode if search_alg else None,
            num_samples=total if search_alg else 1, reuse_actors=True,
            max_concurrent_trials=config.max_concurrent or None,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"), storage_path=str(store.root / "tune"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            callbacks=[_Progress(total, store, axes)],
        ),
    )
    grid = tuner.fit()
    for result in grid:  # trials that failed even after their retries
        if result.error is not None and result.config:  # (a trial that never started has no config)
            settings = normalize(result.config["trial"])
            if (store.row(settings["trial_id"]) or {}).get("status") != "ok":
                message = (str(result.error).strip().splitlines() or [""])[-1][:500]
                row = trial_row(settings, config.experiment) | {
                    "error": f"{type(result.error).__name__}: {message}", "objective": float("nan"),
                    "finished_at": pd.Timestamp.now(tz="UTC").isoformat()}
                store.write_trial(row)


class _Progress(tune.Callback):
    """Driver-side progress: trials done/total, errors, the running trials, ETA (tqdm); merges after each trial."""

    def __init__(self, total: int, store: ResultStore, axes: list[str]):
        from tqdm.auto import tqdm

        self.store, self.axes, self.running, self.errors = store, axes, {}, 0
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)

    def __getstate__(self):  # the Tuner pickles its callbacks; a progress bar holds a stream that may not pickle
        return {key: value for key, value in self.__dict__.items() if key != "bar"}

    def _show(self):
        self.bar.set_postfix_str(f"errors={self.errors} running: {'; '.join(self.running.values()) or '-'}")

    def on_trial_start(self, iteration, trials, trial, **info):
        settings = trial.config.get("trial", {})
        self.running[trial.trial_id] = " ".join(f"{k}={_short(settings.get(k))}" for k in self.axes)
        self._show()

    def _finish(self, trial, error: bool):
        self.running.pop(trial.trial_id, None)
        status = (trial.last_result or {}).get("tli_status")
        self.errors += error or status == "error"
        self.bar.update(1)
        self._show()
        self.store.merge()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, error=True)

    def on_experiment_end(self, trials, **info):
        self.bar.close()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- the pre-TLI layer scan ---------------------------------------------------------------------

def _scan_done(store: ResultStore, model: str, digest: str) -> bool:
    scan = store.read("scan")
    return not scan.empty and set(scan["model"]) == {model} and set(scan["pairs_digest"]) == {digest}


def scan_all_poolings(model_key: tuple, pairs: pd.DataFrame) -> pd.DataFrame:
    """The base model's layer scan (`tli.scan.scan_layers`) in every pooling mode, one forward pass per batch."""
    from tli import models, pooling, scan

    model, tokenizer = models.load_model(models.ModelConfig(*model_key))
    table = scan.scan_layers(model, tokenizer, pairs, scan.ScanConfig(), progress=False, modes=pooling.POOLING_MODES)
    table.insert(0, "model", model_key[0])
    table["pairs_digest"] = pairs_digest(pairs)
    return table


def _start_scan(config: SweepConfig, pairs: pd.DataFrame):
    """The scan as a Ray task beside the trials: it takes a trial's GPU share but reserves no CPU, so this
    short task never holds a CPU trial back (it borrows a core for a minute)."""
    import ray

    task = ray.remote(num_cpus=0, num_gpus=config.gpus_per_trial)(scan_all_poolings)
    return task.remote((config.model, config.device, config.dtype, config.quantization), pairs)


# --- reporting ----------------------------------------------------------------------------------

TABLE_METRICS = ("cosine_pre", "cosine_post", "gap_pre", "gap_post", "centered_gap_pre", "centered_gap_post",
                 "p_at_1_pre", "p_at_1_post")


def final_table(trials: pd.DataFrame, param_space: dict[str, Any], store: ResultStore) -> str:
    """Pre/post at the target layer per swept setting x set (mean over seeds), errors, and where results are."""
    lines = []
    ok = trials[trials["status"] == "ok"]
    axes = [name for name in _swept_columns(param_space) if name in ok.columns and name != "seed"]
    axes = list(dict.fromkeys(["target_layer"] + axes))
    if not ok.empty:
        long = []
        for name in ("trained", "control", "heldout"):
            columns = {f"target_{name}_{metric}": metric for metric in TABLE_METRICS}
            if set(columns) <= set(ok.columns):
                part = ok[axes + list(columns)].rename(columns=columns).dropna(subset=["cosine_pre"])
                long.append(part.assign(set=name))
        grouped = pd.concat(long).groupby(axes + ["set"], sort=True, dropna=False)
        table = grouped[list(TABLE_METRICS)].mean()
        table.insert(0, "n_trials", grouped.size())
        lines.append(table.reset_index().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    errors = trials[trials["status"] != "ok"]
    for _, row in errors.head(10).iterrows():
        lines.append(f"error {row['trial_id']} (target layer {row['target_layer']}): {row['error']}")
    lines.append(f"{len(ok)} ok / {len(errors)} error trials; results in {store.root}/ "
                 "(trials.parquet, summary.parquet, pairs.parquet, scan.parquet, sweep_config.json)")
    return "\n".join(lines)


def _swept_columns(param_space: dict[str, Any]) -> list[str]:
    names = []
    for name, values in param_space.items():
        first = values[0] if isinstance(values, list) and values else None
        names.extend(first.keys() if isinstance(first, dict) else [name])
    return names


# --- command line ------------------------------------------------------------------------------

def sweep_parser(description: str | None, experiment: str) -> argparse.ArgumentParser:
    """The flags every ablation script shares (one per SweepConfig field)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default=SweepConfig.model, help="embedded alias, model folder or cached hub id (default: %(default)s)")
    add("--pairs", default=None, help="word pairs file (default: the paper's 623 trained + 63 control pairs)")
    add("--seeds", type=configs.parse_int_list, default=SweepConfig.seeds, help="seeds, e.g. 0,1,2 (default: 0)")
    add("--epochs", type=int, default=SweepConfig.epochs, help="training epochs per trial (default: %(default)s)")
    add("--results", default=SweepConfig.results, help="results root (default: %(default)s/)")
    add("--experiment", default=experiment, help="results subfolder (default: %(default)s)")
    add("--pooling-eval", default=SweepConfig.pooling_eval, help="evaluation pooling (default: %(default)s)")
    add("--n-boot", type=int, default=SweepConfig.n_boot, help="bootstrap resamples (default: %(default)s)")
    add("--device", default=SweepConfig.device, help="auto, cpu, cuda (default: %(default)s)")
    add("--dtype", default=SweepConfig.dtype, help="auto, float32, bfloat16, float16 (default: %(default)s)")
    add("--quantization", default=SweepConfig.quantization, help="none or nf4 (default: %(default)s)")
    add("--address", default=None, help="Ray cluster to join: host:port or auto (default: start a local Ray)")
    add("--cpus-per-trial", type=float, default=SweepConfig.cpus_per_trial, help="CPUs per trial (default: %(default)s)")
    add("--gpus-per-trial", type=float, default=SweepConfig.gpus_per_trial, help="GPUs per trial, fractional ok (default: %(default)s)")
    add("--max-concurrent", type=int, default=SweepConfig.max_concurrent, help="trials at once, 0: resource-bound (default: 0)")
    add("--max-failures", type=int, default=SweepConfig.max_failures, help="retries of a crashed trial (default: %(default)s)")
    add("--smoke-test", action="store_true", help="a tiny sweep (16+6 pairs, 2 values per axis, 1 epoch): a minute on a laptop")
    add("-v", "--verbose", action="store_true", help="log details and show the workers' output")
    return parser


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values["seeds"] = tuple(values["seeds"])
    return configs.from_dict(SweepConfig, values)


def main_for(args: argparse.Namespace, space: Callable[[SweepConfig, pd.DataFrame], dict], **sweep_options) -> int:
    """Run a script's sweep: `space(config, pairs)` builds its param_space. 0 on success, 2 on a TliError."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        config.validate()
        pairs = load_sweep_pairs(config)
        built = space(config, pairs)
        options = {key: value(config) if callable(value) else value for key, value in sweep_options.items()}
        run_sweep(built, config, pairs, **options)
    except TliError as error:
        cause = getattr(error, "cause", None) or error  # a Ray task error carries the worker's exception
        print(f"{Path(sys.argv[0]).name}: error: {cause}", file=sys.stderr)
        return 2
    return 0


def model_num_layers(model: str) -> int:
    """L, the number of decoder blocks, from the model's config (weights are not loaded)."""
    from tli import models

    return int(models.model_config(model).get_text_config().num_hidden_layers)
