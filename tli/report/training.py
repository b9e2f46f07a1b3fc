"""What training did: the training check, computed from each trial's logged dynamics, and a table per condition.

Per triplet trial, from its row (`tli.sweep.trial.training_columns`): s = loss - margin at step 0 (before any
update, the mean over the first epoch's batches) and e = its mean over the last epoch. With TOLERANCE t:

  never left the margin      |s| <= t, |e| <= t  every hinge sat at the margin before any update (the pooled
                                                 vectors of a word, its translation and its hardest negative
                                                 nearly alike) and stayed there
  descended onto the margin  s > t, |e| <= t     the loss fell to the margin: anchors end as near their hardest
                                                 negative as their translation
  rose onto the margin       s < -t, |e| <= t
  below the margin           e < -t              translations end nearer than hardest negatives (or hinges closed)
  above the margin           e > t               hardest negatives end nearer than translations

While every hinge is open at every step (`train_active_hinges_min` = 1) the margin adds a constant to the loss and
is absent from its gradient, so trials that differ only in their margin train the same adapter: `margin_groups`
checks it on their trained update norms. InfoNCE has no margin, and its loss (nats) is never compared with the
triplet loss (cosine units).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import pandas as pd

from tli.report.conditions import groups
from tli.sweep.settings import setting_names

TOLERANCE = 0.01  # cosine units: a loss within this of its margin is at its margin
SAME_NORM = 1e-5  # relative: trained update norms this close are one adapter
STATES = (
    "never left the margin",
    "descended onto the margin",
    "rose onto the margin",
    "below the margin",
    "above the margin",
)
COSINES = {"positive": "a·p", "hardest_negative": "a·n_hard", "negatives": "a·n"}  # cos_<name> -> short label


def losses(ok: pd.DataFrame) -> pd.Series:
    """Each trial's loss ('triplet' where the row has no `loss`: stored before tli trained anything else)."""
    return ok["loss"].fillna("triplet") if "loss" in ok else pd.Series("triplet", index=ok.index)


def has_dynamics(ok: pd.DataFrame) -> pd.Series:
    """Which trials' rows hold the logged dynamics (stored since tli logs step 0 and the hinges)."""
    if "train_cos_positive_start" not in ok:
        return pd.Series(False, index=ok.index)
    return ok["train_cos_positive_start"].notna()


def margin_state(start: float, end: float) -> str:
    """Where a triplet loss ended against its margin (see the module docstring); '' when either is NaN."""
    if math.isnan(start) or math.isnan(end):
        return ""
    if end < -TOLERANCE:
        return "below the margin"
    if end > TOLERANCE:
        return "above the margin"
    return (
        "descended onto the margin"
        if start > TOLERANCE
        else "rose onto the margin"
        if start < -TOLERANCE
        else ("never left the margin")
    )


def margin_states(ok: pd.DataFrame) -> pd.Series:
    """`margin_state` of every triplet trial with dynamics ('' for the others)."""
    triplet = (losses(ok) == "triplet") & has_dynamics(ok)
    states = [
        margin_state(float(row["train_loss_minus_margin_start"]), float(row["train_loss_minus_margin_end"]))
        if use
        else ""
        for use, (_, row) in zip(triplet, ok.iterrows())
    ]
    return pd.Series(states, index=ok.index, dtype=object)


def margin_groups(ok: pd.DataFrame) -> list[dict]:
    """Triplet trials identical in every setting but the margin, two margins or more: per group its `margins`, its
    `adapters` (the margins that trained one adapter, `adapters_by_norm`) and whether every margin trained one
    (`same`).
    """
    rows = ok[(losses(ok) == "triplet") & has_dynamics(ok)]
    keys = [c for c in setting_names() if c in rows and c != "margin" and rows[c].astype(str).nunique() > 1]
    found = []
    for _, trials in groups(rows.astype({c: str for c in keys}), keys):
        if trials["margin"].nunique() < 2:
            continue
        margins, norms = trials["margin"].astype(float).tolist(), trials["train_lora_norm_end"].astype(float).tolist()
        adapters = adapters_by_norm(margins, norms)
        found.append({"margins": sorted(set(margins)), "adapters": adapters, "same": len(adapters) == 1})
    return found


