"""The `tli` command line end to end, in-process, on a tiny random Llama, writing to a temp dir; and every class
of bad input to scan/train/evaluate/pairs: one line on stderr, exit code 2, nothing written or lost.
"""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, DistilBertConfig, DistilBertModel

from tli import config as configs
from tli.cli import main
from tli.config import TrainConfig
from tli.errors import TliError

SCAN_COLUMNS = {
    "layer",
    "cosine_mean",
    "cosine_std",
    "cosine_mismatched",
    "gap",
    "cosine_centered",
    "cosine_centered_mismatched",
    "centered_gap",
    "p_at_1",
    "p_at_1_csls",
    "p_at_1_centered",
    "p_at_1_chance",
    "n_pairs",
    "n_candidates",
}


def test_scan_writes_one_row_per_layer_and_a_plot(tiny_llama_dir, small_pairs, tmp_path):
    pairs_path, pairs = small_pairs
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"scan.{suffix}"
        assert (
            main(
                [
                    "scan",
                    "--model",
                    str(tiny_llama_dir),
                    "--pairs",
                    str(pairs_path),
                    "--pooling",
                    "mean_content",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        table = pd.read_csv(out) if suffix == "csv" else pd.read_parquet(out)
        assert SCAN_COLUMNS <= set(table.columns)
        assert table["layer"].tolist() == [0, 1, 2, 3, 4] and (table["n_pairs"] == len(pairs)).all()
        assert (table["n_candidates"] == pairs["english"].nunique()).all()
        assert ((table["gap"] - (table["cosine_mean"] - table["cosine_mismatched"])).abs() < 1e-9).all()
        assert out.with_suffix(".png").stat().st_size > 10_000


def test_train_then_evaluate(tiny_llama_dir, small_pairs, tmp_path, capsys):
    pairs_path, pairs = small_pairs
    adapter = tmp_path / "adapter"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_llama_dir),
                "--pairs",
                str(pairs_path),
                "--target-layer",
                "2",
                "--epochs",
                "2",
                "--seed",
                "1",
                "--rank",
                "4",
                "--output",
                str(adapter),
            ]
        )
        == 0
    )
    log = pd.read_csv(adapter / "train_log.csv")
    assert list(log.columns[:4]) == ["step", "epoch", "loss", "lr"] and len(log) == 2 * 2  # 16 pairs, batch 8
    stored = json.loads((adapter / "tli_config.json").read_text())
    assert stored["train"]["target_layer"] == 2 and stored["train"]["lora_rank"] == 4 and stored["n_pairs"] == 16
    assert stored["train"]["lora_alpha"] == 8  # default alpha: 2 x rank
    assert configs.from_dict(TrainConfig, stored["train"]).seed == 1  # the stored config round-trips
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert isinstance(PeftModel.from_pretrained(base, adapter), PeftModel)

    out = tmp_path / "eval"
    assert (
        main(
            ["evaluate", "--adapter", str(adapter), "--pairs", str(pairs_path), "--n-boot", "200", "--output", str(out)]
        )
        == 0
    )  # --model: the adapter's own
    summary = pd.read_csv(out / "summary.csv")
    per_pair = pd.read_csv(out / "pairs.csv")
    assert {"trained", "control_all"} <= set(summary["set"]) and set(summary["eval_layer"]) == {2, 4}
    control = summary.set_index(["set", "eval_layer"]).loc[("control_all", 2)]
    assert control["n"] == 6 and control["n_removed"] == 0 and control["n_candidates"] == pairs["english"].nunique()
    trained = per_pair[(per_pair["set"] == "trained") & (per_pair["eval_layer"] == 2)]
    row = summary[(summary["set"] == "trained") & (summary["eval_layer"] == 2)].iloc[0]
    assert row["n"] == 16 and row["mean_diff"] == pytest.approx((trained["cosine_post"] - trained["cosine_pre"]).mean())
    assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    assert row["gap_diff"] == pytest.approx((trained["gap_post"] - trained["gap_pre"]).mean())
    assert "mean_diff" in capsys.readouterr().out


