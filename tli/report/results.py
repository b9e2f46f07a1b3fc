"""Loading an experiment folder: its tables, rebuilt when the merged ones are missing or behind, and its progress."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tli.errors import TliError
from tli.sweep.store import ExperimentStore


@dataclass
class Results:
    """The tables of one experiment folder (or several: `combine`), and what had to be rebuilt or ignored to read
    them. The per-trial tables stay in their files until asked for: `tables` reads some trials' columns.
    """

    uri: str
    trials: pd.DataFrame  # every committed trial, ok and errored
    scan: pd.DataFrame  # the base model's layer scan, every pooling mode (empty until written)
    sweep_config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # tables rebuilt, files ignored (said in report.md)
    name: str = ""  # the experiment: its folder's name (set from `uri` when not given)
    stores: dict[str, ExperimentStore] = field(default_factory=dict)  # trial_id prefix -> the store holding it

    def __post_init__(self):
        self.name = self.name or self.uri.rstrip("/").rsplit("/", 1)[-1]

    def tables(self, kind: str, trial_ids, columns: list[str] | None = None) -> pd.DataFrame:
        """The `kind` tables (summary, pairs) of some trials, one frame: only those of `columns` the files have
        (all when None); a file that cannot be read is left out and noted.
        """
        frames = []
        for prefix, store in self.stores.items():
            ids = [t.removeprefix(prefix) for t in trial_ids if t.startswith(prefix) and "/" not in t[len(prefix) :]]
            before = len(store.notes)
            frame = store.tables(kind, ids, None if columns is None else ["trial_id", *columns])
            self.notes += [f"{prefix.rstrip('/')}: {note}" if prefix else note for note in store.notes[before:]]
            frames.append(frame.assign(trial_id=prefix + frame["trial_id"].astype(str)) if prefix else frame)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    @functools.cached_property
    def summary(self) -> pd.DataFrame:
        """Every ok trial x set x evaluation layer (read whole: for small experiments and tests)."""
        return self.tables("summary", list(self.ok["trial_id"]))

    @functools.cached_property
    def pairs(self) -> pd.DataFrame:
        """Every ok trial x set x evaluation layer x pair (read whole: for small experiments and tests)."""
        return self.tables("pairs", list(self.ok["trial_id"]))

    @property
    def ok(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    @property
    def errors(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] != "ok"]


def load_results(location: str) -> Results:
    """Read an experiment folder (a local path or a URI); a missing or unreadable trials.parquet is rebuilt from
    the per-trial rows and noted, an ok trial whose table cannot be read is left out and noted. TliError when
    the folder does not exist or holds no trial.
    """
    store = ExperimentStore(str(location))
    if not store.folder.exists():
        raise TliError(f"results folder {store.uri} does not exist")
    if not store.trial_ids() and not store.folder.exists("trials.parquet"):
        raise TliError(f"no trial in {store.uri} (has the sweep finished a trial yet?)")
    try:
        present = store.folder.exists("trials.parquet")
        trials = store.read("trials")
        unmerged = _unmerged(store, trials)
        if unmerged:  # trials committed after the last merge (a driver killed between merges)
            trials = store.merge()
        sweep_config = store.read_json("sweep_config.json")
        scan = store.read("scan")
    except OSError as error:
        raise TliError(f"cannot read {store.uri}: {' '.join(str(error).split())}") from None
    if trials.empty or "status" not in trials:
        raise TliError(f"no trial in {store.uri} (has the sweep finished a trial yet?)")
    notes = list(store.notes)
    if not present and store.folder.exists("trials.parquet"):
        notes.append("trials.parquet was missing: rebuilt from trials/")
    if unmerged:
        notes.append(f"the merged tables lacked {unmerged} committed trial(s): rebuilt from trials/")
    if sweep_config is None and not store.folder.exists("sweep_config.json"):
        notes.append("no sweep_config.json: the number of planned trials is unknown")
    return Results(store.uri, trials, scan, sweep_config, notes, stores={"": store})


def combine(parts: list[Results]) -> Results:
    """Several experiments as one: each trial's `experiment` is its folder's name (a condition column of the
    report) and its `trial_id` becomes `<experiment>/<trial_id>` (the same settings in two sweeps are two
    trials). The planned count is the sum of the planned counts; the scans of distinct models are kept.
    TliError when two folders share a name.
    """
    names = [part.name for part in parts]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TliError(f"two results folders are named {twice[0]}: a report over several needs distinct names")

    def tag(table: pd.DataFrame, name: str) -> pd.DataFrame:
        if "trial_id" not in table:
            return table
        return table.assign(trial_id=name + "/" + table["trial_id"].astype(str))

    trials = pd.concat([tag(part.trials, part.name).assign(experiment=part.name) for part in parts], ignore_index=True)
    planned = [planned_trials(part) for part in parts]
    scans = [part.scan for part in parts if not part.scan.empty]
    scan = pd.concat(scans, ignore_index=True).drop_duplicates(["model", "pooling", "layer"]) if scans else None
    return Results(
        ", ".join(part.uri for part in parts),
        trials,
        parts[0].scan if scan is None else scan,
        {"planned": sum(planned)} if None not in planned else None,
        [f"{part.name}: {note}" for part in parts for note in part.notes],
        name=" + ".join(names),
        stores={f"{part.name}/": part.stores[""] for part in parts},
    )


def _unmerged(store: ExperimentStore, trials: pd.DataFrame) -> int:
    """How many committed trials (a row.json under trials/) the merged trials table lacks."""
    merged = set(trials["trial_id"]) if "trial_id" in trials else set()
    return sum(store.row(trial_id) is not None for trial_id in store.trial_ids() if trial_id not in merged)


def planned_trials(results: Results) -> int | None:
    """The planned trial count stored in sweep_config.json (grid size, or a search's samples), or None."""
    planned = (results.sweep_config or {}).get("planned")
    return planned if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 0 else None


def progress_line(results: Results) -> str:
    """'N of M planned trials done (k ok, e errored)', noting unfinished trials."""
    done, planned = len(results.trials), planned_trials(results)
    counts = f"{len(results.ok)} ok, {len(results.errors)} errored"
    if planned is None:
        return f"{done} trials done ({counts}); the number planned is unknown (no readable sweep_config.json)."
    if done > planned:
        return f"{done} trials done ({counts}); the last run of the sweep planned {planned}."
    line = f"{done} of {planned} planned trials done ({counts})."
    if done < planned:
        line += (
            f" {planned - done} not finished (the sweep is still running or was stopped): the tables cover "
            "finished trials only."
        )
    return line
