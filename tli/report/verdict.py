"""The replication verdict: is TLI's rise in cosine specific to translation pairs? A test, not a ratio.

Per protocol x set of the condition fixed in advance (the paper's defaults), at the target layer, from the
significance table's two-level bootstrap p-values (seeds, then headword clusters), Holm-corrected within
their family (`tli.report.multiple`). A gain *holds* when it is positive and its corrected p is below ALPHA.
Both gaps are taken over *alike* non-translations (`gap_alike`, `centered_gap_alike`: the English words of the
translation's token count, and part of speech where labelled; `tli.stats.alike_baseline`), so a similarity of
length, which `mean` pooling leaves in every vector, or of word class cannot count as one of translation:

  no rise          the raw cosine's gain does not hold
  specific         the cosine rises, and both gap gains over alike non-translations (raw and per-language-
                   centred) hold
  partly specific  the cosine rises, and one of the two gap gains holds
  not specific     the cosine rises, neither gap gain holds: alike non-translations rose as much
  untested         fewer than 2 pairs, or a gain not measured (NaN)

The shuffled control (`translations` deranged: the same words, each Swahili word trained towards another pair's
English word) is scored on the true pairs like every protocol: whatever gain it shows, and a real protocol
shares, is not lexical.
"""

from __future__ import annotations

import math

import pandas as pd

from tli.report.conditions import PROTOCOL
from tli.report.multiple import ALPHA
from tli.report.significance import at_target, rows_of
from tli.report.uncertainty import COMPARED, PROJECTED_SEEDS, projected_mde

NAMED_PROTOCOLS = {  # (pooling_train, pooling_eval, mask_false_negatives) -> name
    ("mean", "mean", False): "paper as written",
    ("mean", "mean_content", False): "author's code",
    ("mean", "mean_content", True): "author's code + false-negative mask",
}
SHUFFLED = "control: shuffled pairs"  # trained on deranged translations (`translations` deranged), scored on true ones
CONTROLS = {"mean_skip_first": "control: first position dropped", "last": "control: last token"}
RULE = (
    "Verdict rule (at the target layer): a gain *holds* when it is positive and its p-value, from the bootstrap "
    "over seeds and then headword clusters and Holm-corrected within its family (`*_p_holm`), is below "
    f"{ALPHA}. *No rise* when the raw cosine's gain does not hold; otherwise *specific* when both the gap over "
    "alike non-translations (`gap_alike`: each pair's cosine minus its mean cosine to the pool's non-translations "
    "with the token count, and the part of speech where labelled, of its English word) and its per-language-"
    "centred form (`centered_gap_alike`) rise (their gains hold), *partly specific* when one does, *not specific* "
    "when neither does (alike non-translations rose as much). Matching on token count keeps length, which `mean` "
    "pooling leaves in every vector through the first position's 1/length share, from passing for translation; "
    "`gap` and `centered_gap` (every non-translation) stay in the table beside them. A gain that does not hold is "
    "not shown absent: it was not detectable above its `*_mde` (80% power). *Control: shuffled pairs* trains the same "
    "words on deranged translations and is scored on the true pairs: a gain it shows is not lexical, and a "
    "protocol's gain is lexical only as far as it exceeds it."
)

VERDICT_GAPS = ("gap_alike_", "centered_gap_alike_")  # the two gap gains the verdict tests (significance prefixes)
COMPARED_NAMES = {"": "raw cosine", "centered_gap_alike_": "centred gap (alike)"}  # each COMPARED gain, in words


def protocol_name(
    pooling_train: str, pooling_eval: str, mask_false_negatives: bool | None, translations: str | None = None
) -> str:
    """The protocol named for what it is: the paper as written, the author's code, or a control. Trained on deranged
    translations, it is the shuffled control (`SHUFFLED`; of tli's default protocol, else with that protocol named).
    """
    mask = None if mask_false_negatives is None or pd.isna(mask_false_negatives) else bool(mask_false_negatives)
    if translations == "deranged":
        real = protocol_name(pooling_train, pooling_eval, mask)
        return SHUFFLED if real == NAMED_PROTOCOLS["mean", "mean_content", True] else f"{SHUFFLED} ({real})"
    if (pooling_train, pooling_eval, mask) in NAMED_PROTOCOLS:
        return NAMED_PROTOCOLS[pooling_train, pooling_eval, mask]
    if pooling_train == pooling_eval and pooling_train in CONTROLS:
        return CONTROLS[pooling_train]
    return f"train {pooling_train} / eval {pooling_eval}" + (", false negatives masked" if mask else "")


