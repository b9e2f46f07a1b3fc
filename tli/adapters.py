"""Adapter folders, as `tli train` writes them and `tli evaluate` reads them.

A folder holds PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``, tli's
``tli_config.json`` (section "model": the base model's settings, `models.describe`; section
"train": the TrainConfig) and tables such as ``train_log.csv``. It is written whole or not at all
(a temporary folder beside it, then a rename), read as safetensors only, and checked file by file,
then against the base model, before PEFT loads it from the local folder: nothing comes from a hub.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from tli import config as configs
from tli import files, models, surgery
from tli.config import ModelConfig, TrainConfig
from tli.errors import TliError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's
PICKLED_WEIGHTS = "adapter_model.bin"  # PEFT's pickle format: refused
TLI_CONFIG = "tli_config.json"
MODEL_CARD = "README.md"  # Hugging Face's model card
LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
REQUIRED_TRAIN_FIELDS = ("target_layer", "lora_rank", "lora_alpha", "target_modules")  # what loading relies on
# What train.attach_lora leaves at PEFT's defaults (a setting this PEFT version lacks is not compared):
TLI_LORA_SETTINGS = {
    "use_dora": False,
    "use_rslora": False,
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layer_replication": None,
}


@dataclasses.dataclass
class _Adapter:
    """A checked adapter folder."""

    stored: dict[str, Any]  # tli_config.json
    lora: LoraConfig  # adapter_config.json
    modules: dict[str, tuple[int, int]]  # LoRA'd module of the base model -> (in_features, out_features)


# --- writing ------------------------------------------------------------------------------------


def adapter_files(peft_model: PeftModel, stored: dict[str, Any]) -> dict[str, bytes]:
    """An adapter folder as {file name: contents}: PEFT's two files, `stored` as tli_config.json, a model card.

    adapter_config.json names the base model as the user gave it (`stored["model"]["model"]`: an embedded
    alias, a hub id or a folder, never the cache folder it resolved to) with task_type CAUSAL_LM, as
    Hugging Face tools expect; README.md is the model card (`model_card`).
    """
    with tempfile.TemporaryDirectory(prefix="tli-adapter-") as scratch:
        # save_embedding_layers=False: tli never trains embeddings, and "auto" may ask the hub about the base model
        peft_model.save_pretrained(scratch, safe_serialization=True, save_embedding_layers=False)
        contents = {name: (Path(scratch) / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    peft_config = json.loads(contents[ADAPTER_CONFIG])
    peft_config |= {"base_model_name_or_path": stored["model"]["model"], "task_type": "CAUSAL_LM"}
    return contents | {
        ADAPTER_CONFIG: (json.dumps(peft_config, indent=2, sort_keys=True) + "\n").encode(),
        TLI_CONFIG: (json.dumps(stored, indent=2, default=str) + "\n").encode(),
        MODEL_CARD: model_card(stored).encode(),
    }


def model_card(stored: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md) of an adapter from its tli_config.json `stored`.

    YAML front matter (`base_model` only for a hub id, `library_name: peft`, tags, languages), then the
    base model, the training settings, the training data, the metrics in `stored["metrics"]`, the tli
    version and commit that wrote it, and how to load it (for an embedded alias, from tli's converted folder).
    """
    model, train = stored["model"]["model"], stored["train"]
    hub_id = models.looks_like_hub_id(model) and not Path(model).expanduser().exists()
    front = ["---", *([f"base_model: {model}"] if hub_id else []), "library_name: peft"]
    front += ["pipeline_tag: text-generation"]
    front += ["tags:", "  - lora", "  - tli", "  - targeted-lexical-injection"]
    front += ["language:", "  - sw", "  - en", "---"]
    settings = "\n".join(f"| `{key}` | `{value}` |" for key, value in sorted(train.items()))
    metrics = "\n".join(f"| `{key}` | {value:.6g} |" for key, value in stored.get("metrics", {}).items())
    load = f"tli evaluate --adapter THIS_FOLDER --model {model}"
    # an embedded alias is no hub id: transformers loads the folder tli converted it into
    base = f'tli.models.model_location("{model}")' if model in models.EMBEDDED_MODELS else f'"{model}"'
    peft = f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base}), "THIS_FOLDER")'
    lines = [
        *front,
        "",
        f"# TLI LoRA adapter of {model}",
        "",
        "A LoRA adapter trained by [tli](https://arxiv.org/abs/2506.15415) (Targeted Lexical Injection): a "
        f"triplet-margin loss on the pooled embeddings of decoder block {train['target_layer']} "
        "(`hidden_states` index) of Swahili-English word pairs.",
        "",
        f"- Base model: `{model}` (quantization {stored['model'].get('quantization', 'none')})",
        f"- Training data: {stored.get('n_pairs', '?')} pairs from `{Path(stored.get('pairs', '?')).name}`",
        f"- Written by tli {stored.get('version_tli', 'unknown')}, commit {stored.get('git_commit', 'unknown')}",
        f"- Load: `{load}`, or with PEFT: `{peft}`",
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "|---|---|",
        settings,
    ]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|", metrics]
    return "\n".join(lines) + "\n"


