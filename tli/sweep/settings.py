"""One trial's settings, frozen: a `ModelConfig`, a `TrainConfig`, the evaluation fields and a `ProbeConfig`.

`TrialSettings.row()` is the flat dict of every setting (the columns of trials.parquet and the keys a
grid axis names); `trial_id` is a hash of that row, so a rerun recognises a trial it has stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable
from typing import Any

from tli import config as configs
from tli.config import MAX_LAYER, POOLING_MODES, ModelConfig, ProbeConfig, TrainConfig, setting
from tli.errors import TliError

_PARTS = {"model": ModelConfig, "train": TrainConfig, "probe": ProbeConfig}


@dataclasses.dataclass(frozen=True)
class TrialSettings:
    """Everything that defines one trial (defaults: the paper's hyperparameters, the author's evaluation)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    pooling_eval: str = setting(
        "mean_content",
        "pooling for evaluation (the author's code: mean_content; the paper as written: mean)",
        choices=POOLING_MODES,
    )
    heldout_category: str | None = setting(None, "category left out of training and evaluated as `heldout`")
    validation_fraction: float = setting(
        0.1,
        "share of the trained pairs held out (seeded, whole headwords) as the validation set that selection uses",
        minimum=0,
        maximum=0.5,
    )
    validation_seed: int = setting(
        0, "seed of the validation split (one split for every trial)", minimum=0, maximum=2**32 - 1
    )
    selection_layer: int | None = setting(
        None,
        "layer at which the validation objective is measured, the same for every trial",
        unset="L, the last layer",
        minimum=1,
        maximum=MAX_LAYER,
    )
    n_boot: int = configs.like(configs.EvalConfig, "n_boot")
    drift: bool = setting(True, "measure drift, KL(base || TLI) of next-token distributions")
    inputs_digest: str = setting("", "hash of the experiment's pairs, evaluation pairs and drift samples")
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)  # the translation probe (tli.probe)

    def __post_init__(self):
        configs.check(self)

    def row(self) -> dict[str, Any]:
        """Every setting as one flat dict (target_modules comma-joined), with `trial_id` first."""
        flat = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flat |= dataclasses.asdict(value) if f.name in _PARTS else {f.name: value}
        flat["target_modules"] = ",".join(flat["target_modules"])
        return {"trial_id": _digest(flat)} | flat

    @property
    def trial_id(self) -> str:
        return self.row()["trial_id"]

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrialSettings:
        """Build from flat settings (the keys of `row()`); an unknown key is a TliError."""
        known = setting_names()
        unknown = sorted(set(values) - set(known) - {"trial_id"})
        if unknown:
            raise TliError(f"unknown trial setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values = {k: plain(v) for k, v in values.items() if k != "trial_id"}
        if isinstance(values.get("target_modules"), str):
            values["target_modules"] = tuple(values["target_modules"].split(","))
        parts = {
            name: configs.from_dict(part, {k: v for k, v in values.items() if k in _names(part)})
            for name, part in _PARTS.items()
        }
        own = {k: v for k, v in values.items() if k in _names(cls)}
        return configs.from_dict(cls, own | parts)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrialSettings:
        """The settings stored in a trial row (its outcome columns are ignored)."""
        return cls.from_flat({k: v for k, v in row.items() if k in setting_names()})

    def replace(self, **changes: Any) -> TrialSettings:
        """A copy with flat settings changed; a new `lora_rank` without `lora_alpha` keeps alpha = 2 x rank."""
        flat = self.row()
        if "lora_rank" in changes and "lora_alpha" not in changes:
            flat["lora_alpha"] = None
        return TrialSettings.from_flat(flat | changes)


def _names(cls: type) -> list[str]:
    """The flat setting names of one part (TrialSettings' own: all but the parts it holds)."""
    return [f.name for f in dataclasses.fields(cls) if cls is not TrialSettings or f.name not in _PARTS]


def setting_names() -> list[str]:
    """The flat setting names: model, train and evaluation fields (the columns of `TrialSettings.row`)."""
    return [name for part in _PARTS.values() for name in _names(part)] + _names(TrialSettings)


def plain(value: Any) -> Any:
    """A numpy/pandas scalar as the Python value it holds (Parquet rows carry numpy types); NaN -> None."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, str)):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def _digest(flat: dict[str, Any]) -> str:
    """sha1 of the settings as sorted JSON, first 12 hex digits."""
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- grids --------------------------------------------------------------------------------------

Axis = list[Any]  # values of one setting, or dicts that set several settings at once (e.g. a protocol)


def expand_grid(grid: dict[str, Axis], base: TrialSettings) -> list[TrialSettings]:
    """The cross product of the axes applied to `base`, duplicates removed, in grid order."""
    axes = [[value if isinstance(value, dict) else {name: value} for value in values] for name, values in grid.items()]
    trials: dict[str, TrialSettings] = {}
    for combination in itertools.product(*axes):
        settings = base.replace(**{k: v for part in combination for k, v in part.items()})
        trials.setdefault(settings.trial_id, settings)
    return list(trials.values())


def swept_names(grid: dict[str, Axis]) -> list[str]:
    """The flat settings an axis of `grid` sets (a dict-valued axis sets each key of any of its values: a protocol
    that alone sets `translations` sweeps it).
    """
    names: list[str] = []
    for name, values in grid.items():
        values = list(values) if isinstance(values, (list, tuple)) else []
        dicts = [value for value in values if isinstance(value, dict)]
        names.extend([key for value in dicts for key in value] if dicts else [name])
    return list(dict.fromkeys(names))


def cut_for_smoke_test(grid: dict[str, Axis], values_per_axis: int = 2) -> dict[str, Axis]:
    """Per axis, `values_per_axis` values in the axis' order: the paper's default (`TrialSettings()`) where the axis
    has it, then the first others; one seed. So a smoke test's report holds the condition fixed in advance.
    """
    defaults = TrialSettings().row()

    def is_default(name: str, value: Any) -> bool:
        return all(
            k in defaults and defaults[k] == v for k, v in (value if isinstance(value, dict) else {name: value}).items()
        )

    cut = {}
    for name, values in grid.items():
        values = list(values)
        if name == "seed":
            cut[name] = values[:1]
            continue
        default = [i for i, value in enumerate(values) if is_default(name, value)][:1]
        others = [i for i in range(len(values)) if i not in default][: values_per_axis - len(default)]
        cut[name] = [values[i] for i in sorted(default + others)]
    return cut


def check_axes(grid: dict[str, Axis]) -> None:
    """TliError for an axis that names no setting or has no value (before Ray starts)."""
    known = set(setting_names())
    for name, values in grid.items():
        if not isinstance(values, Iterable) or not list(values):
            raise TliError(f"axis {name!r} has no values")
        keys = set().union(*(v.keys() if isinstance(v, dict) else {name} for v in values))
        if keys - known:
            raise TliError(
                f"unknown trial setting(s) {', '.join(sorted(keys - known))}; known: {', '.join(sorted(known))}"
            )
