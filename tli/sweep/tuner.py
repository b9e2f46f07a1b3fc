"""Ray Tune plumbing: the trainable and what it reports, the driver's callbacks, and `run_sweep`.

A trial reports its training loss after every epoch (one Tune iteration each) and, last, its headline
(`tune_metrics`: the same TUNE_KEYS in every report, NaN until known, so Tune's progress.csv has a column
for each; its `trial_id` as `tli_trial_id`: Tune owns `trial_id`), plus its files packed under ARCHIVE_KEY.
The driver's `ResultSink` callback, which runs before Tune's loggers, takes the archive out of the result
and commits it to the experiment's store, where its whole row (hundreds of metrics) lands in trials.parquet.
So Tune's loggers (TensorBoard, MLflow, W&B), `ResultGrid.get_dataframe()` and
`get_best_result("objective", "max")` see each trial's settings (its config) and headline, Tune's own
state per trial stays small, and no worker needs the results folder. `objective` (the validation set's gain
in centred gap over alike non-translations, `centered_gap_alike_diff`, at the selection layer:
`trial.objective`) is NaN until a trial's last report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune

from tli import files, models
from tli.config import ProbeConfig, TrainConfig
from tli.errors import TliError
from tli.sweep import resources, session
from tli.sweep.callbacks import ARCHIVE_KEY, Progress, ResultSink, finish, logger_callbacks, short_value
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import ExperimentInputs, load_inputs, trial_sets, with_drift_samples
from tli.sweep.resources import Reservation
from tli.sweep.settings import TrialSettings, check_axes, cut_for_smoke_test, expand_grid, swept_names
from tli.sweep.store import ExperimentStore
from tli.sweep.trial import DYNAMICS, OBJECTIVE_METRIC, OUTCOMES, WorkerCache, pack, run_trial

log = logging.getLogger(__name__)

SMOKE = {"epochs": 1, "warmup_steps": 0, "n_boot": 200}  # a smoke test's trials (drift: inputs.SMOKE_DRIFT)
SMOKE_PROBE = {"probe_pairs": 2, "probe_distractors": 2}  # a smoke test's translation probe: 2 pairs per set


def report_to_tune(metrics: dict[str, Any]) -> None:
    """The one call into Ray's reporting API (`ray.tune.report` in Ray 2.60; it moved between versions)."""
    tune.report(metrics)


@dataclasses.dataclass(frozen=True)
class Search:
    """A sampled sweep: a Ray Tune searcher, the Tune domain of each flat setting it draws, the trials to draw."""

    searcher: Any  # e.g. ray.tune.search.optuna.OptunaSearch
    domains: dict[str, Any]  # flat setting -> Tune domain (tune.randint, tune.choice, ...)
    num_samples: int


HEADLINE_SETS = ("trained", "validation", "control", "heldout", "unseen")
HEADLINE_GAINS = ("mean_diff", OBJECTIVE_METRIC)  # at the target layer: the raw cosine gain, the verdict's centred gap
AVERAGED = (*DYNAMICS, "grad_norm")  # train_log columns Tune sees as each epoch's mean, `train_<column>`
EPOCH = ("epoch", *(f"train_{name}" for name in AVERAGED), "train_loss_last", "lr", "train_lora_norm")
HEADLINE = (*OUTCOMES, *(f"target_{name}_{gain}" for name in HEADLINE_SETS for gain in HEADLINE_GAINS))
TUNE_KEYS = ("tli_trial_id", "status", "error", *EPOCH, *HEADLINE)  # every report's keys, in order: Tune's
# progress.csv takes its header from a trial's first report


