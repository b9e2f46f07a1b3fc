"""Ray Tune plumbing: the trainable and what it reports, the driver's callbacks, and `run_sweep`.

A trial reports its training loss after every epoch (one Tune iteration each) and, last, its whole flat
row: its settings and every metric of its trials.parquet row (its `trial_id` as `tli_trial_id`: Tune
owns `trial_id`), plus its files packed under ARCHIVE_KEY. The driver's `ResultSink` callback, which runs
before Tune's loggers, takes the archive out of the result and commits it to the experiment's store. So
Tune's loggers (TensorBoard, MLflow, W&B), `ResultGrid.get_dataframe()` and
`get_best_result("objective", "max")` see every measurement, and no worker needs the results folder.
`objective` (the validation set's centred-gap gain at the selection layer) is NaN until a trial's
last report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import ray
from ray import tune

from tli import files, models
from tli.config import TrainConfig
from tli.errors import TliError
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import ExperimentInputs, load_inputs, trial_sets
from tli.sweep.settings import TrialSettings, check_axes, cut_for_smoke_test, expand_grid, swept_names
from tli.sweep.store import ExperimentStore, pack
from tli.sweep.trial import WorkerCache, run_trial

log = logging.getLogger(__name__)

ARCHIVE_KEY = "tli_archive"
MERGE_SECONDS = 30  # the merged tables are refreshed at most this often while trials finish (and at the end)
SMOKE = {"epochs": 1, "warmup_steps": 0, "n_boot": 200, "drift_prompts": 2, "drift_tokens": 8}


def report_to_tune(metrics: dict[str, Any]) -> None:
    """The one call into Ray's reporting API (`ray.tune.report` in Ray 2.60; it moved between versions)."""
    tune.report(metrics)


@dataclasses.dataclass(frozen=True)
class Search:
    """A sampled sweep: a Ray Tune searcher, the Tune domain of each flat setting it draws, the trials to draw."""

    searcher: Any  # e.g. ray.tune.search.optuna.OptunaSearch
    domains: dict[str, Any]  # flat setting -> Tune domain (tune.randint, tune.choice, ...)
    num_samples: int


def tune_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """A trial row as Tune metrics: `trial_id` renamed `tli_trial_id` (Tune sets its own `trial_id`)."""
    return {("tli_trial_id" if key == "trial_id" else key): value for key, value in row.items()}


def epoch_metrics(trial_id: str, train_log: pd.DataFrame) -> dict[str, Any]:
    """One Tune iteration per epoch: its mean and last step loss, the learning rate, objective NaN."""
    epoch = int(train_log["epoch"].iloc[-1])
    steps = train_log[train_log["epoch"] == epoch]
    return {
        "tli_trial_id": trial_id,
        "epoch": epoch,
        "train_loss": float(steps["loss"].mean()),
        "train_loss_last": float(steps["loss"].iloc[-1]),
        "lr": float(steps["lr"].iloc[-1]),
        "objective": float("nan"),
    }


# --- the trainable, inside a Ray worker ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TrialContext:
    """What every trial of a sweep receives from the driver (through `tune.with_parameters`)."""

    inputs: ExperimentInputs
    base: dict[str, Any]  # the base settings row; a search's sampled settings override it
    done: dict[str, dict[str, Any]]  # ok rows already stored: a search that draws them again just reports them
    threads: int  # torch threads, one per reserved CPU
    save_adapters: str  # none, best, all

    def settings(self, config: dict[str, Any]) -> TrialSettings:
        """A trial's settings from its Tune config: the base with the grid's or the searcher's values."""
        return TrialSettings.from_flat(self.base).replace(**config["settings"])


_CACHE = WorkerCache()  # one per worker process: the reason trials reuse actors


