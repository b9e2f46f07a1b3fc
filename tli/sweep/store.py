"""An experiment's files, on a local disk or an object store, written by the sweep's driver alone.

Layout of ``<results>/<experiment>/`` (a local folder or a URI such as ``s3://bucket/prefix/<experiment>``)::

    trials/<trial_id>/summary.parquet    the trial's summary rows (set x evaluation layer)
    trials/<trial_id>/pairs.parquet      its per-pair table
    trials/<trial_id>/train_log.parquet  its training log (step, epoch, loss, lr, seconds)
    trials/<trial_id>/adapter/           its PEFT adapter (with --save-adapters best or all)
    trials/<trial_id>/row.json           its row, written LAST: its presence commits the trial
    trials.parquet, summary.parquet,     merged views (a trial_id column added), rebuilt from trials/
    pairs.parquet, train_log.parquet     after trials finish and whenever missing or unreadable
    scan.parquet                         the base model's layer scan in every pooling mode
    drift_samples.parquet                the base model's continuations that drift is measured on
    sweep_config.json                    the resolved settings, the swept space, the planned trial count
    tune/                                Ray Tune's own experiment folder (TensorBoard files, ...)

A trial travels from its worker to the driver as one zip archive inside its last Ray Tune report
(`pack`); the driver `commit`s it. Every file is written atomically, so a driver killed at any moment
leaves each file absent, old or new: the next run skips trials committed as ok, re-runs errored and
missing ones, and never duplicates a trial_id.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import zipfile
from typing import Any

import numpy as np
import pandas as pd

from tli.files import Folder

log = logging.getLogger(__name__)

TABLES = ("summary", "pairs", "train_log")
_MEMBER = re.compile(r"row\.json|(summary|pairs|train_log)\.parquet|adapter/[\w.-]+")
_TRIAL_ID = re.compile(r"[0-9a-f]{12}")


@dataclasses.dataclass(frozen=True, eq=False)
class TrialRecord:
    """What a trial sends back: its row, its tables and (optionally) its adapter's files."""

    row: dict[str, Any]
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # summary, pairs, train_log
    adapter: dict[str, bytes] = dataclasses.field(default_factory=dict)  # PEFT file name -> content


