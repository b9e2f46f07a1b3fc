"""The sweep: typed trial settings and grids, the store, one worker's trials (no LoRA leak, failures recorded),
and `python ablations/layer_sweep.py --smoke-test --results DIR` end to end on a local Ray, as Ray Tune sees it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tli import config as configs
from tli import loss, models, train
from tli.config import ModelConfig, TrainConfig
from tli.errors import TliError
from tli.sweep import inputs as sweep_inputs
from tli.sweep import store as sweep_store
from tli.sweep import trial as sweep_trial
from tli.sweep.flags import SweepConfig
from tli.sweep.settings import (
    TrialSettings,
    check_axes,
    cut_for_smoke_test,
    expand_grid,
    setting_names,
    swept_names,
)
from tli.sweep.tuner import TUNE_KEYS, base_settings, tune_metrics

from conftest import load_ablation

# --- trial settings (no model, no Ray) ---------------------------------------------------------


def test_trial_id_is_a_stable_hash_of_every_setting():
    base = TrialSettings()
    assert re.fullmatch(r"[0-9a-f]{12}", base.trial_id) and base.trial_id == TrialSettings().trial_id
    assert base.replace(target_layer=3).trial_id != base.trial_id
    assert base.replace(mask_false_negatives=False).trial_id != base.trial_id
    assert list(base.row())[0] == "trial_id" and set(base.row()) == {"trial_id", *setting_names()}


def test_a_row_read_back_from_parquet_rebuilds_the_same_settings(tmp_path):
    settings = TrialSettings().replace(heldout_category="food", lora_rank=8, target_modules=("q_proj",))
    pd.DataFrame([settings.row() | {"status": "ok", "objective": 0.1}]).to_parquet(tmp_path / "t.parquet")
    row = pd.read_parquet(tmp_path / "t.parquet").iloc[0].to_dict()  # numpy scalars, as the aggregator reads them
    assert TrialSettings.from_row(row) == settings and TrialSettings.from_row(row).trial_id == settings.trial_id
    assert hash(settings.model) == hash(ModelConfig())  # frozen: the worker cache key


def test_expand_grid_crosses_axes_merges_dict_values_and_dedups():
    protocols = [{"pooling_train": "mean", "pooling_eval": "mean"}, {"pooling_train": "last", "pooling_eval": "last"}]
    trials = expand_grid({"target_layer": [1, 2], "protocol": protocols, "seed": [0, 0]}, TrialSettings())
    assert len(trials) == 4 and len({t.trial_id for t in trials}) == 4
    assert {(t.train.target_layer, t.train.pooling_train, t.pooling_eval) for t in trials} == {
        (1, "mean", "mean"),
        (1, "last", "last"),
        (2, "mean", "mean"),
        (2, "last", "last"),
    }
    ranks = expand_grid({"lora_rank": [4, 8]}, TrialSettings())
    assert [(t.train.lora_rank, t.train.lora_alpha) for t in ranks] == [(4, 8), (8, 16)]  # alpha = 2 x rank
    assert TrialSettings().replace(lora_rank=8, lora_alpha=8).train.lora_alpha == 8


def test_an_axis_sweeps_every_setting_any_of_its_values_sets():
    protocols = [{"pooling_train": "mean", "translations": "deranged"}, {"pooling_train": "last"}]
    assert swept_names({"target_layer": [2], "protocol": protocols}) == [
        "target_layer",
        "pooling_train",
        "translations",
    ]
    trials = expand_grid({"protocol": protocols}, TrialSettings())
    assert [t.train.translations for t in trials] == ["deranged", "true"]  # the other protocol: the default
    assert len({t.trial_id for t in trials}) == 2


def test_the_objective_sweep_adds_shuffled_controls_without_renaming_its_trials():
    """`--translations true,deranged` doubles the grid; the true-translation trials keep the ids a default run
    gave them, so a stored objective sweep is extended by its controls, not rerun.
    """
    script = load_ablation("objective_sweep")
    default = expand_grid(script.grid(None, script.ObjectiveFlags(), None), TrialSettings())
    both = expand_grid(
        script.grid(None, script.ObjectiveFlags(translations=("true", "deranged")), None), TrialSettings()
    )
    assert len(default) == 4 and len(both) == 8
    assert {t.trial_id for t in both if t.train.translations == "true"} == {t.trial_id for t in default}
    assert {(t.train.loss, t.train.pooling_train) for t in both if t.train.translations == "deranged"} == {
        (t.train.loss, t.train.pooling_train) for t in default
    }


def test_training_columns_summarise_step_0_and_the_last_epoch():
    log = pd.DataFrame(
        {
            "step": [0, 1, 2, 3, 4],
            "epoch": [0, 1, 1, 2, 2],
            "loss": [0.5, 0.45, 0.42, 0.41, 0.39],
            "loss_minus_margin": [0.1, 0.05, 0.02, 0.01, -0.01],
            "active_hinges": [1.0, 1.0, 0.75, 1.0, 0.5],
            "cos_positive": [0.2, 0.3, 0.4, 0.5, 0.7],
            "grad_norm": [np.nan, 2.0, 1.0, 3.0, 5.0],
            "lora_norm": [0.0, 0.1, 0.2, 0.3, 0.4],
        }
    )
    row = sweep_trial.training_columns(log)
    assert set(row) == set(sweep_trial.ROW_TRAINING)
    assert row["train_loss_start"] == 0.5 and row["train_loss_end"] == pytest.approx(0.40)
    assert row["train_loss_minus_margin_end"] == pytest.approx(0.0) and row["train_cos_positive_end"] == 0.6
    assert row["train_active_hinges_min"] == 0.5 and row["train_active_hinges_start"] == 1.0  # steps 1.., then 0
    assert row["train_grad_norm_end"] == 4.0 and row["train_lora_norm_end"] == 0.4
    assert math.isnan(row["train_centered_cos_positive_end"])  # not logged: NaN
    infonce = sweep_trial.training_columns(log.assign(loss_minus_margin=np.nan, active_hinges=np.nan))
    assert math.isnan(infonce["train_active_hinges_min"]) and math.isnan(infonce["train_loss_minus_margin_start"])


def test_each_epoch_reports_its_mean_dynamics_to_tune():
    log = pd.DataFrame(
        {"step": [0, 1, 2], "epoch": [0, 1, 1], "loss": [0.5, 0.4, 0.2], "lr": [np.nan, 0.1, 0.2]}
        | {"active_hinges": [1.0, 1.0, 0.5], "grad_norm": [np.nan, 1.0, 3.0], "lora_norm": [0.0, 0.1, 0.3]}
    )
    metrics = tune_metrics({"trial_id": "abc"}, log)
    assert set(metrics) == set(TUNE_KEYS) and metrics["status"] == "running" and math.isnan(metrics["objective"])
    assert metrics["epoch"] == 1 and metrics["train_loss"] == pytest.approx(0.3) and metrics["train_loss_last"] == 0.2
    assert metrics["train_active_hinges"] == 0.75 and metrics["train_grad_norm"] == 2.0
    assert metrics["train_lora_norm"] == 0.3 and metrics["lr"] == 0.2 and math.isnan(metrics["train_cos_positive"])


@pytest.mark.parametrize(
    "space, message",
    [
        ({"layer": [1]}, "unknown trial setting"),
        ({"target_layer": []}, "has no values"),
        ({"protocol": [{"pooling_train": "mean", "pool": "x"}]}, "unknown trial setting"),
    ],
)
def test_bad_axes_are_errors(space, message):
    with pytest.raises(TliError, match=message):
        check_axes(space)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"target_layer": 0}, "target_layer must be >= 1"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"pooling_eval": "max"}, "not one of"),
        ({"validation_fraction": 0.9}, "must be >= 0 and <= 0.5"),
    ],
)
def test_impossible_trial_settings_are_errors(change, message):
    with pytest.raises(TliError, match=message):
        TrialSettings().replace(**change)


def test_smoke_grid_keeps_two_values_per_axis_with_the_paper_s_default_and_one_seed():
    assert cut_for_smoke_test({"target_layer": list(range(1, 31)), "seed": [3, 4, 5]}) == {
        "target_layer": [1, 2],
        "seed": [3],
    }
    protocols = [
        {"pooling_train": "mean", "pooling_eval": "mean", "mask_false_negatives": False},
        {"pooling_train": "mean", "pooling_eval": "mean_content", "mask_false_negatives": False},
        {"pooling_train": "mean", "pooling_eval": "mean_content", "mask_false_negatives": True},  # the default
    ]
    grid = {
        "lora_rank": [4, 8, 16, 32],
        "margin": [0.1, 0.2, 0.3, 0.4],
        "protocol": protocols,
        "heldout_category": ["a", "b", "c"],
    }
    assert cut_for_smoke_test(grid) == {
        "lora_rank": [4, 16],
        "margin": [0.1, 0.4],
        "protocol": [protocols[0], protocols[2]],
        "heldout_category": ["a", "b"],  # no axis value is the default (nothing held out): the first two
    }


def test_settings_a_sweep_shares_with_its_trials_are_declared_once():
    trial = {f.name: f for config in (TrialSettings, TrainConfig) for f in dataclasses.fields(config)}
    shared = [f for f in dataclasses.fields(SweepConfig) if f.name in trial and f.name != "model"]
    assert {f.name for f in shared} >= {"epochs", "mask_false_negatives", "pooling_eval", "drift", "n_boot"}
    for mine in shared:
        theirs = trial[mine.name]
        assert mine.default == theirs.default and mine.metadata["help"].startswith(theirs.metadata["help"])
        assert {k: v for k, v in mine.metadata.items() if k != "help"} == {
            k: v for k, v in theirs.metadata.items() if k != "help"
        }
    with pytest.raises(TypeError, match="no setting 'epoch'"):
        configs.like(TrainConfig, "epoch")


@pytest.fixture(scope="module")
def smoke_inputs():
    return sweep_inputs.load_inputs(SweepConfig(smoke_test=True))


def test_trial_sets_hold_out_a_category_carve_validation_and_stay_leak_free(smoke_inputs):
    pairs = smoke_inputs.pairs
    assert (pairs["split"] == "trained").sum() == 16 and (pairs["split"] == "control").sum() == 6
    category = pairs["category"].iloc[0]
    settings = TrialSettings().replace(heldout_category=category, validation_fraction=0.25)
    train_rows, sets, removed = sweep_inputs.trial_sets(smoke_inputs, settings)
    assert set(sets) >= {"trained", "validation", "control_all", "heldout_all"}
    assert (sets["heldout_all"]["category"] == category).all() and len(sets["heldout_all"]) == 4
    assert category not in set(train_rows["category"]) and len(train_rows) + len(sets["validation"]) <= 12
    for name in ("validation", "control", "heldout"):
        if name in sets:
            shared = sets[name]["swahili"].isin(train_rows["swahili"]) | sets[name]["english"].isin(
                train_rows["english"]
            )
            assert not shared.any(), name
    assert removed["control"] + len(sets.get("control", [])) == len(sets["control_all"])
    with pytest.raises(TliError, match="no trained pairs of category"):
        sweep_inputs.trial_sets(smoke_inputs, settings.replace(heldout_category="no-such-category"))


# --- the store ----------------------------------------------------------------------------------


def _record(trial_id: str, status: str = "ok", objective: float = 0.0, adapter: bool = False):
    row = {
        "trial_id": trial_id,
        "status": status,
        "error": None if status == "ok" else "boom",
        "target_layer": 2,
        "objective": objective,
        "objective_metric": sweep_trial.OBJECTIVE_METRIC,
        "finished_at": f"2026-01-01T00:00:0{int(objective * 10) % 10}",
    }
    if status != "ok":
        return sweep_trial.TrialRecord(row)
    tables = {
        "summary": pd.DataFrame({"set": ["trained"], "eval_layer": [2], "mean_pre": [0.5]}),
        "pairs": pd.DataFrame(
            {
                "set": ["trained"] * 3,
                "eval_layer": [2] * 3,
                "pair_id": [0, 1, 2],
                "cosine_pre": [0.1] * 3,
                "cosine_post": [0.2] * 3,
            }
        ),
        "train_log": pd.DataFrame({"step": [1], "loss": [0.3]}),
    }
    files = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x"} if adapter else {}
    return sweep_trial.TrialRecord(row, tables, files)


def test_store_commits_merges_and_survives_a_crash(tmp_path):
    store = sweep_store.ExperimentStore(str(tmp_path))
    store.commit(sweep_trial.pack(_record("aaaaaaaaaaaa", "error")))
    store.commit(sweep_trial.pack(_record("aaaaaaaaaaaa")), experiment="x")  # an errored trial re-run
    store.commit(sweep_trial.pack(_record("bbbbbbbbbbbb", "error")))
    # what a kill leaves behind: temp files of interrupted writes, a trial folder without its row, a missing merge
    (tmp_path / "trials" / "aaaaaaaaaaaa" / ".row.json.1234.tmp").write_text('{"trial_id": "aa')
    (tmp_path / "trials" / "cccccccccccc").mkdir()
    (tmp_path / "pairs.parquet" / "cccccccccccc.parquet").write_bytes(b"half")  # tables of an uncommitted trial
    trials = store.merge()
    assert not (tmp_path / "pairs.parquet" / "cccccccccccc.parquet").exists()
    assert list(trials["trial_id"]) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"] and trials.columns[:4].tolist() == [
        "trial_id",
        "experiment",
        "status",
        "error",
    ]
    fresh = sweep_store.ExperimentStore(str(tmp_path))
    assert {row["trial_id"]: row["status"] for row in fresh.rows()} == {"aaaaaaaaaaaa": "ok", "bbbbbbbbbbbb": "error"}
    (tmp_path / "trials.parquet").unlink()
    assert len(fresh.read("trials")) == 2 and len(fresh.read("pairs")) == 3
    assert list(fresh.read("train_log")["trial_id"]) == ["aaaaaaaaaaaa"]
    (tmp_path / "pairs.parquet" / "aaaaaaaaaaaa.parquet").write_bytes(b"PAR1 not parquet")  # a corrupt table
    assert fresh.read("pairs").empty and "pairs.parquet/aaaaaaaaaaaa.parquet cannot be read" in fresh.notes[-1]


def test_best_adapter_policy_keeps_only_the_best_objective(tmp_path):
    store = sweep_store.ExperimentStore(str(tmp_path))
    for trial_id, score in (("aaaaaaaaaaaa", 0.1), ("bbbbbbbbbbbb", 0.3), ("cccccccccccc", 0.2)):
        store.commit(sweep_trial.pack(_record(trial_id, objective=score, adapter=True)), save_adapters="best")
    assert [t for t in store.trial_ids() if store.adapter_folder(t)] == ["bbbbbbbbbbbb"]
    store.commit(sweep_trial.pack(_record("dddddddddddd", objective=0.1, adapter=True)), save_adapters="all")
    assert store.adapter_folder("dddddddddddd") is not None


def _validation_summary(gap: float, alike: float | None) -> pd.DataFrame:
    """A summary whose validation set at layer 4 gained `gap` in centred gap over every non-translation and `alike`
    over alike ones (None: the column of a tli before the alike baseline is absent).
    """
    summary = pd.DataFrame(
        {"set": ["validation", "validation", "trained"], "eval_layer": [2, 4, 4], "centered_gap_diff": [0.7, gap, 0.8]}
    )
    return summary if alike is None else summary.assign(centered_gap_alike_diff=[0.6, alike, 0.5])


def test_the_objective_is_the_validation_centred_gap_gain_over_alike_non_translations():
    summary = _validation_summary(gap=0.9, alike=0.1)
    assert sweep_trial.objective(summary, 4) == 0.1 and sweep_trial.objective(summary, 2) == 0.6
    assert math.isnan(sweep_trial.objective(summary[summary["set"] != "validation"], 4))  # no validation set


def _older_trial(store, trial_id: str, gap: float, alike: float | None) -> dict:
    """Store an ok trial (adapter kept) as a tli before `objective_metric` did: objective = its validation
    centred_gap_diff at the selection layer 4; returns its row.
    """
    record = _record(trial_id, objective=gap, adapter=True)
    record = dataclasses.replace(record, tables=record.tables | {"summary": _validation_summary(gap, alike)})
    store.commit(sweep_trial.pack(record), save_adapters="all")
    row = {key: value for key, value in record.row.items() if key != "objective_metric"} | {"eval_layer_selection": 4}
    store.folder.write_json(f"trials/{trial_id}/row.json", row)  # as the older tli committed it
    return row


def test_objectives_of_an_older_tli_are_rescored_never_mixed(tmp_path):
    """A store whose rows an older tli scored by the centred gap over every non-translation: this tli's rows, trials
    table (an older merge is rebuilt), report and --save-adapters best see each objective computed again from its
    stored summary, said once; the trial best by the older definition (0.9) is not the best any more (0.1).
    """
    import pyarrow.parquet as pq

    from tli import report

    older = sweep_store.ExperimentStore(str(tmp_path))
    rows = [_older_trial(older, "aaaaaaaaaaaa", gap=0.9, alike=0.1), _older_trial(older, "bbbbbbbbbbbb", 0.2, 0.25)]
    pq.write_table(sweep_trial.trials_table(rows), tmp_path / "trials.parquet")  # the older tli's merge
    store = sweep_store.ExperimentStore(str(tmp_path))
    rescored = {row["trial_id"]: (row["objective"], row["objective_metric"]) for row in store.rows()}
    assert rescored == {
        "aaaaaaaaaaaa": (0.1, "centered_gap_alike_diff"),
        "bbbbbbbbbbbb": (0.25, "centered_gap_alike_diff"),
    }
    assert len(store.notes) == 1 and "scored by an older tli (centered_gap_diff)" in store.notes[0]
    results = report.load_results(str(tmp_path))
    assert dict(zip(results.trials["trial_id"], results.trials["objective"])) == {
        "aaaaaaaaaaaa": 0.1,
        "bbbbbbbbbbbb": 0.25,
    }
    assert any("computed again from their summaries" in note for note in results.notes)
    assert (pd.read_parquet(tmp_path / "trials.parquet")["objective_metric"] == "centered_gap_alike_diff").all()
    store.commit(sweep_trial.pack(_record("cccccccccccc", objective=0.3, adapter=True)), save_adapters="best")
    assert [t for t in store.trial_ids() if store.adapter_folder(t)] == ["cccccccccccc"]  # 0.3 beats 0.1 and 0.25


def test_an_older_objective_that_cannot_be_rescored_is_refused_in_one_line(tmp_path, capsys):
    older = sweep_store.ExperimentStore(str(tmp_path))
    _older_trial(older, "aaaaaaaaaaaa", gap=0.9, alike=None)  # a summary from before the alike baseline
    with pytest.raises(TliError, match="trial aaaaaaaaaaaa's objective is its centered_gap_diff .* lacks centered_gap"):
        sweep_store.ExperimentStore(str(tmp_path)).rows()
    assert load_ablation("aggregate").main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be computed again as centered_gap_alike_diff" in err


def test_a_foreign_archive_member_is_refused(tmp_path):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("row.json", json.dumps({"trial_id": "aaaaaaaaaaaa", "status": "ok"}))
        archive.writestr("../../escape.txt", "x")
    with pytest.raises(ValueError, match="unexpected trial archive"):
        sweep_store.ExperimentStore(str(tmp_path)).commit(buffer.getvalue())
    assert not (tmp_path.parent / "escape.txt").exists()


# --- one worker's trials, in process (tiny random Llama) ----------------------------------------


@pytest.fixture()
def tiny_trials(tiny_llama_dir, small_pairs):
    """(two trials' settings, the experiment inputs, a fresh worker cache) on the tiny model."""
    config = SweepConfig(
        model=ModelConfig(model=str(tiny_llama_dir), device="cpu"),
        pairs=str(small_pairs[0]),
        epochs=2,
        n_boot=100,
        drift=False,
    )
    inputs = sweep_inputs.load_inputs(config)
    base = base_settings(config).replace(lr=1e-2, warmup_steps=0, target_layer=2, inputs_digest=inputs.digest)
    return [base.replace(seed=seed) for seed in (0, 1)], inputs, sweep_trial.WorkerCache()


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.slow
def test_lora_does_not_leak_between_trials_of_one_worker(tiny_trials, tiny_llama_dir):
    trials, inputs, cache = tiny_trials
    fresh, _ = models.load_model(trials[0].model)
    reference = _state(fresh)
    epochs = []
    first = sweep_trial.run_trial(
        trials[0], inputs, cache, on_epoch_end=lambda log: epochs.append(int(log["epoch"].iloc[-1]))
    )
    model = cache.models[trials[0].model][0]
    second = sweep_trial.run_trial(trials[1], inputs, cache)
    assert first.row["status"] == second.row["status"] == "ok" and epochs == [1, 2]  # one report per epoch
    assert first.row["target_trained_mean_diff"] != 0  # the adapter did change the embeddings
    assert (first.row["device_resolved"], first.row["compute_dtype"], first.row["gpu_id"]) == ("cpu", "float32", None)
    assert cache.models[trials[0].model][0] is model and (first.row["worker_trial"], second.row["worker_trial"]) == (
        1,
        2,
    )
    assert not sweep_trial.has_lora(model) and not any("lora" in name for name in model.state_dict())
    state = _state(model)
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)
    before = {
        n: t.tables["pairs"].set_index(["set", "eval_layer", "pair_id"])["cosine_pre"]
        for n, t in (("first", first), ("second", second))
    }
    pd.testing.assert_series_equal(before["first"], before["second"])  # both saw the same base model
    summary = first.tables["summary"]
    assert set(summary["eval_layer"]) == {2, 4} and (summary["n_candidates"] == len(inputs.lexicon.english)).all()
    validation = summary.set_index(["set", "eval_layer"]).loc[("validation", 4)]
    assert first.row["objective"] == pytest.approx(validation["centered_gap_alike_diff"])  # the verdict's gap
    assert first.row["objective"] == first.row["final_validation_centered_gap_alike_diff"]
    assert first.row["objective_metric"] == "centered_gap_alike_diff"


