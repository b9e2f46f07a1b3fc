"""A hub model on a cluster node, prepared once in the node's setup (never at run time).

    python -m tli.hub OWNER/NAME [--config-only]     # prints the --model value for this node

fetches the model's safetensors weights, config and tokenizer into the local hub cache (`snapshot_download`,
which skips what is already there; a gated model reads the hub token from the user's environment or token
file, `HF_TOKEN` / `~/.cache/huggingface/token`), and when its config says float32 writes a bfloat16 copy once
(`to_bf16`: half the bytes to read at every load, and what trials on a GPU compute in anyway). `--config-only`,
for a head that runs the driver only, fetches the config and tokenizer (the driver counts layers from the
config) and writes the same folder without weights. Every node prints the same path: the sweep's `--model`.
An alias or an existing folder is printed as given. A failed download is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tli.errors import TliError, run_command

CONFIG_FILES = ["*.json", "*.model", "*.tiktoken", "*.txt"]  # config, tokenizer, generation config
WEIGHT_FILES = ["*.safetensors"]  # never pickles (*.bin, *.pt): tli does not read them
COMPLETE = ".tli-complete"  # marks a finished bf16 copy (and whether it holds weights)


def _dtype(folder: Path) -> str | None:
    """The dtype its config.json declares (`dtype`, or transformers 4's `torch_dtype`)."""
    config = json.loads((folder / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype")


def to_bf16(source: Path, target: Path) -> Path:
    """`target`: the model in `source` with every float32 tensor cast to bfloat16, shard by shard (one shard's
    bf16 tensors in memory at a time), beside its config (dtype bfloat16), tokenizer and shard index; without
    weights when `source` has none. Written into a temporary folder that then takes `target`'s place.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    staged = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    shards = sorted(source.glob("*.safetensors"))
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copyfile(path, staged / path.name)
    for shard in shards:
        with safe_open(shard, framework="pt") as handle:
            tensors = {
                name: (lambda t: t.to(torch.bfloat16) if t.dtype == torch.float32 else t)(handle.get_tensor(name))
                for name in handle.keys()
            }
            save_file(tensors, staged / shard.name, metadata=handle.metadata() or {"format": "pt"})
        del tensors
    config = json.loads((staged / "config.json").read_text())
    config.pop("torch_dtype", None)
    (staged / "config.json").write_text(json.dumps(config | {"dtype": "bfloat16"}, indent=2) + "\n")
    (staged / COMPLETE).write_text("weights\n" if shards else "config only\n")
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
    return target


def prepare(name: str, config_only: bool = False) -> str:
    """The --model value for this node: `name` itself for an alias or a folder; for a hub id its snapshot
    folder, or its bfloat16 copy (made once) when the checkpoint is float32.
    """
    from tli import models

    if name in models.EMBEDDED_MODELS or Path(name).expanduser().exists() or not models.looks_like_hub_id(name):
        return name
    target = models.cache_root() / "hub" / name.replace("/", "--")
    marker = target / COMPLETE
    if marker.is_file() and (config_only or marker.read_text().strip() == "weights"):
        return str(target)
    from huggingface_hub import snapshot_download

    patterns = CONFIG_FILES if config_only else CONFIG_FILES + WEIGHT_FILES
    ignored = ["*.safetensors.index.json"] if config_only else None  # an index without its shards is no model
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns, ignore_patterns=ignored))
    except Exception as error:  # noqa: BLE001  the hub client raises many kinds (HTTP, auth, disk)
        raise TliError(f"cannot fetch {name} from the hub: {models.error_line(error)}") from None
    models.check_model_folder(folder, weights=not config_only)
    if _dtype(folder) != "float32":
        return str(folder)
    return str(to_bf16(folder, target))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tli.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an embedded alias, a folder, or a hub id OWNER/NAME")
    parser.add_argument("--config-only", action="store_true", help="config and tokenizer only (a head node)")
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: print(prepare(args.model, args.config_only)))


if __name__ == "__main__":
    sys.exit(main())
