"""Sweep aggregation: significance tables, the paper's Tables 1-2, figures and a self-contained report.

Reads `<results>/<experiment>/` as `tli.sweep_results.ResultStore` writes it. A *condition* is one
setting of the `by` columns (default: every trial setting that varies across ok trials, seed
excepted); its rows pool the per-pair cosines of all its trials. With several seeds a pair appears
once per seed, so the pair-level tests over-count: the unit of analysis is then the seed, tested
by the `seed_*` columns (a paired t-test over the per-seed mean cosines before and after). All
statistics come from `tli.stats`.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tli import config as configs  # noqa: E402
from tli import results as result_files  # noqa: E402
from tli import stats  # noqa: E402
from tli.errors import TliError  # noqa: E402
from tli.sweep_results import ResultStore  # noqa: E402

log = logging.getLogger(__name__)

CONFIG_COLUMNS = (
    "model", "target_layer", "lora_rank", "lora_alpha", "lora_dropout", "margin", "lr", "epochs", "batch_size",
    "warmup_steps", "seed", "pooling_train", "pooling_eval", "split", "heldout_category", "target_modules",
    "dtype", "quantization",
)
NOT_CONDITIONS = ("seed", "split")  # seed: the replicate; split: a copy of heldout_category
SETS = ("trained", "control", "heldout")
TEST_COLUMNS = ("n", "mean_pre", "mean_post", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "p_bh",
                "wilcoxon_p", "d_z")
SEED_COLUMNS = ("n_seeds", "seed_mean_diff", "seed_std_diff", "seed_t", "seed_p")
TRIAL_METRICS = ("gap", "centered_gap", "p_at_1", "p_at_1_centered")  # from summary.parquet, mean over trials
P_COLUMNS = ("p", "p_holm", "p_bh", "wilcoxon_p", "seed_p")
PAPER_PROTOCOL = ("mean", "mean")  # (pooling_train, pooling_eval) as the paper describes it
SEED_NOTE = ("With several seeds per condition each pair enters the pair-level columns once per seed, so `n`, "
             "`t`, `p` and the CI over-count independent evidence: the unit of analysis is then the seed, and "
             "`seed_t` / `seed_p` (paired t-test over the per-seed mean cosines) are the tests to quote.")


# --- loading ------------------------------------------------------------------------------------

@dataclass
class Results:
    """The tables of one experiment directory (empty frames for files not written yet)."""

    root: Path
    trials: pd.DataFrame  # every committed trial, ok and error
    summary: pd.DataFrame  # trial x set x eval layer
    pairs: pd.DataFrame  # trial x eval layer x pair
    scan: pd.DataFrame  # the base model's layer scan, every pooling mode
    sweep_config: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    @property
    def errors(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] != "ok"]


def load_results(directory: str | Path) -> Results:
    """Read an experiment directory; TliError if it is missing or holds no trial."""
    root = Path(directory)
    if not root.is_dir():
        raise TliError(f"results directory {root} does not exist")
    has_rows = any(p for p in (root / "trials").glob("*.json") if not p.name.startswith("."))
    if not (root / "trials.parquet").exists() and not has_rows:
        raise TliError(f"no results in {root}: no trials.parquet (has the sweep finished a trial yet?)")
    store = ResultStore(root)
    trials = store.read("trials")
    if trials.empty:
        raise TliError(f"no trials in {root / 'trials.parquet'}")
    config_path = root / "sweep_config.json"
    sweep_config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return Results(root, trials, store.read("summary"), store.read("pairs"), store.read("scan"), sweep_config)


def planned_trials(sweep_config: dict[str, Any]) -> int | None:
    """Grid size from sweep_config.json (the runner's own expansion); num_samples for a search; None if unknown."""
    space, sweep, defaults = (sweep_config.get(k) for k in ("param_space", "sweep", "defaults"))
    if not all(isinstance(v, dict) for v in (space, sweep, defaults)):
        return None
    if not all(isinstance(values, list) for values in space.values()):
        return sweep.get("num_samples")
    from tli import runner

    try:
        config = configs.from_dict(runner.SweepConfig, sweep)
        return len(runner.expand_grid(runner.grid_space(space, config), defaults))
    except (TliError, KeyError, TypeError, ValueError) as error:
        log.warning("cannot size the grid from sweep_config.json: %s", error)
        return None


def progress_line(results: Results) -> str:
    """'N of M planned trials done (k ok, e errored and skipped)', noting a sweep still running."""
    done, planned = len(results.trials), planned_trials(results.sweep_config)
    counts = f"{len(results.ok)} ok, {len(results.errors)} errored and skipped"
    if planned is None:
        return f"{done} trials done ({counts}); grid size unknown (no usable sweep_config.json)."
    line = f"{done} of {planned} planned trials done ({counts})."
    if done < planned:
        line += f" {planned - done} not finished: the sweep is still running or was stopped; tables cover finished trials only."
    return line


# --- significance -------------------------------------------------------------------------------

def condition_columns(trials: pd.DataFrame) -> list[str]:
    """Trial settings that vary across the ok trials (seed and split excepted)."""
    ok = trials[trials["status"] == "ok"]
    return [c for c in CONFIG_COLUMNS
            if c in ok and c not in NOT_CONDITIONS and ok[c].astype(str).nunique() > 1]


def _check_by(by: list[str], trials: pd.DataFrame) -> None:
    unknown = [c for c in by if c not in trials.columns]
    if unknown:
        known = ", ".join(c for c in CONFIG_COLUMNS if c in trials.columns)
        raise TliError(f"unknown --by column(s) {', '.join(unknown)}; trial settings: {known}")


def _with_config(frame: pd.DataFrame, ok: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`frame` (keyed by trial_id) restricted to ok trials, with their seed, target layer and `by` columns."""
    columns = list(dict.fromkeys(["trial_id", "seed", "target_layer", *by]))
    config = ok[[c for c in columns if c in ok]].rename(columns={"target_layer": "_target_layer"})
    if "target_layer" in by:
        config["target_layer"] = config["_target_layer"]
    return frame.merge(config, on="trial_id", how="inner")


def _seed_level(group: pd.DataFrame) -> dict[str, float]:
    """n_seeds, mean and std of the per-seed mean_diff, and the paired t-test over seeds (no bootstrap)."""
    per_seed = group.groupby("seed")[["cosine_pre", "cosine_post"]].mean()
    diff = per_seed["cosine_post"] - per_seed["cosine_pre"]
    tests = stats.paired_tests(per_seed["cosine_pre"], per_seed["cosine_post"], n_boot=0)
    return {"n_seeds": tests["n"], "seed_mean_diff": tests["mean_diff"],
            "seed_std_diff": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"),
            "seed_t": tests["t"], "seed_p": tests["p"]}


def _trial_metrics(results: Results, by: list[str]) -> pd.DataFrame:
    """Gap, centred gap and P@1 (pre, post) averaged over each condition's trials, with the layer name."""
    keys = by + ["set", "eval_layer"]
    summary = _with_config(results.summary, results.ok, by)
    metrics = [f"{m}_{when}" for m in TRIAL_METRICS for when in ("pre", "post")]
    grouped = summary.groupby(keys, dropna=False)
    return grouped[metrics].mean().join(grouped["layer_name"].first()).reset_index()


def significance_table(results: Results, by: list[str] | None = None, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """One row per condition x set x eval layer: pair-level tests, seed-level tests, corrected p, gaps, P@1."""
    by = condition_columns(results.trials) if by is None else list(by)
    _check_by(by, results.trials)
    keys = by + ["set", "eval_layer"]
    columns = keys + ["layer_name", "n_trials", *TEST_COLUMNS, *SEED_COLUMNS] + [
        f"{m}_{when}" for m in TRIAL_METRICS for when in ("pre", "post")]
    if results.ok.empty or results.pairs.empty:
        return pd.DataFrame(columns=columns)
    pairs = _with_config(results.pairs, results.ok, by)
    rows = []
    for key, group in pairs.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key)) | {"n_trials": group["trial_id"].nunique()}
        row |= stats.paired_tests(group["cosine_pre"], group["cosine_post"], n_boot, seed)
        rows.append(row | _seed_level(group))
    table = pd.DataFrame(rows).merge(_trial_metrics(results, by), on=keys, how="left")
    table["p_holm"] = stats.adjust_pvalues(table["p"].to_numpy(), "holm")
    table["p_bh"] = stats.adjust_pvalues(table["p"].to_numpy(), "fdr_bh")
    table["_set"] = table["set"].map({name: i for i, name in enumerate(SETS)})
    return table.sort_values(by + ["_set", "eval_layer"], kind="stable")[columns].reset_index(drop=True)


def at_target_layer(sig: pd.DataFrame) -> pd.DataFrame:
    """Rows evaluated at their condition's target layer (all rows when target_layer is not a condition)."""
    if "target_layer" in sig:
        return sig[sig["eval_layer"] == sig["target_layer"]]
    return sig[sig["eval_layer"] != sig["eval_layer"].max()] if sig["eval_layer"].nunique() > 1 else sig


def table1(sig: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The paper's Table 1: per condition and set, at the target layer: mean pre, post, improvement, t, p."""
    columns = by + ["set", "eval_layer", "n", "mean_pre", "mean_post", "mean_diff", "t", "p"]
    return at_target_layer(sig)[columns].reset_index(drop=True)


def _score(trials: pd.DataFrame) -> pd.Series:
    """Objective (control-set centred-gap gain at the target layer), else trained raw gain; NaN last."""
    for column in ("objective", "target_trained_mean_diff"):
        if column in trials and trials[column].notna().any():
            return trials[column].astype(float).fillna(-np.inf)
    return pd.Series(0.0, index=trials.index)


def best_trial(results: Results) -> str | None:
    """The ok trial with the highest `_score`."""
    ok = results.ok
    return None if ok.empty else str(ok.loc[_score(ok).idxmax(), "trial_id"])


def _same(series: pd.Series, value: Any) -> pd.Series:
    return series.isna() if pd.isna(value) else series == value


def condition_trials(results: Results, trial_id: str, by: list[str]) -> list[str]:
    """Ids of the ok trials in the same condition (same `by` values) as `trial_id`."""
    ok = results.ok
    reference = ok.set_index("trial_id").loc[trial_id]
    mask = np.logical_and.reduce([_same(ok[c], reference[c]) for c in by]) if by else np.ones(len(ok), bool)
    return list(ok.loc[mask, "trial_id"])


def table2(results: Results, trial_ids: list[str], k: int = 10) -> pd.DataFrame:
    """The paper's Table 2: the k largest (top) and k smallest (bottom) per-pair changes at the target layer.

    Cosines are means over `trial_ids` (a condition's seeds); `diff` = post - pre, negative for a loss.
    """
    pairs = _with_config(results.pairs[results.pairs["trial_id"].isin(trial_ids)], results.ok, [])
    pairs = pairs[pairs["eval_layer"] == pairs["_target_layer"]]
    keys = ["set", "swahili", "english", "category"]
    means = pairs.groupby(keys, dropna=False)[["cosine_pre", "cosine_post"]].mean().reset_index()
    means["diff"] = means["cosine_post"] - means["cosine_pre"]
    means = means.sort_values("diff", ascending=False, kind="stable")
    gains, losses = means.head(k).assign(direction="top"), means.tail(k).iloc[::-1].assign(direction="bottom")
    return pd.concat([gains, losses[~losses.index.isin(gains.index)]], ignore_index=True)


# --- replication --------------------------------------------------------------------------------

def protocol_name(pooling_train: str, pooling_eval: str) -> str:
    if (pooling_train, pooling_eval) == PAPER_PROTOCOL:
        return "paper protocol"
    return "controlled protocol" if pooling_eval == "mean_content" else f"train {pooling_train} / eval {pooling_eval}"


def specificity(mean_diff: float, gap_change: float) -> str:
    """Plain-words verdict: how much of the raw cosine rise is a rise of the gap over mismatched pairs."""
    if not mean_diff > 0:
        return "not a rise at all"
    share = gap_change / mean_diff
    if share >= 0.5:
        return f"specific to translation pairs (the gap keeps {share:.0%} of the rise)"
    if share > 0.1:
        return f"only partly specific to translation pairs (the gap keeps {share:.0%} of the rise)"
    return "not specific to translation pairs: mismatched pairs rise as much"


def replication_table(results: Results, sig: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per (pooling_train, pooling_eval) present: its best trial's condition at the target layer, each set."""
    rows = []
    for (train, evaluate), trials in results.ok.groupby(["pooling_train", "pooling_eval"]):
        best = trials.loc[_score(trials).idxmax()]
        mask = np.logical_and.reduce([_same(sig[c], best[c]) for c in by] + [sig["eval_layer"] == best["target_layer"]])
        for _, row in sig[mask].iterrows():
            gap, centred = row["gap_post"] - row["gap_pre"], row["centered_gap_post"] - row["centered_gap_pre"]
            rows.append({"protocol": protocol_name(train, evaluate), "pooling_train": train, "pooling_eval": evaluate,
                         "target_layer": int(best["target_layer"]), "set": row["set"], "n_seeds": row["n_seeds"],
                         "mean_diff": row["mean_diff"], "t": row["t"], "p": row["p"], "seed_p": row["seed_p"],
                         "gap_change": gap, "centered_gap_change": centred, "p_at_1_pre": row["p_at_1_pre"],
                         "p_at_1_post": row["p_at_1_post"], "verdict": specificity(row["mean_diff"], gap)})
    return pd.DataFrame(rows)


def replication_sentences(table: pd.DataFrame) -> list[str]:
    """One plain sentence per protocol x set, and a note when the paper's protocol was not run."""
    lines = []
    if table.empty or not (table["protocol"] == "paper protocol").any():
        lines.append("The paper's protocol (pooling_train = pooling_eval = mean, BOS included) was not run in this "
                     "sweep: `ablations/protocol_sweep.py` sets it beside the controls. Available protocols follow.")
    for _, r in table.iterrows():
        joint = "and" if r["verdict"].startswith("specific") else "but"
        seeds = f", seed-level p = {r['seed_p']:.2g} over {int(r['n_seeds'])} seeds" if r["n_seeds"] > 1 else ""
        lines.append(
            f"{r['protocol'].capitalize()} (train {r['pooling_train']}, eval {r['pooling_eval']}, target layer "
            f"{r['target_layer']}), {r['set']} set: raw cosine rises by {r['mean_diff']:+.4f} (t = {r['t']:.2f}, "
            f"p = {r['p']:.2g}{seeds}), {joint} the gap over mismatched pairs moves by {r['gap_change']:+.4f} and the "
            f"per-language-centred gap by {r['centered_gap_change']:+.4f}; P@1 {r['p_at_1_pre']:.2f} -> "
            f"{r['p_at_1_post']:.2f}: the rise is {r['verdict']}.")
    return lines


# --- figures ------------------------------------------------------------------------------------

def _label(row: pd.Series, columns: list[str]) -> str:
    return ", ".join(f"{c}={row[c]}" for c in columns) or "all trials"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_scan(scan: pd.DataFrame, path: Path) -> Path:
    """The paper's Figure 1 with its control: matched vs mismatched cosine by layer, every pooling mode."""
    from tli.scan import plot_scan

    title = f"pre-TLI layer scan of {', '.join(map(str, scan['model'].unique()))} (dashed: mismatched-pair baseline)"
    return plot_scan(scan, path, title=title)


def plot_gain_by_layer(sig: pd.DataFrame, by: list[str], path: Path) -> Path | None:
    """Per set: raw cosine gain with its 95% CI and centred-gap gain, by target layer; None without target_layer."""
    rows = at_target_layer(sig)
    if "target_layer" not in rows or rows.empty:
        return None
    others = [c for c in by if c != "target_layer"]
    sets = [s for s in SETS if (rows["set"] == s).any()]
    fig, axes = plt.subplots(2, len(sets), figsize=(4.2 * len(sets), 6.5), sharex=True, sharey="row", squeeze=False)
    for column, name in enumerate(sets):
        part = rows[rows["set"] == name]
        groups = list(part.groupby(others, dropna=False, sort=True)) if others else [((), part)]
        for i, (_, series) in enumerate(groups):
            x = series["target_layer"].astype(float) + 0.06 * (i - (len(groups) - 1) / 2)
            yerr = np.vstack([series["mean_diff"] - series["ci_low"], series["ci_high"] - series["mean_diff"]])
            label = _label(series.iloc[0], others)
            axes[0, column].errorbar(x, series["mean_diff"], yerr=np.abs(yerr), marker="o", ms=4, capsize=3, label=label)
            axes[1, column].plot(x, series["centered_gap_post"] - series["centered_gap_pre"], marker="o", ms=4)
        axes[0, column].set_title(f"{name} set")
        axes[1, column].set_xlabel("target layer")
        axes[1, column].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        for ax in axes[:, column]:
            ax.axhline(0, color="grey", lw=0.6)
    axes[0, 0].set_ylabel("raw cosine gain (95% CI)")
    axes[1, 0].set_ylabel("centred gap gain")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("post-TLI gain at the target layer")
    return _save(fig, path)


def plot_rank_margin(sig: pd.DataFrame, path: Path) -> Path | None:
    """Heat maps over LoRA rank x margin (trained raw gain, control centred-gap gain); None unless both vary."""
    if not {"lora_rank", "margin"} <= set(sig) or sig["lora_rank"].nunique() < 2 or sig["margin"].nunique() < 2:
        return None
    rows = at_target_layer(sig).assign(centred_gain=lambda t: t["centered_gap_post"] - t["centered_gap_pre"])
    panels = [("trained", "mean_diff", "trained set: raw cosine gain"),
              ("control", "centred_gain", "control set: centred gap gain")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, value, title) in zip(axes, panels):
        grid = rows[rows["set"] == name].pivot_table(index="lora_rank", columns="margin", values=value, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto")
        ax.set(xticks=range(grid.shape[1]), xticklabels=grid.columns, yticks=range(grid.shape[0]),
               yticklabels=grid.index, xlabel="margin", ylabel="LoRA rank", title=title)
        middle = np.nanmean(grid.to_numpy())
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="black" if v > middle else "white", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.suptitle("rank x margin at the target layer (mean over other settings)")
    return _save(fig, path)


def plot_heldout(sig: pd.DataFrame, by: list[str], path: Path) -> Path | None:
    """Raw cosine gain (95% CI) on each held-out category at the target layer; None without held-out rows."""
    rows = at_target_layer(sig)
    rows = rows[rows["set"] == "heldout"]
    if rows.empty or "heldout_category" not in rows:
        return None
    others = [c for c in by if c != "heldout_category"]
    categories = sorted(rows["heldout_category"].astype(str).unique())
    groups = list(rows.groupby(others, dropna=False, sort=True)) if others else [((), rows)]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(categories) + 3), 4))
    for i, (key, part) in enumerate(groups):
        label = _label(pd.Series(dict(zip(others, key if isinstance(key, tuple) else (key,)))), others)
        part = part.set_index(part["heldout_category"].astype(str)).reindex(categories)
        yerr = np.abs(np.vstack([part["mean_diff"] - part["ci_low"], part["ci_high"] - part["mean_diff"]]))
        ax.bar(np.arange(len(categories)) + (i - (len(groups) - 1) / 2) * width, part["mean_diff"], width,
               yerr=yerr, capsize=3, label=label)
    ax.set(xticks=range(len(categories)), xticklabels=categories, xlabel="held-out category (never trained on)",
           ylabel="raw cosine gain (95% CI)", title="held-out categories: does TLI transfer?")
    ax.axhline(0, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _tsne(sw: np.ndarray, en: np.ndarray, seed: int) -> np.ndarray:
    """[2n, 2] t-SNE coordinates of the stacked rows (perplexity clipped below the sample count)."""
    from sklearn.manifold import TSNE

    points = np.concatenate([sw, en]).astype(np.float64)
    perplexity = float(min(30.0, max(1.0, (len(points) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def plot_tsne(embeddings: dict[str, Any], path: Path, seed: int = 0) -> Path:
    """The paper's Figures 2-3: t-SNE of Swahili and English embeddings before and after TLI, translations joined.

    `embeddings`: {"pre": (swahili [n, d], english [n, d]), "post": (...), optional "words": [n] labels}.
    """
    words = embeddings.get("words")
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, when in zip(axes, ("pre", "post")):
        sw, en = (np.asarray(v, dtype=np.float64) for v in embeddings[when])
        xy = _tsne(sw, en, seed)
        n = len(sw)
        for i in range(n):
            ax.plot(xy[[i, n + i], 0], xy[[i, n + i], 1], color="grey", lw=0.5, alpha=0.6)
        ax.scatter(xy[:n, 0], xy[:n, 1], s=14, label="Swahili", color="tab:orange")
        ax.scatter(xy[n:, 0], xy[n:, 1], s=14, label="English", color="tab:blue")
        if words is not None and n <= 40:
            for i, word in enumerate(words):
                ax.annotate(str(word), xy[i], fontsize=6)
        ax.set(title=f"{'before' if when == 'pre' else 'after'} TLI", xticks=[], yticks=[])
    axes[0].legend(fontsize=8)
    fig.suptitle(embeddings.get("title", "t-SNE of pair embeddings") + " (lines join translations)", fontsize=10)
    return _save(fig, path)


# --- t-SNE inputs: recompute a trial's embeddings -----------------------------------------------

def trial_embeddings(results: Results, trial_id: str, max_pairs: int = 40, device: str = "auto") -> dict[str, Any]:
    """Before/after embeddings at the trial's target layer of up to `max_pairs` of its evaluation pairs.

    The runner stores no adapters: the trial's adapter is retrained with its settings and seed.
    """
    from tli import models, runner, train
    from tli.scan import embed_pairs

    if "sweep" not in results.sweep_config:
        raise TliError(f"no sweep_config.json in {results.root}: cannot tell which pairs the sweep used")
    row = results.ok.set_index("trial_id").loc[trial_id]
    pairs = runner.load_sweep_pairs(configs.from_dict(runner.SweepConfig, results.sweep_config["sweep"]))
    heldout = None if pd.isna(row["heldout_category"]) else row["heldout_category"]
    train_rows, sets = runner.trial_sets(pairs, heldout)
    shown = pd.concat(list(sets.values())).sample(frac=1.0, random_state=0).head(max_pairs)
    model, tokenizer = models.load_model(models.ModelConfig(
        model=row["model"], device=device, dtype=row.get("dtype", "auto"), quantization=row.get("quantization", "none")))
    layer, mode = int(row["target_layer"]), row["pooling_eval"]
    pre = embed_pairs(model, tokenizer, shown, [layer], mode)[layer]
    config = runner.trial_train_config(row.to_dict())
    tuned, _ = train.train_tli(model, tokenizer, train_rows.reset_index(drop=True), config, progress=False)
    source = "adapter retrained with the trial's settings and seed (the runner stores no adapters)"
    post = embed_pairs(tuned, tokenizer, shown, [layer], mode)[layer]
    title = f"t-SNE, trial {trial_id}, target layer {layer}, eval pooling {mode}\n{source}"
    return {"pre": pre, "post": post, "words": [f"{s}/{e}" for s, e in zip(shown["swahili"], shown["english"])],
            "title": title}


# --- rendering ----------------------------------------------------------------------------------

def _format(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and column in P_COLUMNS:
        return "<1e-300" if value == 0 else f"{value:.3g}"  # 0 is a float underflow, not p = 0
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return str(value)


def _cells(table: pd.DataFrame) -> list[list[str]]:
    return [[_format(v, c) for c, v in zip(table.columns, row)] for row in table.itertuples(index=False)]


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (p-values to 3 significant digits, other floats to 4 decimals)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in _cells(table)]
    return "\n".join(lines)


def html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in _cells(table))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


HTML_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.45;color:#222}"
              "table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;overflow-x:auto}"
              "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f0f0f0}"
              "img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#555}")


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + content[0])
        elif kind == "p":
            out.append(content[0])
        elif kind == "table":
            out.append(markdown_table(content[0]))
        elif kind == "figure":
            path, caption = content
            out.append(f"![{caption}](figures/{path.name})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple], title: str) -> str:
    """A self-contained HTML page: figures embedded as base64 PNG data: URIs."""
    out = []
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "p":
            out.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(content[0])) + "</p>")
        elif kind == "table":
            out.append(html_table(content[0]))
        elif kind == "figure":
            path, caption = content
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{HTML_STYLE}</style></head><body>{''.join(out)}</body></html>\n")


# --- the report ---------------------------------------------------------------------------------

SIGNIFICANCE_LEGEND = (
    "Columns: `n` pairs pooled over the condition's `n_trials` trials; `mean_pre`/`mean_post` mean per-pair cosine "
    "before/after TLI; `mean_diff` their mean difference with its seeded BCa bootstrap 95% CI (`ci_low`, `ci_high`); "
    "`t`, `p` paired t-test; `p_holm`, `p_bh` the same p corrected across every row of this table (Holm; "
    "Benjamini-Hochberg FDR); `wilcoxon_p` Wilcoxon signed-rank; `d_z` mean difference / its SD; `seed_*` the "
    "seed-level test (see below); `gap_*` matched minus mismatched-pair cosine, `centered_gap_*` the same after "
    "per-language centring; `p_at_1_*` Swahili->English retrieval P@1 (means over the condition's trials).")

SHORT_COLUMNS = ["set", "eval_layer", "n_trials", "n", "mean_pre", "mean_post", "mean_diff", "ci_low", "ci_high",
                 "t", "p", "p_holm", "seed_mean_diff", "seed_std_diff", "seed_p", "gap_pre", "gap_post",
                 "centered_gap_pre", "centered_gap_post", "p_at_1_pre", "p_at_1_post"]


def _figures(results: Results, sig: pd.DataFrame, by: list[str], folder: Path, embeddings, seed: int) -> list[tuple]:
    """(path or None, caption, reason when skipped) per figure."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    if results.scan.empty:
        figures.append((None, "pre-TLI layer scan", "no scan.parquet yet (the runner writes it at the end of the sweep)"))
    else:
        figures.append((plot_layer_scan(results.scan, folder / "layer_scan.png"),
                        "Pre-TLI alignment by layer, every pooling mode, raw and per-language centred "
                        "(solid: translation pairs, dashed: mismatched-pair baseline)", ""))
    figures.append((plot_gain_by_layer(sig, by, folder / "gain_by_layer.png"),
                    "Post-TLI gain at the target layer: raw cosine with its 95% bootstrap CI (top), "
                    "per-language-centred gap over mismatched pairs (bottom)", "target_layer is not a condition"))
    figures.append((plot_rank_margin(sig, folder / "rank_margin.png"), "LoRA rank x margin",
                    "LoRA rank and margin do not both vary"))
    figures.append((plot_heldout(sig, by, folder / "heldout.png"),
                    "Gain on each held-out category (trained on all the others)", "no held-out category trials"))
    if embeddings is not None:
        caption = embeddings.get("title", "t-SNE").replace("\n", "; ")
        figures.append((plot_tsne(embeddings, folder / "tsne.png", seed), caption, ""))
    else:
        figures.append((None, "t-SNE", "pairs.parquet stores cosines, not vectors: run `ablations/aggregate.py "
                        "--tsne` to recompute the best trial's embeddings (loads the model and retrains "
                        "its adapter with the trial's settings and seed)"))
    return figures


def report_blocks(results: Results, sig: pd.DataFrame, by: list[str], figures: list[tuple]) -> list[tuple]:
    """The report's content, rendered as Markdown and as HTML."""
    name = results.root.name
    models = ", ".join(map(str, results.ok["model"].unique())) if not results.ok.empty else "-"
    blocks = [("h1", f"TLI ablation report: {name}"),
              ("p", f"Model: {models}. {progress_line(results)} Conditions (`by`): {', '.join(by) or 'none'}."),]
    for _, row in results.errors.head(10).iterrows():
        blocks.append(("p", f"Errored trial {row['trial_id']} (target layer {row['target_layer']}): {row['error']}"))
    if sig.empty:
        return blocks + [("p", "No ok trial yet: nothing to test.")]
    if sig["n_seeds"].max() > 1:
        blocks.append(("p", SEED_NOTE))
    replication = replication_table(results, sig, by)
    blocks += [("h2", "Replication: the paper's protocol beside the controlled one")]
    blocks += [("p", line) for line in replication_sentences(replication)]
    blocks += [("p", "A rise is called specific when the gap over mismatched pairs keeps at least half of the raw "
                     "cosine rise, partly specific above a tenth.")]
    blocks += [("h2", "Figures")]
    for path, caption, reason in figures:
        blocks.append(("figure", path, caption) if path is not None else ("p", f"Figure skipped ({caption}): {reason}."))
    best = best_trial(results)
    blocks += [("h2", "Table 1 (paper style): cosine before and after TLI at the target layer"),
               ("table", table1(sig, by)),
               ("h2", f"Table 2 (paper style): largest per-pair gains (top) and smallest gains or losses (bottom), best condition (trial {best})"),
               ("p", "Best = highest objective (control-set centred-gap gain at the target layer); cosines are "
                     "averaged over the condition's seeds."),
               ("table", table2(results, condition_trials(results, best, by)).round(4)),
               ("h2", "Significance"), ("p", SIGNIFICANCE_LEGEND),
               ("p", "Full table with every column: significance.csv / significance.md."),
               ("table", sig[by + [c for c in SHORT_COLUMNS if c in sig]])]
    return blocks


def build_report(results_dir: str | Path, out_dir: str | Path | None = None, by: list[str] | None = None,
                 n_boot: int = 10_000, seed: int = 0, embeddings: dict | None = None, tsne: bool = False) -> dict[str, Path]:
    """Write significance.csv/.md, report.md, report.html and figures/ to out_dir (default: <results_dir>/report)."""
    results = load_results(results_dir)
    out = Path(out_dir) if out_dir is not None else results.root / "report"
    by = condition_columns(results.trials) if by is None else list(by)
    sig = significance_table(results, by, n_boot, seed)
    if embeddings is None and tsne and not results.ok.empty:
        embeddings = trial_embeddings(results, best_trial(results))
    figures = _figures(results, sig, by, out / "figures", embeddings, seed)
    blocks = report_blocks(results, sig, by, figures)
    paths = {"significance_csv": result_files.write_table(sig, out / "significance.csv")}
    texts = {"significance_md": (out / "significance.md", markdown_table(sig) + "\n"),
             "report_md": (out / "report.md", render_markdown(blocks)),
             "report_html": (out / "report.html", render_html(blocks, f"TLI report: {results.root.name}"))}
    for key, (path, text) in texts.items():
        paths[key] = result_files.write_text(text, path)
    return paths
