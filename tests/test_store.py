"""The experiment store at scale and the aggregator's footprint: what the driver and the aggregator keep,
read and import (fast: no model, no Ray).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tli import stats

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
        shared = pool.pair_metrics(src_index, tgt_index, gold)
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
