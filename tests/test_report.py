"""The aggregator: statistics against scipy/statsmodels, the report from a fixture sweep, its HTML in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from conftest import load_ablation
from report_fixture import RANK_MARGIN_SPACE, make_results
from tli import report, stats

@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """2 target layers x 2 held-out categories x 2 eval poolings x 2 seeds; 1 errored, 2 not run yet."""
    return make_results(tmp_path_factory.mktemp("results"), skip_last=2)


@pytest.fixture(scope="module")
def results(fixture_dir):
    return report.load_results(fixture_dir)


@pytest.fixture(scope="module")
def sig(results):
    return report.significance_table(results, n_boot=500, seed=0)


@pytest.fixture(scope="module")
def built(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert load_ablation("aggregate").main([str(fixture_dir), "--out", str(out), "--n-boot", "200"]) == 0
    return out


def _condition_pairs(results, row) -> pd.DataFrame:
    ok = results.ok
    ids = ok[(ok["target_layer"] == row["target_layer"]) & (ok["pooling_eval"] == row["pooling_eval"])
             & (ok["heldout_category"] == row["heldout_category"])]
    pairs = results.pairs.merge(ids[["trial_id", "seed"]], on="trial_id")
    return pairs[(pairs["set"] == row["set"]) & (pairs["eval_layer"] == row["eval_layer"])], ids


def test_default_conditions_are_the_varying_settings(results):
    assert report.condition_columns(results.trials) == ["target_layer", "pooling_eval", "heldout_category"]


def test_pair_level_statistics_match_scipy(results, sig):
    row = sig[(sig["n_seeds"] == 2) & (sig["set"] == "trained")].iloc[0]
    pairs, _ = _condition_pairs(results, row)
    pre, post = pairs["cosine_pre"].to_numpy(), pairs["cosine_post"].to_numpy()
    diff = post - pre
    test = scipy_stats.ttest_rel(post, pre)
    assert row["n"] == len(pairs) == 2 * pairs[["swahili", "english"]].drop_duplicates().shape[0]
    assert row["mean_pre"] == pytest.approx(pre.mean()) and row["mean_post"] == pytest.approx(post.mean())
    assert row["mean_diff"] == pytest.approx(diff.mean())
    assert row["t"] == pytest.approx(test.statistic) and row["p"] == pytest.approx(test.pvalue)
    assert row["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(post, pre).pvalue)
    assert row["d_z"] == pytest.approx(diff.mean() / np.std(diff, ddof=1))
    boot = scipy_stats.bootstrap((diff,), np.mean, n_resamples=500, method="BCa", rng=np.random.default_rng(0))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(boot.confidence_interval))


def test_seed_level_statistics_and_trial_means(results, sig):
    row = sig[(sig["n_seeds"] == 2) & (sig["set"] == "control")].iloc[0]
    pairs, ids = _condition_pairs(results, row)
    per_seed = pairs.groupby("seed")[["cosine_pre", "cosine_post"]].mean()
    seed_diff = per_seed["cosine_post"] - per_seed["cosine_pre"]
    assert row["seed_mean_diff"] == pytest.approx(seed_diff.mean())
    assert row["seed_std_diff"] == pytest.approx(np.std(seed_diff, ddof=1))
    test = scipy_stats.ttest_rel(per_seed["cosine_post"], per_seed["cosine_pre"])
    assert (row["seed_t"], row["seed_p"]) == pytest.approx((test.statistic, test.pvalue))
    summary = results.summary.merge(ids[["trial_id"]], on="trial_id")
    summary = summary[(summary["set"] == row["set"]) & (summary["eval_layer"] == row["eval_layer"])]
    for column in ("gap_pre", "gap_post", "centered_gap_pre", "centered_gap_post", "p_at_1_pre", "p_at_1_post"):
        assert row[column] == pytest.approx(summary[column].mean())


def test_corrections_across_all_rows_match_statsmodels(sig):
    assert sig["p"].notna().all()
    assert sig["p_holm"].to_numpy() == pytest.approx(multipletests(sig["p"], method="holm")[1])
    assert sig["p_bh"].to_numpy() == pytest.approx(multipletests(sig["p"], method="fdr_bh")[1])


def test_paper_table1_p_values():
    """The paper's Table 1: t = 54.8842 on 623 pairs and t = 18.4525 on 63, p as the report prints them."""
    for t, n, printed in ((54.8842, 623, "1.33e-240"), (18.4525, 63, "7.17e-27")):
        p = stats.t_test_p_from_t(t, n)
        assert p == pytest.approx(2 * scipy_stats.t.sf(t, n - 1), rel=1e-12)
        assert report._format(p, "p") == printed


