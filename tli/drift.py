"""Drift: how far TLI moves the model's next-token distribution away from the base model's.

The paper names forgetting as a limitation and never measures it. Here, per trial,

    drift_kl_<lang> = mean over the language's samples s of
                      mean over the continuation positions t of s of
                      KL(p_base(. | x_<t) || p_tli(. | x_<t)),
    KL(p || q) = sum_v p(v) (log p(v) - log q(v)),

on a fixed, seeded set of short continuations that the base model itself samples from Swahili and
English prompts (`make_samples`, stored once per experiment); `drift_kl` runs the full causal LM,
its LM head in float32, with the adapter disabled and applied. Sampling at temperature 1 from the base
model makes the per-token mean a Monte Carlo estimate of the sequence-level KL(base || TLI) per
token (the chain rule of KL), evaluated where the base model puts its own probability mass.

A drift reads as large or small only against something: `drift_measures` gives each language's value a
bootstrap CI over its sequences and a reference on the same sequences, the KL of an adapter whose every
LoRA update has the trained norm but a random direction (`tli.lora.random_directions`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from tli import surgery
from tli.errors import TliError

# Short, neutral, everyday sentence starters; the English ones translate the Swahili ones line by line.
DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "sw": (
        "Leo asubuhi nilikwenda",
        "Watoto wanapenda",
        "Mama yangu alipika",
        "Sokoni kuna",
        "Mvua ilipoanza kunyesha,",
        "Rafiki yangu aliniambia kwamba",
        "Kila siku jioni tunakula",
        "Mwalimu aliwaambia wanafunzi",
    ),
    "en": (
        "This morning I went",
        "Children like",
        "My mother cooked",
        "At the market there are",
        "When the rain started to fall,",
        "My friend told me that",
        "Every evening we eat",
        "The teacher told the students",
    ),
}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Inside, every module is in eval mode (dropout off); each module's own mode is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _base(model: nn.Module) -> contextlib.AbstractContextManager:
    """Inside, `model` computes the base model: a PeftModel's adapter disabled, a plain model as is."""
    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids: the tokenizer's and the model's generation config's (Gemma 3 has two)."""
    ids = {tokenizer.eos_token_id}
    generation = getattr(surgery.unwrap(model), "generation_config", None)
    configured = getattr(generation, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {int(i) for i in ids if i is not None}


def _generator(seed: int, language: str, prompt: str) -> torch.Generator:
    """A CPU generator of its own per (seed, language, prompt): a row does not depend on the other rows."""
    digest = hashlib.sha256(f"{seed}\0{language}\0{prompt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _sample(logits: torch.Tensor, generator: torch.Generator) -> int:
    """A token drawn from softmax(logits) ([vocab]) by inverting its CDF at u ~ U[0, 1) from `generator`.

    On the CPU in float64 (cumsum + searchsorted: deterministic, and far faster than
    torch.multinomial on a 262k vocabulary).
    """
    cdf = torch.softmax(logits.double().cpu(), dim=-1).cumsum(dim=-1)  # [vocab]
    u = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), len(cdf) - 1)


def _continue(
    model: nn.Module, prompt_ids: list[int], new_tokens: int, eos: set[int], generator: torch.Generator
) -> list[int]:
    """`prompt_ids` + up to `new_tokens` tokens sampled at temperature 1 (stops after an EOS token).

    One sequence, no padding, with the KV cache; each token is drawn by `_sample` from the last
    position's logits, on the CPU, so the draw does not depend on the device's RNG.
    """
    ids = list(prompt_ids)
    step_input = torch.tensor([ids], device=_device(model))  # [1, pos]
    past = None
    for _ in range(new_tokens):
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = _sample(out.logits[0, -1], generator)
        ids.append(token)
        if token in eos:
            break
        step_input = torch.tensor([[token]], device=step_input.device)  # [1, 1]
    return ids