def tune_metrics(row: dict[str, Any], train_log: pd.DataFrame | None = None) -> dict[str, Any]:
    """What Tune sees of a trial: TUNE_KEYS, NaN until known, in every report. Its `trial_id` as `tli_trial_id`
    (Tune sets its own), status ("running" until its row is done), the last epoch of `train_log` (the epoch's mean
    of each logged dynamic, `train_loss`, `train_active_hinges`, ..., `train_grad_norm`, NaN where not logged; its
    last step loss, the learning rate, the LoRA update norm after it), OUTCOMES and the headline gains; the whole
    row goes to the store.
    """
    metrics = dict.fromkeys(TUNE_KEYS, float("nan"))
    metrics |= {"tli_trial_id": row["trial_id"], "status": row.get("status", "running"), "error": row.get("error")}
    if train_log is not None and len(train_log):
        epoch = int(train_log["epoch"].iloc[-1])
        steps = train_log[train_log["epoch"] == epoch].reindex(columns=[*AVERAGED, "lr", "lora_norm"])
        metrics |= {"epoch": epoch} | {f"train_{name}": float(steps[name].astype(float).mean()) for name in AVERAGED}
        metrics |= {
            "train_loss_last": float(steps["loss"].iloc[-1]),
            "lr": float(steps["lr"].iloc[-1]),
            "train_lora_norm": float(steps["lora_norm"].iloc[-1]),
        }
    return metrics | {key: row[key] for key in HEADLINE if row.get(key) is not None}


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
        """A trial's settings from its flat Tune config (the swept settings): the base with the trial's values."""
        return TrialSettings.from_flat(self.base).replace(**config)


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
        lambda train_log: report_to_tune(tune_metrics({"trial_id": settings.trial_id}, train_log)),
        keep_adapter=context.save_adapters != "none",
    )
    record.row["node"] = ray.get_runtime_context().get_node_id()
    report_to_tune(tune_metrics(record.row, record.tables.get("train_log")) | {ARCHIVE_KEY: pack(record)})


# --- the sweep, in the driver --------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(config: SweepConfig):
    """Join `config.address`, or start a private local Ray on loopback with a token of its own (`session.connect`);
    shut down only what this started. TliError when no cluster answers; on a cluster, a warning when no node fits a
    trial yet (a private Ray's machine is checked before, in `run_sweep`).
    """
    if ray.is_initialized():
        yield
        return
    with session.connect(config.address, config.verbose):
        if config.address:
            _check_resources(config, [node["Resources"] for node in ray.nodes() if node["Alive"]])
        yield


def _check_resources(config: SweepConfig, nodes: list[dict[str, float]]) -> None:
    """For a private local Ray (`nodes`: this machine's resources, as Ray would count them), TliError when one
    trial asks for more CPU or GPU than the machine has (Tune would wait for ever); on a cluster (`nodes`: the
    alive nodes' resources), a warning (an autoscaler may still add a node that fits). A GPU share of `auto` is
    decided later (`resources.reserve`).
    """
    for name, asked in (("CPU", config.cpus_per_trial), ("GPU", config.gpus_per_trial)):
        most = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if asked == "auto" or asked <= most:
            continue
        if not config.address:
            raise TliError(
                f"a trial asks for {asked:g} {name} but this machine has {most:g}: lower --{name.lower()}s-per-trial"
            )
        log.warning("a trial asks for %g %s, no node has that many yet: trials wait for one", asked, name)


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
        probe=ProbeConfig(
            translation_probe=config.translation_probe,
            **(SMOKE_PROBE if smoke else {"probe_pairs": config.probe_pairs}),
        ),
    )


def _check_trials(
    planned: list[TrialSettings], inputs: ExperimentInputs, n_layers: int, model: str, needs_objective: bool
) -> None:
    """TliError, before Ray starts, for a planned trial that cannot work: a layer the model lacks, too few pairs,
    no validation set where a search or --save-adapters best needs the validation objective.
    """
    for settings in planned:
        for name, layer in (
            ("target layer", settings.train.target_layer),
            ("selection layer", settings.selection_layer),
        ):
            if layer is not None and layer > n_layers:
                raise TliError(f"{name} {layer} is out of range: {model} has layers 0..{n_layers}")
    for split in {(s.heldout_category, s.validation_fraction, s.validation_seed) for s in planned}:
        settings = TrialSettings().replace(
            heldout_category=split[0], validation_fraction=split[1], validation_seed=split[2]
        )
        sets = trial_sets(inputs, settings)[1]  # TliError for too few training pairs
        if needs_objective and "validation" not in sets:
            raise TliError(
                "a search and --save-adapters best choose by the validation objective, but no validation "
                f"set is left (--validation-fraction {split[1]:g}): raise it"
            )


