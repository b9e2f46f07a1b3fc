r"""The translation probe: does the model translate a word better after TLI?

Per pair of every evaluation set and per direction (Swahili -> English `sw_en`, English -> Swahili `en_sw`), the
model continues a fixed few-shot prompt, e.g. for `sw_en` with two shots

    Swahili: mshumaa\nEnglish: candle\n\nSwahili: wingu\nEnglish: cloud\n\nSwahili: <word>\nEnglish:

(the first `probe_shots` pairs of SHOTS, words in neither the paper's pairs nor FreeDict's; a row sharing a word with
the shots shown is left out of every scored set), and the probe records

  output    its greedy continuation, cut at the first newline or special token, of at most `probe_max_new_tokens`
            tokens and no more than the longest correct answer " <gloss>\n" of the batch needs;
  correct   normalise(output) is an `accepted` form of any gloss of the word (every gloss counts, as in retrieval;
            normalise: NFKC, casefolded, surrounding whitespace and punctuation, hyphens included, stripped, inner
            whitespace collapsed: "-refu" and "refu" match; a gloss "to beg/pray" accepts "to beg", "beg", "pray");
  logprob   log p(" <gold>\n" | prompt), teacher-forced and summed over its tokens: the pair's own translation;
  rank      1 + the distractors whose answer " <d>\n" has a higher log-probability than the gold's. The distractors
            are `probe_distractors` pool words of the target language that are not a gloss of the word: the first
            of one seeded permutation of the pool per direction, the same in every trial (scoring every pool word
            would take ~1,300-3,200 forward passes per word). rr = 1 / rank, its mean the MRR; a random ranking
            of K distractors and the gold gives H(K+1) / (K+1) (`rr_chance`).

Cost: the prompt's shared prefix runs once per direction and model state, its key/value cache copied to each batch;
each word's suffix runs once, its greedy steps one token each, each candidate answer over its own tokens only.
Words of equal suffix length are batched together, so no padding lies inside a prompt; answers are right-padded.
`probe_pairs` caps the rows per set with a fixed sample (`probed_rows`). Every model call is `_forward`, inside
`surgery.inference` (eval mode, each module's mode restored; `adapter=False` disables a PeftModel's adapter).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import re
import string
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tli import stats
from tli.config import ProbeConfig
from tli.errors import TliError

if TYPE_CHECKING:  # the tables need no torch: the aggregator imports this module
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

SHOTS = (  # (Swahili, English): in neither tli/datasets/paper_pairs.tsv nor Debian's FreeDict Swahili-English
    ("mshumaa", "candle"),
    ("wingu", "cloud"),
    ("kipepeo", "butterfly"),
    ("mpira", "ball"),
    ("godoro", "mattress"),
    ("sufuria", "pot"),
    ("theluji", "snow"),
    ("filimbi", "flute"),
)
DIRECTIONS = {"sw_en": ("Swahili", "English"), "en_sw": ("English", "Swahili")}  # direction -> (source, target)
LOGIT_BUDGET = 2**25  # logits (floats) one answer-scoring forward pass may return: 128 MB
TABLE_COLUMNS = ("set", "direction", "pair_id", "swahili", "english", "category", "pos")
PER_STATE = ("output", "correct", "logprob", "rank", "rr")  # the probe table's `_pre` / `_post` columns


def normalise(text: str) -> str:
    """The form answers are compared in: the first line, NFKC, casefolded, surrounding whitespace and punctuation
    stripped, inner whitespace collapsed.
    """
    line = unicodedata.normalize("NFKC", text).split("\n", 1)[0].casefold()
    return " ".join(line.strip(string.punctuation + string.whitespace).split())


def accepted(gloss: str) -> set[str]:
    """The normalised answers that count for a gloss: the gloss, each of its alternatives written with "/", ";" or
    "," ("to beg/pray": "to beg", "pray"), and each of those without a leading "to " ("beg").
    """
    forms = {normalise(gloss)} | {normalise(part) for part in re.split(r"[/;,]", gloss)}
    forms |= {form.removeprefix("to ") for form in forms}
    return {form for form in forms if form}


def prefix_text(direction: str, shots: int) -> str:
    """The prompt's shared part: `shots` example pairs of SHOTS, each followed by a blank line."""
    source, target = DIRECTIONS[direction]
    pairs = SHOTS[:shots] if direction == "sw_en" else [(en, sw) for sw, en in SHOTS[:shots]]
    return "".join(f"{source}: {a}\n{target}: {b}\n\n" for a, b in pairs)


def query_text(direction: str, word: str) -> str:
    source, target = DIRECTIONS[direction]
    return f"{source}: {word}\n{target}:"


def answer_text(word: str) -> str:
    return f" {word}\n"


