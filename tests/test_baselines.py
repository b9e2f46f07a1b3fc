"""tli.baselines: edit distance against a hand-written Levenshtein, Procrustes recovering a known rotation."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import special_ortho_group

from tli import baselines
from tli.evaluate import Lexicon


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_orthographic_similarity_is_one_minus_the_normalised_edit_distance():
    swahili, english = ["hospitali", "-refu", "Kompyuta"], ["hospital", "long", "computer", "refu"]
    got = baselines.orthographic_similarity(swahili, english)
    for i, s in enumerate(swahili):
        for j, e in enumerate(english):
            s_form, e_form = baselines.spelling(s), e.lower()
            expected = 1 - _levenshtein(s_form, e_form) / max(len(s_form), len(e_form))
            assert got[i, j] == pytest.approx(expected)
    assert got[1, 3] == 1.0  # "-refu" is spelt "refu"


def _pairs(n: int) -> pd.DataFrame:
    split = ["trained"] * (n - 10) + ["control"] * 10
    return pd.DataFrame({"swahili": [f"sw{i}" for i in range(n)], "english": [f"w{i:03d}" for i in range(n)]}).assign(
        split=split
    )


def test_procrustes_recovers_a_rotation_and_orthographic_matches_spelling():
    rng = np.random.default_rng(0)
    pairs = _pairs(60)
    lexicon = Lexicon.from_pairs(pairs)
    english = rng.normal(size=(60, 8))
    swahili = english @ special_ortho_group.rvs(8, random_state=1) + rng.normal(scale=0.01, size=(60, 8))
    sets = {name: rows for name, rows in pairs.groupby("split")}
    table = baselines.baseline_table(sets, lexicon, {3: (swahili, english)}, sets["trained"]).set_index("set")
    assert table.loc["control", "procrustes_p_at_1"] == 1.0 and table.loc["control", "procrustes_mrr"] == 1.0
    assert np.isnan(table.loc["trained", "procrustes_p_at_1"])  # the rows it is fitted on
    assert (table["eval_layer"] == 3).all() and list(table.columns[1:]) == list(baselines.COLUMNS)
    # sw<i> against w<j:03d>: every English spelling is equally far from "sw1"..., so spelling ranks by index
    assert 0 <= table.loc["control", "orthographic_p_at_1"] <= table.loc["control", "orthographic_p_at_10"] <= 1


def test_a_random_map_does_not_retrieve():
    rng = np.random.default_rng(1)
    pairs = _pairs(200)
    sets = {name: rows for name, rows in pairs.groupby("split")}
    pools = {2: (rng.normal(size=(200, 16)), rng.normal(size=(200, 16)))}
    table = baselines.baseline_table(sets, Lexicon.from_pairs(pairs), pools, sets["trained"]).set_index("set")
    assert table.loc["control", "procrustes_p_at_1"] <= 0.1  # chance: 1 / 200


def test_spelling_alone_retrieves_the_documented_share_of_the_paper_pairs():
    """docs/embedded-models.md's orthographic rows on the packaged pairs: 36 of 686 (5.2%), control 1 of 63."""
    from tli import data

    pairs = data.load_pairs()
    lexicon = Lexicon.from_pairs(pairs)
    similarity = baselines.orthographic_similarity(lexicon.swahili, lexicon.english)
    expected = {"all": (686, 36 / 686, 0.0685, 0.0831, 0.0680), "control": (63, 1 / 63, 0.0635, 0.0635, 0.0338)}
    for name, rows in {"all": pairs, "control": pairs[pairs["split"] == "control"]}.items():
        src, _, gold = lexicon.indices(rows)
        got = baselines.retrieval(similarity, src, gold)
        n, p_at_1, p_at_5, p_at_10, mrr = expected[name]
        assert len(rows) == n and got["p_at_1"] == pytest.approx(p_at_1)
        assert [got["p_at_5"], got["p_at_10"], got["mrr"]] == pytest.approx([p_at_5, p_at_10, mrr], abs=5e-5)
