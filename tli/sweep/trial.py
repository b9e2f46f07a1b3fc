"""One trial inside a worker process: train LoRA, evaluate before/after, measure drift, return its record.

Each worker process keeps one base model and a bounded set of its pre-TLI embeddings (`WorkerCache`)
across trials (Tune reuses actors); after every trial the LoRA layers are removed (`PeftModel.unload`),
and a model left with LoRA by a failure is dropped, so no trial sees another's adapter. A deterministic
failure (`TliError`: an impossible setting, a NaN loss, an adapter that left the model unchanged) becomes
an `error` record; anything else (out of memory, a lost node) propagates so Tune retries the trial.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import io
import json
import os
import socket
import time
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tli.config import EvalConfig, ModelConfig, ProbeConfig, TrainConfig
from tli.errors import TliError
from tli.evaluate import SETS
from tli.sweep.inputs import ExperimentInputs, trial_sets
from tli.sweep.settings import TrialSettings, setting_names

TABLES = ("summary", "pairs", "train_log", "probe")  # a trial's tables (beside its row; probe: when it ran)
OUTCOMES = ("objective", "final_loss", "drift_kl_sw", "drift_kl_en")  # per trial, beside the wide metrics
OBJECTIVE_METRIC = "centered_gap_alike_diff"  # the objective: this summary column, validation set, selection layer
EARLIER_OBJECTIVE = "centered_gap_diff"  # what rows without `objective_metric` (tli before it) were scored by
PROBE_DIRECTIONS = ("sw_en", "en_sw")  # tli.probe.DIRECTIONS (tli.probe imports torch; a test checks they agree)
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
    "gap_alike_pre": "gap_alike_pre",
    "gap_alike_post": "gap_alike_post",
    "gap_alike_diff": "gap_alike_diff",
    "gap_alike_p": "gap_alike_p",
    "centered_gap_alike_pre": "centered_gap_alike_pre",
    "centered_gap_alike_post": "centered_gap_alike_post",
    "centered_gap_alike_diff": "centered_gap_alike_diff",
    "centered_gap_alike_p": "centered_gap_alike_p",
    "p_at_1_pre": "p_at_1_pre",
    "p_at_1_post": "p_at_1_post",
    "p_at_1_centered_pre": "p_at_1_centered_pre",
    "p_at_1_centered_post": "p_at_1_centered_post",
    "p_at_1_chance": "p_at_1_chance",
    # retrieval as the field reports it, McNemar's test of P@1, and the baselines on the same pool (issue 23)
    "mrr_pre": "mrr_pre",
    "mrr_post": "mrr_post",
    "p_at_1_mcnemar_p": "p_at_1_mcnemar_p",
    "p_at_1_centered_mcnemar_p": "p_at_1_centered_mcnemar_p",
    "p_at_5_centered_pre": "p_at_5_centered_pre",
    "p_at_5_centered_post": "p_at_5_centered_post",
    "p_at_10_centered_pre": "p_at_10_centered_pre",
    "p_at_10_centered_post": "p_at_10_centered_post",
    "mrr_centered_pre": "mrr_centered_pre",
    "mrr_centered_post": "mrr_centered_post",
    "p_at_5_chance": "p_at_5_chance",
    "p_at_10_chance": "p_at_10_chance",
    "mrr_chance": "mrr_chance",
    "orthographic_p_at_1": "orthographic_p_at_1",
    "orthographic_mrr": "orthographic_mrr",
    "procrustes_p_at_1": "procrustes_p_at_1",
    "procrustes_mrr": "procrustes_mrr",
}
# the translation probe (tli.probe), per set and direction: trial-row column probe_{set}_{direction}_{metric}
PROBE_METRICS = (
    "n",
    "accuracy_pre",
    "accuracy_post",
    "accuracy_mcnemar_p",
    "mrr_pre",
    "mrr_post",
    "logprob_pre",
    "logprob_post",
)


@dataclasses.dataclass(frozen=True, eq=False)
class TrialRecord:
    """What a trial sends back: its row, its tables and (optionally) its adapter's files."""

    row: dict[str, Any]
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # summary, pairs, train_log
    adapter: dict[str, bytes] = dataclasses.field(default_factory=dict)  # PEFT file name -> content