@pytest.mark.slow
def test_failures_become_error_records_and_leave_a_clean_cache(tiny_trials, monkeypatch):
    trials, inputs, cache = tiny_trials
    too_deep = sweep_trial.run_trial(trials[0].replace(target_layer=9), inputs, cache)
    assert too_deep.row["status"] == "error" and "layer 9 is out of range" in too_deep.row["error"]
    assert math.isnan(too_deep.row["objective"]) and not too_deep.tables

    monkeypatch.setattr(
        loss, "triplet_margin_hardest_negative", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True)
    )
    diverged = sweep_trial.run_trial(trials[0], inputs, cache)
    assert diverged.row["status"] == "error" and diverged.row["error"].startswith("TrainingDiverged")
    assert not cache.models  # the model had LoRA attached when training failed: dropped, reloaded next time

    monkeypatch.undo()
    retried = sweep_trial.run_trial(trials[0], inputs, cache)
    assert retried.row["status"] == "ok" and retried.row["trial_id"] == diverged.row["trial_id"]
    assert not sweep_trial.has_lora(next(iter(cache.models.values()))[0])


def test_base_probe_answers_are_kept_per_source_not_per_word(monkeypatch):
    """Trials holding out different categories probe a word with different golds (Gemma, action held out: English
    'well' probed with 'kisima' after a trial that probed it with 'vizuri' only): each must get its own Answer,
    not the other's (a KeyError on the gold it lacks), and a Source seen before is not answered again.
    """
    from tli import probe
    from tli.config import ProbeConfig

    asked = []

    def answer(model, tokenizer, wanted, config):
        asked.append([source.golds for source in wanted])
        scores = {source: {gold: -float(len(gold)) for gold in source.golds} for source in wanted}
        return {(s.direction, s.word): probe.Answer("", False, scores[s], dict.fromkeys(s.golds, 1)) for s in wanted}

    monkeypatch.setattr(probe, "answer", answer)
    cache, config, probing = sweep_trial.WorkerCache(), ModelConfig(model="m"), ProbeConfig()
    cache.models[config] = (None, None)
    inputs = dataclasses.make_dataclass("Inputs", ["digest"])("d")
    one = probe.Source("en_sw", "well", frozenset({"kisima", "vizuri"}), ("vizuri",), ("mti",))
    two = dataclasses.replace(one, golds=("kisima",))
    assert cache.pre_answers(config, inputs, probing, [one])["en_sw", "well"].logprob == {"vizuri": -6.0}
    assert cache.pre_answers(config, inputs, probing, [two])["en_sw", "well"].logprob == {"kisima": -6.0}
    assert cache.pre_answers(config, inputs, probing, [two, one])["en_sw", "well"].logprob == {"vizuri": -6.0}
    assert asked == [[("vizuri",)], [("kisima",)]]  # the third call found both in the cache