# --- bad input: one line on stderr, exit code 2, nothing written -------------------------------


def _one_error_line(capsys, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"tli {command}: error:") or err[0].startswith("tli: error:"), err[0]
    return err[0]


USAGE_ERRORS = [  # (command line, message): refused by the parser, before anything is imported
    (["scan", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["scan", "--csls-k", "0"], "argument --csls-k: must be >= 1"),
    (["scan", "--layers", "5-2"], "reversed range '5-2'"),
    (["scan", "--layers", "2,2"], "2 given twice"),
    (["scan", "--layers", "-1"], "argument --layers: must be >= 0"),
    (["scan", "--pooling", "max"], "argument --pooling: 'max' is not one of"),
    (["scan", "--device", "foo"], "argument --device: 'foo' is not a device"),
    (["scan", "--dtype", "float8"], "argument --dtype: 'float8' is not one of"),
    (["scan", "--quantization", "int3"], "argument --quantization: 'int3' is not one of"),
    (["scan"], "the following arguments are required: --output"),
    (["train", "--batch-size", "1"], "argument --batch-size: must be >= 2"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be >= 2"),
    (["train", "--epochs", "0"], "argument --epochs: must be >= 1"),
    (["train", "--lr", "0"], "argument --lr: must be > 0 and < 1"),
    (["train", "--lr", "nan"], "argument --lr: must be > 0 and < 1"),
    (["train", "--lr", "x"], "cannot read 'x' as float"),
    (["train", "--rank", "0"], "argument --lora-rank/--rank: must be >= 1"),
    (["train", "--alpha", "-2"], "argument --lora-alpha/--alpha: must be >= 1"),
    (["train", "--dropout", "1"], "argument --lora-dropout/--dropout: must be >= 0 and < 1"),
    (["train", "--margin", "-1"], "argument --margin: must be >= 0 and <= 2"),
    (["train", "--target-layer", "0"], "argument --target-layer: must be >= 1"),
    (["train", "--warmup-steps", "-5"], "argument --warmup-steps: must be >= 0"),
    (["train", "--seed", "-1"], "argument --seed: must be >= 0"),
    (["train", "--target-modules", "q_proj,"], "empty item"),
    (["evaluate", "--n-boot", "-1"], "argument --n-boot: must be >= 100"),
    (["evaluate", "--layers", "3-1"], "reversed range"),
    (["evaluate", "--format", "xlsx"], "argument --format: invalid choice"),
    (["pairs"], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("arguments, message", USAGE_ERRORS)
def test_usage_errors_are_one_line_with_a_help_hint(arguments, message, tmp_path, capsys):
    needs = {
        "scan": ["--output", str(tmp_path / "o.csv")],
        "train": ["--output", str(tmp_path / "a")],
        "evaluate": ["--adapter", str(tmp_path), "--output", str(tmp_path / "e")],
    }
    rest = [] if arguments == ["scan"] else needs.get(arguments[0], [])
    assert main([*arguments, *rest]) == 2
    line = _one_error_line(capsys, arguments[0])
    assert message in line and "--help" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _pairs_cases(tmp_path, tiny_llama_dir):
    """(command line, message) of settings that pass the parser but cannot work."""
    file = tmp_path / "a-file"
    file.write_text("x")
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    (tmp_path / "a-plot.png").mkdir()  # the plot written beside OUT.csv cannot be written
    model = ["--model", str(tiny_llama_dir)]
    return [
        (["scan", *model, "--output", str(file / "out.csv")], "is a file, not a folder"),
        (["scan", *model, "--output", str(folder)], "is a directory, not a file"),
        (["scan", *model, "--output", "/proc/tli-scan.csv"], "cannot write to /proc"),
        (["scan", *model, "--output", str(tmp_path / "out.xlsx")], "must end in .csv or .parquet"),
        (["scan", *model, "--output", str(tmp_path / "a-plot.csv")], "a-plot.png is a directory"),
        (["scan", *model, "--layers", "7", "--output", str(tmp_path / "o.csv")], "layer 7 is out of range"),
        (["scan", "--model", "/nonexistent-model", "--output", str(tmp_path / "o.csv")], "not found"),
        (["scan", *model, "--pairs", "/nonexistent.tsv", "--output", str(tmp_path / "o.csv")], "no such file"),
        (["train", *model, "--output", str(file)], "is a file, not a folder"),
        (["train", *model, "--output", str(file / "adapter")], "is a file, not a folder"),
        (["train", *model, "--output", "/proc/tli-adapter"], "cannot write to /proc"),
        (["train", *model, "--target-layer", "9", "--output", str(tmp_path / "a")], "layer 9 is out of range"),
        (["train", *model, "--target-modules", "c_attn", "--output", str(tmp_path / "a")], "not in this model"),
        (
            ["pairs", "import-freedict", "--dict-dir", str(tmp_path), "--output", str(tmp_path / "f.tsv")],
            "no swh-eng dictd files",
        ),
        (["pairs", "import-freedict", "--output", str(tmp_path / "f.json")], "must end in .tsv or .csv"),
    ]


def test_settings_that_cannot_work_are_one_line_before_any_work(tiny_llama_dir, tmp_path, capsys):
    for arguments, message in _pairs_cases(tmp_path, tiny_llama_dir):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(arguments) == 2, arguments
        line = _one_error_line(capsys, arguments[0] if arguments[0] != "pairs" else "pairs")
        assert message in line, (arguments, line)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, arguments  # nothing written


def test_train_refuses_an_existing_adapter_folder_without_overwrite(tiny_llama_dir, small_pairs, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "keep.txt").write_text("a previous adapter")
    assert (
        main(["train", "--model", str(tiny_llama_dir), "--pairs", str(small_pairs[0]), "--output", str(adapter)]) == 2
    )
    assert "exists and is not empty: pass --overwrite" in _one_error_line(capsys, "train")
    assert (adapter / "keep.txt").read_text() == "a previous adapter"


def test_overwrite_replaces_only_an_adapter_folder(tiny_llama_dir, small_pairs, tmp_path, capsys):
    work = tmp_path / "my-work"
    work.mkdir()
    (work / "notes.txt").write_text("not an adapter")
    command = ["train", "--model", str(tiny_llama_dir), "--pairs", str(small_pairs[0]), "--output", str(work)]
    assert main([*command, "--overwrite"]) == 2
    assert "is not an adapter folder (no tli_config.json)" in _one_error_line(capsys, "train")
    assert (work / "notes.txt").read_text() == "not an adapter"


def test_non_causal_model_is_refused(tmp_path, capsys):
    DistilBertModel(DistilBertConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=8)).save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert main(["scan", "--model", str(tmp_path / "m"), "--output", str(tmp_path / "o.csv")]) == 2
    assert "not" in _one_error_line(capsys, "scan")


def test_unknown_config_keys_are_errors():
    with pytest.raises(TliError, match="unknown TrainConfig key"):
        configs.from_dict(TrainConfig, {"target_layer": 2, "learning_rate": 1e-3})
    with pytest.raises(TliError, match="must be int"):
        configs.from_dict(TrainConfig, {"lora_rank": "16"})
    assert configs.parse_int_list("0-2,7") == (0, 1, 2, 7)


def test_help_and_version_answer_at_once_without_heavy_imports():
    probe = (
        "import sys, tli.cli\n"
        "for argv in (['--help'], ['train', '--help'], ['--version']):\n"
        "    assert tli.cli.main(argv) == 0\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'peft', 'ray') if m in sys.modules))"
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "tli scan" in out.stdout and "--lora-rank" in out.stdout
    assert time.perf_counter() - started < 5
