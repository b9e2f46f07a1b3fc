"""Every benchmark's --smoke-test, in-process: faster where it must be, same numbers, no memory growth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of scripts at the root

from benchmarks import bench_gpu, bench_memory, bench_scan, bench_sweep, bench_train  # noqa: E402

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