@pytest.mark.slow
def test_a_worker_keeps_one_model_and_a_bounded_set_of_embeddings(tiny_trials, tiny_llama_dir):
    trials, inputs, cache = tiny_trials
    config = trials[0].model
    layer = cache.pre_embeddings(config, inputs, "mean", [1])[1]
    cache.embedding_bytes = 2 * sum(vectors.nbytes for vectors in layer)  # room for two layers
    cache.pre_embeddings(config, inputs, "mean", [2, 3])
    assert [key[-1] for key in cache.embeddings] == [2, 3]  # layer 1, least recently used, dropped
    cache.pre_embeddings(config, inputs, "mean", [3, 4])
    assert [key[-1] for key in cache.embeddings] == [3, 4]
    cache.pre_embeddings(config, inputs, "mean", [1, 2, 3])  # a trial's own layers are kept, whatever the bound
    assert [key[-1] for key in cache.embeddings] == [1, 2, 3]
    other = ModelConfig(model=str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    model, _ = cache.model(other)
    assert list(cache.models) == [other] and not cache.embeddings and next(model.parameters()).dtype == torch.bfloat16
    row = sweep_trial.run_trial(trials[0], inputs, cache).row  # back to the first model: the second one freed
    assert row["status"] == "ok" and list(cache.models) == [config]
    assert {"device_resolved", "gpu_name", "gpu_id", "compute_dtype", "drift_floor_sw"} <= set(
        sweep_trial.trials_schema().names
    )


# --- the layer-sweep contract, end to end on a local Ray ----------------------------------------


@pytest.fixture(scope="module")
def layer_smoke(tmp_path_factory):
    """`ablations/layer_sweep.py --smoke-test --results DIR --save-adapters best`, run once for the checks below."""
    results = tmp_path_factory.mktemp("results")
    started = time.perf_counter()
    assert (
        load_ablation("layer_sweep").main(["--smoke-test", "--results", str(results), "--save-adapters", "best"]) == 0
    )
    print(f"layer_sweep --smoke-test: {time.perf_counter() - started:.1f} s")
    return results, results / "layer_sweep"


def _run_again(results: Path, *flags: str) -> pd.DataFrame:
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(results), *flags]) == 0
    return pd.read_parquet(results / "layer_sweep" / "trials.parquet")


