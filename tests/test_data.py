"""tli.data and tli.freedict: the packaged dataset, its quirk flags, evaluation sets, validation errors, FreeDict."""

import csv
import gzip
import io
import itertools
import json
import logging
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tli import data, files
from tli.data import (
    MAX_WORD_CHARS,
    PAIR_COLUMNS,
    SPLITS,
    PairsError,
    default_pairs_path,
    leak_free,
    load_eval_pairs,
    load_pairs,
    split_sets,
    validation_split,
    write_pairs,
)
from tli.errors import TliError
from tli.freedict import import_freedict

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tli_paper"
REAL_DICTD = Path("/usr/share/dictd")
POS = {
    "noun",
    "verb",
    "adjective",
    "adverb",
    "pronoun",
    "numeral",
    "preposition",
    "conjunction",
    "phrase",
    "interjection",
}


@pytest.fixture(scope="module")
def paper():
    return load_pairs()


def frame(*pairs, split="trained", index=None) -> pd.DataFrame:
    """A hand-made pairs frame from "swahili:english" strings."""
    rows = [dict(zip(("swahili", "english"), pair.split(":")), split=split) for pair in pairs]
    return pd.DataFrame(rows, index=index)


def raises(path, function=load_pairs, *args) -> str:
    """The one-line PairsError message of `function(path, *args)`, checked to name `path`."""
    with pytest.raises(PairsError) as caught:
        function(path, *args)
    message = str(caught.value)
    assert isinstance(caught.value, TliError)
    assert "\n" not in message and "\r" not in message and str(path) in message
    assert len(message) < len(str(path)) + 300  # never echoes a huge cell or header
    return message


# --- the packaged dataset ---------------------------------------------------------------------


def test_default_dataset_sizes_and_order(paper):
    assert default_pairs_path().is_file()
    assert list(paper.columns[:5]) == list(PAIR_COLUMNS)
    sets = split_sets(paper)
    assert list(sets) == ["trained", "control"]  # first-appearance order
    assert len(sets["trained"]) == 623 and len(sets["control"]) == 63
    assert list(sets["control"].index) == list(range(63))
    assert (paper["split"].iloc[:623] == "trained").all()  # trained rows first, then control


def test_default_dataset_is_fully_labelled(paper):
    assert not (paper["category"] == "unknown").any()
    assert set(paper["pos"]) <= POS
    sizes = paper["category"].value_counts()
    assert 10 <= len(sizes) <= 18
    assert (sizes >= 15).sum() >= len(sizes) - 1  # only `colour` (11 words in the data) is smaller
    assert sizes.min() >= 10


def test_default_dataset_labelling_rules(paper):
    stems = paper[paper["swahili"].str.startswith("-")]
    assert len(stems) == 13 and (stems["pos"] == "adjective").all()
    infinitives = paper[paper["english"].str.startswith("to ") & ~paper["swahili"].str.contains(" ")]
    assert (infinitives["pos"] == "verb").all() and (infinitives["category"] == "action").all()
    assert (paper.loc[paper["category"] == "number", "pos"] == "numeral").all()


def test_quirks_are_flagged(paper):
    trained = split_sets(paper)["trained"]
    repeated = trained[trained["repeated_swahili"]]
    assert repeated["swahili"].nunique() == 54 and len(repeated) == 115  # as the shared README says
    assert trained.loc[trained["swahili"] == "bahari", "repeated_swahili"].all()
    # Not in the README: 25 English glosses repeat too (51 rows), e.g. storm x3.
    assert trained.loc[trained["repeated_english"], "english"].nunique() == 25
    assert trained["repeated_english"].sum() == 51
    # README: 2 Swahili and 4 English control words also occur in the trained set (6 rows, no overlap
    # between the two lists). `vizuri`/`well` is a homograph: the trained `well` is kisima (a water well).
    control = split_sets(paper)["control"]
    flagged = control[control["control_in_trained"]]
    assert set(flagged["swahili"]) == {"baya", "dogo", "kioo", "kufunga", "vizuri", "zuri"}
    assert flagged["swahili"].isin(trained["swahili"]).sum() == 2
    assert flagged["english"].isin(trained["english"]).sum() == 4
    assert not control["repeated_swahili"].any() and not control["repeated_english"].any()
    assert not paper.loc[paper["split"] == "trained", "control_in_trained"].any()


def test_quirks_are_logged_once(caplog):
    with caplog.at_level(logging.WARNING, logger="tli.data"):
        load_pairs()
    [record] = caplog.records
    assert "54 swahili words" in record.getMessage() and "\n" not in record.getMessage()


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared TLI paper data is absent ({SHARED})")
def test_shared_json_matches_tsv(paper):
    for split, name in (("trained", "word_pairs.json"), ("control", "control_word_pairs.json")):
        from_json = load_pairs(SHARED / name)
        assert (from_json["split"] == "trained").all() and (from_json["category"] == "unknown").all()
        ours = split_sets(paper)[split][["swahili", "english"]]
        pd.testing.assert_frame_equal(from_json[["swahili", "english"]], ours)


# --- other files ------------------------------------------------------------------------------


def test_custom_columns_csv_strips_and_defaults(tmp_path):
    path = tmp_path / "fr.csv"
    path.write_text("french,gloss,note\n chat ,cat,x\nchien,dog,\nchat,kitty,\n", encoding="utf-8")
    pairs = load_pairs(path, source_column="french", target_column="gloss")
    expected = [["chat", "cat"], ["chien", "dog"], ["chat", "kitty"]]
    assert pairs[["swahili", "english"]].values.tolist() == expected
    assert set(pairs["split"]) == {"trained"} and set(pairs["category"]) == {"unknown"}
    assert pairs["repeated_swahili"].tolist() == [True, False, True]
    assert "note" not in pairs.columns


def test_write_then_load_round_trip(tmp_path, paper):
    for name in ("pairs.tsv", "pairs.csv"):
        again = load_pairs(write_pairs(paper, tmp_path / name))
        pd.testing.assert_frame_equal(again, paper)