def pack(record: TrialRecord) -> bytes:
    """The trial's files as one zip archive: row.json, its tables as Parquet, adapter/<file>."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, table in record.tables.items():
            table_buffer = io.BytesIO()
            table.to_parquet(table_buffer, index=False)
            archive.writestr(f"{name}.parquet", table_buffer.getvalue())
        for name, content in record.adapter.items():
            archive.writestr(f"adapter/{name}", content)
        archive.writestr("row.json", json.dumps(record.row, default=_json_value))
    return buffer.getvalue()


def _json_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


class ExperimentStore:
    """Per-trial folders under `trials/` (the source of truth) and their merged views."""

    def __init__(self, location: str):
        self.folder = Folder(location)
        self.notes: list[str] = []  # what reading had to rebuild or leave out, as logged (a report says it)
        self._loaded: dict[str, tuple[str, dict[str, pd.DataFrame]]] = {}  # trial_id -> (finished_at, tables)

    def _warn(self, message: str, *args: Any) -> None:
        """Log a warning and keep it in `notes`."""
        log.warning(message, *args)
        self.notes.append(" ".join((message % args).split()))

    @property
    def uri(self) -> str:
        return self.folder.uri

    # --- writing (the driver) -------------------------------------------------------------------

    def commit(self, archive: bytes, save_adapters: str = "none", experiment: str | None = None) -> dict[str, Any]:
        """Write a packed trial (tables and adapter first, row last); returns its row.

        `save_adapters`: "all" keeps every adapter, "best" only that of the highest `objective` so far,
        "none" none.
        """
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            members = {name: zipped.read(name) for name in zipped.namelist()}
        bad = [name for name in members if not _MEMBER.fullmatch(name)]
        row = json.loads(members.pop("row.json"))
        if bad or not _TRIAL_ID.fullmatch(str(row.get("trial_id"))):
            raise ValueError(f"unexpected trial archive: {bad or row.get('trial_id')}")
        trial = f"trials/{row['trial_id']}"
        self.folder.delete(f"{trial}/row.json")  # uncommitted while its files change (a re-run errored trial)
        self.folder.delete(f"{trial}/adapter")
        keep_adapter = save_adapters == "all" or (save_adapters == "best" and self._is_best(row))
        for name, content in members.items():
            if keep_adapter or not name.startswith("adapter/"):
                self.folder.write_bytes(f"{trial}/{name}", content)
        if save_adapters == "best" and keep_adapter:
            for other in self.trial_ids():
                if other != row["trial_id"]:
                    self.folder.delete(f"trials/{other}/adapter")
        if experiment is not None:
            row["experiment"] = experiment
        self.write_row(row)
        return row

    def write_row(self, row: dict[str, Any]) -> None:
        """Commit a row (alone, for a trial that failed after its retries: its old tables no longer count)."""
        self.folder.write_json(f"trials/{row['trial_id']}/row.json", row)

    def _is_best(self, row: dict[str, Any]) -> bool:
        score = row.get("objective")
        if row.get("status") != "ok" or score is None or score != score:
            return False
        others = [
            r.get("objective") for r in self.rows() if r.get("status") == "ok" and r["trial_id"] != row["trial_id"]
        ]
        return all(o is None or o != o or score > o for o in others)

    def merge(self) -> pd.DataFrame:
        """Rebuild trials/summary/pairs/train_log.parquet from trials/; returns the trials table."""
        rows = sorted(self.rows(), key=lambda row: (str(row.get("finished_at")), row["trial_id"]))
        trials = pd.DataFrame(rows)
        if not trials.empty:
            first = ["trial_id", "experiment", "status", "error"]
            trials = trials[[c for c in first if c in trials] + [c for c in trials if c not in first]]
        self.folder.write_table("trials.parquet", trials)
        ok = [row for row in rows if row.get("status") == "ok"]
        for kind in TABLES:
            frames = [self._trial_table(row, kind) for row in ok]
            frames = [frame for frame in frames if frame is not None]
            if frames:
                self.folder.write_table(f"{kind}.parquet", pd.concat(frames, ignore_index=True))
        return trials

    def _trial_table(self, row: dict[str, Any], kind: str) -> pd.DataFrame | None:
        trial_id, finished = row["trial_id"], str(row.get("finished_at"))
        if self._loaded.get(trial_id, ("", {}))[0] != finished:
            self._loaded[trial_id] = (finished, {})
        tables = self._loaded[trial_id][1]
        if kind not in tables:
            name = f"trials/{trial_id}/{kind}.parquet"
            try:
                frame = self.folder.read_table(name)
            except (OSError, ValueError) as error:
                self._warn("trial %s is ok but %s cannot be read (%s): left out", trial_id, name, error)
                return None
            frame.insert(0, "trial_id", trial_id)
            tables[kind] = frame
        return tables[kind]

    def write(self, name: str, value: pd.DataFrame | dict) -> str:
        """An experiment-level file (scan.parquet, drift_samples.parquet, sweep_config.json)."""
        return (
            self.folder.write_table(name, value)
            if isinstance(value, pd.DataFrame)
            else self.folder.write_json(name, value)
        )

    # --- reading (driver, aggregator) -----------------------------------------------------------

    def trial_ids(self) -> list[str]:
        return [name for name in self.folder.names("trials") if _TRIAL_ID.fullmatch(name)]

    def rows(self) -> list[dict[str, Any]]:
        """Every committed trial row; an unreadable one is skipped with a warning (its trial runs again)."""
        found = []
        for trial_id in self.trial_ids():
            row = self.row(trial_id)
            if row is not None:
                found.append(row)
        return found

    def row(self, trial_id: str) -> dict[str, Any] | None:
        name = f"trials/{trial_id}/row.json"
        if not self.folder.exists(name):
            return None
        try:
            row = self.folder.read_json(name)
        except (OSError, ValueError) as error:
            self._warn("skipping unreadable %s: %s", name, error)
            return None
        if not (isinstance(row, dict) and row.get("trial_id") == trial_id):
            self._warn("skipping %s: not a trial row of %s", name, trial_id)
            return None
        return row

    def read(self, kind: str = "trials") -> pd.DataFrame:
        """A merged table (trials, summary, pairs, train_log) or scan; a missing or unreadable merged table is
        rebuilt from trials/ (with a warning); an absent scan is an empty frame.
        """
        name = f"{kind}.parquet"
        try:
            if self.folder.exists(name):
                return self.folder.read_table(name)
            problem = "missing"
        except (OSError, ValueError) as error:
            problem = f"unreadable ({error})"
        if kind not in ("trials", *TABLES):
            if problem != "missing":
                self._warn("%s/%s is %s: ignored", self.uri, name, problem)
            return pd.DataFrame()
        if problem != "missing":
            self._warn("%s/%s is %s: rebuilt from %s/trials/", self.uri, name, problem, self.uri)
        trials = self.merge()
        return (
            trials
            if kind == "trials"
            else (self.folder.read_table(name) if self.folder.exists(name) else pd.DataFrame())
        )

    def read_json(self, name: str) -> dict[str, Any] | None:
        """An experiment-level JSON file, or None (with a warning) when absent or unreadable."""
        try:
            value = self.folder.read_json(name) if self.folder.exists(name) else None
        except (OSError, ValueError) as error:
            self._warn("%s/%s is unreadable (%s): ignored", self.uri, name, error)
            return None
        return value if isinstance(value, dict) else None

    def adapter_folder(self, trial_id: str) -> Folder | None:
        """The stored adapter of a trial, or None."""
        folder = self.folder.child("trials", trial_id, "adapter")
        return folder if folder.exists("adapter_model.safetensors") else None