def trainable(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: one TLI trial, reported per epoch and at its end."""
    import torch

    torch.set_num_threads(context.threads)
    settings = context.settings(config)
    stored = context.done.get(settings.trial_id)
    if stored is not None:
        report_to_tune(tune_metrics(stored))
        return
    record = run_trial(
        settings,
        context.inputs,
        _CACHE,
        lambda train_log: report_to_tune(epoch_metrics(settings.trial_id, train_log)),
        keep_adapter=context.save_adapters != "none",
    )
    record.row["node"] = ray.get_runtime_context().get_node_id()
    report_to_tune(tune_metrics(record.row) | {ARCHIVE_KEY: pack(record)})


# --- the driver's callbacks ----------------------------------------------------------------------


class ResultSink(tune.Callback):
    """Commits each trial's archive to the store (the driver is the one writer) and refreshes the merged tables."""

    def __init__(self, location: str, save_adapters: str, experiment: str):
        self.location, self.save_adapters, self.experiment = location, save_adapters, experiment
        self.store, self.merged_at = ExperimentStore(location), 0.0

    def __getstate__(self):  # Tune pickles its callbacks into experiment checkpoints: keep no tables
        return {"location": self.location, "save_adapters": self.save_adapters, "experiment": self.experiment}

    def __setstate__(self, state):
        self.__init__(**state)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        archive = result.pop(ARCHIVE_KEY, None)
        if archive is not None:
            self.store.commit(archive, self.save_adapters, self.experiment)
            if time.monotonic() - self.merged_at > MERGE_SECONDS:
                self.store.merge()
                self.merged_at = time.monotonic()

    def on_experiment_end(self, trials, **info):
        self.store.merge()


class Progress(tune.Callback):
    """Trials done/total, errors, the running trials and their epoch, ETA (a tqdm bar on stderr)."""

    def __init__(self, total: int, axes: list[str]):
        self.total, self.axes, self.running, self.errors, self.bar = total, axes, {}, 0, None

    def __getstate__(self):  # a progress bar holds a stream that may not pickle
        return {key: value for key, value in self.__dict__.items() if key != "bar"} | {"bar": None}

    def _show(self):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"errors={self.errors} running: {'; '.join(self.running.values()) or '-'}")

    def on_trial_start(self, iteration, trials, trial, **info):
        settings = trial.config.get("settings", {})
        self.running[trial.trial_id] = " ".join(f"{k}={_short(settings.get(k))}" for k in self.axes)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result and "status" not in result and trial.trial_id in self.running:
            label = self.running[trial.trial_id].split(" epoch")[0]
            self.running[trial.trial_id] = f"{label} epoch {result['epoch']} loss {result['train_loss']:.3f}"
            self._show()

    def _finish(self, trial, error: bool):
        self.running.pop(trial.trial_id, None)
        self.errors += error or (trial.last_result or {}).get("status") == "error"
        self._show()
        self.bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, error=True)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


