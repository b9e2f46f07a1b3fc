"""One trial inside a worker process: train LoRA, evaluate before/after, measure drift, return its record.

Each worker process keeps its base models and their pre-TLI embeddings (`WorkerCache`) across trials
(Tune reuses actors); after every trial the LoRA layers are removed (`PeftModel.unload`), and a model
left with LoRA by a failure is dropped, so no trial sees another's adapter. A deterministic failure
(`TliError`: an impossible setting, a NaN loss) becomes an `error` record; anything else (out of memory,
a lost node) propagates so Tune retries the trial.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from tli.config import EvalConfig, ModelConfig
from tli.errors import TliError
from tli.sweep.inputs import ExperimentInputs, trial_sets
from tli.sweep.settings import TrialSettings
from tli.sweep.store import TrialRecord

OUTCOMES = ("objective", "final_loss", "drift_kl_sw", "drift_kl_en")  # per trial, beside the wide metrics
PLACES = ("target", "final")  # evaluation layers named in trial rows: the target layer and the last layer L
WIDE_METRICS = {  # trial-row suffix -> summary column, per place and set
    "n": "n",
    "n_removed": "n_removed",
    "cosine_pre": "mean_pre",
    "cosine_post": "mean_post",
    "mean_diff": "mean_diff",
    "p": "p",
    "gap_pre": "gap_pre",
    "gap_post": "gap_post",
    "gap_diff": "gap_diff",
    "gap_p": "gap_p",
    "centered_gap_pre": "centered_gap_pre",
    "centered_gap_post": "centered_gap_post",
    "centered_gap_diff": "centered_gap_diff",
    "centered_gap_p": "centered_gap_p",
    "p_at_1_pre": "p_at_1_pre",
    "p_at_1_post": "p_at_1_post",
    "p_at_1_centered_pre": "p_at_1_centered_pre",
    "p_at_1_centered_post": "p_at_1_centered_post",
    "p_at_1_chance": "p_at_1_chance",
}


class WorkerCache:
    """What a worker process keeps across trials: loaded base models and their pre-TLI pool embeddings."""

    def __init__(self):
        self.models: dict[ModelConfig, tuple] = {}  # -> (model, tokenizer)
        self.embeddings: dict[tuple, tuple] = {}  # (model config, inputs digest, pooling, layer) -> (sw, en)
        self.trials = 0  # trials this process has run

    def model(self, config: ModelConfig) -> tuple:
        from tli import models

        if config not in self.models:
            self.models[config] = models.load_model(config)
        return self.models[config]

    def pre_embeddings(self, config: ModelConfig, inputs: ExperimentInputs, mode: str, layers: list[int]) -> dict:
        """{layer: (Swahili pool, English pool)} of the base model, each layer computed once per process."""
        from tli.evaluate import embed_lexicon

        missing = [k for k in layers if (config, inputs.digest, mode, k) not in self.embeddings]
        if missing:
            model, tokenizer = self.model(config)
            for k, vectors in embed_lexicon(model, tokenizer, inputs.lexicon, missing, mode).items():
                self.embeddings[config, inputs.digest, mode, k] = vectors
        return {k: self.embeddings[config, inputs.digest, mode, k] for k in layers}


def has_lora(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def wide_metrics(summary: pd.DataFrame, layers: dict[str, int]) -> dict[str, Any]:
    """The summary rows at each named layer as `{place}_{set}_{metric}` columns (see WIDE_METRICS)."""
    row: dict[str, Any] = {}
    for place, layer in layers.items():
        for _, entry in summary[summary["eval_layer"] == layer].iterrows():
            row |= {f"{place}_{entry['set']}_{name}": entry[column] for name, column in WIDE_METRICS.items()}
    return row


def objective(summary: pd.DataFrame, layer: int) -> float:
    """The selection objective: the validation set's centred-gap gain (post - pre) at the selection layer."""
    rows = summary[(summary["set"] == "validation") & (summary["eval_layer"] == layer)]
    return float(rows["centered_gap_diff"].iloc[0]) if len(rows) else float("nan")


