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
import logging
from typing import TYPE_CHECKING

import pandas as pd

from tli import data
from tli.errors import TliError
from tli.evaluate import Lexicon, evaluation_sets
from tli.sweep.flags import SweepConfig
from tli.sweep.settings import TrialSettings

if TYPE_CHECKING:
    from tli.sweep.store import ExperimentStore

log = logging.getLogger(__name__)

SMOKE_DRIFT = {"prompts": 2, "tokens": 8}  # a smoke test's drift samples: 2 prompts per language, 8 tokens
SMOKE_PAIRS = {"categories": 4, "per_category": 4, "control": 6, "unseen": 20}  # 16 trained + 6 control pairs


@dataclasses.dataclass(frozen=True, eq=False)
class ExperimentInputs:
    """The experiment's fixed inputs (frames indexed by pair_id)."""

    pairs: pd.DataFrame  # trained and control rows
    unseen: pd.DataFrame | None = None  # evaluation-only rows (split "unseen" or --eval-pairs), never trained
    drift_samples: pd.DataFrame | None = None  # the base model's own continuations (tli.drift.make_samples)
    pairs_file: str = ""  # where the pairs came from (recorded with stored adapters)

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
    """The sweep's pairs and unseen pairs (a smoke test keeps a few of each); drift samples come later.

    The unseen set gathers the pairs file's own `unseen` rows and the --eval-pairs file, minus any row that
    shares a word with the trained rows (a warning counts them).
    """
    pairs_file = config.pairs or str(data.default_pairs_path())
    everything = data.load_pairs(pairs_file)
    pairs = everything[everything["split"] != "unseen"]
    if config.smoke_test:
        pairs = smoke_subset(pairs)
    pairs = pairs.reset_index(drop=True)
    trained = pairs[pairs["split"] == "trained"]
    if trained.empty:
        raise TliError(f"{pairs_file}: no rows with split 'trained'")
    parts = [_unseen_rows(everything[everything["split"] == "unseen"], trained, pairs_file)]
    if config.eval_pairs is not None:
        parts.append(data.load_eval_pairs(config.eval_pairs, trained))
    unseen = pd.concat([part for part in parts if len(part)]) if any(len(part) for part in parts) else None
    if unseen is not None:
        unseen = unseen.head(SMOKE_PAIRS["unseen"]) if config.smoke_test else unseen
        unseen = unseen.reset_index(drop=True).set_axis(range(len(pairs), len(pairs) + len(unseen)))
    return ExperimentInputs(pairs, unseen, pairs_file=pairs_file)


def _unseen_rows(rows: pd.DataFrame, trained: pd.DataFrame, origin: str) -> pd.DataFrame:
    """The leak-free `unseen` rows of the pairs file itself (a warning counts the others)."""
    kept, removed = data.leak_free(rows, trained)
    if removed:
        log.warning("%s: %d of %d unseen rows share a word with the trained rows (dropped)", origin, removed, len(rows))
    return kept


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


# --- drift samples: made once per experiment, by the base model itself --------------------------


def make_drift_samples(model_config, smoke: bool, threads: int) -> pd.DataFrame:
    """The base model's continuations of the drift prompts (a Ray task: it needs the trials' device)."""
    import torch

    from tli import drift, models

    torch.set_num_threads(threads)  # torch's default, every core, oversubscribes a machine Ray shares out
    model, tokenizer = models.load_model(model_config)
    prompts = (
        {lang: p[: SMOKE_DRIFT["prompts"]] for lang, p in drift.DEFAULT_PROMPTS.items()}
        if smoke
        else drift.DEFAULT_PROMPTS
    )
    samples = drift.make_samples(model, tokenizer, prompts, **({"new_tokens": SMOKE_DRIFT["tokens"]} if smoke else {}))
    return samples.assign(model=model_config.model)


def with_drift_samples(
    inputs: ExperimentInputs, config: SweepConfig, store: ExperimentStore, gpus: float
) -> ExperimentInputs:
    """`inputs` with the experiment's drift samples: the stored ones if made by this model, else made now (a Ray
    task reserving a trial's CPUs and `gpus`, its GPU share) and stored, once the stored trials are known to
    share these inputs (`check_same_inputs`).
    """
    if not config.drift:
        check_same_inputs(store, inputs.digest)
        return inputs
    samples = store.read("drift_samples")
    fresh = (
        samples.empty
        or set(samples.get("model", [])) != {config.model.model}
        or (len(samples) <= 2 * SMOKE_DRIFT["prompts"]) != config.smoke_test
    )
    if fresh:
        import ray

        task = ray.remote(num_cpus=config.cpus_per_trial, num_gpus=gpus)(make_drift_samples)
        samples = ray.get(task.remote(config.model, config.smoke_test, max(1, int(config.cpus_per_trial))))
    inputs = dataclasses.replace(inputs, drift_samples=samples.reset_index(drop=True))
    check_same_inputs(store, inputs.digest)
    if fresh:
        store.write("drift_samples.parquet", samples)
    return inputs


def check_same_inputs(store: ExperimentStore, digest: str) -> None:
    """TliError when the experiment's stored trials were measured on other inputs: one experiment, one set of
    pairs, evaluation pairs and drift samples (the report could not tell their rows apart).
    """
    others = sorted({row.get("inputs_digest") for row in store.rows()} - {digest}, key=str)
    if others:
        raise TliError(
            f"{store.uri} holds trials of other inputs (pairs, evaluation pairs, drift samples or --smoke-test; "
            f"inputs digest {others[0]}, now {digest}): use another --experiment"
        )
