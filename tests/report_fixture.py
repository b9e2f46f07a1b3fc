"""A small synthetic experiment in the sweep's own layout (no Ray, no model), written through `ExperimentStore`.

The base model's pool vectors are random (one concept per English word, a shared component and a language
direction); each trial's "TLI" is a known change of them, chosen by its evaluation pooling:

  pull     (mean_content)  each Swahili word moves towards its own translation: a rise specific to translations
  inflate  (mean)          every vector moves along one shared direction (plus noise): every cosine rises,
                           translations no more than the rest: not specific
  none     (last)          nothing changes: no rise

How far a word moves grows with the seed (seeds differ) and depends on its set and the target layer: the
validation set gains most at target layer 3, the control set at layer 1, so selecting on the control set
would pick another condition than selecting on validation. Per-pair tables and summaries come from
`tli.evaluate.pair_table`/`summary_table`, rows from `TrialSettings.row` and the trial helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tli import baselines, evaluate, probe, stats
from tli import config as configs
from tli.config import EvalConfig, ModelConfig
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import ExperimentInputs, trial_sets
from tli.sweep.settings import TrialSettings, expand_grid, swept_names
from tli.sweep.store import ExperimentStore
from tli.sweep.trial import (
    OBJECTIVE_METRIC,
    TrialRecord,
    objective,
    pack,
    probe_metrics,
    training_columns,
    wide_metrics,
)

N_LAYERS = 4  # a 4-block model: layers 0..4; the selection layer is L = 4
DIM = 24
CATEGORIES = ("noun", "verb", "adjective", "number")
PROTOCOLS = [  # paper as written (inflate), author's code (pull), control: last token (none)
    {"pooling_train": "mean", "pooling_eval": "mean", "mask_false_negatives": False},
    {"pooling_train": "mean", "pooling_eval": "mean_content", "mask_false_negatives": False},
    {"pooling_train": "last", "pooling_eval": "last", "mask_false_negatives": False},
]
MAIN_SPACE = {"target_layer": [1, 2, 3], "protocol": PROTOCOLS, "seed": [0, 1]}
RANK_MARGIN_SPACE = {"lora_rank": [8, 16], "margin": [0.2, 0.4], "heldout_category": ["noun", "verb"], "seed": [0]}


def fixture_inputs() -> ExperimentInputs:
    """6 trained pairs per category, 8 control pairs (one sharing an English word with a trained pair), 6 unseen."""
    rows = [(f"sw_{c}{i}", f"en_{c}{i}", c, c, "trained") for c in CATEGORIES for i in range(6)]
    rows += [(f"sw_ctl{i}", f"en_ctl{i}", "control", "noun", "control") for i in range(7)]
    rows.append(("sw_ctl7", "en_noun0", "control", "noun", "control"))
    pairs = pd.DataFrame(rows, columns=["swahili", "english", "category", "pos", "split"])
    unseen = pd.DataFrame(
        [(f"sw_new{i}", f"en_new{i}", "unseen", "noun", "unseen") for i in range(6)], columns=pairs.columns
    ).set_axis(range(len(pairs), len(pairs) + 6))
    return ExperimentInputs(pairs, unseen)


def lexicon(inputs: ExperimentInputs) -> evaluate.Lexicon:
    """The experiment's pool with made-up token counts (2 or 3 by the English word's position), as a tokenizer
    would give them.
    """
    return inputs.lexicon.with_tokens([2 + j % 2 for j in range(len(inputs.lexicon.english))])


def base_pool(lexicon: evaluate.Lexicon) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{layer: (Swahili pool, English pool)} of the 'base model', the same for every trial."""
    english = {word: i for i, word in enumerate(lexicon.english)}
    target = [english[sorted(lexicon.glosses[word])[0]] for word in lexicon.swahili]
    pool = {}
    for layer in range(N_LAYERS + 1):
        rng = np.random.default_rng(100 + layer)
        concepts, shared, language = rng.normal(size=(len(english), DIM)), rng.normal(size=DIM), rng.normal(size=DIM)
        sw = concepts[target] + rng.normal(scale=0.8, size=(len(target), DIM)) + 2 * shared + language
        en = concepts + rng.normal(scale=0.8, size=concepts.shape) + 2 * shared - language
        pool[layer] = (sw, en)
    return pool


def _gains(settings: TrialSettings) -> dict[str, float]:
    """How far this trial moves the Swahili words of each set."""
    t, train = settings.train.target_layer, settings.train
    scale = (1 + 0.25 * train.seed) * (train.lora_rank / 16) ** 0.5 * (train.margin / 0.4) ** 0.5
    per_set = {"trained": 0.5, "validation": 0.15 * t, "control": 0.15 * (4 - t), "heldout": 0.3, "unseen": 0.2}
    return {name: gain * scale for name, gain in per_set.items()}


