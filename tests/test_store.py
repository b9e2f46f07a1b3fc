"""The experiment store at scale and the aggregator's footprint: what the driver and the aggregator keep,
read and import (fast: no model, no Ray).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tli import report, stats
from tli.errors import TliError
from tli.files import Folder
from tli.sweep import trial
from tli.sweep.settings import TrialSettings
from tli.sweep.store import LOCK_FILE, DriverLock, ExperimentStore
from tli.sweep.trial import TrialRecord, pack

from report_fixture import make_results

ROOT = Path(__file__).resolve().parents[1]


def test_the_aggregator_imports_no_torch_transformers_peft_or_ray():
    probe = (
        "import sys, tli.report, tli.evaluate, tli.stats\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_pool_similarities_shared_by_sets_give_each_sets_pair_metrics():
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(12, 5)), rng.normal(size=(9, 5))
    pool = stats.PoolSimilarities.of(src, tgt, k=3)
    for rows in ([0, 3, 4], [8, 1, 2, 5, 6]):  # two sets of one pool
        src_index, tgt_index = np.array(rows), np.array(rows) % 9
        gold = np.zeros((len(rows), 9), dtype=bool)
        gold[np.arange(len(rows)), tgt_index] = True
        shared = pool.pair_metrics(src_index, tgt_index, gold, stats.alike_baseline(gold, tgt_index, np.ones(9)))
        # an independent computation on the set's own rows: cosines by hand, CSLS from the whole pool
        s, t = src / np.linalg.norm(src, axis=1, keepdims=True), tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
        cos = s @ t.T
        np.testing.assert_allclose(shared["cosine"], np.sum(s[src_index] * t[tgt_index], axis=1))
        others = np.where(gold, np.nan, cos[src_index])
        np.testing.assert_allclose(shared["mismatched"], np.nanmean(others, axis=1))
        r_t, r_s = np.sort(cos, axis=1)[:, -3:].mean(axis=1), np.sort(cos, axis=0)[-3:].mean(axis=0)
        csls = 2 * cos[src_index] - r_t[src_index, None] - r_s[None, :]
        np.testing.assert_array_equal(shared["hit_csls"], gold[np.arange(len(rows)), csls.argmax(axis=1)])
        assert set(shared) == set(stats.PAIR_METRICS)


def _row(trial_id: str, objective: float, sets: tuple[str, ...]) -> dict:
    row = TrialSettings().row() | {
        "trial_id": trial_id,
        "status": "ok",
        "error": None,
        "objective": objective,
        "objective_metric": trial.OBJECTIVE_METRIC,
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
    return row | {f"target_{name}_cosine_post": 0.5 for name in sets} | {f"target_{name}_n": 3 for name in sets}


def _archive(trial_id: str, objective: float = 0.1, sets: tuple[str, ...] = ("trained",)) -> bytes:
    pairs = pd.DataFrame({"set": ["trained"] * 2, "pair_id": [0, 1], "cosine_pre": [0.1, 0.2], "pos": [None, None]})
    tables = {"summary": pd.DataFrame({"set": ["trained"], "mean_pre": [0.5]}), "pairs": pairs}
    adapter = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x"}
    return pack(TrialRecord(_row(trial_id, objective, sets), tables, adapter))


def test_tables_keep_one_schema_whatever_the_sets_and_type_empty_columns(tmp_path):
    schemas = []
    for name, sets in (("a", ("trained",)), ("b", ("trained", "unseen", "heldout"))):
        store = ExperimentStore(str(tmp_path / name))
        store.commit(_archive("aaaaaaaaaaaa", sets=sets), experiment=name)
        store.merge()
        schemas.append(pq.read_schema(tmp_path / name / "trials.parquet").remove_metadata())
    assert schemas[0] == schemas[1]  # polars.read_parquet("*/trials.parquet") reads both
    assert not [f.name for f in schemas[0] if pa.types.is_null(f.type)]  # error, heldout_category: text
    assert schemas[0].field("finished_at").type == pa.timestamp("us", tz="UTC")
    assert schemas[0].field("target_unseen_n").type == pa.int64()
    pairs = pq.read_table(tmp_path / "a" / "pairs.parquet")  # the dataset, as pandas or DuckDB read it
    assert pairs.column_names[0] == "trial_id" and pairs.schema.field("pos").type == pa.string()
    trials = pd.read_parquet(tmp_path / "b" / "trials.parquet")
    assert trials["target_unseen_cosine_post"].iloc[0] == 0.5 and trials["target_control_cosine_post"].isna().all()


def test_a_trial_row_names_its_code():
    assert {"version_tli", "git_commit"} <= set(trial._provenance()) <= set(trial.trials_schema().names)


def test_best_adapter_costs_one_comparison_per_commit(tmp_path, monkeypatch):
    store = ExperimentStore(str(tmp_path))
    store.commit(_archive("000000000000", 0.0), save_adapters="best")  # the first reads what is stored, once
    monkeypatch.setattr(store, "rows", lambda: pytest.fail("rows read again"))
    monkeypatch.setattr(store, "trial_ids", lambda: pytest.fail("trial folders walked again"))
    scores = [0.3, 0.1, 0.5, 0.5, 0.2]
    for index, score in enumerate(scores, 1):
        store.commit(_archive(f"{index:012x}", score), save_adapters="best")
    kept = sorted(p.parent.name for p in tmp_path.glob("trials/*/adapter"))
    assert kept == [f"{3:012x}"]  # the highest objective; on a tie the first keeps it
    again = ExperimentStore(str(tmp_path))  # a new driver finds the stored best
    again.commit(_archive(f"{9:012x}", 0.4), save_adapters="best")
    assert sorted(p.parent.name for p in tmp_path.glob("trials/*/adapter")) == kept


def test_the_driver_keeps_no_python_object_per_trial(tmp_path):
    """Commits and merges (every 10 commits, as the driver's 30 s) hold no per-trial Python state: tracemalloc's
    live memory after 60 trials is within 64 KB of that after 20 (the trials table is Arrow memory, about 3 KB a
    trial at full size; benchmarks/bench_store.py measures RSS at 5,000 trials).
    """
    import gc
    import tracemalloc

    store = ExperimentStore(str(tmp_path))
    archives = [_archive(f"{index:012x}", 0.01 * index) for index in range(60)]
    tracemalloc.start()
    try:
        for index, archive in enumerate(archives):
            store.commit(archive, save_adapters="best")
            if index % 10 == 9:
                store.merge()
            if index == 19:
                gc.collect()
                after_20 = tracemalloc.get_traced_memory()[0]
        gc.collect()
        after_60 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_60 - after_20 < 64 * 1024, (after_20, after_60)
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 60


def test_merge_reads_only_rows_committed_since_the_last(tmp_path, monkeypatch):
    store = ExperimentStore(str(tmp_path))
    for index in range(3):
        store.commit(_archive(f"{index:012x}"))
    assert len(store.merge()) == 3
    reads = []
    monkeypatch.setattr(store, "row", lambda trial_id: reads.append(trial_id))
    store.commit(_archive(f"{7:012x}"))
    trials = store.merge()
    assert reads == [] and list(trials["trial_id"])[-1] == f"{7:012x}" and len(trials) == 4
    assert sorted(p.name for p in (tmp_path / "pairs.parquet").iterdir()) == [f"{i:012x}.parquet" for i in (0, 1, 2, 7)]


def test_an_older_layout_is_moved_into_the_datasets(tmp_path):
    store = ExperimentStore(str(tmp_path))
    store.commit(_archive("aaaaaaaaaaaa"))
    store.merge()
    (tmp_path / "pairs.parquet" / "aaaaaaaaaaaa.parquet").rename(tmp_path / "trials" / "aaaaaaaaaaaa" / "pairs.parquet")
    (tmp_path / "pairs.parquet").rmdir()
    pd.DataFrame({"stale": [1]}).to_parquet(tmp_path / "pairs.parquet")  # the merged file of the older layout
    ExperimentStore(str(tmp_path)).merge()
    assert list(pd.read_parquet(tmp_path / "pairs.parquet")["trial_id"]) == ["aaaaaaaaaaaa"] * 2
    assert not (tmp_path / "trials" / "aaaaaaaaaaaa" / "pairs.parquet").exists()


# the columns the two-level bootstrap and family-wise correction (issue 22) replaced by design since the fixture
REDEFINED = {"ci_low", "ci_high", "p_holm"} | {
    f"{g}_{c}" for g in ("gap", "centered_gap") for c in ("ci_low", "ci_high", "p")
}


def test_the_significance_table_read_by_condition_matches_the_one_of_merged_tables(tmp_path):
    """tests/data/significance_before.csv: the table of the code that read whole merged tables (de59d64) on the
    report fixture, n_boot 1000: every column it shares with today's, row by row, within 1e-9.
    """
    results = report.load_results(str(make_results(tmp_path)))
    table = report.significance_table(results, n_boot=1000, seed=0)
    before = pd.read_csv(ROOT / "tests" / "data" / "significance_before.csv")
    shared = [c for c in before if c in table and c not in REDEFINED]
    assert len(table) == len(before) and len(shared) >= 45
    for column in shared:
        if before[column].dtype.kind in "fi":
            np.testing.assert_allclose(table[column].astype(float), before[column], rtol=1e-9, err_msg=column)
        else:
            assert (table[column].astype(str) == before[column].astype(str)).all(), column


def test_the_sweep_package_reads_top_down():
    """No import circle inside tli.sweep, lazy imports included (type hints aside): each module imports only
    modules above it.
    """
    import ast

    order = [
        "settings",
        "flags",
        "inputs",
        "resources",
        "trial",
        "store",
        "session",
        "callbacks",
        "tuner",
        "script",
        "replay",
    ]
    for index, name in enumerate(order):
        tree = ast.parse((ROOT / "tli" / "sweep" / f"{name}.py").read_text())
        tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")]
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {
            f"tli.sweep.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "tli.sweep"
            for alias in node.names
        }
        below = {f"tli.sweep.{other}" for other in order[index:]}
        assert not imported & below, f"{name} imports {sorted(imported & below)}"
    assert sorted(p.stem for p in (ROOT / "tli" / "sweep").glob("*.py")) == sorted([*order, "__init__"])


# --- one driver per experiment -------------------------------------------------------------------

HOLD = (
    "import sys, time\n"
    "from tli.sweep.store import ExperimentStore\n"
    "with ExperimentStore(sys.argv[1]).lock('python holder.py'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def test_a_local_experiment_admits_one_driver_and_frees_itself_when_its_driver_dies(tmp_path):
    folder = tmp_path / "experiment"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TliError, match=f"is in use by another driver \\(pid {holder.pid} on "):
            with ExperimentStore(str(folder)).lock():
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait(timeout=30)
    with ExperimentStore(str(folder)).lock("second"):  # the kernel released the lock with its process
        assert json.loads((folder / LOCK_FILE).read_text())["command"] == "second"
    assert not folder.exists()  # a driver that wrote nothing (a refused run) leaves no folder behind
    with ExperimentStore(str(folder)).lock("third"):
        (folder / "sweep_config.json").write_text("{}")
    assert json.loads((folder / LOCK_FILE).read_text())["command"] == "third"  # who ran it last


@pytest.fixture()
def lease(tmp_path, monkeypatch):
    """An object store's lease, on a local folder (the protocol is the same), with short waits."""
    monkeypatch.setattr(DriverLock, "settle_s", 0.05)
    monkeypatch.setattr(DriverLock, "renew_s", 0.05)
    folder = Folder(str(tmp_path))

    def holder(**fields) -> None:
        folder.write_json(LOCK_FILE, {"owner": "other", "host": socket.gethostname(), "pid": os.getpid()} | fields)

    return folder, holder


def test_a_lease_refuses_a_live_holder_and_takes_over_a_dead_or_silent_one(lease, caplog):
    folder, holder = lease
    holder(renewed_at=time.time())  # alive on this host, renewed just now
    with pytest.raises(TliError, match="is in use by another driver"):
        DriverLock(folder, lease=True).__enter__()
    holder(host="elsewhere", renewed_at=time.time() - 10)  # another host, renewed within the lease
    with pytest.raises(TliError, match="is in use by another driver .* on elsewhere"):
        DriverLock(folder, lease=True).__enter__()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for stale in ({"pid": int(dead.stdout)}, {"host": "elsewhere", "renewed_at": time.time() - 3600}):
        holder(**({"renewed_at": time.time()} | stale))
        with caplog.at_level(logging.WARNING), DriverLock(folder, lease=True, command="mine") as lock:
            assert folder.read_json(LOCK_FILE)["owner"] == lock.holder["owner"]
        assert "taking over" in caplog.text and not folder.exists(LOCK_FILE)  # released: removed
        caplog.clear()


def test_a_lease_is_renewed_and_only_its_last_writer_goes_on(lease, monkeypatch):
    folder, holder = lease
    with DriverLock(folder, lease=True) as lock:
        first = folder.read_json(LOCK_FILE)["renewed_at"]
        time.sleep(0.5)
        assert folder.read_json(LOCK_FILE)["renewed_at"] > first  # renewed while the driver runs
        assert folder.read_json(LOCK_FILE)["owner"] == lock.holder["owner"]

    wait = time.sleep
    monkeypatch.setattr(
        "tli.sweep.store.time.sleep", lambda seconds: (holder(renewed_at=time.time()), wait(seconds))
    )  # another driver writes its lease while this one settles
    with pytest.raises(TliError, match="is in use by another driver"):
        DriverLock(folder, lease=True).__enter__()
    assert folder.read_json(LOCK_FILE)["owner"] == "other"  # the refused driver leaves the lease alone