def test_partial_results_and_errored_trials_are_counted(results, sig):
    line = report.progress_line(results)
    assert "14 of 16 planned trials done (13 ok, 1 errored and skipped)" in line and "2 not finished" in line
    errored = results.errors["trial_id"].iloc[0]
    assert errored not in set(results.pairs["trial_id"])
    assert sig.groupby(["set", "eval_layer"])["n_trials"].sum().max() <= 13


def test_report_files_and_embedded_figures(built):
    for name in ("significance.csv", "significance.md", "report.md", "report.html"):
        assert (built / name).stat().st_size > 500, name
    figures = sorted((built / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["gain_by_layer.png", "heldout.png", "layer_scan.png"]
    assert all(f.stat().st_size > 10_000 for f in figures)
    page = (built / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3 and "figures/" not in page
    text = (built / "report.md").read_text()
    assert "14 of 16 planned trials" in text and "unit of analysis is then the seed" in text
    assert "Paper protocol" in text and "Controlled protocol" in text and "Figure skipped (t-SNE)" in text
    assert len(pd.read_csv(built / "significance.csv")) == 7 * 3 * 2  # 7 conditions run x 3 sets x 2 eval layers


def test_rank_margin_heat_map(tmp_path):
    root = make_results(tmp_path, space=RANK_MARGIN_SPACE, seeds=(0,), n_errors=0)
    paths = report.build_report(root, tmp_path / "out", n_boot=100)
    assert (tmp_path / "out" / "figures" / "rank_margin.png").stat().st_size > 10_000
    text = paths["report_md"].read_text()
    assert "paper's protocol (pooling_train = pooling_eval = mean, BOS included) was not run" in text
    assert "unit of analysis" not in text


def test_tsne_plot_small_n(tmp_path):
    rng = np.random.default_rng(0)
    sw, en = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    path = report.plot_tsne({"pre": (sw, en), "post": (sw, en + 0.1), "words": list("abcde")}, tmp_path / "t.png")
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("case", ["missing", "empty", "no_rows"])
def test_one_line_error_for_missing_or_empty_dir(tmp_path, capsys, case):
    target = tmp_path / "experiment"
    if case != "missing":
        target.mkdir()
    if case == "no_rows":
        pd.DataFrame({"trial_id": [], "status": []}).to_parquet(target / "trials.parquet")
    assert load_ablation("aggregate").main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aggregate.py: error: ")
    assert {"missing": "does not exist", "empty": "no results", "no_rows": "no trials"}[case] in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_html_images_load_in_headless_chromium(built, tmp_path):
    page = (built / "report.html").read_text()
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images]; document.title = "
             "'loaded ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + ' of ' + imgs.length; });</script>")
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert "<title>loaded 3 of 3</title>" in dom, dom[:300]


@pytest.mark.slow
def test_tsne_recomputed_on_a_tiny_model(tmp_path, tiny_llama_dir, small_pairs):
    """One real trial (no Ray) on the tiny random Llama, then --tsne retrains it and plots its embeddings."""
    from tli import config as configs
    from tli import results as result_files
    from tli import runner
    from tli.sweep_results import ResultStore

    pairs_path, _ = small_pairs
    config = runner.SweepConfig(model=str(tiny_llama_dir), pairs=str(pairs_path), epochs=1, n_boot=50, device="cpu")
    pairs = runner.load_sweep_pairs(config)
    defaults = runner.trial_defaults(config, pairs)
    settings = runner.expand_grid({"target_layer": [2]}, defaults)[0]
    row, summary, pair_table = runner.execute_trial(settings, pairs, runner.WorkerCache(), device="cpu")
    store = ResultStore(tmp_path / "tiny")
    store.write_trial(runner.trial_row(settings, "tiny") | row | {"objective": 0.0}, summary, pair_table)
    store.merge()
    result_files.write_json({"sweep": configs.to_dict(config), "param_space": {"target_layer": [2]},
                             "defaults": defaults}, store.root / "sweep_config.json")
    paths = report.build_report(store.root, tmp_path / "out", n_boot=50, tsne=True)
    assert (tmp_path / "out" / "figures" / "tsne.png").stat().st_size > 10_000
    assert "retrained with the trial's settings" in paths["report_md"].read_text()