@dataclasses.dataclass(frozen=True)
class Source:
    """One word to translate in one direction."""

    direction: str
    word: str
    glosses: frozenset[str]  # every correct answer
    golds: tuple[str, ...]  # the answers scored: the translations of the probed pairs with this word
    distractors: tuple[str, ...]  # pool words of the target language that are not a gloss


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the model did with one Source."""

    output: str
    correct: bool
    logprob: dict[str, float]  # gold -> log p(" gold\n" | prompt)
    rank: dict[str, int]  # gold -> 1 + distractors scored above it


# --- what is probed -------------------------------------------------------------------------------


def _hash(swahili: str, english: str) -> str:
    return hashlib.sha1(f"{swahili}\t{english}".encode()).hexdigest()


def probed_rows(sets: dict[str, pd.DataFrame], config: ProbeConfig) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """({set: rows probed}, {set: rows left out for sharing a word with the shots shown}).

    Per set: the rows without a shot word, then, with `probe_pairs` > 0, the `probe_pairs` of them with the smallest
    sha1 of "swahili<TAB>english": a pair is probed in every set and trial or in none. Empty sets are left out.
    """
    shot_words = {word for pair in SHOTS[: config.probe_shots] for word in pair}
    probed, excluded = {}, {}
    for name, rows in sets.items():
        clean = rows[~(rows["swahili"].isin(shot_words) | rows["english"].isin(shot_words))]
        excluded[name] = len(rows) - len(clean)
        if config.probe_pairs and len(clean) > config.probe_pairs:
            order = np.argsort([_hash(s, e) for s, e in zip(clean["swahili"], clean["english"])], kind="stable")
            clean = clean.iloc[np.sort(order[: config.probe_pairs])]
        if len(clean):
            probed[name] = clean
    return probed, excluded


def sources(probed: dict[str, pd.DataFrame], lexicon, config: ProbeConfig) -> list[Source]:
    """The Sources of the probed rows, both directions: glosses from `lexicon` (the experiment's
    `tli.evaluate.Lexicon`; English -> Swahili reversed), distractors from its pools.
    """
    reverse: dict[str, set[str]] = {}
    for sw, glosses in lexicon.glosses.items():
        for en in glosses:
            reverse.setdefault(en, set()).add(sw)
    rows = pd.concat(list(probed.values())).drop_duplicates(["swahili", "english"])
    out = []
    for index, (direction, pool, glosses, source_column, target_column) in enumerate(
        (
            ("sw_en", lexicon.english, lexicon.glosses, "swahili", "english"),
            ("en_sw", lexicon.swahili, reverse, "english", "swahili"),
        )
    ):
        permuted = [pool[i] for i in np.random.default_rng([0, index]).permutation(len(pool))]
        for word, group in rows.groupby(source_column, sort=True):
            correct = frozenset(glosses[word])
            distractors = tuple(w for w in permuted if w not in correct)[: config.probe_distractors]
            out.append(Source(direction, word, correct, tuple(dict.fromkeys(group[target_column])), distractors))
    return out


# --- the model --------------------------------------------------------------------------------------


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, special: bool = False) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]


def _forward(model: nn.Module, input_ids: torch.Tensor, past=None, attention_mask=None, keep: int = 0):
    """(logits [b, t or keep, vocab], key/value cache extended by input_ids) of the causal LM on input_ids [b, t]
    after the cache `past` ([b, past] positions; None: none); `keep` > 0 keeps the last `keep` positions' logits.
    The one place the probe calls the model (transformers renamed `past_key_values` to `cache`: either is passed).
    """
    import torch

    from tli import surgery

    device = next(model.parameters()).device
    seen = past.get_seq_length() if past is not None else 0
    if attention_mask is None:
        attention_mask = torch.ones(input_ids.shape[0], seen + input_ids.shape[1], dtype=torch.long)
    language_model = surgery.unwrap(model)
    name = "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"
    out = language_model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        use_cache=True,
        logits_to_keep=keep,
        **{name: past},
    )
    cache = getattr(out, "cache", None)
    return out.logits, cache if cache is not None else out.past_key_values


def _select(cache, rows: Sequence[int]):
    """A key/value cache holding batch rows `rows` of `cache` (repeats allowed), which is left as it was: the
    layers are copied shallowly, and selecting rebinds a layer's tensors to new ones.
    """
    import torch

    copied = copy.copy(cache)
    copied.layers = [copy.copy(layer) for layer in cache.layers]
    copied.batch_select_indices(torch.as_tensor(list(rows), device=cache.layers[0].keys.device))
    return copied


def answer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    wanted: Sequence[Source],
    config: ProbeConfig,
    adapter: bool = True,
    batch_size: int = 16,
) -> dict[tuple[str, str], Answer]:
    """{(direction, word): Answer} of every Source, `batch_size` words per forward pass; `adapter=False`: the base
    model (a PeftModel's adapter disabled).
    """
    from tli import surgery

    out: dict[tuple[str, str], Answer] = {}
    with surgery.inference(model, adapter):
        for direction in DIRECTIONS:
            mine = [source for source in wanted if source.direction == direction]
            if mine:
                out |= _answer_direction(model, tokenizer, direction, mine, config, batch_size)
    return out


def _answer_direction(model, tokenizer, direction: str, wanted: list[Source], config: ProbeConfig, batch_size: int):
    import torch

    prefix = _ids(tokenizer, prefix_text(direction, config.probe_shots), special=True)
    if not prefix:  # a tokenizer without BOS and no shots: the prompt needs a first position
        prefix = _ids(tokenizer, "\n")
    prefix_cache = _forward(model, torch.tensor([prefix]), keep=1)[1]  # [1, P]
    by_length: dict[int, list[tuple[Source, list[int]]]] = {}
    for source in wanted:
        suffix = _ids(tokenizer, query_text(direction, source.word))
        by_length.setdefault(len(suffix), []).append((source, suffix))
    out = {}
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            logits, query = _forward(
                model, torch.tensor([ids for _, ids in chunk]), _select(prefix_cache, [0] * len(chunk)), keep=1
            )
            first = torch.log_softmax(logits[:, -1].float(), dim=-1)  # [b, vocab]: the answer's first token
            candidates = [[*source.golds, *source.distractors] for source, _ in chunk]
            scores = _score(model, tokenizer, query, first, candidates)
            longest = max(len(_ids(tokenizer, answer_text(g))) for source, _ in chunk for g in source.glosses)
            outputs = _greedy(model, tokenizer, query, first, min(config.probe_max_new_tokens, longest))
            for (source, _), output, score in zip(chunk, outputs, scores):
                gold, distractor = score[: len(source.golds)], score[len(source.golds) :]
                out[direction, source.word] = Answer(
                    output=output,
                    correct=normalise(output) in set().union(*(accepted(g) for g in source.glosses)),
                    logprob={g: float(s) for g, s in zip(source.golds, gold)},
                    rank={g: 1 + int(np.sum(distractor > s)) for g, s in zip(source.golds, gold)},
                )
    return out


def _score(model, tokenizer, cache, first: torch.Tensor, candidates: list[list[str]]) -> list[np.ndarray]:
    r"""Per query q, [len(candidates[q])] log p(" <word>\n" | prompt q) in float64: the first token's from `first`
    [b, vocab], the others from forward passes of the answers after the query's cache, right-padded.
    """
    import torch

    rows = [(q, _ids(tokenizer, answer_text(word))) for q, words in enumerate(candidates) for word in words]
    totals = np.zeros(len(rows))
    vocab = first.shape[-1]
    longest = max(len(ids) for _, ids in rows)
    step = max(1, LOGIT_BUDGET // (longest * vocab))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seen = cache.get_seq_length()
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), seen + width, dtype=torch.long)
        mask[:, :seen] = 1
        for r, (_, ids) in enumerate(chunk):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, seen : seen + len(ids)] = 1
        queries = [q for q, _ in chunk]
        log_p = torch.log_softmax(
            _forward(model, input_ids, _select(cache, queries), mask)[0].float(), dim=-1
        )  # [r, width, vocab]: position j predicts token j + 1
        for r, (q, ids) in enumerate(chunk):
            later = log_p[r, torch.arange(len(ids) - 1), torch.tensor(ids[1:], dtype=torch.long)]
            totals[start + r] = float(first[q, ids[0]]) + float(later.double().sum())
    out, at = [], 0
    for words in candidates:
        out.append(totals[at : at + len(words)])
        at += len(words)
    return out


def _greedy(model, tokenizer, cache, first: torch.Tensor, steps: int) -> list[str]:
    """The greedy continuations ([b] texts) of the queries cached in `cache`, `first` their first-token
    log-probabilities [b, vocab]: one token per step, all rows together (no padding), until every row has a
    newline or a special token, or after `steps` tokens.
    """
    import torch

    cache = _select(cache, range(first.shape[0]))  # a copy: the query cache stays as it was
    tokens = first.argmax(dim=-1)  # [b]
    generated = [tokens.cpu()]
    for _ in range(steps - 1):
        if all(_done(tokenizer, row) for row in torch.stack(generated, dim=1).tolist()):
            break
        logits, cache = _forward(model, tokens[:, None], cache, keep=1)
        tokens = logits[:, -1].argmax(dim=-1)
        generated.append(tokens.cpu())
    return [_text(tokenizer, row) for row in torch.stack(generated, dim=1).tolist()]


def _cut(tokenizer, ids: list[int]) -> list[int]:
    """`ids` up to the first special token (EOS, BOS, padding)."""
    special = set(tokenizer.all_special_ids)
    return ids[: next((i for i, token in enumerate(ids) if token in special), len(ids))]


def _done(tokenizer, ids: list[int]) -> bool:
    return len(_cut(tokenizer, ids)) < len(ids) or "\n" in tokenizer.decode(ids)


def _text(tokenizer, ids: list[int]) -> str:
    """The answer: the decoded tokens before any special token, up to the first newline, stripped."""
    return tokenizer.decode(_cut(tokenizer, ids)).split("\n", 1)[0].strip()


# --- tables -----------------------------------------------------------------------------------------


def probe_table(
    probed: dict[str, pd.DataFrame],
    wanted: Sequence[Source],
    pre: dict[tuple[str, str], Answer],
    post: dict[tuple[str, str], Answer],
) -> pd.DataFrame:
    """One row per set x direction x probed pair: TABLE_COLUMNS, each PER_STATE value before (`_pre`) and after
    (`_post`) TLI, and `rr_chance` (of the word's distractor count).
    """
    distractors = {(s.direction, s.word): len(s.distractors) for s in wanted}
    frames = []
    for name, rows in probed.items():
        for direction in DIRECTIONS:
            source, target = ("swahili", "english") if direction == "sw_en" else ("english", "swahili")
            frame = rows.reindex(columns=["swahili", "english", "category", "pos"])
            frame.insert(0, "pair_id", rows.index)
            frame.insert(0, "direction", direction)
            frame.insert(0, "set", name)
            keys = list(zip([direction] * len(rows), rows[source]))
            for when, answers in (("pre", pre), ("post", post)):
                found = [answers[key] for key in keys]
                frame[f"output_{when}"] = [a.output for a in found]
                frame[f"correct_{when}"] = [float(a.correct) for a in found]
                frame[f"logprob_{when}"] = [a.logprob[g] for a, g in zip(found, rows[target])]
                frame[f"rank_{when}"] = [a.rank[g] for a, g in zip(found, rows[target])]
                frame[f"rr_{when}"] = 1.0 / frame[f"rank_{when}"]
            frame["rr_chance"] = [_rr_chance(distractors[key]) for key in keys]
            frames.append(frame)
    if not frames:
        raise TliError("the translation probe has no pair to score (every set empty, or every row a shot word)")
    return pd.concat(frames, ignore_index=True)


def _rr_chance(k: int) -> float:
    """E[1 / rank] of the gold among itself and k distractors ranked at random: H(k + 1) / (k + 1)."""
    return float(stats.retrieval_chance(np.array([1]), k + 1)["rr_chance"][0])


SUMMARY_COLUMNS = (
    "n",
    "n_excluded",
    "accuracy_pre",
    "accuracy_post",
    "accuracy_diff",
    "accuracy_gained",
    "accuracy_lost",
    "accuracy_mcnemar_p",
    "mrr_pre",
    "mrr_post",
    "mrr_diff",
    "mrr_chance",
    "logprob_pre",
    "logprob_post",
    "logprob_diff",
    "logprob_p",
)


def probe_summary(table: pd.DataFrame, excluded: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per set x direction of a probe table (per trial, or each pair averaged over seeds): `n` pairs,
    `n_excluded` (rows sharing a word with the shots), accuracy (share correct) before/after, its change and
    McNemar's exact test (`stats.mcnemar_exact`: pairs gained, lost, p), MRR before/after with its chance, and the
    mean gold log-probability before/after with its paired t-test p.
    """
    out = []
    for (name, direction), group in table.groupby(["set", "direction"], sort=False):
        tested = stats.mcnemar_exact(group["correct_pre"], group["correct_post"])
        logprob = stats.paired_tests(group["logprob_pre"], group["logprob_post"], n_boot=0)
        row = {"set": name, "direction": direction, "n": len(group), "n_excluded": (excluded or {}).get(name, 0)}
        for metric, column in (("accuracy", "correct"), ("mrr", "rr"), ("logprob", "logprob")):
            row |= {f"{metric}_{when}": float(group[f"{column}_{when}"].mean()) for when in ("pre", "post")}
            row[f"{metric}_diff"] = row[f"{metric}_post"] - row[f"{metric}_pre"]
        row |= {f"accuracy_{key}": value for key, value in tested.items()}
        row |= {"mrr_chance": float(group["rr_chance"].mean()), "logprob_p": logprob["p"]}
        out.append(row)
    return pd.DataFrame(out, columns=["set", "direction", *SUMMARY_COLUMNS])
