"""tli.data: the packaged dataset, its quirk flags, validation errors, FreeDict import."""

import gzip
import logging
from pathlib import Path

import pandas as pd
import pytest

from tli.data import (
    PAIR_COLUMNS,
    PairsError,
    default_pairs_path,
    import_freedict,
    load_pairs,
    split_sets,
    write_pairs,
)
from tli.errors import TliError

SHARED = Path("/work/shared/data/tli_paper")
REAL_DICTD = Path("/usr/share/dictd")
POS = {"noun", "verb", "adjective", "adverb", "pronoun", "numeral", "preposition",
       "conjunction", "phrase", "interjection"}


@pytest.fixture(scope="module")
def paper():
    return load_pairs()


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


def test_split_sets_keeps_other_split_names(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("swahili\tenglish\tsplit\nb\tB\ttest\na\tA\ttrained\nc\tC\ttest\n", encoding="utf-8")
    sets = split_sets(load_pairs(path))
    assert list(sets) == ["test", "trained"] and sets["test"]["swahili"].tolist() == ["b", "c"]


# --- validation errors ------------------------------------------------------------------------

HEADER = "swahili\tenglish\n"
BAD_FILES = {  # name: (file name, bytes, words the message must contain)
    "empty": ("p.tsv", b"", ["empty"]),
    "blank_only": ("p.tsv", b"  \n\n", ["empty"]),
    "header_only": ("p.tsv", HEADER.encode(), ["header but no rows"]),
    "wrong_header": ("p.tsv", b"sw\ten\nmbwa\tdog\npaka\tcat\n", ["swahili, english", "found: sw, en"]),
    "blank_cell": ("p.tsv", (HEADER + "mbwa\tdog\n  \tcat\n").encode(), ["line 3", "blank 'swahili'"]),
    "blank_target": ("p.csv", b"swahili,english\nmbwa,dog\npaka,\n", ["line 3", "blank 'english'"]),
    "ragged_long": ("p.tsv", (HEADER + "mbwa\tdog\npaka\tcat\textra\n").encode(), ["line 3", "3 fields"]),
    "ragged_short": ("p.csv", b"swahili,english,pos\nmbwa,dog,noun\npaka,cat\n", ["line 3", "2 fields"]),
    "not_utf8": (
        "p.tsv", (HEADER + "mbwa\tdog\n").encode() + b"p\xe4ka\tcat\n", ["UTF-8", "byte offset 26", "line 3"]
    ),
    "malformed_json": (
        "p.json", b'[\n  {"swahili": "mbwa", "english": "dog"},\n  {"swahili": }\n]', ["line 3, column 15"]
    ),
    "json_not_list": ("p.json", b'{"swahili": "mbwa", "english": "dog"}', ["list", "dict"]),
    "json_missing_key": (
        "p.json", b'[{"swahili": "mbwa", "english": "dog"}, {"swahili": "paka"}]', ["item 2"]
    ),
    "json_blank": (
        "p.json", b'[{"swahili": "mbwa", "english": "dog"}, {"swahili": " ", "english": "cat"}]',
        ["item 2", "blank"],
    ),
    "one_pair": ("p.tsv", (HEADER + "mbwa\tdog\n").encode(), ["at least 2"]),
    "one_json_pair": ("p.json", b'[{"swahili": "mbwa", "english": "dog"}]', ["at least 2"]),
    "extension": ("p.txt", (HEADER + "mbwa\tdog\npaka\tcat\n").encode(), ["extension", ".txt"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line(tmp_path, case):
    name, content, words = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PairsError) as caught:
        load_pairs(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message
    assert isinstance(caught.value, TliError)


def test_missing_file(tmp_path):
    with pytest.raises(PairsError, match="no such file"):
        load_pairs(tmp_path / "absent.tsv")


def test_pandas_would_have_padded_the_ragged_row(tmp_path):
    """Guard for the reason we validate rows ourselves: pandas fills a short row with NaN."""
    path = tmp_path / "p.csv"
    path.write_text("swahili,english,pos\nmbwa,dog,noun\npaka,cat\n", encoding="utf-8")
    assert pd.read_csv(path).shape == (2, 3)
    with pytest.raises(PairsError):
        load_pairs(path)


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


def _write_dictd(folder: Path, stem="freedict-swh-eng"):
    body, index, offsets = b"", [], {}
    for headword, text in ENTRIES:
        if text not in offsets:  # variants (afisa/ofisa) share one definition, as in the real file
            offsets[text] = (len(body), len(text.encode()))
            body += text.encode()
        start, length = offsets[text]
        index.append(f"{headword}\t{_dictd_number(start)}\t{_dictd_number(length)}\n")
    (folder / f"{stem}.index").write_text("".join(index), encoding="utf-8")
    (folder / f"{stem}.dict.dz").write_bytes(gzip.compress(body))


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


def test_import_freedict_bad_index(tmp_path):
    _write_dictd(tmp_path)
    with (tmp_path / "freedict-swh-eng.index").open("a", encoding="utf-8") as index:
        index.write("mbwa\tA!\tB\n")
    with pytest.raises(PairsError, match=f"line {len(ENTRIES) + 1} is not"):
        import_freedict(tmp_path)


def test_import_freedict_missing(tmp_path):
    with pytest.raises(PairsError, match="apt-get install dict-freedict-swh-eng") as caught:
        import_freedict(tmp_path)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(
    not any((REAL_DICTD / f"{stem}.index").exists() for stem in ("swh-eng", "freedict-swh-eng")),
    reason="dict-freedict-swh-eng is not installed",
)
def test_import_freedict_real():
    pairs = import_freedict(REAL_DICTD)
    assert len(pairs) > 1000  # 1,938 with dict-freedict-swh-eng 2022.04.21-1
    assert not pairs.duplicated(["swahili", "english"]).any()
    assert set(pairs["pos"]) <= POS and (pairs["pos"] == "noun").mean() > 0.4
    assert (pairs["english"].str.split().str.len() <= 3).all()
    assert not pairs["swahili"].str.startswith("00").any()
    assert ("mbwa", "dog") in set(zip(pairs["swahili"], pairs["english"]))