def scan_all_poolings(model_config, pairs: pd.DataFrame, digest: str) -> pd.DataFrame:
    """The base model's layer scan (`tli.scan.scan_layers`) in every pooling mode, one forward pass per batch."""
    import torch

    from tli import models, scan
    from tli.config import POOLING_MODES, ScanConfig

    torch.set_num_threads(1)  # it reserves no CPU: one thread, borrowed
    model, tokenizer = models.load_model(model_config)
    table = scan.scan_layers(model, tokenizer, pairs, ScanConfig(), progress=False, modes=POOLING_MODES)
    table.insert(0, "model", model_config.model)
    return table.assign(inputs_digest=digest)


def _start_scan(inputs: ExperimentInputs, store: ExperimentStore, model_config, reserved: Reservation):
    """The scan as a Ray task beside the trials (None when stored): it takes a trial's GPU share but reserves
    no CPU, so this short task never holds a CPU trial back (on the CPU it borrows one thread).
    """
    scan = store.read("scan")
    if not scan.empty and set(scan.get("inputs_digest", [])) == {inputs.digest}:
        return None
    task = ray.remote(num_cpus=0, num_gpus=reserved.gpus)(scan_all_poolings)
    return task.remote(
        model_config,
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
    inputs: ExperimentInputs | None = None,
) -> pd.DataFrame:
    """Run a sweep's trials and return the merged trials table.

    `grid` maps each flat setting to its values (a dict value sets several settings at once); trials already
    stored as ok are skipped. Or `search` draws `num_samples` trials from Tune domains. Either may be a
    function of the experiment's inputs (`inputs`: `load_inputs(config)`, loaded here unless given). Everything
    a user can get wrong is checked before Ray starts, with the experiment locked to this driver; a sweep in
    which every trial failed is a TliError, one stopped before every trial ran a `SweepStopped`.
    """
    callbacks = logger_callbacks(config)
    if not config.address and not ray.is_initialized():
        _check_resources(config, [session.local_resources()])  # the private Ray's machine: before anything is written
    store = ExperimentStore(config.location)
    _check_apart(config, store)
    store.folder.check_writable()
    plan = _plan(grid, config, search, load_inputs(config) if inputs is None else inputs)
    with store.lock(" ".join(sys.argv)):
        stored, previous = store.rows(), store.read_json("sweep_config.json")
        _check_same_experiment(store.uri, stored, previous, plan.base, plan.axes, plan.inputs.digest)
        try:
            with ray_session(config):
                stopped = _run_trials(plan, stored, previous, store, callbacks)
        except KeyboardInterrupt:
            raise SweepStopped("interrupted (the trials that finished are stored)") from None
        trials = store.merge()
    finish(trials, [a for a in plan.axes if a != "seed"], store.uri)
    if stopped is not None:
        raise stopped
    return trials


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """One run of a sweep, as checked before Ray starts."""

    config: SweepConfig
    grid: dict[str, list] | None  # flat setting -> values (a grid), or None (a search)
    search: Search | None
    inputs: ExperimentInputs  # the pairs; the drift samples are added inside Ray
    base: TrialSettings  # every setting at its default, without the inputs digest yet
    axes: list[str]  # the swept settings


def _plan(grid, config: SweepConfig, search, inputs: ExperimentInputs) -> _Plan:
    """The run's plan; TliError for one that cannot work (see `_check_trials`)."""
    grid, search = (x(inputs) if callable(x) else x for x in (grid, search))
    base = base_settings(config)
    if search is not None and len(config.seeds) > 1:
        raise TliError("a search draws one seed per trial: pass one --seeds value (or sweep seeds with a grid)")
    if search is None:
        check_axes(grid)
    planned = expand_grid(_grid(grid, config), base) if search is None else [base]
    needs_objective = search is not None or config.save_adapters == "best"
    models.model_location(config.model.model, weights=not config.address)  # a cluster's head may hold its config only
    _check_trials(planned, inputs, models.num_layers(config.model.model), config.model.model, needs_objective)
    axes = swept_names(_grid(grid, config)) if search is None else list(search.domains)
    return _Plan(config, grid, search, inputs, base, axes)


