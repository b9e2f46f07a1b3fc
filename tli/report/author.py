"""What the author's published results show, computed from the author's files (not quoted from memory).

The files are the author's public repository's outputs (SOURCE), shipped in tli/datasets/author_results/:
`quantitative_results.csv` (per-pair cosines before and after TLI at the training layer, per group) and
`layer_alignment_results.csv` (the pilot scan: mean Sw-En cosine of the trained pairs by layer). The paragraph
concerns reports that vary the target layer or the protocol (the layer and the pooling behind Table 1); other
reports leave it out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy import stats

from tli.report.conditions import PROTOCOL

SOURCE = "StanNgugi/tli_project, commit e158b76"
FOLDER = Path(__file__).resolve().parent.parent / "datasets" / "author_results"
FILES = ("quantitative_results.csv", "layer_alignment_results.csv")
PAPER_LAYER = 2  # the paper's target layer, where its Table 1 is measured
PAPER_BLOCKS = 32  # Llama-3-8B (Lugha-Llama-8B-wura): hidden_states[0..32], the last after the final norm


def concerns(by: list[str]) -> bool:
    """Whether a report with conditions `by` is about what the paragraph explains: the layer or the protocol."""
    return "target_layer" in by or any(c in by for c in PROTOCOL)


def table1(quantitative: pd.DataFrame) -> pd.DataFrame:
    """Per group of the author's per-pair file: n, mean cosine before and after, and the paired t statistic."""
    rows = []
    for group, pairs in quantitative.groupby("group", sort=False):
        test = stats.ttest_rel(pairs["sim_post_tli"], pairs["sim_pre_tli"])
        rows.append(
            {
                "group": group,
                "n": len(pairs),
                "pre": pairs["sim_pre_tli"].mean(),
                "post": pairs["sim_post_tli"].mean(),
                "t": float(test.statistic),
            }
        )
    return pd.DataFrame(rows).set_index("group")


def note(folder: Path | None = FOLDER) -> str | None:
    """The paragraph, from the author's two files in `folder` (None when `folder` is None or lacks them)."""
    if folder is None or not all((folder / name).is_file() for name in FILES):
        return None
    table = table1(pd.read_csv(folder / "quantitative_results.csv"))
    scan = pd.read_csv(folder / "layer_alignment_results.csv").set_index("layer")["avg_cosine_similarity"]
    groups = "; ".join(
        f"{group} {row.pre:.4f} -> {row.post:.4f} over {int(row.n)} pairs, paired t = {row.t:.2f}"
        for group, row in table.iterrows()
    )
    last = int(scan.index.max())
    return (
        f"What the author's published results show ({SOURCE}: quantitative_results.csv and "
        "layer_alignment_results.csv, copied in tli/datasets/author_results/). The paper's Table 1 is measured at "
        f"layer {PAPER_LAYER}, the training layer: the author's per-pair cosines reproduce it ({groups}). At the "
        f"same layer the author's pilot scan gives {scan.loc[PAPER_LAYER]:.5f}, the BOS-dominated mean pooling of "
        "the paper's Figure 1: Table 1's cosines come from another pooling, the author's evaluation, which drops "
        "the ids of BOS, EOS and pad wherever they occur (tli's `mean_content` drops the tokens the tokenizer "
        "added: the same on the paper's words for both embedded models, not for every tokenizer). The pilot scans "
        f'`hidden_states[{int(scan.index.min())}..{last}]` of the trained pairs: its last row, "layer {last}", is '
        f"one block before the final norm; a {PAPER_BLOCKS}-block model's last hidden state, after the norm, is "
        f"`hidden_states[{PAPER_BLOCKS}]`, which it does not scan."
    )