def make_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Mapping[str, Sequence[str]] = DEFAULT_PROMPTS,
    new_tokens: int = 24,
    seed: int = 0,
) -> pd.DataFrame:
    """The base model's own continuations of `prompts` ({language: prompts}), one row per prompt.

    Columns: `language`, `prompt`, `text` (prompt + continuation, decoded without special tokens),
    `input_ids` (list[int]: the prompt's tokens, the tokenizer's special tokens included, then the
    generated ones) and `n_prompt_tokens`. Plain Python values only: the table goes to JSON or
    Parquet as is.

    Tokens are sampled at temperature 1 (no top-k, no top-p), not chosen greedily: sampled
    continuations follow the base model's own distribution, which makes `drift_kl` an estimate of
    KL(base || TLI) over continuations, while greedy decoding of a small model falls into repetition
    loops. Each row draws from a CPU generator seeded by (seed, language, prompt), so the same model
    and seed give identical rows on the CPU. Prompts run one at a time, so nothing depends on
    padding. A PeftModel is sampled with its adapter disabled; the model's modes are restored.
    """
    if new_tokens < 1:
        raise TliError(f"new_tokens must be at least 1, not {new_tokens}")
    eos = _eos_ids(model, tokenizer)
    rows = []
    with torch.inference_mode(), _eval_mode(model), _base(model):
        for language, texts in prompts.items():
            for prompt in texts:
                prompt_ids = [int(i) for i in tokenizer(prompt)["input_ids"]]
                if not prompt_ids:
                    raise TliError(f"prompt {prompt!r} has no tokens")
                ids = _continue(model, prompt_ids, new_tokens, eos, _generator(seed, language, prompt))
                rows.append(
                    {
                        "language": language,
                        "prompt": prompt,
                        "text": tokenizer.decode(ids, skip_special_tokens=True),
                        "input_ids": ids,
                        "n_prompt_tokens": len(prompt_ids),
                    }
                )
    return pd.DataFrame(rows, columns=["language", "prompt", "text", "input_ids", "n_prompt_tokens"])


