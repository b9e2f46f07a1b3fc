"""The ablation runner: trial ids and grids, the result store, one worker's trials (no LoRA leak between
them, failures recorded), and the contract of `python ablations/layer_sweep.py --smoke-test --results DIR`
end to end on a local Ray."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tli import loss, models, runner
from tli.errors import TliError
from tli.scan import embed_pairs
from conftest import load_ablation
from tli.sweep_results import TRIAL_COLUMNS, ResultStore, metric_columns

# --- trial settings (no model, no Ray) ---------------------------------------------------------

@pytest.fixture(scope="module")
def paper_pairs():
    return runner.load_sweep_pairs(runner.SweepConfig(smoke_test=True))


def test_trial_id_is_a_stable_hash_of_the_settings():
    a = runner.trial_id({"target_layer": 2, "margin": 0.4, "heldout_category": None})
    assert a == runner.trial_id({"heldout_category": None, "margin": 0.4, "target_layer": 2})
    assert re.fullmatch(r"[0-9a-f]{12}", a)
    assert a != runner.trial_id({"target_layer": 3, "margin": 0.4, "heldout_category": None})


def test_expand_grid_crosses_axes_merges_dict_values_and_dedups(paper_pairs):
    defaults = runner.trial_defaults(runner.SweepConfig(), paper_pairs)
    protocols = [{"pooling_train": "mean", "pooling_eval": "mean"}, {"pooling_train": "last", "pooling_eval": "last"}]
    trials = runner.expand_grid({"target_layer": [1, 2], "protocol": protocols, "seed": [0, 0]}, defaults)
    assert len(trials) == 4
    assert {(t["target_layer"], t["pooling_train"], t["pooling_eval"]) for t in trials} == {
        (1, "mean", "mean"), (1, "last", "last"), (2, "mean", "mean"), (2, "last", "last")}
    assert len({t["trial_id"] for t in trials}) == 4
    assert all(t["lora_alpha"] == 2 * t["lora_rank"] for t in trials)
    with pytest.raises(TliError, match="unknown trial setting"):
        runner.expand_grid({"layer": [1]}, defaults)


def test_lora_alpha_defaults_to_twice_the_rank(paper_pairs):
    defaults = runner.trial_defaults(runner.SweepConfig(), paper_pairs)
    assert runner.normalize(defaults | {"lora_rank": 8})["lora_alpha"] == 16
    assert runner.normalize(defaults | {"lora_rank": 8, "lora_alpha": 8})["lora_alpha"] == 8


def test_smoke_grid_keeps_two_values_per_axis_and_one_seed():
    config = runner.SweepConfig(smoke_test=True, seeds=(3, 4, 5))
    assert runner.grid_space({"target_layer": list(range(1, 31))}, config) == {"target_layer": [1, 2], "seed": [3]}
    assert runner.grid_space({"target_layer": [5]}, runner.SweepConfig(seeds=(0, 1)))["seed"] == [0, 1]


def test_smoke_pairs_and_heldout_sets(paper_pairs):
    assert (paper_pairs["split"] == "trained").sum() == 16 and (paper_pairs["split"] == "control").sum() == 6
    category = paper_pairs["category"].iloc[0]
    train_rows, sets = runner.trial_sets(paper_pairs, category)
    assert set(sets) == {"trained", "control", "heldout"}
    assert (sets["heldout"]["category"] == category).all() and len(sets["heldout"]) == 4
    assert category not in set(train_rows["category"]) and len(train_rows) == 12
    with pytest.raises(TliError, match="no trained pairs of category"):
        runner.trial_sets(paper_pairs, "no-such-category")


# --- the result store ---------------------------------------------------------------------------

def _row(trial_id: str, status: str = "ok", **values) -> dict:
    return {"trial_id": trial_id, "status": status, "error": None if status == "ok" else "boom",
            "target_layer": 2, "finished_at": "2026-01-01T00:00:00"} | values


def _tables(n: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.DataFrame({"set": ["trained"], "eval_layer": [2], "mean_pre": [0.5]})
    pairs = pd.DataFrame({"set": ["trained"] * n, "eval_layer": [2] * n, "swahili": list("abc"[:n]),
                          "english": list("xyz"[:n]), "cosine_pre": [0.1] * n, "cosine_post": [0.2] * n})
    return summary, pairs


def test_store_merges_trials_and_survives_a_crash(tmp_path):
    store = ResultStore(tmp_path)
    store.write_trial(_row("aaaaaaaaaaaa", "error"))
    store.write_trial(_row("aaaaaaaaaaaa", target_trained_cosine_pre=0.5), *_tables())  # an errored trial re-run
    store.write_trial(_row("bbbbbbbbbbbb", "error"))
    # what a kill leaves behind: temp files of interrupted writes, a missing merged file
    (tmp_path / "trials" / ".cccccccccccc.json.x.tmp").write_text('{"trial_id": "cc')
    (tmp_path / ".trials.parquet.y.tmp").write_bytes(b"PAR1 half a file")
    trials = store.merge()
    assert list(trials["trial_id"]) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert dict(zip(trials["trial_id"], trials["status"])) == store.statuses() == {"aaaaaaaaaaaa": "ok", "bbbbbbbbbbbb": "error"}
    assert set(TRIAL_COLUMNS) | set(metric_columns()) <= set(trials.columns)
    (tmp_path / "trials.parquet").unlink()
    (tmp_path / "pairs.parquet").unlink()
    assert len(store.read("trials")) == 2 and len(store.read("pairs")) == 3
    summary = store.read("summary")
    assert list(summary["trial_id"]) == ["aaaaaaaaaaaa"] and summary.columns[0] == "trial_id"


# --- one worker's trials, in process (tiny random Llama) ----------------------------------------

@pytest.fixture()
def tiny_sweep(tiny_llama_dir, small_pairs, tmp_path):
    """(settings of two trials, pairs, a trial context, a fresh worker cache) on the tiny model."""
    pairs = small_pairs[1].reset_index(drop=True)
    config = runner.SweepConfig(model=str(tiny_llama_dir), epochs=2, n_boot=50)
    defaults = runner.trial_defaults(config, pairs) | {"lr": 1e-2, "warmup_steps": 0, "target_layer": 2}
    trials = [runner.normalize(defaults | {"seed": seed}) for seed in (0, 1)]
    context = {"store": str(tmp_path), "experiment": "tiny", "pairs": pairs, "device": "cpu"}
    return trials, pairs, context, runner.WorkerCache()


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.slow
def test_lora_does_not_leak_between_trials_of_one_worker(tiny_sweep, tiny_llama_dir):
    trials, pairs, context, cache = tiny_sweep
    fresh, tokenizer = models.load_model(models.ModelConfig(model=str(tiny_llama_dir), device="cpu"))
    reference = _state(fresh)
    first = runner.run_trial(trials[0], context, cache)
    key = (str(tiny_llama_dir), "cpu", "auto", "none")
    model = cache.models[key][0]
    after_first = runner.ResultStore(context["store"]).read("pairs")
    second = runner.run_trial(trials[1], context, cache)
    assert first["status"] == second["status"] == "ok"
    assert first["target_trained_mean_diff"] != 0  # the adapter did change the embeddings
    assert cache.models[key][0] is model and (first["worker_trial"], second["worker_trial"]) == (1, 2)  # reused
    assert not runner.has_lora(model) and not any("lora" in name for name in model.state_dict())
    state = _state(model)
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)
    # the live model embeds exactly as a freshly loaded one, and both trials saw the same pre-TLI cosines
    live, new = (embed_pairs(m, tokenizer, pairs, [2, 4], "mean_content") for m in (model, fresh))
    for layer in (2, 4):
        np.testing.assert_array_equal(live[layer][0], new[layer][0])
    runner.ResultStore(context["store"]).merge()  # (the driver merges after each trial)
    table = runner.ResultStore(context["store"]).read("pairs")
    by_trial = {tid: rows.reset_index(drop=True) for tid, rows in table.groupby("trial_id")}
    np.testing.assert_array_equal(by_trial[first["trial_id"]]["cosine_pre"], by_trial[second["trial_id"]]["cosine_pre"])
    assert len(after_first) == len(by_trial[first["trial_id"]])


@pytest.mark.slow
def test_failures_become_error_rows_and_leave_a_clean_cache(tiny_sweep, monkeypatch):
    trials, pairs, context, cache = tiny_sweep
    layer0 = runner.run_trial(trials[0] | {"target_layer": 0}, context, cache)
    assert layer0["status"] == "error" and "target layer 0" in layer0["error"] and not cache.models
    assert math.isnan(layer0["objective"])

    monkeypatch.setattr(loss, "triplet_margin_hardest_negative", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    diverged = runner.run_trial(trials[0], context, cache)
    assert diverged["status"] == "error" and diverged["error"].startswith("TrainingDiverged")
    assert not cache.models  # the model had LoRA attached when training failed: dropped, reloaded next time

    monkeypatch.undo()
    retried = runner.run_trial(trials[0], context, cache)  # an errored trial is run again
    assert retried["status"] == "ok" and retried["trial_id"] == diverged["trial_id"]
    assert not runner.has_lora(next(iter(cache.models.values()))[0])
    assert runner.ResultStore(context["store"]).statuses() == {layer0["trial_id"]: "error", retried["trial_id"]: "ok"}


# --- the layer-sweep contract, end to end on a local Ray ----------------------------------------

@pytest.fixture(scope="module")
def layer_smoke(tmp_path_factory):
    """`ablations/layer_sweep.py --smoke-test --results DIR`, run once for the assertions below."""
    results = tmp_path_factory.mktemp("results")
    started = time.perf_counter()
    assert load_ablation("layer_sweep").main(["--smoke-test", "--results", str(results)]) == 0
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
    assert trials["trial_id"].is_unique and trials["trial_id"].str.fullmatch(r"[0-9a-f]{12}").all()
    metrics = metric_columns(("trained", "control"))
    assert set(TRIAL_COLUMNS) | set(metrics) | {"version_torch", "version_ray", "git_commit"} <= set(trials.columns)
    assert np.isfinite(trials[metrics + ["final_loss", "objective", "train_seconds", "eval_seconds"]].to_numpy(float)).all()
    assert (trials["eval_layer_final"] == 30).all() and (trials["split"] == "paper").all()
    assert (trials["epochs"] == 1).all() and (trials["n_train_pairs"] == 16).all()

    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert len(pairs) == 2 * 2 * 22  # trials x eval layers (target, final) x pairs
    assert {"trial_id", "eval_layer", "set", "swahili", "english", "category", "cosine_pre", "cosine_post",
            "cosine_centered_pre", "cosine_centered_post"} <= set(pairs.columns)
    summary = pd.read_parquet(folder / "summary.parquet")
    assert len(summary) == 2 * 2 * 2 and summary.columns[0] == "trial_id"  # trials x sets x eval layers
    scan = pd.read_parquet(folder / "scan.parquet")
    assert len(scan) == 31 * 4 and set(scan["pooling"]) == {"mean", "mean_content", "mean_skip_first", "last"}
    assert set(scan["model"]) == {"smollm2-135m"}
    assert json.loads((folder / "sweep_config.json").read_text())["sweep"]["smoke_test"] is True


@pytest.mark.slow
def test_rerun_adds_no_rows_and_restores_a_killed_run(layer_smoke):
    results, folder = layer_smoke
    before = pd.read_parquet(folder / "trials.parquet")
    assert _run_again(results).equals(before)  # finished trials are skipped: nothing re-run, nothing added
    (folder / "trials.parquet").unlink()  # as if killed between a trial and the merge
    (folder / "pairs.parquet").unlink()
    (folder / ".trials.parquet.x.tmp").write_bytes(b"half")
    (folder / "trials" / ".0123456789ab.json.y.tmp").write_text("{")
    assert _run_again(results).equals(before)
    assert len(pd.read_parquet(folder / "pairs.parquet")) == 2 * 2 * 22


@pytest.mark.slow
def test_errored_trials_are_rerun_and_a_failing_trial_does_not_stop_the_sweep(layer_smoke):
    results, folder = layer_smoke
    before = pd.read_parquet(folder / "trials.parquet").set_index("target_layer")
    path = folder / "trials" / f"{before.loc[1, 'trial_id']}.json"
    crashed = json.loads(path.read_text()) | {"status": "error", "error": "RuntimeError: simulated crash"}
    path.write_text(json.dumps(crashed))
    after = _run_again(results, "--layers", "0,1").set_index("target_layer")
    assert sorted(after.index) == [0, 1, 2] and after["trial_id"].is_unique
    assert after.loc[0, "status"] == "error" and "target layer 0" in after.loc[0, "error"]
    assert after.loc[1, "status"] == "ok" and after.loc[1, "finished_at"] != before.loc[1, "finished_at"]  # re-run
    assert after.loc[2, "finished_at"] == before.loc[2, "finished_at"]  # untouched
