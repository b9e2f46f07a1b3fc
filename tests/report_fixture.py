"""A small synthetic sweep result directory in the runner's own layout (no Ray, no model).

Embeddings are random vectors built so that the two evaluation poolings behave as in the paper:
under `mean` a large shared component puts every cosine near 1 and TLI raises matched and
mismatched cosines alike; under `mean_content` TLI moves each Swahili word towards its own
translation. Summaries and per-pair tables come from `tli.evaluate.compare` and the trial rows from
the runner's helpers, so the files match what a real sweep writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tli import config as configs
from tli import evaluate, results, runner, stats
from tli.sweep_results import ResultStore, objective, wide_metrics

N_LAYERS = 4  # a 4-block model: layers 0..4
DIM = 16
CATEGORIES = ("noun", "verb", "adjective", "number")
MAIN_SPACE = {"target_layer": [1, 2], "heldout_category": ["noun", "verb"], "pooling_eval": ["mean", "mean_content"]}
RANK_MARGIN_SPACE = {"target_layer": [2], "lora_rank": [4, 8], "margin": [0.2, 0.4]}


def fixture_pairs() -> pd.DataFrame:
    """3 trained pairs in each of 4 categories + 4 control pairs."""
    rows = [(f"sw_{c}{i}", f"en_{c}{i}", c, c, "trained") for c in CATEGORIES for i in range(3)]
    rows += [(f"sw_ctl{i}", f"en_ctl{i}", "control", "noun", "control") for i in range(4)]
    return pd.DataFrame(rows, columns=["swahili", "english", "category", "pos", "split"])


def _embeddings(rows: pd.DataFrame, mode: str, gain: float, rng: np.random.Generator) -> tuple[dict, dict]:
    """({layer: (sw, en)} before, after) for the given rows; `gain` is how far TLI moves sw towards en."""
    pre, post = {}, {}
    for layer in range(N_LAYERS + 1):
        words = rng.normal(size=(len(rows), DIM))
        shared = np.full(DIM, 8.0 if mode == "mean" else 0.0)
        sw = words + rng.normal(scale=1.0, size=words.shape) + shared + 0.5
        en = words + rng.normal(scale=1.0, size=words.shape) + shared - 0.5
        pre[layer] = (sw, en)
        if mode == "mean":  # TLI inflates the shared component: every cosine rises
            post[layer] = (sw + gain * shared, en + gain * shared)
        else:  # TLI pulls each Swahili word towards its own translation
            post[layer] = (sw + gain * (en - sw), en)
    return pre, post


def _trial(settings: dict, pairs: pd.DataFrame, rng: np.random.Generator) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(row, summary, per-pair table) of one synthetic ok trial."""
    _, sets = runner.trial_sets(pairs, settings["heldout_category"])
    sets = {name: rows.reset_index(drop=True) for name, rows in sets.items()}
    gain = 0.15 * settings["target_layer"] * (1 + 0.2 * settings["seed"]) * (settings["lora_rank"] / 16) ** 0.2
    layers = sorted({settings["target_layer"], N_LAYERS})
    pre, post = {}, {}
    for name, rows in sets.items():
        set_gain = gain if name == "trained" else gain / 2
        before, after = _embeddings(rows, settings["pooling_eval"], set_gain, rng)
        pre[name] = {k: before[k] for k in layers}
        post[name] = {k: after[k] for k in layers}
    config = evaluate.EvalConfig(pooling=settings["pooling_eval"], n_boot=200, seed=settings["seed"])
    summary, pair_table = evaluate.compare(sets, pre, post, config, N_LAYERS)
    row = runner.trial_row(settings, "fixture") | {
        "status": "ok", "n_train_pairs": len(sets["trained"]), "final_loss": 0.1, "train_seconds": 1.0,
        "eval_seconds": 0.5, "node": "node-a", "finished_at": "2026-01-01T00:00:00+00:00",
    } | wide_metrics(summary, settings["target_layer"], N_LAYERS)
    return row | {"objective": objective(row)}, summary, pair_table


def _scan(pairs: pd.DataFrame, rng: np.random.Generator, modes=("mean", "mean_content")) -> pd.DataFrame:
    rows = []
    for mode in modes:
        _, before = _embeddings(pairs, mode, 0.0, rng)
        for layer, (sw, en) in before.items():
            rows.append({"model": "fixture-model", "layer": layer, "pooling": mode,
                         "layer_name": f"block {layer}"} | stats.alignment_metrics(sw, en, gold=list(pairs["english"])))
    return pd.DataFrame(rows)


def make_results(root: Path, space: dict | None = None, seeds=(0, 1), n_errors: int = 1, skip_last: int = 0) -> Path:
    """Write `root/fixture/` for the grid `space` x seeds and return it.

    The first `n_errors` trials are stored as errors (out of memory, as the runner records a trial that
    failed after its retries); the last `skip_last` trials of the grid are left out (a sweep still running).
    """
    space = MAIN_SPACE if space is None else space
    pairs = fixture_pairs()
    config = runner.SweepConfig(model="fixture-model", experiment="fixture", seeds=tuple(seeds), n_boot=200)
    defaults = runner.trial_defaults(config, pairs)
    planned = runner.expand_grid(runner.grid_space(space, config), defaults)
    store = ResultStore(Path(root) / "fixture")
    rng = np.random.default_rng(0)
    for index, settings in enumerate(planned[: len(planned) - skip_last]):
        if index < n_errors:
            row = runner.trial_row(settings, "fixture") | {"error": "OutOfMemoryError: CUDA out of memory"}
            store.write_trial(row)
        else:
            store.write_trial(*_trial(settings, pairs, rng))
    store.merge()
    results.write_table(_scan(pairs, rng), store.root / "scan.parquet")
    results.write_json({"sweep": configs.to_dict(config), "param_space": space, "defaults": defaults,
                        "n_pairs": len(pairs)}, store.root / "sweep_config.json")
    return store.root
