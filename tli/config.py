"""Strict dataclass configs and the command lines generated from them.

Every setting is declared once, with `setting(...)`: its default, its help, and its allowed values
(`choices`, or a numeric range `minimum`/`maximum`); a config that carries another's setting takes it
with `like(...)`. The same declaration checks a config built in
Python (`check(config)`, called by each config's ``__post_init__``), builds its command-line flag
(`add_arguments`, checked at parse time) and reads it back from JSON (`from_dict`: unknown keys and
wrong types are errors, never silently ignored).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tli.errors import TliError

C = TypeVar("C")


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    pattern: str | None = None,
    flags: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
    unset: str | None = None,
) -> Any:
    """A dataclass field with its help and allowed values.

    minimum/maximum are inclusive bounds, above/below exclusive ones; `choices` lists the allowed values
    (for a tuple field: of each item); `pattern` is a regular expression a string must match in full,
    and `help` then starts by naming what it is ("a device: ..."). `flags` are extra option strings (e.g. an
    older name); `parse` converts one command-line string (default: from the field's type); `unset` says
    what the default means where its value does not (None: "the paper's pairs").
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "pattern": pattern,
        "flags": tuple(flags),
        "parse": parse,
        "unset": unset,
    }
    return dataclasses.field(default=default, metadata=metadata)


def like(config: type, name: str, also: str = "") -> Any:
    """A field declared as `config`'s field `name` (default, help, allowed values), its help followed by `also`:
    one declaration for a setting that two configs carry (a trial's and the sweep's flags).
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    if name not in fields:
        raise TypeError(f"{config.__name__} has no setting {name!r}")
    field = fields[name]
    metadata = {**field.metadata, "help": field.metadata["help"] + also}
    if field.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=field.default_factory, metadata=metadata)
    return dataclasses.field(default=field.default, metadata=metadata)


_BOUNDS = (
    ("minimum", ">=", lambda x, b: x >= b),
    ("above", ">", lambda x, b: x > b),
    ("maximum", "<=", lambda x, b: x <= b),
    ("below", "<", lambda x, b: x < b),
)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(meta: dict) -> str:
    return " and ".join(f"{sign} {_number(meta[key])}" for key, sign, _ in _BOUNDS if meta.get(key) is not None)


def value_problem(value: Any, meta: dict) -> str | None:
    """Why `value` breaks the field's declared choices or range (None when it is allowed)."""
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if meta.get("choices") is not None and item not in meta["choices"]:
            return f"{item!r} is not one of {', '.join(map(str, meta['choices']))}"
        if meta.get("pattern") and isinstance(item, str) and not re.fullmatch(meta["pattern"], item):
            return f"{item!r} is not {meta['help']}"
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            inside = all(meta.get(key) is None or holds(item, meta[key]) for key, _, holds in _BOUNDS)
            if math.isnan(item) or not inside:
                return f"must be {_range_text(meta)}, got {_number(item)}"
    return None


