"""The report's sections, each a list of render blocks: header, replication, selection, every condition at a
glance, the paper's tables, the figures.
"""

from __future__ import annotations

import math

import pandas as pd

from tli.report import author, drift, figures, render, retrieval, training, verdict
from tli.report.conditions import PROTOCOL, defaults_of, prespecified, unlike_defaults
from tli.report.multiple import ALPHA
from tli.report.overview import OVERVIEW_SETS, overview
from tli.report.paper import table1, table2
from tli.report.render import Plot
from tli.report.results import Results, progress_line
from tli.report.selection import COMPARABLE, runner_up, separation, tied
from tli.report.significance import at_target, rows_of
from tli.sweep.settings import TrialSettings

LEGEND = (
    "One row per condition x set x evaluation layer; `n` counts unique pairs. `mean_pre`/`mean_post` mean cosine, "
    "`mean_diff` the gain; `se` its standard error from a bootstrap that draws the condition's seeds with "
    "replacement, then the set's Swahili headwords (pairs sharing one go together), so seed-to-seed variation is "
    "in it; `ci_low`/`ci_high` the 95% CI and `cosine_p` the two-sided p from that SE (normal approximation), "
    "`mde` the gain a 5% test would detect with 80% power (2.80 se), `mde_10_seeds` the same projected to 10 seeds "
    "by the variance components of the set's seeds x headword means (near `mde`: more seeds cannot answer, more "
    "pairs might; well below it, rough and optimistic). "
    "`t`/`p`/`wilcoxon_p`/`d_z`: the paper's "
    "paired tests on each pair averaged over seeds (no seed variance). `gap_*` the same for each pair's cosine "
    "minus its mean cosine to every non-translation in the pool, `centered_gap_*` after per-language centring; "
    "`gap_alike_*` and `centered_gap_alike_*` (the verdict's) against the non-translations alike in token count "
    "(and part of speech where labelled) only, so that length, which `mean` pooling leaves in every vector, "
    "cannot pass for translation. "
    "`*_holm`: Holm-corrected within the row's `family` (one set at one evaluation layer across the sweep's "
    "conditions; `family_size` tests). `vs_trained_*` (raw) and `centered_gap_alike_vs_trained_*` (the verdict's "
    "centred gap): the set's gain minus the trained set's at the same layer (seeds drawn together), its CI, and "
    "TOST p of equivalence within "
    "±`*_margin` (half the trained gain): a small p says the gains are comparable. `vs_shuffled_*` and "
    "`centered_gap_alike_vs_shuffled_*`: a true-translation condition's gain minus its shuffled control's, per seed "
    "and pair on the `vs_shuffled_seeds` seeds both ran, bootstrapped the same way. `seed_sd_mean_diff` and "
    "`seed_sd_centered_gap_diff`: SD over seeds of each seed's mean gain. P@1 counts any gloss of a headword as "
    "correct among one fixed pool of candidates (`p_at_1_chance` beside it); the pool, not the set, supplies the "
    "candidates and the centring means, so neither P@1 nor the centred gap depends on the set's size. "
    "`n_removed`: rows of the set left out for sharing a word with the training pairs (control, held-out, unseen "
    "are leak-free; `*_all` keep them; the validation set is carved leak-free from the trained pairs, and the "
    "rows that took is not counted here)."
)
SHORT = [
    "set",
    "eval_layer",
    "n_seeds",
    "n",
    "n_removed",
    "mean_pre",
    "mean_post",
    "mean_diff",
    "ci_low",
    "ci_high",
    "cosine_p_holm",
    "p",
    "seed_sd_mean_diff",
    "gap_alike_diff",
    "gap_alike_ci_low",
    "gap_alike_p_holm",
    "centered_gap_alike_diff",
    "centered_gap_alike_ci_low",
    "centered_gap_alike_ci_high",
    "centered_gap_alike_p_holm",
    "centered_gap_alike_mde",
    "vs_trained_diff",
    "vs_trained_tost_p",
    "centered_gap_alike_vs_trained_diff",
    "centered_gap_alike_vs_trained_tost_p",
    "p_at_1_pre",
    "p_at_1_post",
    "p_at_1_chance",
]
TSNE_HINT = (
    "pairs.parquet stores cosines, not vectors: `ablations/aggregate.py --tsne` embeds the selected "
    "condition's best trial again (it loads the model and uses the adapter stored with --save-adapters, "
    "else retrains it with the trial's settings and seed)"
)