@pytest.mark.slow
def test_layer_smoke_writes_the_contracted_tables(layer_smoke):
    _, folder = layer_smoke
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"} and sorted(trials["target_layer"]) == [1, 2]
    assert trials["trial_id"].is_unique and (trials["experiment"] == "layer_sweep").all()
    for _, row in trials.iterrows():  # the stored settings rebuild the trial and its id
        assert TrialSettings.from_row(row.to_dict()).trial_id == row["trial_id"]
    metrics = [
        f"{place}_{name}_{m}"
        for place in ("target", "final")
        for name in ("trained", "validation", "control")
        for m in ("cosine_pre", "cosine_post", "centered_gap_pre", "centered_gap_post", "p_at_1_chance")
    ]
    numbers = metrics + ["final_loss", "objective", "train_seconds", "eval_seconds", "drift_kl_sw", "drift_kl_en"]
    assert (
        np.isfinite(trials[numbers].to_numpy(float)).all() and (trials[["drift_kl_sw", "drift_kl_en"]] > 0).all().all()
    )
    assert (trials["eval_layer_final"] == 30).all() and (trials["eval_layer_selection"] == 30).all()
    assert (trials["epochs"] == 1).all() and (trials["validation_fraction"] == 0.1).all()
    assert (trials["n_train_pairs"] < 16).all() and (trials["target_validation_n"] >= 1).all()

    summary = pd.read_parquet(folder / "summary.parquet")
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert summary.columns[0] == pairs.columns[0] == "trial_id"
    assert {
        "pair_id",
        "set",
        "eval_layer",
        "cosine_pre",
        "cosine_post",
        "gap_pre",
        "gap_post",
        "centered_gap_pre",
        "centered_gap_post",
        "hit_pre",
        "hit_post",
        "chance",
    } <= set(pairs.columns)
    counts = summary.groupby(["trial_id", "eval_layer"]).size()
    assert len(counts) == 4 and (counts >= 3).all()  # trials x eval layers; trained, validation, control(_all)
    train_log = pd.read_parquet(folder / "train_log.parquet")
    assert len(train_log) == 2 * 3 and set(train_log["step"]) == {0, 1, 2}  # 2 trials x (step 0 + 2 steps of 1 epoch)
    assert list(train_log.columns) == ["trial_id", *train.LOG_COLUMNS]
    dynamics = [f"train_{name}_{when}" for name in sweep_trial.DYNAMICS for when in ("start", "end")]
    assert np.isfinite(trials[dynamics + ["train_active_hinges_min", "train_lora_norm_end"]].to_numpy(float)).all()
    drift = [f"drift_kl_{lang}_{part}" for lang in ("sw", "en") for part in ("ci_low", "ci_high", "random")]
    assert (trials[drift] > 0).all().all()
    assert (trials["drift_kl_sw_ci_low"] <= trials["drift_kl_sw"]).all()
    assert (trials["drift_kl_sw"] <= trials["drift_kl_sw_ci_high"]).all()
    scan = pd.read_parquet(folder / "scan.parquet")
    assert len(scan) == 31 * 4 and set(scan["pooling"]) == {"mean", "mean_content", "mean_skip_first", "last"}
    assert len(pd.read_parquet(folder / "drift_samples.parquet")) == 4
    stored = json.loads((folder / "sweep_config.json").read_text())
    assert (
        stored["sweep"]["smoke_test"] is True and stored["planned"] == 2 and stored["swept"] == ["target_layer", "seed"]
    )
    best = trials.loc[trials["objective"].idxmax(), "trial_id"]  # --save-adapters best
    assert [p.parent.name for p in (folder / "trials").glob("*/adapter")] == [best]