def save_adapter(
    peft_model: PeftModel,
    folder: str | Path,
    stored: dict[str, Any],
    tables: dict[str, pd.DataFrame],
    overwrite: bool = False,
) -> Path:
    """Write the adapter, `stored` as tli_config.json and each table (by file name) as folder `folder`.

    Everything is written into a temporary folder beside `folder`, which then takes its place (an
    existing non-empty `folder` only with `overwrite`, replaced whole): a failure leaves nothing behind.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TliError(f"adapter folder {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise TliError(f"adapter folder {folder} exists and is not empty: pass --overwrite to replace it")
    contents = adapter_files(peft_model, stored)
    contents |= {name: files.table_bytes(table, name) for name, table in tables.items()}
    return files.write_folder(folder, contents)


# --- reading and checking -----------------------------------------------------------------------


def training_record(pairs_file: str | Path, rows: pd.DataFrame) -> dict[str, Any]:
    """What tli_config.json records of an adapter's training pairs: their file (absolute), count and words."""
    return {
        "pairs": str(Path(pairs_file).expanduser().resolve()),
        "n_pairs": len(rows),
        "train_pairs": [[sw, en] for sw, en in zip(rows["swahili"], rows["english"])],
    }


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """tli_config.json of adapter folder `folder`, once every file of the folder is checked (no model loaded)."""
    return _read(Path(folder)).stored


def trained_on(stored: dict[str, Any]) -> str:
    """The base model of an adapter (its checked tli_config.json) as a --model value."""
    return stored["model"].get("model_resolved") or stored["model"]["model"]


def _read(folder: Path) -> _Adapter:
    if not folder.exists():
        raise TliError(f"adapter folder {folder} does not exist")
    if not folder.is_dir():
        raise TliError(f"adapter {folder} is a file, not a folder written by `tli train`")
    if not (folder / TLI_CONFIG).exists():
        raise TliError(f"{folder} is not an adapter folder written by `tli train`: no {TLI_CONFIG}")
    stored = models.read_json(folder / TLI_CONFIG)
    train = _check_stored(folder / TLI_CONFIG, stored)
    lora = _lora_config(folder, train)
    return _Adapter(stored, lora, _lora_modules(folder, lora))


