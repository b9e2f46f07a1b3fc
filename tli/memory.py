"""A trial's peak memory on its device, estimated before anything is loaded, and the GPU share it needs.

`trial_peak` is a pure function of the model's shape (`ModelShape`, read from its config on the meta
device: no weight is loaded) and of what a trial does (`TrialShape`). Its parts, in bytes (w: bytes
per weight, a: bytes per activation, the compute dtype's):

  weights      all parameters x w; with NF4, the blocks' linear weights take 4 bits + an fp32
               absmax per 64 weights (0.5625 bytes), everything else (embeddings, LM head, norms) w
  lora         r (in + out) per target module per block that carries LoRA, x 16 bytes: fp32 weight,
               gradient and AdamW's two moments
  step         the largest of the three phases, which never overlap:
               training  2b words x t tokens x k blocks x (8 h + 3 i) x a: per token and block, the
                         tensors autograd keeps (norm inputs, LoRA inputs, q, k, v, attention output:
                         ~8 h; SiLU input, gate and up outputs: 3 i), for a forward pass stopped at
                         target layer k (all L blocks, and the LM head's logits, with full_forward)
               eval      64 words x t x (4 h + 3 i) x a: one block's transients under inference mode
               drift     13 x 8 n V + 4 n V + 4 c h: float64 log-probabilities of the n new tokens of
                         4 sequences, base and TLI (8 n V), a sequence's upcast and KL terms (5 n V),
                         its float32 logits (n V) and the LM head's float32 block of c rows
               probe     B x (a + 4 + 4 unless a = 4): the translation probe's answer-scoring pass, at most
                         B = tli.probe.LOGIT_BUDGET logits, their float32 copy and their log-softmax
  dequantise   NF4 only: 2 x the largest linear weight x a (a block's weight dequantised per matmul)
  context      CUDA only: the CUDA context, cuBLAS workspace and kernels (CONTEXT_BYTES)

peak = weights + lora + step + dequantise + context. `gpus_per_trial` turns the peak into Ray's GPU
share: as many trials as fit in a GPU's memory less SAFETY_MARGIN (the allocator's cache and
fragmentation), at most MAX_TRIALS_PER_GPU.
"""

from __future__ import annotations

import dataclasses
import math

from tli.config import ModelConfig, TrainConfig
from tli.errors import TliError
from tli.probe import LOGIT_BUDGET