LOGGER_EXTRAS = {
    "tensorboard": ("tensorboardX", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}  # callback -> (module it needs, tli's pip extra)


def logger_callbacks(config: SweepConfig) -> list[tune.Callback]:
    """Tune's own loggers named by --callbacks; a missing package is a TliError naming the pip extra.

    MLflow logs to $MLFLOW_TRACKING_URI, else to a SQLite store beside local results (<experiment>/mlflow.db);
    W&B to project $WANDB_PROJECT or the experiment name (WANDB_MODE=offline works without a network).
    """
    import importlib.util

    for name in config.callbacks:
        module, extra = LOGGER_EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise TliError(f"--callbacks {name} needs {module}: pip install 'tli[{extra}]'")
    made: list[tune.Callback] = []
    if "tensorboard" in config.callbacks:
        from ray.tune.logger import TBXLoggerCallback

        made.append(TBXLoggerCallback())
    if "mlflow" in config.callbacks:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        default = f"sqlite:///{config.location}/mlflow.db" if "://" not in config.location else None
        made.append(
            MLflowLoggerCallback(
                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", default), experiment_name=config.experiment
            )
        )
    if "wandb" in config.callbacks:
        from ray.air.integrations.wandb import WandbLoggerCallback

        made.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", config.experiment)))
    return made


# --- the sweep, in the driver --------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(config: SweepConfig):
    """Join `config.address`, or start a private local Ray (never a cluster some other process left running);
    shut down only what this started.
    """
    if ray.is_initialized():
        yield
        return
    ray.init(
        address=config.address or "local",
        include_dashboard=False,
        log_to_driver=config.verbose,
        logging_level=logging.INFO if config.verbose else logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


def base_settings(config: SweepConfig) -> TrialSettings:
    """Every trial setting at its default: the paper's hyperparameters, the sweep's flags (smoke: tiny)."""
    smoke = config.smoke_test
    train = TrainConfig(
        epochs=SMOKE["epochs"] if smoke else config.epochs,
        warmup_steps=SMOKE["warmup_steps"] if smoke else TrainConfig.warmup_steps,
        seed=config.seeds[0],
        mask_false_negatives=config.mask_false_negatives,
    )
    return TrialSettings(
        model=config.model,
        train=train,
        pooling_eval=config.pooling_eval,
        validation_fraction=config.validation_fraction,
        selection_layer=config.selection_layer,
        n_boot=SMOKE["n_boot"] if smoke else config.n_boot,
        drift=config.drift,
    )


def _check_trials(planned: list[TrialSettings], inputs: ExperimentInputs, n_layers: int, model: str) -> None:
    """TliError, before Ray starts, for a planned trial that cannot work: a layer the model lacks, too few pairs."""
    for settings in planned:
        for name, layer in (
            ("target layer", settings.train.target_layer),
            ("selection layer", settings.selection_layer),
        ):
            if layer is not None and layer > n_layers:
                raise TliError(f"{name} {layer} is out of range: {model} has layers 0..{n_layers}")
    for split in {(s.heldout_category, s.validation_fraction, s.validation_seed) for s in planned}:
        trial_sets(
            inputs,
            TrialSettings().replace(heldout_category=split[0], validation_fraction=split[1], validation_seed=split[2]),
        )


def _drift_samples(model_config, smoke: bool) -> pd.DataFrame:
    """The base model's continuations of the drift prompts (a Ray task: it needs the trials' device)."""
    from tli import drift, models

    model, tokenizer = models.load_model(model_config)
    prompts = (
        {lang: p[: SMOKE["drift_prompts"]] for lang, p in drift.DEFAULT_PROMPTS.items()}
        if smoke
        else drift.DEFAULT_PROMPTS
    )
    samples = drift.make_samples(model, tokenizer, prompts, **({"new_tokens": SMOKE["drift_tokens"]} if smoke else {}))
    return samples.assign(model=model_config.model)


def with_drift_samples(inputs: ExperimentInputs, config: SweepConfig, store: ExperimentStore) -> ExperimentInputs:
    """`inputs` with the experiment's drift samples: stored ones if made by this model, else made once now."""
    if not config.drift:
        return inputs
    samples = store.read("drift_samples")
    if (
        samples.empty
        or set(samples.get("model", [])) != {config.model.model}
        or (len(samples) <= 2 * SMOKE["drift_prompts"]) != config.smoke_test
    ):
        task = ray.remote(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial)(_drift_samples)
        samples = ray.get(task.remote(config.model, config.smoke_test))
        store.write("drift_samples.parquet", samples)
    return dataclasses.replace(inputs, drift_samples=samples.reset_index(drop=True))


def _scan_all_poolings(model_config, pairs: pd.DataFrame, digest: str) -> pd.DataFrame:
    """The base model's layer scan (`tli.scan.scan_layers`) in every pooling mode, one forward pass per batch."""
    from tli import models, scan
    from tli.config import POOLING_MODES, ScanConfig

    model, tokenizer = models.load_model(model_config)
    table = scan.scan_layers(model, tokenizer, pairs, ScanConfig(), progress=False, modes=POOLING_MODES)
    table.insert(0, "model", model_config.model)
    return table.assign(inputs_digest=digest)


def _start_scan(config: SweepConfig, inputs: ExperimentInputs, store: ExperimentStore):
    """The scan as a Ray task beside the trials (None when stored): it takes a trial's GPU share but reserves
    no CPU, so this short task never holds a CPU trial back.
    """
    scan = store.read("scan")
    if not scan.empty and set(scan.get("inputs_digest", [])) == {inputs.digest}:
        return None
    task = ray.remote(num_cpus=0, num_gpus=config.gpus_per_trial)(_scan_all_poolings)
    return task.remote(
        config.model,
        pd.concat([inputs.pairs, inputs.unseen]) if inputs.unseen is not None else inputs.pairs,
        inputs.digest,
    )


def _grid(grid: dict[str, list], config: SweepConfig) -> dict[str, list]:
    """The grid run: seeds as an axis unless swept already; a smoke test's cut."""
    grid = {name: list(values) for name, values in grid.items()}
    if "seed" not in swept_names(grid):
        grid["seed"] = list(config.seeds)
    return cut_for_smoke_test(grid) if config.smoke_test else grid


def run_sweep(
    grid: dict[str, list] | Callable[[ExperimentInputs], dict[str, list]] | None,
    config: SweepConfig,
    search: Search | Callable[[ExperimentInputs], Search] | None = None,
) -> pd.DataFrame:
    """Run a sweep's trials and return the merged trials table.

    `grid` maps each flat setting to its values (a dict value sets several settings at once); trials already
    stored as ok are skipped. Or `search` draws `num_samples` trials from Tune domains. Either may be a
    function of the experiment's inputs. Everything a user can get wrong is checked before Ray starts; a
    sweep in which every trial failed is a TliError.
    """
    callbacks = logger_callbacks(config)
    store = ExperimentStore(config.location)
    store.folder.check_writable()
    n_layers = models.num_layers(config.model.model)
    inputs = load_inputs(config)
    grid, search = (x(inputs) if callable(x) else x for x in (grid, search))
    base = base_settings(config)
    if search is None:
        check_axes(grid)
        _check_trials(expand_grid(_grid(grid, config), base), inputs, n_layers, config.model.model)
    elif len(config.seeds) > 1:
        raise TliError("a search draws one seed per trial: pass one --seeds value (or sweep seeds with a grid)")
    with ray_session(config):
        inputs = with_drift_samples(inputs, config, store)
        base = base.replace(inputs_digest=inputs.digest)
        done = {row["trial_id"]: row for row in store.rows() if row.get("status") == "ok"}
        if search is None:
            planned = expand_grid(_grid(grid, config), base)
            todo = [settings.row() for settings in planned if settings.trial_id not in done]
            log.warning(
                "%s: %d trials, %d already done, %d to run",
                config.experiment,
                len(planned),
                len(planned) - len(todo),
                len(todo),
            )
            space, total, axes = {"settings": tune.grid_search(todo)}, len(todo), swept_names(_grid(grid, config))
            swept = {name: [str(v) for v in values] for name, values in grid.items()}
        else:
            space, total, axes = {"settings": search.domains}, search.num_samples, list(search.domains)
            swept = {name: str(domain) for name, domain in search.domains.items()}
        store.write(
            "sweep_config.json",
            {
                "sweep": dataclasses.asdict(config),
                "space": swept,
                "swept": axes,
                "base": base.row(),
                "planned": len(planned) if search is None else search.num_samples,
                "n_pairs": len(inputs.pairs),
                "n_unseen": 0 if inputs.unseen is None else len(inputs.unseen),
            }
            | files.provenance(),
        )
        scan = _start_scan(config, inputs, store)
        if total:
            context = TrialContext(inputs, base.row(), done, max(1, int(config.cpus_per_trial)), config.save_adapters)
            _fit(space, total, config, context, search.searcher if search else None, axes, callbacks, store)
        if scan is not None:
            store.write("scan.parquet", ray.get(scan))
    trials = store.merge()
    finish(trials, [a for a in axes if a != "seed"], store.uri)
    return trials


def finish(trials: pd.DataFrame, axes: list[str], uri: str) -> None:
    """Print the final table; a TliError when every trial failed (nothing worth listing was written)."""
    failed = trials[trials["status"] != "ok"] if not trials.empty else trials
    if len(trials) and len(failed) == len(trials):
        raise TliError(f"every trial failed ({len(trials)}); the first: {failed['error'].iloc[0]}")
    print(final_table(trials, axes, uri))


def _fit(
    space,
    total: int,
    config: SweepConfig,
    context: TrialContext,
    search_alg,
    axes: list[str],
    callbacks: list,
    store: ExperimentStore,
) -> None:
    trainable_with_context = tune.with_resources(
        tune.with_parameters(trainable, context=context), {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable_with_context,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            metric="objective",
            mode="max",
            num_samples=total if search_alg else 1,
            reuse_actors=True,
            max_concurrent_trials=config.max_concurrent or None,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"),
            storage_path=f"{store.uri}/tune",
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            callbacks=[
                ResultSink(store.uri, config.save_adapters, config.experiment),
                Progress(total, axes),
                *callbacks,
            ],
        ),
    )
    for result in tuner.fit():  # trials that failed even after their retries
        if result.error is not None and result.config:  # (a trial that never started has no config)
            settings = context.settings(result.config)
            if (store.row(settings.trial_id) or {}).get("status") != "ok":
                message = (str(result.error).strip().splitlines() or [""])[-1][:500]
                store.write_row(
                    settings.row()
                    | {
                        "experiment": config.experiment,
                        "status": "error",
                        "objective": float("nan"),
                        "error": f"{type(result.error).__name__}: {message}",
                        "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
                    }
                )


# --- the table printed at the end ----------------------------------------------------------------

SETS = ("trained", "validation", "control", "heldout", "unseen")
TABLE_METRICS = (
    "cosine_pre",
    "cosine_post",
    "gap_pre",
    "gap_post",
    "centered_gap_pre",
    "centered_gap_post",
    "p_at_1_pre",
    "p_at_1_post",
)
CONDITION_METRICS = ("objective", "final_loss", "drift_kl_sw", "drift_kl_en")


def final_table(trials: pd.DataFrame, axes: list[str], uri: str) -> str:
    """Per swept setting: the selection objective and drift, then each set at the target layer (seed means)."""
    lines = []
    ok = trials[trials["status"] == "ok"] if not trials.empty else trials
    axes = list(dict.fromkeys(["target_layer", *axes]))
    if not ok.empty:
        grouped = ok.groupby(axes, dropna=False)
        per_condition = grouped[[c for c in CONDITION_METRICS if c in ok]].mean()
        per_condition.insert(0, "n_trials", grouped.size())
        lines.append(per_condition.reset_index().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        long = []
        for name in SETS:
            columns = {f"target_{name}_{metric}": metric for metric in TABLE_METRICS}
            if set(columns) <= set(ok.columns):
                part = ok[axes + list(columns)].rename(columns=columns).dropna(subset=["cosine_pre"])
                long.append(part.assign(set=name))
        table = pd.concat(long).groupby(axes + ["set"], sort=True, dropna=False)[list(TABLE_METRICS)].mean()
        lines.append(table.reset_index().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    errors = trials[trials["status"] != "ok"] if not trials.empty else trials
    for _, row in errors.head(10).iterrows():
        lines.append(f"error {row['trial_id']} (target layer {row['target_layer']}): {row['error']}")
    lines.append(
        f"{len(ok)} ok / {len(errors)} error trials; results in {uri}/ "
        "(trials.parquet, summary.parquet, pairs.parquet, train_log.parquet, scan.parquet, sweep_config.json)"
    )
    return "\n".join(lines)