@pytest.mark.slow
def test_the_stored_best_adapter_loads_in_peft_and_in_tli_evaluate(layer_smoke, small_pairs, tmp_path, capsys):
    from peft import PeftModel

    from tli.cli import main

    _, folder = layer_smoke
    adapter = next((folder / "trials").glob("*/adapter"))
    base, _ = models.load_model(ModelConfig(device="cpu"))
    assert isinstance(PeftModel.from_pretrained(base, adapter), PeftModel)
    stored = json.loads((adapter / "tli_config.json").read_text())
    command = ["evaluate", "--adapter", str(adapter), "--n-boot", "100", "--layers", "1"]
    assert main([*command, "--output", str(tmp_path / "eval")]) == 0  # --model and --pairs: the adapter's own
    summary = pd.read_csv(tmp_path / "eval" / "summary.csv").set_index("set")
    assert summary.loc["trained", "n"] == stored["n_pairs"] < 623  # a smoke trial trains on a subset
    assert {"not_trained", "control"} <= set(summary.index) and (summary["mean_diff"] != 0).all()
    capsys.readouterr()
    assert main([*command, "--pairs", str(small_pairs[0]), "--output", str(tmp_path / "other")]) == 2
    assert "pass the --pairs it was trained with" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_tune_sees_every_measurement(layer_smoke):
    from ray.tune import ExperimentAnalysis, ResultGrid

    _, folder = layer_smoke
    trials = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    grid = ResultGrid(ExperimentAnalysis(str(next((folder / "tune").iterdir()))))
    frame = grid.get_dataframe()
    assert len(frame) == 2 and "tli_archive" not in frame.columns
    assert {"config/target_layer", "config/seed"} <= set(frame.columns)  # flat: the swept settings
    assert not [c for c in frame.columns if c.startswith("config/settings")]
    runs = [p.name for p in next((folder / "tune").iterdir()).iterdir() if p.is_dir()]
    names = sorted(re.sub(r"_[0-9a-f]+_\d+$", "", name) for name in runs)  # less Tune's own trial id
    assert names == ["target_layer=1,seed=0", "target_layer=2,seed=0"]  # TensorBoard runs tell trials apart
    for _, result in frame.iterrows():
        row = trials.loc[result["tli_trial_id"]]
        for column in (
            "objective",
            "target_trained_mean_diff",
            "target_control_centered_gap_alike_diff",
            "drift_kl_en",
        ):
            assert result[column] == pytest.approx(row[column])
        assert result["training_iteration"] == 2  # one report per epoch (1), then the trial's headline
    assert "final_control_centered_gap_post" not in frame  # the whole row is in trials.parquet, not in Tune's state
    best = grid.get_best_result(metric="objective", mode="max")
    assert best.metrics["tli_trial_id"] == trials["objective"].idxmax()
    for path in (folder / "tune").glob("*/*/progress.csv"):  # every key in the header, the last row's values kept
        progress = pd.read_csv(path)
        assert set(TUNE_KEYS) <= set(progress.columns) and list(progress["status"]) == ["running", "ok"]
        assert progress["train_loss"].notna().all() and progress["objective"].isna().tolist() == [True, False]
        for column in ("train_active_hinges", "train_cos_positive", "train_grad_norm", "train_lora_norm"):
            assert progress[column].notna().all(), column  # each epoch's dynamics
        assert progress["target_trained_mean_diff"].iloc[-1] == pytest.approx(
            trials.loc[progress["tli_trial_id"].iloc[-1], "target_trained_mean_diff"]
        )
    state = next((folder / "tune").glob("*/experiment_state-*.json")).stat().st_size
    assert state / len(frame) < 40_000  # bytes of Tune's experiment state per trial (about 176 KB with every metric)
    assert list((folder / "tune").glob("*/*/events.out.tfevents.*"))  # Tune's TensorBoard files


