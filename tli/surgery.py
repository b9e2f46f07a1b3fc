"""Model internals, in one module: the decoder stack, layer naming, and truncated forward passes.

Layers are numbered as transformers' ``hidden_states``: layer 0 is the embedding output (for Gemma
already scaled by sqrt(hidden size)), layer k (1 <= k <= L) the output of decoder block k, and
layer L (the last block) is returned *after* the final norm, exactly as transformers does.

Every change to a model here is made inside a context manager that restores it in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from tli.config import check_layer
from tli.errors import TliError

# model_type -> family; every family keeps its stack at `<causal lm>.model` with
# `embed_tokens`, `layers` (a ModuleList of blocks) and a final `norm`.
SUPPORTED_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma3_text": "gemma3",
}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def model_family(model: nn.Module) -> str:
    """'llama' or 'gemma3'; a clear TliError for an architecture this module does not know."""
    model_type = getattr(unwrap(model).config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        known = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
        raise TliError(f"unsupported architecture {model_type!r}: tli knows {known}")
    return SUPPORTED_MODEL_TYPES[model_type]


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (`embed_tokens`, `layers`, `norm`) of a supported causal LM."""
    model_family(model)
    return unwrap(model).model


def num_layers(model: nn.Module) -> int:
    """L, the number of decoder blocks; valid layer indices are 0..L."""
    return len(decoder(model).layers)


@contextlib.contextmanager
def truncated(model: nn.Module, layer: int) -> Iterator[None]:
    """Inside, the decoder runs blocks 1..`layer` only and its last output is hidden_states[layer].

    Blocks above `layer` cannot influence hidden_states[layer], so losses and gradients are the same
    as with the full forward pass. The final norm is bypassed unless `layer` is the last block.
    """
    stack = decoder(model)
    n_layers = len(stack.layers)
    check_layer(layer, n_layers)
    blocks, norm = stack.layers, stack.norm
    try:
        stack.layers = nn.ModuleList(list(blocks)[:layer])
        if layer < n_layers:
            stack.norm = nn.Identity()
        yield
    finally:
        stack.layers, stack.norm = blocks, norm


@contextlib.contextmanager
def recording(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside, a forward pass fills {layer: [batch, pos, d_model]} for every layer in `layers`.

    Layer 0 is read from the embedding module's output, layer k < L from block k's output and
    layer L from the final norm's output; the hooks are removed in ``finally``.
    """
    stack = decoder(model)
    n_layers = len(stack.layers)
    recorded: dict[int, torch.Tensor] = {}

    def keep(k: int):
        def hook(_module, _inputs, output):
            recorded[k] = output[0] if isinstance(output, tuple) else output

        return hook

    def module(k: int) -> nn.Module:
        return stack.embed_tokens if k == 0 else stack.norm if k == n_layers else stack.layers[k - 1]

    handles = [module(k).register_forward_hook(keep(k)) for k in layers]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    truncate: bool = True,
) -> dict[int, torch.Tensor]:
    """hidden_states[k] for each k in `layers`, each [batch, pos, d_model].

    With `truncate`, only blocks 1..max(layers) run. Without, the whole causal LM runs, LM head
    included, as the author's code does (a verification path: the results are identical).
    """
    n_layers = num_layers(model)
    for k in layers:
        check_layer(k, n_layers)
    if truncate:
        with recording(model, layers) as recorded, truncated(model, max(layers)):
            decoder(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    else:
        with recording(model, layers) as recorded:
            unwrap(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return {k: recorded[k] for k in layers}


def lm_head_float32(model: nn.Module, hidden: torch.Tensor, chunk: int = 8_192) -> torch.Tensor:
    """The causal LM's logits of final hidden states (hidden_states[L], [n, d_model]) in float32, [n, vocab],
    whatever dtype the model runs in: logits = hidden W^T (+ bias), W upcast `chunk` vocabulary rows at a
    time (a bf16 head's logits would be rounded to 8 significant bits), then the model's final logit
    soft-capping where its config has one (Gemma 2), as transformers applies it.
    """
    head = unwrap(model).get_output_embeddings()
    hidden = hidden.float()
    weight = head.weight
    logits = torch.cat([hidden @ weight[i : i + chunk].float().T for i in range(0, weight.shape[0], chunk)], dim=-1)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.float()
    cap = getattr(unwrap(model).config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@contextlib.contextmanager
def inference(model: nn.Module, adapter: bool = True) -> Iterator[None]:
    """Inside: torch's inference mode, every module in eval mode (dropout off), and with `adapter=False` a
    PeftModel's adapter disabled (the base model; a plain model is the base model already). Each module's own
    training flag is restored after.
    """
    from peft import PeftModel

    modes = [(module, module.training) for module in model.modules()]
    base = model.disable_adapter() if isinstance(model, PeftModel) and not adapter else contextlib.nullcontext()
    try:
        model.eval()
        with torch.inference_mode(), base:
            yield
    finally:
        for module, training in modes:
            module.training = training