def _post(pool, lexicon, sets, settings: TrialSettings, rng) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The pool after this trial's 'TLI' (see the module docstring)."""
    kind = {"mean": "inflate", "last": "none"}.get(settings.pooling_eval, "pull")
    gains = _gains(settings)
    set_of = {word: name for name, rows in sets.items() if not name.endswith("_all") for word in rows["swahili"]}
    word_gain = np.array([gains[set_of.get(word, "trained")] for word in lexicon.swahili])[:, None]
    english = {word: i for i, word in enumerate(lexicon.english)}
    target = [english[sorted(lexicon.glosses[word])[0]] for word in lexicon.swahili]
    post = {}
    for layer, (sw, en) in pool.items():
        if kind == "none":
            post[layer] = (sw, en)
        elif kind == "inflate":
            shift = 6 * gains["trained"] * (sw.mean(axis=0) + en.mean(axis=0)) / 2
            post[layer] = (
                sw + shift + rng.normal(scale=0.3, size=sw.shape),
                en + shift + rng.normal(scale=0.3, size=en.shape),
            )
        else:
            post[layer] = (sw + word_gain * (en[target] - sw), en)
    return post


def _trial(settings: TrialSettings, inputs: ExperimentInputs, pool, rng) -> TrialRecord:
    """One synthetic ok trial: its row, summary, per-pair table and training log."""
    train_rows, sets, removed = trial_sets(inputs, settings)
    t = settings.train.target_layer
    layers = sorted({t, N_LAYERS})
    post = _post(pool, inputs.lexicon, sets, settings, rng)
    pairs = evaluate.pair_table(sets, lexicon(inputs), {k: pool[k] for k in layers}, {k: post[k] for k in layers})
    config = EvalConfig(
        pooling=settings.pooling_eval, n_boot=settings.n_boot, seed=settings.train.seed, layers=tuple(layers)
    )
    found = baselines.baseline_table(sets, inputs.lexicon, {k: pool[k] for k in layers}, train_rows)
    summary = evaluate.summary_table(pairs, config, N_LAYERS, len(inputs.lexicon.english), removed, baselines=found)
    probed, probe_summary = _probe(settings, inputs, sets)
    kl = 0.001 * t * (2 if settings.pooling_eval == "mean" else 1)
    row = (
        settings.row()
        | {
            "status": "ok",
            "error": None,
            "n_train_pairs": len(train_rows),
            "final_loss": 0.3 / t,
            "objective": objective(summary, N_LAYERS),
            "objective_metric": OBJECTIVE_METRIC,
            "train_seconds": 1.0,
            "eval_seconds": 0.5,
            "drift_seconds": 0.2,
            "drift_kl_sw": kl,
            "drift_kl_en": kl / 2,
            "eval_layer_target": t,
            "eval_layer_final": N_LAYERS,
            "eval_layer_selection": N_LAYERS,
            "node": "node-a",
            "worker": "node-a:1",
            "finished_at": "2026-01-01T00:00:00+00:00",
        }
        | wide_metrics(summary, {"target": t, "final": N_LAYERS})
        | probe_metrics(probe_summary)
    )
    train_log = training_log(settings)
    row |= training_columns(train_log) | {
        "drift_kl_sw_ci_low": kl * 0.8,
        "drift_kl_sw_ci_high": kl * 1.2,
        "drift_kl_sw_random": kl / 4,  # above its reference
        "drift_kl_en_ci_low": kl / 2 * 0.8,
        "drift_kl_en_ci_high": kl / 2 * 1.2,
        "drift_kl_en_random": kl,  # below it
    }
    return TrialRecord(row, {"summary": summary, "pairs": pairs, "train_log": train_log, "probe": probed})


