"""Every other ablation script's --smoke-test runs (in process, on one local Ray shared by the module) and writes
sound results. The layer sweep's contract is tested in test_sweep.py.
"""

from __future__ import annotations

import time
from pathlib import Path

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


def _check_rank(trials, folder):
    assert sorted(trials["lora_rank"]) == [4, 16] and (trials["lora_alpha"] == 2 * trials["lora_rank"]).all()


def _check_margin(trials, folder):
    assert sorted(trials["margin"]) == [0.0, 0.4]  # the first (the margin-free check) and the paper's
    at_zero = trials[trials["margin"] == 0.0].iloc[0]
    assert at_zero["train_loss_minus_margin_start"] == pytest.approx(at_zero["train_loss_start"])  # margin 0


def _check_holdout(trials, folder):
    assert trials["heldout_category"].nunique() == 2
    assert (trials["n_train_pairs"] < 12).all()  # 16 smoke pairs, minus the 4 held out, minus validation
    columns = [f"target_heldout_all_{m}" for m in ("n", "cosine_pre", "cosine_post", "centered_gap_pre")]
    assert np.isfinite(trials[columns].to_numpy(float)).all() and (trials["target_heldout_all_n"] == 4).all()


def _check_protocol(trials, folder):
    protocols = ["pooling_train", "pooling_eval", "mask_false_negatives", "translations"]
    assert set(trials[protocols].itertuples(index=False, name=None)) == {
        ("mean", "mean_content", True, "deranged"),
        ("mean", "mean_content", True, "true"),
    }  # the shuffled control, the sweep's default (the author's code + false-negative mask)
    scored = [f"target_{name}_{m}" for name in ("trained", "control_all") for m in ("n", "cosine_pre", "gap_pre")]
    assert (trials[scored].nunique() == 1).all()  # both scored on the true pairs: the same base-model numbers
    shuffled, real = (trials[trials["translations"] == kind].iloc[0] for kind in ("deranged", "true"))
    assert shuffled["train_cos_positive_start"] != pytest.approx(real["train_cos_positive_start"])  # trained apart
    text = _report(folder)
    assert "Control: shuffled pairs, target layer 2, trained set" in text and "## What training did" in text
    assert "## Against the shuffled control" in text and "minus the shuffled control's" in text


def _check_objective(trials, folder):
    assert set(zip(trials["loss"], trials["pooling_train"])) == {
        ("triplet", "mean"),
        ("triplet", "mean_content"),
        ("infonce", "mean"),
        ("infonce", "mean_content"),
    }
    infonce = trials["loss"] == "infonce"
    assert trials.loc[infonce, ["train_loss_minus_margin_end", "train_active_hinges_min"]].isna().all().all()
    assert trials.loc[~infonce, ["train_loss_minus_margin_end", "train_active_hinges_min"]].notna().all().all()
    text = _report(folder)
    assert "InfoNCE trial(s) (no margin; the loss in nats" in text and "No `final_loss` column" in text
    assert text.count("](figures/training_") == 4  # one dynamics figure per condition


def _report(folder: Path) -> str:
    """The aggregator's report.md on the sweep's folder."""
    assert load_ablation("aggregate").main([str(folder), "--n-boot", "200"]) == 0
    return (folder / "report" / "report.md").read_text()


def _check_optuna(trials, folder):
    assert trials["target_layer"].between(1, 3).all()
    np.testing.assert_allclose(trials["objective"], trials["final_validation_centered_gap_alike_diff"])  # selection: L
    assert (trials["objective_metric"] == "centered_gap_alike_diff").all()


TRIALS = {"objective_sweep": 4}  # a smoke test's trials, where not 2: losses x training poolings
SPAN = ("start", "end")  # step 0 and the last epoch: the dynamics in every trial row
CHECKS = {
    "rank_sweep": _check_rank,
    "margin_sweep": _check_margin,
    "category_holdout": _check_holdout,
    "protocol_sweep": _check_protocol,
    "objective_sweep": _check_objective,
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
    assert len(trials) == TRIALS.get(script, 2) and set(trials["status"]) == {"ok"} and trials["trial_id"].is_unique
    assert (trials["experiment"] == script).all() and (trials["epochs"] == 1).all()
    metrics = [
        f"{place}_{name}_{m}"
        for place in ("target", "final")
        for name in ("trained", "control_all")
        for m in ("cosine_pre", "cosine_post", "gap_pre", "centered_gap_post", "p_at_1_chance")
    ]
    dynamics = [f"train_{name}_{when}" for name in ("loss", "cos_positive", "centered_cos_negatives") for when in SPAN]
    assert np.isfinite(
        trials[metrics + dynamics + ["final_loss", "objective", "train_lora_norm_end"]].to_numpy(float)
    ).all()
    retrieval = [f"target_control_all_{m}" for m in ("mrr_pre", "mrr_centered_post", "orthographic_p_at_1")]
    retrieval += [f"probe_trained_{d}_{m}" for d in ("sw_en", "en_sw") for m in ("n", "accuracy_pre", "mrr_post")]
    assert np.isfinite(trials[retrieval].to_numpy(float)).all() and (trials["probe_trained_sw_en_n"] == 2).all()
    CHECKS[script](trials, folder)
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert set(pairs["trial_id"]) == set(trials["trial_id"])
    assert len(pd.read_parquet(folder / "scan.parquet")) == 31 * 4