@pytest.mark.slow
def test_rerun_adds_no_rows_and_restores_a_killed_run(layer_smoke):
    results, folder = layer_smoke
    before = pd.read_parquet(folder / "trials.parquet")
    assert _run_again(results).equals(before)  # finished trials are skipped: nothing re-run, nothing added
    (folder / "trials.parquet").unlink()  # as if killed between a trial and the merge
    (folder / ".trials.parquet.abcd.tmp").write_bytes(b"half")
    assert _run_again(results).equals(before)
    assert set(pd.read_parquet(folder / "pairs.parquet")["trial_id"]) == set(before["trial_id"])


@pytest.mark.slow
def test_errored_trials_are_rerun_and_never_duplicated(layer_smoke):
    results, folder = layer_smoke
    before = pd.read_parquet(folder / "trials.parquet").set_index("target_layer")
    path = folder / "trials" / before.loc[1, "trial_id"] / "row.json"
    crashed = json.loads(path.read_text()) | {"status": "error", "error": "RuntimeError: simulated crash"}
    path.write_text(json.dumps(crashed))
    after = _run_again(results, "--layers", "1,3").set_index("target_layer")
    assert sorted(after.index) == [1, 2, 3] and after["trial_id"].is_unique and set(after["status"]) == {"ok"}
    assert after.loc[1, "trial_id"] == before.loc[1, "trial_id"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--pooling-eval", "max"], "argument --pooling-eval: 'max' is not one of"),
        (["--quantization", "int3"], "argument --quantization: 'int3' is not one of"),
        (["--dtype", "float8"], "argument --dtype: 'float8' is not one of"),
        (["--device", "gpu"], "argument --device: 'gpu' is not a device"),
        (["--cpus-per-trial", "-1"], "argument --cpus-per-trial: must be > 0"),
        (["--seeds", "x"], "cannot read 'x' as integers"),
        (["--layers", "5-2"], "reversed range '5-2'"),
        (["--layers", "0,1"], "argument --layers: must be >= 1"),
        (["--callbacks", "neptune"], "'neptune' is not one of"),
        (["--experiment", "../x"], "'../x' is not an experiment name"),
    ],
)
def test_bad_sweep_flags_are_usage_errors_of_one_line(flags, message, tmp_path, capsys):
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--help" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "/nonexistent-model"], "not found"),
        (["--layers", "31"], "target layer 31 is out of range: smollm2-135m has layers 0..30"),
        (["--selection-layer", "40"], "selection layer 40 is out of range"),
        (["--pairs", "/nonexistent.tsv"], "no such file"),
        (["--results", "/proc/tli"], "cannot write to /proc"),
        (["--validation-fraction", "0", "--save-adapters", "best"], "no validation set is left"),
        (["--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    ],
)
def test_bad_sweep_settings_fail_before_ray_with_one_line(flags, message, tmp_path, capsys):
    started = time.perf_counter()
    results = [] if "--results" in flags else ["--results", str(tmp_path)]
    assert load_ablation("layer_sweep").main(["--smoke-test", *results, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert time.perf_counter() - started < 30 and not (tmp_path / "layer_sweep" / "trials").exists()  # no Ray


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cpus-per-trial", "64"], "a trial asks for 64 CPU but this machine has 2: lower --cpus-per-trial"),
        (["--gpus-per-trial", "0.3"], "a trial asks for 0.3 GPU but this machine has 0: lower --gpus-per-trial"),
    ],
)
def test_a_trial_larger_than_this_machine_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch, flags, message):
    import ray

    from tli.sweep import session

    monkeypatch.setattr(session, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("a private Ray was started"))
    results = tmp_path / "results"
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(results), "--no-drift", *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not results.exists()  # refused before anything is written


def test_this_machine_is_counted_as_ray_counts_it(monkeypatch):
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    from tli.sweep import session

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # fewer visible than 2 would be an error of Ray's
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 3, "GPU": 2}')  # what a private Ray would then have
    assert session.local_resources() == {"CPU": 3.0, "GPU": 2.0}
    monkeypatch.delenv("RAY_OVERRIDE_RESOURCES")
    monkeypatch.setattr(NvidiaGPUAcceleratorManager, "get_current_node_num_accelerators", staticmethod(lambda: 2))
    assert session.local_resources()["GPU"] == 2  # two GPUs detected
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert session.local_resources()["GPU"] == 1  # one of them visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert session.local_resources()["GPU"] == 0