def label(condition: pd.Series, by: list[str]) -> str:
    return figures.label({c: condition[c] for c in by})


def _protocol(condition: pd.Series) -> str:
    return verdict.protocol_name(*(condition.get(c) for c in PROTOCOL))


def _fixed_in_advance(conds: pd.DataFrame, by: list[str]) -> list[pd.Series]:
    """The conditions fixed in advance, in the report's protocol order."""
    fixed = [condition for _, condition in prespecified(conds, by).iterrows()]
    return sorted(fixed, key=lambda condition: verdict.protocol_rank(_protocol(condition)))


def header(results: Results, by: list[str]) -> list[render.Block]:
    models = ", ".join(map(str, results.ok["model"].unique())) or "-"
    blocks = [
        ("h1", f"TLI ablation report: {results.name}"),
        (
            "p",
            f"Model: {models}. {progress_line(results)} Conditions (`by`): {', '.join(by) or 'none'}; "
            "a condition pools its seeds.",
        ),
    ]
    blocks += [("p", f"Data note: {note}.") for note in results.notes]
    if not results.errors.empty:
        shown = [c for c in ("trial_id", *by, "error") if c in results.errors]
        errors = results.errors[shown].assign(error=results.errors["error"].astype(str).str.slice(0, 200))
        blocks += [
            ("p", "Errored trials (not in the tables; the next run of the sweep runs them again):"),
            ("table", errors),
        ]
    return blocks


