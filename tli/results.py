"""Result files: tables written atomically (temp file + rename) as CSV or Parquet by extension."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from tli.errors import TliError

TABLE_FORMATS = (".csv", ".parquet")
_UMASK = os.umask(0)  # read once: changing the umask later would race with other threads
os.umask(_UMASK)


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write `table` to `path` (.csv or .parquet), atomically: readers never see half a file."""
    suffix = Path(path).suffix
    if suffix not in TABLE_FORMATS:
        raise TliError(f"output {path} must end in {' or '.join(TABLE_FORMATS)}")
    if suffix == ".csv":
        return _atomic_write(Path(path), lambda temp: table.to_csv(temp, index=False))
    return _atomic_write(Path(path), lambda temp: table.to_parquet(temp, index=False))


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def write_text(text: str, path: str | Path) -> Path:
    """Write `text` to `path`, atomically."""
    return _atomic_write(Path(path), lambda temp: temp.write_text(text))


def write_json(values: dict[str, Any], path: str | Path) -> Path:
    """Write `values` as indented JSON, atomically."""
    return write_text(json.dumps(values, indent=2, default=str) + "\n", path)


def provenance() -> dict[str, str]:
    """Library versions and the git commit of this checkout ('unknown' outside git)."""
    import importlib.metadata
    import subprocess

    versions = {}
    for package in ("tli", "torch", "transformers", "peft", "ray"):
        try:
            versions[f"version_{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version_{package}"] = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return versions | {"git_commit": commit or "unknown"}