@pytest.mark.slow
def test_an_experiment_never_mixes_trials_of_other_inputs(layer_smoke, small_pairs, capsys):
    results, folder = layer_smoke
    before = sorted(p.name for p in (folder / "trials").iterdir())
    flags = ["--smoke-test", "--results", str(results), "--no-drift"]
    assert load_ablation("layer_sweep").main([*flags, "--pairs", str(small_pairs[0])]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "holds trials of other inputs" in errors[0] and "another --experiment" in errors[0]
    assert sorted(p.name for p in (folder / "trials").iterdir()) == before


@pytest.mark.slow
def test_a_full_sweep_into_a_smoke_tests_folder_is_refused_before_ray(layer_smoke, capsys, monkeypatch):
    """Its drift samples would be made anew (the stored ones are a smoke test's): refused with neither Ray nor them."""
    import ray

    results, folder = layer_smoke
    for name in ("init", "remote"):  # starting Ray, or the drift samples' task on a Ray already up
        monkeypatch.setattr(ray, name, lambda *args, **kwargs: pytest.fail("Ray used before the refusal"))
    started = time.perf_counter()
    assert load_ablation("layer_sweep").main(["--results", str(results), "--layers", "1,2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "holds trials of other inputs" in errors[0] and "--smoke-test" in errors[0]
    assert time.perf_counter() - started < 60


def test_a_pairs_files_own_unseen_rows_join_the_unseen_set(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "swahili\tenglish\tsplit\nmaji\twater\ttrained\nmoto\tfire\ttrained\n"
        "kitabu\tbook\tcontrol\nnyota\tstar\tunseen\nmaji\tliquid\tunseen\n"
    )
    inputs = sweep_inputs.load_inputs(SweepConfig(pairs=str(pairs), drift=False))
    assert list(inputs.pairs["split"]) == ["trained", "trained", "control"]
    assert list(inputs.unseen["english"]) == ["star"] and list(inputs.unseen.index) == [3]  # maji: leaks, dropped
    assert "star" in inputs.lexicon.english and inputs.pairs_file == str(pairs)


def test_a_split_that_leaves_too_few_pairs_fails_before_ray(tmp_path, capsys):
    pairs = tmp_path / "two.tsv"  # half of 2 trained pairs go to validation: 1 left to train on
    pairs.write_text("swahili\tenglish\tsplit\nmaji\twater\ttrained\nmoto\tfire\ttrained\nkitabu\tbook\tcontrol\n")
    flags = ["--smoke-test", "--results", str(tmp_path), "--pairs", str(pairs), "--validation-fraction", "0.5"]
    assert load_ablation("layer_sweep").main(flags) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "training pair(s) left: in-batch negatives need at least 2" in errors[0]


def test_a_sweep_in_which_every_trial_failed_is_an_error_and_lists_nothing(capsys):
    from tli.sweep.callbacks import finish

    failed = pd.DataFrame(
        {
            "trial_id": ["a", "b"],
            "status": ["error", "error"],
            "target_layer": [1, 2],
            "error": ["TrainingDiverged: loss is nan", "TrainingDiverged: loss is nan"],
        }
    )
    with pytest.raises(TliError, match="every trial failed \\(2\\); the first: TrainingDiverged"):
        finish(failed, [], "somewhere")
    assert "results in" not in capsys.readouterr().out


def test_help_answers_without_importing_ray_or_torch():
    import subprocess
    import sys

    probe = (
        "import sys; sys.argv = ['layer_sweep.py', '--help']; import runpy\n"
        "try: runpy.run_path('ablations/layer_sweep.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))"
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert out.strip().endswith("[]") and "--save-adapters" in out and time.perf_counter() - started < 10


# --- one experiment, one value of every setting it does not sweep --------------------------------

IDENTITY_CHANGES = [
    {"model": "gemma3-270m"},
    {"dtype": "bfloat16"},
    {"quantization": "nf4"},
    {"validation_fraction": 0.2},
    {"validation_seed": 1},
    {"drift": False},
    {"pooling_eval": "mean"},
    {"pooling_train": "last"},
    {"epochs": 3},
    {"warmup_steps": 0},
    {"n_boot": 500},
    {"selection_layer": 10},
    {"mask_false_negatives": False},
    {"lr": 1e-3},
    {"margin": 0.2},
    {"lora_rank": 8},
    {"heldout_category": "animal"},
]


@pytest.mark.parametrize("change", IDENTITY_CHANGES, ids=[next(iter(c)) for c in IDENTITY_CHANGES])
def test_a_rerun_with_another_unswept_setting_is_refused(change):
    from tli.sweep.tuner import _check_same_experiment

    base = base_settings(SweepConfig())
    stored = [base.replace(target_layer=2, seed=0, **change).row()]
    name = next(iter(change))
    with pytest.raises(TliError, match=f"holds trials with {name}=.* this run has {name}=.*use another --experiment"):
        _check_same_experiment("results/x", stored, None, base, ["target_layer", "seed"], "digest")


def test_a_rerun_that_only_adds_values_of_its_swept_settings_extends_the_experiment():
    from tli.sweep.tuner import _check_same_experiment

    base = base_settings(SweepConfig())
    layers = [base.replace(target_layer=layer, seed=seed).row() for layer in (1, 2) for seed in (0, 1)]
    _check_same_experiment("x", layers, {"pairs_digest": "d"}, base, ["target_layer", "seed"], "d")  # an older one
    ranks = [base.replace(target_layer=2, lora_rank=rank).row() for rank in (4, 64)]  # alpha follows the rank
    _check_same_experiment("x", ranks, {"runs": [{"pairs_digest": "d"}]}, base, ["target_layer", "lora_rank"], "d")
    protocols = [base.replace(pooling_eval="mean", mask_false_negatives=False).row()]  # one axis sets both
    _check_same_experiment("x", protocols, None, base, ["pooling_eval", "mask_false_negatives", "seed"], "d")
    for stored in ({"runs": [{"pairs_digest": "d"}, {"pairs_digest": "e"}]}, {"pairs_digest": "e"}):
        with pytest.raises(TliError, match="holds trials of other inputs .*pairs digest e, now d"):
            _check_same_experiment("x", [], stored, base, ["target_layer"], "d")


@pytest.mark.slow
def test_mixed_settings_are_refused_before_ray_and_each_run_is_recorded(layer_smoke, capsys):
    results, folder = layer_smoke
    before = sorted(p.name for p in (folder / "trials").iterdir())
    config = json.loads((folder / "sweep_config.json").read_text())
    for flags in (
        ["--validation-fraction", "0.2"],
        ["--no-drift", "--model", "gemma3-270m"],
        ["--pooling-eval", "mean"],
    ):
        started = time.perf_counter()
        assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(results), *flags]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and "a setting it does not sweep" in errors[0], errors
        assert time.perf_counter() - started < 60  # no Ray: refused before it starts
    assert sorted(p.name for p in (folder / "trials").iterdir()) == before
    assert json.loads((folder / "sweep_config.json").read_text()) == config  # nothing recorded for a refused run
    runs = config["runs"]
    assert runs[0]["pairs_digest"] and runs[0]["planned"] == 2 and runs[0]["sweep"]["save_adapters"] == "best"
    assert all(run["base"]["inputs_digest"] == runs[0]["base"]["inputs_digest"] for run in runs)


def _sweep_places(tmp_path, small_pairs, tiny_llama_dir) -> dict[str, str]:
    """A pairs file in a folder, a symbolic link to that folder, the tiny model: inputs a results folder must avoid."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.tsv").write_bytes(small_pairs[0].read_bytes())
    (data / "unseen.tsv").write_text("swahili\tenglish\nnyota\tstar\nmwezi\tmoon\n")
    (tmp_path / "data-link").symlink_to(data)
    return {"tmp": str(tmp_path), "pairs": str(data / "pairs.tsv"), "model": str(tiny_llama_dir), "long": "x" * 300}


SWEEP_REFUSALS = [  # (flags with {placeholders}, message): one line, before Ray, nothing written
    ("--results s3://", "s3://: no bucket"),
    ("--results gs:///prefix", "no bucket"),
    ("--results file://relative/folder", "needs an absolute path"),
    ("--results s3:/bucket/prefix", "is neither a URI"),
    ("--results ftp://host/folder", "unknown URI scheme 'ftp'"),
    ("--results {tmp} --experiment {long}", "bytes, above the"),
    ("--pairs {pairs} --results {tmp} --experiment data", "holds the pairs file"),
    ("--pairs {pairs} --results {tmp} --experiment data-link", "holds the pairs file"),
    ("--pairs {pairs} --results {tmp}/data --experiment pairs.tsv", "is the pairs file"),
    ("--eval-pairs {tmp}/data/unseen.tsv --results {tmp} --experiment data", "holds the evaluation pairs file"),
    ("--model {model} --results {model}", "lies inside the model folder"),
    ("--results {tmp} --epochs 1 --epochs 2", "--epochs given twice"),
    ("--results {tmp} --drift --no-drift", "--drift and --no-drift both given"),
    ("--results {tmp} --seeds 0 --seeds=1", "--seeds given twice"),
    ("--results {tmp} -v --verbose", "-v and --verbose both given"),
    ("--results {tmp} --layers 1-100000", "must be >= 1 and <= "),
    ("--results {tmp} --seeds 0-4294967295", "holds more than 10000 values"),
    ("--results {tmp} --layers 2,3,2", "2 given twice"),
]


@pytest.mark.parametrize("flags, message", SWEEP_REFUSALS, ids=[case[0] for case in SWEEP_REFUSALS])
def test_sweep_refusals_are_one_line_before_ray_and_write_nothing(
    flags, message, tmp_path, small_pairs, tiny_llama_dir, capsys
):
    places = _sweep_places(tmp_path, small_pairs, tiny_llama_dir)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    started = time.perf_counter()
    assert load_ablation("layer_sweep").main(["--smoke-test", *flags.format(**places).split()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and message in errors[0] and err[-1] == errors[0], err
    assert not [line for line in err if "ray" in line.lower() and "error" not in line]  # no Ray chatter first
    assert time.perf_counter() - started < 60 and sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not Path("s3:").exists() and not Path("gs:").exists()  # a URI is never a local folder name


@pytest.mark.parametrize("flags", [["--ranks", "1-100000"], ["--ranks", ",".join(map(str, range(1, 20_002)))]])
def test_list_flags_are_bounded_before_they_are_expanded(flags, tmp_path, capsys):
    started = time.perf_counter()
    assert load_ablation("rank_sweep").main(["--results", str(tmp_path), *flags]) == 2
    assert "--ranks" in capsys.readouterr().err and time.perf_counter() - started < 5


def test_a_bad_pairs_file_is_refused_before_ray_torch_or_peft_is_imported(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.csv"
    bad.write_text('swahili,english\nmaji,water\n"moto,fire\nkitabu,book\n')
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['layer_sweep.py', '--pairs', {str(bad)!r}, '--results', {str(tmp_path)!r}]\n"
        "try: runpy.run_path('ablations/layer_sweep.py', run_name='__main__')\n"
        "except SystemExit as exit: print('EXIT', exit.code)\n"
        "print(sorted(m for m in ('ray', 'torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    assert run.stdout.split() == ["EXIT", "2", "[]"], run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and "line 3: a quote" in run.stderr and "never closed" in run.stderr


@pytest.mark.slow
def test_a_full_disk_while_a_resumed_sweep_commits_is_one_line_and_loses_nothing(layer_smoke, capsys, monkeypatch):
    import errno
    import os

    from tli.files import Folder, WriteError

    results, folder = layer_smoke
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and "tune" not in p.parts}
    write = Folder.write_files

    def full(self, contents):  # the disk fills as the new trial's tables are committed
        if any(name.startswith("summary.parquet/") for name in contents):
            raise WriteError(f"{self.uri}/summary.parquet", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return write(self, contents)

    monkeypatch.setattr(Folder, "write_files", full)
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(results), "--layers", "4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower() and "errors=" not in line]
    assert errors == lines[-1:] and "summary.parquet: No space left on device" in errors[0], lines[-20:]
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and "tune" not in p.parts}
    kept = [p for p in before if p.name not in ("sweep_config.json", "driver.lock")]  # a run's record, its driver
    assert {p: after.get(p) for p in kept} == {p: before[p] for p in kept}  # every earlier trial and table


def test_the_final_table_shows_the_gaps_the_verdict_reads():
    from tli.sweep.callbacks import TABLE_METRICS, final_table

    row = {"trial_id": "a", "status": "ok", "error": None, "target_layer": 2, "seed": 0, "objective": 0.1}
    row |= {f"target_trained_{metric}": 0.5 for metric in TABLE_METRICS} | {"target_trained_gap_post": 9.0}
    columns = final_table(pd.DataFrame([row]), ["seed"], "results/x").split()
    assert "centered_gap_alike_post" in columns and "gap_alike_pre" in columns
    assert "gap_post" not in columns and "9" not in columns  # the unmatched gap is in the store, not the console
