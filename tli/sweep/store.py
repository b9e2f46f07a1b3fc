"""An experiment's files, on a local disk or an object store, written by the sweep's driver alone.

Layout of ``<results>/<experiment>/`` (a local folder or a URI such as ``s3://bucket/prefix/<experiment>``)::

    trials/<trial_id>/row.json             a trial's row, written LAST: its presence commits the trial
    trials/<trial_id>/adapter/             its PEFT adapter (with --save-adapters best or all)
    trials.parquet                         every committed trial's row (one schema: `trial.trials_schema`)
    summary.parquet/<trial_id>.parquet     Parquet datasets, one file per ok trial, each with a trial_id
    pairs.parquet/<trial_id>.parquet       column: the summary (set x evaluation layer), the per-pair table,
    train_log.parquet/<trial_id>.parquet   the training log (step, epoch, loss, lr, seconds)
    scan.parquet                           the base model's layer scan in every pooling mode
    drift_samples.parquet                  the base model's continuations that drift is measured on
    sweep_config.json                      the resolved settings, the swept space, the planned trial count, and
                                           under `runs` each run's own (appended, never overwritten)
    driver.lock                            the driver running the experiment (`DriverLock`: one at a time)
    tune/                                  Ray Tune's own experiment folder (TensorBoard files, ...)

The datasets grow by one file per table and trial, so a commit costs the same at the 5,000th trial as at
the first and nothing is rewritten; `pandas.read_parquet("pairs.parquet")`, DuckDB's
``read_parquet('pairs.parquet/*.parquet')`` and polars read them whole, one schema per table. Only
trials.parquet (about 3 KB a trial) is rewritten when the driver merges the rows committed since.

A trial travels from its worker to the driver as one zip archive inside its last Ray Tune report
(`trial.pack`); the driver `commit`s it. Every file is written atomically, so a driver killed at any
moment leaves each file absent, old or new: the next run skips trials committed as ok, re-runs errored
and missing ones, and never duplicates a trial_id; its first merge reads every row.json again and drops
dataset files of trials not committed as ok.

Every row read is scored by this tli's objective (`trial.OBJECTIVE_METRIC`, named in each row's
`objective_metric`): an ok row scored otherwise by an older tli is rescored from its stored summary when read
or committed (said once in `notes`), so a resumed sweep, --save-adapters best and the report never compare
objectives of two definitions; a row that cannot be rescored is a TliError.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tli.errors import TliError
from tli.files import Folder
from tli.sweep.trial import EARLIER_OBJECTIVE, OBJECTIVE_METRIC, TABLES, objective, trials_table

log = logging.getLogger(__name__)

_MEMBER = re.compile(r"row\.json|(" + "|".join(TABLES) + r")\.parquet|adapter/[\w.-]+")
_TRIAL_ID = re.compile(r"[0-9a-f]{12}")
_ROWS_AT_ONCE = 500  # rows turned into Arrow at a time when every row.json is read (bounds the Python objects)


class ExperimentStore:
    """Per-trial rows under `trials/` (the source of truth), the trials table and the per-trial datasets."""

    def __init__(self, location: str):
        self.folder = Folder(location)
        self.notes: list[str] = []  # what reading had to rebuild or leave out, as logged (a report says it)
        self._trials: pa.Table | None = None  # every committed row, once this process has read them (merge)
        self._pending: list[dict[str, Any]] = []  # rows committed since the last merge
        self._best: tuple[float, str] | None = None  # (objective, trial_id) whose adapter --save-adapters best keeps
        self._best_known = False
        self._rescored = False  # whether a row scored by an older objective was rescored (said once in notes)

    def _warn(self, message: str, *args: Any) -> None:
        """Log a warning and keep it in `notes`."""
        log.warning(message, *args)
        self.notes.append(" ".join((message % args).split()))

    @property
    def uri(self) -> str:
        return self.folder.uri

    @staticmethod
    def table_name(kind: str, trial_id: str) -> str:
        """Where one trial's table of `kind` (summary, pairs, train_log) lives."""
        return f"{kind}.parquet/{trial_id}.parquet"

    # --- writing (the driver) -------------------------------------------------------------------

    def commit(self, archive: bytes, save_adapters: str = "none", experiment: str | None = None) -> dict[str, Any]:
        """Write a packed trial (tables and adapter first, row last); returns its row.

        `save_adapters`: "all" keeps every adapter, "best" only that of the highest `objective` so far (one
        comparison and at most one deletion per commit), "none" none.
        """
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            members = {name: zipped.read(name) for name in zipped.namelist()}
        bad = [name for name in members if not _MEMBER.fullmatch(name)]
        row = json.loads(members.pop("row.json"))
        if bad or not _TRIAL_ID.fullmatch(str(row.get("trial_id"))):
            raise ValueError(f"unexpected trial archive: {bad or row.get('trial_id')}")
        trial_id = row["trial_id"]
        self.folder.delete(f"trials/{trial_id}/row.json")  # uncommitted while its files change (a re-run)
        self.folder.delete(f"trials/{trial_id}/adapter")
        self._delete_tables(trial_id, keep=members)
        for name, content in members.items():
            if name.endswith(".parquet"):
                self.folder.write_bytes(self.table_name(name.removesuffix(".parquet"), trial_id), content)
        row = self._rescore(row)  # from a worker running an older tli
        keep_adapter = save_adapters == "all" or (save_adapters == "best" and self._is_best(row))
        for name, content in members.items():
            if name.startswith("adapter/") and keep_adapter:
                self.folder.write_bytes(f"trials/{trial_id}/{name}", content)
        if save_adapters == "best" and keep_adapter:
            previous, self._best = self._best, (float(row["objective"]), trial_id)
            if previous is not None and previous[1] != trial_id:
                self.folder.delete(f"trials/{previous[1]}/adapter")
        if experiment is not None:
            row["experiment"] = experiment
        self.folder.write_json(f"trials/{trial_id}/row.json", row)
        self._pending.append(row)
        return row

    def write_row(self, row: dict[str, Any]) -> None:
        """Commit a row alone (a trial that failed after its retries): its old tables no longer count."""
        self._delete_tables(row["trial_id"])
        self.folder.write_json(f"trials/{row['trial_id']}/row.json", row)
        self._pending.append(row)

    def _delete_tables(self, trial_id: str, keep: Iterable[str] = ()) -> None:
        """Remove a trial's dataset files, except the kinds about to be rewritten (`keep`: archive members)."""
        for kind in TABLES:
            if f"{kind}.parquet" not in keep:
                self.folder.delete(self.table_name(kind, trial_id))

    def _is_best(self, row: dict[str, Any]) -> bool:
        """Whether `row` beats the best objective stored so far (found once per process, then kept)."""
        score = row.get("objective")
        if row.get("status") != "ok" or score is None or score != score:
            return False
        if not self._best_known:
            self._best, self._best_known = self._stored_best(), True
        return self._best is None or self._best[1] == row["trial_id"] or score > self._best[0]

    def _stored_best(self) -> tuple[float, str] | None:
        """The stored ok trial with the highest objective (the first on a tie); adapters of others removed."""
        best = None
        for row in self.rows():
            score = row.get("objective")
            if row.get("status") == "ok" and isinstance(score, (int, float)) and score == score:
                if best is None or score > best[0]:
                    best = (float(score), row["trial_id"])
        for trial_id in self.trial_ids():  # a driver killed between keeping one adapter and removing another
            if (best is None or trial_id != best[1]) and self.folder.exists(f"trials/{trial_id}/adapter"):
                self.folder.delete(f"trials/{trial_id}/adapter")
        return best

    def merge(self) -> pd.DataFrame:
        """Write trials.parquet: the rows committed since the last merge over those before (the first merge of
        a process reads every row.json, moves tables of an older layout into the datasets and removes dataset
        files of trials not committed as ok); returns the trials table.
        """
        if self._trials is None:
            self._pending = []
            self._trials = self._every_row()
            self._tidy_datasets(self._trials)
        elif self._pending:
            fresh = trials_table(self._pending)
            ids = pa.array(fresh["trial_id"].to_pylist())
            kept = self._trials.filter(pa.compute.invert(pa.compute.is_in(self._trials["trial_id"], value_set=ids)))
            self._trials = _sorted(pa.concat_tables([kept, fresh], promote_options="permissive"))
            self._pending = []
        buffer = io.BytesIO()
        pq.write_table(self._trials, buffer)
        self.folder.write_bytes("trials.parquet", buffer.getvalue())
        return self._trials.to_pandas()

    def _every_row(self) -> pa.Table:
        """Every committed row as one table, read in chunks of _ROWS_AT_ONCE."""
        ids = self.trial_ids()
        chunks = []
        for start in range(0, len(ids), _ROWS_AT_ONCE):
            rows = [self.row(trial_id) for trial_id in ids[start : start + _ROWS_AT_ONCE]]
            chunks.append(trials_table([row for row in rows if row is not None]))
        return _sorted(pa.concat_tables(chunks, promote_options="permissive") if chunks else trials_table([]))

    def _tidy_datasets(self, trials: pa.Table) -> None:
        """Dataset files only for ok trials; per-trial tables of the older layout (trials/<id>/<kind>.parquet,
        merged files at the top) moved into the datasets.
        """
        ok = {t for t, s in zip(trials["trial_id"].to_pylist(), trials["status"].to_pylist()) if s == "ok"}
        for kind in TABLES:
            top = f"{kind}.parquet"
            if self.folder.is_file(top):  # the merged file of the older layout
                self.folder.delete(top)
            for name in self.folder.names(top):
                if name.endswith(".parquet") and name.removesuffix(".parquet") not in ok:
                    self.folder.delete(f"{top}/{name}")
            for trial_id in sorted(ok):
                old = f"trials/{trial_id}/{kind}.parquet"
                if self.folder.exists(old):
                    self._adopt(old, kind, trial_id)

    def _adopt(self, old: str, kind: str, trial_id: str) -> None:
        try:
            frame = self.folder.read_table(old)
        except (OSError, ValueError) as error:
            self._warn("trial %s is ok but %s cannot be read (%s): left out", trial_id, old, error)
            return
        if "trial_id" not in frame:
            frame.insert(0, "trial_id", trial_id)
        self.folder.write_table(self.table_name(kind, trial_id), frame)
        self.folder.delete(old)

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
        return self._rescore(row)

    def _rescore(self, row: dict[str, Any]) -> dict[str, Any]:
        """An ok row scored by another objective than OBJECTIVE_METRIC (an older tli's, EARLIER_OBJECTIVE when the
        row does not say) with its objective computed again from its stored summary; TliError when it cannot be.
        """
        scored_by = row.get("objective_metric") or EARLIER_OBJECTIVE
        if row.get("status") != "ok" or scored_by == OBJECTIVE_METRIC:
            return row
        trial_id, name = row["trial_id"], self.table_name("summary", row["trial_id"])
        try:
            summary = self.folder.read_table(name)
        except (OSError, ValueError) as error:
            problem = f"{name} cannot be read ({_short(error)})"
        else:
            problem = None if OBJECTIVE_METRIC in summary else f"{name} lacks {OBJECTIVE_METRIC}"
        if problem:
            raise TliError(
                f"{self.uri}: trial {trial_id}'s objective is its {scored_by} (an older tli) and cannot be computed "
                f"again as {OBJECTIVE_METRIC}: {problem}; rerun it (remove trials/{trial_id}) or use the tli that "
                "ran it"
            )
        if not self._rescored:
            self._rescored = True
            self._warn(
                "objectives of trials scored by an older tli (%s) are computed again from their summaries as the "
                "validation %s at the selection layer",
                scored_by,
                OBJECTIVE_METRIC,
            )
        score = objective(summary, int(row["eval_layer_selection"]))
        return row | {"objective": score, "objective_metric": OBJECTIVE_METRIC}

    def read(self, kind: str = "trials") -> pd.DataFrame:
        """The trials table (rebuilt from trials/ with a warning when missing or unreadable, and when an older tli
        merged rows scored by its objective: see `_rescore`), a whole dataset of the ok trials (summary, pairs,
        train_log: `tables` reads parts of one), or an experiment-level table such as scan (absent: an empty frame).
        """
        if kind in TABLES:
            trials = self.read("trials")
            ok = trials[trials["status"] == "ok"]["trial_id"] if "status" in trials else []
            return self.tables(kind, list(ok))
        name = f"{kind}.parquet"
        try:
            if not self.folder.exists(name):
                problem = "missing"
            else:
                table = self.folder.read_table(name)
                if kind != "trials" or not _scored_otherwise(table):
                    return table
                problem = "rescored"  # rebuilt from the rows, each rescored as it is read
        except (OSError, ValueError) as error:
            problem = f"unreadable ({error})"
        if kind != "trials":
            if problem != "missing":
                self._warn("%s/%s is %s: ignored", self.uri, name, problem)
            return pd.DataFrame()
        if problem not in ("missing", "rescored"):
            self._warn("%s/%s is %s: rebuilt from %s/trials/", self.uri, name, problem, self.uri)
        return self.merge()

    def tables(self, kind: str, trial_ids: list[str], columns: list[str] | None = None) -> pd.DataFrame:
        """The `kind` tables of some trials, one frame (only `columns`, when given); a trial whose file is
        missing or unreadable is left out with a warning.
        """
        parts = []
        for trial_id in trial_ids:
            name = self.table_name(kind, trial_id)
            try:
                parts.append(self.folder.read_parquet(name, columns))
            except (OSError, ValueError) as error:
                self._warn("trial %s is ok but %s cannot be read (%s): left out", trial_id, name, _short(error))
        if not parts:
            return pd.DataFrame(columns=columns or ["trial_id"])
        return pa.concat_tables(parts, promote_options="permissive").to_pandas()

    def read_json(self, name: str) -> dict[str, Any] | None:
        """An experiment-level JSON file, or None (with a warning) when absent or unreadable."""
        try:
            value = self.folder.read_json(name) if self.folder.exists(name) else None
        except (OSError, ValueError) as error:
            self._warn("%s/%s is unreadable (%s): ignored", self.uri, name, error)
            return None
        return value if isinstance(value, dict) else None

    def lock(self, command: str = "") -> DriverLock:
        """The experiment's driver lock (a context manager): TliError when another driver holds it."""
        return DriverLock(self.folder, command)

    def adapter_folder(self, trial_id: str) -> Folder | None:
        """The stored adapter of a trial, or None."""
        folder = self.folder.child("trials", trial_id, "adapter")
        return folder if folder.exists("adapter_model.safetensors") else None