def adapters_by_norm(margins: list[float], norms: list[float]) -> list[tuple[float, ...]]:
    """The margins grouped by the adapter they trained, judged by its update norm: sorted by norm, a margin joins the
    adapter whose smallest norm is within SAME_NORM (relative) of its own, so one adapter's norms span at most
    SAME_NORM; a NaN norm (not logged) is an adapter of its own. Each adapter's margins ascending, adapters by their
    smallest margin.
    """
    adapters, first = [], None
    for norm, margin in sorted((n, m) for n, m in zip(norms, margins) if not math.isnan(n)):
        if first is None or norm - first > SAME_NORM * max(abs(norm), 1e-12):
            adapters.append([])
            first = norm
        adapters[-1].append(margin)
    adapters += [[m] for n, m in zip(norms, margins) if math.isnan(n)]
    return sorted(tuple(sorted(adapter)) for adapter in adapters)


def _mean(rows: pd.DataFrame, column: str) -> float:
    return float(rows[column].astype(float).mean())


def _moves(rows: pd.DataFrame) -> str:
    """'raw a·p 0.46 → 0.99, a·n_hard ..., a·n ...; centred ...': the mean cosines at step 0 and at the end."""
    parts = []
    for kind, name in (("", "raw"), ("centered_", "centred")):
        moved = [
            f"{label} {_mean(rows, f'train_{kind}cos_{c}_start'):.3f} → {_mean(rows, f'train_{kind}cos_{c}_end'):.3f}"
            for c, label in COSINES.items()
        ]
        parts.append(f"{name} {', '.join(moved)}")
    return "; ".join(parts)


def check(ok: pd.DataFrame) -> list[str]:
    """The training check in sentences, every number computed from the trials' rows."""
    if ok.empty:
        return []
    dynamic = has_dynamics(ok)
    if not dynamic.any():
        return [
            "Training check: not possible here: these trials' rows hold no training dynamics (they were stored "
            "before tli logged step 0, the hinges and the cosines of every step)."
        ]
    sentences = []
    states = margin_states(ok)
    triplet = states != ""
    if triplet.any():
        counts = [_state_counts(ok[states == state], state) for state in STATES if (states == state).any()]
        sentences.append(
            f"Training check, {int(triplet.sum())} triplet trial(s): loss - margin at step 0 (before any update, the "
            f"first epoch's batches) against its mean over the last epoch, tolerance {TOLERANCE}: "
            + "; ".join(counts)
            + ". a·p: anchor and translation, a·n_hard: anchor and hardest in-batch negative, a·n: anchor and every "
            "negative, at the training pooling; centred: each language minus its batch mean."
        )
        open_hinges = ok.loc[triplet, "train_active_hinges_min"].astype(float)
        always = int((open_hinges >= 1).sum())
        sentences.append(
            f"In {always} of {int(triplet.sum())} triplet trial(s) every hinge was open at every step "
            f"(the fewest open at any step: {open_hinges.min():.0%} to {open_hinges.max():.0%})"
            + (
                ": there the margin only adds a constant to the loss and never enters its gradient."
                if always
                else ": the margin entered every trial's gradient through the hinges it closed."
            )
        )
        sentences += _same_adapters(margin_groups(ok))
    infonce = (losses(ok) == "infonce") & dynamic
    if infonce.any():
        rows = ok[infonce]
        sentences.append(
            f"{int(infonce.sum())} InfoNCE trial(s) (no margin; the loss in nats, not comparable with the triplet "
            f"loss): loss {_mean(rows, 'train_loss_start'):.3f} at step 0, {_mean(rows, 'train_loss_end'):.3f} over "
            f"the last epoch; mean cosines {_moves(rows)}."
        )
    return sentences