def check(config: Any) -> None:
    """TliError naming the first field of `config` whose value breaks its declared choices or range."""
    for f in dataclasses.fields(config):
        problem = value_problem(getattr(config, f.name), f.metadata)
        if problem:
            raise TliError(f"{f.name} {problem}" if problem.startswith("must") else f"{f.name}: {problem}")


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return `value` coerced to `annotation` where lossless (int -> float, list -> tuple), else raise TliError."""
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
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return from_dict(annotation, value)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise TliError(f"config field {name!r} must be {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build dataclass `cls` from `values` (nested configs as dicts); unknown keys or wrong types raise TliError."""
    if not isinstance(values, dict):
        raise TliError(f"{cls.__name__} must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TliError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {name: _check_type(name, value, hints[name]) for name, value in values.items()}
    return cls(**checked)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-ready values (tuples as lists, nested configs as dicts)."""

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# --- command lines -------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (and a --help hint) instead of the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        tokens = list(sys.argv[1:] if args is None else args)
        self._refuse_repeats(tokens)
        return super().parse_known_args(tokens, namespace)

    def _refuse_repeats(self, tokens: list[str]) -> None:
        """A usage error for a setting given twice (`--epochs 2 --epochs 3`, `--rank 4 --lora-rank 8`, `--drift
        --no-drift`): argparse would silently keep the last. A subcommand's own flags are its parser's to check.
        """
        commands = {
            name
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        }
        seen: dict[str, str] = {}
        for token in tokens:
            if token == "--" or token in commands:
                return
            if not token.startswith("-") or token == "-":
                continue
            name = token.split("=", 1)[0]  # a long option may be abbreviated; a short one (-v) or a number may not
            long = name.startswith("--")
            matches = {a for option, a in self._option_string_actions.items() if long and option.startswith(name)}
            action = self._option_string_actions.get(name) or (matches.pop() if len(matches) == 1 else None)
            if action is None or action.dest in ("help", "version"):
                continue
            if action.dest in seen:
                first = seen[action.dest]
                self.error(
                    f"{name} given twice: give it once"
                    if first == name
                    else f"{first} and {name} both given: they set one setting, give one"
                )
            seen[action.dest] = name

    def parse_or_exit_code(self, args: Sequence[str] | None) -> argparse.Namespace | int:
        """The parsed flags, or the exit code of --help, --version or a usage error (already printed)."""
        try:
            return self.parse_args(args)
        except SystemExit as exit_request:
            return exit_request.code if isinstance(exit_request.code, int) else 2


MAX_LIST_ITEMS = 10_000  # values one list flag may hold (a range such as 0-4294967295 is refused, not expanded)


def parse_int_list(text: str, meta: dict | None = None) -> tuple[int, ...]:
    """'0-3,7' -> (0, 1, 2, 3, 7); argparse.ArgumentTypeError for anything else (a reversed range, a repeat, an
    end outside the field's range in `meta`, more than MAX_LIST_ITEMS values), each checked before a range is
    expanded.
    """
    _check_count(text)
    values: dict[int, None] = {}
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-") if not part.startswith("-") else (part, "", "")
        try:
            start, stop = int(low), int(high) if dash else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as integers (e.g. 0-3,7)") from None
        if stop < start:
            raise argparse.ArgumentTypeError(f"reversed range {part!r} in {text!r} (write {stop}-{start})")
        problem = value_problem(start, meta or {}) or value_problem(stop, meta or {})
        if problem:
            raise argparse.ArgumentTypeError(problem)
        if len(values) + stop - start + 1 > MAX_LIST_ITEMS:
            raise argparse.ArgumentTypeError(f"{text!r} holds more than {MAX_LIST_ITEMS} values")
        repeated = [v for v in range(start, stop + 1) if v in values]
        if repeated:
            raise argparse.ArgumentTypeError(f"{repeated[0]} given twice in {text!r}")
        values.update(dict.fromkeys(range(start, stop + 1)))
    return tuple(values)


def _check_count(text: str) -> None:
    """ArgumentTypeError for a list of more than MAX_LIST_ITEMS items, before any item is read."""
    if text.count(",") >= MAX_LIST_ITEMS:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}... holds more than {MAX_LIST_ITEMS} values")


def parse_float_list(text: str) -> tuple[float, ...]:
    """'0.2,0.4' -> (0.2, 0.4); argparse.ArgumentTypeError for anything else (more than MAX_LIST_ITEMS values too)."""
    _check_count(text)
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as numbers (e.g. 0.2,0.4)") from None
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a value is given twice in {text!r}")
    return values


def parse_str_list(text: str) -> tuple[str, ...]:
    """'q_proj,v_proj' -> ('q_proj', 'v_proj'); empty items, repeats and more than MAX_LIST_ITEMS items are errors."""
    _check_count(text)
    values = tuple(part.strip() for part in text.split(","))
    if not all(values):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}")
    repeated = [value for value, count in collections.Counter(values).items() if count > 1]
    if repeated:
        raise argparse.ArgumentTypeError(f"{repeated[0]!r} given twice in {text!r}")
    return values


def _scalar_parser(kind: Any) -> Callable[[str], Any]:
    """String -> value for an int, float or str field (None for an optional field given as 'none')."""
    options = (
        [k for k in typing.get_args(kind) if k is not type(None)]
        if typing.get_origin(kind) in (typing.Union, types.UnionType)
        else [kind]
    )
    base = options[0]

    def convert(text: str) -> Any:
        if base is str:
            return text
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as {base.__name__}") from None

    return convert


def _checked(convert: Callable[[str], Any], meta: dict) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = convert(text)
        problem = value_problem(value, meta)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _flag_help(f: dataclasses.Field, default: Any) -> str:
    meta = f.metadata
    allowed = f"; {_range_text(meta)}" if _range_text(meta) else ""
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    shown = "none" if shown in (None, "") else shown
    return f"{meta.get('help', '')} (default: {meta.get('unset') or shown}{allowed})".replace("%", "%%")


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = (), defaults: dict[str, Any] | None = None
) -> None:
    """One --flag per field of `cls` (but `exclude`): its help, its default, its choices and range checked at parse."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or dataclasses.is_dataclass(hints[f.name]):
            continue
        default = (defaults or {}).get(f.name, f.default)
        names = ["--" + f.name.replace("_", "-"), *f.metadata.get("flags", ())]
        kind, meta = hints[f.name], f.metadata
        help_text = _flag_help(f, default)
        if kind is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            convert = meta.get("parse") or {
                int: functools.partial(parse_int_list, meta=meta),
                float: parse_float_list,
            }.get(item, parse_str_list)
            metavar = None
        else:
            convert = meta.get("parse") or _scalar_parser(kind)
            metavar = "{" + ",".join(map(str, meta["choices"])) + "}" if meta.get("choices") else None
        parser.add_argument(
            *names, dest=f.name, type=_checked(convert, meta), default=default, metavar=metavar, help=help_text
        )


def from_namespace(cls: type[C], namespace: argparse.Namespace, **values: Any) -> C:
    """The dataclass `cls` from the parsed flags that add_arguments made for it (`values` fill the rest)."""
    parsed = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    return from_dict(cls, parsed | values)


# --- the configs of each stage (each checked on construction, each reproducible from its JSON) ----

POOLING_MODES = ("mean", "mean_content", "mean_skip_first", "last")  # see tli.pooling
LOSSES = ("triplet", "infonce")  # see tli.loss
TRANSLATIONS = ("true", "deranged")  # see tli.data.derange
MAX_LAYER = 1024  # a bound above any real model's depth; the model's own range is checked once it is loaded


def layer_name(layer: int, n_layers: int) -> str:
    """Human name of hidden_states[layer]: 'embedding', 'block k' or 'block L + final norm'."""
    if layer == 0:
        return "embedding"
    return f"block {layer} + final norm" if layer == n_layers else f"block {layer}"


def check_layer(layer: int, n_layers: int) -> None:
    """TliError unless 0 <= layer <= n_layers (hidden_states[0] is the embedding output, [k] block k's)."""
    if not 0 <= layer <= n_layers:
        raise TliError(f"layer {layer} is out of range: this model has layers 0..{n_layers}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which causal LM to load and how. Frozen: a worker's cache key."""

    model: str = setting(
        "smollm2-135m", "embedded alias (smollm2-135m, gemma3-270m), a local model folder, or an already-cached hub id"
    )
    device: str = setting(
        "auto", "a device: auto (cuda if available, else cpu), cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda(:\d+)?"
    )
    dtype: str = setting(
        "auto",
        "auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16 or float16",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    quantization: str = setting(
        "none",
        "none; nf4 (4-bit NF4 via bitsandbytes: the paper's pilot scan and training); or fp4 (load_in_4bit with "
        "bitsandbytes' default type, FP4, and its default float32 compute: the paper's Table 1 evaluation, which also "
        "merged the adapter into the 4-bit weights, `tli evaluate --merge-adapter`, and kept the other modules in "
        "fp16, --dtype float16). Both run on CUDA and on the CPU (bitsandbytes >= 0.50; the test suite runs them on "
        "the CPU only)",
        choices=("none", "nf4", "fp4"),
    )

    def __post_init__(self):
        check(self)


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """`tli scan`: the pre-TLI layer scan."""

    pooling: str = setting("mean", "pooling mode (the paper's scan: mean)", choices=POOLING_MODES)
    layers: tuple[int, ...] = setting((), "layers to scan, e.g. 0,2,10", unset="all 0..L", minimum=0, maximum=MAX_LAYER)
    batch_size: int = setting(64, "words per forward pass", minimum=1, maximum=4096)
    csls_k: int = setting(10, "neighbourhood size of CSLS retrieval", minimum=1, maximum=1000)

    def __post_init__(self):
        check(self)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`tli train`: LoRA trained at one target layer, triplet-margin loss by default (defaults: the paper's)."""

    target_layer: int = setting(
        2,
        "hidden_states index whose embeddings are trained (1..L; 0, the embedding output, has no block below it)",
        minimum=1,
        maximum=MAX_LAYER,
    )
    epochs: int = setting(5, "passes over the training pairs", minimum=1, maximum=1000)
    batch_size: int = setting(
        8,
        "pairs per step; each pair's negatives are the other pairs of its batch, so at least 2",
        minimum=2,
        maximum=4096,
    )
    lr: float = setting(2e-4, "AdamW learning rate", above=0, below=1)
    warmup_steps: int = setting(50, "linear warm-up steps, then linear decay to 0", minimum=0, maximum=10**6)
    lora_rank: int = setting(16, "LoRA rank r", minimum=1, maximum=4096, flags=("--rank",))
    lora_alpha: int | None = setting(
        None,
        "LoRA alpha, scale alpha/r",
        unset="2 x rank, the paper's 32 for r=16",
        minimum=1,
        maximum=10**5,
        flags=("--alpha",),
    )
    lora_dropout: float = setting(0.05, "LoRA dropout", minimum=0, below=1, flags=("--dropout",))
    target_modules: tuple[str, ...] = setting(("q_proj", "v_proj"), "LoRA target modules of each block")
    loss: str = setting(
        "triplet",
        "training objective: triplet (the paper's: hinge on the hardest in-batch negative, `margin`) or infonce "
        "(symmetric InfoNCE over every in-batch negative, `temperature`); both on the pooled target-layer embeddings, "
        "false negatives masked as `mask_false_negatives` says",
        choices=LOSSES,
    )
    margin: float = setting(0.4, "triplet margin (cosine units; the triplet loss only)", minimum=0, maximum=2)
    temperature: float = setting(
        0.05, "InfoNCE temperature: logits are cosines / temperature (the infonce loss only)", above=0, maximum=10
    )
    translations: str = setting(
        "true",
        "what the Swahili words are trained towards: true (their translations) or deranged (the shuffled control: "
        "the same words with the English column permuted, seeded by `seed`, no Swahili word paired with any of its "
        "own glosses; evaluation still scores the true pairs)",
        choices=TRANSLATIONS,
    )
    pooling_train: str = setting(
        "mean", "pooling for training (the paper: mean, BOS included)", choices=POOLING_MODES, flags=("--pooling",)
    )
    seed: int = setting(0, "seeds LoRA initialisation, dropout and shuffling", minimum=0, maximum=2**32 - 1)
    mask_false_negatives: bool = setting(
        True, "exclude in-batch negatives that share the Swahili or the English word (the paper does not)"
    )
    full_forward: bool = setting(
        False,
        "run every block, LoRA on all of them (verification; slower): the same losses and gradients at any dropout",
    )
    deterministic: bool = setting(
        False,
        "on CUDA, deterministic kernels (torch.use_deterministic_algorithms; slower): the same seed then gives the "
        "same numbers on the same GPU and software; CPU runs are deterministic anyway",
    )

    def __post_init__(self):
        check(self)
        if not self.target_modules:
            raise TliError("no LoRA target modules given")
        if self.lora_alpha is None:  # resolved here, so a stored config always names its alpha
            object.__setattr__(self, "lora_alpha", 2 * self.lora_rank)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`tli evaluate`: how TLI's effect is measured."""

    pooling: str = setting(
        "mean_content", "pooling for evaluation (the author's code: mean_content)", choices=POOLING_MODES
    )
    layers: tuple[int, ...] = setting(
        (), "evaluation layers", unset="the target layer and L", minimum=0, maximum=MAX_LAYER
    )
    batch_size: int = like(ScanConfig, "batch_size")
    n_boot: int = setting(10_000, "bootstrap resamples for confidence intervals", minimum=100, maximum=10**7)
    seed: int = setting(0, "bootstrap seed", minimum=0, maximum=2**32 - 1)
    csls_k: int = like(ScanConfig, "csls_k")
    merge_adapter: bool = setting(
        False,
        "merge the adapter into the base weights before the post-TLI pass (PEFT's merge_and_unload; 4-bit weights are "
        "requantised, so a LoRA change below the 4-bit step is lost, as in the paper's Table 1 evaluation); the "
        "pre-TLI pass runs on the base model before the merge",
    )

    def __post_init__(self):
        check(self)


PROBE_SHOTS = 8  # example pairs `tli.probe.SHOTS` holds (a test checks it): the most a prompt can show


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """The translation probe (`tli.probe`): few-shot word translation both ways, before and after TLI."""

    translation_probe: bool = setting(
        True,
        "run the translation probe: each word of every set translated Swahili->English and English->Swahili by a "
        "few-shot prompt and greedy decoding, with the gold translation's log-probability and rank, before and after",
    )
    probe_pairs: int = setting(
        40,
        "pairs probed per set: a fixed sample (the pairs with the smallest hash of their words, the same in every "
        "trial and set), 0 for every pair",
        minimum=0,
        maximum=10**7,
    )
    probe_shots: int = setting(
        4,
        "example pairs in the prompt (never scored: rows sharing a word with them are left out)",
        minimum=0,
        maximum=PROBE_SHOTS,
    )
    probe_max_new_tokens: int = setting(
        16,
        "most tokens decoded per answer (a batch stops at a newline or at its longest gloss plus the newline)",
        minimum=1,
        maximum=256,
    )
    probe_distractors: int = setting(
        9,
        "non-gloss words of the pool each gold translation is ranked against by teacher-forced log-probability "
        "(MRR; a fixed seeded sample per direction: the whole pool would cost one forward pass per candidate)",
        minimum=1,
        maximum=10**5,
    )

    def __post_init__(self):
        check(self)
