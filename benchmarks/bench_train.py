"""Training: the forward pass truncated at the target layer against `full_forward=True`, side by side.

For each target layer (default 2, L/2, L of the embedded smollm2-135m, L = 30) both sides train the
same N steps (the first `--pairs` trained pairs, batch 8, one epoch, warm-up 0, LoRA dropout 0 so
that no random draw differs) alternately (truncated, full, truncated, full, ...); the table gives the
median seconds of the epoch's N steps (as `train_tli` logs them), the ratio full / truncated per
epoch and for the whole `train_tli` call (LoRA attach included), and the largest step-by-step
difference of the logged losses.

    .venv/bin/python -m benchmarks.bench_train               # ~3 minutes on a loaded 2-core machine
    .venv/bin/python -m benchmarks.bench_train --smoke-test  # seconds: layer 2, 2 steps
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from benchmarks import _common
from benchmarks._common import median, print_table
from tli import data, models, surgery, train
from tli.config import ModelConfig, TrainConfig

MODULE = "benchmarks.bench_train"


class _Trainer:
    """Runs `train_tli` on the shared base model and removes the LoRA layers after each run."""

    def __init__(self, model, tokenizer, pairs):
        self.model, self.tokenizer, self.pairs = model, tokenizer, pairs

    def __call__(self, config: TrainConfig) -> tuple[np.ndarray, float]:
        """(losses step by step, seconds of the epoch's steps as `train_tli` logs them; step 0, before any update,
        left out).
        """
        peft_model, log = train.train_tli(self.model, self.tokenizer, self.pairs, config, progress=False)
        self.model = peft_model.unload()
        steps = log[log["step"] > 0]
        return steps["loss"].to_numpy(), float(steps["seconds"].iloc[-1])


def run(layers: Sequence[int], n_pairs: int, repeats: int, model_name: str = "smollm2-135m") -> dict[str, object]:
    import time

    model, tokenizer = models.load_model(ModelConfig(model=model_name, device="cpu"))
    n_layers = surgery.num_layers(model)
    layers = list(layers) or [2, n_layers // 2, n_layers]
    pairs = data.split_sets(data.load_pairs())["trained"].head(n_pairs)
    trainer = _Trainer(model, tokenizer, pairs)
    base = TrainConfig(epochs=1, warmup_steps=0, lora_dropout=0.0, seed=0)
    rows, ratios, diffs = [], {}, {}
    for layer in layers:
        sides = {
            "truncated": dataclasses.replace(base, target_layer=layer),
            "full_forward": dataclasses.replace(base, target_layer=layer, full_forward=True),
        }
        epoch = {name: [] for name in sides}  # seconds of the epoch's steps (train_tli's log)
        call = {name: [] for name in sides}  # seconds of the whole call (LoRA attach + steps)
        losses = {}
        for _ in range(repeats):  # interleaved: truncated, full, truncated, full, ...
            for name, config in sides.items():
                started = time.perf_counter()
                losses[name], steps_s = trainer(config)
                call[name].append(time.perf_counter() - started)
                epoch[name].append(steps_s)
        truncated_s, full_s = median(epoch["truncated"]), median(epoch["full_forward"])
        diff = float(np.max(np.abs(losses["truncated"] - losses["full_forward"])))
        ratios[layer], diffs[layer] = full_s / truncated_s, diff
        rows.append(
            {
                "target_layer": f"{layer} of {n_layers}",
                "steps": len(losses["truncated"]),
                "truncated_epoch_s": truncated_s,
                "full_epoch_s": full_s,
                "ratio_epoch": full_s / truncated_s,
                "ratio_whole_call": median(call["full_forward"]) / median(call["truncated"]),
                "max_abs_loss_diff": diff,
                "final_loss": float(losses["truncated"][-1]),
            }
        )
    return {"rows": rows, "ratios": ratios, "max_loss_diff": diffs, "n_layers": n_layers}


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = _common.parser(__doc__, "layer 2 only, 2 steps, 1 repeat")
    parser.add_argument(
        "--layers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[],
        help="target layers, e.g. 2,15,30 (default: 2, L/2, L)",
    )
    parser.add_argument("--pairs", type=int, default=64, help="trained pairs = 8 x steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per side (default: %(default)s)")
    args = _common.parse(parser, argv)
    if args.smoke_test:
        args.layers, args.pairs, args.repeats = [2], 16, 1
    result = run(args.layers, args.pairs, args.repeats)
    print_table(
        "training: full_forward vs truncated (median seconds of one epoch of N steps; ratio = full / truncated)",
        result["rows"],
        MODULE,
        argv,
    )
    return result


if __name__ == "__main__":
    main()
