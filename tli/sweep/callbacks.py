"""The driver's side of a sweep: Tune callbacks that commit each trial's files, show progress and log to
TensorBoard, MLflow or W&B; and the table printed at the end.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pandas as pd
from ray import tune

from tli.errors import TliError
from tli.evaluate import SETS
from tli.sweep.flags import SweepConfig
from tli.sweep.store import ExperimentStore
from tli.sweep.trial import OUTCOMES

ARCHIVE_KEY = "tli_archive"
MERGE_SECONDS = 30  # trials.parquet is refreshed at most this often while trials finish (and at the end)


class ResultSink(tune.Callback):
    """Commits each trial's archive to the store (the driver is the one writer) and refreshes trials.parquet."""

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
        self.running[trial.trial_id] = " ".join(f"{k}={short_value(trial.config.get(k))}" for k in self.axes)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("status") == "running" and trial.trial_id in self.running:
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


def short_value(value: Any) -> str:
    """A setting's value as a trial label shows it: floats to 3 significant digits."""
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
            raise TliError(f"--callbacks {name} needs {module}: pip install 'targeted-lexical-injection[{extra}]'")
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


def finish(trials: pd.DataFrame, axes: list[str], uri: str) -> None:
    """Print the final table; a TliError when every trial failed (nothing worth listing was written)."""
    failed = trials[trials["status"] != "ok"] if not trials.empty else trials
    if len(trials) and len(failed) == len(trials):
        raise TliError(f"every trial failed ({len(trials)}); the first: {failed['error'].iloc[0]}")
    print(final_table(trials, axes, uri))


# --- the table printed at the end ----------------------------------------------------------------

TABLE_METRICS = (  # the gaps the verdict reads: over mismatched pairs alike in length and pooled-BOS share
    "cosine_pre",
    "cosine_post",
    "gap_alike_pre",
    "gap_alike_post",
    "centered_gap_alike_pre",
    "centered_gap_alike_post",
    "p_at_1_pre",
    "p_at_1_post",
)


def final_table(trials: pd.DataFrame, axes: list[str], uri: str) -> str:
    """Per swept setting: the selection objective and drift, then each set at the target layer (seed means)."""
    lines = []
    ok = trials[trials["status"] == "ok"] if not trials.empty else trials
    axes = list(dict.fromkeys(["target_layer", *axes]))
    if not ok.empty:
        grouped = ok.groupby(axes, dropna=False)
        per_condition = grouped[[c for c in OUTCOMES if c in ok]].mean()
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