def pack(record: TrialRecord) -> bytes:
    """The trial's files as one zip archive: row.json, its tables as Parquet (a `trial_id` column first,
    text columns typed as text even when empty), adapter/<file>.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, table in record.tables.items():
            archive.writestr(f"{name}.parquet", _parquet(table, record.row["trial_id"]))
        for name, content in record.adapter.items():
            archive.writestr(f"adapter/{name}", content)
        archive.writestr("row.json", json.dumps(record.row, default=_json_value))
    return buffer.getvalue()


def _parquet(frame: pd.DataFrame, trial_id: str) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.add_column(0, "trial_id", pa.array([trial_id] * len(frame), pa.string()))
    for index, field in enumerate(table.schema):
        if pa.types.is_null(field.type):  # e.g. a pos column no row fills: text, not Parquet's null type
            table = table.set_column(index, field.name, table.column(index).cast(pa.string()))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _json_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


# --- the trials table: one schema whatever the sets present ----------------------------------------

ROW_FIRST = {"trial_id": pa.string(), "experiment": pa.string(), "status": pa.string(), "error": pa.string()}
ROW_OUTCOMES = {
    "n_train_pairs": pa.int64(),
    "final_loss": pa.float64(),
    "objective": pa.float64(),
    "objective_metric": pa.string(),
    "drift_kl_sw": pa.float64(),
    "drift_kl_en": pa.float64(),
    "train_seconds": pa.float64(),
    "eval_seconds": pa.float64(),
    "probe_seconds": pa.float64(),
    "drift_seconds": pa.float64(),
    "eval_layer_target": pa.int64(),
    "eval_layer_final": pa.int64(),
    "eval_layer_selection": pa.int64(),
    "node": pa.string(),
    "worker": pa.string(),
    "worker_trial": pa.int64(),
    "finished_at": pa.timestamp("us", tz="UTC"),
    **{name: pa.string() for name in ("version_tli", "version_torch", "version_transformers", "version_peft")},
    "version_ray": pa.string(),
    "git_commit": pa.string(),
}  # beside the settings: what a trial measured, where and when it ran, with which code
ROW_DEVICE = {
    **{name: pa.string() for name in ("device_resolved", "gpu_name", "gpu_id", "compute_dtype")},
    "drift_floor_sw": pa.float64(),
    "drift_floor_en": pa.float64(),
}  # what the trial ran on (`models.runs_on`), and the drift its arithmetic cannot resolve (`drift.noise_floor`)
EMBEDDING_CACHE_BYTES = 256 * 2**20  # pre-TLI pool embeddings a worker keeps, least recently used dropped first


# --- what training did, and drift against its reference (row columns from the training log and tli.drift) ----

DYNAMICS = (  # train_log columns summarised in the row: at step 0 (`_start`) and over the last epoch (`_end`)
    "loss",
    "loss_minus_margin",
    "active_hinges",
    *(f"{kind}cos_{name}" for kind in ("", "centered_") for name in ("positive", "hardest_negative", "negatives")),
)
ROW_TRAINING = {
    **{f"train_{name}_{when}": pa.float64() for name in DYNAMICS for when in ("start", "end")},
    "train_active_hinges_min": pa.float64(),  # the fewest open hinges of any step: 1 = the margin never mattered
    "train_grad_norm_end": pa.float64(),
    "train_lora_norm_end": pa.float64(),  # ||delta W|| of the trained adapter
}
DRIFT_LANGUAGES = ("sw", "en")
ROW_DRIFT = {
    f"drift_kl_{language}_{part}": pa.float64()
    for language in DRIFT_LANGUAGES
    for part in ("ci_low", "ci_high", "random")
}  # beside drift_kl_<lang>: its CI over sequences and the random-direction reference (`tli.drift.drift_measures`)


def training_columns(train_log: pd.DataFrame) -> dict[str, float]:
    """ROW_TRAINING from a training log (`tli.train.LOG_COLUMNS`): each DYNAMICS column at step 0 (before any
    update) and its mean over the last epoch's steps, the fewest open hinges of any step, the last epoch's mean
    gradient norm, the final LoRA update norm. NaN where the log lacks a column.
    """
    log = train_log.reindex(columns=[*DYNAMICS, "step", "epoch", "grad_norm", "lora_norm"])
    start, steps = log[log["step"] == 0], log[log["step"] > 0]
    last = steps[steps["epoch"] == steps["epoch"].max()]

    def value(rows: pd.DataFrame, name: str, how: str = "mean") -> float:
        values = rows[name].astype(float)
        return float(values.agg(how)) if values.notna().any() else float("nan")

    row = {}
    for name in DYNAMICS:
        row |= {f"train_{name}_start": value(start, name), f"train_{name}_end": value(last, name)}
    return row | {
        "train_active_hinges_min": value(steps, "active_hinges", "min"),
        "train_grad_norm_end": value(last, "grad_norm"),
        "train_lora_norm_end": value(steps.tail(1), "lora_norm"),
    }


_TYPES = (("bool", pa.bool_()), ("float", pa.float64()), ("int", pa.int64()))  # a setting's type hint -> Arrow


@functools.cache
def trials_schema() -> pa.Schema:
    """The columns of trials.parquet: ROW_FIRST, every setting (typed by TrialSettings), ROW_OUTCOMES, ROW_DEVICE,
    ROW_TRAINING, ROW_DRIFT, then `{place}_{set}_{metric}` for every place, set and WIDE_METRICS metric (null where
    a trial lacks the set), then `probe_{set}_{direction}_{metric}` for every PROBE_METRICS metric (null where the
    probe did not run).
    """
    hints = {}
    for part in (ModelConfig, TrainConfig, ProbeConfig, TrialSettings):
        hints |= {f.name: str(f.type) for f in dataclasses.fields(part)}
    columns = dict(ROW_FIRST)
    for name in setting_names():
        typed = (kind for word, kind in _TYPES if word in hints[name])
        columns[name] = next(typed, pa.string())
    columns |= ROW_OUTCOMES | ROW_DEVICE | ROW_TRAINING | ROW_DRIFT
    for place in PLACES:
        for name in SETS:
            columns |= {
                f"{place}_{name}_{metric}": pa.int64() if metric in ("n", "n_removed") else pa.float64()
                for metric in WIDE_METRICS
            }
    for name in SETS:  # the translation probe's columns (probe_metrics)
        for direction in PROBE_DIRECTIONS:
            columns |= {
                f"probe_{name}_{direction}_{metric}": pa.int64() if metric == "n" else pa.float64()
                for metric in PROBE_METRICS
            }
    return pa.schema(list(columns.items()))


def trials_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Trial rows as one Arrow table of `trials_schema()`, then any other column the rows carry (in order of
    first appearance; one no row fills is text).
    """
    frame = pd.DataFrame(rows)
    schema = trials_schema()
    arrays, fields = [], []
    for field in schema:
        values = frame[field.name] if field.name in frame else pd.Series([None] * len(frame), dtype=object)
        if pa.types.is_timestamp(field.type):
            values = pd.to_datetime(values, utc=True, format="ISO8601")
        elif field.type == pa.string():
            values = values.map(lambda v: v if v is None or isinstance(v, str) or v != v else str(v))
        arrays.append(pa.array(values, type=field.type, from_pandas=True))
        fields.append(field)
    for name in frame.columns:
        if name not in schema.names:
            array = pa.array(frame[name], from_pandas=True)
            arrays.append(array.cast(pa.string()) if pa.types.is_null(array.type) else array)
            fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class WorkerCache:
    """What a worker process keeps across trials: one base model, and its pre-TLI pool embeddings up to
    `embedding_bytes` (least recently used dropped first). A trial of another model, dtype or quantization
    replaces the model (the old one's memory, on the GPU too, is freed first), so a grid over models never
    stacks them on one GPU, and a layer sweep does not grow the worker by a layer's embeddings per trial.
    """

    def __init__(self, embedding_bytes: int = EMBEDDING_CACHE_BYTES):
        self.models: dict[ModelConfig, tuple] = {}  # at most one: config -> (model, tokenizer)
        self.embeddings: dict[tuple, tuple] = {}  # (model config, inputs digest, pooling, layer) -> (sw, en), LRU order
        self.embedding_bytes = embedding_bytes
        self.answers: dict[tuple, Any] = {}  # (model config, inputs digest, probe config, Source) -> Answer
        self.trials = 0  # trials this process has run

    def model(self, config: ModelConfig) -> tuple:
        from tli import models

        if config not in self.models:
            self.drop()
            self.models[config] = models.load_model(config)
        return self.models[config]

    def drop(self) -> None:
        """Forget the model and its embeddings, and free their memory (the CUDA allocator's cache included)."""
        import torch

        self.models.clear()
        self.embeddings.clear()
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def pre_embeddings(self, config: ModelConfig, inputs: ExperimentInputs, mode: str, layers: list[int]) -> dict:
        """{layer: (Swahili pool, English pool)} of the base model, each layer computed once while it stays cached."""
        from tli.evaluate import embed_lexicon

        keys = {k: (config, inputs.digest, mode, k) for k in layers}
        missing = [k for k, key in keys.items() if key not in self.embeddings]
        if missing:
            model, tokenizer = self.model(config)
            for k, vectors in embed_lexicon(model, tokenizer, inputs.lexicon, missing, mode).items():
                self.embeddings[keys[k]] = vectors
        for key in keys.values():  # most recently used last
            self.embeddings[key] = self.embeddings.pop(key)
        self._evict(keep=set(keys.values()))
        return {k: self.embeddings[key] for k, key in keys.items()}

    def _evict(self, keep: set[tuple]) -> None:
        """Drop the least recently used embeddings (never those in `keep`) until they fit `embedding_bytes`."""
        held = {key: sum(array.nbytes for array in vectors) for key, vectors in self.embeddings.items()}
        total = sum(held.values())
        for key in [key for key in self.embeddings if key not in keep]:
            if total <= self.embedding_bytes:
                break
            total -= held[key]
            del self.embeddings[key]

    def pre_answers(self, config: ModelConfig, inputs: ExperimentInputs, probe_config: ProbeConfig, wanted) -> dict:
        """{(direction, word): tli.probe.Answer} of the base model for the Sources `wanted`, each computed once per
        process. Keyed by the whole Source: a word's golds (the translations probed with it) differ between trials
        whose sets differ (a category hold-out), and an Answer scores only its own golds.
        """
        from tli import probe

        def key(source):
            return config, inputs.digest, probe_config, source

        missing = [source for source in wanted if key(source) not in self.answers]
        if missing:
            model, tokenizer = self.model(config)
            found = probe.answer(model, tokenizer, missing, probe_config)
            for source in missing:
                self.answers[key(source)] = found[source.direction, source.word]
        return {(source.direction, source.word): self.answers[key(source)] for source in wanted}


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


