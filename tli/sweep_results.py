"""The sweep result store: one set of files per trial, merged atomically into top-level Parquet tables.

Layout of ``<results>/<experiment>/``::

    trials/<trial_id>.summary.parquet   evaluate's summary rows of an ok trial
    trials/<trial_id>.pairs.parquet     its per-pair cosines
    trials/<trial_id>.json              the trial's row (status ok or error); written LAST, so its
                                        presence is what commits a trial
    trials.parquet                      one row per trial          } merged views, rebuilt from
    summary.parquet                     trial x set x eval layer   } trials/ after every trial
    pairs.parquet                       trial x eval layer x pair  } and at the end
    scan.parquet, sweep_config.json     the base model's layer scan; the resolved sweep settings

Every file is written to a temp file and renamed, so a run killed at any moment leaves each file
either absent, old or new, never half-written. ``trials/`` is the source of truth: a missing or
stale top-level file is rebuilt by the next merge, stray ``.*.tmp`` files are ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from tli import results

log = logging.getLogger(__name__)

PLACES = ("target", "final")  # eval layers: the trial's target layer and the model's last layer L
SETS = ("trained", "control", "heldout")
# wide column suffix -> evaluate's summary column
WIDE_METRICS = {
    "cosine_pre": "mean_pre", "cosine_post": "mean_post", "mean_diff": "mean_diff", "p": "p",
    "gap_pre": "gap_pre", "gap_post": "gap_post",
    "centered_gap_pre": "centered_gap_pre", "centered_gap_post": "centered_gap_post",
    "p_at_1_pre": "p_at_1_pre", "p_at_1_post": "p_at_1_post",
    "p_at_1_centered_pre": "p_at_1_centered_pre", "p_at_1_centered_post": "p_at_1_centered_post",
}
TRIAL_COLUMNS = (
    "trial_id", "experiment", "status", "error", "model", "target_layer", "lora_rank", "lora_alpha",
    "lora_dropout", "margin", "lr", "epochs", "batch_size", "warmup_steps", "seed", "pooling_train",
    "pooling_eval", "split", "heldout_category", "target_modules", "n_train_pairs", "final_loss",
    "objective", "train_seconds", "eval_seconds", "node", "worker", "finished_at",
    "eval_layer_target", "eval_layer_final",
)


def metric_columns(sets: tuple[str, ...] = ("trained", "control")) -> list[str]:
    """`{place}_{set}_{metric}` for every place, the given sets and every WIDE_METRICS name."""
    return [f"{place}_{name}_{metric}" for place in PLACES for name in sets for metric in WIDE_METRICS]


def wide_metrics(summary: pd.DataFrame, target_layer: int, final_layer: int) -> dict[str, Any]:
    """The summary rows of one trial as `{place}_{set}_{metric}` columns (target == final: same values)."""
    row: dict[str, Any] = {"eval_layer_target": target_layer, "eval_layer_final": final_layer}
    for place, layer in zip(PLACES, (target_layer, final_layer)):
        for _, entry in summary[summary["eval_layer"] == layer].iterrows():
            for metric, source in WIDE_METRICS.items():
                row[f"{place}_{entry['set']}_{metric}"] = float(entry[source])
    return row


def objective(row: dict[str, Any]) -> float:
    """The search objective: control-set per-language centred gap gain (post - pre) at the target layer."""
    post, pre = row.get("target_control_centered_gap_post"), row.get("target_control_centered_gap_pre")
    if post is None or pre is None:
        return float("nan")
    return float(post - pre)


class ResultStore:
    """Per-trial files under `root/trials/` and their merged Parquet views in `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.trial_dir = self.root / "trials"

    def _path(self, trial_id: str, kind: str) -> Path:
        return self.trial_dir / (f"{trial_id}.json" if kind == "row" else f"{trial_id}.{kind}.parquet")

    def write_trial(self, row: dict[str, Any], summary: pd.DataFrame | None = None,
                    pairs: pd.DataFrame | None = None) -> None:
        """Store one trial: its tables first, then its row (the commit marker)."""
        trial_id = row["trial_id"]
        if summary is not None:
            results.write_table(summary, self._path(trial_id, "summary"))
        if pairs is not None:
            results.write_table(pairs, self._path(trial_id, "pairs"))
        results.write_json(row, self._path(trial_id, "row"))

    def rows(self) -> list[dict[str, Any]]:
        """Every committed trial row (unreadable ones are skipped with a warning)."""
        found = []
        for path in sorted(self.trial_dir.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as error:
                log.warning("skipping unreadable trial file %s: %s", path, error)
        return found

    def statuses(self) -> dict[str, str]:
        """{trial_id: status} of the committed trials."""
        return {row["trial_id"]: row["status"] for row in self.rows()}

    def row(self, trial_id: str) -> dict[str, Any] | None:
        path = self._path(trial_id, "row")
        return json.loads(path.read_text()) if path.exists() else None

    def merge(self) -> pd.DataFrame:
        """Rebuild trials/summary/pairs.parquet from trials/ (atomically); returns the trials table."""
        rows = sorted(self.rows(), key=lambda row: (str(row.get("finished_at")), row["trial_id"]))
        sets = SETS if any("target_heldout_cosine_pre" in row for row in rows) else SETS[:2]
        wanted = list(TRIAL_COLUMNS) + metric_columns(sets)
        table = pd.DataFrame(rows)
        extra = [column for column in table.columns if column not in wanted]
        table = table.reindex(columns=wanted + extra)
        results.write_table(table, self.root / "trials.parquet")
        ok = [row["trial_id"] for row in rows if row["status"] == "ok"]
        for kind in ("summary", "pairs"):
            frames = [self._tagged(trial_id, kind) for trial_id in ok]
            frames = [frame for frame in frames if frame is not None]
            if frames:
                results.write_table(pd.concat(frames, ignore_index=True), self.root / f"{kind}.parquet")
        return table

    def _tagged(self, trial_id: str, kind: str) -> pd.DataFrame | None:
        path = self._path(trial_id, kind)
        if not path.exists():
            log.warning("trial %s is ok but %s is missing", trial_id, path.name)
            return None
        frame = pd.read_parquet(path)
        frame.insert(0, "trial_id", trial_id)
        return frame

    def read(self, kind: str = "trials") -> pd.DataFrame:
        """A merged table (trials, summary, pairs, scan); trials/summary/pairs are re-merged if missing."""
        path = self.root / f"{kind}.parquet"
        if not path.exists() and kind in ("trials", "summary", "pairs"):
            self.merge()
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()