def protocol_rank(name: str) -> int:
    """The report's order: the paper as written, the author's code, the shuffled control, the other controls, any
    other.
    """
    order = [*NAMED_PROTOCOLS.values(), SHUFFLED, *CONTROLS.values()]
    return order.index(name) if name in order else len(order)


def holds(row: pd.Series, prefix: str) -> bool:
    """Whether a gain (`mean_diff` for prefix '', else `{prefix}diff`) is positive with corrected p below ALPHA."""
    gain, p = row["mean_diff" if not prefix else f"{prefix}diff"], row[f"{prefix or 'cosine_'}p_holm"]
    return bool(gain > 0 and not math.isnan(p) and p < ALPHA)


def verdict(row: pd.Series) -> str:
    """The verdict of one significance row (see the module docstring)."""
    gains = [row["mean_diff"], *(row[f"{prefix}diff"] for prefix in VERDICT_GAPS)]
    if not row["n"] >= 2 or any(pd.isna(gain) for gain in gains):
        return "untested"
    if not holds(row, ""):
        return "no rise"
    gap, centred = (holds(row, prefix) for prefix in VERDICT_GAPS)
    return "specific" if gap and centred else "partly specific" if gap or centred else "not specific"


VERDICT_COLUMNS = [
    "protocol",
    "target_layer",
    "set",
    "n",
    "n_seeds",
    "family_size",
    "mean_diff",
    "ci_low",
    "ci_high",
    "cosine_p_holm",
    "gap_alike_diff",
    "gap_alike_ci_low",
    "gap_alike_ci_high",
    "gap_alike_p_holm",
    "centered_gap_alike_diff",
    "centered_gap_alike_ci_low",
    "centered_gap_alike_ci_high",
    "centered_gap_alike_p_holm",
    "centered_gap_alike_mde",
    projected_mde("centered_gap_alike_"),
    "mde",
    projected_mde(""),
    "gap_alike_mde",
    projected_mde("gap_alike_"),
    "gap_diff",
    "centered_gap_diff",
    "vs_trained_diff",
    "vs_trained_ci_low",
    "vs_trained_ci_high",
    "vs_trained_margin",
    "vs_trained_tost_p",
    "centered_gap_alike_vs_trained_diff",
    "centered_gap_alike_vs_trained_ci_low",
    "centered_gap_alike_vs_trained_ci_high",
    "centered_gap_alike_vs_trained_margin",
    "centered_gap_alike_vs_trained_tost_p",
    "vs_shuffled_diff",
    "vs_shuffled_ci_low",
    "vs_shuffled_ci_high",
    "vs_shuffled_p_holm",
    "centered_gap_alike_vs_shuffled_diff",
    "centered_gap_alike_vs_shuffled_ci_low",
    "centered_gap_alike_vs_shuffled_ci_high",
    "centered_gap_alike_vs_shuffled_p_holm",
    "p_at_1_pre",
    "p_at_1_post",
    "p_at_1_chance",
    "verdict",
]


