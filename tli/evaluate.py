"""Evaluation: per-pair alignment before and after TLI, its statistics, and the controls beside it.

Every pair is scored against one fixed retrieval pool, the `Lexicon` (all Swahili and English words of
the experiment, every gloss of a headword counting as correct; see `tli.stats.pair_metrics`). The
per-pair table holds, before (`*_pre`) and after (`*_post`) TLI, the raw cosine, the mean cosine to
non-translations, their gap, the same against the non-translations alike in token count and part of speech
(`*_alike`: under `mean` pooling a vector's length component would otherwise pass for translation), all of it
after per-language centring too, and retrieval hits. The summary (one row per set x evaluation layer) holds the
set means and five paired tests of post against pre: the raw cosine (the paper's test: `mean_diff`, `ci_low`,
`ci_high`, `t`, `p`, `wilcoxon_p`, `d_z`), the gap over mismatched pairs (`gap_diff`, `gap_ci_low`,
`gap_ci_high`, `gap_p`), the centred gap (`centered_gap_*`) and both gaps over alike pairs (`gap_alike_*`,
`centered_gap_alike_*`: the ones the report's verdict uses). The pool's token counts come from the model's
tokenizer (`pooling.token_counts`).

Sets other than `trained` are scored on their leak-free rows (no row shares a word with the training
rows; `n_removed` counts the rest); the full control and held-out sets stay available as `control_all`
and `heldout_all`, for comparison with the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tli import baselines, data, stats
from tli.config import EvalConfig, check_layer, layer_name
from tli.errors import TliError

if TYPE_CHECKING:  # the tables and their statistics need no torch: the aggregator imports this module
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedTokenizerBase

Embeddings = dict[int, tuple[np.ndarray, np.ndarray]]  # layer -> (Swahili pool [p, d], English pool [m, d])
SETS = ("trained", "validation", "not_trained", "control", "control_all", "heldout", "heldout_all", "unseen")
FULL_SETS = ("control", "heldout")  # also reported whole, as `<name>_all`
PAIR_COLUMNS = ("set", "eval_layer", "pair_id", "swahili", "english", "category", "pos")
TESTED = {  # summary prefix -> per-pair metric
    "": "cosine",
    "gap_": "gap",
    "centered_gap_": "centered_gap",
    "gap_alike_": "gap_alike",
    "centered_gap_alike_": "centered_gap_alike",
}
RETRIEVAL_TESTED = {"p_at_1": "hit", "p_at_1_centered": "hit_centered", "p_at_1_csls": "hit_csls"}  # McNemar's
CHANCE_COLUMNS = tuple(column for column, metric in stats.SET_METRICS.items() if metric in stats.CHANCE_METRICS)


@dataclass(frozen=True)
class Lexicon:
    """The retrieval pool: every Swahili and English word once, the glosses of each Swahili word, and what the
    like-for-like baseline matches English words on (`stats.alike_baseline`): their part of speech, and their token
    count once a tokenizer has given it (`with_tokens`).
    """

    swahili: tuple[str, ...]
    english: tuple[str, ...]
    glosses: dict[str, frozenset[str]]
    english_pos: tuple[str, ...]  # each English word's part of speech where its rows agree on one, else ""
    english_tokens: tuple[int, ...] | None = None  # each English word's token count (`pooling.token_counts`)

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame) -> Lexicon:
        glosses = pairs.groupby("swahili", sort=False)["english"].agg(frozenset).to_dict()
        english = tuple(pairs["english"].drop_duplicates())
        labels = pairs["pos"] if "pos" in pairs else pd.Series("", index=pairs.index)
        labels = labels.fillna("").replace(data.DEFAULTS["pos"], "")
        kinds = labels.groupby(pairs["english"], sort=False).agg(lambda named: set(named) - {""})
        pos = tuple(next(iter(kinds[word])) if len(kinds[word]) == 1 else "" for word in english)
        return cls(tuple(pairs["swahili"].drop_duplicates()), english, glosses, pos)

    def with_tokens(self, counts) -> Lexicon:
        """The pool with its English words' token counts ([m], in the order of `english`)."""
        counts = tuple(int(c) for c in counts)
        if len(counts) != len(self.english):
            raise ValueError(f"{len(counts)} token counts for {len(self.english)} English words")
        return dataclasses.replace(self, english_tokens=counts)

    def locate(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(Swahili index [n], English index [n], gold [n, m], alike [n, m]) of `rows` in this pool: the arguments
        of `stats.pair_metrics` after the pools.
        """
        if self.english_tokens is None:
            raise ValueError("the pool's token counts are unknown: Lexicon.with_tokens(pooling.token_counts(...))")
        src_index, tgt_index, gold = self.indices(rows)
        alike = stats.alike_baseline(gold, tgt_index, self.english_tokens, self.english_pos)
        return src_index, tgt_index, gold, alike

    def indices(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Swahili index [n], English index [n], gold [n, m]) of `rows` in this pool: what retrieval needs."""
        sw = {word: i for i, word in enumerate(self.swahili)}
        en = {word: j for j, word in enumerate(self.english)}
        gold = np.zeros((len(rows), len(self.english)), dtype=bool)
        for i, word in enumerate(rows["swahili"]):
            gold[i, [en[gloss] for gloss in self.glosses[word]]] = True
        return rows["swahili"].map(sw).to_numpy(), rows["english"].map(en).to_numpy(), gold


def eval_layers(config: EvalConfig, target_layer: int, n_layers: int) -> list[int]:
    """The evaluation layers: `config.layers`, or the target layer and the last layer L."""
    layers = list(config.layers) or sorted({target_layer, n_layers})
    for k in layers:
        check_layer(k, n_layers)
    return layers


def adapter_sets(
    pairs: pd.DataFrame, train_pairs: list[list[str]] | None, origin: str
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(the rows an adapter was trained on, {other set: rows}) of a pairs file.

    `train_pairs`: the [swahili, english] pairs the adapter's tli_config.json lists (None for an older
    adapter: the whole trained split). Trained-split rows it never saw (a sweep's validation set or held-out
    category) form the set `not_trained`; other splits (control, unseen) keep their names.
    """
    trained_split = pairs[pairs["split"] == "trained"]
    if trained_split.empty:
        raise TliError(f"{origin} has no rows with split 'trained' (the pairs the adapter was trained on)")
    seen = pd.Series(True, index=trained_split.index)
    if train_pairs is not None:
        wanted = {tuple(pair) for pair in train_pairs}
        present = set(zip(trained_split["swahili"], trained_split["english"]))
        if wanted - present:
            raise TliError(
                f"{len(wanted - present)} of the {len(wanted)} pairs the adapter was trained on are not trained rows "
                f"of {origin}: pass the --pairs it was trained with"
            )
        seen = pd.Series(
            [pair in wanted for pair in zip(trained_split["swahili"], trained_split["english"])],
            index=trained_split.index,
        )
    others = {name: rows for name, rows in pairs.groupby("split", sort=False) if name != "trained"}
    if not seen.all():
        others["not_trained"] = trained_split[~seen]
    return trained_split[seen], others


def evaluation_sets(
    train_rows: pd.DataFrame, others: dict[str, pd.DataFrame]
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """({set: rows}, {set: rows removed}): `trained` = the training rows, every other set leak-free.

    Empty sets are left out; control and held-out sets are also given whole as `<name>_all`.
    """
    sets, removed = {"trained": train_rows}, {"trained": 0}
    for name, rows in others.items():
        kept, removed[name] = data.leak_free(rows, train_rows)
        sets[name] = kept
        if name in FULL_SETS:
            sets[f"{name}_all"], removed[f"{name}_all"] = rows, 0
    return {name: rows for name, rows in sets.items() if len(rows)}, removed


def embed_lexicon(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    lexicon: Lexicon,
    layers: Sequence[int],
    mode: str,
    batch_size: int = 64,
) -> Embeddings:
    """{layer: (Swahili pool [p, d], English pool [m, d])}, pooled with `mode`."""
    from tli import pooling

    words = list(lexicon.swahili) + list(lexicon.english)
    vectors = pooling.embed_words(model, tokenizer, words, layers, [mode], batch_size)[mode]
    p = len(lexicon.swahili)
    return {k: (v[:p], v[p:]) for k, v in vectors.items()}


def pair_table(
    sets: dict[str, pd.DataFrame], lexicon: Lexicon, pre: Embeddings, post: Embeddings, csls_k: int = 10
) -> pd.DataFrame:
    """One row per set x layer x pair: `pair_id` (the row's label in the experiment's pairs) and every
    `stats.pair_metrics` metric before (`_pre`) and after (`_post`) TLI (`stats.CHANCE_METRICS` once: they do not
    change).
    """
    pools = {  # the pool x pool matrices, once per layer and before/after: every set indexes the same ones
        (layer, when): stats.PoolSimilarities.of(*embeddings[layer], k=csls_k)
        for layer in pre
        for when, embeddings in (("pre", pre), ("post", post))
    }
    frames = []
    for name, rows in sets.items():
        located = lexicon.locate(rows)
        for layer in pre:
            frame = rows.reindex(columns=["swahili", "english", "category", "pos"])
            frame.insert(0, "pair_id", rows.index)
            frame.insert(0, "eval_layer", layer)
            frame.insert(0, "set", name)
            for when in ("pre", "post"):
                for metric, values in pools[layer, when].pair_metrics(*located).items():
                    frame[metric if metric in stats.CHANCE_METRICS else f"{metric}_{when}"] = values
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summary_table(
    pairs: pd.DataFrame,
    config: EvalConfig,
    n_layers: int,
    n_candidates: int,
    removed: dict[str, int] | None = None,
    bootstrap: bool = True,
    baselines: pd.DataFrame | None = None,
    paired: tuple[str, ...] = tuple(TESTED),
) -> pd.DataFrame:
    """One row per set x layer: set means before/after, paired tests of cosine, gap and centred gap (CIs NaN
    without `bootstrap`: the report computes its own; the TESTED prefixes not in `paired` get their means alone),
    McNemar's exact test of each P@1 (`RETRIEVAL_TESTED`), and the `baselines` columns
    (`tli.baselines.baseline_table`) of the same set and layer.
    """
    columns = {
        m if m in stats.CHANCE_METRICS else f"{m}_{when}" for m in stats.PAIR_METRICS for when in ("pre", "post")
    }
    values = {c: pairs[c].to_numpy() for c in columns}  # one array per column, sliced per group
    rows = []
    for (name, layer), index in pairs.groupby(["set", "eval_layer"], sort=False).indices.items():
        group = {c: column[index] for c, column in values.items()}
        row = {
            "set": name,
            "eval_layer": layer,
            "layer_name": layer_name(layer, n_layers),
            "n_candidates": n_candidates,
            "n_removed": (removed or {}).get(name, 0),
        }
        for prefix, metric in TESTED.items():
            n_boot = config.n_boot if bootstrap else 0
            pre, post = group[f"{metric}_pre"], group[f"{metric}_post"]
            tests = stats.paired_tests(pre, post, n_boot, config.seed, tests=prefix in paired)
            if prefix:
                tests = {
                    f"{prefix}diff": tests["mean_diff"],
                    f"{prefix}ci_low": tests["ci_low"],
                    f"{prefix}ci_high": tests["ci_high"],
                    f"{prefix}p": tests["p"],
                }
            row |= tests
        for when in ("pre", "post"):
            per_pair = {m: group[m if m in stats.CHANCE_METRICS else f"{m}_{when}"] for m in stats.PAIR_METRICS}
            row |= {
                f"{column}_{when}": value
                for column, value in stats.set_metrics(per_pair).items()
                if column != "n_pairs" and column not in CHANCE_COLUMNS
            }
        row |= {column: float(group[stats.SET_METRICS[column]].mean()) for column in CHANCE_COLUMNS}
        for column, metric in RETRIEVAL_TESTED.items():
            tested = stats.mcnemar_exact(group[f"{metric}_pre"], group[f"{metric}_post"])
            row |= {f"{column}_{name}": value for name, value in tested.items()}
        rows.append(row)
    table = pd.DataFrame(rows)
    if baselines is not None:
        table = table.merge(baselines, on=["set", "eval_layer"], how="left")
    return table


def evaluate_adapter(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[str, pd.DataFrame],
    target_layer: int,
    config: EvalConfig,
    lexicon: Lexicon | None = None,
    pre: Embeddings | None = None,
    removed: dict[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-pair table) of the base model (adapter disabled, or the given `pre`) against the adapted one,
    with the orthographic and Procrustes baselines (`tli.baselines`, the map fitted on `sets["trained"]`) beside.

    `peft_model` may also be a model with the adapter merged in (`adapters.merged`), given `pre`. `lexicon` defaults
    to the words of `sets`; `pre` must hold the evaluation layers of `config`.
    """
    from tli import pooling, surgery

    n_layers = surgery.num_layers(peft_model)
    layers = eval_layers(config, target_layer, n_layers)
    lexicon = lexicon or Lexicon.from_pairs(pd.concat(list(sets.values())))
    lexicon = lexicon.with_tokens(pooling.token_counts(tokenizer, lexicon.english))
    peft_model.eval()
    if pre is None:
        if not hasattr(peft_model, "disable_adapter"):
            raise ValueError("a merged model has no pre-TLI state of its own: pass `pre`")
        with peft_model.disable_adapter():
            pre = embed_lexicon(peft_model, tokenizer, lexicon, layers, config.pooling, config.batch_size)
    post = embed_lexicon(peft_model, tokenizer, lexicon, layers, config.pooling, config.batch_size)
    pre = {k: pre[k] for k in layers}
    pairs = pair_table(sets, lexicon, pre, post, config.csls_k)
    found = baselines.baseline_table(sets, lexicon, pre, sets["trained"])
    return summary_table(pairs, config, n_layers, len(lexicon.english), removed, baselines=found), pairs