def replication(results: Results, sig: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> tuple[list, pd.DataFrame]:
    """The verdict for the condition fixed in advance, per protocol; (blocks, verdict table)."""
    blocks: list[render.Block] = [("h2", "Replication: the condition fixed in advance")]
    fixed = prespecified(conds, by)
    defaults = ", ".join(f"{c}={value}" for c, value in defaults_of(by).items())
    table = verdict.verdict_table(sig, fixed, by)
    if fixed.empty:
        blocks.append(
            (
                "p",
                f"This sweep does not contain the condition fixed in advance (the paper's defaults: "
                f"{defaults}): no verdict is given. The condition selected by validation follows, "
                "labelled as selected.",
            )
        )
    else:
        trained_on = results.ok["n_train_pairs"].mean()
        blocks.append(
            (
                "p",
                f"Fixed in advance: the paper's defaults ({defaults or 'the sweep varies no other setting'})"
                "; every protocol present is reported, each at its target layer. Unlike the paper's, these trials "
                f"train on {trained_on:.0f} pairs on average: the validation set "
                f"({results.ok['validation_fraction'].mean():.0%} of the trained pairs) is carved out of them.",
            )
        )
        blocks += [("p", line) for line in verdict.sentences(table)]
        blocks += [("table", table), ("p", verdict.RULE)]
    if not any(_protocol(condition) == "paper as written" for condition in _fixed_in_advance(conds, by)):
        blocks.append(
            (
                "p",
                "The paper as written (mean pooling with BOS for training and evaluation, no "
                "false-negative mask) is not among the conditions fixed in advance here: "
                "`ablations/protocol_sweep.py` runs it beside the author's code and the controls.",
            )
        )
    unlike = unlike_defaults(results, by)
    if unlike:
        blocks.append(
            (
                "p",
                "Fixed in every trial and unlike the paper's defaults: "
                + ", ".join(f"{k}={v}" for k, v in unlike.items())
                + ".",
            )
        )
    told = author.note() if author.concerns(by) else None
    return blocks + ([("p", told)] if told else []), table


def selection(results: Results, conds: pd.DataFrame, by: list[str], chosen: pd.Series | None) -> list[render.Block]:
    ok = results.ok.iloc[0]
    blocks: list[render.Block] = [
        ("h2", "Selection by the validation objective"),
        (
            "p",
            "The objective is the validation set's gain in centred gap over alike non-translations (the verdict's "
            "`centered_gap_alike`, so that length cannot select a condition) at layer "
            f"{ok['eval_layer_selection']:.0f}, the same layer for every trial; the validation set is "
            f"{ok['validation_fraction']:.0%} of the trained pairs (whole headwords, seed "
            f"{ok['validation_seed']:.0f}), so the control, held-out and unseen sets play no part in the choice. "
            "Objectives measured with another evaluation pooling, or on another validation set (another held-out "
            "category), are on other scales: where those vary, only the conditions at the paper's defaults of them "
            "compete; a shuffled control never does.",
        ),
    ]
    if chosen is None:
        return blocks + [("p", _why_none_selected(conds))]
    also = any(label(c, by) == label(chosen, by) for c in _fixed_in_advance(conds, by))
    blocks.append(
        (
            "p",
            f"Selected: {label(chosen, by)} ({_protocol(chosen)}), mean objective "
            f"{chosen['objective']:.4f} over {chosen['n_trials']} trial(s)"
            + ("; it is also the condition fixed in advance." if also else ".")
            + _tie_note(tied(conds, chosen), by)
            + _runner_up_note(conds, chosen, by),
        )
    )
    several = training.losses(results.ok).nunique() > 1  # triplet and InfoNCE losses: cosine units and nats
    shown = [*by, "n_trials", "n_seeds", "objective", "objective_sd", *(() if several else ("final_loss",))]
    shown += ["drift_kl_sw", "drift_kl_en"]
    blocks.append(("table", conds[[c for c in shown if c in conds]]))
    if several:
        blocks.append(
            (
                "p",
                "No `final_loss` column: the conditions' losses are of different objectives, on scales "
                "that do not compare (the triplet loss in cosine units, InfoNCE in nats).",
            )
        )
    return blocks


def what_training_did(results: Results, conds: pd.DataFrame, by: list[str]) -> list[render.Block]:
    """The training check computed from the trials' logged dynamics, their table per condition, and a figure of
    each condition's steps.
    """
    blocks: list[render.Block] = [("h2", "What training did")]
    blocks += [("p", line) for line in training.check(results.ok)]
    table = training.dynamics_table(results.ok, conds, by)
    if table.empty:
        return blocks
    blocks += [
        (
            "p",
            "Per condition, means over its trials: each logged quantity at step 0 (before any update, the first "
            "epoch's batches) → its mean over the last epoch; `open hinges (min)` the share of anchors whose triplet "
            "hinge is open, and the fewest of any step; `grad norm` the last epoch's mean gradient norm; `‖ΔW‖` "
            "the trained LoRA update's norm. Losses of different objectives are on different scales and are never "
            "compared here.",
        ),
        ("table", table),
    ]
    return blocks + [("figure", plot) for plot in _dynamics_plots(results, conds, by)]


def _dynamics_plots(results: Results, conds: pd.DataFrame, by: list[str]) -> list[Plot]:
    """One `figures.training_dynamics` per condition (its trials' logs averaged step by step)."""
    ok = results.ok.set_index("trial_id")
    logs = results.tables("train_log", list(ok.index))
    plots = []
    for number, (_, condition) in enumerate(conds.iterrows(), start=1):
        ids = condition["trial_ids"]
        losses = sorted(set(training.losses(ok.loc[ids])))
        log = logs[logs["trial_id"].isin(ids)] if "trial_id" in logs else logs.iloc[:0]
        name = label(condition, by)
        plots.append(
            Plot(
                f"training_{number:02d}.png",
                figures.training_dynamics(log, losses, name),
                f"What training did, {name}: loss, open hinges, cosines, gradient and update norms by step",
                "its training logs hold no dynamics (stored before tli logged them)",
            )
        )
    return plots


def drift_against_reference(results: Results, conds: pd.DataFrame, by: list[str]) -> list[render.Block]:
    """The drift of each condition beside its CI and its random-direction reference ([] when none was measured)."""
    table = drift.drift_table(results.ok, conds, by)
    if table.empty:
        return []
    return [("h2", "Drift against a reference"), ("p", drift.sentence(table)), ("table", table)]


def _why_none_selected(conds: pd.DataFrame) -> str:
    """Why no condition is selected: no objective at all, or objectives on other scales only."""
    measured = "objective" in conds and conds["objective"].notna().any()
    if not measured:
        return "No condition has a validation objective (no trial measured one): nothing is selected."
    varying = [c for c in COMPARABLE if c in conds and conds[c].astype(str).nunique() > 1]
    defaults = ", ".join(f"{c}={TrialSettings().row()[c]}" for c in varying)
    return (
        f"Nothing is selected, although {int(conds['objective'].notna().sum())} conditions have an objective: "
        f"{' and '.join(varying)} vary, so their objectives are measured on other scales or other validation sets, "
        f"and no condition is at the paper's default of them ({defaults}) to compete."
    )


def _tie_note(ties: pd.DataFrame, by: list[str]) -> str:
    if ties.empty:
        return ""
    names = "; ".join(label(c, by) for _, c in ties.iterrows())
    others = "another condition" if len(ties) == 1 else f"{len(ties)} other conditions"
    return (
        f" It ties with {others} on that objective ({names}): the validation objective does not separate them, "
        "so the one shown as selected here and below is, of them, the one with the most settings at the paper's "
        "defaults (on equal counts, the first row of the table)."
    )


def _runner_up_note(conds: pd.DataFrame, chosen: pd.Series, by: list[str]) -> str:
    """Whether the objective separates the selected condition from the next best (`selection.separation`)."""
    other = runner_up(conds, chosen)
    if other is None:
        return ""
    p = separation(chosen, other)
    text = (
        f" The runner-up, {label(other, by)}, has {other['objective']:.4f} (SD over trials "
        f"{chosen['objective_sd']:.4f} and {other['objective_sd']:.4f}, {chosen['n_trials']} and {other['n_trials']} "
        "trials): "
    )
    if math.isnan(p):
        return text + "too few trials to test whether the objective separates them."
    if p < ALPHA:
        return text + f"Welch's t-test p = {p:.2g}, the objective separates them."
    return text + f"Welch's t-test p = {p:.2g}: the objective does not separate them, the selection is not a finding."


PROBE_AT_A_GLANCE = (
    "`probe sw→en` / `en→sw` the translation probe on the trained words: accuracy pre → post and the gold "
    "translation's mean log-probability change in nats, ↑/↓ when its paired t-test gives p < 0.05 (uncorrected; "
    "every set: the probe table below); "
)


def at_a_glance(
    sig: pd.DataFrame, conds: pd.DataFrame, by: list[str], probed: pd.DataFrame | None = None
) -> list[render.Block]:
    heading = ("h2", "Every condition at a glance: centred gap and P@1 at the target layer")
    target = at_target(sig)
    if target.empty:
        return [heading, ("p", "No condition has one target layer (`--by` leaves target_layer out): nothing to show.")]
    low, high = target["p_at_1_chance"].agg(["min", "max"])
    chance = f"{low:.2%}" if f"{low:.2%}" == f"{high:.2%}" else f"{low:.2%} to {high:.2%}"
    probe_note = PROBE_AT_A_GLANCE if probed is not None and not probed.empty else ""
    return [
        heading,
        (
            "p",
            "Per condition, at its target layer, pre → post (pairs averaged over seeds): `cgap` the "
            "per-language-centred gap over alike non-translations (`centered_gap_alike`: a pair's centred cosine "
            "minus its mean to the non-translations of its English word's token count and part of speech), ↑/↓ when "
            "its gain's 95% CI lies above/below 0; `cP@1` centred P@1 in percent over the candidate pool (chance "
            f"{chance}); {probe_note}`drift sw / en` the mean KL(base || TLI) in nats per token on Swahili / English "
            "text; `objective` the mean validation objective. Raw cosines and every test: the tables below.",
        ),
        ("table", overview(sig, conds, by, probed)),
    ]


def against_shuffled(sig: pd.DataFrame, by: list[str]) -> list[render.Block]:
    """Each condition with a shuffled control, at its target layer: its gains minus the control's
    (`uncertainty.against_shuffled`); nothing when the sweep has no shuffled control.
    """
    cgap, raw = "centered_gap_alike_vs_shuffled_", "vs_shuffled_"
    if f"{cgap}diff" not in sig:
        return []
    rows = at_target(sig)
    rows = rows[rows["set"].isin(OVERVIEW_SETS) & rows[f"{cgap}diff"].notna()]
    if rows.empty:
        return []
    table = rows[[*by, "set", "n"]].assign(
        seeds=rows["vs_shuffled_seeds"].astype(int),
        **{
            "centred gap (alike) gain": rows["centered_gap_alike_diff"],
            "shuffled control's": rows["centered_gap_alike_diff"] - rows[f"{cgap}diff"],
            "difference [95% CI]": render.with_ci(rows, f"{cgap}diff", cgap),
            "Holm p": rows[f"{cgap}p_holm"],
            "raw cosine difference [95% CI]": render.with_ci(rows, f"{raw}diff", raw),
            "raw Holm p": rows[f"{raw}p_holm"],
        },
    )
    return [
        ("h2", "Against the shuffled control: how much of a gain is lexical"),
        (
            "p",
            "The shuffled control trains the same words with the same settings and seeds on deranged translations and "
            "is scored on the true pairs, so a gain it shows is not lexical. Per condition that has one, at its target "
            "layer: the gain in centred gap over alike non-translations (the verdict's), the control's, and their "
            "difference, taken per seed and pair (on the `seeds` both ran) and bootstrapped over seeds, then headwords "
            "(95% CI; p Holm-corrected within the set's family); the raw cosine's difference beside it. Only the part "
            "of a gain whose difference holds above 0 can be called lexical.",
        ),
        ("table", table.reset_index(drop=True)),
    ]


def paper_tables(
    results: Results, sig: pd.DataFrame, conds: pd.DataFrame, by: list[str], chosen: pd.Series | None
) -> list[render.Block]:
    blocks: list[render.Block] = [
        ("h2", "Table 1 (paper style): cosine before and after TLI at the target layer"),
        (
            "p",
            "N counts unique pairs (each averaged over the condition's seeds); the paper's control set "
            "corresponds to `control_all`, `control` leaves out rows sharing a word with the training pairs.",
        ),
    ]
    if not _fixed_in_advance(conds, by) and chosen is None:
        blocks.append(
            (
                "p",
                "No Table 1 here: the sweep holds no condition fixed in advance and selects none (see above); every "
                "condition's numbers are in the significance table below.",
            )
        )
    for condition in _fixed_in_advance(conds, by):
        blocks += [
            ("p", f"*Fixed in advance* ({_protocol(condition)}; {label(condition, by)}):"),
            ("table", table1(rows_of(sig, condition, by))),
        ]
    if chosen is not None:
        blocks += [
            ("p", f"*Selected by validation* ({_protocol(chosen)}; {label(chosen, by)}):"),
            ("table", table1(rows_of(sig, chosen, by))),
            (
                "h2",
                f"Table 2 (paper style): largest and smallest per-pair gains, selected condition ({label(chosen, by)})",
            ),
            ("p", "Cosines at the target layer, each pair averaged over the condition's seeds."),
            ("table", table2(results, chosen["trial_ids"])),
        ]
    return blocks


RETRIEVAL_NOTE = (
    "Per condition at its target layer, every pair against the same candidate pool: centred P@1, P@5, P@10 and MRR "
    "before and after TLI (pairs averaged over seeds), with chance; `p_at_1_centered_gained`/`lost` count the pairs "
    "whose hit rose or fell, and `p_at_1_centered_mcnemar_p_holm` is McNemar's exact test of them (with several "
    "seeds the exact sign test of each pair's seed-averaged hit), Holm-corrected within its family. Beside them, two "
    "baselines scored on the same pool: `orthographic_*` ranks the English candidates by normalised edit distance "
    "to the Swahili spelling (no model at all: loanwords such as hospitali / hospital), `procrustes_*` maps the "
    "frozen model's per-language-centred vectors with an orthogonal map fitted on the training pairs (what a map "
    "gives without touching the model; not scored on the trained set it is fitted on). A claim of alignment "
    "stands beside them."
)
PROBE_NOTE = (
    "Each probed pair's word is translated by the model with a fixed few-shot prompt (its example pairs never "
    "scored), Swahili -> English and English -> Swahili, greedy; `accuracy_*` is the share whose answer, "
    "normalised, is a gloss of the word; `accuracy_gained`/`lost` count the pairs that became right or wrong and "
    "`accuracy_mcnemar_p` is McNemar's exact test of them (with several seeds the exact sign test of each pair's "
    "seed-averaged correctness). `mrr_*`: the gold translation's reciprocal rank by teacher-forced log-probability "
    "among it and a fixed seeded sample of distractor words of the pool (`mrr_chance`: a random ranking); "
    "`logprob_*` its mean log-probability, `logprob_p` the paired t-test of its change. Each set is a fixed sample of "
    "at most `probe_pairs` pairs (the same in every trial)."
)


def retrieval_section(sig: pd.DataFrame, conds: pd.DataFrame, by: list[str], chosen) -> list[render.Block]:
    """Retrieval (P@k, MRR, McNemar) beside the orthographic and Procrustes baselines: tested sentences for the
    conditions fixed in advance and the selected one, and the table of every condition.
    """
    heading = ("h2", "Retrieval beside two baselines: does retrieval follow?")
    rows = retrieval.retrieval_rows(sig, by)
    if rows.empty:
        return [heading, ("p", "No condition has one target layer (`--by` leaves target_layer out): nothing to show.")]
    named = {label(c, by): c for c in [*_fixed_in_advance(conds, by), *([chosen] if chosen is not None else [])]}
    lines = []
    for name, condition in named.items():
        mine = rows_of_condition(rows, condition, by)
        lines += [retrieval.sentence(row, name) for _, row in mine.iterrows()]
    return [heading, ("p", RETRIEVAL_NOTE), *[("p", line) for line in lines], ("table", rows)]


def rows_of_condition(rows: pd.DataFrame, condition: pd.Series, by: list[str]) -> pd.DataFrame:
    """The rows of `rows` whose `by` columns hold the condition's values."""
    return rows_of(rows, condition, by) if by else rows


def probe_section(probe_rows: pd.DataFrame) -> list[render.Block]:
    heading = ("h2", "Translation probe: does the model translate a word better after TLI?")
    if probe_rows.empty:
        return [heading, ("p", "No trial ran the translation probe (`--no-translation-probe`): nothing to show.")]
    return [heading, ("p", PROBE_NOTE), ("table", probe_rows)]


def best_trial(results: Results, chosen: pd.Series | None) -> str:
    """The selected condition's trial with the highest objective (else the first ok trial)."""
    trials = results.ok if chosen is None else results.ok[results.ok["trial_id"].isin(chosen["trial_ids"])]
    scores = trials["objective"].astype(float)
    return str(trials.loc[scores.idxmax(), "trial_id"] if scores.notna().any() else trials["trial_id"].iloc[0])


def plots(
    results: Results,
    sig: pd.DataFrame,
    conds: pd.DataFrame,
    by: list[str],
    embeddings: dict | None,
    seed: int,
    probe_rows: pd.DataFrame | None = None,
) -> list[Plot]:
    tsne = (
        Plot("tsne.png", None, "t-SNE", TSNE_HINT)
        if embeddings is None
        else Plot("tsne.png", figures.tsne(embeddings, seed), embeddings.get("title", "t-SNE").replace("\n", "; "))
    )
    return [
        Plot(
            "layer_scan.png",
            figures.layer_scan(results.scan),
            "Pre-TLI alignment by layer, every pooling mode, raw "
            "and per-language centred (solid: translation pairs, dashed: mismatched-pair baseline)",
            "no scan.parquet yet (the sweep writes it beside its trials)",
        ),
        Plot(
            "gain_by_layer.png",
            figures.gain_by_layer(sig, by),
            "Gain at the target layer by target layer: raw "
            "cosine, gap and centred gap over alike non-translations, with 95% CIs, per set",
            "target_layer does not vary",
        ),
        Plot(
            "objective_drift.png",
            figures.objective_and_drift(conds, by),
            "Validation objective (of the conditions that compete for selection) and drift by target layer",
            "target_layer does not vary",
        ),
        Plot(
            "rank_margin.png",
            figures.rank_margin(sig, conds, by),
            "LoRA rank x margin",
            "LoRA rank and margin do not both vary",
        ),
        Plot(
            "heldout.png",
            figures.heldout(sig, by),
            "Gains on each held-out category (trained on all the others)",
            "no held-out category varies",
        ),
        Plot(
            "retrieval_baselines.png",
            figures.retrieval_baselines(retrieval.retrieval_rows(sig, by), by),
            "Centred P@1 before and after TLI at the target layer, beside the orthographic and Procrustes baselines "
            "and chance on the same candidate pool",
            "no condition has one target layer, or the trials stored no baselines",
        ),
        Plot(
            "translation_probe.png",
            figures.translation_probe(probe_rows if probe_rows is not None else pd.DataFrame(), by),
            "Translation probe: share of words translated before and after TLI, per direction and set",
            "no trial ran the translation probe",
        ),
        *(
            Plot(
                f"gain_by_{axis}.png",
                figures.gain_by_axis(sig, by, axis),
                f"Gain at the target layer by {axis}: raw cosine, gap and centred gap over alike non-translations, "
                "with 95% CIs, per set",
                "no condition has one target layer",
            )
            for axis in figures.swept_axes(by)
        ),
        tsne,
    ]