def probe_metrics(summary: pd.DataFrame) -> dict[str, Any]:
    """The translation probe's summary (`tli.probe.probe_summary`) as `probe_{set}_{direction}_{metric}` columns."""
    return {
        f"probe_{entry['set']}_{entry['direction']}_{metric}": entry[metric]
        for _, entry in summary.iterrows()
        for metric in PROBE_METRICS
    }


def objective(summary: pd.DataFrame, layer: int) -> float:
    """The selection objective: the validation set's gain (post - pre) in centred gap over alike non-translations
    (`OBJECTIVE_METRIC`, the centred gap the verdict tests: under `mean` pooling the gap over every non-translation
    also rewards length) at the selection layer; NaN without a validation set there.
    """
    rows = summary[(summary["set"] == "validation") & (summary["eval_layer"] == layer)]
    return float(rows[OBJECTIVE_METRIC].iloc[0]) if len(rows) else float("nan")


def run_trial(
    settings: TrialSettings,
    inputs: ExperimentInputs,
    cache: WorkerCache,
    on_epoch_end: Callable[[pd.DataFrame], None] | None = None,
    keep_adapter: bool = False,
) -> TrialRecord:
    """Train, evaluate and measure one trial; a TliError becomes an `error` record (nothing else is caught)."""
    row = (
        settings.row()
        | {"status": "error", "error": None, "objective_metric": OBJECTIVE_METRIC}
        | {"worker": f"{socket.gethostname()}:{os.getpid()}"}
        | _provenance()
    )
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


