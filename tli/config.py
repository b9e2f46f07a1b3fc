"""Strict dataclass configs: unknown keys and wrong types are errors, never silently ignored."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from tli.errors import TliError

C = TypeVar("C")


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return `value` coerced to `annotation` where lossless (int -> float), else raise TliError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except TliError as error:
                errors.append(str(error))
        raise TliError(errors[0])
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TliError(f"config field {name!r} must be a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        return tuple(_check_type(name, item, item_type) for item in value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise TliError(f"config field {name!r} must be {annotation.__name__}, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise TliError(f"config field {name!r} must be {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build dataclass `cls` from `values`; unknown keys or wrongly typed values raise TliError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TliError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {name: _check_type(name, value, hints[name]) for name, value in values.items()}
    return cls(**checked)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a plain dict (tuples as lists), ready for JSON or a Parquet row."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def parse_int_list(text: str) -> tuple[int, ...]:
    """'0-3,7' -> (0, 1, 2, 3, 7); argparse.ArgumentTypeError (a usage error in a CLI) for anything else."""
    values: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            values.extend(range(int(low), int(high) + 1) if high else [int(low)])
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as integers (e.g. 0-3,7)")
    return tuple(values)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per dataclass field, its help from the field's metadata, its default from the class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            convert = parse_int_list if item is int else (lambda s: tuple(filter(None, s.split(","))))
            parser.add_argument(flag, type=convert, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def from_namespace(cls: type[C], namespace: argparse.Namespace) -> C:
    """The dataclass `cls` from the parsed flags that add_arguments made for it."""
    return from_dict(cls, {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})
