"""Ray Tune's own loggers see what each trial measured: `--callbacks tensorboard,mlflow,wandb` on the Optuna
search's smoke test (MLflow to a local SQLite store, W&B offline: no network), and a missing logger package
is one line naming the pip extra.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import load_ablation


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tensorboard_mlflow_and_wandb_see_every_trial(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install -e '.[test]' (mlflow-skinny)")
    pytest.importorskip("wandb", reason="pip install -e '.[test]' (wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "wandb").mkdir()
    assert (
        load_ablation("optuna_search").main(
            ["--smoke-test", "--results", str(tmp_path / "results"), "--callbacks", "tensorboard,mlflow,wandb"]
        )
        == 0
    )
    folder = tmp_path / "results" / "optuna_search"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    expected = sorted(trials["objective"].round(6))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("optuna_search").experiment_id])
    assert sorted(round(run.data.metrics["objective"], 6) for run in runs) == expected
    assert all("target_control_centered_gap_alike_diff" in run.data.metrics for run in runs)
    for run in runs:  # run names and params: the sampled settings, flat
        assert {"target_layer", "lora_rank", "margin", "lr"} <= set(run.data.params)
        assert run.info.run_name.startswith("target_layer=") and f"lora_rank={run.data.params['lora_rank']}" in (
            run.info.run_name
        )
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert len(history) >= 1  # the per-epoch iterations reached MLflow too

    # W&B offline runs are binary record logs: each trial's run holds its objective (as JSON), and only its own
    runs = [p.read_bytes() for p in (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")]
    assert len(runs) == 2
    for objective in trials["objective"]:
        assert sum(json.dumps(float(objective)).encode() in run for run in runs) == 1
    assert all(b"train_loss" in run for run in runs)

    events = list((folder / "tune").glob("*/*/events.out.tfevents.*"))
    assert len(events) == 2 and all(b"objective" in e.read_bytes() for e in events)


def test_a_missing_logger_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    from tli.sweep import callbacks

    monkeypatch.setitem(callbacks.LOGGER_EXTRAS, "wandb", ("no_such_module_for_tli", "wandb"))
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(tmp_path), "--callbacks", "wandb"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "pip install 'targeted-lexical-injection[wandb]'" in err[0]
    assert not any(tmp_path.iterdir())  # checked before Ray starts, nothing written
