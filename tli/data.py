"""Word pairs: load and validate a bilingual word list, flag its quirks, import FreeDict swh-eng.

Internally the source-language column is always `swahili` and the target-language column
`english`, whatever the language pair of the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from pathlib import Path

import pandas as pd

from tli import results
from tli.errors import TliError

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("swahili", "english", "category", "pos", "split")
FLAG_COLUMNS = ("repeated_swahili", "repeated_english", "control_in_trained")
DEFAULTS = {"category": "unknown", "pos": "unknown", "split": "trained"}  # for absent/blank cells
DELIMITERS = {".tsv": "\t", ".csv": ","}


class PairsError(TliError):
    """A word-pair file (or dictionary) that cannot be used; the message is one line."""


def default_pairs_path() -> Path:
    """The packaged, labelled dataset of the TLI paper (623 trained + 63 control pairs)."""
    return Path(__file__).with_name("datasets") / "paper_pairs.tsv"


def load_pairs(path=None, source_column="swahili", target_column="english") -> pd.DataFrame:
    """Read and validate a TSV/CSV/JSON word list; see PAIR_COLUMNS and FLAG_COLUMNS for the result."""
    path = default_pairs_path() if path is None else Path(path)
    if not path.is_file():
        raise PairsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (*DELIMITERS, ".json"):
        raise PairsError(f"{path}: unknown extension {suffix!r} (expected .tsv, .csv or .json)")
    text = _read_text(path)
    if suffix == ".json":
        records = _json_records(path, text, (source_column, target_column))
    else:
        records = _delimited_records(path, text, DELIMITERS[suffix], (source_column, target_column))
    pairs = _build_frame(path, records, source_column, target_column)
    _log_quirks(path, pairs)
    return pairs


def split_sets(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{split: rows} in order of first appearance, each with a fresh index."""
    return {name: rows.reset_index(drop=True) for name, rows in pairs.groupby("split", sort=False)}


def write_pairs(pairs: pd.DataFrame, path) -> Path:
    """Write PAIR_COLUMNS as TSV or CSV (chosen by extension), with a header; return the path."""
    path = Path(path)
    sep = DELIMITERS.get(path.suffix.lower())
    if sep is None:
        raise PairsError(f"{path}: cannot write extension {path.suffix!r} (expected .tsv or .csv)")
    table = pairs.reindex(columns=list(PAIR_COLUMNS)).fillna(DEFAULTS)
    return results.write_text(table.to_csv(sep=sep, index=False, lineterminator="\n"), path)


