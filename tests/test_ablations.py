"""Every other ablation script's --smoke-test runs (in process, on one local Ray shared by the module) and writes
sound results. The layer sweep's contract is tested in test_sweep.py.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from conftest import load_ablation


@pytest.fixture(scope="module")
def local_ray():
    """One private local Ray for the module's sweeps, on loopback with its own token, as a sweep starts it (the
    sweeps join it and leave it running).
    """
    from tli.sweep import session

    with session.connect(None):
        yield


def _check_rank(trials):
    assert sorted(trials["lora_rank"]) == [4, 16] and (trials["lora_alpha"] == 2 * trials["lora_rank"]).all()


def _check_margin(trials):
    assert sorted(trials["margin"]) == [0.1, 0.4]  # the first and the paper's


def _check_holdout(trials):
    assert trials["heldout_category"].nunique() == 2
    assert (trials["n_train_pairs"] < 12).all()  # 16 smoke pairs, minus the 4 held out, minus validation
    columns = [f"target_heldout_all_{m}" for m in ("n", "cosine_pre", "cosine_post", "centered_gap_pre")]
    assert np.isfinite(trials[columns].to_numpy(float)).all() and (trials["target_heldout_all_n"] == 4).all()


def _check_protocol(trials):
    assert set(zip(trials["pooling_train"], trials["pooling_eval"], trials["mask_false_negatives"])) == {
        ("mean", "mean", False),
        ("mean", "mean_content", True),
    }  # the paper as written, the sweep's default (the author's code + false-negative mask)


def _check_optuna(trials):
    assert trials["target_layer"].between(1, 3).all()
    np.testing.assert_allclose(trials["objective"], trials["final_validation_centered_gap_alike_diff"])  # selection: L
    assert (trials["objective_metric"] == "centered_gap_alike_diff").all()


CHECKS = {
    "rank_sweep": _check_rank,
    "margin_sweep": _check_margin,
    "category_holdout": _check_holdout,
    "protocol_sweep": _check_protocol,
    "optuna_search": _check_optuna,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", list(CHECKS))
def test_smoke_test_runs_and_writes_sound_results(script, local_ray, tmp_path):
    started = time.perf_counter()
    assert load_ablation(script).main(["--smoke-test", "--results", str(tmp_path), "--no-drift"]) == 0
    print(f"{script} --smoke-test: {time.perf_counter() - started:.1f} s")
    folder = tmp_path / script
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"} and trials["trial_id"].is_unique
    assert (trials["experiment"] == script).all() and (trials["epochs"] == 1).all()
    metrics = [
        f"{place}_{name}_{m}"
        for place in ("target", "final")
        for name in ("trained", "control_all")
        for m in ("cosine_pre", "cosine_post", "gap_pre", "centered_gap_post", "p_at_1_chance")
    ]
    assert np.isfinite(trials[metrics + ["final_loss", "objective"]].to_numpy(float)).all()
    retrieval = [f"target_control_all_{m}" for m in ("mrr_pre", "mrr_centered_post", "orthographic_p_at_1")]
    retrieval += [f"probe_trained_{d}_{m}" for d in ("sw_en", "en_sw") for m in ("n", "accuracy_pre", "mrr_post")]
    assert np.isfinite(trials[retrieval].to_numpy(float)).all() and (trials["probe_trained_sw_en_n"] == 2).all()
    CHECKS[script](trials)
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert set(pairs["trial_id"]) == set(trials["trial_id"])
    assert len(pd.read_parquet(folder / "scan.parquet")) == 31 * 4