def _probe(settings: TrialSettings, inputs: ExperimentInputs, sets) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The translation probe's table and summary, made up without a model: before TLI a word is translated when
    its number is a multiple of 3; after a "pull" trial every trained word is too, with a gold log-probability one
    nat higher and rank 1; "inflate" and "none" trials translate as before.
    """
    probed, excluded = probe.probed_rows(sets, settings.probe)
    wanted = probe.sources(probed, inputs.lexicon, settings.probe)
    trained = set(sets["trained"]["swahili"]) | set(sets["trained"]["english"])
    pull = settings.pooling_eval not in ("mean", "last")

    def answers(after: bool) -> dict:
        out = {}
        for source in wanted:
            better = after and pull and source.word in trained
            correct = better or int(source.word.rstrip("_")[-1]) % 3 == 0
            out[source.direction, source.word] = probe.Answer(
                output=source.golds[0] if correct else "?",
                correct=correct,
                logprob={gold: -5.0 + better for gold in source.golds},
                rank={gold: 1 if better else 3 for gold in source.golds},
            )
        return out

    table = probe.probe_table(probed, wanted, answers(False), answers(True))
    return table, probe.probe_summary(table, excluded)


def training_log(settings: TrialSettings) -> pd.DataFrame:
    """A training log (`tli.train.LOG_COLUMNS`) of step 0 and 2 epochs of 2 steps, by the trial's evaluation pooling:
    `mean` (inflate) descends onto its margin with every hinge open (cosines collapse towards 1), `mean_content`
    (pull) ends below its margin with hinges closing, `last` (none) never leaves its margin.
    """
    margin, kind = settings.train.margin, settings.pooling_eval
    steps = np.arange(5)  # 0: before any update
    excess = {"mean": np.array([0.1, 0.06, 0.03, 0.01, 0.0]), "mean_content": np.linspace(0.05, -0.2, 5)}.get(
        kind, np.zeros(5)
    )
    positive = {"mean": np.linspace(0.5, 0.99, 5), "mean_content": np.linspace(0.5, 0.8, 5)}.get(kind, np.full(5, 0.9))
    hardest = positive + excess
    return pd.DataFrame(
        {
            "step": steps,
            "epoch": [0, 1, 1, 2, 2],
            "loss": margin + excess,
            "lr": [np.nan, 0.0, 2e-4, 1e-4, 5e-5],
            "seconds": steps * 0.1,
            "loss_minus_margin": excess,
            "active_hinges": [1.0] * 5 if kind != "mean_content" else [1.0, 1.0, 0.75, 0.5, 0.5],
            "cos_positive": positive,
            "cos_hardest_negative": hardest,
            "cos_negatives": hardest - 0.1,
            "centered_cos_positive": positive - 0.4,
            "centered_cos_hardest_negative": hardest - 0.4,
            "centered_cos_negatives": hardest - 0.6,
            "grad_norm": [np.nan, 1.0, 0.8, 0.6, 0.4],
            "lora_norm": [0.0, 0.1, 0.2, 0.3, 0.4 * settings.train.lora_rank / 16],
        }
    )


def scan_table(inputs: ExperimentInputs, pool) -> pd.DataFrame:
    """The base model's 'layer scan' in two pooling modes (the second one shifted a little)."""
    located = lexicon(inputs).locate(pd.concat([inputs.pairs, inputs.unseen]))
    rows = []
    for mode, shift in (("mean", 3.0), ("mean_content", 0.0)):
        for layer, (sw, en) in pool.items():
            metrics = stats.set_metrics(stats.pair_metrics(sw + shift, en + shift, *located))
            rows.append(
                {"model": "fixture-model", "layer": layer, "layer_name": f"block {layer}", "pooling": mode}
                | metrics
                | {"n_candidates": len(inputs.lexicon.english)}
            )
    return pd.DataFrame(rows)


def make_results(
    root: Path, space: dict | None = None, errored: int = 1, unfinished: int = 1, name: str = "fixture"
) -> Path:
    """Write `root/<name>/` for the grid `space` and return it.

    The first `errored` trials of the grid are stored as errors (as the sweep records a trial that failed after
    its retries); the last `unfinished` are left out (a sweep still running). sweep_config.json plans the grid.
    """
    space = MAIN_SPACE if space is None else space
    inputs = fixture_inputs()
    base = TrialSettings(
        model=ModelConfig(model="fixture-model"),
        validation_fraction=0.25,
        n_boot=200,
        drift=False,
        inputs_digest=inputs.digest,
    )
    planned = expand_grid(space, base)
    store, pool, rng = ExperimentStore(str(Path(root) / name)), base_pool(inputs.lexicon), np.random.default_rng(0)
    for index, settings in enumerate(planned[: len(planned) - unfinished]):
        if index < errored:
            store.write_row(
                settings.row()
                | {
                    "experiment": name,
                    "status": "error",
                    "objective": float("nan"),
                    "error": "OutOfMemoryError: CUDA out of memory",
                    "finished_at": "2026-01-01T00:00:00+00:00",
                }
            )
        else:
            store.commit(pack(_trial(settings, inputs, pool, rng)), experiment=name)
    store.merge()
    store.write("scan.parquet", scan_table(inputs, pool))
    sweep = SweepConfig(model=ModelConfig(model="fixture-model"), experiment=name, seeds=(0, 1), n_boot=200)
    store.write(
        "sweep_config.json",
        {
            "sweep": configs.to_dict(sweep),
            "space": {k: [str(v) for v in vs] for k, vs in space.items()},
            "swept": swept_names(space),
            "base": base.row(),
            "planned": len(planned),
            "n_pairs": len(inputs.pairs),
            "n_unseen": len(inputs.unseen),
        },
    )
    return Path(store.uri)