GB = 1e9
CONTEXT_BYTES = int(0.75 * GB)  # CUDA context + cuBLAS workspace + loaded kernels: 0.5-0.8 GB per process
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # 4-bit codes + one fp32 absmax per block of 64 (no double quantisation)
LORA_BYTES_PER_PARAMETER = 16  # fp32 weight, gradient, AdamW exp_avg and exp_avg_sq
SAVED_PER_HIDDEN, SAVED_PER_INTERMEDIATE = 8, 3  # activations autograd keeps per token and block (see above)
EVAL_PER_HIDDEN, EVAL_PER_INTERMEDIATE = 4, 3  # one block's transients under inference mode
EVAL_WORDS = 64  # words per forward pass of the evaluation (EvalConfig.batch_size)
DRIFT_SEQUENCES = 4  # sequences per forward pass of drift_kl
HEAD_CHUNK = 8_192  # vocabulary rows of the LM head upcast at once (surgery.lm_head_float32)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SAFETY_MARGIN = 0.10  # share of a GPU's memory left free: the caching allocator's slack and fragmentation
MAX_TRIALS_PER_GPU = 8  # beyond this, trials on one GPU time-slice its compute and each adds a context
RAY_STEPS = 10_000  # Ray keeps resource quantities to 4 decimals


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes of a causal LM that set its memory (`model_shape` reads them from a config)."""

    n_layers: int  # L, decoder blocks
    hidden: int  # h
    intermediate: int  # i, the MLP's width
    vocab: int  # V
    block_linear: int  # weights of one block's linear layers (what NF4 quantises)
    block_other: int  # one block's other parameters (norms, biases)
    outside: int  # parameters outside the blocks: embeddings, LM head unless tied, final norm
    linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of each linear layer of a block

    @property
    def parameters(self) -> int:
        return self.n_layers * (self.block_linear + self.block_other) + self.outside


@dataclasses.dataclass(frozen=True)
class TrialShape:
    """What one trial does, as far as its memory goes (defaults: the paper's settings)."""

    target_layer: int = 2  # k: training runs blocks 1..k
    lora_rank: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    batch_size: int = 8  # pairs per step: 2b words per forward pass
    word_tokens: int = 16  # t: tokens of the longest word, special tokens included
    drift_tokens: int = 24  # n: generated tokens of a drift sample (drift.make_samples' new_tokens; 0: no drift)
    weight_bytes: int = 2  # w: 4 fp32, 2 bf16/fp16
    compute_bytes: int = 2  # a
    nf4: bool = False
    cuda: bool = True
    full_forward: bool = False
    probe: bool = False  # the translation probe runs with its full candidate pools (not a smoke test's few)


def model_shape(config) -> ModelShape:
    """The ModelShape of a transformers config, counted on a model built on the meta device (no memory)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    from tli import surgery

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    block = surgery.decoder(model).layers[0]
    linears = tuple(
        (name.rsplit(".", 1)[-1], module.in_features, module.out_features)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    )
    block_linear = sum(n_in * n_out for _, n_in, n_out in linears)
    block_all = sum(p.numel() for p in block.parameters())
    return ModelShape(
        n_layers=int(text.num_hidden_layers),
        hidden=int(text.hidden_size),
        intermediate=int(text.intermediate_size),
        vocab=int(text.vocab_size),
        block_linear=block_linear,
        block_other=block_all - block_linear,
        outside=sum(p.numel() for p in model.parameters()) - len(surgery.decoder(model).layers) * block_all,
        linears=linears,
    )


def trial_peak(model: ModelShape, trial: TrialShape) -> dict[str, int]:
    """{part: bytes} of one trial's peak memory (parts: see the module docstring), and their sum as `peak`."""
    w, a = trial.weight_bytes, trial.compute_bytes
    linear_bytes = NF4_BYTES_PER_WEIGHT if trial.nf4 else w
    weights = model.n_layers * (model.block_linear * linear_bytes + model.block_other * w) + model.outside * w
    lora_blocks = model.n_layers if trial.full_forward else trial.target_layer
    dims = {name: (n_in, n_out) for name, n_in, n_out in model.linears}
    lora_parameters = lora_blocks * sum(trial.lora_rank * sum(dims[name]) for name in trial.target_modules)
    blocks = model.n_layers if trial.full_forward else trial.target_layer
    words, t = 2 * trial.batch_size, trial.word_tokens
    per_token = SAVED_PER_HIDDEN * model.hidden + SAVED_PER_INTERMEDIATE * model.intermediate
    training = words * t * (blocks * per_token + (model.vocab if trial.full_forward else 0)) * a
    evaluation = EVAL_WORDS * t * (EVAL_PER_HIDDEN * model.hidden + EVAL_PER_INTERMEDIATE * model.intermediate) * a
    n = trial.drift_tokens
    drift = ((2 * DRIFT_SEQUENCES + 5) * n * model.vocab * 8 + n * model.vocab * 4 + HEAD_CHUNK * model.hidden * 4) * (
        n > 0
    )
    probe = LOGIT_BUDGET * (a + 4 + (4 if a != 4 else 0)) * trial.probe
    largest = max(n_in * n_out for _, n_in, n_out in model.linears)
    parts = {
        "weights": int(weights),
        "lora": lora_parameters * LORA_BYTES_PER_PARAMETER,
        "step": max(training, evaluation, drift, probe),
        "dequantise": 2 * largest * a if trial.nf4 else 0,
        "context": CONTEXT_BYTES if trial.cuda else 0,
    }
    return parts | {"peak": sum(parts.values())}


def trial_shape(
    model: ModelConfig, train: TrainConfig, cuda: bool, word_tokens: int, drift_tokens: int, probe: bool = False
) -> TrialShape:
    """The TrialShape of a trial's settings on CUDA or the CPU (`--dtype auto`: bf16 on CUDA, fp32 on the CPU),
    its longest word `word_tokens` long, its drift samples `drift_tokens` new tokens long (0: no drift), with the
    translation probe's full pools or not (`probe`).
    """
    dtype = model.dtype if model.dtype != "auto" else "bfloat16" if cuda else "float32"
    return TrialShape(
        target_layer=train.target_layer,
        lora_rank=train.lora_rank,
        target_modules=train.target_modules,
        batch_size=train.batch_size,
        word_tokens=word_tokens,
        drift_tokens=drift_tokens,
        weight_bytes=DTYPE_BYTES[dtype],
        compute_bytes=DTYPE_BYTES[dtype],
        nf4=model.quantization in ("nf4", "fp4"),  # the same footprint: 4-bit codes + an absmax per 64
        cuda=cuda,
        full_forward=train.full_forward,
        probe=probe,
    )


def trials_per_gpu(peak_bytes: int, gpu_bytes: int) -> int:
    """How many trials of `peak_bytes` share one GPU of `gpu_bytes`; TliError when not even one fits."""
    usable = gpu_bytes * (1 - SAFETY_MARGIN)
    fitting = math.floor(usable / peak_bytes)
    if fitting < 1:
        raise TliError(
            f"a trial needs about {peak_bytes / GB:.1f} GB, more than the {usable / GB:.1f} GB usable of a "
            f"{gpu_bytes / GB:.1f} GB GPU: use --quantization nf4, a lower --target-layer or a larger GPU"
        )
    return min(fitting, MAX_TRIALS_PER_GPU)


def gpu_share(trials: int) -> float:
    """Ray's GPU quantity for `trials` per GPU: 1/trials rounded down to Ray's resolution, so that they fit."""
    return math.floor(RAY_STEPS / trials) / RAY_STEPS