def _run_trials(
    plan: _Plan, stored: list[dict[str, Any]], previous: dict | None, store: ExperimentStore, callbacks: list
) -> SweepStopped | None:
    """Inside Ray: the drift samples, this run's record in sweep_config.json, the scan and the trials not stored
    as ok. Returns a `SweepStopped` when some trials did not run.
    """
    config, grid, search, axes = plan.config, plan.grid, plan.search, plan.axes
    n_layers = models.num_layers(config.model.model)
    largest = (
        expand_grid(_grid(grid, config), plan.base) if search is None else [plan.base.replace(target_layer=n_layers)]
    )
    reserved = resources.reserve(config, largest, plan.inputs)
    inputs = with_drift_samples(plan.inputs, config, store, reserved.gpus)
    base = plan.base.replace(inputs_digest=inputs.digest)
    done = {row["trial_id"]: row for row in stored if row.get("status") == "ok"}
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
        space, total = [{name: row[name] for name in axes} for row in todo], len(todo)
        swept = {name: [str(v) for v in values] for name, values in grid.items()}
        everything = len({s.trial_id for s in planned} | {row["trial_id"] for row in stored})
    else:
        space, total, planned = search.domains, search.num_samples, range(search.num_samples)
        swept = {name: str(domain) for name, domain in search.domains.items()}
        everything = max(search.num_samples, len(stored))
    run = {
        "sweep": dataclasses.asdict(config),
        "space": swept,
        "swept": axes,
        "base": base.row(),
        "planned": len(planned),
        "n_pairs": len(inputs.pairs),
        "n_unseen": 0 if inputs.unseen is None else len(inputs.unseen),
        "pairs_digest": plan.inputs.digest,
        "reserved": dataclasses.asdict(reserved),
        "started_at": pd.Timestamp.now(tz="UTC").isoformat(),
    } | files.provenance()
    store.write("sweep_config.json", run | {"planned": everything, "runs": [*_runs(previous), run]})
    scan, stopped = _start_scan(inputs, store, config.model, reserved), None
    if total:
        threads = max(1, int(config.cpus_per_trial))
        context = TrialContext(inputs, base.row(), done, threads, config.save_adapters)
        stopped = _fit(
            space, total, config, reserved, context, search.searcher if search else None, axes, callbacks, store
        )
    if scan is not None:
        store.write("scan.parquet", ray.get(scan))
    return stopped


class SweepStopped(TliError):
    """A sweep stopped (Ctrl-C, a signal) before every planned trial ran: what finished is stored, a rerun of the
    same command runs the rest. Exit code 130, the shell's for an interrupted command.
    """

    exit_code = 130


def _runs(stored: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The runs recorded in a sweep_config.json (an older one is one run), oldest first."""
    if not stored:
        return []
    runs = stored.get("runs")
    return list(runs) if isinstance(runs, list) else [{k: v for k, v in stored.items() if k != "runs"}]


def _check_same_experiment(
    uri: str,
    rows: list[dict[str, Any]],
    stored: dict[str, Any] | None,
    base: TrialSettings,
    axes: list[str],
    pairs_digest: str,
) -> None:
    """TliError, before Ray starts, unless this run extends the experiment's stored trials: the same pairs,
    evaluation pairs and subset (the pairs digest its runs recorded), and in every setting this run does not sweep
    (model, epochs, validation fraction, drift, pooling_eval, ...) the same value as every stored trial.
    """
    others = {run.get("pairs_digest") for run in _runs(stored)} - {None, pairs_digest}
    if others:
        raise TliError(
            f"{uri} holds trials of other inputs (pairs, evaluation pairs or --smoke-test; pairs digest "
            f"{sorted(others, key=str)[0]}, now {pairs_digest}): use another --experiment"
        )
    skip = {"trial_id", "inputs_digest", *axes} | ({"lora_alpha"} if "lora_rank" in axes else set())
    fixed = {name: value for name, value in base.row().items() if name not in skip}
    for row in rows:
        try:
            settings = TrialSettings.from_row(row).row()
        except TliError as error:
            raise TliError(f"{uri}: trial {row.get('trial_id')} has settings this tli cannot read ({error})") from None
        for name, value in fixed.items():
            if settings[name] != value:
                raise TliError(
                    f"{uri} holds trials with {name}={settings[name]!r} and this run has {name}={value!r}, a setting "
                    "it does not sweep: one experiment, one value of each setting it does not sweep; use another "
                    "--experiment"
                )


def _check_apart(config: SweepConfig, store: ExperimentStore) -> None:
    """TliError when the experiment folder is, lies inside or holds one of the sweep's inputs (the pairs files,
    the model folder): the sweep writes and tidies that folder.
    """
    if store.folder.local:
        inputs = {"pairs file": config.pairs, "evaluation pairs file": config.eval_pairs}
        files.check_not_inputs(Path(store.folder.path), inputs | {"model folder": config.model.model}, replaced=True)


def trial_name(trial) -> str:
    """A Tune trial's name: its swept settings (`target_layer=2,seed=0`), so TensorBoard and MLflow runs differ."""
    return ",".join(f"{name}={short_value(value)}" for name, value in trial.config.items()) or trial.trial_id