def _scored_otherwise(trials: pd.DataFrame) -> bool:
    """Whether an ok row of a trials table was scored by another objective than OBJECTIVE_METRIC (or does not say)."""
    ok = trials[trials["status"] == "ok"] if "status" in trials else trials.iloc[:0]
    return len(ok) > 0 and ("objective_metric" not in ok or bool((ok["objective_metric"] != OBJECTIVE_METRIC).any()))


def _sorted(trials: pa.Table) -> pa.Table:
    """Rows in the order trials finished (then by trial_id)."""
    return trials.sort_by([("finished_at", "ascending"), ("trial_id", "ascending")]) if trials.num_rows else trials


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


# --- reports beside experiments -----------------------------------------------------------------

EXPERIMENT_MARKERS = ("sweep_config.json", "trials.parquet")  # files only an experiment folder holds


def check_report_folder(out: Folder, experiments: list[Folder]) -> None:
    """TliError, before any work, when a report's folder `out` would mix with results: it is, holds or lies inside
    an experiment folder (but a one-experiment report in that experiment's report/), or it exists and holds files
    but no earlier report (a report replaces only a report).
    """
    for experiment in experiments:
        found = out.relation(experiment)
        if found and (len(experiments) > 1 or out.uri != experiment.child("report").uri):
            raise TliError(
                f"--out {out.uri} {found} the experiment {experiment.uri}: a report goes to a folder apart "
                "(default: <experiment>/report)"
            )
    inputs = {experiment.uri for experiment in experiments}
    for above in out.parents():
        if above.uri not in inputs and any(above.is_file(marker) for marker in EXPERIMENT_MARKERS):
            raise TliError(f"--out {out.uri} lies inside the experiment {above.uri}: a report goes to a folder apart")
    if out.names() and not out.exists("significance.csv"):
        raise TliError(
            f"--out {out.uri} exists and holds files but no report: choose a new or empty folder (a report replaces "
            "only an earlier report)"
        )