# --- reading and validation -------------------------------------------------------------------


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise PairsError(f"{path}: file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PairsError(f"{path}: not UTF-8 (byte offset {err.start}, line {line})") from None


def _delimited_records(path: Path, text: str, sep: str, required) -> list[tuple[str, dict]]:
    """[(where, {column: cell})] from a headed TSV/CSV, rejecting ragged rows."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header = [name.strip() for name in next(reader)]
    missing = [name for name in required if name not in header]
    if missing:
        raise PairsError(f"{path}: header lacks column(s) {', '.join(missing)} (found: {', '.join(header)})")
    if len(set(header)) != len(header):
        raise PairsError(f"{path}: duplicate column names in header ({', '.join(header)})")
    records = []
    for row in reader:
        if not row:  # a blank line is not a row
            continue
        if len(row) != len(header):
            raise PairsError(
                f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
            )
        records.append((f"line {reader.line_num}", dict(zip(header, row))))
    if not records:
        raise PairsError(f"{path}: header but no rows")
    return records


def _json_records(path: Path, text: str, required) -> list[tuple[str, dict]]:
    """[(where, object)] from the paper's format: a JSON list of objects with the required keys."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise PairsError(f"{path}: malformed JSON at {where}: {err.msg}") from None
    if not isinstance(items, list):
        raise PairsError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or any(not isinstance(item.get(key), str) for key in required):
            keys = " and ".join(required)
            raise PairsError(f"{path}: item {number} is not an object with string keys {keys}")
    return [(f"item {number}", item) for number, item in enumerate(items, start=1)]


def _build_frame(path: Path, records, source: str, target: str) -> pd.DataFrame:
    if len(records) < 2:
        raise PairsError(f"{path}: {len(records)} pair(s); at least 2 are needed")
    rows = []
    for where, record in records:
        row = {"swahili": str(record[source]).strip(), "english": str(record[target]).strip()}
        for column, name in (("swahili", source), ("english", target)):
            if not row[column]:
                raise PairsError(f"{path}: {where}: blank {name!r} cell")
        for column, default in DEFAULTS.items():
            row[column] = str(record.get(column) or "").strip() or default
        rows.append(row)
    return _flag_quirks(pd.DataFrame(rows, columns=list(PAIR_COLUMNS)))


def _flag_quirks(pairs: pd.DataFrame) -> pd.DataFrame:
    for column in ("swahili", "english"):
        pairs[f"repeated_{column}"] = pairs.duplicated(["split", column], keep=False)
    trained = pairs[pairs["split"] == "trained"]
    shared = pairs["swahili"].isin(trained["swahili"]) | pairs["english"].isin(trained["english"])
    pairs["control_in_trained"] = (pairs["split"] == "control") & shared
    return pairs


def _log_quirks(path: Path, pairs: pd.DataFrame) -> None:
    parts = []
    for column in ("swahili", "english"):
        repeated = pairs[pairs[f"repeated_{column}"]]
        if len(repeated):
            words = len(repeated.drop_duplicates(["split", column]))
            parts.append(f"{words} {column} words repeat within a split ({len(repeated)} rows)")
    if pairs["control_in_trained"].any():
        shared = int(pairs["control_in_trained"].sum())
        parts.append(f"{shared} control rows share a word with the trained split")
    if parts:
        log.warning("%s: %s (rows kept, see the flag columns)", path, "; ".join(parts))


# --- FreeDict swh-eng (dictd format, GPL: parsed at run time, never committed) ------------------

DICTD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
FREEDICT_STEMS = ("freedict-swh-eng", "swh-eng")  # Debian's file names, newest first
FREEDICT_POS = {  # first item of the entry's <...> tag -> our part of speech; others (cop, prt) skipped
    "n": "noun", "v": "verb", "adj": "adjective", "adv": "adverb", "pron": "pronoun",
    "num": "numeral", "conj": "conjunction", "prep": "preposition", "interj": "interjection",
    "expr": "phrase",
}
GRAMMATICAL_FORMS = re.compile(r"\b(agr|infl)\b")  # class-agreement / inflected forms: skipped
MAX_GLOSS_WORDS = 3
_SENSE_NUMBER = re.compile(r"\d+\.")
_CLEAN_GLOSS = re.compile(r"[a-z][a-z' -]*")


def import_freedict(dict_dir="/usr/share/dictd", output=None) -> pd.DataFrame:
    """Pairs from Debian's dict-freedict-swh-eng: first sense, first gloss, with the dictionary's POS."""
    index_path, body_path = _freedict_files(Path(dict_dir))
    try:
        body = gzip.decompress(body_path.read_bytes())
    except (OSError, EOFError) as err:
        raise PairsError(f"{body_path}: not a gzip/dictzip file ({err})") from None
    index = index_path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(index, start=1):
        fields = line.split("\t")
        if len(fields) != 3 or not all(set(field) <= set(DICTD_ALPHABET) for field in fields[1:]):
            raise PairsError(f"{index_path}: line {number} is not `headword<TAB>offset<TAB>length`")
        headword, offset, length = fields
        if re.match(r"00-?database", headword):
            continue
        start = _dictd_number(offset)
        entry = body[start : start + _dictd_number(length)].decode("utf-8")
        row = _freedict_entry(headword, entry)
        if row is not None:
            rows.append(row)
    pairs = pd.DataFrame(rows, columns=list(PAIR_COLUMNS)).drop_duplicates(["swahili", "english"])
    pairs = pairs.reset_index(drop=True)
    log.info("%s: %d clean pairs from %d index lines", index_path, len(pairs), len(index))
    if output is not None:
        write_pairs(pairs, output)
    return pairs


def _freedict_files(dict_dir: Path) -> tuple[Path, Path]:
    for stem in FREEDICT_STEMS:
        index, body = dict_dir / f"{stem}.index", dict_dir / f"{stem}.dict.dz"
        if index.is_file() and body.is_file():
            return index, body
    raise PairsError(
        f"{dict_dir}: no swh-eng dictd files; install them with `apt-get install dict-freedict-swh-eng`"
    )


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
