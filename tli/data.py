"""Word pairs: load and validate a bilingual word list, flag its quirks, carve evaluation sets, import
FreeDict swh-eng.

Internally the source-language column is always `swahili` and the target-language column
`english`, whatever the language pair of the file. Every problem with a file is a `PairsError`
whose one-line message names the file and the line (TSV/CSV) or item (JSON).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import stat
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tli import files
from tli.errors import TliError

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("swahili", "english", "category", "pos", "split")
FLAG_COLUMNS = ("repeated_swahili", "repeated_english", "control_in_trained")
DEFAULTS = {"category": "unknown", "pos": "unknown", "split": "trained"}  # for absent/blank cells
SPLITS = ("trained", "control", "unseen")  # the split values a pairs file may hold
DELIMITERS = {".tsv": "\t", ".csv": ","}
MAX_WORD_CHARS = 100  # a cell is a word or a short phrase; the longest in the paper's data has 34 characters
MAX_FILE_BYTES = 64 * 2**20  # a pairs file of 64 MiB would hold about a million pairs
JSON_TYPES = {
    bool: "a boolean",
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    type(None): "null",
}  # isinstance order: bool before int


class PairsError(TliError):
    """A word-pair file (or dictionary) that cannot be used; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def default_pairs_path() -> Path:
    """The packaged, labelled dataset of the TLI paper (623 trained + 63 control pairs)."""
    return Path(__file__).with_name("datasets") / "paper_pairs.tsv"


def load_pairs(path=None, source_column="swahili", target_column="english") -> pd.DataFrame:
    """Read and validate a TSV/CSV/JSON word list; see PAIR_COLUMNS and FLAG_COLUMNS for the result.

    Every kept cell must be a string of at most MAX_WORD_CHARS printable characters (`str.isprintable`:
    no control, zero-width, byte-order-mark, line-separator, non-breaking-space, private-use or unassigned
    characters; a tab or newline inside a cell is a control character); `split` must be one of SPLITS.
    Rows whose cells are all blank are skipped.
    """
    path = default_pairs_path() if path is None else Path(path)
    pairs = _flag_quirks(_read_pairs(path, source_column, target_column))
    _log_quirks(path, pairs)
    return pairs


def load_eval_pairs(path, trained: pd.DataFrame, source_column="swahili", target_column="english") -> pd.DataFrame:
    """The `unseen` evaluation set of a pairs file: every row's split is `unseen`, whatever the file says.

    Rows sharing a Swahili or English word with `trained` are dropped (a warning counts them); the
    index is each kept row's position among the file's pairs (0-based). PairsError if no row is left.
    """
    path = Path(path)
    pairs = _read_pairs(path, source_column, target_column, split="unseen")
    kept, removed = leak_free(pairs, trained)
    if kept.empty:
        raise PairsError(f"{path}: all {len(pairs)} pairs share a word with the {len(trained)} trained pairs")
    if removed:
        log.warning("%s: %d of %d pairs share a word with the trained pairs (dropped)", path, removed, len(pairs))
    _warn_identical(path, kept)
    return _flag_quirks(kept.copy())