# --- one driver per experiment ------------------------------------------------------------------

LOCK_FILE = "driver.lock"


class DriverLock:
    """One driver per experiment at a time: a second one is refused in one line, before Ray starts.

    On a local folder: an exclusive `flock` on <experiment>/driver.lock, held while the driver runs and released
    by the kernel however the driver ends (the file stays, naming the last holder). Reliable on a local disk; on
    NFS only as far as its lock manager is.

    On an object store, which has no locks: a lease. The driver writes driver.lock (host, pid, a random owner id)
    and rewrites it every `renew_s` seconds; a new driver refuses while the lease was renewed within `lease_s`
    seconds (by its own clock: clocks must agree to well within that) and, on the holder's host, while the
    holder's pid lives. A lease left by a killed driver is taken over once stale, at once on the same host.
    Writes are not conditional, so the protocol is write, wait `settle_s`, read back, and only the last writer
    goes on: two drivers started together both go on only if one of them stalls for more than `settle_s`
    between reading and writing the lease. The driver removes its lease when it ends.
    """

    lease_s, renew_s, settle_s = 120.0, 20.0, 2.0

    def __init__(self, folder: Folder, command: str = "", lease: bool | None = None):
        self.folder, self.lease = folder, (not folder.local) if lease is None else lease
        self.holder = {
            "owner": secrets.token_hex(8),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": _now(),
            "command": command,
        }
        self._handle = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> DriverLock:
        self._take_lease() if self.lease else self._flock()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            path = Path(self.folder.path)
            if {entry.name for entry in path.iterdir()} == {LOCK_FILE}:  # a run refused before writing anything
                (path / LOCK_FILE).unlink()  # while locked: a driver waiting on this file sees it go (`_flock`)
                with contextlib.suppress(OSError):
                    path.rmdir()
            self._handle.close()  # releases the flock
            self._handle = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
            if (self._read() or {}).get("owner") == self.holder["owner"]:
                self.folder.delete(LOCK_FILE)

    def _flock(self) -> None:
        """Lock driver.lock (created if absent); once locked, check it is still the file at that path (a driver
        that created nothing else removes it when it ends), else lock the new one.
        """
        import fcntl

        path = Path(self.folder.path) / LOCK_FILE
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 - held open while the driver runs
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                other = _holder(handle.read())
                handle.close()
                raise TliError(self._busy(other)) from None
            if _same_file(path, handle):
                break
            handle.close()  # it was removed while this driver waited for it
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(self.holder) + "\n")
        handle.flush()
        self._handle = handle

    def _take_lease(self) -> None:
        other = self._read()
        if other is not None and not self._stale(other):
            raise TliError(self._busy(other))
        if other is not None:
            log.warning("%s: taking over %s of a driver that stopped (%s)", self.folder.uri, LOCK_FILE, _who(other))
        self._write()
        time.sleep(self.settle_s)
        other = self._read()
        if (other or {}).get("owner") != self.holder["owner"]:
            raise TliError(self._busy(other or {}))
        self._renewer = threading.Thread(target=self._renew, name="tli-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            other = self._read()
            if (other or {}).get("owner") != self.holder["owner"]:
                log.error("%s: %s now names %s: this driver lost its lease", self.folder.uri, LOCK_FILE, _who(other))
                return
            self._write()

    def _write(self) -> None:
        self.folder.write_json(LOCK_FILE, self.holder | {"renewed": _now(), "renewed_at": time.time()})

    def _read(self) -> dict[str, Any] | None:
        try:
            return _holder(self.folder.read_bytes(LOCK_FILE).decode()) if self.folder.exists(LOCK_FILE) else None
        except (OSError, ValueError):
            return None

    def _stale(self, other: dict[str, Any]) -> bool:
        """Whether a lease's holder is gone: its pid is dead on this host, or it has not renewed within lease_s."""
        if other.get("host") == self.holder["host"] and not _alive(other.get("pid")):
            return True
        renewed = other.get("renewed_at")
        return not isinstance(renewed, (int, float)) or time.time() - renewed > self.lease_s

    def _busy(self, other: dict[str, Any]) -> str:
        return (
            f"{self.folder.uri} is in use by another driver ({_who(other)}): one driver per experiment at a time; "
            "wait for it to end, or use another --experiment"
        )


def _same_file(path: Path, handle) -> bool:
    """Whether `path` still names the file open as `handle`."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _holder(text: str) -> dict[str, Any]:
    """A lock file's holder (empty when unreadable: a holder that has not written it yet)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _who(holder: dict[str, Any] | None) -> str:
    holder = holder or {}
    if not holder.get("pid"):
        return "holder unknown"
    renewed = holder.get("renewed_at")
    age = f", renewed {time.time() - renewed:.0f} s ago" if isinstance(renewed, (int, float)) else ""
    return f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}{age}"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