def _continuation_log_probs(model: nn.Module, batch: list[list[int]], n_prompt: list[int]) -> list[torch.Tensor]:
    """Per sequence, log p(. | x_<t) in float64 at the positions predicting its generated tokens: [n_new, vocab].

    One forward pass of the batch to the final norm, right-padded ([b, pos]; padding after a sequence cannot
    change its tokens' states under causal attention); at positions n_prompt - 1 .. length - 2, the LM head
    in float32 (`surgery.lm_head_float32`): a bf16 model's own logits are rounded to bf16, a noise floor of
    ~2e-3 nats per token under any change to the model.
    """
    longest = max(len(ids) for ids in batch)
    input_ids = torch.zeros(len(batch), longest, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention_mask[row, : len(ids)] = 1
    device = _device(model)
    last = surgery.num_layers(model)
    hidden = surgery.hidden_states(model, input_ids.to(device), attention_mask.to(device), [last])[last]  # [b, pos, d]
    return [
        torch.log_softmax(surgery.lm_head_float32(model, hidden[row, m - 1 : len(ids) - 1]).double(), dim=-1)
        for row, (ids, m) in enumerate(zip(batch, n_prompt))
    ]


def sequence_kl(model: nn.Module, samples: pd.DataFrame, batch_size: int = 4) -> dict[str, list[float]]:
    """{language: [mean per-token KL(base || TLI) of each of its samples]}, in the order of `samples`.

    `model` is a PeftModel (the TLI adapter); the base distribution is computed with its adapter
    disabled. Per sample (`input_ids` of length n, `n_prompt_tokens` = m), both full forward passes
    give log-probabilities [n - m, vocab] at positions m - 1 .. n - 2, and
    KL_t = sum_v p_base,t(v) (log p_base,t(v) - log p_tli,t(v)) in float64; the sample's value is
    the mean over t. `batch_size` sequences per forward pass (the float32 logits of a batch's new tokens: mind a
    262k vocabulary), under inference mode and in eval mode (each module's mode restored after); languages in the
    order in which they first appear (`make_samples` with the default prompts: sw, en).
    """
    if not isinstance(model, PeftModel):
        raise TliError(
            "drift needs the TLI model with its adapter (a PeftModel); "
            f"got a plain {type(model).__name__}, which has no adapter to disable"
        )
    rows = [
        (language, [int(i) for i in ids], int(n_prompt))
        for language, ids, n_prompt in zip(samples["language"], samples["input_ids"], samples["n_prompt_tokens"])
    ]
    for language, ids, n_prompt in rows:
        if not 1 <= n_prompt < len(ids):
            raise TliError(
                f"a {language} sample has {n_prompt} prompt tokens of {len(ids)}: "
                "it needs a prompt token and a continuation"
            )
    per_sample: dict[str, list[float]] = {}
    with torch.inference_mode(), _eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch, n_prompt = [ids for _, ids, _ in chunk], [m for _, _, m in chunk]
            with _base(model):
                base = _continuation_log_probs(model, batch, n_prompt)
            tuned = _continuation_log_probs(model, batch, n_prompt)
            for (language, _, _), log_p, log_q in zip(chunk, base, tuned):
                kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [n_new]
                per_sample.setdefault(language, []).append(kl.mean().item())
    return per_sample


def drift_kl(model: nn.Module, samples: pd.DataFrame, batch_size: int = 4) -> dict[str, float]:
    """{"drift_kl_<language>": the mean over the language's samples of `sequence_kl`}."""
    per_sample = sequence_kl(model, samples, batch_size)
    return {f"drift_kl_{language}": sum(values) / len(values) for language, values in per_sample.items()}


FLOOR_SCALE = 1e-3  # the adapter's scale when measuring the noise floor


@contextlib.contextmanager
def _scaled_adapter(model: PeftModel, scale: float) -> Iterator[None]:
    """Inside, every LoRA layer adds `scale` x its change (PEFT's per-layer `scaling`, restored exactly after)."""
    from peft.tuners.lora import LoraLayer

    saved = [(layer, dict(layer.scaling)) for layer in model.modules() if isinstance(layer, LoraLayer)]
    try:
        for layer, scaling in saved:
            layer.scaling.update({name: value * scale for name, value in scaling.items()})
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling.update(scaling)


def noise_floor(model: PeftModel, samples: pd.DataFrame) -> dict[str, float]:
    """{"drift_floor_<language>": drift_kl of the same adapter scaled by FLOOR_SCALE}: what the model's arithmetic
    measures for a change too small to matter (KL is quadratic in a small change: the scaled adapter's own KL is
    1e-6 of the adapter's, to second order). In bfloat16 every block rounds its output to 8 significant bits, so
    any change that moves a rounding shows up as drift: below this floor, drift is the arithmetic's noise.
    """
    with _scaled_adapter(model, FLOOR_SCALE):
        measured = drift_kl(model, samples)
    return {
        key.replace("drift_kl_", "drift_floor_", 1): value
        for key, value in measured.items()
        if re.fullmatch(r"drift_kl_[a-z]+", key)
    }


def mean_ci(values: Sequence[float], n_boot: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(values) over resampled values (`scipy.stats.bootstrap`, n_boot resamples,
    numpy's default_rng(seed)): (low, high); NaN for fewer than 2 values, (v, v) when every value is v.
    """
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return math.nan, math.nan
    if np.ptp(array) == 0:
        return float(array[0]), float(array[0])
    result = stats.bootstrap(
        (array,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def drift_measures(model: nn.Module, samples: pd.DataFrame, n_boot: int, seed: int) -> dict[str, float]:
    """Drift with its interval and its reference, per language of `samples` (columns of a trial row):

    drift_kl_<lang>                   the mean of `sequence_kl` over the language's sequences (`drift_kl`)
    drift_kl_<lang>_ci_low, _ci_high  its 95% CI, `mean_ci` over those sequences (seeded by `seed`)
    drift_kl_<lang>_random            the same mean on the same sequences with every LoRA module's update replaced
                                      by one of the same norm in a random direction (`lora.random_directions`,
                                      seeded by `seed`): what an update of this size does when it is not trained
    """
    from tli import lora

    trained = sequence_kl(model, samples)
    with lora.random_directions(model, seed):
        random = sequence_kl(model, samples)
    row = {}
    for language, values in trained.items():
        low, high = mean_ci(values, n_boot, seed)
        name = f"drift_kl_{language}"
        row |= {name: float(np.mean(values)), f"{name}_ci_low": low, f"{name}_ci_high": high}
        row[f"{name}_random"] = float(np.mean(random[language]))
    return row
