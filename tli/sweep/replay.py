"""A stored trial, again: its evaluation pairs embedded before and after its adapter (for the t-SNE figure).

The adapter is the one stored with the results (`--save-adapters`) when there is one, else it is
retrained with the trial's settings and seed. This is the only place the report side loads a model.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from tli import config as configs
from tli.errors import TliError
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import load_inputs, trial_sets
from tli.sweep.settings import TrialSettings
from tli.sweep.store import ExperimentStore


def trial_embeddings(location: str, trial_id: str, max_pairs: int = 40, device: str = "auto") -> dict[str, Any]:
    """{"pre": (swahili [n, d], english [n, d]), "post": (...), "words": [n] "sw/en" labels, "title": str}
    at the trial's target layer and evaluation pooling, for up to `max_pairs` of its evaluation pairs.
    """
    from tli import adapters, models, pooling, train

    store = ExperimentStore(location)
    row, sweep = store.row(trial_id), (store.read_json("sweep_config.json") or {}).get("sweep")
    if row is None or row.get("status") != "ok":
        raise TliError(f"no ok trial {trial_id} in {store.uri}")
    if sweep is None:
        raise TliError(f"no readable sweep_config.json in {store.uri}: cannot tell which pairs the sweep used")
    settings = TrialSettings.from_row(row)
    settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, device=device))
    inputs = load_inputs(configs.from_dict(SweepConfig, sweep))
    if settings.drift:
        inputs = dataclasses.replace(inputs, drift_samples=store.read("drift_samples").reset_index(drop=True))
    if inputs.digest != settings.inputs_digest:
        raise TliError(
            f"the pairs of trial {trial_id} have changed since it ran (inputs digest {inputs.digest}, the trial's "
            f"{settings.inputs_digest}): {sweep.get('pairs') or 'the default pairs'}, {sweep.get('eval_pairs')}"
        )
    train_rows, sets, _ = trial_sets(inputs, settings)
    shown = pd.concat([rows for name, rows in sets.items() if not name.endswith("_all")])
    shown = shown.drop_duplicates(["swahili", "english"]).sample(frac=1.0, random_state=0).head(max_pairs)
    model, tokenizer = models.load_model(settings.model)
    layer, mode = settings.train.target_layer, settings.pooling_eval
    words = list(shown["swahili"]) + list(shown["english"])

    def embed(m):
        vectors = pooling.embed_words(m, tokenizer, words, [layer], [mode])[mode][layer]
        return vectors[: len(shown)], vectors[len(shown) :]

    pre = embed(model)
    stored = store.adapter_folder(trial_id)
    with tempfile.TemporaryDirectory() as local:
        if stored is not None:
            for name in stored.names():
                Path(local, name).write_bytes(stored.read_bytes(name))
            tuned, source = adapters.load_adapter(model, local, settings.model), "the adapter stored with the results"
        else:
            tuned, _ = train.train_tli(model, tokenizer, train_rows, settings.train, progress=False)
            source = "the adapter retrained with the trial's settings and seed (none stored: see --save-adapters)"
        post = embed(tuned)
    title = f"t-SNE, trial {trial_id}, target layer {layer}, eval pooling {mode}\n{source}"
    return {
        "pre": pre,
        "post": post,
        "words": [f"{s}/{e}" for s, e in zip(shown["swahili"], shown["english"])],
        "title": title,
    }