def trial_dirname(trial) -> str:
    """A Tune trial's folder: its name made safe for a path (at most 100 characters), then Tune's trial id."""
    safe = re.sub(r"[^\w.=,-]+", "-", trial_name(trial))[:100]
    return f"{safe}_{trial.trial_id}"


def _fit(
    space,
    total: int,
    config: SweepConfig,
    reserved: Reservation,
    context: TrialContext,
    search_alg,
    axes: list[str],
    callbacks: list,
    store: ExperimentStore,
) -> SweepStopped | None:
    """Run the trials on Ray Tune: `space` is the grid's flat trial configs (a list) or a search's domains. Returns
    a `SweepStopped` when some trials did not run (a stop signal), else None.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    concurrent = config.max_concurrent or None  # a searcher's limit is Tune's; the grid's generator keeps its own
    if search_alg is None:  # each grid trial's config is its swept settings, flat: config/target_layer, ...
        values = {name: list({repr(point[name]): point[name] for point in space}.values()) for name in space[0]}
        search_alg = BasicVariantGenerator(points_to_evaluate=space, max_concurrent=config.max_concurrent)
        space, concurrent = {name: tune.choice(choices) for name, choices in values.items()}, None
    trainable_with_context = tune.with_resources(
        tune.with_parameters(trainable, context=context), reserved.tune_resources
    )
    tuner = tune.Tuner(
        trainable_with_context,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            metric="objective",
            mode="max",
            num_samples=total,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
            max_concurrent_trials=concurrent,
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
    notes = _TuneStopNotes()
    logging.getLogger("ray.tune.tune").addFilter(notes)
    try:
        results = tuner.fit()
    except Exception as error:  # Tune wraps what its callbacks raise: a write the machine refused stays one line
        found = _tli_error(error)
        if found is None:
            raise
        raise found from None
    finally:
        logging.getLogger("ray.tune.tune").removeFilter(notes)
    ran = 0
    for result in results:
        if result.error is not None and result.config and not notes.stopped:  # failed even after its retries
            _store_error(store, context.settings(result.config), result.error, config.experiment)
        ran += result.error is not None or "status" in (result.metrics or {})  # its last report: its whole row
    if ran == total:
        return None
    return SweepStopped(
        f"{'interrupted' if notes.stopped else 'stopped'}: {total - ran} of the {total} trials of this run did not "
        "run (those that finished are stored)"
    )


def _tli_error(error: BaseException | None) -> TliError | None:
    """The TliError inside `error`'s chain of causes (Tune's TuneError around a callback's WriteError), or None."""
    while error is not None and not isinstance(error, TliError):
        error = error.__cause__ or error.__context__
    return error


class _TuneStopNotes(logging.Filter):
    """Ray Tune's notes on a stop signal (Ctrl-C): seen (`stopped`); its advice to resume with `Tuner.restore`
    and its list of unfinished trials dropped (tli counts them, and resumes by running the same command again).
    """

    def __init__(self):
        super().__init__()
        self.stopped = False

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        self.stopped |= "Stop signal received" in text
        return "Tuner.restore" not in text and "Trials did not complete" not in text


def _store_error(store: ExperimentStore, settings: TrialSettings, error: Exception, experiment: str) -> None:
    """An error row for a trial that failed after its retries (unless it is stored as ok)."""
    if (store.row(settings.trial_id) or {}).get("status") == "ok":
        return
    message = (str(error).strip().splitlines() or [""])[-1][:500]
    store.write_row(
        settings.row()
        | {
            "experiment": experiment,
            "status": "error",
            "objective": float("nan"),
            "objective_metric": OBJECTIVE_METRIC,
            "error": f"{type(error).__name__}: {message}",
            "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
        }
    )