def _check_stored(path: Path, stored: dict[str, Any]) -> TrainConfig:
    """The TrainConfig in tli_config.json, once both of its sections are checked."""
    for section in ("model", "train"):
        if section not in stored:
            raise TliError(f"{path} has no {section!r} section")
        if not isinstance(stored[section], dict):
            raise TliError(f"{path}: section {section!r} must be a JSON object")
    model = stored["model"]
    if not isinstance(model.get("model"), str) or not model["model"]:
        raise TliError(f"{path}: section 'model' names no model")
    if not isinstance(model.get("model_resolved", ""), str):
        raise TliError(f"{path}: section 'model': model_resolved must be a string")
    missing = [name for name in REQUIRED_TRAIN_FIELDS if name not in stored["train"]]
    if missing:
        raise TliError(f"{path}: section 'train' lacks {', '.join(missing)}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        configs.from_dict(ModelConfig, {key: value for key, value in model.items() if key in names})
    except TliError as error:
        raise TliError(f"{path}, section 'model': {error}") from None
    try:
        return configs.from_dict(TrainConfig, stored["train"])
    except TliError as error:
        raise TliError(f"{path}, section 'train': {error}") from None


def _lora_config(folder: Path, train: TrainConfig) -> LoraConfig:
    """adapter_config.json, checked to be the LoRA config train.attach_lora makes for `train`."""
    path = folder / ADAPTER_CONFIG
    if not path.exists():
        raise TliError(f"{folder} has no {ADAPTER_CONFIG}: not a complete adapter folder")
    values = models.read_json(path)
    if values.get("peft_type") != "LORA":
        raise TliError(f"{path}: peft_type is {values.get('peft_type')!r}, not LORA")
    try:
        lora = LoraConfig.from_peft_type(**values)
    except (TypeError, ValueError, KeyError) as error:
        raise TliError(f"{path} is not a valid LoRA config: {models.error_line(error)}") from None
    if not isinstance(lora, LoraConfig):
        raise TliError(f"{path} is not a LoRA config")
    modules = lora.target_modules
    expected = {"r": train.lora_rank, "lora_alpha": train.lora_alpha, "target_modules": set(train.target_modules)}
    actual = {
        "r": lora.r,
        "lora_alpha": lora.lora_alpha,
        "target_modules": set(modules) if isinstance(modules, (list, set, tuple)) else modules,
    }
    if not train.full_forward:
        layers = lora.layers_to_transform
        expected["layers_to_transform"] = list(range(train.target_layer))
        actual["layers_to_transform"] = [layers] if isinstance(layers, int) else layers
    expected |= TLI_LORA_SETTINGS
    actual |= {name: getattr(lora, name, value) for name, value in TLI_LORA_SETTINGS.items()}
    for name, value in expected.items():
        if actual[name] != value:
            raise TliError(
                f"{path}: {name} is {actual[name]!r}, but {TLI_CONFIG} says the adapter was trained with {value!r}"
            )
    return lora


def _lora_modules(folder: Path, lora: LoraConfig) -> dict[str, tuple[int, int]]:
    """{module: (in_features, out_features)} of the LoRA weights in adapter_model.safetensors (its header only)."""
    path = folder / ADAPTER_WEIGHTS
    if not path.exists():
        if (folder / PICKLED_WEIGHTS).exists():
            raise TliError(
                f"{folder} holds {PICKLED_WEIGHTS}, a pickle, and no {ADAPTER_WEIGHTS}: tli reads "
                "adapters as safetensors only, never unpickles"
            )
        raise TliError(f"{folder} has no {ADAPTER_WEIGHTS}: the adapter weights are missing")
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in models.tensor_shapes(path).items():
        match = LORA_KEY.fullmatch(name)
        if match is None or len(shape) != 2:
            raise TliError(f"{path} holds {name} {list(shape)}, not a LoRA weight as `tli train` writes")
        parts.setdefault(match["module"], {})[match["part"]] = shape
    if not parts:
        raise TliError(f"{path} holds no LoRA weights")
    modules = {}
    for module, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            raise TliError(f"{path} has lora_{''.join(pair)} but not lora_{'B' if 'A' in pair else 'A'} of {module}")
        (rank_a, n_in), (n_out, rank_b) = pair["A"], pair["B"]
        if rank_a != lora.r or rank_b != lora.r:
            raise TliError(
                f"{path}: the LoRA weights of {module} have rank {rank_a} and {rank_b}, "
                f"but {ADAPTER_CONFIG} says r={lora.r}"
            )
        modules[module] = (n_in, n_out)
    return modules


def check_base_model(folder: str | Path, stored: dict[str, Any], model_config: ModelConfig) -> None:
    """TliError unless `model_config` names the model the adapter (its tli_config.json `stored`) was trained on."""
    trained = trained_on(stored)
    if models.model_identity(trained) != models.model_identity(model_config.model):
        raise TliError(
            f"adapter {folder} was trained on {trained}, not on {model_config.model}: leave out --model "
            "to evaluate it on its own model"
        )
    quantization = stored["model"].get("quantization", "none")
    if quantization != model_config.quantization:
        log.warning(
            "adapter %s was trained with quantization %s, evaluated with %s",
            folder,
            quantization,
            model_config.quantization,
        )


def _check_fits(folder: Path, adapter: _Adapter, model: nn.Module, model_config: ModelConfig) -> None:
    """TliError unless the adapter's LoRA weights fit the modules of `model` its config targets, one for one."""
    base = surgery.unwrap(model)

    def misfit(detail: str) -> TliError:
        return TliError(
            f"adapter {folder} (trained on {trained_on(adapter.stored)}) does not fit model "
            f"{model_config.model}: {detail}"
        )

    for module, (n_in, n_out) in adapter.modules.items():
        try:
            layer = base.get_submodule(module)
        except AttributeError:
            raise misfit(f"it has no module {module}") from None
        if not isinstance(layer, nn.Linear):
            raise misfit(f"its {module} is a {type(layer).__name__}, not a linear layer")
        if (layer.in_features, layer.out_features) != (n_in, n_out):
            raise misfit(
                f"its {module} maps {layer.in_features} to {layer.out_features} features, the "
                f"adapter's {n_in} to {n_out}"
            )
    targeted = {name for name, _ in base.named_modules() if name and check_target_module_exists(adapter.lora, name)}
    missing = sorted(targeted - set(adapter.modules))
    if missing:
        raise misfit(
            f"{ADAPTER_WEIGHTS} lacks the LoRA weights of {len(missing)} module(s) that "
            f"{ADAPTER_CONFIG} targets, e.g. {', '.join(missing[:3])}"
        )
    untargeted = sorted(set(adapter.modules) - targeted)
    if untargeted:
        raise misfit(
            f"{ADAPTER_WEIGHTS} holds LoRA weights of {len(untargeted)} module(s) that "
            f"{ADAPTER_CONFIG} does not target, e.g. {', '.join(untargeted[:3])}"
        )


def load_adapter(model: nn.Module, folder: str | Path, model_config: ModelConfig) -> PeftModel:
    """`model` (loaded from `model_config`) with the adapter in `folder`: an unmerged PeftModel in eval mode.

    The folder is checked first (`read_adapter_config`), then against the base model: the same model
    name, and every LoRA weight's module and shape. PEFT then loads it from the local folder only.
    """
    folder = Path(folder)
    adapter = _read(folder)
    check_base_model(folder, adapter.stored, model_config)
    _check_fits(folder, adapter, model, model_config)
    peft_model = PeftModel.from_pretrained(
        model, str(folder), config=adapter.lora, is_trainable=False, local_files_only=True
    )
    return peft_model.eval()


def merged(peft_model: PeftModel) -> nn.Module:
    """The base model with the adapter merged into its weights (PEFT's merge_and_unload: W + (alpha / r) B A; a 4-bit
    weight is dequantised, summed and quantised again, so a change below its quantisation step is lost), in eval mode.

    A merge may follow passes of the model: on the CPU, `models.load_model` keeps bitsandbytes from repacking 4-bit
    weights (a layout PEFT's merge would misread), and on CUDA bitsandbytes never repacks.
    """
    with warnings.catch_warnings():  # PEFT's note that 4-bit merges round: the --merge-adapter help says so
        warnings.filterwarnings("ignore", message="Merge lora module to 4-bit linear")
        return peft_model.merge_and_unload().eval()