def run_trial(
    settings: TrialSettings,
    inputs: ExperimentInputs,
    cache: WorkerCache,
    on_epoch_end: Callable[[pd.DataFrame], None] | None = None,
    keep_adapter: bool = False,
) -> TrialRecord:
    """Train, evaluate and measure one trial; a TliError becomes an `error` record (nothing else is caught)."""
    row = settings.row() | {"status": "error", "error": None, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        record = _train_and_measure(settings, inputs, cache, on_epoch_end, keep_adapter)
    except TliError as error:  # deterministic: retrying cannot help
        record = TrialRecord({"error": f"{type(error).__name__}: {error}", "objective": float("nan")})
    finally:
        cache.trials += 1
    return dataclasses.replace(
        record,
        row=row | record.row | {"worker_trial": cache.trials, "finished_at": pd.Timestamp.now(tz="UTC").isoformat()},
    )


def _train_and_measure(
    settings: TrialSettings, inputs: ExperimentInputs, cache: WorkerCache, on_epoch_end, keep_adapter: bool
) -> TrialRecord:
    from tli import drift, evaluate, surgery, train

    train_rows, sets, removed = trial_sets(inputs, settings)
    model, tokenizer = cache.model(settings.model)
    if has_lora(model):
        raise RuntimeError("LoRA layers left in the cached base model")  # never expected: see finally below
    n_layers = surgery.num_layers(model)
    train.check_target_layer(settings.train, n_layers)
    selection = settings.selection_layer or n_layers
    eval_config = EvalConfig(
        pooling=settings.pooling_eval,
        n_boot=settings.n_boot,
        seed=settings.train.seed,
        layers=tuple(sorted({settings.train.target_layer, selection, n_layers})),
    )
    layers = evaluate.eval_layers(eval_config, settings.train.target_layer, n_layers)
    pre = cache.pre_embeddings(settings.model, inputs, settings.pooling_eval, layers)
    peft_model = None
    try:
        started = time.perf_counter()
        peft_model, train_log = train.train_tli(
            model, tokenizer, train_rows, settings.train, progress=False, on_epoch_end=on_epoch_end
        )
        trained = time.perf_counter()
        summary, pairs = evaluate.evaluate_adapter(
            peft_model,
            tokenizer,
            sets,
            settings.train.target_layer,
            eval_config,
            lexicon=inputs.lexicon,
            pre=pre,
            removed=removed,
        )
        evaluated = time.perf_counter()
        kl = (
            drift.drift_kl(peft_model, inputs.drift_samples)
            if settings.drift and inputs.drift_samples is not None
            else {"drift_kl_sw": float("nan"), "drift_kl_en": float("nan")}
        )
        drifted = time.perf_counter()
        metrics = {"final_loss": float(train_log["loss"].iloc[-1]), "objective": objective(summary, selection)}
        files = _adapter_folder(peft_model, settings, inputs.pairs_file, train_rows, metrics) if keep_adapter else {}
    finally:
        if peft_model is not None:
            cache.models[settings.model] = (peft_model.unload(), tokenizer)
        if has_lora(cache.models[settings.model][0]):  # a failure inside train_tli after LoRA was attached
            del cache.models[settings.model]
    row = {
        "status": "ok",
        "n_train_pairs": len(train_rows),
        "final_loss": float(train_log["loss"].iloc[-1]),
        "objective": objective(summary, selection),
        "train_seconds": trained - started,
        "eval_seconds": evaluated - trained,
        "drift_seconds": drifted - evaluated,
        "eval_layer_target": settings.train.target_layer,
        "eval_layer_final": n_layers,
        "eval_layer_selection": selection,
    } | kl
    row |= wide_metrics(summary, {"target": settings.train.target_layer, "final": n_layers})
    return TrialRecord(row, {"summary": summary, "pairs": pairs, "train_log": train_log}, files)


def _adapter_folder(
    peft_model, settings: TrialSettings, pairs_file: str, train_rows, metrics: dict[str, float]
) -> dict[str, bytes]:
    """The files of a `tli train` adapter folder (`adapters.adapter_files`): `tli evaluate` reads it."""
    from tli import adapters, files, models
    from tli.config import to_dict

    stored = (
        {"model": models.describe(settings.model), "train": to_dict(settings.train), "trial_id": settings.trial_id}
        | adapters.training_record(pairs_file, train_rows)
        | {"metrics": metrics}
        | files.provenance()
    )
    return adapters.adapter_files(peft_model, stored)
