"""Files of results, on a local disk or an object store: atomic writes, output checks, provenance.

`Folder` wraps a pyarrow filesystem (a local path, or a URI such as ``s3://bucket/prefix`` or
``gs://...``; S3 honours the standard ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``). A write is atomic on every backend: on a local disk a temporary file is
renamed over the target, on an object store one PUT makes the object appear whole. Readers never see
half a file.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pandas as pd

from tli.errors import TliError

TABLE_FORMATS = (".csv", ".parquet")


def _table_bytes(table: pd.DataFrame, name: str) -> bytes:
    suffix = Path(name).suffix
    if suffix not in TABLE_FORMATS:
        raise TliError(f"output {name} must end in {' or '.join(TABLE_FORMATS)}")
    buffer = io.BytesIO()
    if suffix == ".csv":
        table.to_csv(buffer, index=False)
    else:
        table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _read_table_bytes(data: bytes, name: str) -> pd.DataFrame:
    reader = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
    return reader(io.BytesIO(data))


class Folder:
    """A folder on a local or remote filesystem; names inside it are '/'-separated relative paths."""

    def __init__(self, location: str | Path):
        import pyarrow.fs

        text = str(location)
        if "://" in text:
            try:
                self.fs, self.path = pyarrow.fs.FileSystem.from_uri(text)
            except (ValueError, OSError) as error:  # pyarrow raises ArrowInvalid (a ValueError) for bad URIs
                raise TliError(f"cannot use {text}: {str(error).splitlines()[0]}") from None
            self.uri = text.rstrip("/")
        else:
            self.fs, self.path = pyarrow.fs.LocalFileSystem(), str(Path(text).expanduser().resolve())
            self.uri = self.path
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Folder({self.uri!r})"

    def child(self, *names: str) -> Folder:
        return Folder("/".join([self.uri, *names]))

    def _full(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write `data` to `name` atomically; returns its URI."""
        full = self._full(name)
        parent = full.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if self.local:
            temp = f"{parent}/.{full.rsplit('/', 1)[1]}.{secrets.token_hex(4)}.tmp"
            try:
                with open(temp, "xb") as handle:  # mode 0o666 minus the umask, like any new file
                    handle.write(data)
                os.replace(temp, full)
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)
        else:
            with self.fs.open_output_stream(full) as handle:
                handle.write(data)
        return f"{self.uri}/{name}"

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._full(name)) as handle:
            return handle.read()

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._full(name)).type != pyarrow.fs.FileType.NotFound

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
        return self.write_bytes(name, _table_bytes(table, name))

    def read_table(self, name: str) -> pd.DataFrame:
        return _read_table_bytes(self.read_bytes(name), name)

    def write_json(self, name: str, values: Any) -> str:
        return self.write_bytes(name, (json.dumps(values, indent=2, default=str) + "\n").encode())

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def check_writable(self) -> None:
        """TliError unless a file can be created (and removed) in this folder; leaves no folder it created."""
        probe = f".tli-write-probe-{secrets.token_hex(4)}"
        created = [p for p in (Path(self.path), *Path(self.path).parents) if not p.exists()] if self.local else []
        try:
            self.write_bytes(probe, b"")
            self.delete(probe)
        except (OSError, ValueError) as error:
            raise TliError(f"cannot write to {self.uri}: {reason(error)}") from None
        finally:
            for folder in created:  # innermost first
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def reason(error: Exception) -> str:
    """The short reason of an OSError (or pyarrow's error), without the advice pyarrow appends."""
    text = getattr(error, "strerror", None) or str(error).splitlines()[0] or type(error).__name__
    return text.split(". ")[0].rstrip(".")  # pyarrow appends advice ("To create buckets, enable ...") we do not offer


# --- local outputs of the command line -----------------------------------------------------------


def check_output_file(path: Path, suffixes: tuple[str, ...] = TABLE_FORMATS) -> None:
    """TliError unless `path` (with one of `suffixes`) can be written, checked before any work is done."""
    if path.suffix not in suffixes:
        raise TliError(f"output {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise TliError(f"output {path} is a directory, not a file")
    _check_parent(path)
    Folder(path.parent).check_writable()


def check_output_dir(
    path: Path, overwrite: bool = False, what: str = "output folder", marker: str | None = None
) -> None:
    """TliError unless folder `path` can be written; an existing non-empty folder only with `overwrite`, and
    then only if it holds `marker` (the file that shows it is a folder of this kind, e.g. tli_config.json).
    """
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
