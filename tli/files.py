"""Files of results, on a local disk or an object store: atomic writes, output checks, provenance.

`Folder` wraps a pyarrow filesystem (a local path, or a URI such as ``s3://bucket/prefix`` or
``gs://...``; S3 honours the standard ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``). A write is atomic on every backend: on a local disk a temporary file is
renamed over the target, on an object store one PUT makes the object appear whole. Readers never see
half a file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from tli.errors import TliError

TABLE_FORMATS = (".csv", ".parquet")
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")  # the URI schemes pyarrow.fs opens
NAME_MAX = 255 - len(".x.00000000.tmp")  # bytes of one path component, room left for the temporary name beside it
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_BROKEN_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")  # s3:/bucket: a URI that lost a slash


class WriteError(TliError, OSError):
    """A write the machine refused (disk full, file too large, read-only, name too long): path and reason."""

    def __init__(self, path: str, error: Exception):
        super().__init__(getattr(error, "errno", None) or errno.EIO, reason(error))
        self.path = path

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"


def check_location(text: str) -> str:
    """`text` as a results location: a local path, or a URI `scheme://bucket/...` with a scheme pyarrow opens.

    TliError for a URI without a bucket (`s3://`), an unknown scheme, a `file://` URI that is not absolute, or
    a path that looks like a URI missing a slash (`s3:/bucket`). Returns the URI without trailing slashes.
    """
    match = _URI.fullmatch(text)
    if match is None:
        if _BROKEN_URI.match(text):
            raise TliError(f"{text!r} is neither a URI (scheme://bucket/...) nor a local folder name")
        return text
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        raise TliError(f"{text}: unknown URI scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    if scheme == "file":
        if not rest.startswith("/"):
            raise TliError(f"{text}: a file:// URI needs an absolute path (file:///path)")
        return f"file://{rest.rstrip('/') or '/'}"
    if not rest.split("/", 1)[0]:
        raise TliError(f"{text}: no bucket (write {scheme}://BUCKET/prefix)")
    return f"{scheme}://{rest.rstrip('/')}"


def check_names(path: str | Path) -> None:
    """TliError for a path component longer than a file system takes (ENAMETOOLONG), before anything is made."""
    for part in Path(path).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise TliError(f"cannot use the name {part[:40]!r}...: {size} bytes, above the {NAME_MAX} of a file name")


def table_bytes(table: pd.DataFrame, name: str) -> bytes:
    """`table` as the bytes of a .csv or .parquet file `name`."""
    suffix = Path(name).suffix
    if suffix not in TABLE_FORMATS:
        raise TliError(f"output {name} must end in {' or '.join(TABLE_FORMATS)}")
    buffer = io.BytesIO()
    if suffix == ".csv":
        table.to_csv(buffer, index=False)
    else:
        table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _readtable_bytes(data: bytes, name: str) -> pd.DataFrame:
    reader = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
    return reader(io.BytesIO(data))


class Folder:
    """A folder on a local or remote filesystem; names inside it are '/'-separated relative paths."""

    def __init__(self, location: str | Path):
        import pyarrow.fs

        text = check_location(str(location))
        if _URI.fullmatch(text):
            try:
                self.fs, self.path = pyarrow.fs.FileSystem.from_uri(text)
            except (ValueError, OSError) as error:  # pyarrow raises ArrowInvalid (a ValueError) for bad URIs
                raise TliError(f"cannot use {text}: {reason(error)}") from None
            self.uri = text
        else:
            self.fs, self.path = pyarrow.fs.LocalFileSystem(), str(Path(text).expanduser().resolve())
            self.uri = self.path
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Folder({self.uri!r})"

    def child(self, *names: str) -> Folder:
        return Folder("/".join([self.uri, *names]))

    def parents(self) -> list[Folder]:
        """The folders above this one, nearest first (a URI's up to its bucket)."""
        parts = self.path.rstrip("/").split("/")
        if self.local:
            return [Folder(str(parent)) for parent in Path(self.path).parents]
        scheme = self.uri.split("://", 1)[0]
        return [Folder(f"{scheme}://{'/'.join(parts[:end])}") for end in range(len(parts) - 1, 0, -1)]

    def relation(self, other: Folder) -> str | None:
        """How this folder touches `other`: "is", "lies inside" or "holds" it, or None when apart. Local paths
        are compared resolved (symbolic links followed, a hard-linked or bind-mounted copy by identity), object
        store paths by bucket and key.
        """
        if type(self.fs) is not type(other.fs):
            return None
        mine, theirs = PurePosixPath(self.path), PurePosixPath(other.path)
        if mine == theirs or (self.local and self.exists() and other.exists() and os.path.samefile(mine, theirs)):
            return "is"
        if theirs in mine.parents:
            return "lies inside"
        return "holds" if mine in theirs.parents else None

    def _full(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write `data` to `name` atomically; returns its URI. WriteError (path and reason) when the machine says no."""
        return self.write_files({name: data})[0]

    def write_files(self, contents: dict[str, bytes]) -> list[str]:
        """Write several files that belong together: on a local disk every one is written to a temporary file
        first and only then are all renamed into place, so a failure (disk full, a file size limit) leaves each
        file as it was. Returns their URIs; WriteError names the file and the reason.
        """
        temps: dict[str, str] = {}
        name = ""
        try:
            for name, data in contents.items():
                full = self._full(name)
                parent, base = full.rsplit("/", 1)
                check_names(base)
                self.fs.create_dir(parent, recursive=True)
                if not self.local:  # one PUT: the object appears whole
                    with self.fs.open_output_stream(full) as handle:
                        handle.write(data)
                    continue
                temps[full] = f"{parent}/.{base}.{secrets.token_hex(4)}.tmp"
                with open(temps[full], "xb") as handle:  # mode 0o666 minus the umask, like any new file
                    handle.write(data)
            for full, temp in temps.items():
                os.replace(temp, full)
        except (OSError, ValueError) as error:
            raise WriteError(f"{self.uri}/{name}", error) from None
        finally:
            for temp in temps.values():
                if os.path.lexists(temp):
                    os.unlink(temp)
        return [f"{self.uri}/{name}" for name in contents]

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._full(name)) as handle:
            return handle.read()

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._full(name)).type != pyarrow.fs.FileType.NotFound

    def is_file(self, name: str) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._full(name)).type == pyarrow.fs.FileType.File

    def names(self, sub: str = "") -> list[str]:
        """Names of the entries directly inside `sub` (files and folders), sorted; [] if it does not exist."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self._full(sub), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def delete(self, name: str) -> None:
        """Remove a file or a whole folder (no error when absent)."""
        import pyarrow.fs

        info = self.fs.get_file_info(self._full(name))
        if info.type == pyarrow.fs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type != pyarrow.fs.FileType.NotFound:
            self.fs.delete_file(info.path)

    def write_table(self, name: str, table: pd.DataFrame) -> str:
        return self.write_bytes(name, table_bytes(table, name))

    def read_table(self, name: str) -> pd.DataFrame:
        return _readtable_bytes(self.read_bytes(name), name)

    def read_parquet(self, name: str, columns: list[str] | None = None):
        """A Parquet file as a pyarrow Table: only those of `columns` it has, when given (all otherwise)."""
        import pyarrow.parquet as pq

        with self.fs.open_input_file(self._full(name)) as handle:
            file = pq.ParquetFile(handle)
            names = file.schema_arrow.names
            return file.read(columns=None if columns is None else [c for c in columns if c in names])

    def write_json(self, name: str, values: Any) -> str:
        return self.write_bytes(name, (json.dumps(values, indent=2, default=str) + "\n").encode())

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def check_writable(self) -> None:
        """TliError unless a file can be created (and removed) in this folder; leaves no folder it created."""
        probe = f".tli-write-probe-{secrets.token_hex(4)}"
        if self.local:
            check_names(self.path)
        created = [p for p in (Path(self.path), *Path(self.path).parents) if not p.exists()] if self.local else []
        try:
            self.write_bytes(probe, b"")
            self.delete(probe)
        except (OSError, ValueError) as error:
            raise TliError(f"cannot write to {self.uri}: {reason(error)}") from None
        finally:
            for folder in created:  # innermost first
                with contextlib.suppress(OSError):
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()


def reason(error: Exception) -> str:
    """The short reason of an OSError (or pyarrow's error), without the advice pyarrow appends."""
    text = getattr(error, "strerror", None) or str(error).splitlines()[0] or type(error).__name__
    return text.split(". ")[0].rstrip(".")  # pyarrow appends advice ("To create buckets, enable ...") we do not offer


# --- local outputs of the command line -----------------------------------------------------------


def check_output_file(path: Path, suffixes: tuple[str, ...] = TABLE_FORMATS, overwrite: bool = False) -> None:
    """TliError unless `path` (with one of `suffixes`) can be written, checked before any work is done; an
    existing file only with `overwrite` (an earlier result is never replaced without it).
    """
    check_names(path)
    if path.suffix not in suffixes:
        raise TliError(f"output {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise TliError(f"output {path} is a directory, not a file")
    if not overwrite and os.path.lexists(path):
        raise TliError(f"output {path} exists: pass --overwrite to replace it")
    _check_parent(path)
    Folder(path.parent).check_writable()


def check_output_dir(
    path: Path, overwrite: bool = False, what: str = "output folder", marker: str | None = None
) -> None:
    """TliError unless folder `path` can be written; an existing non-empty folder only with `overwrite`, and
    then only if it holds `marker` (the file that shows it is a folder of this kind, e.g. tli_config.json).
    """
    check_names(path)
    if path.exists() and not path.is_dir():
        raise TliError(f"{what} {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise TliError(f"{what} {path} exists and is not empty: pass --overwrite to replace it")
        if marker is not None and not (path / marker).is_file():
            raise TliError(f"{path} is not an {what} (no {marker}): --overwrite replaces only an {what}")
    _check_parent(path)
    Folder(path).check_writable()


def _check_parent(path: Path) -> None:
    """TliError when an ancestor of `path` is a file (nothing can be created below it)."""
    for ancestor in path.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise TliError(f"cannot write {path}: {ancestor} is a file, not a folder")
            return


def check_not_inputs(output: Path, inputs: dict[str, str | Path | None], replaced: bool = False) -> None:
    """TliError when writing `output` would touch an input (`inputs`: what it is -> its path): the output is an
    input (symbolic and hard links resolved), lies inside an input folder, or (`replaced`: a folder written whole
    or tidied) holds an input, under its own name or as a hard link.
    """
    check_names(output)
    target = Path(output).expanduser().resolve()
    for what, given in inputs.items():
        if given is None or not Path(given).expanduser().exists():
            continue
        source = Path(given).expanduser().resolve()
        if target == source or (target.exists() and os.path.samefile(target, source)):
            raise TliError(f"output {output} is the {what} {given}: choose another output")
        if source.is_dir() and source in target.parents:
            raise TliError(f"output {output} lies inside the {what} {given}: choose another output")
        if replaced and (target in source.parents or _holds_link(target, source)):
            raise TliError(f"output {output} holds the {what} {given}: choose an output folder apart from the inputs")


def _holds_link(folder: Path, source: Path, limit: int = 10_000) -> bool:
    """Whether `folder` holds a hard link of file `source` among its first `limit` files (symbolic links aside)."""
    if not (folder.is_dir() and source.is_file()):
        return False
    wanted = source.stat()
    paths = (os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
    for path in itertools.islice(paths, limit):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def write_folder(folder: Path, contents: dict[str, bytes]) -> Path:
    """Write `contents` (file name -> bytes) as folder `folder`, whole: into a temporary folder beside it, which
    then takes its place (an existing folder is set aside and removed only once the new one is in place). A
    failure leaves `folder` as it was; WriteError names the file and the reason.
    """
    check_names(folder.name)
    staged = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staged.mkdir()  # mode 0o777 minus the umask, like any new folder
        Folder(staged).write_files(contents)
        _move_into_place(staged, folder)
    except OSError as error:
        raise error if isinstance(error, WriteError) else WriteError(str(folder), error) from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # only left after a failure
    return folder


def _move_into_place(staged: Path, folder: Path) -> None:
    """Rename `staged` to `folder`; an existing non-empty `folder` is set aside first and restored on failure."""
    if not (folder.is_dir() and any(folder.iterdir())):
        staged.rename(folder)  # replaces an empty folder
        return
    old = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.old"
    folder.rename(old)
    try:
        staged.rename(folder)
    except OSError:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write `table` to a local `path` (.csv or .parquet), atomically."""
    path = Path(path)
    Folder(path.parent).write_table(path.name, table)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write `text` to a local `path`, atomically."""
    path = Path(path)
    Folder(path.parent).write_bytes(path.name, text.encode())
    return path


def provenance() -> dict[str, str]:
    """Library versions and the git commit of this checkout ('unknown' outside git)."""
    import importlib.metadata
    import subprocess

    from tli import DISTRIBUTION

    distributions = {"tli": DISTRIBUTION} | {name: name for name in ("torch", "transformers", "peft", "ray")}
    versions = {}
    for package, distribution in distributions.items():
        try:
            versions[f"version_{package}"] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version_{package}"] = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return versions | {"git_commit": commit or "unknown"}
