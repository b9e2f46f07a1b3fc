"""An experiment's tables, and the statistics the report quotes: conditions, selection, the significance table.

A *condition* is one setting of the `by` columns (default: every trial setting that varies across the ok
trials, seed excepted). Seeds are replicates, not extra pairs: each pair is first averaged over the
condition's trials, then the unique pairs are tested (`tli.evaluate.summary_table`, the same tests a trial
runs), so `n` counts pairs once. The spread across seeds is its own column (`seed_sd_*`): reproducibility
across seeds, not generalisation to new words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tli import stats
from tli.config import EvalConfig
from tli.errors import TliError
from tli.evaluate import SETS, summary_table
from tli.sweep.settings import TrialSettings, plain, setting_names
from tli.sweep.store import ExperimentStore
from tli.sweep.trial import OUTCOMES

PROTOCOL = ("pooling_train", "pooling_eval", "mask_false_negatives")  # every protocol present is reported
MODEL = ("model", "device", "dtype", "quantization")  # every model present is reported
NOT_CONDITIONS = ("seed", "device")  # seed: the replicate; device does not change what a trial measures
COMPARABLE = ("pooling_eval", "heldout_category")  # objectives compare only where these agree (same measure, same set)
PAIR_METRICS = [f"{m}_{when}" for m in stats.PAIR_METRICS if m != "chance" for when in ("pre", "post")] + ["chance"]


# --- loading ------------------------------------------------------------------------------------


@dataclass
class Results:
    """The tables of one experiment folder, and what had to be rebuilt or ignored to read them."""

    uri: str
    trials: pd.DataFrame  # every committed trial, ok and errored
    summary: pd.DataFrame  # ok trial x set x evaluation layer
    pairs: pd.DataFrame  # ok trial x set x evaluation layer x pair
    scan: pd.DataFrame  # the base model's layer scan, every pooling mode (empty until written)
    sweep_config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # tables rebuilt, files ignored (said in report.md)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def ok(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    @property
    def errors(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] != "ok"]


def load_results(location: str) -> Results:
    """Read an experiment folder (a local path or a URI); a missing or unreadable merged table is rebuilt from
    the per-trial folders and noted. TliError when the folder does not exist or holds no trial.
    """
    store = ExperimentStore(str(location))
    if not store.folder.exists():
        raise TliError(f"results folder {store.uri} does not exist")
    if not store.trial_ids() and not store.folder.exists("trials.parquet"):
        raise TliError(f"no trial in {store.uri} (has the sweep finished a trial yet?)")
    kinds = ("trials", "summary", "pairs")
    try:
        present = {kind: store.folder.exists(f"{kind}.parquet") for kind in kinds}
        tables = {kind: store.read(kind) for kind in kinds}
        unmerged = _unmerged(store, tables["trials"])
        if unmerged:  # trials committed after the last merge (a driver killed between merges)
            store.merge()
            tables = {kind: store.read(kind) for kind in kinds}
        sweep_config = store.read_json("sweep_config.json")
        scan = store.read("scan")
    except OSError as error:
        raise TliError(f"cannot read {store.uri}: {' '.join(str(error).split())}") from None
    if tables["trials"].empty or "status" not in tables["trials"]:
        raise TliError(f"no trial in {store.uri} (has the sweep finished a trial yet?)")
    notes = store.notes + [
        f"{kind}.parquet was missing: rebuilt from trials/"
        for kind in kinds
        if not present[kind] and store.folder.exists(f"{kind}.parquet")
    ]
    if unmerged:
        notes.append(f"the merged tables lacked {unmerged} committed trial(s): rebuilt from trials/")
    if sweep_config is None and not store.folder.exists("sweep_config.json"):
        notes.append("no sweep_config.json: the number of planned trials is unknown")
    return Results(store.uri, tables["trials"], tables["summary"], tables["pairs"], scan, sweep_config, notes)


def _unmerged(store: ExperimentStore, trials: pd.DataFrame) -> int:
    """How many committed trials (a row.json under trials/) the merged trials table lacks."""
    merged = set(trials["trial_id"]) if "trial_id" in trials else set()
    return sum(store.row(trial_id) is not None for trial_id in store.trial_ids() if trial_id not in merged)


def planned_trials(results: Results) -> int | None:
    """The planned trial count stored in sweep_config.json (grid size, or a search's samples), or None."""
    planned = (results.sweep_config or {}).get("planned")
    return planned if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 0 else None


def progress_line(results: Results) -> str:
    """'N of M planned trials done (k ok, e errored)', noting unfinished trials."""
    done, planned = len(results.trials), planned_trials(results)
    counts = f"{len(results.ok)} ok, {len(results.errors)} errored"
    if planned is None:
        return f"{done} trials done ({counts}); the number planned is unknown (no readable sweep_config.json)."
    if done > planned:
        return f"{done} trials done ({counts}); the last run of the sweep planned {planned}."
    line = f"{done} of {planned} planned trials done ({counts})."
    if done < planned:
        line += (
            f" {planned - done} not finished (the sweep is still running or was stopped): the tables cover "
            "finished trials only."
        )
    return line


# --- conditions ---------------------------------------------------------------------------------


def _copies(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns determine each other (e.g. lora_alpha = 2 x lora_rank in every trial)."""
    return len(set(zip(a, b))) == a.nunique() == b.nunique()


def condition_columns(trials: pd.DataFrame) -> list[str]:
    """Trial settings that vary across the ok trials (seed excepted, and a setting that merely copies another)."""
    ok = trials[trials["status"] == "ok"].astype(str)
    columns: list[str] = []
    for name in setting_names():
        if (
            name in ok
            and name not in NOT_CONDITIONS
            and ok[name].nunique() > 1
            and not any(_copies(ok[name], ok[other]) for other in columns)
        ):
            columns.append(name)
    return columns


def check_by(by: list[str], trials: pd.DataFrame) -> None:
    """TliError naming the `by` columns that are not trial settings."""
    unknown = [c for c in by if c not in setting_names() or c not in trials]
    if unknown:
        known = ", ".join(c for c in setting_names() if c in trials)
        raise TliError(f"unknown --by column(s) {', '.join(unknown)}; trial settings: {known}")


def _groups(frame: pd.DataFrame, by: list[str]):
    """(values of `by`, rows) per condition, in sorted order (a missing value is a value)."""
    if not by:
        yield {}, frame
        return
    for key, rows in frame.groupby(by, dropna=False, sort=True):
        yield dict(zip(by, key)), rows


def _constant(values: pd.Series) -> Any:
    """The one value of a column (None when it varies or is missing)."""
    unique = values.dropna().unique()
    return plain(unique[0]) if len(unique) == 1 else None


def conditions(results: Results, by: list[str]) -> pd.DataFrame:
    """One row per condition: its `by` values, protocol and target layer, trials, seeds, mean (and SD over
    trials) of the validation objective, loss and drift, and its `trial_ids`.
    """
    rows = []
    for values, trials in _groups(results.ok, by):
        row = values | {c: _constant(trials[c]) for c in ("target_layer", *PROTOCOL) if c not in values}
        row |= {
            "n_trials": len(trials),
            "n_seeds": trials["seed"].nunique(),
            "objective_sd": float(trials["objective"].std(ddof=1)) if len(trials) > 1 else math.nan,
        }
        row |= {c: float(trials[c].astype(float).mean()) for c in OUTCOMES if c in trials}
        rows.append(row | {"trial_ids": list(trials["trial_id"])})
    return pd.DataFrame(rows)


def competing(conds: pd.DataFrame) -> pd.DataFrame:
    """The conditions whose validation objectives compare: where a COMPARABLE setting varies (another evaluation
    pooling, or the validation set left when another category is held out, puts objectives on other scales), only
    those at the paper's default of it.
    """
    defaults = TrialSettings()
    for column in COMPARABLE:
        if column in conds and conds[column].astype(str).nunique() > 1:
            conds = conds[conds[column].map(lambda value, c=column: _same(value, getattr(defaults, c)))]
    return conds


def selected(conds: pd.DataFrame, by: list[str]) -> pd.Series | None:
    """The `competing` condition with the highest mean validation objective (None when none has one). On a tie, the
    one with the most `by` settings at the paper's defaults (`at_defaults`), then the first row of `conds`.
    """
    conds = competing(conds)
    scores = conds["objective"].astype(float) if "objective" in conds else pd.Series(dtype=float)
    if scores.isna().all():
        return None
    best = conds[_equal(scores, scores.max())]
    return best.loc[at_defaults(best, by).idxmax()]


def tied(conds: pd.DataFrame, chosen: pd.Series) -> pd.DataFrame:
    """The other `competing` conditions whose mean objective equals the selected one's (relative tolerance 1e-9):
    the validation objective does not separate them from it.
    """
    others = competing(conds).drop(index=chosen.name)
    return others[_equal(others["objective"].astype(float), chosen["objective"])]


def _equal(objectives: pd.Series, value: float) -> pd.Series:
    """Which objectives equal `value` up to a relative tolerance of 1e-9 (NaN equals nothing)."""
    return objectives.map(lambda objective: math.isclose(objective, value, rel_tol=1e-9)).astype(bool)


def _same(value: Any, default: Any) -> bool:
    """Whether a stored setting equals a default (None and NaN alike; floats up to rounding)."""
    value, default = plain(value), plain(default)
    if default is None or (isinstance(default, float) and math.isnan(default)):
        return value is None or (isinstance(value, float) and math.isnan(value))
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, (int, float)):
        return math.isclose(value, default, rel_tol=1e-9)
    return str(value) == str(default)


def defaults_of(by: list[str]) -> dict[str, Any]:
    """The paper's defaults (`TrialSettings()`) of the `by` columns that fix a condition in advance: protocol and
    model columns excepted (every protocol and model present is reported).
    """
    defaults = TrialSettings().row()
    return {c: defaults[c] for c in by if c not in PROTOCOL and c not in MODEL}


def at_defaults(conds: pd.DataFrame, by: list[str]) -> pd.Series:
    """How many of each condition's `by` settings are at the paper's defaults (`defaults_of(by)`)."""
    defaults = defaults_of(by)
    counts = [sum(_same(row[c], value) for c, value in defaults.items()) for _, row in conds.iterrows()]
    return pd.Series(counts, index=conds.index, dtype=int)


def prespecified(conds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The conditions fixed in advance: those with every `by` setting at `defaults_of(by)` (one per protocol and
    model present; empty when the sweep has none).
    """
    return conds[at_defaults(conds, by) == len(defaults_of(by))]


def unlike_defaults(results: Results, by: list[str]) -> dict[str, Any]:
    """Settings fixed across the ok trials whose value differs from the paper's defaults (e.g. a smoke test's
    single epoch).
    """
    defaults, ok = TrialSettings().row(), results.ok
    skip = {*by, *PROTOCOL, *MODEL, *NOT_CONDITIONS, "n_boot", "drift", "inputs_digest"}  # not settings of the method
    fixed = {
        c: _constant(ok[c]) for c in setting_names() if c in ok and c not in skip and ok[c].astype(str).nunique() == 1
    }
    return {c: v for c, v in fixed.items() if not _same(v, defaults[c])}


MARGIN_TOLERANCE = 0.01  # a final loss above margin - this has not left its margin


def loss_at_margin(ok: pd.DataFrame) -> pd.Series:
    """Per ok trial: whether its final (last batch's) triplet loss is not below margin - MARGIN_TOLERANCE, for a
    margin above MARGIN_TOLERANCE: the loss nearly identical pooled vectors give, d(a, p) ≈ d(a, n) for every
    anchor a, translation p and hardest in-batch negative n.
    """
    if ok.empty or not {"final_loss", "margin"} <= set(ok):
        return pd.Series(False, index=ok.index)
    margin = ok["margin"].astype(float)
    return (margin > MARGIN_TOLERANCE) & (ok["final_loss"].astype(float) >= margin - MARGIN_TOLERANCE)


# --- the significance table ---------------------------------------------------------------------


def _layer_roles(trials: pd.DataFrame, layer: int) -> str:
    """Which evaluation layer `layer` is for every trial of a condition: target, selection, final (L)."""
    roles = {"target": "eval_layer_target", "selection": "eval_layer_selection", "final": "eval_layer_final"}
    return ", ".join(
        name for name, column in roles.items() if column in trials and (trials[column].astype(float) == layer).all()
    )


def _seed_spread(pairs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per set x layer: SD over seeds of each seed's mean cosine gain and centred-gap gain (NaN for one seed)."""
    gains = pairs.assign(
        cosine=pairs["cosine_post"] - pairs["cosine_pre"],
        centered=pairs["centered_gap_post"] - pairs["centered_gap_pre"],
    )
    gains = gains.merge(trials[["trial_id", "seed"]], on="trial_id")
    per_seed = gains.groupby(["set", "eval_layer", "seed"])[["cosine", "centered"]].mean()
    spread = per_seed.groupby(["set", "eval_layer"]).std(ddof=1)
    return spread.rename(columns={"cosine": "seed_sd_mean_diff", "centered": "seed_sd_centered_gap_diff"}).reset_index()


def condition_tests(
    pairs: pd.DataFrame, summary: pd.DataFrame, trials: pd.DataFrame, n_boot: int, seed: int
) -> pd.DataFrame:
    """One condition's rows: each pair averaged over the condition's trials, then `summary_table`'s tests on the
    unique pairs (n = pairs, not pairs x seeds), with the seed spread beside them.
    """
    averaged = pairs.groupby(["set", "eval_layer", "pair_id"], sort=False)[PAIR_METRICS].mean().reset_index()
    removed = summary.groupby("set")["n_removed"].max().to_dict()
    table = summary_table(
        averaged,
        EvalConfig(n_boot=n_boot, seed=seed),
        int(trials["eval_layer_final"].max()),
        int(summary["n_candidates"].max()),
        removed,
    )
    table = table.merge(_seed_spread(pairs, trials), on=["set", "eval_layer"], how="left")
    table.insert(2, "layer_role", [_layer_roles(trials, k) for k in table["eval_layer"]])
    table.insert(3, "n_trials", len(trials))
    table.insert(4, "n_seeds", trials["seed"].nunique())
    return table


FIRST_COLUMNS = [
    "set",
    "eval_layer",
    "layer_name",
    "layer_role",
    "n_trials",
    "n_seeds",
    "n",
    "n_removed",
    "mean_pre",
    "mean_post",
    "mean_diff",
    "ci_low",
    "ci_high",
    "t",
    "p",
    "p_holm",
    "p_bh",
    "wilcoxon_p",
    "d_z",
    "seed_sd_mean_diff",
    "gap_diff",
    "gap_ci_low",
    "gap_ci_high",
    "gap_p",
    "centered_gap_diff",
    "centered_gap_ci_low",
    "centered_gap_ci_high",
    "centered_gap_p",
    "seed_sd_centered_gap_diff",
    "p_at_1_pre",
    "p_at_1_post",
    "p_at_1_chance",
]


def significance_table(
    results: Results, by: list[str] | None = None, n_boot: int = 10_000, seed: int = 0
) -> pd.DataFrame:
    """One row per condition x set x evaluation layer (columns: FIRST_COLUMNS, then every set mean before and
    after); `p_holm`/`p_bh` correct the raw-cosine `p` across every row of the table.
    """
    by = condition_columns(results.trials) if by is None else list(by)
    check_by(by, results.trials)
    empty = pd.DataFrame(columns=[*by, *FIRST_COLUMNS])
    if results.ok.empty or results.pairs.empty or results.summary.empty:
        return empty
    frames = []
    for values, trials in _groups(results.ok, by):
        ids = set(trials["trial_id"])
        pairs, summary = (t[t["trial_id"].isin(ids)] for t in (results.pairs, results.summary))
        if len(pairs) and len(summary):
            frames.append(condition_tests(pairs, summary, trials, n_boot, seed).assign(**values))
    if not frames:
        return empty
    table = pd.concat(frames, ignore_index=True)
    table["p_holm"] = stats.adjust_pvalues(table["p"].to_numpy(float), "holm")
    table["p_bh"] = stats.adjust_pvalues(table["p"].to_numpy(float), "fdr_bh")
    order = table["set"].map({name: i for i, name in enumerate(SETS)}).fillna(len(SETS))
    table = table.assign(_set=order).sort_values([*by, "_set", "eval_layer"], kind="stable")
    rest = [c for c in table if c not in (*by, *FIRST_COLUMNS, "_set")]
    return table[[*by, *FIRST_COLUMNS, *rest]].reset_index(drop=True)


def rows_of(sig: pd.DataFrame, condition: pd.Series, by: list[str]) -> pd.DataFrame:
    """The significance rows of one condition (a row of `conditions`)."""
    mask = np.ones(len(sig), dtype=bool)
    for c in by:
        mask &= np.array([_same(v, condition[c]) for v in sig[c]], dtype=bool)
    return sig[mask]


def at_target(sig: pd.DataFrame) -> pd.DataFrame:
    """Rows measured at their condition's target layer."""
    return sig[sig["layer_role"].str.contains("target")]


OVERVIEW_SETS = ("trained", "heldout", "control", "unseen")  # trained, then the leak-free sets


def _before_after(row: pd.Series, metric: str, fmt: str) -> str:
    """'pre → post' of one significance row's metric in format `fmt` ('' when either is missing)."""
    pre, post = row[f"{metric}_pre"], row[f"{metric}_post"]
    return f"{pre:{fmt}} → {post:{fmt}}" if pd.notna(pre) and pd.notna(post) else ""


def _ci_mark(row: pd.Series) -> str:
    """' ↑' / ' ↓' when the centred-gap gain's 95% CI lies above / below 0, else ''."""
    return " ↑" if row["centered_gap_ci_low"] > 0 else " ↓" if row["centered_gap_ci_high"] < 0 else ""


def _nats(kl: float) -> str:
    """A drift KL to 2 decimals, or 2 significant digits below 0.01 (so a small drift does not read as 0)."""
    return "" if pd.isna(kl) else f"{kl:.2g}" if 0 < abs(kl) < 0.01 else f"{kl:.2f}"


def overview(sig: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per condition, at its target layer: the per-language-centred gap ('cgap', marked by `_ci_mark`)
    and centred P@1 ('cP@1', in percent), pre → post, for each OVERVIEW_SETS set present (pairs averaged over
    seeds); the mean drift KL on Swahili / English text; the mean validation objective.
    """
    target = at_target(sig)
    names = [name for name in OVERVIEW_SETS if name in set(target["set"])]
    drift = all(c in conds and conds[c].notna().any() for c in ("drift_kl_sw", "drift_kl_en"))
    rows = []
    for _, condition in conds.iterrows():
        measured = rows_of(target, condition, by).drop_duplicates("set").set_index("set")
        row = {c: condition[c] for c in by}
        for metric, short, fmt in (("centered_gap", "cgap", ".3f"), ("p_at_1_centered", "cP@1", ".2%")):
            for name in names:
                found = measured.loc[name] if name in measured.index else None
                mark = _ci_mark(found) if found is not None and short == "cgap" else ""
                row[f"{name} {short}"] = "" if found is None else _before_after(found, metric, fmt) + mark
        if drift:
            row["drift sw / en"] = f"{_nats(condition['drift_kl_sw'])} / {_nats(condition['drift_kl_en'])}"
        rows.append(row | {"objective": condition.get("objective", math.nan)})
    return pd.DataFrame(rows)


# --- the paper's Tables 1 and 2 -----------------------------------------------------------------


def table1(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 for some significance rows (at the target layer): n pairs, mean cosine before and
    after, the improvement with its CI, t and p (seed-averaged pairs).
    """
    columns = ["set", "n", "n_seeds", "mean_pre", "mean_post", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm"]
    return (
        at_target(rows)[columns]
        .rename(columns={"n": "N", "mean_pre": "pre-TLI", "mean_post": "post-TLI", "mean_diff": "improvement"})
        .reset_index(drop=True)
    )


def table2(results: Results, trial_ids: list[str], k: int = 10) -> pd.DataFrame:
    """The paper's Table 2: the k largest and k smallest per-pair cosine gains at the target layer, each pair
    averaged over `trial_ids` (a condition's seeds); sets ending in _all are left out (their pairs repeat).
    """
    trials = results.ok[results.ok["trial_id"].isin(trial_ids)][["trial_id", "target_layer"]]
    pairs = results.pairs.merge(trials, on="trial_id")
    pairs = pairs[(pairs["eval_layer"] == pairs["target_layer"]) & ~pairs["set"].str.endswith("_all")]
    keys = ["set", "pair_id", "swahili", "english", "category"]
    means = pairs.groupby(keys, dropna=False)[["cosine_pre", "cosine_post"]].mean().reset_index()
    means["gain"] = means["cosine_post"] - means["cosine_pre"]
    means = means.sort_values("gain", ascending=False, kind="stable").drop(columns="pair_id")
    top, bottom = means.head(k), means.tail(k).iloc[::-1]
    bottom = bottom[~bottom.index.isin(top.index)]
    return pd.concat([top.assign(rank="largest"), bottom.assign(rank="smallest")], ignore_index=True)[
        ["rank", "set", "swahili", "english", "category", "cosine_pre", "cosine_post", "gain"]
    ]
