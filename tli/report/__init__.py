"""The sweep report: the paper's Tables 1-2, the significance table, the replication verdict, figures.

  results       an experiment's tables (merged tables rebuilt when needed) and its progress
  conditions    the settings that vary, one row per condition, the condition fixed in advance
  selection     the condition selected by the validation objective
  significance  the seed-averaged significance table
  multiple      which p-values are corrected together (the families), and how
  verdict       protocols named for what they are, and the specificity test
  training      what training did: the training check from the logged dynamics (a loss that never left its
                margin, or descended onto it), per condition
  drift         drift beside its CI and its random-direction reference
  retrieval     P@k and MRR with McNemar's test beside the orthographic and Procrustes baselines; the probe
  overview      every condition at a glance
  paper         the paper's Tables 1 and 2
  figures       the figures, as PNG bytes
  sections      the report's sections, as blocks
  render        Markdown and self-contained HTML, written atomically

`build_report` puts them together. Nothing here loads a model or imports Ray: the planned trial count is
read from sweep_config.json, and t-SNE embeddings come from the sweep side (`tli.sweep.replay`), passed in
as a function of a trial id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib
import pandas as pd

from tli.errors import TliError
from tli.files import Folder
from tli.report import figures, multiple, render, retrieval, sections, verdict
from tli.report.conditions import condition_columns, conditions, prespecified
from tli.report.overview import overview
from tli.report.paper import table1, table2
from tli.report.results import Results, combine, load_results, progress_line
from tli.report.selection import selected
from tli.report.significance import at_target, significance_table
from tli.sweep.store import check_report_folder

__all__ = [
    "Report",
    "Results",
    "build_report",
    "condition_columns",
    "conditions",
    "load_results",
    "overview",
    "prespecified",
    "progress_line",
    "selected",
    "significance_table",
    "table1",
    "table2",
]


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote and found."""

    files: dict[str, str]  # kind -> URI
    significance: pd.DataFrame
    progress: str
    verdicts: list[str]  # one sentence per protocol x set of the condition fixed in advance


def build_report(
    location: str | list[str],
    out: str | None = None,
    by: list[str] | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    tsne: Callable[[str], dict[str, Any]] | None = None,
) -> Report:
    """Write significance.csv/.md, report.md, report.html and figures/ to `out` (default: <location>/report).

    `location`: one experiment folder or URI, or a list of them for one report across sweeps (conditions told
    apart by `experiment`: `results.combine`; `out` then required). `tsne(trial_id)` returns that trial's
    embeddings (`tli.sweep.replay.trial_embeddings`) for the t-SNE figure (one experiment only).
    """
    locations = [location] if isinstance(location, str) else list(location)
    if len(locations) > 1 and (out is None or tsne is not None):
        raise TliError("a report over several experiments needs --out and cannot draw --tsne")
    parts = [load_results(where) for where in locations]
    results = parts[0] if len(parts) == 1 else combine(parts)
    folder = Folder(out) if out is not None else Folder(results.uri).child("report")
    check_report_folder(folder, [Folder(part.uri) for part in parts])
    folder.check_writable()  # before any work
    by = condition_columns(results.trials) if by is None else list(by)
    sig = significance_table(results, by, n_boot, seed)
    blocks, verdicts = sections.header(results, by), pd.DataFrame()
    if not sig.empty and (sig["n_trials"] > sig["n_seeds"]).any():
        blocks.append(
            (
                "p",
                "Some conditions hold more trials than seeds: the `--by` columns leave out a setting that varies, "
                "and trials of different settings are averaged as if they were replicates.",
            )
        )
    if sig.empty:
        blocks.append(("p", "No ok trial yet: nothing to test."))
    else:
        conds = conditions(results, by)
        chosen = selected(conds, by)
        found, verdicts = sections.replication(results, sig, conds, by)
        probed = retrieval.probe_rows(results, by)
        blocks += found + sections.selection(results, conds, by, chosen) + sections.at_a_glance(sig, conds, by, probed)
        blocks += sections.against_shuffled(sig, by)
        blocks += sections.retrieval_section(sig, conds, by, chosen)
        blocks += sections.probe_section(probed)
        with matplotlib.rc_context(figures.PAPER_STYLE):
            blocks += sections.what_training_did(results, conds, by)
        blocks += sections.drift_against_reference(results, conds, by)
        blocks += sections.paper_tables(results, sig, conds, by, chosen)
        embeddings = tsne(sections.best_trial(results, chosen)) if tsne is not None else None
        with matplotlib.rc_context(figures.PAPER_STYLE):
            drawn = sections.plots(results, sig, conds, by, embeddings, seed, probed)
        blocks += [("h2", "Figures")] + [("figure", plot) for plot in drawn]
        blocks += [
            ("h2", "Significance at the target layer"),
            ("p", sections.LEGEND),
            ("p", multiple.description(sig)),
            ("p", "Every evaluation layer and every column: significance.csv / significance.md."),
            ("table", at_target(sig)[[*by, *(c for c in sections.SHORT if c in sig)]]),
        ]
    files = render.write(folder, blocks, sig, f"TLI report: {results.name}", by)
    return Report(files, sig, progress_line(results), verdict.sentences(verdicts))
