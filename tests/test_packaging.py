"""pyproject.toml's lower bounds are the versions `make test-lowest` verifies (constraints-lowest.txt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints-lowest.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_every_lower_bound_is_a_verified_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        name, version = re.fullmatch(r"([\w-]+)(?:\[[\w,]+\])?>=([\w.]+)", requirement).groups()
        bounds[name] = version
    assert bounds == _pins()


def test_the_quantization_extra_is_named_for_what_it_does():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "nf4" in extras and "cuda" not in extras


def test_the_distribution_has_a_name_of_its_own():
    """`tli` on the package index is an unrelated project: `pip install -U tli` must not be this one's name."""
    import tli

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name == tli.DISTRIBUTION != "tli"
