"""Layer scan: `tli`'s batched scan against the author's loop, timed side by side, same numbers.

BASELINE (the author's pilot, StanNgugi/tli_project at e158b76, re-implemented below in `author_scan`): for
every layer, for every pair, each word is tokenised alone and run through the *whole* causal LM (lm_head
included) with `output_hidden_states=True`; the layer's hidden state is mean-pooled over all tokens (BOS
included) and the pair's cosine is taken; per layer the mean cosine is reported. The pilot scans the 623
trained pairs at `hidden_states[0..L-1]` (never L, the output after the final norm): one full forward pass
per word per layer, 30 layers x 1,246 words = 37,380 passes on SmolLM2 (L = 30).

TLI (`tli.scan.scan_layers`): words sorted by token length into batches of 64, one forward pass
per batch returns the pooled vectors of every layer (forward hooks; no logits, no hidden-state stack),
then `tli.stats.pair_metrics` per layer (every pair against the pool of the subset's words; the scan's
`cosine_mean` is the mean matched cosine, the number the author's loop gives).

The author's loop is timed on the first `--pairs` pairs (default 10; both sides run on that same subset,
interleaved A, B, A, B); the full default set is then timed for `tli` alone and compared with the
author's loop projected from its measured seconds per forward pass (labelled as a projection).

    .venv/bin/python -m benchmarks.bench_scan              # ~5 minutes on a loaded 2-core machine
    .venv/bin/python -m benchmarks.bench_scan --smoke-test # seconds
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks import _common
from benchmarks._common import interleaved, median, print_table
from tli import data, models, scan, surgery
from tli.config import ModelConfig, ScanConfig

MODULE = "benchmarks.bench_scan"


# --- BASELINE: the author's loop (one word, one full forward pass, per layer) ----------------------


def author_word_vector(model, tokenizer, word: str, layer: int) -> torch.Tensor:
    """BASELINE: one full forward pass of the causal LM for one word; mean over all its tokens at `layer`."""
    inputs = tokenizer(word, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    return outputs.hidden_states[layer][0].mean(dim=0)


def author_scan(model, tokenizer, pairs: pd.DataFrame, layers: Sequence[int]) -> dict[int, float]:
    """BASELINE: {layer: mean cosine of the matched pairs}, one forward pass per word per layer."""
    means = {}
    for layer in layers:
        cosines = [
            F.cosine_similarity(
                author_word_vector(model, tokenizer, sw, layer), author_word_vector(model, tokenizer, en, layer), dim=0
            ).item()
            for sw, en in zip(pairs["swahili"], pairs["english"])
        ]
        means[layer] = float(np.mean(cosines))
    return means


# --- the benchmark ----------------------------------------------------------------------------------


def tli_scan(model, tokenizer, pairs: pd.DataFrame, layers: Sequence[int]) -> dict[int, float]:
    """{layer: cosine_mean} from `tli.scan.scan_layers` (mean pooling, BOS included: the paper's scan)."""
    table = scan.scan_layers(model, tokenizer, pairs, ScanConfig(pooling="mean", layers=tuple(layers)), progress=False)
    return dict(zip(table["layer"], table["cosine_mean"]))


def run(
    n_pairs: int, repeats: int, full: bool, layers: Sequence[int] = (), model_name: str = "smollm2-135m"
) -> dict[str, object]:
    """Time both sides on `n_pairs` pairs (interleaved), check the numbers, optionally time tli on all pairs."""
    model, tokenizer = models.load_model(ModelConfig(model=model_name, device="cpu"))
    pairs = data.load_pairs()
    pairs = pairs[pairs["split"] == "trained"]  # what the author's pilot scans
    subset = pairs.head(n_pairs)
    layers = list(layers) or list(range(surgery.num_layers(model)))  # hidden_states[0..L-1], as the pilot
    seconds, last = interleaved(
        {
            "author": lambda: author_scan(model, tokenizer, subset, layers),
            "tli": lambda: tli_scan(model, tokenizer, subset, layers),
        },
        repeats,
    )
    max_diff = max(abs(last["author"][k] - last["tli"][k]) for k in layers)
    author_s, tli_s = median(seconds["author"]), median(seconds["tli"])
    passes = 2 * n_pairs * len(layers)
    rows = [
        {
            "what": f"scan, {n_pairs} pairs x {len(layers)} layers",
            "author_s": author_s,
            "tli_s": tli_s,
            "ratio": author_s / tli_s,
            "max_abs_diff_cosine_mean": max_diff,
            "measured": "both, interleaved",
        }
    ]
    result = {
        "ratio_subset": author_s / tli_s,
        "max_diff": max_diff,
        "author_s_per_pass": author_s / passes,
        "seconds": seconds,
    }
    if full:
        full_seconds, _ = interleaved({"tli": lambda: tli_scan(model, tokenizer, pairs, layers)}, repeats)
        tli_full = median(full_seconds["tli"])
        author_full = author_s / passes * 2 * len(pairs) * len(layers)
        rows.append(
            {
                "what": f"scan, all {len(pairs)} pairs x {len(layers)} layers",
                "author_s": author_full,
                "tli_s": tli_full,
                "ratio": author_full / tli_full,
                "max_abs_diff_cosine_mean": float("nan"),
                "measured": "tli; author projected from its s/pass",
            }
        )
        result["ratio_full_projected"] = author_full / tli_full
    result["rows"] = rows
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = _common.parser(__doc__, "2 pairs, layers 0,2,15,29, 1 repeat, no full set")
    parser.add_argument("--pairs", type=int, default=10, help="pairs both sides run on (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per side (default: %(default)s)")
    args = _common.parse(parser, argv)
    layers = (0, 2, 15, 29) if args.smoke_test else ()
    if args.smoke_test:
        args.pairs, args.repeats = 2, 1
    result = run(args.pairs, args.repeats, full=not args.smoke_test, layers=layers)
    print_table("layer scan: author's loop vs tli (median seconds; ratio = author / tli)", result["rows"], MODULE, argv)
    return result


if __name__ == "__main__":
    main()