def split_sets(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{split: rows} in order of first appearance, each with a fresh index."""
    return {name: rows.reset_index(drop=True) for name, rows in pairs.groupby("split", sort=False)}


def leak_free(rows: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(the rows sharing neither their Swahili nor their English word with `reference`, number removed)."""
    leaked = rows["swahili"].isin(reference["swahili"]) | rows["english"].isin(reference["english"])
    return rows[~leaked], int(leaked.sum())


def validation_split(trained: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of `trained`, both keeping the original index labels and order.

    Rule: the Swahili headwords are shuffled with numpy's default_rng(seed) and whole headwords (all
    their rows: `bahari: ocean` and `bahari: sea` stay together) are moved to validation, in that order,
    as long as this brings the number of validation rows closer to `fraction` of all rows; at least one
    headword stays in training. Validation rows sharing an English word with the training rows are then
    dropped (they are in neither set). Fraction 0 gives an empty validation set.
    """
    if not 0 <= fraction < 1:
        raise TliError(f"validation fraction must be at least 0 and below 1, got {fraction}")
    headwords = trained["swahili"].drop_duplicates().to_numpy()
    order = np.random.default_rng(seed).permutation(headwords)
    sizes = trained["swahili"].value_counts().reindex(order).to_numpy()
    moved = np.concatenate([[0], np.cumsum(sizes)])[: max(len(order), 1)]  # rows moved by the first k headwords
    k = int(np.argmin(np.abs(moved - fraction * len(trained))))
    held = trained["swahili"].isin(order[:k])
    train_rows, validation = trained[~held], trained[held]
    return train_rows, validation[~validation["english"].isin(train_rows["english"])]


MAX_DERANGEMENT_DRAWS = 10_000  # permutations drawn before `derangement` gives up


def derangement(swahili, english, seed: int) -> np.ndarray:
    """A permutation `order` of the n rows such that no Swahili word meets one of its own glosses:
    english[order[i]] is not in G(swahili[i]) = {english[j] : swahili[j] == swahili[i]} for any i.

    Drawn by rejection: permutations from numpy's default_rng(seed) until one qualifies, so the result is
    uniform over the qualifying permutations (about e draws on distinct words; the paper's 623 trained pairs,
    whose 54 repeated headwords forbid more, take about 4). PairsError after MAX_DERANGEMENT_DRAWS draws
    (e.g. when one Swahili word holds most rows and none can exist).
    """
    swahili, english = list(swahili), list(english)
    if len(swahili) != len(english):
        raise ValueError(f"swahili and english differ in length: {len(swahili)} != {len(english)}")
    glosses: dict[str, set[str]] = {}
    for sw, en in zip(swahili, english):
        glosses.setdefault(sw, set()).add(en)
    sw_ids = {word: i for i, word in enumerate(glosses)}
    en_ids = {word: i for i, word in enumerate(dict.fromkeys(english))}
    forbidden = np.zeros((len(sw_ids), len(en_ids)), dtype=bool)  # [Swahili word, English word]
    for sw, words in glosses.items():
        forbidden[sw_ids[sw], [en_ids[word] for word in words]] = True
    rows = np.array([sw_ids[word] for word in swahili], dtype=np.int64)
    columns = np.array([en_ids[word] for word in english], dtype=np.int64)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DERANGEMENT_DRAWS):
        order = rng.permutation(len(english))
        if not forbidden[rows, columns[order]].any():
            return order
    raise PairsError(
        f"no permutation of {len(english)} pairs keeps every Swahili word from its own glosses "
        f"({MAX_DERANGEMENT_DRAWS} drawn): too few distinct words to derange"
    )


def derange(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """`pairs` with its English column permuted by `derangement` (the shuffled control): the same Swahili and
    English words, every Swahili word paired with another row's English word, never one of its glosses. The
    index and every other column stay with their Swahili word.
    """
    order = derangement(pairs["swahili"], pairs["english"], seed)
    return pairs.assign(english=pairs["english"].to_numpy()[order])


def write_pairs(pairs: pd.DataFrame, path) -> Path:
    """Write PAIR_COLUMNS as TSV or CSV (chosen by extension), with a header, atomically; return the path.

    The rows are validated as `load_pairs` would read them back; on any error nothing is written.
    """
    path = Path(path)
    sep = output_delimiter(path)
    table = pairs.reindex(columns=list(PAIR_COLUMNS)).fillna(DEFAULTS)
    if len(table) < 2:
        raise PairsError(f"{path}: not written: {len(table)} pair(s); at least 2 are needed")
    records = [(f"row {label}", "column", row) for label, row in zip(table.index, table.to_dict("records"))]
    clean = _clean_rows(f"{path}: not written", records, "swahili", "english")
    try:
        _check_writable(path)
        return files.write_text(clean.to_csv(sep=sep, index=False, lineterminator="\n"), path)
    except (OSError, ValueError) as err:  # pyarrow's errors are OSError or ValueError too
        raise PairsError(f"{path}: cannot write ({files.reason(err)})") from None


def output_delimiter(path: Path) -> str:
    """The delimiter of an output `path`, by extension; PairsError for another extension."""
    sep = DELIMITERS.get(path.suffix.lower())
    if sep is None:
        raise PairsError(f"{path}: cannot write extension {path.suffix!r} (expected .tsv or .csv)")
    return sep


def _check_writable(path: Path) -> None:
    """PairsError when `path` is a folder or lies below a file."""
    if path.is_dir():
        raise PairsError(f"{path}: cannot write (a folder exists there)")
    for ancestor in path.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise PairsError(f"{path}: cannot write ({ancestor} is a file, not a folder)")
            return


# --- reading and validation -------------------------------------------------------------------

Record = tuple[str, str, dict]  # (where: "line 3" / "item 2", what a field is called: "column" / "key", fields)


def _read_pairs(path: Path, source: str, target: str, split: str | None = None) -> pd.DataFrame:
    """PAIR_COLUMNS of a validated pairs file (no flags); `split`, if given, replaces the file's."""
    if source == target:
        raise PairsError(f"{path}: source and target column are both {source!r}")
    suffix = path.suffix.lower()
    if suffix not in (*DELIMITERS, ".json"):
        raise PairsError(f"{path}: unknown extension {suffix!r} (expected .tsv, .csv or .json)")
    text = _read_text(path)
    if suffix == ".json":
        records = _json_records(path, text, (source, target))
    else:
        records = _delimited_records(path, text, DELIMITERS[suffix], (source, target))
    if len(records) < 2:
        raise PairsError(f"{path}: {len(records)} pair(s); at least 2 are needed")
    return _clean_rows(str(path), records, source, target, split)


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, a leading BOM dropped); PairsError for a missing, odd, huge or unreadable file."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise PairsError(f"{path}: a folder, not a pairs file")
        if not stat.S_ISREG(info.st_mode):
            raise PairsError(f"{path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise PairsError(f"{path}: {info.st_size} bytes, more than the {MAX_FILE_BYTES} bytes of a pairs file")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PairsError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise PairsError(f"{path}: cannot read ({files.reason(err)})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PairsError(f"{path}: not UTF-8 (it starts with a UTF-16 or UTF-32 byte order mark)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PairsError(f"{path}: not UTF-8 (byte offset {err.start}, line {line})") from None
    if not text.strip():
        raise PairsError(f"{path}: file is empty")
    return text


def _delimited_records(path: Path, text: str, sep: str, required) -> list[Record]:
    """[(where, "column", {column: cell})] from a headed TSV/CSV, rejecting ragged rows. A record that spans
    lines (a quoted field holding a line break) is named by its first line, with a hint at an unbalanced quote.
    """
    rows = _csv_rows(path, text, sep)
    first, last, header = next(rows, (0, 0, None))
    if header is None:
        raise PairsError(f"{path}: no header (every line is blank)")
    header = [name.strip() for name in header]
    _check_header(f"{path}: {_lines(first, last)}", header, sep, required)
    records = []
    for first, last, row in rows:
        if len(row) != len(header):
            raise PairsError(f"{path}: {_lines(first, last)} has {len(row)} fields, the header has {len(header)}")
        records.append((_lines(first, last), "column", dict(zip(header, row))))
    if not records:
        raise PairsError(f"{path}: header but no rows")
    return records


def _lines(first: int, last: int) -> str:
    """Where a record is: its line, and where a quoted field carried it when it spans lines."""
    if last <= first:
        return f"line {first}"
    return f"line {first} (a quoted field runs on to line {last}: is a quote unbalanced?)"


def _check_header(where: str, header: list[str], sep: str, required) -> None:
    """PairsError when the header lacks a required column or names a column twice."""
    missing = [name for name in required if name not in header]
    if missing:
        found = ", ".join(_show(name, 20) for name in header[:8]) + (", ..." if len(header) > 8 else "")
        other, kind = ("\t", "tab") if sep == "," else (",", "comma")
        hint = f"; are the fields {kind}-separated?" if len(header) == 1 and other in header[0] else ""
        raise PairsError(f"{where}: header lacks column(s) {', '.join(missing)} (found: {found}){hint}")
    repeated = sorted(name for name, count in Counter(header).items() if name and count > 1)
    if repeated:
        raise PairsError(f"{where}: column(s) {', '.join(map(_show, repeated))} appear more than once")


def _csv_rows(path: Path, text: str, sep: str):
    """Yield (first line, last line, cells) of each row not wholly blank; PairsError for what the csv module
    rejects, and for a quote never closed (the csv module would read the rest of the file as one field).
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    starts = [0] + [match.end() for match in re.finditer(r"\r\n|\r|\n", text)]  # where each line begins
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field limit" in str(err):
                limit = csv.field_size_limit()
                raise PairsError(
                    f"{path}: line {line}: a field of more than {limit} characters (a word has at most "
                    f"{MAX_WORD_CHARS}; a quote never closed makes one of the rest of the file)"
                ) from None
            kind = "TSV" if sep == "\t" else "CSV"
            raise PairsError(f"{path}: line {line}: unreadable as {kind} ({err})") from None
        end = starts[reader.line_num] if reader.line_num < len(starts) else len(text)
        broken = any("\n" in cell or "\r" in cell for cell in row)  # a quoted field holding a line break
        if broken and text.count('"', starts[line - 1], end) % 2:
            raise PairsError(
                f'{path}: line {line}: a quote (") opens a field that is never closed, so the rest of the file '
                "reads as one field (an unbalanced quote: a quoted field ends with a quote)"
            )
        if any(cell.strip() for cell in row):
            yield line, reader.line_num, row


def _json_records(path: Path, text: str, required) -> list[Record]:
    """[(where, "key", object)] from the paper's format: a JSON list of objects with the required keys."""
    try:
        items = json.loads(text, object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as err:
        raise PairsError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise PairsError(f"{path}: malformed JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer of thousands of digits
        raise PairsError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(items, list):
        raise PairsError(f"{path}: expected a JSON list of objects, got {_json_type(items)}")
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise PairsError(f"{path}: item {number} is {_json_type(item)}, not an object")
        if item.repeated:
            raise PairsError(f"{path}: item {number} has key(s) {', '.join(map(_show, item.repeated))} twice")
        for key in required:
            if key not in item:
                raise PairsError(f"{path}: item {number} has no key {key!r}")
    return [(f"item {number}", "key", item) for number, item in enumerate(items, start=1)]


class _JsonObject(dict):
    """A JSON object that remembers the keys it held more than once (`repeated`)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]


def _json_type(value) -> str:
    """How JSON names the type of `value` ("an object", "a number", ...)."""
    return next((name for kind, name in JSON_TYPES.items() if isinstance(value, kind)), type(value).__name__)


def _clean_rows(origin: str, records: list[Record], source: str, target: str, split: str | None = None) -> pd.DataFrame:
    """PAIR_COLUMNS from validated records; `origin` starts every error message."""
    rows = []
    for where, field, record in records:
        row = {}
        for column, name in (("swahili", source), ("english", target), *((c, c) for c in DEFAULTS)):
            if column == "split" and split is not None:
                row[column] = split
                continue
            problem = cell_problem(record.get(name), required=column in ("swahili", "english"))
            if problem:
                raise PairsError(f"{origin}: {where}, {field} {name!r}: {problem}")
            row[column] = (record.get(name) or "").strip() or DEFAULTS.get(column)
        if row["split"] not in SPLITS:
            raise PairsError(
                f"{origin}: {where}, {field} 'split': {_show(row['split'])} is not a split "
                f"(expected {', '.join(SPLITS)})"
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def cell_problem(value, required: bool) -> str | None:
    """What is wrong with one cell (a string, or None when absent), or None."""
    if value is None:
        return "null" if required else None
    if isinstance(value, str) and not value.strip():
        return "blank" if required else None
    if not isinstance(value, str):
        return f"{_json_type(value)}, not a string"
    if len(value.strip()) > MAX_WORD_CHARS:
        return f"{len(value.strip())} characters (at most {MAX_WORD_CHARS})"
    if value.isprintable():
        return None
    position, char = next((i, c) for i, c in enumerate(value, start=1) if not c.isprintable())
    name = ", ".join(filter(None, (unicodedata.name(char, ""), f"category {unicodedata.category(char)}")))
    return f"invisible or control character U+{ord(char):04X} ({name}) at character {position}"


def _show(text: str, limit: int = 40) -> str:
    """`text` quoted and escaped for a one-line message, shortened to `limit` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def same_word(pairs: pd.DataFrame) -> pd.Series:
    """Whether a pair's two words are one string, up to case and Unicode normalisation (NFKC)."""

    def fold(words: pd.Series) -> pd.Series:
        return words.map(lambda word: unicodedata.normalize("NFKC", word).casefold().strip())

    return fold(pairs["swahili"]) == fold(pairs["english"])


def _flag_quirks(pairs: pd.DataFrame) -> pd.DataFrame:
    for column in ("swahili", "english"):
        pairs[f"repeated_{column}"] = pairs.duplicated(["split", column], keep=False)
    trained = pairs[pairs["split"] == "trained"]
    shared = pairs["swahili"].isin(trained["swahili"]) | pairs["english"].isin(trained["english"])
    pairs["control_in_trained"] = (pairs["split"] == "control") & shared
    return pairs


MOSTLY_SAME = 0.5  # a file where this share of pairs has one word on both sides is warned about on its own


def _log_quirks(path: Path, pairs: pd.DataFrame) -> None:
    """One warning line for the quirks flagged (rows kept); a file of mostly identical pairs: `_warn_identical`."""
    same = _warn_identical(path, pairs)
    parts = []
    if same.any() and same.mean() < MOSTLY_SAME:
        parts.append(f"{int(same.sum())} pairs have the same word on both sides (cosine near 1 by construction)")
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


def _warn_identical(path: Path, pairs: pd.DataFrame) -> pd.Series:
    """`same_word(pairs)`, with a warning of its own when at least MOSTLY_SAME of the pairs are identical."""
    same = same_word(pairs)
    if len(pairs) and same.mean() >= MOSTLY_SAME:
        example = pairs[same].iloc[0]
        log.warning(
            "%s: %d of %d pairs have the same word on both sides (e.g. %r = %r, ignoring case): their pooled vectors "
            "are equal or nearly, so cosines near 1 measure string identity, not translation; is the target column "
            "a copy of the source column?",
            path,
            int(same.sum()),
            len(pairs),
            example["swahili"],
            example["english"],
        )
    return same
