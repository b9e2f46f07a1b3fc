"""What every trial of an experiment shares: its pairs, the `unseen` pairs, the retrieval pool, the drift samples.

The driver builds `ExperimentInputs` once and Ray ships it to every worker. Row labels are the pairs'
`pair_id`s: 0..n-1 for the pairs file, n.. for the evaluation pairs. `trial_sets` cuts one trial's
training rows and evaluation sets from it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import pandas as pd

from tli import data
from tli.errors import TliError
from tli.evaluate import Lexicon, evaluation_sets
from tli.sweep.flags import SweepConfig
from tli.sweep.settings import TrialSettings

SMOKE_PAIRS = {"categories": 4, "per_category": 4, "control": 6, "unseen": 20}  # 16 trained + 6 control pairs


@dataclasses.dataclass(frozen=True, eq=False)
class ExperimentInputs:
    """The experiment's fixed inputs (frames indexed by pair_id)."""

    pairs: pd.DataFrame  # trained and control rows
    unseen: pd.DataFrame | None = None  # evaluation-only rows (split "unseen"), never trained
    drift_samples: pd.DataFrame | None = None  # the base model's own continuations (tli.drift.make_samples)

    @functools.cached_property
    def lexicon(self) -> Lexicon:
        """The retrieval pool: every word of the pairs and of the unseen set."""
        return Lexicon.from_pairs(pd.concat([self.pairs, self.unseen]) if self.unseen is not None else self.pairs)

    @property
    def digest(self) -> str:
        """sha1 of the pairs, unseen pairs and drift samples' tokens (part of every trial_id), 12 hex digits.

        Canonical values only, so the same inputs read back from Parquet give the same digest.
        """
        parts = [frame[list(data.PAIR_COLUMNS)].to_csv() for frame in (self.pairs, self.unseen) if frame is not None]
        if self.drift_samples is not None:
            parts.append(json.dumps([[int(t) for t in ids] for ids in self.drift_samples["input_ids"]]))
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


def load_inputs(config: SweepConfig) -> ExperimentInputs:
    """The sweep's pairs and unseen pairs (a smoke test keeps a few of each); drift samples come later."""
    pairs = data.load_pairs(config.pairs)
    if config.smoke_test:
        pairs = smoke_subset(pairs)
    pairs = pairs.reset_index(drop=True)
    if "trained" not in set(pairs["split"]):
        raise TliError(f"{config.pairs}: no rows with split 'trained'")
    unseen = None
    if config.eval_pairs is not None:
        unseen = data.load_eval_pairs(config.eval_pairs, pairs[pairs["split"] == "trained"])
        if config.smoke_test:
            unseen = unseen.head(SMOKE_PAIRS["unseen"])
        unseen = unseen.reset_index(drop=True).set_axis(range(len(pairs), len(pairs) + len(unseen)))
    return ExperimentInputs(pairs, unseen)


def smoke_subset(pairs: pd.DataFrame) -> pd.DataFrame:
    """4 trained pairs of each of the 4 largest categories and 6 control pairs."""
    trained = pairs[pairs["split"] == "trained"]
    counts = trained["category"].value_counts()
    largest = sorted(counts.index, key=lambda c: (-counts[c], c))[: SMOKE_PAIRS["categories"]]
    keep = [trained[trained["category"] == c].head(SMOKE_PAIRS["per_category"]) for c in largest]
    keep.append(pairs[pairs["split"] == "control"].head(SMOKE_PAIRS["control"]))
    return pd.concat(keep)


def trial_sets(
    inputs: ExperimentInputs, settings: TrialSettings
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, int]]:
    """(training rows, {set: rows}, {set: leaky rows removed}) of one trial.

    The trained split minus the held-out category is cut into training rows and a validation set
    (`data.validation_split`); control, held-out and unseen rows are scored leak-free against the
    training rows, control and held-out also whole (`evaluate.evaluation_sets`).
    """
    pairs = inputs.pairs
    trained = pairs[pairs["split"] == "trained"]
    others: dict[str, pd.DataFrame] = {}
    if settings.heldout_category is not None:
        held = trained["category"] == settings.heldout_category
        if not held.any():
            raise TliError(f"no trained pairs of category {settings.heldout_category!r} to hold out")
        trained, others["heldout"] = trained[~held], trained[held]
    train_rows, validation = data.validation_split(trained, settings.validation_fraction, settings.validation_seed)
    if len(train_rows) < 2:
        raise TliError(f"{len(train_rows)} training pair(s) left: in-batch negatives need at least 2")
    others = {"validation": validation, "control": pairs[pairs["split"] == "control"], **others}
    if inputs.unseen is not None:
        others["unseen"] = inputs.unseen
    sets, removed = evaluation_sets(train_rows, others)
    return train_rows, sets, removed
