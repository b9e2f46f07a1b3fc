"""The CLI end to end, in-process, on a tiny random Llama, writing to a temp dir."""

import json

import pandas as pd
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, DistilBertConfig, DistilBertModel

from tli import config as configs
from tli.cli import main
from tli.errors import TliError
from tli.train import TrainConfig

SCAN_COLUMNS = {"layer", "cosine_mean", "cosine_std", "cosine_mismatched", "gap", "cosine_centered",
                "cosine_centered_mismatched", "p_at_1", "p_at_1_csls", "p_at_1_centered", "n_pairs"}


def test_scan_writes_one_row_per_layer_and_a_plot(tiny_llama_dir, small_pairs, tmp_path):
    pairs_path, pairs = small_pairs
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"scan.{suffix}"
        assert main(["scan", "--model", str(tiny_llama_dir), "--pairs", str(pairs_path), "--pooling", "mean_content",
                     "--output", str(out)]) == 0
        table = pd.read_csv(out) if suffix == "csv" else pd.read_parquet(out)
        assert SCAN_COLUMNS <= set(table.columns)
        assert table["layer"].tolist() == [0, 1, 2, 3, 4] and (table["n_pairs"] == len(pairs)).all()
        assert ((table["gap"] - (table["cosine_mean"] - table["cosine_mismatched"])).abs() < 1e-9).all()
        assert out.with_suffix(".png").stat().st_size > 10_000


def test_train_then_evaluate(tiny_llama_dir, small_pairs, tmp_path, capsys):
    pairs_path, pairs = small_pairs
    adapter = tmp_path / "adapter"
    assert main(["train", "--model", str(tiny_llama_dir), "--pairs", str(pairs_path), "--target-layer", "2",
                 "--epochs", "2", "--seed", "1", "--rank", "4", "--output", str(adapter)]) == 0
    log = pd.read_csv(adapter / "train_log.csv")
    assert list(log.columns[:4]) == ["step", "epoch", "loss", "lr"] and len(log) == 2 * 2  # 16 pairs, batch 8
    stored = json.loads((adapter / "tli_config.json").read_text())
    assert stored["train"]["target_layer"] == 2 and stored["train"]["rank"] == 4 and stored["n_pairs"] == 16
    assert configs.from_dict(TrainConfig, stored["train"]).seed == 1  # the stored config round-trips
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert isinstance(PeftModel.from_pretrained(base, adapter), PeftModel)

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_llama_dir), "--pairs", str(pairs_path), "--adapter", str(adapter),
                 "--n-boot", "200", "--output", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    per_pair = pd.read_csv(out / "pairs.csv")
    assert set(zip(summary["set"], summary["eval_layer"])) == {("trained", 2), ("trained", 4), ("control", 2), ("control", 4)}
    assert len(per_pair) == 2 * len(pairs)
    trained = per_pair[(per_pair["set"] == "trained") & (per_pair["eval_layer"] == 2)]
    row = summary[(summary["set"] == "trained") & (summary["eval_layer"] == 2)].iloc[0]
    assert row["mean_diff"] == pytest.approx((trained["cosine_post"] - trained["cosine_pre"]).mean())
    assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    assert "mean_diff" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["scan", "--pairs", "/nonexistent.tsv"], "no such file"),
        (["scan", "--model", "/nonexistent-model"], "not found"),
        (["scan", "--pooling", "max"], "unknown pooling"),
        (["train", "--rank", "0"], "rank must be > 0"),
        (["train", "--margin", "-1"], "margin must be >= 0"),
        (["train", "--target-layer", "7"], "out of range"),
        (["train", "--target-modules", "c_attn"], "not in this model"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(arguments, message, tiny_llama_dir, tmp_path, capsys):
    command, *rest = arguments
    if "--model" not in rest:
        rest += ["--model", str(tiny_llama_dir)]
    output = tmp_path / ("out.csv" if command == "scan" else "out")
    assert main([command, *rest, "--output", str(output)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and message in errors[0] and errors[0].startswith(f"tli {command}: error:")
    assert not output.exists()


def test_non_causal_model_is_refused(tmp_path, capsys):
    DistilBertModel(DistilBertConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=8)).save_pretrained(tmp_path)
    assert main(["scan", "--model", str(tmp_path), "--output", str(tmp_path / "o.csv")]) == 2
    assert "not a causal language model" in capsys.readouterr().err


def test_unknown_config_keys_are_errors():
    with pytest.raises(TliError, match="unknown TrainConfig key"):
        configs.from_dict(TrainConfig, {"target_layer": 2, "learning_rate": 1e-3})
    with pytest.raises(TliError, match="must be int"):
        configs.from_dict(TrainConfig, {"rank": "16"})
    assert configs.parse_int_list("0-2,7") == (0, 1, 2, 7)