def verdict_table(sig: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per condition of `conds` (the pre-specified ones) x set (validation excepted), at the target layer."""
    frames = []
    for _, condition in conds.iterrows():
        rows = at_target(rows_of(sig, condition, by))
        rows = rows[rows["set"] != "validation"]
        name = protocol_name(*(condition.get(c) for c in PROTOCOL))
        frames.append(
            rows.assign(
                protocol=name, target_layer=condition["target_layer"], verdict=[verdict(r) for _, r in rows.iterrows()]
            )
        )
    if not frames:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    rank = table["protocol"].map(protocol_rank)
    columns = [c for c in VERDICT_COLUMNS if c in table]
    return table.assign(_rank=rank).sort_values("_rank", kind="stable")[columns].reset_index(drop=True)


def _ci(row: pd.Series, prefix: str) -> str:
    return f"95% CI {row[f'{prefix}ci_low']:+.4f} to {row[f'{prefix}ci_high']:+.4f}"


def _gain(row: pd.Series, prefix: str, name: str) -> str:
    """'<name> by +0.0123 (95% CI ..., Holm p ...)', or '...; not detectable above <mde>[, with 10 seeds about
    <mde_10_seeds>])' when it does not hold (the projection where the condition has fewer seeds and one was made).
    """
    gain, p = row["mean_diff" if not prefix else f"{prefix}diff"], row[f"{prefix or 'cosine_'}p_holm"]
    found = f"{name} by {gain:+.4f} ({_ci(row, prefix)}, Holm p {p:.2g}"
    if holds(row, prefix):
        return found + ")"
    projected = row.get(projected_mde(prefix), float("nan"))
    more = pd.notna(projected) and row["n_seeds"] < PROJECTED_SEEDS
    more_seeds = f", with {PROJECTED_SEEDS} seeds about {projected:.4f}" if more else ""
    return found + f"; not detectable above {row[f'{prefix}mde']:.4f}{more_seeds})"


def _against_trained(row: pd.Series) -> str:
    """The raw gain and the centred gap gain over alike non-translations (the verdict's) minus the trained set's,
    each with its equivalence test ('' for the trained set).
    """
    if "vs_trained_diff" not in row or pd.isna(row["vs_trained_diff"]):
        return ""
    compared = []
    for prefix in COMPARED:
        at = f"{prefix}vs_trained_"
        if f"{at}diff" in row:
            shown = row[f"{at}tost_p"] < ALPHA
            compared.append(
                f"{COMPARED_NAMES[prefix]} {row[f'{at}diff']:+.4f} ({_ci(row, at)}), "
                f"{'equivalent' if shown else 'not shown equivalent'} within ±{row[f'{at}margin']:.4f} "
                f"(TOST p {row[f'{at}tost_p']:.2g})"
            )
    return "; its gains minus the trained set's: " + " and ".join(compared)


def _against_shuffled(row: pd.Series) -> str:
    """The raw gain and the verdict's centred gap gain minus the shuffled control's ('' without one)."""
    if "vs_shuffled_diff" not in row or pd.isna(row["vs_shuffled_diff"]):
        return ""
    compared = [
        f"{COMPARED_NAMES[prefix]} {row[f'{prefix}vs_shuffled_diff']:+.4f} ({_ci(row, f'{prefix}vs_shuffled_')}, "
        f"Holm p {row[f'{prefix}vs_shuffled_p_holm']:.2g})"
        for prefix in COMPARED
    ]
    return "; minus the shuffled control's (lexical only as far as above 0): " + " and ".join(compared)


def sentence(row: pd.Series) -> str:
    """One verdict row in plain words, every number beside its control."""
    seeds = f", each averaged over {int(row['n_seeds'])} seeds" if row["n_seeds"] > 1 else ""
    return (
        f"{row['protocol'][0].upper()}{row['protocol'][1:]}, target layer {row['target_layer']}, "
        f"{row['set']} set ({int(row['n'])} pairs{seeds}): {_gain(row, '', 'the raw cosine moves')}, "
        f"{_gain(row, 'gap_alike_', 'the gap over alike non-translations')} and "
        f"{_gain(row, 'centered_gap_alike_', 'its per-language-centred form')}{_against_trained(row)}"
        f"{_against_shuffled(row)}; P@1 "
        f"{row['p_at_1_pre']:.2%} -> {row['p_at_1_post']:.2%} (chance {row['p_at_1_chance']:.2%}). "
        f"Verdict: {row['verdict']}."
    )


def sentences(table: pd.DataFrame) -> list[str]:
    """The verdict table in plain words (the `*_all` sets, which keep leaky rows, only in the table)."""
    return [sentence(row) for _, row in table.iterrows() if not row["set"].endswith("_all")]