def test_split_sets_keeps_split_order(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("swahili\tenglish\tsplit\nb\tB\tunseen\na\tA\ttrained\nc\tC\tunseen\n", encoding="utf-8")
    sets = split_sets(load_pairs(path))
    assert list(sets) == ["unseen", "trained"] and sets["unseen"]["swahili"].tolist() == ["b", "c"]


GOOD_FILES = {  # name: (file name, bytes): each reads as mbwa/dog, paka/cat
    "bom_crlf": ("p.csv", b"\xef\xbb\xbfswahili,english\r\nmbwa,dog\r\npaka,cat\r\n"),
    "cr_only": ("p.tsv", b"swahili\tenglish\rmbwa\tdog\rpaka\tcat\r"),
    "no_final_newline": ("p.tsv", b"swahili\tenglish\nmbwa\tdog\npaka\tcat"),
    "blank_lines_and_rows": ("p.csv", b"\n\nswahili,english\n\nmbwa,dog\n,\n  ,  \npaka,cat\n\n"),
    "padded_header_quoted_cells": ("p.csv", b' swahili ,"english" \n"mbwa"," dog "\npaka,cat\n'),
    "blank_optional_cells": ("p.tsv", b"swahili\tenglish\tsplit\tpos\nmbwa\tdog\t\t\npaka\tcat\t \t \n"),
    "unnamed_extra_columns": ("p.csv", b"swahili,english,,\nmbwa,dog,,\npaka,cat,x,\n"),
    "json_bom_nulls_extras": (
        "p.json",
        b'\xef\xbb\xbf[{"swahili": "mbwa", "english": "dog", "pos": null, "x": [1, {"y": 2}]},'
        b' {"english": "cat", "swahili": "paka", "split": null}]',
    ),
    "longest_word": ("p.tsv", f"swahili\tenglish\nmbwa\t{'d' * MAX_WORD_CHARS}\npaka\tcat\n".encode()),
}


@pytest.mark.parametrize("case", sorted(GOOD_FILES))
def test_good_variants_load(tmp_path, case):
    name, content = GOOD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    pairs = load_pairs(path)
    assert pairs["swahili"].tolist() == ["mbwa", "paka"]
    assert pairs["english"].tolist()[1] == "cat" and pairs["english"][0] in ("dog", "d" * MAX_WORD_CHARS)
    assert set(pairs["split"]) == {"trained"} and set(pairs["pos"]) == {"unknown"}


# --- evaluation sets --------------------------------------------------------------------------


def test_leak_free_against_a_loop():
    rows = frame("mbwa:dog", "paka:cat", "bahari:ocean", "kisima:well", "ziwa:lake", index=[10, 11, 12, 13, 14])
    reference = frame("paka:kitty", "bahari:sea", "vizuri:well")
    kept, removed = leak_free(rows, reference)
    expected = [
        label
        for label, row in rows.iterrows()
        if all(row["swahili"] != r["swahili"] and row["english"] != r["english"] for _, r in reference.iterrows())
    ]
    assert list(kept.index) == expected == [10, 14] and removed == 3
    assert leak_free(rows, reference.iloc[:0])[1] == 0


def test_validation_split_fraction_zero_keeps_everything(paper):
    trained = paper[paper["split"] == "trained"]
    train_rows, validation = validation_split(trained, 0.0, seed=0)
    assert validation.empty and train_rows.index.equals(trained.index)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validation_split_rules(paper, fraction, seed):
    trained = paper[paper["split"] == "trained"].iloc[5:]  # labels that are not 0..n-1
    train_rows, validation = validation_split(trained, fraction, seed)
    assert set(train_rows["swahili"]).isdisjoint(validation["swahili"])  # no headword straddles
    assert set(train_rows["english"]).isdisjoint(validation["english"])  # leak-free
    assert set(train_rows.index).isdisjoint(validation.index)
    assert set(train_rows.index) | set(validation.index) <= set(trained.index)
    assert list(train_rows.index) == sorted(train_rows.index) and list(validation.index) == sorted(validation.index)
    pd.testing.assert_frame_equal(validation, trained.loc[validation.index])
    held = trained[~trained["swahili"].isin(train_rows["swahili"])]  # before the English leaks were dropped
    assert abs(len(held) - fraction * len(trained)) <= trained["swahili"].value_counts().max()
    dropped = held.loc[~held.index.isin(validation.index)]
    assert dropped["english"].isin(train_rows["english"]).all()
    again = validation_split(trained, fraction, seed)[1]
    assert again.index.equals(validation.index)


def test_validation_split_exact_size_and_seeds():
    trained = frame(*(f"s{i}:e{i}" for i in range(20)))
    sizes = {len(validation_split(trained, 0.25, seed)[1]) for seed in range(5)}
    assert sizes == {5}
    picks = {tuple(validation_split(trained, 0.25, seed)[1].index) for seed in range(5)}
    assert len(picks) > 1


def test_validation_split_drops_english_leaks_and_keeps_one_headword():
    trained = frame("bahari:ocean", "bahari:sea", "ziwa:sea", "mto:river", "jua:sun", "nyota:star")
    dropped = 0
    for seed in range(20):
        train_rows, validation = validation_split(trained, 0.5, seed)
        held = trained[~trained["swahili"].isin(train_rows["swahili"])]
        expected = held[~held["english"].isin(train_rows["english"])]
        assert validation.index.equals(expected.index) and not train_rows.empty
        dropped += len(held) - len(validation)
    assert dropped > 0  # some seed put one `sea` headword on each side
    one = frame("bahari:ocean", "bahari:sea")
    assert validation_split(one, 0.9, seed=0)[1].empty  # the only headword stays in training
    assert all(part.empty for part in validation_split(one.iloc[:0], 0.5, seed=0))


def _meets_a_gloss(pairs: pd.DataFrame, english: list[str]) -> list[bool]:
    """Per row, whether `english` is a gloss of its Swahili word in `pairs` (a plain loop over the rows)."""
    return [
        any(sw == other and word == gloss for other, gloss in zip(pairs["swahili"], pairs["english"]))
        for sw, word in zip(pairs["swahili"], english)
    ]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_derange_keeps_the_words_and_pairs_none_with_its_glosses(paper, seed):
    trained = paper[paper["split"] == "trained"]
    deranged = data.derange(trained, seed)
    assert deranged.index.equals(trained.index) and deranged["swahili"].equals(trained["swahili"])
    assert sorted(deranged["english"]) == sorted(trained["english"])  # a permutation of the English column
    assert not any(_meets_a_gloss(trained, list(deranged["english"])))  # no fixed point by gloss (bahari: ocean/sea)
    assert deranged["english"].equals(data.derange(trained, seed)["english"])  # seeded
    assert not deranged["english"].equals(data.derange(trained, seed + 1)["english"])
    assert (trained["english"] == paper.loc[trained.index, "english"]).all()  # the input is left as it was


def test_derangement_is_uniform_over_the_qualifying_permutations():
    pairs = frame("bahari:ocean", "bahari:sea", "mto:river", "jua:sun", "nyota:star")
    english = list(pairs["english"])
    qualifying = {
        order
        for order in itertools.permutations(range(len(pairs)))
        if not any(_meets_a_gloss(pairs, [english[i] for i in order]))
    }
    drawn = Counter(tuple(data.derangement(pairs["swahili"], pairs["english"], seed)) for seed in range(3000))
    assert set(drawn) == qualifying  # every qualifying permutation, nothing else
    assert scipy_stats.chisquare(list(drawn.values())).pvalue > 1e-3  # equally often


def test_derangement_that_cannot_exist_is_an_error():
    with pytest.raises(PairsError, match="no permutation of 3 pairs keeps every Swahili word from its own glosses"):
        data.derange(frame("bahari:ocean", "bahari:sea", "mto:river"), seed=0)  # both bahari rows would need river
    assert list(data.derange(frame("a:x", "b:y"), seed=0)["english"]) == ["y", "x"]


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_validation_split_bad_fraction(paper, fraction):
    with pytest.raises(TliError, match="fraction"):
        validation_split(paper, fraction, seed=0)


def test_load_eval_pairs(tmp_path, caplog):
    path = tmp_path / "eval.tsv"
    path.write_text(
        "swahili\tenglish\tsplit\nmbwa\tdog\ttrained\npaka\tcat\tcontrol\nziwa\tlake\tanything\nnyota\tstar\t\n",
        encoding="utf-8",
    )
    trained = frame("mbwa:hound", "simba:cat", "jua:sun")
    with caplog.at_level(logging.WARNING, logger="tli.data"):
        unseen = load_eval_pairs(path, trained)
    assert list(unseen.index) == [2, 3] and unseen["swahili"].tolist() == ["ziwa", "nyota"]
    assert set(unseen["split"]) == {"unseen"} and not unseen["control_in_trained"].any()
    [record] = caplog.records
    assert "2 of 4 pairs share a word" in record.getMessage()


def test_load_eval_pairs_nothing_left(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('[{"swahili": "mbwa", "english": "x"}, {"swahili": "y", "english": "cat"}]', encoding="utf-8")
    message = raises(path, load_eval_pairs, frame("mbwa:dog", "paka:cat"))
    assert "all 2 pairs share a word" in message


# --- bad input: every class of problem is one PairsError line naming the file and the place ---------


def pairs_file(folder: Path, fmt: str, rows: list[dict], header=("swahili", "english", "category", "pos", "split")):
    """A pairs file written by the standard writers, so any cell content survives quoting."""
    path = folder / f"p.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")  # ASCII escapes: even lone surrogates survive
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\r\n")  # quotes \r, \n
    writer.writerow(header)
    writer.writerows([[row.get(name, "") for name in header] for row in rows])
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    return path


def where(fmt: str, number: int) -> str:
    """How a message names data row `number` (1-based): a line (after the header) or a JSON item."""
    return f"item {number}" if fmt == "json" else f"line {number + 1}"


PAIR = '{"swahili": "mbwa", "english": "dog"}'
GOOD_ROW = {"swahili": "mbwa", "english": "dog", "category": "animal", "pos": "noun", "split": "trained"}
FORMATS = ("tsv", "csv", "json")
COLUMNS = ("swahili", "english", "category", "pos", "split")
INVISIBLE = [  # every kind of control or invisible character, and where in a cell it sits
    "\x00",
    "\x01",
    "\x07",
    "\x08",
    "\t",
    "\n",
    "\x0b",
    "\x0c",
    "\r",
    "\x1b",
    "\x1c",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9b",
    "\u00a0",
    "\u00ad",
    "\u061c",
    "\u180e",
    "\u200b",
    "\u200d",
    "\u200e",
    "\u202e",
    "\u2028",
    "\u2029",
    "\u2060",
    "\u2066",
    "\u3000",
    "\ufeff",
    "\ufff9",
    "\ue000",
    "\U000e0001",
    "\u0378",
    "\u2007",
]
INVISIBLE_CASES = [(fmt, char, COLUMNS[i % 5], i % 3) for i, char in enumerate(INVISIBLE) for fmt in FORMATS]


@pytest.mark.parametrize(
    "fmt, char, column, place",
    INVISIBLE_CASES,
    ids=[f"{f}-U+{ord(c):04X}-{col}-{p}" for f, c, col, p in INVISIBLE_CASES],
)
def test_invisible_characters(tmp_path, fmt, char, column, place):
    word = ["{}trained", "tra{}ined", "trained{}"][place].format(char)
    path = pairs_file(tmp_path, fmt, [GOOD_ROW, GOOD_ROW | {column: word}])
    message = raises(path)
    assert where(fmt, 2) in message and repr(column) in message and f"U+{ord(char):04X}" in message


def test_lone_surrogate_in_json(tmp_path):
    path = pairs_file(tmp_path, "json", [GOOD_ROW, GOOD_ROW | {"english": "d\ud800g"}])
    assert "item 2, key 'english'" in raises(path) and "U+D800" in raises(path)


BLANKS = ["", " ", "   ", "\u00a0", " \u3000 ", "\u2003"]
BLANK_CASES = [(fmt, column, value) for fmt in FORMATS for column in ("swahili", "english") for value in BLANKS]


@pytest.mark.parametrize("fmt, column, value", BLANK_CASES + [("json", "swahili", None), ("json", "english", None)])
def test_blank_words(tmp_path, fmt, column, value):
    path = pairs_file(tmp_path, fmt, [GOOD_ROW, GOOD_ROW, GOOD_ROW | {column: value}])
    message = raises(path)
    assert where(fmt, 3) in message and repr(column) in message
    assert ("null" if value is None else "blank") in message


LONG = [MAX_WORD_CHARS + 1, 1000, 131_073, 3_000_000]
LONG_CASES = [(fmt, column, n) for fmt in FORMATS for column in ("swahili", "english", "pos") for n in LONG]


@pytest.mark.parametrize("fmt, column, n", LONG_CASES)
def test_long_cells(tmp_path, fmt, column, n):
    path = pairs_file(tmp_path, fmt, [GOOD_ROW, GOOD_ROW | {column: "a" * n}])
    message = raises(path)
    assert where(fmt, 2) in message and f"at most {MAX_WORD_CHARS}" in message
    if fmt == "json" or n <= 131_072:
        assert f"{n} characters" in message and repr(column) in message
    else:
        assert "more than 131072 characters" in message  # the csv module's own limit


HUGE_LINES = {  # name: (file name, bytes, words the message must contain)
    "one_huge_field": ("p.tsv", b"x" * 5_000_000, ["line 1", "more than 131072"]),
    "huge_header_of_fields": ("p.csv", b"x," * 2_000_000, ["line 1", "header lacks", "..."]),
    "huge_header_of_long_fields": ("p.tsv", (("y" * 5000 + "\t") * 1000).encode(), ["line 1", "header lacks"]),
    "huge_ignored_cell": (
        "p.csv",
        b"swahili,english,note\nmbwa,dog,n\npaka,cat," + b"n" * 200_000,
        ["line 3", "more than 131072"],
    ),
    "huge_quoted_newlines": (
        "p.csv",
        b'swahili,english\nmbwa,dog\n"' + b"a\n" * 100_000 + b'",cat\n',
        ["line 3", "more than 131072", "a quote never closed"],
    ),
    "unterminated_quote": ("p.csv", b'swahili,english\nmbwa,dog\n"paka,cat\nsimba,lion\n', ["line 3", "never closed"]),
    "huge_json_line": (
        "p.json",
        b"[" + b'{"swahili": "mbwa", "english": "dog"}, ' * 30_000 + b"{}]",
        ["item 30001", "no key 'swahili'"],
    ),
    "huge_json_string": (
        "p.json",
        b'[{"swahili": "' + b"s" * 5_000_000 + b'", "english": "dog"}, ' + PAIR.encode() + b"]",
        ["item 1", "5000000 characters"],
    ),
}


UNBALANCED_QUOTES = {  # (file, words of the message): the message says that a quote is unbalanced, and where
    "csv_never_closed": ("p.csv", 'swahili,english\nmbwa,dog\n"paka,cat\nsimba,lion\n', ["line 3", "never closed"]),
    "csv_never_closed_last_line": ("p.csv", 'swahili,english\nmbwa,dog\npaka,"cat\n', ["line 3", "never closed"]),
    "csv_never_closed_crlf": ("p.csv", 'swahili,english\r\n"mbwa,dog\r\npaka,cat\r\n', ["line 2", "never closed"]),
    "tsv_never_closed": ("p.tsv", 'swahili\tenglish\nmbwa\tdog\n"paka\tcat\nsimba\tlion\n', ["line 3", "never closed"]),
    "header_never_closed": ("p.csv", '"swahili,english\nmbwa,dog\npaka,cat\n', ["line 1", "never closed"]),
    "closed_lines_later": (
        "p.csv",
        'swahili,english\nmbwa,dog\n"paka,cat\nsimba",lion\nnyoka,snake\n',
        ["line 3", "runs on to line 4", "is a quote unbalanced"],
    ),
    "tsv_closed_lines_later": (
        "p.tsv",
        'swahili\tenglish\n"mbwa\tdog\npaka"\tcat\nsimba\tlion\n',
        ["line 2", "runs on to line 3", "is a quote unbalanced"],
    ),
}


@pytest.mark.parametrize("case", sorted(UNBALANCED_QUOTES))
def test_an_unbalanced_quote_is_named_as_such(tmp_path, case):
    name, content, words = UNBALANCED_QUOTES[case]
    (tmp_path / name).write_text(content)
    message = raises(tmp_path / name)
    assert all(word in message for word in words), message
    assert "pair(s); at least 2 are needed" not in message and "fields, the header has" not in message


def test_quoted_cells_that_close_on_their_line_still_load(tmp_path):
    (tmp_path / "p.csv").write_text('swahili,english\n"mbwa","dog, the animal"\npaka,"cat ""felis"""\n')
    assert load_pairs(tmp_path / "p.csv")["english"].tolist() == ["dog, the animal", 'cat "felis"']


@pytest.mark.parametrize(
    "rows, warned",
    [
        ([("water", "water"), ("fire", "fire"), ("maji", "water")], True),  # 2 of 3: most pairs
        ([("Water", "water"), ("FIRE", "fire")], True),  # every pair, up to case
        ([("caf\u00e9", "cafe\u0301"), ("radio", "radio")], True),  # up to Unicode normalisation (NFKC)
        ([("maji", "water"), ("moto", "fire"), ("redio", "radio"), ("radio", "radio")], False),  # 1 of 4: a quirk
        ([("maji", "water"), ("moto", "fire")], False),
    ],
)
def test_a_file_of_mostly_identical_pairs_warns(tmp_path, caplog, rows, warned):
    path = tmp_path / "p.tsv"
    path.write_text("swahili\tenglish\n" + "".join(f"{sw}\t{en}\n" for sw, en in rows))
    with caplog.at_level(logging.WARNING, logger="tli.data"):
        load_pairs(path)
    mostly = [r for r in caplog.records if "string identity, not translation" in r.getMessage()]
    assert len(mostly) == warned, caplog.text
    quirk = [r for r in caplog.records if "same word on both sides (cosine near 1" in r.getMessage()]
    assert len(quirk) == (not warned and any(sw == en for sw, en in rows)), caplog.text


def test_identical_evaluation_pairs_warn_too(tmp_path, caplog, paper):
    path = tmp_path / "eval.tsv"
    path.write_text("swahili\tenglish\nzzq\tzzq\nqqz\tqqz\n")
    with caplog.at_level(logging.WARNING, logger="tli.data"):
        load_eval_pairs(path, paper)
    assert "string identity, not translation" in caplog.text


@pytest.mark.parametrize("case", sorted(HUGE_LINES))
def test_huge_lines(tmp_path, case):
    name, content, words = HUGE_LINES[case]
    (tmp_path / name).write_bytes(content)
    message = raises(tmp_path / name)
    assert all(word in message for word in words), message


HEADERS = {  # name: (file name, text, words the message must contain)
    "empty": ("p.tsv", "", ["empty"]),
    "whitespace_only": ("p.tsv", "  \n\n \t \n", ["empty"]),
    "bom_only": ("p.csv", "\ufeff", ["empty"]),
    "bom_and_blank_lines": ("p.json", "\ufeff \n\n", ["empty"]),
    "delimiters_only": ("p.csv", ",,\n , \n", ["no header"]),
    "header_only": ("p.tsv", "swahili\tenglish\n", ["header but no rows"]),
    "header_and_blank_rows": ("p.csv", "swahili,english\n\n,\n ,  \n", ["header but no rows"]),
    "wrong_names": ("p.tsv", "sw\ten\nmbwa\tdog\npaka\tcat\n", ["swahili, english", "found: 'sw', 'en'"]),
    "wrong_case": ("p.csv", "Swahili,English\nmbwa,dog\npaka,cat\n", ["lacks column(s) swahili, english"]),
    "one_missing": ("p.csv", "swahili,gloss\nmbwa,dog\npaka,cat\n", ["lacks column(s) english"]),
    "tabs_in_csv": ("p.csv", "swahili\tenglish\nmbwa\tdog\npaka\tcat\n", ["tab-separated"]),
    "commas_in_tsv": ("p.tsv", "swahili,english\nmbwa,dog\npaka,cat\n", ["comma-separated"]),
    "after_blank_lines": ("p.tsv", "\n\nsw\ten\nmbwa\tdog\n", ["line 3", "lacks"]),
    "control_in_name": ("p.csv", '"swa\nhili",english\nmbwa,dog\n', ["lacks column(s) swahili", "'swa\\nhili'"]),
    "duplicate_source": (
        "p.tsv",
        "swahili\tenglish\tswahili\nmbwa\tdog\tm\npaka\tcat\tp\n",
        ["'swahili'", "more than once"],
    ),
    "duplicate_target": ("p.csv", "english,swahili,english\ndog,mbwa,d\ncat,paka,c\n", ["'english'", "more than once"]),
    "duplicate_split": (
        "p.csv",
        "swahili,english,split,split\nmbwa,dog,trained,control\n",
        ["'split'", "more than once"],
    ),
    "duplicate_other": ("p.csv", "swahili,english,note, note\nmbwa,dog,a,b\npaka,cat,c,d\n", ["'note'"]),
    "ragged_long": ("p.tsv", "swahili\tenglish\nmbwa\tdog\npaka\tcat\textra\n", ["line 3", "3 fields"]),
    "ragged_short": ("p.csv", "swahili,english,pos\nmbwa,dog,noun\npaka,cat\n", ["line 3", "2 fields"]),
    "trailing_delimiter": ("p.csv", "swahili,english\nmbwa,dog,\npaka,cat\n", ["line 2", "3 fields"]),
    "one_pair": ("p.tsv", "swahili\tenglish\nmbwa\tdog\n", ["1 pair(s)", "at least 2"]),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_headers_and_rows(tmp_path, case):
    name, text, words = HEADERS[case]
    (tmp_path / name).write_text(text, encoding="utf-8")
    message = raises(tmp_path / name)
    assert all(word in message for word in words), message


ENCODINGS = {  # name: (file name, bytes, words the message must contain)
    "latin1_row": ("p.tsv", b"swahili\tenglish\nmbwa\tdog\np\xe4ka\tcat\n", ["byte offset 26", "line 3"]),
    "latin1_header": ("p.csv", b"sw\xe4hili,english\nmbwa,dog\n", ["byte offset 2", "line 1"]),
    "cp1252_quotes": ("p.json", b'[{"swahili": "\x93mbwa\x94", "english": "dog"}]', ["line 1"]),
    "utf16_le": ("p.tsv", "\ufeffswahili\tenglish\nmbwa\tdog\n".encode("utf-16-le"), ["UTF-16"]),
    "utf16_be": ("p.csv", "\ufeffswahili,english\nmbwa,dog\n".encode("utf-16-be"), ["UTF-16"]),
    "truncated_multibyte": ("p.tsv", b"swahili\tenglish\nmbwa\tdog\npaka\tcat\xc3", ["line 3"]),
    "overlong": ("p.csv", b"swahili,english\nmbwa,d\xc0\xafg\n", ["line 2"]),
    "encoded_surrogate": ("p.tsv", b"swahili\tenglish\nmbwa\td\xed\xa0\x80g\n", ["line 2"]),
    "utf32": ("p.json", '[{"swahili": "mbwa"}]'.encode("utf-32"), ["UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(ENCODINGS))
def test_encodings(tmp_path, case):
    name, content, words = ENCODINGS[case]
    (tmp_path / name).write_bytes(content)
    message = raises(tmp_path / name)
    assert all(word in message for word in ["UTF-8", *words]), message


JSON_FILES = {  # name: (text, words the message must contain)
    "malformed": ('[\n  {"swahili": "mbwa", "english": "dog"},\n  {"swahili": }\n]', ["line 3, column 15"]),
    "trailing_garbage": (f"[{PAIR}, {PAIR}] x", ["malformed JSON", "Extra data"]),
    "raw_tab_in_string": ('[{"swahili": "mb\twa", "english": "dog"}, ' + PAIR + "]", ["Invalid control character"]),
    "deep_nesting": ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    "huge_integer": (f'[{PAIR}, {{"swahili": "paka", "english": {"9" * 5000}}}]', ["malformed JSON", "digits"]),
    "object": (PAIR, ["list", "an object"]),
    "string": ('"mbwa"', ["list", "a string"]),
    "number": ("3.5", ["list", "a number"]),
    "null": ("null", ["list", "null"]),
    "nan": ("NaN", ["list", "a number"]),
    "bool": ("true", ["list", "a boolean"]),
    "empty_list": ("[]", ["0 pair(s)"]),
    "one_item": (f"[{PAIR}]", ["1 pair(s)"]),
    "item_list": (f'[{PAIR}, ["paka", "cat"]]', ["item 2 is a list"]),
    "item_string": (f'[{PAIR}, "paka"]', ["item 2 is a string"]),
    "item_null": (f"[{PAIR}, null]", ["item 2 is null"]),
    "item_number": (f"[{PAIR}, 7]", ["item 2 is a number"]),
    "nested_list": (f"[[{PAIR}, {PAIR}]]", ["item 1 is a list"]),
    "missing_key": (f'[{PAIR}, {{"swahili": "paka"}}]', ["item 2 has no key 'english'"]),
    "duplicate_key": (
        f'[{PAIR}, {{"swahili": "paka", "english": "cat", "swahili": "simba"}}]',
        ["item 2", "'swahili' twice"],
    ),
    "duplicate_split": (
        f'[{PAIR}, {{"swahili": "paka", "english": "cat", "split": "trained", "split": "control"}}]',
        ["item 2", "'split' twice"],
    ),
    **{
        f"{key}_{type(value).__name__}": (
            f"[{PAIR}, {json.dumps({'swahili': 'paka', 'english': 'cat', key: value})}]",
            ["item 2", f"key '{key}'", f"{kind}, not a string"],
        )
        for key in COLUMNS
        for kind, value in (
            ("a list", ["x"]),
            ("an object", {"x": ["y"]}),
            ("a number", 1),
            ("a number", 2.5),
            ("a boolean", False),
        )
    },
}


@pytest.mark.parametrize("case", sorted(JSON_FILES))
def test_json_structure(tmp_path, case):
    text, words = JSON_FILES[case]
    (tmp_path / "p.json").write_text(text, encoding="utf-8")
    message = raises(tmp_path / "p.json")
    assert all(word in message for word in words), message


BAD_SPLITS = ["test", "Trained", "TRAINED", "train", "validation", "heldout", "1", "unseen x", "control,"]
SPLIT_CASES = [(fmt, split) for fmt in FORMATS for split in BAD_SPLITS]


@pytest.mark.parametrize("fmt, split", SPLIT_CASES)
def test_unknown_splits(tmp_path, fmt, split):
    path = pairs_file(tmp_path, fmt, [GOOD_ROW, GOOD_ROW | {"split": split}])
    message = raises(path)
    assert where(fmt, 2) in message and repr(split) in message and ", ".join(SPLITS) in message


def test_known_splits_and_blank_split(tmp_path):
    rows = [GOOD_ROW | {"split": split} for split in (*SPLITS, " control ", "")]
    pairs = load_pairs(pairs_file(tmp_path, "tsv", rows))
    assert pairs["split"].tolist() == [*SPLITS, "control", "trained"]


def _special(tmp_path: Path, kind: str) -> Path:
    """A path to something that is not a readable pairs file."""
    path = tmp_path / "p.tsv"
    if kind == "folder":
        path.mkdir()
    elif kind == "char_device":
        path.symlink_to("/dev/null")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "unreadable_proc_file":
        path.symlink_to("/proc/self/mem")  # a regular file whose reading fails with EIO
    elif kind == "broken_link":
        path.symlink_to(tmp_path / "absent.tsv")
    elif kind == "link_loop":
        path.symlink_to(path)
    elif kind == "below_a_file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "p.tsv"
    elif kind == "name_too_long":
        path = tmp_path / ("x" * 300 + ".tsv")
    elif kind == "nul_in_name":
        path = tmp_path / "p\x00.tsv"
    return path


SPECIAL_PATHS = {  # kind: words the message must contain
    "missing": ["no such file"],
    "folder": ["a folder"],
    "char_device": ["not a regular file"],
    "fifo": ["not a regular file"],
    "unreadable_proc_file": ["cannot read", "Input/output error"],
    "broken_link": ["no such file"],
    "link_loop": ["cannot read"],
    "below_a_file": ["cannot read"],
    "name_too_long": ["cannot read", "too long"],
    "nul_in_name": ["cannot read", "null"],
}


@pytest.mark.parametrize("kind", sorted(SPECIAL_PATHS))
def test_paths_that_are_not_pairs_files(tmp_path, kind):
    path = _special(tmp_path, kind)
    message = raises(path)
    assert all(word in message for word in SPECIAL_PATHS[kind]), message


@pytest.mark.parametrize("name", ["p.txt", "p", "p.tsv.gz", "p.xlsx", "p.jsonl", ".tsv"])
def test_unknown_extensions(tmp_path, name):
    (tmp_path / name).write_text("swahili\tenglish\nmbwa\tdog\npaka\tcat\n", encoding="utf-8")
    assert "unknown extension" in raises(tmp_path / name)


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error")])
def test_read_errors(tmp_path, monkeypatch, error):
    """As root, permissions do not stop reads: the error is raised in their place."""
    path = pairs_file(tmp_path, "tsv", [GOOD_ROW, GOOD_ROW])

    def fail(self):
        raise error

    monkeypatch.setattr(Path, "read_bytes", fail)
    assert f"cannot read ({error.strerror})" in raises(path)


def test_file_too_big(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 1000)
    assert len(load_pairs(pairs_file(tmp_path, "tsv", [GOOD_ROW] * 10))) == 10  # 310 bytes
    assert "more than the 1000 bytes" in raises(pairs_file(tmp_path, "csv", [GOOD_ROW] * 100))


def test_same_source_and_target_column(tmp_path):
    path = pairs_file(tmp_path, "tsv", [GOOD_ROW, GOOD_ROW])
    assert "both 'swahili'" in raises(path, load_pairs, "swahili", "swahili")


def test_eval_pairs_are_validated_too(tmp_path):
    path = pairs_file(tmp_path, "csv", [GOOD_ROW, GOOD_ROW | {"english": "d\x00g"}])
    assert "line 3, column 'english'" in raises(path, load_eval_pairs, frame("a:b"))
    path = pairs_file(tmp_path, "tsv", [GOOD_ROW | {"split": "test"}, GOOD_ROW | {"swahili": "paka"}])
    assert set(load_eval_pairs(path, frame("a:b"))["split"]) == {"unseen"}  # any split is overridden


MUTATION_PIECES = [
    b"\x00",
    b"\t",
    b",",
    b'"',
    b"\n",
    b"\r",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b" ",
    b"null",
    b"1e999",
    "\u200b".encode(),
    b"\x1b",
    b"trained",
    b"swahili",
    b"english",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_files_never_crash(tmp_path, fmt):
    """200 random edits of a valid file: each loads (and writes back and reloads) or is one PairsError line."""
    rng = np.random.default_rng(FORMATS.index(fmt))
    valid = pairs_file(tmp_path, fmt, [GOOD_ROW, GOOD_ROW | {"swahili": "paka", "split": "control"}]).read_bytes()
    outcomes = {"loaded": 0, "rejected": 0}
    for _ in range(200):
        content = bytearray(valid)
        for _ in range(rng.integers(1, 6)):
            at = int(rng.integers(0, len(content) + 1))
            if rng.random() < 0.5:
                content[at:at] = MUTATION_PIECES[rng.integers(len(MUTATION_PIECES))]
            elif rng.random() < 0.5:
                del content[at : at + int(rng.integers(1, 6))]
            else:
                content[at:at] = rng.bytes(int(rng.integers(1, 4)))
        path = tmp_path / f"m.{fmt}"
        path.write_bytes(bytes(content))
        try:
            again = load_pairs(write_pairs(load_pairs(path), tmp_path / "again.tsv"))
            assert len(again) >= 2
            outcomes["loaded"] += 1
        except PairsError as error:
            assert "\n" not in str(error) and len(str(error)) < 400
            outcomes["rejected"] += 1
    assert min(outcomes.values()) > 0


# --- writing ------------------------------------------------------------------------------------


def _unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "parent_is_file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "out.tsv"
    if kind == "folder_there":
        (tmp_path / "out.tsv").mkdir()
        return tmp_path / "out.tsv"
    return {
        "proc": Path("/proc/out.tsv"),
        "proc_below_file": Path("/proc/self/status/out.tsv"),
        "sys": Path("/sys/out.csv"),
        "below_dev_null": Path("/dev/null/out.tsv"),
        "name_too_long": tmp_path / ("x" * 300 + ".tsv"),
        "nul_in_name": tmp_path / "o\x00ut.tsv",
    }[kind]


UNWRITABLE = [
    "parent_is_file",
    "folder_there",
    "proc",
    "proc_below_file",
    "sys",
    "below_dev_null",
    "name_too_long",
    "nul_in_name",
]


@pytest.mark.parametrize("kind", UNWRITABLE)
def test_write_to_unwritable_paths(tmp_path, paper, kind):
    path = _unwritable(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert "cannot write" in raises(path, lambda p: write_pairs(paper, p))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing half-written


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(28, "No space left on device")])
def test_write_errors(tmp_path, monkeypatch, paper, error):
    """A read-only folder (root writes anyway) or a full disk: the error is raised in their place."""

    def fail(*args):
        raise error

    monkeypatch.setattr(files, "write_text", fail)
    path = tmp_path / "out.tsv"
    assert f"cannot write ({error.strerror})" in raises(path, lambda p: write_pairs(paper, p))
    assert not path.exists()


BAD_FRAMES = {  # name: (frame changes, words the message must contain)
    "tab_in_word": ({"english": "d\tg"}, ["row 1, column 'english'", "U+0009"]),
    "newline_in_word": ({"swahili": "mb\nwa"}, ["row 1, column 'swahili'", "U+000A"]),
    "blank_word": ({"swahili": "  "}, ["row 1", "blank"]),
    "nan_word": ({"english": np.nan}, ["row 1", "a number, not a string"]),
    "number_word": ({"english": 7}, ["row 1", "not a string"]),
    "long_word": ({"english": "e" * 101}, ["row 1", "101 characters"]),
    "bad_split": ({"split": "test"}, ["row 1", "'test' is not a split"]),
    "control_in_pos": ({"pos": "no\x00un"}, ["row 1, column 'pos'", "U+0000"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_write_refuses_what_load_rejects(tmp_path, case):
    changes, words = BAD_FRAMES[case]
    pairs = pd.DataFrame([GOOD_ROW, GOOD_ROW, GOOD_ROW])
    for column, value in changes.items():
        pairs[column] = pairs[column].astype(object)
        pairs.at[1, column] = value
    path = tmp_path / "out.csv"
    message = raises(path, lambda p: write_pairs(pairs, p))
    assert "not written" in message and all(word in message for word in words), message
    assert not path.exists()


@pytest.mark.parametrize("rows, name", [(0, "out.tsv"), (1, "out.tsv"), (2, "out.json"), (2, "out")])
def test_write_refuses_short_frames_and_extensions(tmp_path, rows, name):
    path = tmp_path / name
    message = raises(path, lambda p: write_pairs(pd.DataFrame([GOOD_ROW] * rows, columns=list(GOOD_ROW)), p))
    assert ("at least 2" if rows < 2 else "extension") in message
    assert not path.exists()


# --- FreeDict import --------------------------------------------------------------------------

DICTD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ENTRIES = [  # (index headword, entry text) in the format of Debian's freedict-swh-eng
    ("00databaseshort", "00-database-short\nSwahili-English FreeDict Dictionary\n"),
    ("abiria", "abiria /ˌabirˈia/ <n> (pl: {maabiria})\n\npassenger\n"),
    ("acha", "acha /ˈatʃa/ <v>\n1.\nleave\n2.\nquit, stop doing sth\n"),
    ("adhuhuri", "adhuhuri /ˌaðuhˈuri/ <n> [sg=pl]\n\nmidday\n period between noon and 2 p.m.\n\n"),
    ("afisa", "afisa, ofisa /afˈisa/ /ofˈisa/ <n> (pl: {maafisa})\n\nOfficer\n"),
    ("ofisa", "afisa, ofisa /afˈisa/ /ofˈisa/ <n> (pl: {maafisa})\n\nOfficer\n"),
    ("akili", "akili /akˈili/ <n> [sg=pl]\n\nintelligence, intellect\n; sense\n"),
    ("fulani", "fulani /fulˈani/ <adj>\n\ncertain, some, such-and-such\n"),
    ("iko", "iko /ˈiko/ <cop, loc unspec, agr: 4,9>\n\nis (in an unspecified place)\n"),
    ("mizunguko", "mizunguko /mˌizuŋɡˈuko/ <n>\n\n Plural of {mzunguko}: cycle, circuit\n\n"),
    ("uswahili", "Uswahili /ˌuswahˈili/ <n>\n1.\nSwahili coast\n stretch of East Africa coast\n"),
    ("kwa ajili", "kwa ajili /kwa aɟˈili/ <conj>\nbecause, because of, due to\n"),
    ("jumla", "jumla /ɟˈumla/ <n>\n\nthe sum of all the parts\n"),
    ("sisi", "sisi /sˈisi/ <pron, pers>\n1.\nwe\n2.\nus\n"),
    ("nami", "nami /nˈami/ <expr>\n1.\nand I\n2.\nwith me\n"),
    ("mb\x07wa", "mb\x07wa /mbwa/ <n>\n\ndog\n"),  # a control character: skipped
    ("", " <n>\n\nnothing\n"),  # no headword: skipped
]
EXPECTED = [  # (swahili, english, pos)
    ("abiria", "passenger", "noun"),
    ("acha", "leave", "verb"),
    ("adhuhuri", "midday", "noun"),
    ("afisa", "officer", "noun"),
    ("ofisa", "officer", "noun"),
    ("akili", "intelligence", "noun"),
    ("fulani", "certain", "adjective"),
    ("Uswahili", "swahili coast", "noun"),
    ("kwa ajili", "because", "conjunction"),
    ("sisi", "we", "pronoun"),
    ("nami", "and i", "phrase"),
]


def _dictd_number(value: int) -> str:
    digits = ""
    while True:
        value, digit = divmod(value, 64)
        digits = DICTD_ALPHABET[digit] + digits
        if value == 0:
            return digits


def _write_dictd(folder: Path, stem="freedict-swh-eng", entries=ENTRIES) -> tuple[Path, Path]:
    """(index, body) of a dictd dictionary of `entries`."""
    body, index, offsets = b"", [], {}
    for headword, text in entries:
        if text not in offsets:  # variants (afisa/ofisa) share one definition, as in the real file
            offsets[text] = (len(body), len(text.encode()))
            body += text.encode()
        start, length = offsets[text]
        index.append(f"{headword}\t{_dictd_number(start)}\t{_dictd_number(length)}\n")
    (folder / f"{stem}.index").write_text("".join(index), encoding="utf-8")
    (folder / f"{stem}.dict.dz").write_bytes(gzip.compress(body))
    return folder / f"{stem}.index", folder / f"{stem}.dict.dz"


def test_dictd_number_helper():
    assert [_dictd_number(n) for n in (0, 63, 64, 1000)] == ["A", "/", "BA", "Po"]


@pytest.mark.parametrize("stem", ["freedict-swh-eng", "swh-eng"])
def test_import_freedict_fixture(tmp_path, stem):
    _write_dictd(tmp_path, stem)
    output = tmp_path / "out" / "freedict.tsv"
    pairs = import_freedict(tmp_path, output=output)
    assert list(zip(pairs["swahili"], pairs["english"], pairs["pos"])) == EXPECTED
    assert set(pairs["category"]) == {"unknown"} and set(pairs["split"]) == {"trained"}
    assert output.read_text(encoding="utf-8").splitlines()[0] == "\t".join(PAIR_COLUMNS)
    pd.testing.assert_frame_equal(load_pairs(output)[list(PAIR_COLUMNS)], pairs)


def _break_dictd(folder: Path, kind: str) -> Path:
    """A dictd folder with one kind of damage; returns the file the message must name."""
    if kind == "no_usable_entries":
        return _write_dictd(folder, entries=[ENTRIES[0], ENTRIES[8], ENTRIES[9]])[0]
    if kind == "one_usable_entry":
        return _write_dictd(folder, entries=ENTRIES[:2])[0]
    if kind == "empty_index":
        index, _ = _write_dictd(folder)
        index.write_bytes(b"")
        return index
    if kind == "entry_not_utf8":  # an entry whose bytes are not UTF-8
        index, body = _write_dictd(folder, entries=ENTRIES[:3])
        raw, bad = gzip.decompress(body.read_bytes()), b"paka <n>\n\nc\xe4t\n"
        body.write_bytes(gzip.compress(raw + bad))
        with index.open("a", encoding="utf-8") as handle:
            handle.write(f"paka\t{_dictd_number(len(raw))}\t{_dictd_number(len(bad))}\n")
        return body
    index, body = _write_dictd(folder)
    damage = {
        "index_not_utf8": (index, index.read_bytes() + b"p\xe4ka\tA\tB\n"),
        "index_utf16": (index, index.read_text(encoding="utf-8").encode("utf-16")),
        "body_not_gzip": (body, gzip.decompress(body.read_bytes())),
        "body_corrupt_deflate": (body, body.read_bytes()[:10] + b"\xff" * 50),
        "body_truncated": (body, body.read_bytes()[:-30]),
        "body_empty": (body, b""),
        "offset_past_end": (index, index.read_bytes() + b"paka\tBAAA\tB\n"),
        "two_fields": (index, index.read_bytes() + b"paka\tA\n"),
        "four_fields": (index, index.read_bytes() + b"paka\tA\tB\tC\n"),
        "empty_offset": (index, index.read_bytes() + b"paka\t\tB\n"),
        "bad_digit": (index, index.read_bytes() + b"paka\tA!\tB\n"),
    }[kind]
    damage[0].write_bytes(damage[1])
    return index if kind == "body_empty" else damage[0]  # an empty body decompresses to nothing


BROKEN_DICTD = {  # kind: words the message must contain
    "no_usable_entries": ["0 usable entries", "3 index lines", "nothing written"],
    "one_usable_entry": ["1 usable entries", "at least 2"],
    "empty_index": ["0 usable entries"],
    "entry_not_utf8": ["index line 4", "not UTF-8"],
    "index_not_utf8": ["not UTF-8", f"line {len(ENTRIES) + 1}"],
    "index_utf16": ["not UTF-8"],
    "body_not_gzip": ["not a gzip"],
    "body_corrupt_deflate": ["not a gzip"],
    "body_truncated": ["not a gzip"],
    "body_empty": ["points past the end"],
    "offset_past_end": [f"line {len(ENTRIES) + 1}", "past the end"],
    **{
        kind: [f"line {len(ENTRIES) + 1} is not"] for kind in ("two_fields", "four_fields", "empty_offset", "bad_digit")
    },
}


@pytest.mark.parametrize("kind", sorted(BROKEN_DICTD))
def test_import_freedict_broken_files(tmp_path, kind):
    named = _break_dictd(tmp_path, kind)
    output = tmp_path / "out" / "freedict.tsv"
    message = raises(tmp_path, lambda folder: import_freedict(folder, output=output))
    assert str(named) in message and all(word in message for word in BROKEN_DICTD[kind]), message
    assert not output.parent.exists()  # nothing written


@pytest.mark.parametrize("kind", ["missing", "empty", "a_file", "index_is_folder", "nul_in_name", "name_too_long"])
def test_import_freedict_no_dictionary(tmp_path, kind):
    folder = {
        "missing": tmp_path / "absent",
        "empty": tmp_path,
        "a_file": tmp_path / "f",
        "index_is_folder": tmp_path,
        "nul_in_name": tmp_path / "d\x00",
        "name_too_long": tmp_path / ("d" * 300),
    }[kind]
    if kind == "a_file":
        folder.write_text("x")
    if kind == "index_is_folder":
        (tmp_path / "freedict-swh-eng.index").mkdir()
        (tmp_path / "freedict-swh-eng.dict.dz").write_bytes(b"")
    message = raises(folder, import_freedict)
    assert "apt-get install dict-freedict-swh-eng" in message or "cannot read" in message


@pytest.mark.parametrize("kind", ["parent_is_file", "folder_there", "proc", "nul_in_name"])
def test_import_freedict_unwritable_output(tmp_path, kind):
    source = tmp_path / "dict"
    source.mkdir()
    _write_dictd(source)
    output = _unwritable(tmp_path, kind)
    assert "cannot write" in raises(output, lambda out: import_freedict(source, output=out))


def test_import_freedict_bad_output_extension_checked_first(tmp_path):
    message = raises(tmp_path / "out.json", lambda out: import_freedict(tmp_path / "absent", output=out))
    assert "extension" in message


@pytest.mark.skipif(
    not any((REAL_DICTD / f"{stem}.index").exists() for stem in ("swh-eng", "freedict-swh-eng")),
    reason="dict-freedict-swh-eng is not installed (`make freedict` installs it)",
)
def test_import_freedict_real(tmp_path, paper):
    pairs = import_freedict(REAL_DICTD, output=tmp_path / "freedict.tsv")
    assert len(pairs) > 1000
    assert not pairs.duplicated(["swahili", "english"]).any()
    assert set(pairs["pos"]) <= POS and (pairs["pos"] == "noun").mean() > 0.4
    assert (pairs["english"].str.split().str.len() <= 3).all()
    assert not pairs["swahili"].str.startswith("00").any()
    assert ("mbwa", "dog") in set(zip(pairs["swahili"], pairs["english"]))
    trained = paper[paper["split"] == "trained"]
    unseen = load_eval_pairs(tmp_path / "freedict.tsv", trained)
    assert 0 < len(unseen) < len(pairs) and set(unseen["split"]) == {"unseen"}
    assert len(unseen) == len(leak_free(pairs, trained)[0])
    if _debian_version("dict-freedict-swh-eng") == "2022.04.21-1":  # the version README.md's counts are of
        assert (len(pairs), len(unseen)) == (1938, 1529)


def _debian_version(package: str) -> str | None:
    try:
        answer = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return answer.stdout if answer.returncode == 0 else None