@functools.cache
def _provenance() -> dict[str, str]:
    """The worker's library versions and git commit (`files.provenance`), once per process."""
    from tli import files

    return files.provenance()


def _train_and_measure(
    settings: TrialSettings, inputs: ExperimentInputs, cache: WorkerCache, on_epoch_end, keep_adapter: bool
) -> TrialRecord:
    from tli import drift, evaluate, models, surgery, train

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
    probing = _probe_before(settings, inputs, cache, sets)
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
        probed = _probe_after(peft_model, tokenizer, settings.probe, probing)
        probe_done = time.perf_counter()
        measured = settings.drift and inputs.drift_samples is not None
        kl = (
            drift.drift_measures(peft_model, inputs.drift_samples, settings.n_boot, settings.train.seed)
            if measured
            else {f"drift_kl_{language}": float("nan") for language in DRIFT_LANGUAGES}
        )
        placement = models.runs_on(settings.model)
        floor = (
            drift.noise_floor(peft_model, inputs.drift_samples)
            if measured and placement["compute_dtype"] != "float32"
            else {"drift_floor_sw": float("nan"), "drift_floor_en": float("nan")}
        )
        drifted = time.perf_counter()
        metrics = {"final_loss": float(train_log["loss"].iloc[-1]), "objective": objective(summary, selection)}
        files = _adapter_folder(peft_model, settings, inputs.pairs_file, train_rows, metrics) if keep_adapter else {}
    finally:
        if peft_model is not None:
            cache.models[settings.model] = (peft_model.unload(), tokenizer)
        if has_lora(cache.models[settings.model][0]):  # a failure inside train_tli after LoRA was attached
            cache.drop()
    row = (
        {
            "status": "ok",
            "n_train_pairs": len(train_rows),
            "final_loss": float(train_log["loss"].iloc[-1]),
            "objective": objective(summary, selection),
            "train_seconds": trained - started,
            "eval_seconds": evaluated - trained,
            "probe_seconds": probe_done - evaluated,
            "drift_seconds": drifted - probe_done,
            "eval_layer_target": settings.train.target_layer,
            "eval_layer_final": n_layers,
            "eval_layer_selection": selection,
        }
        | kl
        | placement
        | floor
    )
    row |= training_columns(train_log)
    row |= wide_metrics(summary, {"target": settings.train.target_layer, "final": n_layers})
    tables = {"summary": summary, "pairs": pairs, "train_log": train_log}
    if probed is not None:
        row |= probe_metrics(probed[1])
        tables["probe"] = probed[0]
    return TrialRecord(row, tables, files)