def _state_counts(rows: pd.DataFrame, state: str) -> str:
    """'<n> <state> (loss - margin ... at step 0, ... over the last epoch; mean cosines ...)'."""
    return (
        f"{len(rows)} {state} (loss - margin {_mean(rows, 'train_loss_minus_margin_start'):+.3f} at step 0, "
        f"{_mean(rows, 'train_loss_minus_margin_end'):+.3f} over the last epoch; mean cosines {_moves(rows)})"
    )


def _same_adapters(found: list[dict]) -> list[str]:
    """A sentence on the trials that differ only in their margin ([] when there are none): how many groups trained
    one adapter for every margin, and, where they did not, which margins shared one.
    """
    if not found:
        return []
    same = [group for group in found if group["same"]]
    margins = sorted({m for group in found for m in group["margins"]})
    text = f"Of {len(found)} group(s) of trials identical but for the margin (margins {_listed(margins)}), "
    if len(same) == len(found):
        return [
            text + "every one trained one adapter for every margin (final LoRA update norms equal within "
            f"{SAME_NORM:g}, relative)."
        ]
    patterns = collections.Counter(tuple(group["adapters"]) for group in found if not group["same"])
    return [
        text
        + f"{len(same)} trained one adapter for every margin and {len(found) - len(same)} did not (final LoRA update "
        f"norms differ by more than {SAME_NORM:g}, relative)."
        + "".join(f" In {count} of them {_adapters(pattern)}." for pattern, count in patterns.most_common())
    ]


def _adapters(pattern: tuple[tuple[float, ...], ...]) -> str:
    """'margin 0 trained its own; margins 0.1 and 0.2 shared one adapter' (one clause per adapter)."""
    if all(len(margins) == 1 for margins in pattern):
        return "every margin trained its own adapter"
    return "; ".join(
        f"margins {_listed(margins)} shared one adapter"
        if len(margins) > 1
        else f"margin {margins[0]:g} trained its own"
        for margins in pattern
    )


def _listed(margins: Sequence[float]) -> str:
    """'0.1, 0.2 and 0.3'."""
    shown = [f"{m:g}" for m in margins]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def _start_end(rows: pd.DataFrame, name: str, fmt: str) -> str:
    """'start → end' of one logged dynamic, means over the rows ('' when not logged)."""
    start, end = _mean(rows, f"train_{name}_start"), _mean(rows, f"train_{name}_end")
    return "" if math.isnan(start) and math.isnan(end) else f"{start:{fmt}} → {end:{fmt}}"


def dynamics_table(ok: pd.DataFrame, conds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per condition: its loss, trials, and each logged dynamic at step 0 → over the last epoch (means over
    its trials), the fewest open hinges of any step, the last epoch's gradient norm and the final ||delta W||.
    """
    rows = []
    dynamic = ok[has_dynamics(ok)]
    for _, condition in conds.iterrows():
        trials = dynamic[dynamic["trial_id"].isin(condition["trial_ids"])]
        if trials.empty:
            continue
        row = {c: condition[c] for c in by} | {"loss": "/".join(sorted(set(losses(trials)))), "n_trials": len(trials)}
        row["loss - margin"] = _start_end(trials, "loss_minus_margin", "+.3f")
        row["open hinges (min)"] = (
            f"{_start_end(trials, 'active_hinges', '.0%')} ({_mean(trials, 'train_active_hinges_min'):.0%})"
            if trials["train_active_hinges_min"].notna().any()
            else ""
        )
        for kind, prefix in (("", ""), ("centered_", "centred ")):
            row |= {f"{prefix}{label}": _start_end(trials, f"{kind}cos_{c}", ".3f") for c, label in COSINES.items()}
        row["grad norm"] = _mean(trials, "train_grad_norm_end")
        row["‖ΔW‖"] = _mean(trials, "train_lora_norm_end")
        rows.append(row)
    return pd.DataFrame(rows)
