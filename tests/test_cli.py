"""The `tli` command line end to end, in-process, on a tiny random Llama, writing to a temp dir; and every class
of bad input to scan/train/evaluate/pairs: one line on stderr, exit code 2, nothing written or lost.
"""

import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
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
    for suffix in ("csv", "parquet"):  # the second replaces the first's plot, scan.png
        out = tmp_path / f"scan.{suffix}"
        assert (
            main(
                [
                    "scan",
                    "--overwrite",
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
    assert (
        list(log.columns[:4]) == ["step", "epoch", "loss", "lr"] and len(log) == 1 + 2 * 2
    )  # step 0, 16 pairs, batch 8
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
            + ["--probe-pairs", "3", "--probe-distractors", "2"]
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
    assert row["mrr_post"] == pytest.approx(trained["rr_post"].mean()) and 0 < row["mrr_chance"] < 1
    assert row["p_at_1_centered_gained"] == ((trained["hit_centered_post"] > trained["hit_centered_pre"]).sum())
    assert 0 <= row["orthographic_p_at_1"] <= 1 and np.isnan(row["procrustes_p_at_1"])  # fitted on trained
    assert 0 <= control["procrustes_mrr"] <= 1
    probe_table, probe_summary = pd.read_csv(out / "probe.csv"), pd.read_csv(out / "probe_summary.csv")
    assert set(probe_summary["direction"]) == {"sw_en", "en_sw"} and (probe_summary["n"] <= 3).all()
    assert set(probe_table["rank_pre"]) <= {1, 2, 3} and (probe_table["logprob_post"] < 0).all()
    recorded = json.loads((out / "evaluation.json").read_text())
    assert recorded["probe"]["probe_pairs"] == 3 and "probe_summary.csv" in recorded["files"]
    assert "mean_diff" in capsys.readouterr().out


# --- bad input: one line on stderr, exit code 2, nothing written -------------------------------


def _last_error_line(capsys, command: str) -> str:
    """The error line of a command that failed at its end, after its progress bars: the last line, the only error."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and errors[0].startswith(f"tli {command}: error:"), err
    return errors[0]


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
    (["scan", "--layers", "0-100000"], "argument --layers: must be >= 0 and <= "),
    (["scan", "--layers", "0-5,3"], "3 given twice"),
    (["scan", "--pooling", "mean", "--pooling=last"], "--pooling given twice"),
    (["train", "--epochs", "1", "--epochs", "2"], "--epochs given twice"),
    (["train", "--rank", "4", "--lora-rank", "8"], "--rank and --lora-rank both given"),
    (["train", "--target-modules", ",".join(f"m{i}" for i in range(10_001))], "holds more than 10000 values"),
    (["train", "--target-modules", "q_proj,v_proj,q_proj"], "'q_proj' given twice"),
    (["evaluate", "--overwrite", "--overwrite"], "--overwrite given twice"),
    (["evaluate", "--layers", "2", "--layers", "3"], "--layers given twice"),
    (["evaluate", "--probe-shots", "9"], "argument --probe-shots: must be >= 0 and <= 8"),
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


# --- an output that is an input, an earlier result, a write the machine refuses ------------------


def _inputs_on_disk(tmp_path, tiny_llama_dir, small_pairs):
    """A pairs CSV in a folder, links to it (symbolic, hard, to its folder), an adapter folder recording it."""
    folder = tmp_path / "data"
    folder.mkdir()
    pairs = folder / "pairs.csv"
    small_pairs[1][["swahili", "english", "split"]].to_csv(pairs, index=False)
    (tmp_path / "symlink.csv").symlink_to(pairs)
    os.link(pairs, tmp_path / "hardlink.csv")
    (tmp_path / "data-link").symlink_to(folder)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "tli_config.json").write_text(json.dumps({"pairs": str(pairs), "train": {"target_layer": 2}}))
    dictionary = tmp_path / "dictd"
    dictionary.mkdir()
    (dictionary / "freedict-swh-eng.index").write_text("00databaseshort\tA\tB\n")
    os.link(dictionary / "freedict-swh-eng.index", tmp_path / "index.tsv")
    return {"pairs": str(pairs), "data": str(folder), "model": str(tiny_llama_dir), "adapter": str(adapter)} | {
        "tmp": str(tmp_path),
        "dictd": str(dictionary),
    }


OUTPUTS_THAT_ARE_INPUTS = [  # (command line with {placeholders}, message)
    ("scan --model {model} --pairs {pairs} --output {pairs}", "is the pairs file"),
    ("scan --model {model} --pairs {pairs} --output {pairs} --overwrite", "is the pairs file"),
    ("scan --model {model} --pairs {pairs} --output {tmp}/symlink.csv", "is the pairs file"),
    ("scan --model {model} --pairs {pairs} --output {tmp}/hardlink.csv", "is the pairs file"),
    ("scan --model {model} --pairs {pairs} --output {data}/../data/pairs.csv", "is the pairs file"),
    ("scan --model {model} --pairs {tmp}/symlink.csv --output {pairs}", "is the pairs file"),
    ("scan --model {model} --pairs {pairs} --output {model}/scan.csv", "lies inside the model folder"),
    ("train --model {model} --pairs {pairs} --output {data}", "holds the pairs file"),
    ("train --model {model} --pairs {pairs} --output {data} --overwrite", "holds the pairs file"),
    ("train --model {model} --pairs {pairs} --output {tmp}/data-link --overwrite", "holds the pairs file"),
    ("train --model {model} --pairs {pairs} --output {tmp} --overwrite", "holds the pairs file"),
    ("train --model {model} --pairs {pairs} --output {pairs}", "is the pairs file"),
    ("train --model {model} --pairs {pairs} --output {model} --overwrite", "is the model folder"),
    ("train --model {model} --pairs {pairs} --output {model}/adapter", "lies inside the model folder"),
    ("evaluate --adapter {adapter} --output {adapter}", "is the adapter folder"),
    ("evaluate --adapter {adapter} --output {adapter}/evaluation", "lies inside the adapter folder"),
    ("evaluate --adapter {adapter} --output {data} --overwrite", "holds the pairs file"),
    ("evaluate --adapter {adapter} --output {tmp}/data-link", "holds the pairs file"),
    ("evaluate --adapter {adapter} --pairs {tmp}/hardlink.csv --output {data}", "holds the pairs file"),
    ("evaluate --adapter {adapter} --output {tmp} --overwrite", "holds the"),  # the pairs file, the adapter
    ("evaluate --model {model} --adapter {adapter} --output {model}", "is the model folder"),
    ("pairs import-freedict --dict-dir {dictd} --output {tmp}/index.tsv", "is the dictionary index"),
]


@pytest.mark.parametrize("line, message", OUTPUTS_THAT_ARE_INPUTS, ids=[c[0] for c in OUTPUTS_THAT_ARE_INPUTS])
def test_no_command_writes_over_or_inside_its_inputs(line, message, tiny_llama_dir, small_pairs, tmp_path, capsys):
    places = _inputs_on_disk(tmp_path, tiny_llama_dir, small_pairs)
    before = {path: path.stat().st_mtime_ns for path in [*tmp_path.rglob("*"), *tiny_llama_dir.rglob("*")]}
    capsys.readouterr()
    arguments = line.format(**places).split()
    assert main(arguments) == 2
    assert message in _one_error_line(capsys, arguments[0])
    after = {path: path.stat().st_mtime_ns for path in [*tmp_path.rglob("*"), *tiny_llama_dir.rglob("*")]}
    assert after == before  # nothing written, nothing replaced


def _ok(capsys, arguments: list[str]) -> None:
    """Run a command that must succeed; its output is dropped."""
    assert main(arguments) == 0
    capsys.readouterr()


def test_an_earlier_result_is_replaced_only_with_overwrite(tiny_llama_dir, small_pairs, tmp_path, capsys):
    pairs = str(small_pairs[0])
    scan = ["scan", "--model", str(tiny_llama_dir), "--pairs", pairs, "--layers", "1,2", "--output"]
    _ok(capsys, [*scan, str(tmp_path / "scan.csv")])
    for output in ("scan.csv", "scan.parquet"):  # the table, or the plot beside it, is an earlier result
        before = (tmp_path / "scan.png").read_bytes()
        assert main([*scan, str(tmp_path / output)]) == 2
        assert "exists: pass --overwrite to replace it" in _last_error_line(capsys, "scan")
        assert (tmp_path / "scan.png").read_bytes() == before and not (tmp_path / "scan.parquet").exists()
    _ok(capsys, [*scan, str(tmp_path / "scan.csv"), "--overwrite"])

    adapter = tmp_path / "adapter"
    assert (
        main(["train", "--model", str(tiny_llama_dir), "--pairs", pairs, "--epochs", "1", "--output", str(adapter)])
        == 0
    )
    evaluate = [
        "evaluate",
        "--adapter",
        str(adapter),
        "--n-boot",
        "100",
        "--layers",
        "2",
        "--output",
        str(tmp_path / "e"),
    ]
    assert main(evaluate) == 0
    record = (tmp_path / "e" / "evaluation.json").read_text()
    assert main(evaluate) == 2
    assert "exists and is not empty: pass --overwrite" in _last_error_line(capsys, "evaluate")
    assert (tmp_path / "e" / "evaluation.json").read_text() == record
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not an evaluation")
    assert main([*evaluate[:-1], str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "is not an evaluation folder (no evaluation.json)" in _last_error_line(capsys, "evaluate")
    _ok(capsys, [*evaluate, "--overwrite"])
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["evaluated_at"]

    existing = tmp_path / "pairs.tsv"
    existing.write_text("mine")
    assert main(["pairs", "import-freedict", "--dict-dir", str(tmp_path / "dictd"), "--output", str(existing)]) == 2
    assert "exists: pass --overwrite" in _last_error_line(capsys, "pairs") and existing.read_text() == "mine"


def test_an_evaluation_never_falls_back_to_other_pairs(tiny_llama_dir, small_pairs, tmp_path, capsys):
    moved = tmp_path / "pairs.tsv"
    moved.write_bytes(small_pairs[0].read_bytes())
    adapter = tmp_path / "adapter"
    command = [
        "train",
        "--model",
        str(tiny_llama_dir),
        "--pairs",
        str(moved),
        "--epochs",
        "1",
        "--output",
        str(adapter),
    ]
    assert main(command) == 0
    for gone in (lambda: moved.rename(tmp_path / "elsewhere.tsv"), lambda: moved.symlink_to(tmp_path / "nowhere")):
        gone()
        assert main(["evaluate", "--adapter", str(adapter), "--output", str(tmp_path / "e")]) == 2
        line = _last_error_line(capsys, "evaluate")
        assert "the pairs file the adapter" in line and "is gone: pass --pairs" in line
        assert not (tmp_path / "e").exists()
        moved.unlink(missing_ok=True)


REFUSED_WRITES = [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ENAMETOOLONG, errno.EACCES]


@pytest.mark.parametrize("code", REFUSED_WRITES, ids=[errno.errorcode[c] for c in REFUSED_WRITES])
def test_a_write_the_machine_refuses_is_one_line_and_leaves_every_earlier_result(
    code, tiny_llama_dir, small_pairs, tmp_path, capsys, monkeypatch
):
    pairs, model = str(small_pairs[0]), str(tiny_llama_dir)
    scan = ["scan", "--model", model, "--pairs", pairs, "--layers", "1", "--output", str(tmp_path / "s.csv")]
    train = ["train", "--model", model, "--pairs", pairs, "--epochs", "1", "--output", str(tmp_path / "a")]
    evaluate = ["evaluate", "--adapter", str(tmp_path / "a"), "--n-boot", "100", "--layers", "2"]
    evaluate += ["--output", str(tmp_path / "e")]
    for command in (scan, train, evaluate):
        assert main(command) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()

    def refuse(source, target):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr("tli.files.os.replace", refuse)  # the moment a written file would take its place
    for command in (scan, train, evaluate):
        assert main([*command, "--overwrite"]) == 2
        line = _last_error_line(capsys, command[0])
        assert os.strerror(code) in line and str(tmp_path) in line, line
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # no half-written file, no temporary file left, every earlier result whole


def test_a_read_only_or_odd_model_cache_is_one_line(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """The embedded model is converted into XDG_CACHE_HOME on first use: a cache the machine refuses is one line."""
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # ENOTDIR
    scan = ["scan", "--model", "smollm2-135m", "--output", str(tmp_path / "o.csv")]
    assert main(scan) == 2
    assert "Not a directory" in _one_error_line(capsys, "scan")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "cache" / "tli"))

    monkeypatch.setattr("tli.models.tempfile.TemporaryDirectory", read_only)
    assert main(scan) == 2
    line = _one_error_line(capsys, "scan")
    assert str(tmp_path / "cache") in line and os.strerror(errno.EROFS) in line


def test_names_too_long_for_the_file_system_are_refused_before_anything_is_made(tiny_llama_dir, tmp_path, capsys):
    long = "x" * 300
    for command in (
        ["scan", "--model", str(tiny_llama_dir), "--output", str(tmp_path / f"{long}.csv")],
        ["train", "--model", str(tiny_llama_dir), "--output", str(tmp_path / long / "adapter")],
        ["evaluate", "--adapter", str(tmp_path), "--output", str(tmp_path / long)],
    ):
        assert main(command) == 2
        assert "bytes, above the" in _one_error_line(capsys, command[0])
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_writing_the_scan_plot_leaves_neither_file(tiny_llama_dir, small_pairs, tmp_path):
    """`ulimit -f` for real (EFBIG): the scan's CSV fits, its PNG does not; neither is left."""
    probe = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
        "from tli.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    output = tmp_path / "scan.csv"
    command = ["scan", "--model", str(tiny_llama_dir), "--pairs", str(small_pairs[0]), "--output", str(output)]
    run = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=300)
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert run.returncode == 2 and len(errors) == 1 and run.stderr.strip().endswith(errors[0]), run.stderr[-3000:]
    assert "scan.png" in errors[0] and os.strerror(errno.EFBIG) in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bad_pairs_file_is_refused_before_torch_or_peft_is_imported(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("swahili\tenglish\nmaji\tmaji\n")  # one pair: at least 2 are needed
    probe = (
        "import sys, tli.cli\n"
        f"for command in ('scan', 'train'):\n"
        f"    print(tli.cli.main([command, '--pairs', {str(bad)!r}, '--output', {str(tmp_path / 'out.csv')!r}]))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'ray') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "2", "[]"], run.stdout + run.stderr
    assert run.stderr.count("at least 2 are needed") == 2