def _probe_before(settings: TrialSettings, inputs: ExperimentInputs, cache: WorkerCache, sets: dict) -> tuple | None:
    """(rows probed, rows excluded, Sources, the base model's Answers) of the translation probe, or None when off."""
    if not settings.probe.translation_probe:
        return None
    from tli import probe

    probed, excluded = probe.probed_rows(sets, settings.probe)
    wanted = probe.sources(probed, inputs.lexicon, settings.probe)
    return probed, excluded, wanted, cache.pre_answers(settings.model, inputs, settings.probe, wanted)


def _probe_after(peft_model, tokenizer, config: ProbeConfig, probing: tuple | None) -> tuple | None:
    """(probe table, probe summary) with the adapter applied, or None when the probe is off."""
    if probing is None:
        return None
    from tli import probe

    probed, excluded, wanted, before = probing
    table = probe.probe_table(probed, wanted, before, probe.answer(peft_model, tokenizer, wanted, config))
    return table, probe.probe_summary(table, excluded)


def _adapter_folder(
    peft_model, settings: TrialSettings, pairs_file: str, train_rows, metrics: dict[str, float]
) -> dict[str, bytes]:
    """The files of a `tli train` adapter folder (`adapters.adapter_files`): `tli evaluate` reads it."""
    from tli import adapters, files, models
    from tli.config import to_dict

    stored = (
        {"model": models.describe(settings.model), "train": to_dict(settings.train), "trial_id": settings.trial_id}
        | {"objective_metric": OBJECTIVE_METRIC}
        | adapters.training_record(pairs_file, train_rows)
        | {"metrics": metrics}
        | files.provenance()
    )
    return adapters.adapter_files(peft_model, stored)
