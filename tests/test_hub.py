"""`python -m tli.hub`: a hub model fetched once per cluster node and, when published in float32, converted once to
bfloat16; a head node fetches only the config and tokenizer. The hub is replaced by a local copy (no internet).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tli import hub, models
from tli.config import ModelConfig
from tli.errors import TliError


@pytest.fixture()
def fake_hub(tiny_llama_dir, tmp_path, monkeypatch):
    """`huggingface_hub.snapshot_download` serving a sharded float32 copy of the tiny Llama; its calls are logged."""
    published = tmp_path / "published"
    model, _ = models.load_model(ModelConfig(model=str(tiny_llama_dir)))
    model.save_pretrained(published, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_llama_dir / name, published / name)
    config = json.loads((published / "config.json").read_text())
    (published / "config.json").write_text(json.dumps(config | {"dtype": "float32"}))
    calls = []

    def snapshot_download(name, allow_patterns, ignore_patterns=None):
        calls.append((name, tuple(allow_patterns), ignore_patterns))
        folder = tmp_path / "hub-cache" / name.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        for path in published.iterdir():
            if any(path.match(p) for p in allow_patterns) and not any(path.match(p) for p in ignore_patterns or []):
                shutil.copyfile(path, folder / path.name)
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return published, calls


def test_a_float32_checkpoint_is_converted_once_to_bfloat16(fake_hub, capsys):
    published, calls = fake_hub
    assert hub.main(["someone/tiny"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == models.cache_root() / "hub" / "someone--tiny" and len(calls) == 1
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    shards = sorted(published.glob("*.safetensors"))
    assert len(shards) > 1 and [p.name for p in shards] == sorted(p.name for p in folder.glob("*.safetensors"))
    for shard in shards:
        original, converted = load_file(shard), load_file(folder / shard.name)
        assert original.keys() == converted.keys()
        for name, tensor in original.items():
            assert converted[name].dtype == torch.bfloat16 and torch.equal(converted[name], tensor.to(torch.bfloat16))
    model, _ = models.load_model(ModelConfig(model=str(folder), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert hub.prepare("someone/tiny") == str(folder) and len(calls) == 1  # once: nothing fetched again


def test_a_head_fetches_the_config_and_tokenizer_only(fake_hub):
    _, calls = fake_hub
    folder = Path(hub.prepare("someone/tiny", config_only=True))
    assert not list(folder.glob("*.safetensors")) and not (folder / models.SAFETENSORS_INDEX).exists()
    assert "*.safetensors" not in calls[0][1] and calls[0][2] == ["*.safetensors.index.json"]
    assert models.num_layers(str(folder)) == 4 and models.load_tokenizer(str(folder)).pad_token is not None
    with pytest.raises(TliError, match="has no model.safetensors"):
        models.load_model(ModelConfig(model=str(folder)))
    assert hub.prepare("someone/tiny") == str(folder) and list(folder.glob("*.safetensors"))  # a worker: weights


def test_aliases_and_folders_pass_through_and_a_failed_fetch_is_one_line(tiny_llama_dir, monkeypatch, capsys):
    assert hub.prepare("smollm2-135m") == "smollm2-135m" and hub.prepare(str(tiny_llama_dir)) == str(tiny_llama_dir)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nmore detail")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    assert hub.main(["someone/gated"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot fetch someone/gated from the hub: We couldn't connect" in err
