"""Every ablation script's --smoke-test runs (in process, on one local Ray shared by the module) and writes
sound results. The layer sweep's contract is tested in test_runner.py."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from conftest import load_ablation
from tli.sweep_results import metric_columns

@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's sweeps (the runner joins it and leaves it running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _check_rank(trials):
    assert sorted(trials["lora_rank"]) == [4, 8] and (trials["lora_alpha"] == 2 * trials["lora_rank"]).all()


def _check_margin(trials):
    assert sorted(trials["margin"]) == [0.1, 0.2]


def _check_holdout(trials):
    assert trials["heldout_category"].nunique() == 2
    assert (trials["split"] == "heldout:" + trials["heldout_category"]).all()
    assert (trials["n_train_pairs"] == 12).all()  # 16 smoke pairs minus the 4 of the held-out category
    assert np.isfinite(trials[[c for c in metric_columns(("heldout",)) if not c.endswith("_p")]].to_numpy(float)).all()


def _check_protocol(trials):
    assert set(zip(trials["pooling_train"], trials["pooling_eval"])) == {("mean", "mean"), ("mean", "mean_content")}


def _check_optuna(trials):
    assert trials["target_layer"].between(1, 3).all()
    gain = trials["target_control_centered_gap_post"] - trials["target_control_centered_gap_pre"]
    np.testing.assert_allclose(trials["objective"], gain)


CHECKS = {"rank_sweep": _check_rank, "margin_sweep": _check_margin, "category_holdout": _check_holdout,
          "protocol_sweep": _check_protocol, "optuna_search": _check_optuna}


@pytest.mark.slow
@pytest.mark.parametrize("script", list(CHECKS))
def test_smoke_test_runs_and_writes_sound_results(script, local_ray, tmp_path):
    started = time.perf_counter()
    assert load_ablation(script).main(["--smoke-test", "--results", str(tmp_path)]) == 0
    print(f"{script} --smoke-test: {time.perf_counter() - started:.1f} s")
    folder = tmp_path / script
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"} and trials["trial_id"].is_unique
    assert (trials["experiment"] == script).all() and (trials["epochs"] == 1).all()
    metrics = metric_columns(("trained", "control"))
    assert np.isfinite(trials[metrics + ["final_loss", "objective"]].to_numpy(float)).all()
    CHECKS[script](trials)
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert set(pairs["trial_id"]) == set(trials["trial_id"])
    assert len(pd.read_parquet(folder / "scan.parquet")) == 31 * 4


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--pooling-eval", "max"], "unknown pooling"),
        (["--quantization", "int3"], "unknown quantization"),
        (["--model", "/nonexistent-model"], "not found"),
        (["--dtype", "float8"], "unknown dtype"),
    ],
)
def test_bad_sweep_settings_fail_before_ray_with_one_line(flags, message, tmp_path, capsys):
    started = time.perf_counter()
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(tmp_path), *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert time.perf_counter() - started < 20 and not any(tmp_path.iterdir())  # no Ray, nothing written


def test_unreadable_integer_list_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_ablation("layer_sweep").main(["--smoke-test", "--results", str(tmp_path), "--seeds", "x"])
    assert exit_info.value.code == 2 and "cannot read 'x' as integers" in capsys.readouterr().err
