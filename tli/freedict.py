"""FreeDict Swahili-English (Debian's dict-freedict-swh-eng, dictd format): an `unseen` evaluation set.

The dictionary is GPL-2+: it is parsed at run time (`tli pairs import-freedict`, `make freedict`) and
never committed. Each usable entry gives one pair: the entry's first sense, first gloss, with its part of
speech; grammatical forms, cross-references and long glosses are skipped.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from pathlib import Path

import pandas as pd

from tli import data, files

log = logging.getLogger(__name__)

DICTD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
FREEDICT_STEMS = ("freedict-swh-eng", "swh-eng")  # Debian's file names, newest first
FREEDICT_POS = {  # first item of the entry's <...> tag -> our part of speech; others (cop, prt) skipped
    "n": "noun",
    "v": "verb",
    "adj": "adjective",
    "adv": "adverb",
    "pron": "pronoun",
    "num": "numeral",
    "conj": "conjunction",
    "prep": "preposition",
    "interj": "interjection",
    "expr": "phrase",
}
GRAMMATICAL_FORMS = re.compile(r"\b(agr|infl)\b")  # class-agreement / inflected forms: skipped
MAX_GLOSS_WORDS = 3
_SENSE_NUMBER = re.compile(r"\d+\.")
_CLEAN_GLOSS = re.compile(r"[a-z][a-z' -]*")


def import_freedict(dict_dir="/usr/share/dictd", output=None) -> pd.DataFrame:
    """Pairs from Debian's dict-freedict-swh-eng: first sense, first gloss, with the dictionary's POS.

    Written to `output` (TSV or CSV) when given; data.PairsError (nothing written) for unreadable files or
    fewer than 2 usable entries.
    """
    if output is not None:
        data.output_delimiter(Path(output))
    index_path, body_path = _freedict_files(Path(dict_dir))
    index, body = _read_freedict(index_path, body_path)
    rows = []
    for number, line in enumerate(index, start=1):
        headword, start, length = _index_fields(index_path, number, line)
        if re.match(r"00-?database", headword):
            continue
        if start + length > len(body):
            raise data.PairsError(f"{index_path}: line {number} points past the end of {body_path.name}")
        try:
            entry = body[start : start + length].decode("utf-8")
        except UnicodeDecodeError:
            raise data.PairsError(f"{body_path}: entry of index line {number} is not UTF-8") from None
        row = _freedict_entry(headword, entry)
        if row is not None and not data.cell_problem(row["swahili"], required=True):
            rows.append(row)
    pairs = pd.DataFrame(rows, columns=list(data.PAIR_COLUMNS)).drop_duplicates(["swahili", "english"])
    if len(pairs) < 2:
        raise data.PairsError(
            f"{index_path}: {len(pairs)} usable entries in {len(index)} index lines (at least 2 "
            "are needed); nothing written"
        )
    pairs = pairs.reset_index(drop=True)
    log.info("%s: %d clean pairs from %d index lines", index_path, len(pairs), len(index))
    if output is not None:
        data.write_pairs(pairs, output)
    return pairs


def _freedict_files(dict_dir: Path) -> tuple[Path, Path]:
    for stem in FREEDICT_STEMS:
        index, body = dict_dir / f"{stem}.index", dict_dir / f"{stem}.dict.dz"
        try:
            if index.is_file() and body.is_file():
                return index, body
        except (OSError, ValueError) as err:
            raise data.PairsError(f"{dict_dir}: cannot read ({files.reason(err)})") from None
    raise data.PairsError(
        f"{dict_dir}: no swh-eng dictd files; install them with `apt-get install dict-freedict-swh-eng`"
    )


def _read_freedict(index_path: Path, body_path: Path) -> tuple[list[str], bytes]:
    """(index lines, decompressed body); data.PairsError for an unreadable, non-UTF-8 or non-gzip file."""
    try:
        raw_index, raw_body = index_path.read_bytes(), body_path.read_bytes()
    except OSError as err:
        raise data.PairsError(f"{err.filename}: cannot read ({files.reason(err)})") from None
    try:
        body = gzip.decompress(raw_body)
    except (OSError, EOFError, zlib.error) as err:
        raise data.PairsError(f"{body_path}: not a gzip/dictzip file ({err})") from None
    try:
        return raw_index.decode("utf-8").splitlines(), body
    except UnicodeDecodeError as err:
        line = raw_index[: err.start].count(b"\n") + 1
        raise data.PairsError(f"{index_path}: not UTF-8 (byte offset {err.start}, line {line})") from None


def _index_fields(index_path: Path, number: int, line: str) -> tuple[str, int, int]:
    """(headword, offset, length) of one dictd index line."""
    fields = line.split("\t")
    if len(fields) != 3 or not all(field and set(field) <= set(DICTD_ALPHABET) for field in fields[1:]):
        raise data.PairsError(f"{index_path}: line {number} is not `headword<TAB>offset<TAB>length`")
    return fields[0], _dictd_number(fields[1]), _dictd_number(fields[2])


def _dictd_number(text: str) -> int:
    """Decode dictd's base64 integer (most significant digit first)."""
    value = 0
    for char in text:
        value = value * 64 + DICTD_ALPHABET.index(char)
    return value


def _freedict_entry(headword: str, entry: str) -> dict | None:
    """One clean pair from an entry, or None (grammatical form, plural cross-reference, long gloss)."""
    header, *lines = entry.split("\n")
    tag = re.search(r"<([^>]*)>", header)
    if tag is None or GRAMMATICAL_FORMS.search(tag.group(1)):
        return None
    pos = FREEDICT_POS.get(tag.group(1).split(",")[0].strip())
    senses = [line for line in lines if line.strip() and not _SENSE_NUMBER.fullmatch(line.strip())]
    if pos is None or not senses or senses[0][0].isspace():  # indented: "Plural of {x}: ..."
        return None
    gloss = re.split(r"[,;]", re.sub(r"\([^)]*\)", " ", senses[0]))[0]
    gloss = " ".join(gloss.lower().split())
    if not _CLEAN_GLOSS.fullmatch(gloss) or len(gloss.split()) > MAX_GLOSS_WORDS:
        return None
    swahili = _spelling(headword, header)
    return {"swahili": swahili, "english": gloss, "category": "unknown", "pos": pos, "split": "trained"}


def _spelling(headword: str, header: str) -> str:
    """The entry's own spelling of the (lowercased) index headword, e.g. `Uswahili` for `uswahili`."""
    names = re.split(r"\s+[/<]", header)[0].split(",")
    return next((name.strip() for name in names if name.strip().lower() == headword), headword)
