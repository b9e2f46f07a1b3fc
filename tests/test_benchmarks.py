"""Every benchmark's --smoke-test, in-process: faster where it must be, same numbers, no memory growth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of scripts at the root

from benchmarks import bench_gpu, bench_memory, bench_scan, bench_store, bench_sweep, bench_train  # noqa: E402

pytestmark = pytest.mark.slow


def test_scan_is_faster_than_the_authors_loop_with_the_same_numbers(capsys):
    result = bench_scan.main(["--smoke-test"])
    assert result["max_diff"] < 1e-4
    assert result["ratio_subset"] > 1
    assert "command: .venv/bin/python -m benchmarks.bench_scan --smoke-test" in capsys.readouterr().out


def test_truncated_training_is_faster_with_the_same_losses():
    result = bench_train.main(["--smoke-test"])
    assert result["max_loss_diff"][2] < 1e-4
    assert result["ratios"][2] > 1


def test_no_memory_growth_across_trials():
    result = bench_memory.main(["--smoke-test"])
    assert result["ok"], f"RSS grew by {result['growth_mb']:.1f} MB: {result['rss_mb']}"
    assert not result["lora_left"]


def test_sweep_loads_the_model_once_per_worker(tmp_path):
    result = bench_sweep.main(["--smoke-test", "--results", str(tmp_path)])
    assert result["ok"] == result["trials"] == 6
    assert result["workers"] < result["trials"]  # workers reused: one model load per worker, not per trial
    assert 0 < result["useful_s"] < result["wall_s"] * 2


def test_store_benchmark_commits_merges_and_aggregates_full_size_trials(tmp_path):
    """6 full-size trials through pack() and commit(), merged, merged cold, aggregated (2 conditions x 5 sets x 2
    layers), each step measured in its own process; nothing left behind in the work folder but the template.
    """
    result = bench_store.main(["--smoke-test", "--workdir", str(tmp_path)])
    (row,) = result["rows"]
    assert result["template"]["pair_rows"] > 4_500 and set(result["template"]["sets"]) >= {"trained", "unseen"}
    assert row["trials"] == 6 and row["aggregate_200_rows"] == 2 * 5 * 2
    assert 300 < row["pairs_kb_per_trial"] < 1_500 and 0 < row["driver_rss_gb"] <= row["driver_peak_gb"] < 2
    assert 0 < row["commit_ms_median"] and 0 < row["cold_merge_s"] and 0 < row["aggregate_200_peak_gb"] < 4
    assert not list(tmp_path.glob("store-*"))  # stores are removed unless --keep


def test_gpu_benchmark_answers_help_without_loading_anything(capsys):
    with pytest.raises(SystemExit) as exit_request:
        bench_gpu.main(["--help"])
    assert exit_request.value.code == 0
    assert "Llama-3-8B" in capsys.readouterr().out


def test_gpu_benchmark_says_why_without_cuda(capsys):
    if bench_gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present: run `python -m benchmarks.bench_gpu` by hand (minutes)")
    assert "skipped" in bench_gpu.main([])
    assert "CUDA is not available" in capsys.readouterr().err


def test_gpu_check_says_what_it_would_run_without_cuda():
    import os
    import subprocess

    if bench_gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/gpu_check.sh by hand (8 minutes)")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        env=os.environ | {"PYTHON": sys.executable},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0].startswith("gpu_check: skipped: torch sees no CUDA device here (torch ")
    assert [line.split()[0] for line in lines[1:]] == ["nvidia-smi", "timeout", "timeout"]
    assert "tests/test_cuda.py" in lines[2] and lines[3].endswith("-m benchmarks.bench_gpu --quick")


def test_gpu_benchmark_quick_is_the_short_run(capsys, monkeypatch):
    monkeypatch.setattr(bench_gpu.torch.cuda, "is_available", lambda: False)
    assert "skipped" in bench_gpu.main(["--quick", "--epochs", "2"])  # parses, then stops without CUDA
    row = {"precision": "nf4", "trial_s": 30.0, "reserved_peak_gb": 7.5, "device_used_gb": 8.1}
    assert bench_gpu.alone(row)["projected_sweep_min"] == 96 * 30 / 60  # 96 trials one after another
